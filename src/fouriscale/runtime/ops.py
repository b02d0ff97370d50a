"""What FouriScale does in each patched layer during a pass (layer 3, shared by every host; pure torch).

Each function takes the pass's :class:`~fouriscale.runtime.state.CallState` and the host's own computation as a
callable (the conv with given dilation, the projection, the attention layer, the feed-forward layer), so the
diffusers hooks and the ComfyUI patches are thin adapters around the same code:

* :func:`patched_conv`: low-pass filter the input by branch, then convolve with the step's dilation;
* :func:`shared_projection`: a self-attention's ``to_q``/``to_k`` with the detail rows given the structure rows'
  result (FouriScale guidance);
* :func:`join_attention`: the last self-attention that reads the structure branch, run without it;
* :func:`forked_feed_forward`: a transformer block's feed-forward on a forked batch;
* :func:`paper_freeu` and :func:`amplify_guidance`: FreeU as the paper's scripts apply it, amplified guidance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spectral import freeu_filter, lowpass_filter
from .layout import DETAIL, STRUCTURE, relayout_rows

__all__ = [
    "dilated_conv2d",
    "patched_conv",
    "QKShare",
    "shared_projection",
    "join_attention",
    "forked_feed_forward",
    "token_pieces",
    "branch_pieces",
    "freeu_stage",
    "paper_freeu",
    "paper_freeu_",
    "amplify_guidance",
]


def dilated_conv2d(
    conv: nn.Conv2d, x: torch.Tensor, k: int, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``conv`` with dilation ``k`` and "same" padding ``k * (kernel - 1) // 2`` (its stride and groups; its own
    weight and bias unless the host hands over the ones it computes with)."""
    if weight is None:
        weight, bias = conv.weight, conv.bias
    kh, kw = conv.kernel_size
    padding = (k * (kh - 1) // 2, k * (kw - 1) // 2)
    if conv.padding_mode != "zeros":
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), mode=conv.padding_mode)
        padding = (0, 0)
    return F.conv2d(x, weight, bias, conv.stride, padding, (k, k), conv.groups)


def patched_conv(call, index: int, x: torch.Tensor, conv: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """Patched conv ``index`` of ``call.plan`` at an active step: low-pass filter the input (strong mask for the
    uncond and structure branches, weak mask for the detail branch; pad-then-crop to the layer's base aspect
    ratio), then ``conv(x, k)`` with the dilation ``k = ceil(d_i)`` (the detail branch with its own dilation where
    the plan says so)."""
    plan, step = call.plan, call.step
    layer = plan.layers[index]
    roles = call.forked if call.forked is not None and layer.forked else call.stock
    if tuple(x.shape[-2:]) != layer.input_size or x.shape[0] != len(roles) * call.rows:
        raise RuntimeError(
            f"FouriScale: {layer.spec.name} got a {tuple(x.shape)} input, the plan expected "
            f"{len(roles) * call.rows} rows of {layer.input_size[0]}x{layer.input_size[1]}; another patch changes "
            "the batch or the feature size (Deep Shrink, HyperTile?), or this is a bug: please report it."
        )
    if layer.filtered:
        weak = tuple(role == DETAIL for role in roles)
        with torch.profiler.record_function("fouriscale.lowpass"):  # the benchmark times the filter by this name
            x = lowpass_filter(
                x, layer.padded, layer.scales[step.index], plan.mask_floor, weak, getattr(plan, "filter_pieces", 1)
            )
    k, k_detail = step.conv_dilation, step.detail_conv_dilation
    if k_detail != k and roles == (DETAIL,):  # the detail branch alone (a pass or a piece of its own)
        return conv(x, k_detail)
    if k_detail != k and DETAIL in roles:
        detail = call.rows_of(roles, DETAIL)  # the detail branch is the last one
        return torch.cat([conv(x[: detail.start], k), conv(x[detail], k_detail)])
    return conv(x, k)


class QKShare:
    """What the projections of one self-attention layer share: the structure rows' input while the join runs."""

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None  # structure branch's hidden states, set by join_attention


def shared_projection(
    call, x: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor], share: QKShare | None, fused: bool = False
) -> torch.Tensor:
    """A self-attention's query or key projection in a forked stage: the detail rows are the structure rows' result.

    The detail branch's own queries and keys are never computed: ``project`` runs on the other rows and the
    structure rows' result stands for the detail rows too. ``fused=True`` marks a fused ``to_qkv``, whose output
    holds ``[q, k, v]`` along the last dimension; it runs on every row (the detail branch keeps its own values) and
    only the query and key thirds are shared. While the join layer runs without the structure branch
    (``share.pending`` set), the detail rows get the projection of the structure branch's input instead.
    """
    pending = share.pending if share is not None else None
    roles = call.forked if pending is None else call.stock  # the forked roles less the structure branch
    if x.shape[0] != len(roles) * call.rows:
        raise RuntimeError(
            f"FouriScale: a self-attention projection saw {x.shape[0]} rows, expected {len(roles) * call.rows}; "
            "an attention patch or processor in use splits the batch in a way FouriScale guidance cannot follow."
        )
    detail = call.rows_of(roles, DETAIL)  # the last branch of both layouts
    if fused:
        out = project(x)
        n = out.shape[-1] // 3 * 2
        # In place: no second copy of Q or K is ever alive (peak memory stays that of the stock layer).
        shared = out[call.rows_of(roles, STRUCTURE)] if pending is None else project(pending)
        out[detail, ..., :n] = shared[..., :n]
        return out
    head = project(x[: detail.start]) if detail.start else None  # every branch but the detail branch
    shared = head[call.rows_of(roles, STRUCTURE)] if pending is None else project(pending)
    return shared if head is None else torch.cat([head, shared])


def join_attention(call, share: QKShare, x: torch.Tensor, attend: Callable[[Callable], object]):
    """The last self-attention that reads the structure branch, run on the other branches only.

    The structure branch's output is never read after this layer, only its queries and keys matter: they come from
    ``share.pending`` through :func:`shared_projection`. ``attend(drop)`` runs the layer with its batch-shaped
    inputs passed through ``drop`` (which leaves the structure rows out); the structure rows of the result are the
    detail rows' output, which nothing reads.
    """
    roles, keep = call.forked, call.stock  # the forked roles less the structure branch
    share.pending = x[call.rows_of(roles, STRUCTURE)]
    try:
        out = attend(lambda obj: relayout_rows(obj, call.rows, roles, keep))
    finally:
        share.pending = None
    return relayout_rows(out, call.rows, keep, roles)


def forked_feed_forward(
    call, index: int, x: torch.Tensor, ff: Callable[[torch.Tensor], torch.Tensor], after_join: bool = False
) -> torch.Tensor:
    """The feed-forward layer of self-attention ``index``'s transformer block on a forked batch.

    On large feature maps (``Plan.feed_forward_pieces``) the batch runs in pieces of the stock batch's size, so no
    feed-forward tensor is larger than in direct inference; on small maps it runs whole. ``after_join``: the join
    layer's block, whose feed-forward comes after the structure branch's last use, runs without it.
    """
    tokens = getattr(call.plan, "feed_forward_tokens", 0)
    if tokens:
        ff = partial(token_pieces, ff, tokens=tokens)
    if after_join:  # the stock roles are the forked ones less the structure branch
        out = ff(relayout_rows(x, call.rows, call.forked, call.stock))
        return relayout_rows(out, call.rows, call.stock, call.forked)
    if not call.plan.feed_forward_pieces[index]:
        return ff(x)
    return torch.cat([ff(part) for part in x.split(len(call.stock) * call.rows)])


def branch_pieces(runtime, call, x: torch.Tensor, temb, run: Callable) -> torch.Tensor:
    """A unit of a forked stage (a resnet) run one branch at a time: ``run(x_piece, temb_piece)`` for the rows of each
    branch of ``call.forked``, with ``runtime.call`` saying the piece holds that branch alone (so the patched convs
    inside pick its mask and dilation), the outputs concatenated. Every row is computed on its own: the same
    result, with the unit's intermediate tensors one branch large."""
    roles, total = call.forked, x.shape[0]
    outputs = []
    try:
        for role in roles:
            rows = call.rows_of(roles, role)
            piece = temb[rows] if isinstance(temb, torch.Tensor) and temb.dim() and temb.shape[0] == total else temb
            runtime.call = dataclasses.replace(call, forked=(role,))
            outputs.append(run(x[rows], piece))
    finally:
        runtime.call = call
    return torch.cat(outputs)


def token_pieces(ff: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tokens: int) -> torch.Tensor:
    """A feed-forward layer (position-wise) over ``x`` of shape ``(rows, tokens, channels)`` in pieces of ``tokens``
    tokens, so its hidden layer exists for one piece at a time; the same result."""
    if x.dim() != 3 or x.shape[1] <= tokens:
        return ff(x)
    return torch.cat([ff(part) for part in x.split(tokens, dim=1)], dim=1)


def freeu_stage(backbone_channels: int, deepest_channels: int) -> int | None:
    """Stage of the paper's FreeU: 1 when the incoming width is the deepest width, 2 when it is half of it."""
    if backbone_channels == deepest_channels:
        return 1
    if 2 * backbone_channels == deepest_channels:
        return 2
    return None


def paper_freeu(
    h: torch.Tensor, skip: torch.Tensor, params: tuple[float, float, float, float], stage: int, pieces: int = 1
) -> list[torch.Tensor]:
    """FreeU of the paper's scripts before an up-block resnet (FreeU, Eq. 6-7): the first half of the backbone
    features ``h`` scaled by ``b``, the skip features Fourier-filtered with ``s``; returns the channel pieces
    ``[h_first_half * b, h_second_half, filtered_skip]`` (``pieces``: the filter's groups of channels)."""
    b1, b2, s1, s2 = params
    b, s = (b1, s1) if stage == 1 else (b2, s2)
    half = h.shape[1] // 2
    return [h[:, :half] * b, h[:, half:], freeu_filter(skip, s, pieces)]


def paper_freeu_(
    x: torch.Tensor, backbone: int, params: tuple[float, float, float, float], stage: int, pieces: int = 1
) -> torch.Tensor:
    """:func:`paper_freeu` in place on the concatenation ``x = [h, skip]`` (``backbone``: the channels of ``h``), for
    a host that hands over a tensor nothing else reads: the same values, without a second copy of ``x``."""
    b1, b2, s1, s2 = params
    b, s = (b1, s1) if stage == 1 else (b2, s2)
    x[:, : backbone // 2].mul_(b)
    x[:, backbone:] = freeu_filter(x[:, backbone:], s, pieces)
    return x


def amplify_guidance(uncond: torch.Tensor, cond: torch.Tensor, factor: float) -> torch.Tensor:
    """The conditional prediction with its guidance direction amplified: ``uncond + factor * (cond - uncond)``."""
    return uncond + factor * (cond - uncond)
