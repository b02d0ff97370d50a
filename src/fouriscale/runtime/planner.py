"""The plans of one patched model, made once per size and step count (layer 3, shared by every host)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ..config import FouriScaleConfig
from ..errors import API_NAMES, SettingError
from ..plan import Plan, make_plan
from ..profiles import ModelProfile
from .state import Runtime

__all__ = ["Planner"]

logger = logging.getLogger("fouriscale")

_MAX_PLANS = 16


class Planner:
    """What every host's patch holds: the model profile, the config, the :class:`Runtime` its patched layers share,
    and the plans made so far (the last 16 sizes and step counts), with the warnings a plan calls for."""

    def __init__(self, profile: ModelProfile, config: FouriScaleConfig) -> None:
        self.profile = profile
        self.config = config
        #: How a :class:`~fouriscale.errors.SettingError` of a plan names other settings (a front end sets its own).
        self.names: Mapping[str, str | None] = API_NAMES
        self.runtime = Runtime()
        self._plans: dict[tuple, Plan] = {}
        self._told: set = set()

    def plan(self, height: int, width: int, num_steps: int, config: FouriScaleConfig | None = None) -> Plan:
        """The (cached) plan for an image size in pixels and a number of denoising steps (under ``config`` instead
        of the patch's own: settings a memory budget chose, or an estimate's)."""
        config = config or self.config
        key = (height, width, num_steps, config)
        plan = self._plans.get(key)
        if plan is None:
            try:
                plan = make_plan(self.profile, height, width, num_steps, config)
            except SettingError as exc:
                raise (exc if self.names is API_NAMES else exc.reworded(self.names)) from None
            if len(self._plans) >= _MAX_PLANS:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = plan
            if plan.far_beyond_native:
                self.warn_once("far_beyond_native", plan.far_beyond_native_text)
            if plan.noop and (height, width) not in self._told:
                self._told.add((height, width))
                logger.info(
                    "%dx%d is within the model's reference size %s; FouriScale is a no-op at this size.",
                    width,
                    height,
                    "x".join(str(int(v)) for v in reversed(plan.base_size)),
                )
        return plan

    def warn_once(self, key: str, message: str) -> None:
        """Log ``message`` once per patch on the ``fouriscale`` logger; the record carries ``fouriscale_warning=key``
        for front ends to tell warnings apart (``"far_beyond_native"``, ``"pipeline"``, ``"step"``)."""
        if key not in self._told:
            self._told.add(key)
            logger.warning(message, extra={"fouriscale_warning": key})
