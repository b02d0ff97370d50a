"""FouriScale guidance in self-attention (layer 3): a diffusers attention processor.

While the batch carries a detail branch, the detail branch's queries and keys are those of the
structure branch (its values stay its own); otherwise the original processor runs unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .state import Runtime

__all__ = ["FouriScaleAttnProcessor"]


class FouriScaleAttnProcessor:
    """Self-attention (``attn1``) processor that shares Q/K from the structure to the detail branch.

    The detail branch is the last ``branch_size`` rows of the batch and the structure branch the rows
    before it; the detail rows of Q and K are overwritten in place with the structure rows.
    """

    def __init__(self, original, runtime: Runtime) -> None:
        self.original = original
        self._runtime = runtime

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        state = self._runtime.state
        if state is None or not state.guided or encoder_hidden_states is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        rows = state.branch_size

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        # In place: no second copy of Q or K is ever alive (peak memory stays that of the stock processor).
        query[-rows:] = query[-2 * rows : -rows]
        key[-rows:] = key[-2 * rows : -rows]

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
