"""FouriScale for diffusers: training-free high-resolution generation with pretrained Stable Diffusion.

```python
import fouriscale
fouriscale.apply_fouriscale(pipe)                       # SD 1.x / 2.x / SDXL pipeline, in place
image = pipe(prompt, height=2048, width=2048).images[0]
fouriscale.remove_fouriscale(pipe)                      # back to the stock pipeline
```

The public names are imported on first use (``import fouriscale`` itself loads neither torch nor diffusers), so
that the command line can answer an interrupt during its start-up with one line; submodules
(``fouriscale.testing``, ``fouriscale.plan``, ...) load the same way when first named.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_PUBLIC = {
    "apply_fouriscale": ".diffusers",
    "remove_fouriscale": ".diffusers",
    "disabled": ".diffusers",
    "denoising_step": ".diffusers",
    "get_config": ".diffusers",
    "is_fouriscale_applied": ".diffusers",
    "get_plan": ".diffusers",
    "official_controlnet_kwargs": ".diffusers",
    "estimate_memory": ".diffusers",
    "fit_memory": ".diffusers",
    "meta_pipeline": ".diffusers",
    "parse_memory": ".memory",
    "MemoryEstimate": ".memory",
    "BudgetChoice": ".memory",
    "two_pass": ".two_pass",
    "TwoPassResult": ".two_pass",
    "evaluate": ".evaluation",
    "FouriScaleConfig": ".config",
    "Preset": ".config",
    "PAPER_PRESETS": ".config",
    "OFFICIAL_CONTROLNET": ".config",
    "FAMILIES": ".profiles",
    "Family": ".profiles",
    "Plan": ".plan",
}

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from .config import OFFICIAL_CONTROLNET, PAPER_PRESETS, FouriScaleConfig, Preset
    from .diffusers import (
        apply_fouriscale,
        denoising_step,
        disabled,
        estimate_memory,
        fit_memory,
        get_config,
        get_plan,
        is_fouriscale_applied,
        meta_pipeline,
        official_controlnet_kwargs,
        remove_fouriscale,
    )
    from .evaluation import evaluate
    from .memory import BudgetChoice, MemoryEstimate, parse_memory
    from .plan import Plan
    from .profiles import FAMILIES, Family
    from .two_pass import TwoPassResult, two_pass


def __getattr__(name: str):
    """A public name (imported on first use and kept), or a submodule by its name."""
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name], __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'fouriscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


class _Package(types.ModuleType):
    """The package: importing its submodule ``two_pass`` does not hide the function ``two_pass`` (the import system
    sets a package attribute for each submodule; the names of the API win, as they did when imported eagerly)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    # apply and remove (fouriscale.diffusers)
    "apply_fouriscale",
    "remove_fouriscale",
    "disabled",
    "denoising_step",
    "get_config",
    "is_fouriscale_applied",
    "get_plan",
    "official_controlnet_kwargs",
    # memory
    "estimate_memory",
    "fit_memory",
    "meta_pipeline",
    "parse_memory",
    "MemoryEstimate",
    "BudgetChoice",
    # recipes and measurement
    "two_pass",
    "TwoPassResult",
    "evaluate",
    # settings
    "FouriScaleConfig",
    "Preset",
    "PAPER_PRESETS",
    "OFFICIAL_CONTROLNET",
    "FAMILIES",
    "Family",
    "Plan",
    "__version__",
]
