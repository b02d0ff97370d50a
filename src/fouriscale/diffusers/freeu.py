"""diffusers' own FreeU state on a UNet (layer 3, diffusers host): a snapshot that puts it back.

diffusers' ``enable_freeu`` picks FreeU's stage by up-block index; the paper's variant (the default,
:class:`~fouriscale.diffusers.layers.PaperFreeUHook`) picks it by the channel count of the incoming hidden state,
which on SD 1.5 also gates the first resnet of ``up_blocks.2``.
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ["FreeUSnapshot"]


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
