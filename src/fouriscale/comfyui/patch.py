"""FouriScale on a ComfyUI ``ModelPatcher`` (layer 3, ComfyUI host): a clone patched through ComfyUI's own
extension points, nothing global and nothing left behind.

:func:`apply_fouriscale` clones the model and gives the clone

* a keyed ``DIFFUSION_MODEL`` wrapper (``"fouriscale"``): the step from the run's sigmas
  (``transformer_options["sample_sigmas"]``), the plan for the latent size, the passes and their row layout;
* a keyed ``OUTER_SAMPLE`` wrapper: the plan checked before the first step (a size or setting it cannot take is
  refused there) and, for SDXL, the size conditioning left at the image size set to the base bucket;
* object patches (undone by ComfyUI when another model is loaded): the patched convs' ``_conv_forward`` (so
  ComfyUI's own weight casting, LoRA patches and offloading run unchanged, and the conv gets the weights they
  give), ``to_q``/``to_k`` of every self-attention in the forked stages, the join attention, the feed-forward
  layers of the forked stages, and the ``forward`` of the resnets and transformer models that lay out their inputs
  (time embedding, text embedding) for their stage;
* an ``output_block_patch`` that lays out the up path's skip tensors and applies the paper's FreeU, and, with
  amplified guidance, a pre-CFG function.

All of them read one :class:`ComfyPatch` (attached to the clone as ``"fouriscale"``), which is shared by every
later clone of the patched model (ComfyUI deep-copies model options when it clones; the patch copies as itself).
"""

from __future__ import annotations

import torch

from ..config import FouriScaleConfig
from ..plan import Plan, branch_stages, join_block, make_plan
from ..profiles import ModelProfile, UNetDescription, make_profile
from ..runtime.layout import passes, relayout, relayout_rows, stock_roles, take_chunks
from ..runtime.ops import (
    QKShare,
    amplify_guidance,
    dilated_conv2d,
    forked_feed_forward,
    freeu_stage,
    join_attention,
    paper_freeu,
    patched_conv,
    shared_projection,
)
from ..runtime.planner import Planner
from ..runtime.state import CallState
from ..schedule import step_of_sigma
from .describe import LdmView, describe_model

__all__ = ["ComfyPatch", "apply_fouriscale", "remove_fouriscale", "get_patch", "get_plan", "KEY"]

KEY = "fouriscale"  # wrapper key and attachment name


class ComfyPatch(Planner):
    """What :func:`apply_fouriscale` installed on a model: its profile and config, its paths in the LDM UNet, the
    plans and the runtime its patches share, and what each object patch replaced."""

    def __init__(
        self, description: UNetDescription, profile: ModelProfile, config: FouriScaleConfig, view: LdmView
    ) -> None:
        super().__init__(profile, config)
        self.view = view
        self.fork, self.join = branch_stages(profile, config)
        self.join_block = join_block(profile, config, self.join)
        self.shares = [QKShare() for _ in profile.attentions]
        self.replaced: dict[str, object] = {}  # object patch name -> what it replaced (None: no earlier patch)
        self._sigmas = (None, None)  # (tensor, its values as floats) of the last run's sigmas
        self.units = [[unit.name for unit in stage.units] for stage in description.stages]  # per stage, in order
        stage_of = {unit: i for i, units in enumerate(self.units) for unit in units}
        self.output_stages = tuple(stage_of[name] for name in view.output_units)

    def __deepcopy__(self, memo):
        return self  # one patch for every clone of the patched model

    # -- which rows a unit sees -------------------------------------------------------------------------------
    def unit_roles(self, call: CallState, stage: int, unit: str) -> tuple[str, ...]:
        """Row layout inside unit ``unit`` of stage ``stage``: the stage's, except in the join stage after the join
        block (its upsampler, as in diffusers' blocks), which sees the stock batch again."""
        roles = call.roles_at(stage)
        units = self.units[stage]
        if roles is call.forked and stage == self.join and self.join_block in units:
            if units.index(unit) > units.index(self.join_block):
                return call.stock
        return roles

    # -- the model-level wrappers ---------------------------------------------------------------------------------
    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        """Check the plan before the first step; SDXL: size conditioning left at the image size -> base bucket."""
        if noise.dim() == 4 and len(sigmas) > 1:
            f = self.profile.vae_scale_factor
            plan = self.plan(noise.shape[-2] * f, noise.shape[-1] * f, len(sigmas) - 1)
            if not plan.noop and self.profile.family.bucketed and self.config.base_size_conditioning:
                for conds in getattr(executor.class_obj, "conds", {}).values():
                    for cond in conds or ():
                        _base_size_conditioning(cond, plan)
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)

    def _located(self, x: torch.Tensor, options: dict):
        """``(plan, step, cond_or_uncond, rows)`` of a FouriScale call, or ``None`` for a stock call."""
        if self.runtime.call is not None or not self.runtime.enabled or x.dim() != 4:
            return None
        sigmas, sigma = options.get("sample_sigmas"), options.get("sigmas")
        if sigmas is None or sigma is None:
            self.warn_once(
                "step",
                "the model was called outside a sampling run (no sample_sigmas); running it unchanged.",
            )
            return None
        step, num_steps = step_of_sigma(self._sigma_values(sigmas), float(sigma.flatten()[0]))
        f = self.profile.vae_scale_factor
        plan = self.plan(x.shape[-2] * f, x.shape[-1] * f, num_steps)
        if plan.noop:
            return None
        kinds = list(options.get("cond_or_uncond") or [0])
        if x.shape[0] % len(kinds):
            raise RuntimeError(f"FouriScale: a batch of {x.shape[0]} cannot be split into {len(kinds)} conds.")
        return plan, plan.step(step), kinds, x.shape[0] // len(kinds)

    def _sigma_values(self, sigmas: torch.Tensor) -> list[float]:
        if self._sigmas[0] is not sigmas:
            self._sigmas = (sigmas, [float(s) for s in sigmas.detach().float().cpu()])
        return self._sigmas[1]

    def diffusion_model(self, executor, x, timesteps=None, context=None, y=None, control=None, options=None, **kw):
        """The pass(es) of one model call: the call's conds in groups of ``[uncond,] cond`` (first the unconditional
        rows with the first cond's, then every other cond alone), each group as the diffusers host runs a batch."""
        options = {} if options is None else options
        located = self._located(x, options)
        if located is None:
            return executor(x, timesteps, context, y, control, options, **kw)
        plan, step, kinds, rows = located
        inputs = {"x": x, "timesteps": timesteps, "context": context, "y": y, "control": control, "kw": kw}
        results: list[torch.Tensor | None] = [None] * len(kinds)
        for group in _groups(kinds):
            stock = stock_roles(plan, step, uncond=kinds[group[0]] == 1, cond=kinds[group[-1]] != 1)
            group_inputs = take_chunks(inputs, rows, len(kinds), group)
            for roles, forked in passes(plan, step, stock):
                call = CallState(plan=plan, step=step, rows=rows, stock=roles, forked=forked)
                args = relayout_rows(group_inputs, rows, stock, roles)
                if forked is not None:
                    args["control"] = self._lay_out_control(args["control"], call)
                chunks = [group[stock.index(role)] for role in roles]
                pass_options = dict(options, cond_or_uncond=[kinds[c] for c in chunks])
                if isinstance(options.get("uuids"), list) and len(options["uuids"]) == len(kinds):
                    pass_options["uuids"] = [options["uuids"][c] for c in chunks]
                self.runtime.call = call
                try:
                    out = executor(
                        args["x"],
                        args["timesteps"],
                        args["context"],
                        args["y"],
                        args["control"],
                        pass_options,
                        **args["kw"],
                    )
                finally:
                    self.runtime.call = None
                out = relayout(out, call, roles)
                for k, chunk in enumerate(chunks):
                    results[chunk] = out[k * rows : (k + 1) * rows]
        return torch.cat(results)

    def _lay_out_control(self, control, call: CallState):
        """ControlNet / T2I-Adapter residuals in the layout of the rows they are added to: ``input`` entries after
        input block ``k`` (popped from the end), ``middle`` after the middle block, ``output`` to skip tensor ``k``
        (ControlNet residual ``k`` matches skip tensor ``k`` from the end)."""
        if not isinstance(control, dict):
            return control
        skips = self.profile.res_sample_stages
        out = dict(control)
        for name, entries in control.items():
            if not isinstance(entries, list):
                continue
            n = len(entries)
            if name == "middle" and "mid_block" in self.profile.stages:
                stages = [self.profile.stages.index("mid_block")] * n
            elif name == "input":
                stages = [skips[n - 1 - j] if n - 1 - j < len(skips) else None for j in range(n)]
            elif name == "output":
                stages = [skips[len(skips) - n + j] if len(skips) - n + j >= 0 else None for j in range(n)]
            else:
                continue
            out[name] = [e if s is None else relayout(e, call, call.roles_at(s)) for e, s in zip(entries, stages)]
        return out

    def output_block(self, h: torch.Tensor, hsp: torch.Tensor, options: dict):
        """Before output block ``k``'s concatenation: the backbone and skip tensors in the layout of its first
        resnet, then the paper's FreeU on them."""
        call = self.runtime.call
        block = options.get("block") or (None, None)
        if call is None or block[0] != "output" or not 0 <= block[1] < len(self.output_stages):
            return h, hsp
        k = block[1]
        if call.forked is not None:
            target = self.unit_roles(call, self.output_stages[k], self.view.output_units[k])
            h, hsp = relayout(h, call, target), relayout(hsp, call, target)
        params = call.plan.freeu_params
        if params is not None and self.config.freeu == "paper":
            site = self.profile.freeu_sites[k]
            stage = freeu_stage(site.backbone_channels, self.profile.deepest_channels)
            if stage is not None and h.shape[1] == site.backbone_channels:
                pieces = paper_freeu(h, hsp, params, stage)
                h, hsp = torch.cat(pieces[:2], dim=1), pieces[2]
        return h, hsp

    def amplify(self, args: dict):
        """Pre-CFG function of ``amp_guidance``: before ``start`` the cond prediction becomes
        ``uncond + factor * (cond - uncond)`` (the same as the diffusers host's, on denoised instead of noise)."""
        out = args["conds_out"]
        if len(out) < 2 or out[0] is None or out[1] is None:
            return out
        options = args.get("model_options", {}).get("transformer_options", {})
        sigmas, x = options.get("sample_sigmas"), args["input"]
        if sigmas is None or x.dim() != 4:
            return out
        step, num_steps = step_of_sigma(self._sigma_values(sigmas), float(args["sigma"].flatten()[0]))
        f = self.profile.vae_scale_factor
        plan = self.plan(x.shape[-2] * f, x.shape[-1] * f, num_steps)
        if not plan.step(step).amp_guidance:
            return out
        return [amplify_guidance(out[1], out[0], self.config.amp_guidance_factor), *out[1:]]

    # -- object patches -----------------------------------------------------------------------------------------------
    def object_patches(self, get) -> dict[str, object]:
        """``{name: replacement}`` of every object patch; ``get(name)`` gives what is there now (the model's own
        attribute or another node's patch), which each replacement calls when FouriScale has nothing to do."""
        patches = {}
        model = get("diffusion_model")

        def add(path: str, attr: str, make):
            name = f"diffusion_model.{path}.{attr}"
            patches[name] = make(get(name), model.get_submodule(path))

        if self.config.dilated_convs:
            for index, spec in enumerate(self.profile.layers):
                add(self.view[spec.name], "_conv_forward", lambda orig, conv, i=index: self._conv(orig, conv, i))
        if self.fork is None:
            return patches
        last = len(self.profile.attentions) - 1
        for index, spec in enumerate(self.profile.attentions):
            if not self.fork <= spec.stage <= self.join:
                continue
            path, share = self.view[spec.name], self.shares[index]
            for attr in ("to_q", "to_k"):
                add(f"{path}.{attr}", "forward", lambda orig, _, s=spec.stage, sh=share: self._qk(orig, s, sh))
            after_join = self.config.share_branches and index == last
            block = path.rpartition(".")[0]  # the transformer block: its feed-forward
            add(f"{block}.ff", "forward", lambda orig, _, s=spec.stage, i=index, a=after_join: self._ff(orig, s, i, a))
            if after_join:
                add(path, "forward", lambda orig, _, s=spec.stage, sh=share: self._join_attention(orig, s, sh))
        for stage in range(self.fork, self.join + 1):
            for unit in self.units[stage]:
                if ".resnets." in unit or ".attentions." in unit:
                    add(self.view[unit], "forward", lambda orig, _, s=stage, u=unit: self._layout(orig, s, u))
        return patches

    def _conv(self, original, conv, index: int):
        def conv_forward(input, weight, bias, *args, **kwargs):
            call = self.runtime.call
            if call is None or not call.step.active or args or kwargs:
                return original(input, weight, bias, *args, **kwargs)
            return patched_conv(call, index, input, lambda x, k: dilated_conv2d(conv, x, k, weight, bias))

        return conv_forward

    def _qk(self, original, stage: int, share: QKShare):
        def project(x, *args, **kwargs):
            call = self.runtime.call
            if call is None or not call.shares_qk or not call.is_forked(stage) or args or kwargs:
                return original(x, *args, **kwargs)
            return shared_projection(call, x, original, share)

        return project

    def _ff(self, original, stage: int, index: int, after_join: bool):
        def feed_forward(x, *args, **kwargs):
            call = self.runtime.call
            if call is None or args or kwargs or not call.is_forked_batch(stage, x):
                return original(x, *args, **kwargs)
            return forked_feed_forward(call, index, x, original, after_join)

        return feed_forward

    def _join_attention(self, original, stage: int, share: QKShare):
        def attention(x, context=None, value=None, mask=None, transformer_options=None, **kwargs):
            call = self.runtime.call
            options = {} if transformer_options is None else transformer_options
            plain = context is None and value is None and mask is None and not kwargs
            if call is None or not call.shares_qk or not plain or not call.is_forked_batch(stage, x):
                return original(x, context=context, value=value, mask=mask, transformer_options=options, **kwargs)
            return join_attention(call, share, x, lambda drop: original(drop(x), transformer_options=options))

        return attention

    def _layout(self, original, stage: int, unit: str):
        join = unit == self.join_block

        def forward(*args, **kwargs):
            call = self.runtime.call
            if call is None or call.forked is None:
                return original(*args, **kwargs)
            target = self.unit_roles(call, stage, unit)
            args = tuple(a if isinstance(a, dict) else relayout(a, call, target) for a in args)
            kwargs = {k: v if isinstance(v, dict) else relayout(v, call, target) for k, v in kwargs.items()}
            out = original(*args, **kwargs)
            return relayout(out, call, call.stock) if join else out

        return forward

    # -- install / uninstall ------------------------------------------------------------------------------------------
    def install(self, patcher) -> None:
        import comfy.patcher_extension as ext

        for name, replacement in self.object_patches(patcher.get_model_object).items():
            self.replaced[name] = patcher.object_patches.get(name)
            patcher.add_object_patch(name, replacement)
        patcher.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, KEY, self.diffusion_model)
        patcher.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, KEY, self.outer_sample)
        patcher.set_model_output_block_patch(self.output_block)
        if self.config.amp_guidance:
            patcher.set_model_sampler_pre_cfg_function(self.amplify)
        patcher.set_attachments(KEY, self)

    def uninstall(self, patcher) -> None:
        """Take this patch out of ``patcher`` (a clone that carries it): object patches back to what they replaced,
        wrappers, block patch and pre-CFG function removed."""
        import comfy.patcher_extension as ext

        for name, before in self.replaced.items():
            if before is None:
                patcher.object_patches.pop(name, None)
            else:
                patcher.object_patches[name] = before
        for kind in (ext.WrappersMP.DIFFUSION_MODEL, ext.WrappersMP.OUTER_SAMPLE):
            patcher.remove_wrappers_with_key(kind, KEY)
        options = patcher.model_options
        patches = options.get("transformer_options", {}).get("patches", {})
        if "output_block_patch" in patches:
            patches["output_block_patch"] = [p for p in patches["output_block_patch"] if not self._owns(p)]
        if "sampler_pre_cfg_function" in options:
            options["sampler_pre_cfg_function"] = [f for f in options["sampler_pre_cfg_function"] if not self._owns(f)]
        patcher.remove_attachments(KEY)

    def _owns(self, fn) -> bool:
        return getattr(fn, "__self__", None) is self


def _groups(kinds: list[int]) -> list[list[int]]:
    """Chunks of a call run together: the first unconditional chunk with the first cond chunk, then each other
    chunk alone (ComfyUI batches conds by shape; each needs its own structure branch)."""
    uncond = [i for i, k in enumerate(kinds) if k == 1]
    cond = [i for i, k in enumerate(kinds) if k != 1]
    groups = [[uncond[0], cond[0]]] if uncond and cond else []
    paired = {i for g in groups for i in g}
    return groups + [[i] for i in range(len(kinds)) if i not in paired]


def _base_size_conditioning(cond: dict, plan: Plan) -> None:
    """SDXL micro-conditions of one cond (ComfyUI's ``width``/``height``, ``target_width``/``target_height``):
    a pair left at the image size (absent, or equal to it) becomes the base bucket."""
    size = (plan.height, plan.width)
    base = (int(plan.base_size[0]), int(plan.base_size[1]))
    original = (cond.get("height", size[0]), cond.get("width", size[1]))
    target = (cond.get("target_height", original[0]), cond.get("target_width", original[1]))
    if tuple(original) == size:
        cond["height"], cond["width"] = base
    if tuple(target) == size:
        cond["target_height"], cond["target_width"] = base


def get_patch(model) -> ComfyPatch | None:
    """The :class:`ComfyPatch` a ComfyUI model carries, or ``None``."""
    get = getattr(model, "get_attachment", None)
    return get(KEY) if get is not None else None


def _check_comfyui() -> None:
    import comfy.patcher_extension as ext

    if not hasattr(ext, "WrappersMP"):
        raise RuntimeError("FouriScale needs a ComfyUI with keyed model wrappers (comfy.patcher_extension, v0.3.10+).")


def apply_fouriscale(model, config: FouriScaleConfig | None = None, *, native_size: int | None = None, **overrides):
    """A clone of the ComfyUI ``MODEL`` ``model`` that samples with FouriScale; ``model`` itself is not changed.

    Args:
        model: a ``ModelPatcher`` of an SD 1.x, SD 2.x or SDXL model (fine-tunes, LoRAs and other patches included).
        config (`FouriScaleConfig`, *optional*): settings; defaults to ``FouriScaleConfig()``, the paper's.
        native_size (`int`, *optional*): the model's native size in pixels; `None` takes the family's (SD 1.x 512,
            SD 2.x 768 for v-prediction models else 512, SDXL 1024).
        **overrides: fields of :class:`FouriScaleConfig` to change.

    The plan is made per sampling run from the latent size and the run's steps, so one patched model serves every
    size; at or below the native size it changes nothing. Applying to a model that already has FouriScale replaces
    the earlier settings. ``freeu="diffusers"`` (diffusers' ``enable_freeu``) has no ComfyUI form here: use
    ComfyUI's FreeU nodes, or the paper's variant.
    """
    _check_comfyui()
    config = config or FouriScaleConfig()
    if not isinstance(config, FouriScaleConfig):
        raise TypeError(f"config must be a FouriScaleConfig or None, got {type(config).__name__}")
    config = config.replace(**overrides) if overrides else config
    if config.freeu == "diffusers":
        raise ValueError("freeu='diffusers' is diffusers' enable_freeu; in ComfyUI use its FreeU nodes, or 'paper'.")
    clone = model.clone()
    earlier = get_patch(clone)
    if earlier is not None:
        earlier.uninstall(clone)
    patch = _make_patch(clone.model, config, native_size)
    patch.install(clone)
    return clone


def _make_patch(model, config: FouriScaleConfig, native_size: int | None) -> ComfyPatch:
    factor = int(getattr(model.latent_format, "spacial_downscale_ratio", 8))
    if native_size is not None and (not isinstance(native_size, int) or native_size <= 0 or native_size % factor):
        raise ValueError(f"native_size must be a positive multiple of {factor} pixels, got {native_size!r}")
    latent = (native_size // factor,) * 2 if native_size else None
    description, view = describe_model(model, latent)
    return ComfyPatch(description, make_profile(description, factor, config.layers), config, view)


def remove_fouriscale(model):
    """A clone of ``model`` without FouriScale (the model it was applied to, as far as sampling goes)."""
    clone = model.clone()
    patch = get_patch(clone)
    if patch is not None:
        patch.uninstall(clone)
    return clone


def get_plan(model, width: int, height: int, num_steps: int, config: FouriScaleConfig | None = None) -> Plan:
    """The :class:`~fouriscale.plan.Plan` FouriScale follows for ``model`` at a size and step count: the applied
    settings (or ``config``, default the paper's) on a patched model, ``config`` on any other."""
    patch = get_patch(model)
    if patch is not None and config is None:
        return patch.plan(height, width, num_steps)
    native = None
    if patch is not None:
        native = patch.profile.native_size[0]
    patch = _make_patch(model.model, config or FouriScaleConfig(), native)
    return make_plan(patch.profile, height, width, num_steps, patch.config)
