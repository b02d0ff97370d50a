"""Dilated, low-pass-filtered convolution (layer 3): a removable wrapper around an ``nn.Conv2d``.

The wrapped conv is never mutated: when active, the wrapper calls ``F.conv2d`` with the conv's own
weight, bias and stride and the planned dilation; otherwise it calls the conv itself.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .plan import DETAIL
from .profiles import LayerSpec
from .schedule import mask_scale
from .spectral import lowpass_filter
from .state import Runtime

__all__ = ["FouriScaleConv2d", "dilated_conv2d"]


def dilated_conv2d(conv: nn.Conv2d, x: torch.Tensor, k: int) -> torch.Tensor:
    """``conv`` applied with dilation ``k`` and "same" padding ``k * (kernel - 1) // 2`` (same weights, bias, stride).

    An accelerate hook on ``conv`` (sequential CPU offload) is honoured: it brings the weights in before
    and sends them back after, as it would around the conv's own forward.
    """
    if k == 1:
        return conv(x)
    hook = getattr(conv, "_hf_hook", None)
    if hook is not None:
        (x,), _ = hook.pre_forward(conv, x)
    kh, kw = conv.kernel_size
    padding = (k * (kh - 1) // 2, k * (kw - 1) // 2)
    if conv.padding_mode != "zeros":
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), mode=conv.padding_mode)
        padding = (0, 0)
    out = F.conv2d(x, conv.weight, conv.bias, conv.stride, padding, (k, k), conv.groups)
    return hook.post_forward(conv, out) if hook is not None else out


class FouriScaleConv2d(nn.Module):
    """Stands in for one patched conv; reads the step's setting from the shared :class:`Runtime`.

    At an active step: low-pass filter the input (strong mask for the uncond and structure branches,
    weak mask for the detail branch; pad-then-crop to the layer's base aspect ratio), then convolve with
    dilation ``ceil(d_i)`` (the detail branch with its own dilation where the plan says so).
    """

    def __init__(self, conv: nn.Conv2d, spec: LayerSpec, runtime: Runtime) -> None:
        super().__init__()
        self.conv = conv
        self.spec = spec
        self._runtime = runtime

    def __getattr__(self, name: str):
        # Reads of conv attributes (weight, bias, stride, in_channels, ...) reach the wrapped conv, so code
        # that inspects the layer (LoRA layers check `lora_A.weight.dtype`) sees what it expects.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "conv" or name.startswith("_"):  # private state (hooks, ...) stays the wrapper's own
                raise
            return getattr(self._modules["conv"], name)

    def extra_repr(self) -> str:
        return f"layer={self.spec.name!r}, kind={self.spec.kind!r}"

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        state = self._runtime.state
        if state is None or not state.step.active:
            return self.conv(x, *args, **kwargs)
        plan, step, roles = state.plan, state.step, state.roles
        config = plan.config
        if self.spec.filtered and config.low_pass:
            base = plan.layer_base(self.spec, x.shape[-2]) if config.pad_then_crop else None
            scale = (mask_scale(step.dilation, self.spec.stride[0]), mask_scale(step.dilation, self.spec.stride[1]))
            x = lowpass_filter(x, base, scale, plan.mask_floor, tuple(role == DETAIL for role in roles))
        k, k_detail = step.conv_dilation, step.detail_conv_dilation
        if state.guided and k_detail != k:
            rows = state.branch_size  # the detail branch is the last one
            return torch.cat([dilated_conv2d(self.conv, x[:-rows], k), dilated_conv2d(self.conv, x[-rows:], k_detail)])
        return dilated_conv2d(self.conv, x, k)
