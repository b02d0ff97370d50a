"""FouriScale guidance in self-attention (layer 3): hooks on ``to_q`` and ``to_k``.

While the batch carries a structure and a detail branch, the detail branch's queries and keys are those
of the structure branch (its values stay its own). The hooks override each self-attention layer's ``to_q``
and ``to_k``, which project every branch but the detail branch and hand the detail rows the structure rows'
result (a fused ``to_qkv`` after ``fuse_qkv_projections()`` projects every row and shares its query and key
thirds), so whatever attention processor or backend the user set runs unchanged.
Cross-attention is never touched.

At the last self-attention that reads the structure branch (the join), the structure branch's own
attention output is never used again: only its queries and keys matter. :class:`JoinAttentionHook` runs
that layer on the other branches only and computes the structure branch's queries and keys by its
projections alone, which saves one branch of the largest attention of the UNet.
"""

from __future__ import annotations

import torch

from .plan import DETAIL, STRUCTURE
from .state import Runtime, StageHook

__all__ = ["QKShare", "QKShareHook", "JoinAttentionHook", "QK_HOOK", "JOIN_HOOK"]

QK_HOOK = "fouriscale.qk"
JOIN_HOOK = "fouriscale.join"


class QKShare:
    """What the hooks of one self-attention layer share: the structure rows' input while the join runs."""

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None  # structure branch's hidden states, set by JoinAttentionHook


class QKShareHook(StageHook):
    """Forward override of a self-attention projection: the detail rows are the structure rows' projection.

    The detail branch's own queries and keys are never computed: the projection runs on the other rows and the
    structure rows' result stands for the detail rows too. ``fused=True`` marks a fused ``to_qkv``, whose output
    holds ``[q, k, v]`` along the last dimension; it runs on every row (the detail branch keeps its own values) and
    only the query and key thirds are shared. While the join layer runs without the structure branch, the detail
    rows get the projection of the structure branch's input instead.
    """

    def __init__(self, stage: int, runtime: Runtime, fused: bool = False, share: QKShare | None = None) -> None:
        super().__init__(stage, runtime)
        self.fused = fused
        self.share = share

    def new_forward(self, module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        project = self.fn_ref.original_forward
        call = self.runtime.call
        if call is None or not call.shares_qk or not call.is_forked(self.stage) or args or kwargs:
            return project(x, *args, **kwargs)
        pending = self.share.pending if self.share is not None else None
        roles = call.forked if pending is None else call.stock  # the forked roles less the structure branch
        if x.shape[0] != len(roles) * call.rows:
            raise RuntimeError(
                f"FouriScale: a self-attention projection saw {x.shape[0]} rows, expected "
                f"{len(roles) * call.rows}; "
                "the attention processor in use splits the batch in a way FouriScale guidance cannot follow."
            )
        detail = call.rows_of(roles, DETAIL)  # the last branch of both layouts
        if self.fused:
            out = project(x)
            n = out.shape[-1] // 3 * 2
            # In place: no second copy of Q or K is ever alive (peak memory stays that of the stock layer).
            shared = out[call.rows_of(roles, STRUCTURE)] if pending is None else project(pending)
            out[detail, ..., :n] = shared[..., :n]
            return out
        head = project(x[: detail.start]) if detail.start else None  # every branch but the detail branch
        shared = head[call.rows_of(roles, STRUCTURE)] if pending is None else project(pending)
        return shared if head is None else torch.cat([head, shared])


class JoinAttentionHook(StageHook):
    """Forward override of the last self-attention that reads the structure branch: run it on the other branches
    (the detail branch still attends with the structure branch's queries and keys) and give the structure rows
    the detail rows' output, which nothing reads."""

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
        from .branches import relayout_rows

        roles, keep = call.forked, call.stock  # the forked roles less the structure branch
        self.share.pending = hidden_states[call.rows_of(roles, STRUCTURE)]
        try:
            kwargs = {k: relayout_rows(v, call.rows, roles, keep) for k, v in kwargs.items()}
            out = original(relayout_rows(hidden_states, call.rows, roles, keep), **kwargs)
        finally:
            self.share.pending = None
        return relayout_rows(out, call.rows, keep, roles)
