"""FreeU as the FouriScale paper applied it (layer 3), and the switch to diffusers' own FreeU.

The official scripts decide FreeU's stage by the channel count of the hidden state entering each
up-block resnet: the UNet's deepest width gets ``(b1, s1)``, half of it gets ``(b2, s2)``. The first
half of the hidden state's channels is multiplied by ``b`` and the skip feature is Fourier-filtered
with ``s``. diffusers' ``enable_freeu`` instead picks the stage by up-block index; on SD 1.5 the paper's
rule also gates the first resnet of ``up_blocks.2``.

Diffusers concatenates ``[hidden, skip]`` right before calling each resnet, so the paper's variant is
a named pre-forward hook on the resnet that splits the concatenation at the known backbone width.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.hooks import ModelHook

from .profiles import FreeUSite
from .spectral import freeu_filter
from .state import Runtime

__all__ = [
    "freeu_stage",
    "PaperFreeUHook",
    "FREEU_HOOK",
    "FreeUSnapshot",
    "enable_diffusers_freeu",
    "disable_diffusers_freeu",
]

FREEU_HOOK = "fouriscale.freeu"


def freeu_stage(backbone_channels: int, deepest_channels: int) -> int | None:
    """Stage of the paper's FreeU: 1 when the incoming width is the deepest width, 2 when it is half of it."""
    if backbone_channels == deepest_channels:
        return 1
    if 2 * backbone_channels == deepest_channels:
        return 2
    return None


class PaperFreeUHook(ModelHook):
    """Pre-forward hook of one up-block resnet: scale the backbone half, filter the skip feature."""

    def __init__(self, site: FreeUSite, stage: int, runtime: Runtime) -> None:
        super().__init__()
        self.site = site
        self.stage = stage  # 1: (b1, s1); 2: (b2, s2)
        self.runtime = runtime

    def pre_forward(self, module: nn.Module, *args, **kwargs):
        call = self.runtime.call
        if call is None or call.plan.freeu_params is None or call.plan.config.freeu != "paper" or not args:
            return args, kwargs
        b1, b2, s1, s2 = call.plan.freeu_params
        b, s = (b1, s1) if self.stage == 1 else (b2, s2)
        x = args[0]
        C = self.site.backbone_channels
        half = C // 2
        x = torch.cat([x[:, :half] * b, x[:, half:C], freeu_filter(x[:, C:], s)], dim=1)
        return (x, *args[1:]), kwargs


class FreeUSnapshot:
    """The diffusers FreeU attributes of every up block, as they were; ``remove()`` puts them back."""

    _ATTRS = ("s1", "s2", "b1", "b2")

    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet
        self.saved = [{a: getattr(block, a, None) for a in self._ATTRS} for block in unet.up_blocks]

    @property
    def enabled(self) -> bool:
        return any(saved["b1"] for saved in self.saved)

    def remove(self) -> None:
        for block, saved in zip(self.unet.up_blocks, self.saved):
            for attr, value in saved.items():
                setattr(block, attr, value)


def enable_diffusers_freeu(unet: nn.Module, params: tuple[float, float, float, float]) -> FreeUSnapshot:
    """``freeu="diffusers"``: diffusers' ``enable_freeu``; the returned snapshot restores the previous state."""
    snapshot = FreeUSnapshot(unet)
    b1, b2, s1, s2 = params
    unet.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)
    return snapshot


def disable_diffusers_freeu(unet: nn.Module) -> FreeUSnapshot | None:
    """Switch off a FreeU enabled through diffusers (so the paper's variant does not stack on it); returns
    the snapshot that restores it, or ``None`` when none was on."""
    snapshot = FreeUSnapshot(unet)
    if not snapshot.enabled:
        return None
    unet.disable_freeu()
    return snapshot
