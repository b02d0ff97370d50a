"""FouriScale guidance in self-attention (layer 3): hooks on the outputs of ``to_q`` and ``to_k``.

While the batch carries a structure and a detail branch, the detail branch's queries and keys are those
of the structure branch (its values stay its own). The hooks act on the outputs of each self-attention
layer's ``to_q`` and ``to_k`` (or on the query and key thirds of a fused ``to_qkv`` after
``fuse_qkv_projections()``), so whatever attention processor or backend the user set runs unchanged.
Cross-attention is never touched.
"""

from __future__ import annotations

import torch
from diffusers.hooks import ModelHook

from .plan import DETAIL, STRUCTURE
from .state import Runtime

__all__ = ["QKShareHook", "QK_HOOK"]

QK_HOOK = "fouriscale.qk"


class QKShareHook(ModelHook):
    """``post_forward`` of a self-attention projection: detail rows := structure rows, in place.

    ``fused=True`` marks a fused ``to_qkv``, whose output holds ``[q, k, v]`` along the last dimension; then
    only the query and key thirds are shared.
    """

    def __init__(self, stage: int, runtime: Runtime, fused: bool = False) -> None:
        super().__init__()
        self.stage = stage
        self.runtime = runtime
        self.fused = fused

    def post_forward(self, module, output: torch.Tensor) -> torch.Tensor:
        call = self.runtime.call
        if call is None or not call.shares_qk or not call.is_forked(self.stage):
            return output
        roles = call.forked
        if output.shape[0] != len(roles) * call.rows:
            raise RuntimeError(
                f"FouriScale: a self-attention projection saw {output.shape[0]} rows, expected {len(roles) * call.rows}; "
                "the attention processor in use splits the batch in a way FouriScale guidance cannot follow."
            )
        structure, detail = call.rows_of(roles, STRUCTURE), call.rows_of(roles, DETAIL)
        # In place: no second copy of Q or K is ever alive (peak memory stays that of the stock layer).
        if self.fused:
            n = output.shape[-1] // 3 * 2
            output[detail, ..., :n] = output[structure, ..., :n]
        else:
            output[detail] = output[structure]
        return output
