"""A diffusers ``UNet2DConditionModel`` as a :class:`~fouriscale.profiles.UNetDescription` (layer 3, diffusers host).

The description is read off the module tree (so LoRA layers around a conv, fused projections and fine-tunes with
the same block layout are read as they are) and the config (family, native size); the module paths are
diffusers' own, the naming every host's description uses.
"""

from __future__ import annotations

import torch.nn as nn

from ..profiles import FAMILIES, Family, ModelProfile, Stage, UNetDescription, Unit, make_profile

__all__ = ["describe_unet", "detect_profile", "detect_family", "native_latent", "vae_scale_factor"]


def _conv_of(module: nn.Module | None) -> nn.Conv2d | None:
    """The 2-D convolution behind ``module``: itself, or the base layer of a LoRA layer around it."""
    for _ in range(3):
        if isinstance(module, nn.Conv2d):
            return module
        if not isinstance(module, nn.Module):
            return None
        module = module._modules.get("base_layer")
    return None


def _spatial_convs(prefix: str, owner: nn.Module, names: tuple[str, ...]) -> tuple[tuple[str, tuple[int, int]], ...]:
    """``(path, stride)`` of the convs ``names`` of ``owner`` with a kernel larger than 1x1."""
    found = []
    for name in names:
        conv = _conv_of(getattr(owner, name, None))
        if conv is not None and max(conv.kernel_size) > 1:
            found.append((f"{prefix}.{name}", tuple(int(s) for s in conv.stride)))
    return tuple(found)


def _self_attentions(prefix: str, attention: nn.Module) -> tuple[str, ...]:
    return tuple(
        f"{prefix}.{name}"
        for name, module in attention.named_modules()
        if name.endswith("attn1") and not getattr(module, "is_cross_attention", True)
    )


def _units(prefix: str, block: nn.Module, samplers_attr: str | None, kind: str | None) -> tuple[Unit, ...]:
    """A block's resnets, each followed by its transformer model (diffusers runs ``resnets[i]`` before
    ``attentions[i]``, in the mid block too), then its resamplers."""
    units = []
    attentions = getattr(block, "attentions", None) or []
    for r, resnet in enumerate(getattr(block, "resnets", None) or []):
        name = f"{prefix}.resnets.{r}"
        units.append(Unit(name, "resnet", _spatial_convs(name, resnet, ("conv1", "conv2")), (), resnet.out_channels))
        if r < len(attentions):
            name = f"{prefix}.attentions.{r}"
            units.append(Unit(name, "attention", self_attentions=_self_attentions(name, attentions[r])))
    for j, sampler in enumerate((getattr(block, samplers_attr, None) or []) if samplers_attr else []):
        name = f"{prefix}.{samplers_attr}.{j}"
        units.append(Unit(name, kind, _spatial_convs(name, sampler, ("conv",))))
    return tuple(units)


def vae_scale_factor(config) -> int:
    """How much a VAE of this config (a config object or dict) downsamples: 2 per level after the first (diffusers'
    ``vae_scale_factor``)."""
    channels = config["block_out_channels"] if isinstance(config, dict) else config.block_out_channels
    return 2 ** (len(channels) - 1)


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


def describe_unet(unet: nn.Module) -> UNetDescription:
    """Read the :class:`~fouriscale.profiles.UNetDescription` of a diffusers ``UNet2DConditionModel``.

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
    stages = [Stage("conv_in")]
    stages += [
        Stage(f"down_blocks.{i}", _units(f"down_blocks.{i}", b, "downsamplers", "downsampler"))
        for i, b in enumerate(unet.down_blocks)
    ]
    if getattr(unet, "mid_block", None) is not None:
        stages.append(Stage("mid_block", _units("mid_block", unet.mid_block, None, None)))
    stages += [
        Stage(f"up_blocks.{i}", _units(f"up_blocks.{i}", b, "upsamplers", "upsampler"))
        for i, b in enumerate(unet.up_blocks)
    ]
    stages.append(Stage("conv_out"))
    return UNetDescription(fam, native_latent(config), tuple(stages), int(config.block_out_channels[-1]))


def detect_profile(unet: nn.Module, vae_scale_factor: int, layers: tuple[str, ...] | None = None) -> ModelProfile:
    """The :class:`~fouriscale.profiles.ModelProfile` of a diffusers ``UNet2DConditionModel``
    (:func:`describe_unet`, then :func:`~fouriscale.profiles.make_profile`)."""
    return make_profile(describe_unet(unet), vae_scale_factor, layers)
