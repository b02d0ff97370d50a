"""State shared by the patched modules during one UNet forward (set by the UNet wrapper, read by the rest)."""

from __future__ import annotations

from dataclasses import dataclass

from .plan import DETAIL, Plan, StepSetting

__all__ = ["CallState", "Runtime"]


@dataclass(frozen=True)
class CallState:
    """What the current UNet forward runs: the plan, the step and the batch's branch roles."""

    plan: Plan
    step: StepSetting
    roles: tuple[str, ...]  # e.g. ("uncond", "structure", "detail")
    branch_size: int  # rows per branch

    @property
    def guided(self) -> bool:
        """The batch carries a detail branch (FouriScale guidance is on at this step)."""
        return DETAIL in self.roles


class Runtime:
    """Holder of the current :class:`CallState`; ``state`` is ``None`` outside FouriScale forwards."""

    def __init__(self) -> None:
        self.state: CallState | None = None
