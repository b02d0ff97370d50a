"""A ComfyUI model as a :class:`~fouriscale.profiles.UNetDescription` (layer 3, ComfyUI host).

ComfyUI runs SD 1.x/2.x/SDXL with the original (LDM) ``UNetModel``: ``input_blocks``, ``middle_block``,
``output_blocks``, ``out``. Its units are read in forward order and named with ComfyUI's own mapping to
diffusers' module paths (``comfy.utils.unet_to_diffusers``), so the description, and with it the profile and the
plan, are the ones the diffusers host makes for the same weights. :class:`LdmView` keeps the way back from each
diffusers path to the LDM module path, for the patches.

The family comes from the model's ComfyUI config class (``SD15``, ``SD20``, ``SDXL`` and their variants), the
native size from the family and, for SD 2.x, the prediction type (``v`` models are the 768 px ones).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..profiles import FAMILIES, Family, Stage, UNetDescription, Unit

__all__ = ["LdmView", "describe_model", "model_family", "native_latent_of"]

# ComfyUI config classes built on SD 2.x's UNet that are not text-to-image models FouriScale knows.
_NOT_TEXT_TO_IMAGE = ("SD_X4Upscaler", "LotusD")


@dataclass(frozen=True)
class LdmView:
    """A description's paths in the ComfyUI model: diffusers path -> LDM path (relative to ``diffusion_model``)."""

    paths: dict[str, str]
    output_units: tuple[str, ...]  # diffusers path of the up-block resnet each output block starts with

    def __getitem__(self, name: str) -> str:
        return self.paths[name]


def model_family(model) -> Family:
    """The family of a ComfyUI ``BaseModel`` from its config class; ``ValueError`` for other models."""
    import comfy.supported_models as sm

    config = getattr(model, "model_config", None)
    kind = type(config).__name__
    if not any(isinstance(config, getattr(sm, name, ())) for name in _NOT_TEXT_TO_IMAGE):
        for name, cls in (("sdxl", sm.SDXL), ("sd2", sm.SD20), ("sd1", sm.SD15)):
            if isinstance(config, cls):
                return FAMILIES[name]
    raise ValueError(
        f"FouriScale supports Stable Diffusion 1.x, 2.x and SDXL models (and their fine-tunes); this model is {kind}."
    )


def native_latent_of(model, family: Family) -> tuple[int, int]:
    """Native latent size: SD 1.x 64 (512 px), SD 2.x 96 for v-prediction models (768 px) else 64, SDXL 128."""
    import comfy.model_base

    if family.name == "sd2" and getattr(model, "model_type", None) == comfy.model_base.ModelType.V_PREDICTION:
        side = 96
    else:
        side = family.paper_native // 8
    return side, side


def _diffusers_names(unet_config: dict) -> dict[str, str]:
    """LDM module path -> diffusers module path, from ComfyUI's own key mapping."""
    import comfy.utils

    names = {}
    for diffusers_key, ldm_key in comfy.utils.unet_to_diffusers(unet_config).items():
        if diffusers_key.endswith(".weight") and ldm_key.endswith(".weight"):
            names[ldm_key[: -len(".weight")]] = diffusers_key[: -len(".weight")]
    return names


def _conv(path: str, module, names: dict[str, str], paths: dict[str, str]):
    """``(diffusers path, stride)`` of a spatial conv, recorded in ``paths``; ``None`` for a 1x1 conv or a pool."""
    kernel = getattr(module, "kernel_size", (1,))
    if max(kernel) <= 1 or not hasattr(module, "weight"):
        return None
    name = names[path]
    paths[name] = path
    return name, tuple(int(s) for s in module.stride)


def _unit(path: str, layer, names: dict[str, str], paths: dict[str, str]) -> Unit | None:
    """The unit of one layer of an LDM block (``path`` relative to ``diffusion_model``), or ``None``."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, Upsample

    if isinstance(layer, ResBlock):
        convs = [_conv(f"{path}.in_layers.2", layer.in_layers[2], names, paths)]
        convs.append(_conv(f"{path}.out_layers.3", layer.out_layers[3], names, paths))
        name = names[f"{path}.in_layers.2"].rpartition(".")[0]
        unit = Unit(name, "resnet", tuple(c for c in convs if c), (), int(layer.out_channels))
    elif isinstance(layer, SpatialTransformer):
        name = names[f"{path}.proj_in"].rpartition(".")[0]
        attentions = []
        for t, block in enumerate(layer.transformer_blocks):
            if not getattr(block, "disable_self_attn", False):
                attn = names[f"{path}.transformer_blocks.{t}.attn1.to_q"].rpartition(".")[0]
                paths[attn] = f"{path}.transformer_blocks.{t}.attn1"
                attentions.append(attn)
        unit = Unit(name, "attention", self_attentions=tuple(attentions))
    elif isinstance(layer, (Downsample, Upsample)):
        attr, kind = ("op", "downsampler") if isinstance(layer, Downsample) else ("conv", "upsampler")
        conv = getattr(layer, attr, None)
        if conv is None or f"{path}.{attr}" not in names:
            return None  # a pooling downsampler or a plain nearest upsampler: no conv, nothing to patch
        name = names[f"{path}.{attr}"].rpartition(".")[0]
        found = _conv(f"{path}.{attr}", conv, names, paths)
        unit = Unit(name, kind, (found,) if found else ())
    else:
        return None
    paths[unit.name] = path
    return unit


def describe_model(model, native_latent: tuple[int, int] | None = None) -> tuple[UNetDescription, LdmView]:
    """The description of a ComfyUI SD 1.x/2.x/SDXL ``BaseModel`` and its paths in the LDM ``UNetModel``.

    ``native_latent`` overrides the native latent size (a fine-tune trained at another size). Raises ``ValueError``
    for models FouriScale does not know.
    """
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    family = model_family(model)
    unet = getattr(model, "diffusion_model", None)
    unet_config = getattr(model.model_config, "unet_config", {})
    if not isinstance(unet, UNetModel) or unet_config.get("use_temporal_resblock"):
        raise ValueError(f"FouriScale supports the SD 1.x/2.x/SDXL UNet; this model runs {type(unet).__name__}.")
    names = _diffusers_names(unet_config)
    paths: dict[str, str] = {}
    stages: dict[str, list[Unit]] = {"conv_in": []}
    output_units = []
    blocks = [(f"input_blocks.{k}", b) for k, b in enumerate(unet.input_blocks) if k > 0]
    blocks += [("middle_block", unet.middle_block)] if unet.middle_block is not None else []
    blocks += [(f"output_blocks.{k}", b) for k, b in enumerate(unet.output_blocks)]
    for prefix, block in blocks:
        for j, layer in enumerate(block):
            unit = _unit(f"{prefix}.{j}", layer, names, paths)
            if unit is None:
                continue
            stage = ".".join(unit.name.split(".")[: 1 if unit.name.startswith("mid_block") else 2])
            stages.setdefault(stage, []).append(unit)
            if prefix.startswith("output_blocks") and j == 0:
                output_units.append(unit.name)
    stages["conv_out"] = []
    description = UNetDescription(
        family=family,
        native_latent=native_latent or native_latent_of(model, family),
        stages=tuple(Stage(name, tuple(units)) for name, units in stages.items()),
        deepest_channels=int(unet.model_channels * unet.channel_mult[-1]),
    )
    return description, LdmView(paths, tuple(output_units))
