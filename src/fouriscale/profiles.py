"""Model families and what FouriScale patches in a UNet, read off the UNet's own structure.

:data:`FAMILIES` is the one table of per-family values (SD 1.x, SD 2.x, SDXL): the mask floor ``v``,
the detail branch's dilation divisor, FreeU's values, the layer rules and the paper's start/stop
windows. Family names are spelled ``"sd1"``, ``"sd2"`` and ``"sdxl"`` everywhere.

The paper's layer lists are expressed as rules on *levels* (how many 2x downsamplings lie between the
latent and a conv's input), so fine-tunes and small test models with the same block layout get the
same selection:

* SD 1.x/2.x: resnet convs of down blocks and the mid block at level >= 2, downsampler convs whose
  input is at level >= 2, resnet convs and upsampler convs of up blocks at level >= 1. On SD 1.5 this
  is exactly ``down_blocks.{2,3}``, ``down_blocks.2.downsamplers.0``, ``mid_block``,
  ``up_blocks.{0,1,2}`` (resnets and upsamplers).
* SDXL: the same, except that only up blocks at level >= 2 have their upsampler patched; on SDXL this
  is ``down_blocks.2``, ``mid_block``, ``up_blocks.{0,1}`` resnets and ``up_blocks.0.upsamplers.0``.

A UNet forward visits its top-level *stages* in order: ``conv_in``, the down blocks, the mid block,
the up blocks, ``conv_out``. Every patched layer, self-attention and FreeU site records its stage, so
the plan can decide where the structure and detail branches fork and join.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch.nn as nn

from .schedule import scaled_window

__all__ = [
    "Family",
    "FAMILIES",
    "family",
    "LayerRule",
    "LayerSpec",
    "AttentionSpec",
    "FreeUSite",
    "ModelProfile",
    "detect_profile",
    "native_latent",
]


@dataclass(frozen=True)
class LayerRule:
    """Minimum input levels of the convs FouriScale patches by default."""

    down: int  # resnet convs of down blocks and the mid block
    downsampler: int  # downsampler convs (level of their input)
    up: int  # resnet convs of up blocks
    upsampler: int  # up blocks whose upsampler conv is patched


@dataclass(frozen=True)
class Family:
    """One model family and the paper's values for it."""

    name: str  # "sd1", "sd2" or "sdxl"
    label: str  # human name, e.g. "Stable Diffusion 1.x"
    mask_floor: float  # v of both low-pass masks
    detail_dilation_divisor: float  # detail convs dilate by ceil(max(d_i / divisor, 1))
    freeu: tuple[float, float, float, float]  # (b1, b2, s1, s2) of the official scripts
    rule: LayerRule
    windows: tuple[tuple[int | None, tuple[int, int]], ...]  # (max dilation or None, (start, stop) of 50 steps)
    guidance_scale: float  # the official scripts' guidance scale (front-end default)
    paper_native: int  # native size (px) of the model the paper reported this family with
    bucketed: bool  # the base size is one of SDXL's training buckets

    def window(self, d: int, num_steps: int) -> tuple[int, int]:
        """Paper's ``(start, stop)`` for dilation ``d``, scaled to ``num_steps`` (SD: 10/30 of 50 for ``d <= 3``,
        else 20/35; SDXL: 20/35)."""
        for max_d, (start, stop) in self.windows:
            if max_d is None or d <= max_d:
                return scaled_window(start, stop, num_steps)
        raise AssertionError("the last window must have no dilation bound")  # pragma: no cover


_SD_RULE = LayerRule(down=2, downsampler=2, up=1, upsampler=1)
_SD_WINDOWS = ((3, (10, 30)), (None, (20, 35)))

#: The per-family table: the only place these values live.
FAMILIES: dict[str, Family] = {
    "sd1": Family(
        "sd1", "Stable Diffusion 1.x", 0.0, 1.0, (1.2, 1.4, 0.9, 0.2), _SD_RULE, _SD_WINDOWS, 7.5, 512, False
    ),
    "sd2": Family(
        "sd2", "Stable Diffusion 2.x", 0.0, 1.0, (1.1, 1.2, 0.9, 0.2), _SD_RULE, _SD_WINDOWS, 7.5, 512, False
    ),
    "sdxl": Family(
        "sdxl",
        "SDXL",
        0.6,
        1.5,
        (1.1, 1.2, 0.6, 0.4),
        LayerRule(down=2, downsampler=2, up=1, upsampler=2),
        ((None, (20, 35)),),
        5.0,
        1024,
        True,
    ),
}


def family(name: str) -> Family:
    """The :class:`Family` called ``name`` (``"sd1"``, ``"sd2"`` or ``"sdxl"``); ``ValueError`` otherwise."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}") from None


@dataclass(frozen=True)
class LayerSpec:
    """One patched convolution."""

    name: str  # module path in the UNet, e.g. "down_blocks.2.resnets.0.conv1"
    kind: str  # "conv" (resnet), "downsampler" or "upsampler"
    level: int  # 2x downsamplings between the latent and this conv's input (upsamplers: their block's level)
    stride: tuple[int, int]
    stage: int  # index of the top-level stage holding it (ModelProfile.stages)

    @property
    def filtered(self) -> bool:
        """Upsampler convs are dilated but never low-pass filtered."""
        return self.kind != "upsampler"


@dataclass(frozen=True)
class AttentionSpec:
    """A self-attention layer (``attn1`` of a transformer block)."""

    name: str  # e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    stage: int
    level: int  # 2x downsamplings between the latent and the layer's feature map
    block: str  # the stage's child module holding it, e.g. "up_blocks.1.attentions.0" (a Transformer2DModel)


@dataclass(frozen=True)
class FreeUSite:
    """An up-block resnet before which FreeU may act."""

    name: str  # e.g. "up_blocks.1.resnets.0"
    up_block: int
    backbone_channels: int  # channels of the incoming hidden state (before the skip concat)


@dataclass(frozen=True)
class ModelProfile:
    """What FouriScale needs to know about one UNet."""

    family: Family
    native_latent: tuple[int, int]  # unet.config.sample_size as (h0, w0)
    vae_scale_factor: int
    layers: tuple[LayerSpec, ...]
    attentions: tuple[AttentionSpec, ...]
    freeu_sites: tuple[FreeUSite, ...]
    deepest_channels: int  # block_out_channels[-1]
    stages: tuple[str, ...]  # top-level modules in forward order: conv_in, down blocks, mid block, up blocks, conv_out
    res_sample_stages: tuple[int, ...]  # stage that produced each skip tensor (ControlNet residual k matches entry k)
    intrablock_stages: tuple[int, ...]  # stage fed by each T2I-Adapter intra-block residual (down blocks, then mid)

    @property
    def native_size(self) -> tuple[int, int]:
        """Native image size in pixels (height, width)."""
        return self.native_latent[0] * self.vae_scale_factor, self.native_latent[1] * self.vae_scale_factor

    def layer(self, name: str) -> LayerSpec:
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def stage_of(self, name: str) -> int:
        """Stage index of the module path ``name`` (``mid_block.resnets.0`` -> the mid block's stage)."""
        parts = name.split(".")
        head = ".".join(parts[:2]) if parts[0] in ("down_blocks", "up_blocks") else parts[0]
        return self.stages.index(head)


def _conv_of(module: nn.Module | None) -> nn.Conv2d | None:
    """The 2-D convolution behind ``module``: itself, or the base layer of a LoRA layer around it."""
    for _ in range(3):
        if isinstance(module, nn.Conv2d):
            return module
        if not isinstance(module, nn.Module):
            return None
        module = module._modules.get("base_layer")
    return None


def _stages(unet: nn.Module) -> tuple[str, ...]:
    names = ["conv_in"] + [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    if getattr(unet, "mid_block", None) is not None:
        names.append("mid_block")
    names += [f"up_blocks.{i}" for i in range(len(unet.up_blocks))] + ["conv_out"]
    return tuple(names)


def _stage_levels(unet: nn.Module, stages: tuple[str, ...]) -> tuple[int, ...]:
    """Level (2x downsamplings below the latent) of the feature maps each stage's resnets and attentions see."""
    levels, level = [], 0
    for prefix in stages:
        levels.append(level)
        block = unet.get_submodule(prefix)
        level += bool(getattr(block, "downsamplers", None)) - bool(getattr(block, "upsamplers", None))
    return tuple(levels)


def _candidates(unet: nn.Module, stages: tuple[str, ...], levels: tuple[int, ...]) -> list[LayerSpec]:
    """Every spatial (kernel > 1) conv of the resnets and resamplers, with its input level and stage."""
    specs: list[LayerSpec] = []

    def add(prefix: str, name: str, module: nn.Module | None, kind: str) -> None:
        conv = _conv_of(module)
        if conv is None or max(conv.kernel_size) <= 1:
            return
        stage = stages.index(prefix)
        specs.append(LayerSpec(f"{prefix}.{name}", kind, levels[stage], tuple(int(s) for s in conv.stride), stage))

    def add_block(prefix: str, samplers_attr: str | None, kind: str) -> None:
        block = unet.get_submodule(prefix)
        for r, resnet in enumerate(getattr(block, "resnets", None) or []):
            for conv_name in ("conv1", "conv2"):
                add(prefix, f"resnets.{r}.{conv_name}", getattr(resnet, conv_name, None), "conv")
        samplers = (getattr(block, samplers_attr, None) or []) if samplers_attr else []
        for j, sampler in enumerate(samplers):
            add(prefix, f"{samplers_attr}.{j}.conv", getattr(sampler, "conv", None), kind)

    for i in range(len(unet.down_blocks)):
        add_block(f"down_blocks.{i}", "downsamplers", "downsampler")
    if getattr(unet, "mid_block", None) is not None:
        add_block("mid_block", None, "conv")
    for i in range(len(unet.up_blocks)):
        add_block(f"up_blocks.{i}", "upsamplers", "upsampler")
    return specs


def _default_selection(candidates: list[LayerSpec], rule: LayerRule) -> tuple[LayerSpec, ...]:
    def keep(spec: LayerSpec) -> bool:
        if spec.kind == "downsampler":
            return spec.level >= rule.downsampler
        if spec.kind == "upsampler":
            return spec.level >= rule.upsampler
        if spec.name.startswith("up_blocks."):
            return spec.level >= rule.up
        return spec.level >= rule.down

    return tuple(spec for spec in candidates if keep(spec))


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


def _attentions(unet: nn.Module, stages: tuple[str, ...], levels: tuple[int, ...]) -> tuple[AttentionSpec, ...]:
    """Self-attention layers (``attn1`` of transformer blocks) in forward order."""
    found = []
    for stage, prefix in enumerate(stages):
        block = unet.get_submodule(prefix)
        for name, module in block.named_modules():
            if name.endswith("attn1") and not getattr(module, "is_cross_attention", True):
                parts = name.split(".")
                # The stage's child holding the layer; a ModuleList (``attentions``) is no module of its own.
                child = parts[:2] if isinstance(block._modules.get(parts[0]), nn.ModuleList) else parts[:1]
                found.append(AttentionSpec(f"{prefix}.{name}", stage, levels[stage], ".".join([prefix, *child])))
    return tuple(found)


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


def _skip_stages(unet: nn.Module, stages: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Stages producing the UNet's skip tensors (``conv_in``, then each down block's resnets and downsampler),
    and the stages fed by T2I-Adapter intra-block residuals (one per down block, then the mid block)."""
    res = [stages.index("conv_in")]
    intrablock = []
    for i, block in enumerate(unet.down_blocks):
        stage = stages.index(f"down_blocks.{i}")
        res += [stage] * (
            len(getattr(block, "resnets", None) or []) + (1 if getattr(block, "downsamplers", None) else 0)
        )
        intrablock.append(stage)
    if "mid_block" in stages:
        intrablock.append(stages.index("mid_block"))
    return tuple(res), tuple(intrablock)


def native_latent(config) -> tuple[int, int]:
    """The UNet's native latent size ``(h0, w0)`` from ``config.sample_size`` (an int or a pair)."""
    sample = config.sample_size
    if isinstance(sample, int):
        return sample, sample
    if isinstance(sample, (list, tuple)) and len(sample) == 2:
        return int(sample[0]), int(sample[1])
    raise ValueError(f"unknown UNet layout: sample_size={sample!r} is neither an int nor (height, width).")


def detect_family(config) -> Family:
    """SDXL (``addition_embed_type="text_time"``), SD 2.x (1024-wide text conditioning) or SD 1.x."""
    embed = (
        config.get("addition_embed_type") if hasattr(config, "get") else getattr(config, "addition_embed_type", None)
    )
    if embed == "text_time":
        return FAMILIES["sdxl"]
    cross = getattr(config, "cross_attention_dim", None)
    if embed is None and cross is not None:
        first = cross[0] if isinstance(cross, (list, tuple)) else cross
        return FAMILIES["sd2" if first == 1024 else "sd1"]
    raise ValueError(
        f"unknown UNet layout (addition_embed_type={embed!r}); FouriScale supports Stable Diffusion 1.x/2.x and SDXL "
        "UNets."
    )


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
    fam = detect_family(config)
    stages = _stages(unet)
    levels = _stage_levels(unet, stages)
    candidates = _candidates(unet, stages, levels)
    chosen = _default_selection(candidates, fam.rule) if layers is None else _user_selection(candidates, tuple(layers))
    if not chosen:
        raise ValueError(
            "unknown UNet layout: no convolution matches FouriScale's layer rules (a UNet with at least three "
            "resolution levels is needed); pass layers=... to choose them yourself."
        )
    res_stages, intrablock = _skip_stages(unet, stages)
    return ModelProfile(
        family=fam,
        native_latent=native_latent(config),
        vae_scale_factor=int(vae_scale_factor),
        layers=chosen,
        attentions=_attentions(unet, stages, levels),
        freeu_sites=_freeu_sites(unet),
        deepest_channels=int(config.block_out_channels[-1]),
        stages=stages,
        res_sample_stages=res_stages,
        intrablock_stages=intrablock,
    )
