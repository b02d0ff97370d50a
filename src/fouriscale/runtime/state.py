"""What the patched layers of one model share during one model pass (layer 3, shared by every host).

The host's model-level wrapper (diffusers: the UNet hook; ComfyUI: the diffusion-model wrapper) sets
``Runtime.call`` for each pass it runs; every patched layer reads it and does nothing while it is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..plan import Plan, StepSetting
from .layout import DETAIL, STRUCTURE

__all__ = ["CallState", "Runtime"]


@dataclass(frozen=True)
class CallState:
    """What one UNet pass runs: the plan, the step and the row layout of its batch.

    ``stock`` lists the branch roles of the batch the pass starts and ends with, e.g. ``("uncond", "detail")``;
    ``forked`` (or ``None``) the roles of stages ``plan.fork..plan.join``: ``stock`` with the structure branch
    inserted before the detail branch (in the join stage up to ``plan.join_block``; what comes after it there, an
    upsampler, sees ``stock`` again).
    Every branch is ``rows`` rows of the batch.
    """

    plan: Plan
    step: StepSetting
    rows: int
    stock: tuple[str, ...]
    forked: tuple[str, ...] | None

    def is_forked(self, stage: int) -> bool:
        """Stage ``stage`` runs the structure branch beside the detail branch."""
        return self.forked is not None and self.plan.fork <= stage <= self.plan.join

    def is_forked_batch(self, stage: int, x) -> bool:
        """``x`` is a batch of stage ``stage`` laid out as the forked branches."""
        return self.is_forked(stage) and x.shape[0] == len(self.forked) * self.rows

    def roles_at(self, stage: int) -> tuple[str, ...]:
        """Branch roles of the batch inside stage ``stage``."""
        return self.forked if self.is_forked(stage) else self.stock

    def rows_of(self, roles: tuple[str, ...], role: str) -> slice:
        """Rows of branch ``role`` in a batch laid out as ``roles``."""
        k = roles.index(role)
        return slice(k * self.rows, (k + 1) * self.rows)

    @property
    def shares_qk(self) -> bool:
        """Self-attention in the forked stages gives the detail branch the structure branch's queries and keys."""
        return self.forked is not None and STRUCTURE in self.forked and DETAIL in self.forked


class Runtime:
    """What the hooks of one patched UNet share: the current :class:`CallState` (``None`` outside FouriScale's
    passes) and the on/off switch of :func:`fouriscale.disabled`."""

    def __init__(self) -> None:
        self.call: CallState | None = None
        self.enabled: bool = True
