"""Dilated, low-pass-filtered convolution (layer 3): a forward override on each patched ``nn.Conv2d``.

The conv module is never mutated or replaced: a named diffusers hook overrides its forward, and at an
active step calls ``F.conv2d`` with the conv's own weight, bias and stride and the planned dilation.
A LoRA layer at a patched path has its base conv and its down-projection conv overridden alike.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.hooks import ModelHook

from .plan import DETAIL
from .spectral import lowpass_filter
from .state import Runtime

__all__ = ["ConvHook", "dilated_conv2d", "CONV_HOOK"]

CONV_HOOK = "fouriscale.conv"


def dilated_conv2d(conv: nn.Conv2d, x: torch.Tensor, k: int) -> torch.Tensor:
    """``conv`` with dilation ``k`` and "same" padding ``k * (kernel - 1) // 2`` (its own weights, bias, stride)."""
    kh, kw = conv.kernel_size
    padding = (k * (kh - 1) // 2, k * (kw - 1) // 2)
    if conv.padding_mode != "zeros":
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), mode=conv.padding_mode)
        padding = (0, 0)
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, padding, (k, k), conv.groups)


class ConvHook(ModelHook):
    """Forward override of one patched conv; reads its layer's values from the plan of the current pass.

    At an active step: low-pass filter the input (strong mask for the uncond and structure branches, weak
    mask for the detail branch; pad-then-crop to the layer's base aspect ratio), then convolve with dilation
    ``ceil(d_i)`` (the detail branch with its own dilation where the plan says so). Otherwise the conv's own
    forward runs.
    """

    def __init__(self, index: int, runtime: Runtime) -> None:
        super().__init__()
        self.index = index  # position of the layer in Plan.layers
        self.runtime = runtime

    def new_forward(self, module: nn.Conv2d, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        call = self.runtime.call
        if call is None or not call.step.active or args or kwargs:
            return self.fn_ref.original_forward(x, *args, **kwargs)
        plan, step = call.plan, call.step
        layer = plan.layers[self.index]
        roles = call.forked if call.forked is not None and layer.forked else call.stock
        if tuple(x.shape[-2:]) != layer.input_size or x.shape[0] != len(roles) * call.rows:
            raise RuntimeError(
                f"FouriScale: {layer.spec.name} got a {tuple(x.shape)} input, the plan expected "
                f"{len(roles) * call.rows} rows of {layer.input_size[0]}x{layer.input_size[1]}; please report this."
            )
        if layer.filtered:
            weak = tuple(role == DETAIL for role in roles)
            with torch.profiler.record_function("fouriscale.lowpass"):  # the benchmark times the filter by this name
                x = lowpass_filter(x, layer.padded, layer.scales[step.index], plan.mask_floor, weak)
        k, k_detail = step.conv_dilation, step.detail_conv_dilation
        if k_detail != k and DETAIL in roles:
            detail = call.rows_of(roles, DETAIL)  # the detail branch is the last one
            return torch.cat(
                [dilated_conv2d(module, x[: detail.start], k), dilated_conv2d(module, x[detail], k_detail)]
            )
        return dilated_conv2d(module, x, k)
