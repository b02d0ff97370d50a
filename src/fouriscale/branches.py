"""The UNet around-hook and the stage layout hooks (layer 3): FouriScale's branches inside one UNet call.

The stock pipeline ``__call__`` runs untouched. Its UNet call reaches :class:`UNetHook` (a diffusers
``new_forward``), which locates the denoising step in the calling pipeline's scheduler, takes the
(cached) plan for the size and step count and runs the UNet once, or twice with the unconditional
branch as a pass of its own. Inside a pass the branches are laid out by stage (:class:`CallState`):

* before the fork stage, the stock batch: ``[uncond, cond]`` (``[cond]`` without CFG);
* from the fork stage to the join block, three branches: ``[uncond, structure, detail]``;
* after the join block, the stock batch again, the cond rows now being the detail branch.

:class:`LayoutHook` on every stage from the fork on gives each batch-shaped input of the stage (hidden
states, time embedding, text embeddings, skip tensors, attention masks, adapter residuals, IP-Adapter
embeddings) the layout of that stage, and :class:`JoinHook` on the join block (``Plan.join_block``: the
transformer model of the last self-attention, or the last stage without branch sharing) returns its output
in the stock layout, so the rest of the join stage (its upsampler) runs the stock batch. The structure branch
starts as a copy of the cond rows: before the fork nothing treats it differently. The residuals the UNet adds
between blocks (ControlNet, T2I-Adapter) are laid out by the around-hook for the stage they are added to.
"""

from __future__ import annotations

import inspect
import logging
import sys

import torch
from diffusers.hooks import ModelHook

from .plan import COND, DETAIL, STRUCTURE, UNCOND
from .state import CallState, StageHook
from .steps import locate_step

__all__ = [
    "UNetHook",
    "LayoutHook",
    "JoinHook",
    "relayout",
    "relayout_rows",
    "UNET_HOOK",
    "LAYOUT_HOOK",
    "JOIN_LAYOUT_HOOK",
    "calling_pipeline",
]

logger = logging.getLogger("fouriscale")

UNET_HOOK = "fouriscale"
LAYOUT_HOOK = "fouriscale.layout"
JOIN_LAYOUT_HOOK = "fouriscale.layout.join"


def _map_tensors(obj, fn):
    """``obj`` with ``fn`` applied to every tensor nested in tuples, lists and dicts (a model output stays one)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        mapped = {k: _map_tensors(v, fn) for k, v in obj.items()}
        return mapped if type(obj) is dict else type(obj)(**mapped)
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _take(x: torch.Tensor, rows: int, source: tuple[str, ...], target: tuple[str, ...]) -> torch.Tensor:
    """Rows of ``x`` (laid out as ``source``) rearranged to ``target``; a role missing from ``source`` (the
    structure branch) copies the detail or cond rows."""
    chunks = []
    for role in target:
        if role in source:
            k = source.index(role)
        else:
            k = source.index(DETAIL if DETAIL in source else COND)
        chunks.append(x[k * rows : (k + 1) * rows])
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def relayout_rows(obj, rows: int, source: tuple[str, ...], target: tuple[str, ...]):
    """Every tensor in ``obj`` batched as ``source`` (``rows`` rows a branch), laid out as ``target`` instead."""
    if source == target:
        return obj
    total = len(source) * rows
    return _map_tensors(obj, lambda x: _take(x, rows, source, target) if x.dim() and x.shape[0] == total else x)


def relayout(obj, call: CallState, target: tuple[str, ...]):
    """Give every batch-shaped tensor in ``obj`` (stock or forked layout) the row layout ``target``."""
    obj = relayout_rows(obj, call.rows, call.stock, target)
    if call.forked is not None:
        obj = relayout_rows(obj, call.rows, call.forked, target)
    return obj


class LayoutHook(StageHook):
    """On one top-level stage: its inputs in the stage's layout."""

    def pre_forward(self, module, *args, **kwargs):
        call = self.runtime.call
        if call is None or call.forked is None:
            return args, kwargs
        target = call.roles_at(self.stage)
        return relayout(args, call, target), relayout(kwargs, call, target)


class JoinHook(StageHook):
    """On the join block: its output handed back in the stock layout (without the structure branch)."""

    def post_forward(self, module, output):
        call = self.runtime.call
        if call is None or call.forked is None:
            return output
        return relayout(output, call, call.stock)


def calling_pipeline(unet, max_depth: int = 64):
    """The diffusers pipeline running ``unet`` (the nearest caller on the stack that is a pipeline holding this
    UNet), or ``None``.

    FouriScale reads the scheduler and the guidance setting of that pipeline, so pipelines made with
    ``from_pipe``, or any other pipeline given this UNet, run FouriScale with their own settings.
    """
    from diffusers import DiffusionPipeline

    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            obj = frame.f_locals.get("self")
            if isinstance(obj, DiffusionPipeline):
                owner = getattr(obj, "unet", None)
                if getattr(owner, "_orig_mod", owner) is unet:
                    return obj
        frame = frame.f_back
    return None


def _uses_cfg(pipe) -> bool:
    try:
        return bool(pipe.do_classifier_free_guidance)
    except (AttributeError, TypeError):
        return False


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


def _forked(stock: tuple[str, ...]) -> tuple[str, ...]:
    """The stock layout with the structure branch inserted before the detail branch."""
    k = stock.index(DETAIL)
    return stock[:k] + (STRUCTURE,) + stock[k:]


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
        pipe = calling_pipeline(module)
        if pipe is None:
            patch.warn_once(
                "pipeline",
                "FouriScale: the UNet was called outside a diffusers pipeline (its scheduler and guidance are "
                "unknown); "
                "running it unchanged.",
            )
            return None
        located = locate_step(pipe.scheduler, timestep)
        if located is None:
            patch.warn_once(
                "step",
                "FouriScale: the UNet was called with a timestep that is not in the scheduler's table (outside a "
                "denoising loop, or a custom sampler); running it unchanged.",
            )
            return None
        step_index, num_steps = located
        f = patch.profile.vae_scale_factor
        plan = patch.plan(sample.shape[-2] * f, sample.shape[-1] * f, num_steps)
        if plan.noop:
            return None
        cfg = _uses_cfg(pipe)
        n_stock = 2 if cfg else 1
        if sample.shape[0] % n_stock:
            raise RuntimeError(
                f"FouriScale: a UNet batch of {sample.shape[0]} cannot be split into {n_stock} CFG branches."
            )
        return inputs, plan, plan.step(step_index), cfg, sample.shape[0] // n_stock

    @torch.compiler.disable
    def _run(self, original, inputs: dict, plan, step, cfg: bool, rows: int):
        """The pass(es) of one FouriScale UNet call; returns the output in the stock layout."""
        runtime = self.patch.runtime
        if plan.profile.family.bucketed and plan.config.base_size_conditioning:
            added = inputs.get("added_cond_kwargs")
            if isinstance(added, dict) and isinstance(added.get("time_ids"), torch.Tensor):
                ids = _base_time_ids(added["time_ids"], plan.height, plan.width, plan.base_size)
                inputs["added_cond_kwargs"] = dict(added, time_ids=ids)

        cond = DETAIL if plan.guided(step) else COND
        stock = (UNCOND, cond) if cfg else (cond,)
        three = plan.three_branch(step)
        if three and cfg and plan.sequential_uncond:
            # The unconditional branch runs as a pass of its own, so no pass is larger than the stock batch.
            passes = [(UNCOND,), (cond,)]
        else:
            passes = [stock]
        outputs = []
        for roles in passes:
            forked = _forked(roles) if three and DETAIL in roles else None
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
            uncond, cond_rows = result[:rows], result[rows:]
            result = torch.cat([uncond, uncond + plan.config.amp_guidance_factor * (cond_rows - uncond)])
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
