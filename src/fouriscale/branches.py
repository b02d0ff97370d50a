"""The UNet wrapper (layer 3): turns the stock CFG batch into FouriScale's branches and back.

Registered as forward pre/post hooks on the pipeline's UNet, so the stock pipeline ``__call__``
runs untouched:

* before the forward it finds the denoising step (from the scheduler's own timesteps, so
  second-order schedulers that call the UNet twice per step count steps, not calls), builds the plan
  once per size/step count, and expands ``[uncond, cond]`` to ``[uncond, structure, detail]``
  (``[cond]`` to ``[structure, detail]`` without CFG), duplicating every batch-shaped input;
* after the forward it returns ``[uncond, detail]`` (``[detail]``), with the guidance amplified by
  ``amp_guidance_factor`` at the steps before ``start`` when ``amp_guidance`` is on.
"""

from __future__ import annotations

import logging
import weakref
import torch

from .config import FouriScaleConfig
from .plan import COND, DETAIL, UNCOND, Plan, make_plan
from .profiles import ModelProfile
from .schedule import denoising_steps, step_of_timestep_index
from .state import CallState, Runtime

__all__ = ["BranchWrapper", "locate_step", "expand_batch"]

logger = logging.getLogger("fouriscale")

# `sequential_uncond=None` runs the unconditional branch as its own pass from this latent area on
# (128 x 128 latents: 1024 px for SD, every SDXL size FouriScale acts on), where activations, not
# weights, start to dominate memory and a batch of two already fills the device.
SEQUENTIAL_UNCOND_MIN_LATENT = 128 * 128


def _timestep_index_by_storage(timesteps: torch.Tensor, t) -> int | None:
    """Index of ``t`` in ``timesteps`` when ``t`` is a view into it (the usual ``for t in timesteps``): no device sync."""
    if not isinstance(t, torch.Tensor) or not isinstance(timesteps, torch.Tensor) or timesteps.dim() != 1:
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


def _timestep_index_by_value(timesteps, t) -> int | None:
    """Index of the first entry of ``timesteps`` equal (else nearest) to the value of ``t``."""
    value = float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t)
    table = torch.as_tensor(timesteps).detach().double().cpu()
    if table.numel() == 0:
        return None
    hits = (table == value).nonzero()
    if len(hits):
        return int(hits[0])
    return int((table - value).abs().argmin())


def locate_step(scheduler, timestep) -> tuple[int, int] | None:
    """``(step, num_steps)`` of a UNet call at ``timestep``, read from ``scheduler.timesteps``; ``None`` if unknown."""
    timesteps = getattr(scheduler, "timesteps", None)
    if timesteps is None or len(timesteps) == 0:
        return None
    order = int(getattr(scheduler, "order", 1) or 1)
    k = _timestep_index_by_storage(timesteps, timestep)
    if k is None:
        k = _timestep_index_by_value(timesteps, timestep)
    if k is None:
        return None
    return step_of_timestep_index(k, order), denoising_steps(len(timesteps), order)


def expand_batch(obj, sources: tuple[int, ...], rows: int, total: int):
    """Rebuild every batch-shaped tensor in ``obj`` (nested in tuples/lists/dicts) from chunks of ``rows`` rows.

    ``sources[j]`` is the stock chunk that new branch ``j`` copies; tensors whose first dimension is not
    ``total`` (the stock batch) are left alone.
    """
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 0 or obj.shape[0] != total:
            return obj
        return torch.cat([obj[s * rows : (s + 1) * rows] for s in sources])
    if isinstance(obj, dict):
        return {k: expand_batch(v, sources, rows, total) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(expand_batch(v, sources, rows, total) for v in obj)
    return obj


def _base_time_ids(time_ids: torch.Tensor, height: int, width: int, base: tuple[float, float]) -> torch.Tensor:
    """SDXL micro-conditions: replace ``original_size``/``target_size`` left at ``(height, width)`` by the base bucket."""
    if time_ids.dim() != 2 or time_ids.shape[-1] != 6:
        return time_ids
    ids = time_ids.clone()
    default = torch.tensor([height, width], dtype=ids.dtype, device=ids.device)
    replacement = torch.tensor(base, dtype=ids.dtype, device=ids.device)
    for lo in (0, 4):
        pair = ids[:, lo : lo + 2]
        is_default = (pair == default).all(dim=1, keepdim=True)
        ids[:, lo : lo + 2] = torch.where(is_default, replacement, pair)
    return ids


class BranchWrapper:
    """Forward pre/post hooks on the UNet that run FouriScale's branches and know the current step."""

    def __init__(self, pipe, profile: ModelProfile, config: FouriScaleConfig, runtime: Runtime) -> None:
        self._pipe = weakref.ref(pipe)
        self.profile = profile
        self.config = config
        self.runtime = runtime
        self._plans: dict[tuple[int, int, int], Plan] = {}
        self._told: set = set()
        self._stock: int = 1
        self._uncond: torch.Tensor | None = None

    def plan(self, height: int, width: int, num_steps: int) -> Plan:
        """The (cached) plan for an image size in pixels and a number of denoising steps."""
        key = (height, width, num_steps)
        if key not in self._plans:
            plan = make_plan(self.profile, height, width, num_steps, self.config)
            if len(self._plans) > 16:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = plan
            if plan.noop and (height, width) not in self._told:
                self._told.add((height, width))
                logger.info(
                    "FouriScale: %dx%d is within the model's reference size %s; FouriScale is a no-op at this size.",
                    width, height, "x".join(str(int(v)) for v in reversed(plan.base_size)),
                )  # fmt: skip
        return self._plans[key]

    def _once(self, key: str, message: str) -> None:
        if key not in self._told:
            self._told.add(key)
            logger.warning(message)

    def pre_forward(self, module, args: tuple, kwargs: dict):
        self.runtime.state = None
        pipe = self._pipe()
        sample = args[0] if args else kwargs.get("sample")
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if pipe is None or not isinstance(sample, torch.Tensor) or timestep is None:
            return None
        located = locate_step(pipe.scheduler, timestep)
        if located is None:
            self._once("step", "FouriScale: the UNet was called outside a scheduler loop; running it unchanged.")
            return None
        step_index, num_steps = located
        f = self.profile.vae_scale_factor
        plan = self.plan(sample.shape[-2] * f, sample.shape[-1] * f, num_steps)
        if plan.noop:
            return None
        try:
            cfg = bool(pipe.do_classifier_free_guidance)
        except AttributeError:
            cfg = False
        stock = 2 if cfg else 1
        total = sample.shape[0]
        if total % stock:
            raise RuntimeError(f"FouriScale: UNet batch of {total} cannot be split into {stock} CFG branches.")
        rows = total // stock
        step = plan.step(step_index)
        roles = plan.branches(step, cfg)
        if self.profile.family == "sdxl" and self.config.base_size_conditioning:
            added = kwargs.get("added_cond_kwargs")
            if isinstance(added, dict) and isinstance(added.get("time_ids"), torch.Tensor):
                added = dict(added, time_ids=_base_time_ids(added["time_ids"], plan.height, plan.width, plan.base_size))
                kwargs = dict(kwargs, added_cond_kwargs=added)
        self._uncond = None
        if roles[0] == UNCOND and len(roles) == 3 and self._sequential_uncond(sample):
            # The unconditional branch runs as its own pass now and the hooked forward runs the coupled
            # (structure, detail) pair, so the UNet never sees more than the stock two-image batch.
            self.runtime.state = CallState(plan=plan, step=step, roles=(UNCOND,), branch_size=rows)
            out = module.forward(*expand_batch(args, (0,), rows, total), **expand_batch(kwargs, (0,), rows, total))
            self._uncond = out[0] if isinstance(out, tuple) else out.sample
            roles = roles[1:]
        if len(roles) != stock or self._uncond is not None:
            sources = tuple(0 if role == UNCOND else stock - 1 for role in roles)
            args = expand_batch(args, sources, rows, total)
            kwargs = expand_batch(kwargs, sources, rows, total)
        self.runtime.state = CallState(plan=plan, step=step, roles=roles, branch_size=rows)
        self._stock = stock
        return args, kwargs

    def _sequential_uncond(self, sample: torch.Tensor) -> bool:
        choice = self.config.sequential_uncond
        if choice is None:
            return sample.shape[-2] * sample.shape[-1] >= SEQUENTIAL_UNCOND_MIN_LATENT
        return choice

    def post_forward(self, module, args: tuple, kwargs: dict, output):
        state, self.runtime.state = self.runtime.state, None
        if state is None:
            return None
        sample = output[0] if isinstance(output, tuple) else output.sample
        rows, roles = state.branch_size, state.roles
        chunks = dict(zip(roles, sample.split(rows)))
        if self._uncond is not None:
            chunks[UNCOND], self._uncond = self._uncond, None
            roles = (UNCOND, *roles)
        cond = chunks[DETAIL] if DETAIL in chunks else chunks[COND]
        if self._stock == 2:
            uncond = chunks[UNCOND]
            if state.step.amp_guidance:
                cond = uncond + self.config.amp_guidance_factor * (cond - uncond)
            result = torch.cat([uncond, cond]) if len(roles) != 2 or state.step.amp_guidance else sample
        else:
            result = cond if len(roles) != 1 else sample
        if result is sample:
            return None
        if isinstance(output, tuple):
            return (result, *output[1:])
        return type(output)(sample=result)
