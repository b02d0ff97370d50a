"""Feed-forward layers of the forked stages (layer 3): the three-branch batch in pieces of the stock batch's size.

A transformer block's feed-forward (``ff``) acts on every token of every row on its own, and its hidden layer
is the widest tensor of the block (4x the width, 8x with GEGLU). Between the fork and the join the batch holds
three branches instead of two, so that tensor grows by half over direct inference's. On large feature maps
(``Plan.feed_forward_pieces``) :class:`FeedForwardHook` runs the forked batch through the layer in pieces of the
stock batch's size (``[uncond, structure]``, then ``[detail]``), so no feed-forward tensor is larger than in
direct inference: the same peak as direct inference in these layers, and on a CPU the same cache and page reuse.
On small maps, where memory does not matter and one larger call is faster, the batch runs whole. Each row's
result is the one the whole batch gives.

The feed-forward of the join layer's transformer block (the block of the last self-attention that reads the
structure branch) comes after the structure branch's last use: it runs on the other branches only and gives
the structure rows the detail rows' output, which nothing reads.
"""

from __future__ import annotations

import torch

from .branches import relayout_rows
from .state import Runtime, StageHook

__all__ = ["FeedForwardHook", "FF_HOOK"]

FF_HOOK = "fouriscale.ff"


class FeedForwardHook(StageHook):
    """Forward override of the feed-forward layer of self-attention ``index`` (``Plan.feed_forward_pieces``) in a
    forked stage (``after_join``: the join layer's block)."""

    def __init__(self, stage: int, runtime: Runtime, index: int, after_join: bool = False) -> None:
        super().__init__(stage, runtime)
        self.index = index
        self.after_join = after_join

    def new_forward(self, module, hidden_states: torch.Tensor, *args, **kwargs):
        original = self.fn_ref.original_forward
        call = self.runtime.call
        if call is None or args or kwargs or not call.is_forked_batch(self.stage, hidden_states):
            return original(hidden_states, *args, **kwargs)
        if self.after_join:  # the stock roles are the forked ones less the structure branch
            out = original(relayout_rows(hidden_states, call.rows, call.forked, call.stock))
            return relayout_rows(out, call.rows, call.stock, call.forked)
        if not call.plan.feed_forward_pieces[self.index]:
            return original(hidden_states)
        return torch.cat([original(part) for part in hidden_states.split(len(call.stock) * call.rows)])
