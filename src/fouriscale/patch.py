"""``apply_fouriscale`` / ``remove_fouriscale``: install and take out every FouriScale patch (layer 3).

Applying installs, on the pipeline's UNet only:

* a :class:`~fouriscale.conv.FouriScaleConv2d` in place of each patched conv (the conv itself is kept
  inside, untouched);
* a :class:`~fouriscale.attention.FouriScaleAttnProcessor` on every self-attention layer, through
  ``set_attn_processor``;
* FreeU (the paper's pre-hooks, or diffusers' ``enable_freeu``);
* for large images, a tiled VAE decode whose tiles share GroupNorm statistics (``vae.decode``);
* the :class:`~fouriscale.branches.BranchWrapper` forward hooks.

Removing restores the original modules, processors and FreeU state, so the pipeline's output is
bit-identical to one that was never patched. Applying twice is harmless (a new config replaces the old).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from .attention import FouriScaleAttnProcessor
from .branches import BranchWrapper
from .config import FouriScaleConfig
from .conv import FouriScaleConv2d
from .freeu import attach_paper_freeu, disable_diffusers_freeu, enable_diffusers_freeu
from .plan import Plan, make_plan
from .profiles import ModelProfile, detect_profile
from .state import Runtime
from .vae_tiling import SyncTiledDecode

__all__ = ["apply_fouriscale", "remove_fouriscale", "is_fouriscale_applied", "get_plan"]

_ATTR = "_fouriscale_patch"


@dataclass
class _Patch:
    config: FouriScaleConfig
    profile: ModelProfile
    runtime: Runtime
    wrapper: BranchWrapper
    handles: list = field(default_factory=list)
    restorers: list = field(default_factory=list)


def _unet_of(pipe) -> nn.Module:
    try:
        from diffusers import DiffusionPipeline
    except ImportError:  # pragma: no cover - diffusers is a dependency
        DiffusionPipeline = ()
    if isinstance(pipe, nn.Module) and hasattr(pipe, "down_blocks"):
        raise TypeError(
            "apply_fouriscale expects the diffusers pipeline, not its UNet: pass e.g. the StableDiffusionPipeline "
            "or StableDiffusionXLPipeline that holds this UNet."
        )
    if not isinstance(pipe, DiffusionPipeline):
        raise TypeError(
            f"apply_fouriscale expects a diffusers pipeline (StableDiffusionPipeline, StableDiffusionXLPipeline, ...), "
            f"got {type(pipe).__name__}."
        )
    unet = getattr(pipe, "unet", None)
    if unet is None:
        raise ValueError(
            f"{type(pipe).__name__} has no UNet; FouriScale works with Stable Diffusion 1.x/2.x and SDXL pipelines."
        )
    return unet


def _structure(unet: nn.Module) -> nn.Module:
    """The module that owns the blocks (unwraps ``torch.compile``)."""
    return getattr(unet, "_orig_mod", unet)


def _resolve_config(config: FouriScaleConfig | None, overrides: dict) -> FouriScaleConfig:
    if config is None:
        config = FouriScaleConfig()
    elif not isinstance(config, FouriScaleConfig):
        raise TypeError(f"config must be a FouriScaleConfig or None, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config


def _vae_scale_factor(pipe) -> int:
    factor = getattr(pipe, "vae_scale_factor", None)
    if factor is None:
        vae = getattr(pipe, "vae", None)
        factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
    return int(factor)


def _wrap_convs(unet: nn.Module, profile: ModelProfile, runtime: Runtime) -> None:
    for spec in profile.layers:
        target = unet.get_submodule(spec.name)
        if isinstance(target, nn.Conv2d):
            convs = [(spec.name, target)]
        else:  # a LoRA layer around the conv: dilate the base conv and the LoRA down-projection alike
            convs = [
                (f"{spec.name}.{sub}", m)
                for sub, m in target.named_modules()
                if sub and isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1
            ]
        for path, conv in convs:
            parent_name, _, attr = path.rpartition(".")
            setattr(unet.get_submodule(parent_name), attr, FouriScaleConv2d(conv, spec, runtime))


def apply_fouriscale(pipe, config: FouriScaleConfig | None = None, **overrides):
    """Make ``pipe`` generate with FouriScale at any size above the model's native size; returns ``pipe``.

    Args:
        pipe: a diffusers Stable Diffusion 1.x/2.x or SDXL pipeline (patched in place).
        config (`FouriScaleConfig`, *optional*): settings; defaults to ``FouriScaleConfig()``, the paper's.
        **overrides: fields of :class:`FouriScaleConfig` to change, e.g. ``amp_guidance=True``.

    Afterwards ``pipe(prompt, height=2048, width=2048)`` runs FouriScale; sizes, aspect ratios and step
    counts are planned per call. Raises ``TypeError`` for objects that are not diffusers pipelines and
    ``ValueError`` for unknown UNet layouts or invalid settings.
    """
    unet = _unet_of(pipe)
    config = _resolve_config(config, overrides)
    existing = getattr(pipe, _ATTR, None)
    if existing is not None:
        if existing.config == config:
            return pipe
        remove_fouriscale(pipe)
    model = _structure(unet)
    profile = detect_profile(model, _vae_scale_factor(pipe), config.layers)

    runtime = Runtime()
    wrapper = BranchWrapper(pipe, profile, config, runtime)
    patch = _Patch(config, profile, runtime, wrapper)
    try:
        _wrap_convs(model, profile, runtime)
        if config.attention_guidance:
            processors = model.attn_processors
            model.set_attn_processor(
                {
                    name: FouriScaleAttnProcessor(proc, runtime) if name.endswith("attn1.processor") else proc
                    for name, proc in processors.items()
                }
            )
        if config.freeu == "paper":
            previous = disable_diffusers_freeu(model)
            if previous is not None:
                patch.restorers.append(previous)
            patch.handles += attach_paper_freeu(model, profile, runtime)
        elif config.freeu == "diffusers":
            patch.restorers.append(enable_diffusers_freeu(model, config.freeu_params or profile.freeu_values))
        vae = getattr(pipe, "vae", None)
        if config.vae_tiling is not False and vae is not None and hasattr(vae, "decoder"):
            threshold = None if config.vae_tiling else config.vae_tiling_threshold
            patch.restorers.append(SyncTiledDecode(vae, threshold))
        patch.handles.append(unet.register_forward_pre_hook(wrapper.pre_forward, with_kwargs=True))
        patch.handles.append(unet.register_forward_hook(wrapper.post_forward, with_kwargs=True))
    except BaseException:
        _undo(unet, patch)
        raise
    pipe.__dict__[_ATTR] = patch
    return pipe


def _undo(unet: nn.Module, patch: _Patch) -> None:
    for handle in patch.handles:
        handle.remove()
    for restorer in reversed(patch.restorers):
        restorer.remove()
    model = _structure(unet)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, FouriScaleConv2d):
                setattr(module, name, child.conv)
    processors = model.attn_processors
    if any(isinstance(p, FouriScaleAttnProcessor) for p in processors.values()):
        model.set_attn_processor(
            {name: p.original if isinstance(p, FouriScaleAttnProcessor) else p for name, p in processors.items()}
        )
    patch.runtime.state = None


def remove_fouriscale(pipe):
    """Undo :func:`apply_fouriscale`; the pipeline then behaves bit-for-bit as before. Returns ``pipe``."""
    unet = _unet_of(pipe)
    patch = pipe.__dict__.pop(_ATTR, None)
    if patch is not None:
        _undo(unet, patch)
    return pipe


def is_fouriscale_applied(pipe) -> bool:
    """Whether :func:`apply_fouriscale` is in effect on ``pipe``."""
    return getattr(pipe, _ATTR, None) is not None


def get_plan(
    pipe,
    height: int,
    width: int,
    num_inference_steps: int = 50,
    config: FouriScaleConfig | None = None,
    *,
    vae_scale_factor: int | None = None,
    **overrides,
) -> Plan:
    """The :class:`~fouriscale.plan.Plan` FouriScale follows for a size and step count.

    ``pipe`` is a pipeline (its applied config is used when no ``config`` is given) or a bare UNet, which
    may live on the meta device (then ``vae_scale_factor`` defaults to 8). Raises ``ValueError`` for sizes
    the model cannot take.
    """
    if isinstance(pipe, nn.Module) and hasattr(pipe, "down_blocks"):
        unet, factor = pipe, vae_scale_factor or 8
    else:
        unet, factor = _unet_of(pipe), vae_scale_factor or _vae_scale_factor(pipe)
        patch = getattr(pipe, _ATTR, None)
        if config is None and patch is not None:
            config = patch.config
    config = _resolve_config(config, overrides)
    profile = detect_profile(_structure(unet), factor, config.layers)
    return make_plan(profile, height, width, num_inference_steps, config)
