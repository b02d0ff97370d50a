"""The UNet around-hook and the stage layout hooks (layer 3, diffusers host): FouriScale's branches inside one
UNet call.

The stock pipeline ``__call__`` runs untouched. Its UNet call reaches :class:`UNetHook` (a diffusers
``new_forward``), which takes the denoising step from the step source (:mod:`.step_source`: the calling pipeline's
scheduler table, or a step given with :func:`fouriscale.denoising_step`), takes the (cached) plan for the size
and step count and runs the UNet once, or twice with the unconditional branch as a pass of its own
(:func:`~fouriscale.runtime.layout.passes`). Inside a pass the branches are laid out by stage
(:class:`~fouriscale.runtime.state.CallState`):

* before the fork stage, the stock batch: ``[uncond, cond]`` (``[cond]`` without CFG);
* from the fork stage to the join block, three branches: ``[uncond, structure, detail]``;
* after the join block, the stock batch again, the cond rows now being the detail branch.

:class:`LayoutHook` on every stage from the fork on gives each batch-shaped input of the stage (hidden
states, time embedding, text embeddings, skip tensors, attention masks, adapter residuals, IP-Adapter
embeddings) the layout of that stage, and :class:`JoinLayoutHook` on the join block (``Plan.join_block``: the
transformer model of the last self-attention, or the last stage without branch sharing) returns its output
in the stock layout, so the rest of the join stage (its upsampler) runs the stock batch. The structure branch
starts as a copy of the cond rows: before the fork nothing treats it differently. The residuals the UNet adds
between blocks (ControlNet, T2I-Adapter) are laid out by the around-hook for the stage they are added to.
"""

from __future__ import annotations

import inspect

import torch
from diffusers.hooks import ModelHook

from ..runtime.layout import passes, relayout, relayout_rows, stock_roles
from ..runtime.ops import amplify_guidance
from ..runtime.state import CallState
from .layers import StageHook
from .step_source import locate_call

__all__ = ["UNetHook", "LayoutHook", "JoinLayoutHook", "UNET_HOOK", "LAYOUT_HOOK", "JOIN_LAYOUT_HOOK"]

UNET_HOOK = "fouriscale"
LAYOUT_HOOK = "fouriscale.layout"
JOIN_LAYOUT_HOOK = "fouriscale.layout.join"


class LayoutHook(StageHook):
    """On one top-level stage: its inputs in the stage's layout."""

    def pre_forward(self, module, *args, **kwargs):
        call = self.runtime.call
        if call is None or call.forked is None:
            return args, kwargs
        target = call.roles_at(self.stage)
        return relayout(args, call, target), relayout(kwargs, call, target)


class JoinLayoutHook(StageHook):
    """On the join block: its output handed back in the stock layout (without the structure branch)."""

    def post_forward(self, module, output):
        call = self.runtime.call
        if call is None or call.forked is None:
            return output
        return relayout(output, call, call.stock)


def _base_time_ids(time_ids: torch.Tensor, height: int, width: int, base: tuple[float, float]) -> torch.Tensor:
    """SDXL micro-conditions: ``original_size``/``target_size`` left at ``(height, width)`` become the base bucket."""
    if time_ids.dim() != 2 or time_ids.shape[-1] != 6:
        return time_ids
    ids = time_ids.clone()
    default = torch.tensor([height, width], dtype=ids.dtype, device=ids.device)
    replacement = torch.tensor(base, dtype=ids.dtype, device=ids.device)
    for lo in (0, 4):
        pair = ids[:, lo : lo + 2]
        is_default = (pair == default).all(dim=1, keepdim=True)
        ids[:, lo : lo + 2] = torch.where(is_default, replacement, pair)
    return ids


class UNetHook(ModelHook):
    """``new_forward`` of the UNet: locate the step, lay out the branches, run the pass(es), return the stock batch.

    It also carries the applied patch (``.patch``), which is how :func:`fouriscale.get_config` finds it.
    """

    def __init__(self, patch) -> None:
        super().__init__()
        self.patch = patch
        self._signature = None

    def new_forward(self, module, *args, **kwargs):
        original = self.fn_ref.original_forward
        prepared = self._prepare(module, args, kwargs)
        if prepared is None:
            return original(*args, **kwargs)
        return self._run(original, *prepared)

    @torch.compiler.disable
    def _prepare(self, module, args: tuple, kwargs: dict):
        """``(inputs, plan, step, cfg, rows)`` of a FouriScale call, or ``None`` for a stock call.

        Host-side bookkeeping (frames, tables, plans), never traced by ``torch.compile``: compiled graphs serve
        the stock calls, FouriScale's passes run eagerly.
        """
        patch, runtime = self.patch, self.patch.runtime
        if not runtime.enabled or runtime.call is not None:
            return None
        patch.sync()
        if self._signature is None:
            self._signature = inspect.signature(self.fn_ref.original_forward)
        try:
            inputs = dict(self._signature.bind(*args, **kwargs).arguments)
        except TypeError:
            return None
        sample, timestep = inputs.get("sample"), inputs.get("timestep")
        if not isinstance(sample, torch.Tensor) or sample.dim() != 4 or timestep is None:
            return None
        located = locate_call(patch, module, timestep)
        if located is None:
            return None
        step_index, num_steps, cfg = located
        f = patch.profile.vae_scale_factor
        n_stock = 2 if cfg else 1
        rows = max(sample.shape[0] // n_stock, 1)
        call = dict(rows=rows, cfg=cfg, dtype=sample.dtype, device=sample.device, unet=module)
        plan = patch.plan_for_call(sample.shape[-2] * f, sample.shape[-1] * f, num_steps, call)
        if plan.noop:
            return None
        if sample.shape[0] % n_stock:
            raise RuntimeError(
                f"FouriScale: a UNet batch of {sample.shape[0]} cannot be split into {n_stock} CFG branches."
            )
        return inputs, plan, plan.step(step_index), cfg, rows

    @torch.compiler.disable
    def _run(self, original, inputs: dict, plan, step, cfg: bool, rows: int):
        """The pass(es) of one FouriScale UNet call; returns the output in the stock layout."""
        runtime = self.patch.runtime
        if plan.profile.family.bucketed and plan.config.base_size_conditioning:
            added = inputs.get("added_cond_kwargs")
            if isinstance(added, dict) and isinstance(added.get("time_ids"), torch.Tensor):
                ids = _base_time_ids(added["time_ids"], plan.height, plan.width, plan.base_size)
                inputs["added_cond_kwargs"] = dict(added, time_ids=ids)

        stock = stock_roles(plan, step, cfg)
        outputs = []
        for roles, forked in passes(plan, step, stock):
            call = CallState(plan=plan, step=step, rows=rows, stock=roles, forked=forked)
            pass_inputs = relayout_rows(inputs, rows, stock, roles)
            if forked is not None:
                pass_inputs = self._lay_out_residuals(pass_inputs, call)
            runtime.call = call
            try:
                outputs.append(original(**pass_inputs))
            finally:
                runtime.call = None
        samples = [out[0] if isinstance(out, tuple) else out.sample for out in outputs]
        result = samples[0] if len(samples) == 1 else torch.cat(samples)
        if cfg and step.amp_guidance:
            uncond = result[:rows]
            result = torch.cat([uncond, amplify_guidance(uncond, result[rows:], plan.config.amp_guidance_factor)])
        out = outputs[-1]
        if isinstance(out, tuple):
            return (result, *out[1:])
        return type(out)(sample=result)

    def _lay_out_residuals(self, inputs: dict, call: CallState) -> dict:
        """ControlNet and T2I-Adapter residuals, which the UNet adds between stages, in their stage's layout."""
        profile = call.plan.profile
        inputs = dict(inputs)
        down = inputs.get("down_block_additional_residuals")
        if isinstance(down, (list, tuple)) and len(down) == len(profile.res_sample_stages):
            inputs["down_block_additional_residuals"] = type(down)(
                relayout(r, call, call.roles_at(s)) for r, s in zip(down, profile.res_sample_stages)
            )
        mid = inputs.get("mid_block_additional_residual")
        if isinstance(mid, torch.Tensor) and "mid_block" in profile.stages:
            inputs["mid_block_additional_residual"] = relayout(
                mid, call, call.roles_at(profile.stages.index("mid_block"))
            )
        intra = inputs.get("down_intrablock_additional_residuals")
        if isinstance(intra, (list, tuple)):
            stages = profile.intrablock_stages
            inputs["down_intrablock_additional_residuals"] = [
                relayout(r, call, call.roles_at(stages[k])) if k < len(stages) else r for k, r in enumerate(intra)
            ]
        return inputs
