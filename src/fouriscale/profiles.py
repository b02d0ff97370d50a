"""Model families: what FouriScale patches in a UNet, read off the UNet's own structure.

The paper's layer lists (SD 1.x/2.x and SDXL) are expressed as rules on *levels* (how many 2x
downsamplings lie between the latent and a conv's input), so fine-tunes and small test models with
the same block layout get the same selection:

* SD 1.x/2.x: resnet convs of down blocks and the mid block at level >= 2, downsampler convs whose
  input is at level >= 2, resnet convs and upsampler convs of up blocks at level >= 1. On SD 1.5 this
  is exactly ``down_blocks.{2,3}``, ``down_blocks.2.downsamplers.0``, ``mid_block``,
  ``up_blocks.{0,1,2}`` (resnets and upsamplers).
* SDXL: the same, except that only up blocks at level >= 2 have their upsampler patched; on SDXL this
  is ``down_blocks.2``, ``mid_block``, ``up_blocks.{0,1}`` resnets and ``up_blocks.0.upsamplers.0``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch.nn as nn

__all__ = ["LayerSpec", "FreeUSite", "ModelProfile", "detect_profile", "native_latent", "FREEU_VALUES"]

# FreeU values (b1, b2, s1, s2) the official FouriScale scripts use.
FREEU_VALUES = {
    "sd1": (1.2, 1.4, 0.9, 0.2),
    "sd2": (1.1, 1.2, 0.9, 0.2),
    "sdxl": (1.1, 1.2, 0.6, 0.4),
}

# (min level of down/mid resnets, of downsampler inputs, of up resnets, of up blocks whose upsampler is patched)
_SELECTION = {"sd": (2, 2, 1, 1), "sdxl": (2, 2, 1, 2)}


@dataclass(frozen=True)
class LayerSpec:
    """One patched convolution."""

    name: str  # module path in the UNet, e.g. "down_blocks.2.resnets.0.conv1"
    kind: str  # "conv" (resnet), "downsampler" or "upsampler"
    level: int  # 2x downsamplings between the latent and this conv's input
    stride: tuple[int, int]

    @property
    def filtered(self) -> bool:
        """Upsampler convs are dilated but never low-pass filtered."""
        return self.kind != "upsampler"


@dataclass(frozen=True)
class FreeUSite:
    """An up-block resnet before which FreeU may act."""

    name: str  # e.g. "up_blocks.1.resnets.0"
    up_block: int
    backbone_channels: int  # channels of the incoming hidden state (before the skip concat)


@dataclass(frozen=True)
class ModelProfile:
    """What FouriScale needs to know about one UNet."""

    family: str  # "sd" (SD 1.x/2.x layouts) or "sdxl"
    variant: str  # "sd1", "sd2" or "sdxl" (picks FreeU values)
    native_latent: tuple[int, int]  # unet.config.sample_size as (h0, w0)
    vae_scale_factor: int
    layers: tuple[LayerSpec, ...]
    freeu_sites: tuple[FreeUSite, ...]
    deepest_channels: int  # block_out_channels[-1]

    @property
    def native_size(self) -> tuple[int, int]:
        """Native image size in pixels (height, width)."""
        return self.native_latent[0] * self.vae_scale_factor, self.native_latent[1] * self.vae_scale_factor

    @property
    def freeu_values(self) -> tuple[float, float, float, float]:
        return FREEU_VALUES[self.variant]

    @property
    def mask_floor(self) -> float:
        """Floor ``v`` of both low-pass masks: 0 for SD, 0.6 for SDXL."""
        return 0.6 if self.family == "sdxl" else 0.0

    @property
    def detail_dilation_divisor(self) -> float:
        """SDXL's detail branch convolves with ``ceil(max(d_i / 1.5, 1))``; SD uses ``d_i`` itself."""
        return 1.5 if self.family == "sdxl" else 1.0

    def layer(self, name: str) -> LayerSpec:
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise KeyError(name)


def _conv_of(module: nn.Module | None, depth: int = 0) -> nn.Conv2d | None:
    """The 2-D convolution behind ``module``: itself, or the conv inside a wrapper (a LoRA layer's
    ``base_layer``, FouriScale's own conv wrapper)."""
    if isinstance(module, nn.Conv2d):
        return module
    if not isinstance(module, nn.Module) or depth > 2:
        return None
    inner = module._modules.get("base_layer") or module._modules.get("conv")
    return _conv_of(inner, depth + 1)


def _candidates(unet: nn.Module) -> list[LayerSpec]:
    """Every spatial (kernel > 1) conv of the resnets and resamplers, with its input level."""
    specs: list[LayerSpec] = []

    def add(name: str, module: nn.Module | None, kind: str, level: int) -> None:
        conv = _conv_of(module) if module is not None else None
        if conv is None or max(conv.kernel_size) <= 1:
            return
        specs.append(LayerSpec(name, kind, level, tuple(int(s) for s in conv.stride)))

    def add_resnets(prefix: str, block: nn.Module, level: int) -> None:
        for r, resnet in enumerate(getattr(block, "resnets", None) or []):
            for conv_name in ("conv1", "conv2"):
                add(f"{prefix}.resnets.{r}.{conv_name}", getattr(resnet, conv_name, None), "conv", level)

    def add_block(prefix: str, block: nn.Module, level: int, samplers_attr: str, kind: str, step: int) -> int:
        add_resnets(prefix, block, level)
        samplers = getattr(block, samplers_attr, None) or []
        for j, sampler in enumerate(samplers):
            add(f"{prefix}.{samplers_attr}.{j}.conv", getattr(sampler, "conv", None), kind, level)
        return level + step if samplers else level

    level = 0
    for i, block in enumerate(unet.down_blocks):
        level = add_block(f"down_blocks.{i}", block, level, "downsamplers", "downsampler", 1)
    if getattr(unet, "mid_block", None) is not None:
        add_resnets("mid_block", unet.mid_block, level)
    for i, block in enumerate(unet.up_blocks):
        # An upsampler conv sees the upsampled map; its `level` records the block's own level.
        level = add_block(f"up_blocks.{i}", block, level, "upsamplers", "upsampler", -1)
    return specs


def _default_selection(candidates: list[LayerSpec], family: str) -> tuple[LayerSpec, ...]:
    down_min, downsampler_min, up_min, upsampler_min = _SELECTION[family]
    chosen = []
    for spec in candidates:
        if spec.kind == "downsampler":
            keep = spec.level >= downsampler_min
        elif spec.kind == "upsampler":
            keep = spec.level >= upsampler_min
        elif spec.name.startswith("up_blocks."):
            keep = spec.level >= up_min
        else:
            keep = spec.level >= down_min
        if keep:
            chosen.append(spec)
    return tuple(chosen)


def _user_selection(candidates: list[LayerSpec], patterns: tuple[str, ...]) -> tuple[LayerSpec, ...]:
    chosen = []
    for pattern in patterns:
        matches = [s for s in candidates if s.name == pattern or fnmatch.fnmatchcase(s.name, pattern)]
        if not matches:
            examples = ", ".join(s.name for s in candidates[:3])
            raise ValueError(
                f"layers: {pattern!r} matches no spatial convolution of this UNet; use module paths such as "
                f"{examples} (glob patterns like 'up_blocks.*.resnets.*.conv1' work too)."
            )
        chosen.extend(m for m in matches if m not in chosen)
    return tuple(sorted(chosen, key=candidates.index))


def _freeu_sites(unet: nn.Module) -> tuple[FreeUSite, ...]:
    sites = []
    if getattr(unet, "mid_block", None) is not None and getattr(unet.mid_block, "resnets", None):
        incoming = unet.mid_block.resnets[-1].out_channels
    else:
        incoming = unet.config.block_out_channels[-1]
    for i, block in enumerate(unet.up_blocks):
        for r, resnet in enumerate(getattr(block, "resnets", None) or []):
            sites.append(FreeUSite(f"up_blocks.{i}.resnets.{r}", i, int(incoming)))
            incoming = resnet.out_channels
    return tuple(sites)


def native_latent(config) -> tuple[int, int]:
    """The UNet's native latent size ``(h0, w0)`` from ``config.sample_size`` (an int or a pair)."""
    sample = config.sample_size
    if isinstance(sample, int):
        return sample, sample
    if isinstance(sample, (list, tuple)) and len(sample) == 2:
        return int(sample[0]), int(sample[1])
    raise ValueError(f"unknown UNet layout: sample_size={sample!r} is neither an int nor (height, width).")


def detect_profile(unet: nn.Module, vae_scale_factor: int, layers: tuple[str, ...] | None = None) -> ModelProfile:
    """Read a :class:`ModelProfile` off a diffusers ``UNet2DConditionModel``.

    Raises ``TypeError`` for objects that are not such a UNet and ``ValueError`` for UNet layouts that
    FouriScale does not know (no down/up blocks, or an unsupported conditioning scheme).
    """
    config = getattr(unet, "config", None)
    if not isinstance(unet, nn.Module) or config is None:
        raise TypeError(
            f"expected a diffusers UNet2DConditionModel, got {type(unet).__name__}; pass a Stable Diffusion "
            "(1.x, 2.x) or SDXL pipeline."
        )
    if not hasattr(unet, "down_blocks") or not hasattr(unet, "up_blocks") or len(unet.down_blocks) < 2:
        raise ValueError(
            f"{type(unet).__name__} has no UNet down/up blocks; FouriScale supports Stable Diffusion 1.x/2.x "
            "and SDXL UNets (UNet2DConditionModel)."
        )
    embed = config.get("addition_embed_type") if hasattr(config, "get") else getattr(config, "addition_embed_type", None)
    if embed == "text_time":
        family, variant = "sdxl", "sdxl"
    elif embed is None and getattr(config, "cross_attention_dim", None) is not None:
        family = "sd"
        cross = config.cross_attention_dim
        variant = "sd2" if (cross == 1024 or (isinstance(cross, (list, tuple)) and cross[0] == 1024)) else "sd1"
    else:
        raise ValueError(
            f"unknown UNet layout (addition_embed_type={embed!r}); FouriScale supports Stable Diffusion 1.x/2.x "
            "and SDXL UNets."
        )
    native = native_latent(config)
    candidates = _candidates(unet)
    chosen = _default_selection(candidates, family) if layers is None else _user_selection(candidates, tuple(layers))
    if not chosen:
        raise ValueError(
            "unknown UNet layout: no convolution matches FouriScale's layer rules (a UNet with at least three "
            "resolution levels is needed); pass layers=... to choose them yourself."
        )
    return ModelProfile(
        family=family,
        variant=variant,
        native_latent=native,
        vae_scale_factor=int(vae_scale_factor),
        layers=chosen,
        freeu_sites=_freeu_sites(unet),
        deepest_channels=int(config.block_out_channels[-1]),
    )
