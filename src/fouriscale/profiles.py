"""Model families, the backend-neutral description of a UNet, and what FouriScale patches in it (layer 2).

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
the up blocks, ``conv_out``; each stage runs its *units* (resnets, transformer models, resamplers) in order.
:class:`UNetDescription` lists them, named in diffusers' module paths (``down_blocks.2.resnets.0.conv1``), the
one naming every host's reader maps its own modules to: :mod:`fouriscale.diffusers.describe` reads a diffusers
``UNet2DConditionModel``, :mod:`fouriscale.comfyui.describe` a ComfyUI (LDM) ``UNetModel`` through ComfyUI's
own key mapping. :func:`make_profile` turns a description into the :class:`ModelProfile` the plan reads: every
patched layer, self-attention and FreeU site with its stage, so the plan can decide where the structure and
detail branches fork and join.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .schedule import scaled_window

__all__ = [
    "Family",
    "FAMILIES",
    "family",
    "LayerRule",
    "LayerSpec",
    "AttentionSpec",
    "FreeUSite",
    "Unit",
    "Stage",
    "UNetDescription",
    "ModelProfile",
    "make_profile",
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
class Unit:
    """One module a stage runs, in forward order: a resnet, a transformer model or a resampler."""

    name: str  # diffusers' module path, e.g. "down_blocks.2.resnets.0", "up_blocks.1.attentions.2"
    kind: str  # "resnet", "attention", "downsampler" or "upsampler"
    convs: tuple[tuple[str, tuple[int, int]], ...] = ()  # spatial convs (kernel > 1) as (path, stride), in order
    self_attentions: tuple[str, ...] = ()  # attention units: paths of the ``attn1`` layers that are self-attention
    out_channels: int = 0  # resnets: output width


@dataclass(frozen=True)
class Stage:
    """A top-level stage of the UNet forward and its units in order."""

    name: str  # "conv_in", "down_blocks.0", ..., "mid_block", "up_blocks.0", ..., "conv_out"
    units: tuple[Unit, ...] = ()

    def has(self, kind: str) -> bool:
        return any(unit.kind == kind for unit in self.units)


@dataclass(frozen=True)
class UNetDescription:
    """What a UNet is made of, the same for every host: its family, native size and stages."""

    family: Family
    native_latent: tuple[int, int]  # native latent size (h0, w0)
    stages: tuple[Stage, ...]  # conv_in, down blocks, mid block (if any), up blocks, conv_out
    deepest_channels: int  # width of the deepest level

    def stage_levels(self) -> tuple[int, ...]:
        """Level (2x downsamplings below the latent) of the feature maps each stage's resnets and attentions see."""
        levels, level = [], 0
        for stage in self.stages:
            levels.append(level)
            level += stage.has("downsampler") - stage.has("upsampler")
        return tuple(levels)

    def units(self, kind: str) -> list[tuple[int, Unit]]:
        """``(stage index, unit)`` of every unit of ``kind``, in forward order."""
        return [(i, unit) for i, stage in enumerate(self.stages) for unit in stage.units if unit.kind == kind]


@dataclass(frozen=True)
class ModelProfile:
    """What FouriScale needs to know about one UNet."""

    family: Family
    native_latent: tuple[int, int]  # native latent size (h0, w0)
    vae_scale_factor: int
    layers: tuple[LayerSpec, ...]
    attentions: tuple[AttentionSpec, ...]
    freeu_sites: tuple[FreeUSite, ...]
    deepest_channels: int  # width of the deepest level
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


_CONV_KIND = {"resnet": "conv", "downsampler": "downsampler", "upsampler": "upsampler"}


def _candidates(description: UNetDescription, levels: tuple[int, ...]) -> list[LayerSpec]:
    """Every spatial conv of the resnets and resamplers, with its input level and stage."""
    return [
        LayerSpec(name, _CONV_KIND[unit.kind], levels[i], stride, i)
        for i, stage in enumerate(description.stages)
        for unit in stage.units
        if unit.kind in _CONV_KIND
        for name, stride in unit.convs
    ]


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


def _attentions(description: UNetDescription, levels: tuple[int, ...]) -> tuple[AttentionSpec, ...]:
    """Self-attention layers in forward order."""
    return tuple(
        AttentionSpec(name, i, levels[i], unit.name)
        for i, unit in description.units("attention")
        for name in unit.self_attentions
    )


def _freeu_sites(description: UNetDescription) -> tuple[FreeUSite, ...]:
    """Up-block resnets with the width of the hidden state entering each (the mid block's output first)."""
    mid = [unit for i, unit in description.units("resnet") if description.stages[i].name == "mid_block"]
    incoming = mid[-1].out_channels if mid else description.deepest_channels
    sites = []
    for i, unit in description.units("resnet"):
        name = description.stages[i].name
        if name.startswith("up_blocks."):
            sites.append(FreeUSite(unit.name, int(name.split(".")[1]), int(incoming)))
            incoming = unit.out_channels
    return tuple(sites)


def _skip_stages(description: UNetDescription) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Stages producing the UNet's skip tensors (``conv_in``, then each down block's resnets and downsampler),
    and the stages fed by T2I-Adapter intra-block residuals (one per down block, then the mid block)."""
    res, intrablock = [], []
    for i, stage in enumerate(description.stages):
        if stage.name == "conv_in":
            res.append(i)
        elif stage.name.startswith("down_blocks."):
            res += [i] * sum(unit.kind in ("resnet", "downsampler") for unit in stage.units)
            intrablock.append(i)
        elif stage.name == "mid_block":
            intrablock.append(i)
    return tuple(res), tuple(intrablock)


def make_profile(
    description: UNetDescription, vae_scale_factor: int, layers: tuple[str, ...] | None = None
) -> ModelProfile:
    """The :class:`ModelProfile` of a described UNet: the paper's layers (or ``layers``, module paths or glob
    patterns), its self-attentions, FreeU sites and skip tensors by stage.

    Raises ``ValueError`` when no conv matches (a UNet with fewer than three resolution levels) or a pattern of
    ``layers`` matches none.
    """
    levels = description.stage_levels()
    candidates = _candidates(description, levels)
    rule = description.family.rule
    chosen = _default_selection(candidates, rule) if layers is None else _user_selection(candidates, tuple(layers))
    if not chosen:
        raise ValueError(
            "unknown UNet layout: no convolution matches FouriScale's layer rules (a UNet with at least three "
            "resolution levels is needed); pass layers=... to choose them yourself."
        )
    res_stages, intrablock = _skip_stages(description)
    return ModelProfile(
        family=description.family,
        native_latent=description.native_latent,
        vae_scale_factor=int(vae_scale_factor),
        layers=chosen,
        attentions=_attentions(description, levels),
        freeu_sites=_freeu_sites(description),
        deepest_channels=int(description.deepest_channels),
        stages=tuple(stage.name for stage in description.stages),
        res_sample_stages=res_stages,
        intrablock_stages=intrablock,
    )
