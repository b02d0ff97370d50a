"""Hooks on the patched layers of a diffusers UNet (layer 3, diffusers host): thin adapters of
:mod:`fouriscale.runtime.ops` as named diffusers hooks.

No module is mutated or replaced: each hook overrides its module's forward on the instance (diffusers'
``HookRegistry``) and runs the module's own forward whenever no FouriScale pass is running.

* :class:`ConvHook` on every patched ``nn.Conv2d`` (for a LoRA layer: its base conv and its down-projection):
  :func:`~fouriscale.runtime.ops.patched_conv` with the conv's own weight, bias and stride;
* :class:`QKShareHook` on ``to_q``/``to_k`` (or a fused ``to_qkv``) of every self-attention: the detail branch's
  queries and keys are the structure branch's, so whatever attention processor or backend the user set runs
  unchanged; cross-attention is never touched;
* :class:`JoinAttentionHook` on the last self-attention that reads the structure branch;
* :class:`FeedForwardHook` on the feed-forward of every transformer block in the forked stages;
* :class:`PaperFreeUHook` before every up-block resnet (the paper's FreeU).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.hooks import ModelHook

from ..profiles import FreeUSite
from ..runtime.ops import (
    QKShare,
    branch_pieces,
    dilated_conv2d,
    forked_feed_forward,
    join_attention,
    paper_freeu,
    paper_freeu_,
    patched_conv,
    shared_projection,
    token_pieces,
)
from ..runtime.state import Runtime

__all__ = [
    "StageHook",
    "ConvHook",
    "QKShareHook",
    "JoinAttentionHook",
    "FeedForwardHook",
    "PaperFreeUHook",
    "CONV_HOOK",
    "QK_HOOK",
    "JOIN_ATTENTION_HOOK",
    "FF_HOOK",
    "FREEU_HOOK",
    "PIECES_HOOK",
    "ResnetPiecesHook",
]

CONV_HOOK = "fouriscale.conv"
QK_HOOK = "fouriscale.qk"
JOIN_ATTENTION_HOOK = "fouriscale.join.attention"
FF_HOOK = "fouriscale.ff"
FREEU_HOOK = "fouriscale.freeu"
PIECES_HOOK = "fouriscale.pieces"


class StageHook(ModelHook):
    """Base of the hooks on the modules of one top-level stage (index ``stage`` in ``ModelProfile.stages``) that
    read the :class:`Runtime` of their patched UNet."""

    def __init__(self, stage: int, runtime: Runtime) -> None:
        super().__init__()
        self.stage = stage
        self.runtime = runtime


class ConvHook(ModelHook):
    """Forward override of one patched conv: at an active step, :func:`~fouriscale.runtime.ops.patched_conv` with
    the plan's values for layer ``index``; otherwise the conv's own forward."""

    def __init__(self, index: int, runtime: Runtime) -> None:
        super().__init__()
        self.index = index  # position of the layer in Plan.layers
        self.runtime = runtime

    def new_forward(self, module: nn.Conv2d, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        call = self.runtime.call
        if call is None or not call.step.active or args or kwargs:
            return self.fn_ref.original_forward(x, *args, **kwargs)
        return patched_conv(call, self.index, x, lambda y, k: dilated_conv2d(module, y, k))


class QKShareHook(StageHook):
    """Forward override of a self-attention projection in a forked stage:
    :func:`~fouriscale.runtime.ops.shared_projection` (``fused=True`` marks a fused ``to_qkv``)."""

    def __init__(self, stage: int, runtime: Runtime, fused: bool = False, share: QKShare | None = None) -> None:
        super().__init__(stage, runtime)
        self.fused = fused
        self.share = share

    def new_forward(self, module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        project = self.fn_ref.original_forward
        call = self.runtime.call
        if call is None or not call.shares_qk or not call.is_forked(self.stage) or args or kwargs:
            return project(x, *args, **kwargs)
        return shared_projection(call, x, project, self.share, self.fused)


class JoinAttentionHook(StageHook):
    """Forward override of the last self-attention that reads the structure branch:
    :func:`~fouriscale.runtime.ops.join_attention` on its forked batches."""

    def __init__(self, stage: int, runtime: Runtime, share: QKShare) -> None:
        super().__init__(stage, runtime)
        self.share = share

    def new_forward(self, module, hidden_states: torch.Tensor, *args, **kwargs):
        original = self.fn_ref.original_forward
        call = self.runtime.call
        if (
            call is None
            or not call.shares_qk
            or args
            or kwargs.get("encoder_hidden_states") is not None
            or not call.is_forked_batch(self.stage, hidden_states)
        ):
            return original(hidden_states, *args, **kwargs)
        return join_attention(
            call, self.share, hidden_states, lambda drop: original(drop(hidden_states), **drop(kwargs))
        )


class FeedForwardHook(StageHook):
    """Forward override of the feed-forward layer of self-attention ``index`` (``Plan.feed_forward_pieces``) in a
    forked stage (``after_join``: the join layer's block): :func:`~fouriscale.runtime.ops.forked_feed_forward`."""

    def __init__(self, stage: int, runtime: Runtime, index: int, after_join: bool = False) -> None:
        super().__init__(stage, runtime)
        self.index = index
        self.after_join = after_join

    def new_forward(self, module, hidden_states: torch.Tensor, *args, **kwargs):
        original = self.fn_ref.original_forward
        call = self.runtime.call
        if call is None or args or kwargs:
            return original(hidden_states, *args, **kwargs)
        if not call.is_forked_batch(self.stage, hidden_states):
            tokens = call.plan.feed_forward_tokens
            return token_pieces(original, hidden_states, tokens) if tokens else original(hidden_states)
        return forked_feed_forward(call, self.index, hidden_states, original, self.after_join)


class ResnetPiecesHook(StageHook):
    """Forward override of a resnet in a forked stage: with ``Plan.resnet_pieces``, the forked batch one branch at a
    time (:func:`~fouriscale.runtime.ops.branch_pieces`)."""

    def new_forward(self, module, hidden_states: torch.Tensor, temb=None, *args, **kwargs):
        original = self.fn_ref.original_forward
        call = self.runtime.call
        if (
            call is None
            or args
            or kwargs
            or not call.plan.resnet_pieces
            or not call.is_forked_batch(self.stage, hidden_states)
        ):
            return original(hidden_states, temb, *args, **kwargs)
        return branch_pieces(self.runtime, call, hidden_states, temb, original)


class PaperFreeUHook(ModelHook):
    """Pre-forward hook of one up-block resnet: diffusers concatenates ``[hidden, skip]`` right before calling it,
    so the input splits at the site's backbone width into :func:`~fouriscale.runtime.ops.paper_freeu`'s inputs."""

    def __init__(self, site: FreeUSite, stage: int, runtime: Runtime) -> None:
        super().__init__()
        self.site = site
        self.stage = stage  # 1: (b1, s1); 2: (b2, s2)
        self.runtime = runtime

    def pre_forward(self, module: nn.Module, *args, **kwargs):
        call = self.runtime.call
        if call is None or call.plan.freeu_params is None or call.plan.config.freeu != "paper" or not args:
            return args, kwargs
        x, C = args[0], self.site.backbone_channels
        pieces = call.plan.filter_pieces
        # With the filters in pieces (a memory setting), FreeU changes diffusers' up block's new [hidden, skip]
        # concatenation in place, which the block reads no more after the resnet (a caller that does gets a copy
        # only when it holds one more reference: the check cannot see later reads, so it is not the default).
        if pieces > 1 and _fresh(x):
            paper_freeu_(x, C, call.plan.freeu_params, self.stage, pieces)
            return args, kwargs
        x = torch.cat(paper_freeu(x[:, :C], x[:, C:], call.plan.freeu_params, self.stage, pieces), dim=1)
        return (x, *args[1:]), kwargs


# References to the concatenation when diffusers' up block calls a resnet (through nn.Module.__call__, the hook
# registry and accelerate's wrapper alike), counted inside _fresh: sys.getrefcount's argument, _fresh's and
# pre_forward's names, the argument tuples on the way, the block's own name. One more holder makes it no longer fresh.
_FRESH_REFS = 11


def _fresh(x: torch.Tensor) -> bool:
    """``x`` can be changed in place: a whole tensor (no view), not part of an autograd graph, and referenced only by
    the call being made (the up block's local name, the call's arguments and this check)."""
    import sys

    return (
        x._base is None
        and not x.requires_grad
        and x.grad_fn is None
        and x.is_contiguous()
        and sys.getrefcount(x) <= _FRESH_REFS
    )
