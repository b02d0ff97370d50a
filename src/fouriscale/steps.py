"""Which denoising step a UNet call belongs to, read from the scheduler's own table (layer 3 helper).

One documented path: the UNet's ``timestep`` is located in ``scheduler.timesteps``

1. by storage, when it is a view into that table (the usual ``for t in timesteps`` loop, including
   img2img's ``timesteps[t_start:]`` after ``set_begin_index``): no device sync;
2. else by exact value (a copy of an entry), against a CPU copy of the table made once per table.

The index ``k`` gives the step ``ceil(k / order)`` (second-order schedulers list most timesteps twice)
of ``N`` steps in all, so the step is the position in the *full* schedule: img2img with strength ``s``
runs steps ``N - int(s * N) .. N - 1``, and the dilation phases follow the noise level, not the number of
steps run. A timestep that is not in the table gives ``None``: the caller runs the UNet unchanged.
"""

from __future__ import annotations

import torch

from .schedule import denoising_steps, step_of_timestep_index

__all__ = ["locate_step"]


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
