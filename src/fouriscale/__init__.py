"""FouriScale for diffusers: training-free high-resolution generation with pretrained Stable Diffusion.

```python
import fouriscale
fouriscale.apply_fouriscale(pipe)                       # SD 1.x / 2.x / SDXL pipeline, in place
image = pipe(prompt, height=2048, width=2048).images[0]
fouriscale.remove_fouriscale(pipe)                      # back to the stock pipeline
```
"""

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
from .memory import BudgetChoice, MemoryEstimate, parse_memory
from .plan import Plan
from .profiles import FAMILIES, Family
from .two_pass import TwoPassResult, two_pass

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``fouriscale.evaluate`` without importing torchmetrics at ``import fouriscale``.
    if name == "evaluate":
        from .evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'fouriscale' has no attribute {name!r}")


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
