"""FouriScale on diffusers pipelines (layer 3, diffusers host): named hooks through ``diffusers.hooks`` on the
pipeline's UNet, a tiled VAE decode for large images, and the step read from the calling pipeline's scheduler.

The public names are re-exported by :mod:`fouriscale`: ``apply_fouriscale``, ``remove_fouriscale``,
``disabled``, ``denoising_step``, ``get_plan``, ...
"""

from .memory import MemoryBudgetError, estimate_memory, fit_memory, measure_memory
from .meta import meta_pipeline
from .patch import (
    apply_fouriscale,
    denoising_step,
    disabled,
    get_config,
    get_plan,
    is_fouriscale_applied,
    official_controlnet_kwargs,
    remove_fouriscale,
)

__all__ = [
    "apply_fouriscale",
    "remove_fouriscale",
    "is_fouriscale_applied",
    "get_plan",
    "get_config",
    "disabled",
    "denoising_step",
    "official_controlnet_kwargs",
    "estimate_memory",
    "measure_memory",
    "fit_memory",
    "MemoryBudgetError",
    "meta_pipeline",
]
