"""``apply_fouriscale`` / ``remove_fouriscale`` and friends: install and take out FouriScale (layer 3, diffusers host).

Applying registers named hooks through diffusers' ``HookRegistry`` on the pipeline's UNet (the module
tree, its parameters and its ``state_dict`` stay the stock ones):

* ``fouriscale`` on the UNet: the around-hook that locates the step and runs the branches
  (:class:`~fouriscale.diffusers.unet.UNetHook`); it carries the applied patch;
* ``fouriscale.layout`` on the top-level stages from the fork on (:class:`~fouriscale.diffusers.unet.LayoutHook`)
  and ``fouriscale.layout.join`` on the join block (:class:`~fouriscale.diffusers.unet.JoinLayoutHook`);
* ``fouriscale.conv`` on every patched conv (:class:`~fouriscale.diffusers.layers.ConvHook`; for a LoRA layer, on
  its base conv and its down-projection);
* ``fouriscale.qk`` on ``to_q``/``to_k`` (or a fused ``to_qkv``) of every self-attention
  (:class:`~fouriscale.diffusers.layers.QKShareHook`), and ``fouriscale.join.attention`` on the last one that reads the
  structure branch (:class:`~fouriscale.diffusers.layers.JoinAttentionHook`);
* ``fouriscale.ff`` on the feed-forward layer of every transformer block in the forked stages
  (:class:`~fouriscale.diffusers.layers.FeedForwardHook`);
* ``fouriscale.freeu`` on the up-block resnets (the paper's FreeU), or diffusers' own ``enable_freeu``;

and, for large images, a tiled VAE decode whose tiles share GroupNorm statistics (``vae.decode``), on the VAE
classes whose own decode it stands in for (``AutoencoderKL``, ``AsymmetricAutoencoderKL``); other VAEs keep theirs.

Layers replaced while applied (loading, fusing or unloading a LoRA; ``fuse_qkv_projections()``) are
picked up at the next UNet call. Removing takes every hook out and restores the FreeU and VAE state,
so the pipeline's output is bit-identical to one that was never patched. Applying twice is harmless.
"""

from __future__ import annotations

import dataclasses
import weakref
from contextlib import contextmanager

import torch.nn as nn

from ..config import OFFICIAL_CONTROLNET, FouriScaleConfig
from ..plan import Plan, branch_stages, join_block, make_plan, runs_forked
from ..profiles import ModelProfile
from ..runtime.ops import QKShare, freeu_stage
from ..runtime.planner import Planner
from .describe import detect_profile, vae_scale_factor
from .freeu import FreeUSnapshot
from .hooks import add_hook, get_hook, remove_hook
from .layers import (
    CONV_HOOK,
    FF_HOOK,
    FREEU_HOOK,
    JOIN_ATTENTION_HOOK,
    PIECES_HOOK,
    QK_HOOK,
    ConvHook,
    FeedForwardHook,
    JoinAttentionHook,
    PaperFreeUHook,
    QKShareHook,
    ResnetPiecesHook,
)
from .step_source import ExplicitStep
from .unet import JOIN_LAYOUT_HOOK, LAYOUT_HOOK, UNET_HOOK, JoinLayoutHook, LayoutHook, UNetHook
from .vae_tiling import SyncTiledDecode, decode_plan, tiles_exactly, tiles_size

# diffusers' model and pipeline classes (and transformers' models) are imported where they are used: each adds
# 1-2 s and 300-500 modules to `import fouriscale` (docs/architecture.md, "Imports").
__all__ = [
    "apply_fouriscale",
    "remove_fouriscale",
    "is_fouriscale_applied",
    "get_plan",
    "get_config",
    "disabled",
    "denoising_step",
    "official_controlnet_kwargs",
]


class Patch(Planner):
    """Everything one :func:`apply_fouriscale` installed on a UNet (and its VAE), and what it shares at run time
    (the plans and the runtime of :class:`~fouriscale.runtime.planner.Planner`)."""

    def __init__(self, model: nn.Module, profile: ModelProfile, config: FouriScaleConfig) -> None:
        super().__init__(profile, config)
        self.model = model
        self.explicit_step: ExplicitStep | None = None  # set by denoising_step()
        self._fixed: list[tuple[nn.Module, str]] = []  # hooks that stay for the patch's life
        self._layer_hooks: list[tuple[nn.Module, str]] = []  # hooks on replaceable layers (re-synced)
        self._signature: list | None = None
        self.restorers: list = []
        self.freeu_before = FreeUSnapshot(model)  # the user's own FreeU state, for removal and `disabled`
        self.decode: SyncTiledDecode | None = None  # the tiled decode installed on the pipeline's VAE
        self.pipe_ref = None  # weak reference to the pipeline it was applied to (its VAE and text encoders)
        self.override: FouriScaleConfig | None = None  # settings an estimate runs with (see `overriding`)
        self.choices: dict = {}  # what the memory budget chose, per (size, steps, batch, guidance, dtype, device)
        self._decode_choices: dict = {}  # latent size -> (tile or not, tile size), as the budget chose
        self.fork, self.join = branch_stages(profile, config)
        # Convs are hooked when they dilate; Q/K projections when a structure branch ever runs.
        self._conv_slots = [self._slot(spec.name) for spec in profile.layers] if config.dilated_convs else []
        self._attn = [model.get_submodule(a.name) for a in profile.attentions] if self.fork is not None else []
        self._shares = [QKShare() for _ in self._attn]

    def _slot(self, path: str) -> tuple[nn.Module, str]:
        parent, _, attr = path.rpartition(".")
        return self.model.get_submodule(parent), attr

    # -- layers that LoRA loading or QKV fusing can replace -----------------------------------------------------
    def _targets(self) -> tuple[list, list]:
        """``(convs, projections)``: ``(layer index, conv)`` and ``(stage, module, fused)`` to hook now."""
        convs = []
        for index, (parent, attr) in enumerate(self._conv_slots):
            module = parent._modules.get(attr)
            if isinstance(module, nn.Conv2d):
                convs.append((index, module))
            elif module is not None:  # a LoRA layer: its base conv and its down-projection
                convs += [
                    (index, m) for _, m in module.named_modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1
                ]
        projections = []
        for spec, attn, share in zip(self.profile.attentions, self._attn, self._shares):
            for attr, fused in (("to_q", False), ("to_k", False), ("to_qkv", True)):
                module = attn._modules.get(attr)
                if module is not None:
                    projections.append((spec.stage, module, fused, share))
        return convs, projections

    def sync(self) -> None:
        """(Re-)hook the patched convs and Q/K projections if the modules at their paths changed."""
        convs, projections = self._targets()
        signature = [m for _, m in convs] + [m for _, m, _, _ in projections]
        if (
            self._signature is not None
            and len(signature) == len(self._signature)
            and all(a is b for a, b in zip(signature, self._signature))
        ):
            return
        self._remove(self._layer_hooks)
        for index, conv in convs:
            add_hook(conv, ConvHook(index, self.runtime), CONV_HOOK)
            self._layer_hooks.append((conv, CONV_HOOK))
        for stage, module, fused, share in projections:
            add_hook(module, QKShareHook(stage, self.runtime, fused, share), QK_HOOK)
            self._layer_hooks.append((module, QK_HOOK))
        self._signature = signature

    # -- settings per call: memory budget and estimates ---------------------------------------------------------
    @contextmanager
    def overriding(self, config: FouriScaleConfig):
        """Inside the block the hooks and the tiled decode follow ``config`` (same structure as the patch's own:
        only its memory settings may differ), not the patch's config or its budget. For memory estimates."""
        before, self.override = self.override, config
        try:
            yield self
        finally:
            self.override = before

    def decode_choice(self, latent: tuple[int, int]) -> tuple[bool, int] | None:
        """``(tile or not, tile size)`` of the tiled decode for a latent size, where an override or the memory budget
        decides it; ``None``: the patch's own threshold and tile size."""
        config = self.override
        if config is None:
            return self._decode_choices.get(tuple(latent))
        threshold = None if config.vae_tiling else config.vae_tiling_threshold
        tiled = config.vae_tiling is not False and tiles_size(
            latent[0], latent[1], self.profile.vae_scale_factor, threshold, config.tile_size
        )
        return tiled, config.tile_size

    def plan_for_call(self, height: int, width: int, num_steps: int, call: dict) -> Plan:
        """The plan of a UNet call: under an override, its config; with a memory budget (``config.max_memory``),
        the settings it chose for this size and call (chosen before the call's first step, refused in one line
        when nothing fits); else the patch's config. ``call`` holds ``rows``, ``cfg``, ``dtype``, ``device`` and
        ``pipe`` (the calling pipeline, or ``None``)."""
        if self.override is not None:
            return self.plan(height, width, num_steps, self.override)
        if self.config.max_memory is None:
            return self.plan(height, width, num_steps)
        from .memory import apply_budget

        return apply_budget(self, height, width, num_steps, call)

    # -- install / uninstall -----------------------------------------------------------------------------------
    def install(self, pipe) -> None:
        model, profile, config = self.model, self.profile, self.config
        self.sync()
        if self.fork is not None:
            for stage in range(self.fork, len(profile.stages)):
                self._add_fixed(
                    model.get_submodule(profile.stages[stage]), LayoutHook(stage, self.runtime), LAYOUT_HOOK
                )
            block = model.get_submodule(join_block(profile, config, self.join))
            self._add_fixed(block, JoinLayoutHook(self.join, self.runtime), JOIN_LAYOUT_HOOK)
            for index, (spec, attn) in enumerate(zip(profile.attentions, self._attn)):
                if self.fork <= spec.stage <= self.join:
                    ff = model.get_submodule(spec.name.rpartition(".")[0])._modules.get("ff")
                    if ff is not None:
                        after_join = config.share_branches and attn is self._attn[-1]
                        self._add_fixed(ff, FeedForwardHook(spec.stage, self.runtime, index, after_join), FF_HOOK)
            if config.dilated_convs:  # resnets of the forked stages (they hold patched convs), one branch at a time
                block_name = join_block(profile, config, self.join)
                resnets = dict.fromkeys(
                    (spec.name.rpartition(".")[0], spec.stage)
                    for spec in profile.layers
                    if spec.kind == "conv" and runs_forked(spec, profile, self.fork, self.join, block_name)
                )
                for name, stage in resnets:
                    self._add_fixed(model.get_submodule(name), ResnetPiecesHook(stage, self.runtime), PIECES_HOOK)
            last = self._attn[-1]
            if config.share_branches and last.group_norm is None and last.spatial_norm is None:
                # The processor feeds the layer's input straight to to_q/to_k, so the join can leave the
                # structure branch out of the attention itself.
                join = JoinAttentionHook(profile.attentions[-1].stage, self.runtime, self._shares[-1])
                self._add_fixed(last, join, JOIN_ATTENTION_HOOK)
        if config.freeu == "paper":
            if self.freeu_before.enabled:
                model.disable_freeu()  # the paper's variant replaces a FreeU enabled through diffusers
            for site in profile.freeu_sites:
                stage = freeu_stage(site.backbone_channels, profile.deepest_channels)
                if stage is not None:
                    self._add_fixed(
                        model.get_submodule(site.name), PaperFreeUHook(site, stage, self.runtime), FREEU_HOOK
                    )
        elif config.freeu == "diffusers":
            b1, b2, s1, s2 = config.freeu_params or profile.family.freeu
            model.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)  # undone by the snapshot taken first
        if config.freeu is not None:
            self.restorers.append(self.freeu_before)
        vae = getattr(pipe, "vae", None)
        if config.vae_tiling is not False and vae is not None and tiles_exactly(vae):  # other VAEs keep their own
            threshold = None if config.vae_tiling else config.vae_tiling_threshold
            self.decode = SyncTiledDecode(vae, threshold, self.runtime, tile=config.tile_size)
            self.decode.choose = self.decode_choice
            self.restorers.append(self.decode)
        self.pipe_ref = weakref.ref(pipe)
        self._add_fixed(model, UNetHook(self), UNET_HOOK)

    def _add_fixed(self, module: nn.Module, hook, name: str) -> None:
        add_hook(module, hook, name)
        self._fixed.append((module, name))

    @staticmethod
    def _remove(hooks: list) -> None:
        while hooks:
            module, name = hooks.pop()
            remove_hook(module, name)

    def uninstall(self) -> None:
        self._remove(self._fixed)
        self._remove(self._layer_hooks)
        self._signature = None
        for restorer in reversed(self.restorers):
            restorer.remove()
        self.restorers.clear()
        self.runtime.call = None


def _unet_of(pipe) -> nn.Module:
    from diffusers import DiffusionPipeline

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


def patch_of(pipe) -> Patch | None:
    """The :class:`Patch` applied to ``pipe``'s UNet (shared by pipelines made with ``from_pipe``), or ``None``."""
    hook = get_hook(_structure(_unet_of(pipe)), UNET_HOOK)
    return hook.patch if hook is not None else None


def _resolve_config(config: FouriScaleConfig | None, overrides: dict) -> FouriScaleConfig:
    if config is None:
        config = FouriScaleConfig()
    elif not isinstance(config, FouriScaleConfig):
        raise TypeError(f"config must be a FouriScaleConfig or None, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config


def _pipeline_factor(pipe) -> int:
    factor = getattr(pipe, "vae_scale_factor", None)
    if factor is None:
        vae = getattr(pipe, "vae", None)
        factor = vae_scale_factor(vae.config) if vae is not None else 8
    return int(factor)


def apply_fouriscale(pipe, config: FouriScaleConfig | None = None, **overrides):
    """Make ``pipe`` generate with FouriScale at any size above the model's native size; returns ``pipe``.

    Args:
        pipe: a diffusers Stable Diffusion 1.x/2.x or SDXL pipeline (text-to-image, img2img, inpainting,
            ControlNet, ...), patched in place.
        config (`FouriScaleConfig`, *optional*): settings; defaults to ``FouriScaleConfig()``, the paper's.
        **overrides: fields of :class:`FouriScaleConfig` to change, e.g. ``amp_guidance=True``.

    Afterwards ``pipe(prompt, height=2048, width=2048)`` runs FouriScale; sizes, aspect ratios and step
    counts are planned per call. Applying again with the same settings changes nothing; other settings
    replace the old ones. Raises ``TypeError`` for objects that are not diffusers pipelines and
    ``ValueError`` for unknown UNet layouts or invalid settings.
    """
    unet = _unet_of(pipe)
    config = _resolve_config(config, overrides)
    existing = patch_of(pipe)
    if existing is not None:
        if existing.config == config:
            return pipe
        remove_fouriscale(pipe)
    model = _structure(unet)
    profile = detect_profile(model, _pipeline_factor(pipe), config.layers)
    patch = Patch(model, profile, config)
    try:
        patch.install(pipe)
    except BaseException:
        patch.uninstall()
        raise
    return pipe


def remove_fouriscale(pipe):
    """Undo :func:`apply_fouriscale`; the pipeline then behaves bit-for-bit as before. Returns ``pipe``."""
    patch = patch_of(pipe)
    if patch is not None:
        patch.uninstall()
    return pipe


def is_fouriscale_applied(pipe) -> bool:
    """Whether :func:`apply_fouriscale` is in effect on ``pipe`` (or on the UNet it shares)."""
    return patch_of(pipe) is not None


def get_config(pipe) -> FouriScaleConfig | None:
    """The :class:`FouriScaleConfig` applied to ``pipe``, or ``None`` when FouriScale is not applied."""
    patch = patch_of(pipe)
    return patch.config if patch is not None else None


@contextmanager
def disabled(pipe):
    """Stock behaviour inside the ``with`` block, FouriScale again after it; nothing is re-planned or re-hooked.

    ``with fouriscale.disabled(pipe): direct = pipe(prompt, height=2048, width=2048).images[0]`` renders
    direct inference with the same pipeline. A no-op when FouriScale is not applied.
    """
    patch = patch_of(pipe)
    if patch is None or not patch.runtime.enabled:
        yield pipe
        return
    ours = FreeUSnapshot(patch.model)
    patch.freeu_before.remove()  # the user's own FreeU state, as without FouriScale
    patch.runtime.enabled = False
    try:
        yield pipe
    finally:
        patch.runtime.enabled = True
        ours.remove()


@contextmanager
def denoising_step(pipe, step: int, num_inference_steps: int, guidance: bool = True):
    """Tell FouriScale the step of the UNet calls inside the ``with`` block: for custom denoising loops, whose step
    FouriScale cannot read from a pipeline's scheduler.

    ``step`` counts from 0 to ``num_inference_steps - 1``; ``guidance`` says the UNet batch is ``[uncond, cond]``
    (classifier-free guidance; defaults to `True`), else ``[cond]``. Raises ``ValueError`` for steps outside the
    schedule and ``RuntimeError`` when FouriScale is not applied to ``pipe``::

        for i, t in enumerate(scheduler.timesteps):
            with fouriscale.denoising_step(pipe, i, len(scheduler.timesteps)):
                noise = pipe.unet(torch.cat([latents] * 2), t, encoder_hidden_states=embeddings).sample
    """
    explicit = ExplicitStep(step, num_inference_steps, guidance)
    patch = patch_of(pipe)
    if patch is None:
        raise RuntimeError("denoising_step: FouriScale is not applied to this pipeline; call apply_fouriscale first.")
    before, patch.explicit_step = patch.explicit_step, explicit
    try:
        yield pipe
    finally:
        patch.explicit_step = before


def get_plan(
    pipe,
    height: int,
    width: int,
    num_inference_steps: int = 50,
    config: FouriScaleConfig | None = None,
    *,
    vae_scale_factor: int | None = None,
    vae=None,
    dtype=None,
    device: str | None = None,
    **overrides,
) -> Plan:
    """The :class:`~fouriscale.plan.Plan` FouriScale follows for a size and step count.

    ``pipe`` is a pipeline (its applied config is used when no ``config`` is given) or a bare UNet, which
    may live on the meta device (then ``vae_scale_factor`` defaults to 8). The plan's ``vae_decode`` says how
    the pipeline's VAE (or ``vae``: a VAE, its class or its class name) decodes this size; ``None`` for a bare
    UNet without ``vae``. With a memory budget (``config.max_memory``) and a pipeline, the plan follows the
    settings :func:`~fouriscale.fit_memory` chooses (its ``memory`` holds the choice; ``dtype`` and ``device`` are
    the generation's, default the UNet's dtype and ``"cuda"``). Raises ``ValueError`` for sizes the model cannot
    take, and when nothing fits the budget.
    """
    if isinstance(pipe, nn.Module) and hasattr(pipe, "down_blocks"):
        unet, factor = pipe, vae_scale_factor or 8
    else:
        unet, factor = _unet_of(pipe), vae_scale_factor or _pipeline_factor(pipe)
        if config is None:
            config = get_config(pipe)
        if vae is None:
            vae = getattr(pipe, "vae", None)
    config = _resolve_config(config, overrides)
    profile = detect_profile(_structure(unet), factor, config.layers)
    choice = None
    if config.max_memory is not None and unet is not pipe:
        from .memory import fit_memory

        choice = fit_memory(
            pipe,
            height,
            width,
            num_inference_steps,
            config.max_memory,
            config.replace(max_memory=None),
            dtype=dtype,
            device=device or "cuda",
        )
        config = config.replace(**choice.overrides)
    plan = make_plan(profile, height, width, num_inference_steps, config)
    if vae is not None:
        plan = dataclasses.replace(plan, vae_decode=decode_plan(vae, config, plan.latent, factor))
    if choice is not None:
        plan = dataclasses.replace(plan, memory=choice)
    return plan


def official_controlnet_kwargs(pipe, height: int, width: int) -> dict:
    """Pipeline call arguments of the official SDXL ControlNet recipe (with ``config=OFFICIAL_CONTROLNET``):
    conditioning scale 0.5, and the ``original_size``/``target_size`` micro-conditions of both the UNet and the
    ControlNet at the base bucket of ``height`` x ``width``."""
    plan = get_plan(pipe, height, width, 1, OFFICIAL_CONTROLNET)
    bucket = (int(plan.base_size[0]), int(plan.base_size[1]))
    kwargs = {"controlnet_conditioning_scale": 0.5}
    if plan.profile.family.bucketed:
        kwargs.update(original_size=bucket, target_size=bucket)
    return kwargs
