"""The step source of the diffusers host: which denoising step a UNet call belongs to (layer 3, diffusers host).

Two sources, checked in this order:

* a step given explicitly (:class:`ExplicitStep`, set by :func:`fouriscale.denoising_step` around a custom
  denoising loop's UNet call);
* the scheduler table of the diffusers pipeline running the UNet (the nearest caller on the stack that is a
  pipeline holding this UNet, so pipelines made with ``from_pipe`` run with their own scheduler and guidance).

In a pipeline, the UNet's ``timestep`` is located in ``scheduler.timesteps``

1. by storage, when it is a view into that table (the usual ``for t in timesteps`` loop, including
   img2img's ``timesteps[t_start:]`` after ``set_begin_index``): no device sync;
2. else by exact value (a copy of an entry), against a CPU copy of the table made once per table.

The index ``k`` gives the step ``ceil(k / order)`` (second-order schedulers list most timesteps twice)
of ``N`` steps in all, so the step is the position in the *full* schedule: img2img with strength ``s``
runs steps ``N - int(s * N) .. N - 1``, and the dilation phases follow the noise level, not the number of
steps run. A timestep that is not in the table gives ``None``: the caller runs the UNet unchanged.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from ..config import MAX_STEPS
from ..schedule import denoising_steps, step_of_timestep_index

# diffusers' model and pipeline classes (and transformers' models) are imported where they are used: each adds
# 1-2 s and 300-500 modules to `import fouriscale` (docs/architecture.md, "Imports").
__all__ = ["locate_step", "calling_pipeline", "ExplicitStep", "locate_call"]


def _index_by_storage(timesteps: torch.Tensor, t) -> int | None:
    """Index of ``t`` in ``timesteps`` when ``t`` is a view into it."""
    if not isinstance(t, torch.Tensor) or t.dim() > 1 or (t.dim() == 1 and len(t) != 1):
        return None
    if t.device != timesteps.device or t.dtype != timesteps.dtype:
        return None
    try:
        if t.untyped_storage().data_ptr() != timesteps.untyped_storage().data_ptr():
            return None
    except (RuntimeError, NotImplementedError):
        return None
    offset = t.storage_offset() - timesteps.storage_offset()
    stride = timesteps.stride(0)
    if stride <= 0 or offset % stride:
        return None
    k = offset // stride
    return k if 0 <= k < len(timesteps) else None


class _TableCache:
    """A CPU float64 copy of the last timestep table seen, remade only when the table changes."""

    def __init__(self) -> None:
        self.key = None
        self.table: torch.Tensor | None = None

    def get(self, timesteps: torch.Tensor) -> torch.Tensor:
        key = (timesteps.data_ptr(), timesteps._version, len(timesteps), timesteps.device, timesteps.dtype)
        if key != self.key:
            self.key, self.table = key, timesteps.detach().to("cpu", torch.float64)
        return self.table


_TABLES = _TableCache()


def _index_by_value(timesteps: torch.Tensor, t) -> int | None:
    """Index of the first entry of ``timesteps`` equal to the value of ``t``; ``None`` if there is none."""
    if isinstance(t, torch.Tensor):
        if t.numel() == 0:
            return None
        flat = t.detach().flatten()
        if flat.numel() > 1 and not bool((flat == flat[0]).all()):
            return None  # one timestep per row that differ: not one step of this table
        value = float(flat[0])
    else:
        try:
            value = float(t)
        except (TypeError, ValueError):
            return None
    hits = (_TABLES.get(timesteps) == value).nonzero()
    return int(hits[0]) if len(hits) else None


def locate_step(scheduler, timestep) -> tuple[int, int] | None:
    """``(step, num_steps)`` of a UNet call at ``timestep`` in ``scheduler.timesteps``; ``None`` if it is not there."""
    timesteps = getattr(scheduler, "timesteps", None)
    if not isinstance(timesteps, torch.Tensor) or timesteps.dim() != 1 or len(timesteps) == 0:
        return None
    k = _index_by_storage(timesteps, timestep)
    if k is None:
        k = _index_by_value(timesteps, timestep)
    if k is None:
        return None
    order = int(getattr(scheduler, "order", 1) or 1)
    return step_of_timestep_index(k, order), denoising_steps(len(timesteps), order)


def calling_pipeline(unet, max_depth: int = 64):
    """The diffusers pipeline running ``unet`` (the nearest caller on the stack that is a pipeline holding this
    UNet), or ``None``."""
    from diffusers import DiffusionPipeline

    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            obj = frame.f_locals.get("self")
            if isinstance(obj, DiffusionPipeline):
                owner = getattr(obj, "unet", None)
                if getattr(owner, "_orig_mod", owner) is unet:
                    return obj
        frame = frame.f_back
    return None


def _uses_cfg(pipe) -> bool:
    try:
        return bool(pipe.do_classifier_free_guidance)
    except (AttributeError, TypeError):
        return False


@dataclass(frozen=True)
class ExplicitStep:
    """A step given by the caller: denoising step ``step`` of ``num_steps``; ``guidance``: the UNet batch is
    ``[uncond, cond]`` (classifier-free guidance), else ``[cond]``."""

    step: int
    num_steps: int
    guidance: bool = True

    def __post_init__(self) -> None:
        for name, value, low in (("num_inference_steps", self.num_steps, 1), ("step", self.step, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_STEPS:
                raise ValueError(f"{name} must be an integer from {low} to {MAX_STEPS}, got {value!r}")
        if self.step >= self.num_steps:
            raise ValueError(f"step {self.step} lies beyond the {self.num_steps} steps (steps count from 0)")
        if not isinstance(self.guidance, bool):
            raise ValueError(f"guidance must be True or False, got {self.guidance!r}")


def locate_call(patch, unet, timestep) -> tuple[int, int, bool] | None:
    """``(step, num_steps, cfg)`` of a UNet call from the patch's explicit step or the calling pipeline; ``None``
    (after a one-time warning) where neither knows the step: the caller runs the UNet unchanged."""
    explicit = patch.explicit_step
    if explicit is not None:
        return explicit.step, explicit.num_steps, explicit.guidance
    pipe = calling_pipeline(unet)
    if pipe is None:
        patch.warn_once(
            "pipeline",
            "the UNet was called outside a diffusers pipeline (its scheduler and guidance are unknown); "
            "running it unchanged. A custom denoising loop tells FouriScale the step with "
            "fouriscale.denoising_step(pipe, i, num_inference_steps).",
        )
        return None
    located = locate_step(pipe.scheduler, timestep)
    if located is None:
        patch.warn_once(
            "step",
            "the UNet was called with a timestep that is not in the scheduler's table (outside a "
            "denoising loop, or a custom sampler); running it unchanged.",
        )
        return None
    return (*located, _uses_cfg(pipe))
