"""What a patched layer does (fouriscale/runtime/ops.py): the dilated convolution."""

import math

import torch
import torch.nn as nn

from fouriscale.runtime.ops import dilated_conv2d


@torch.no_grad()
def test_dilated_conv_is_conv_with_zero_inserted_kernel():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 17, 12)
    for k in (1, 2, 3):
        kernel = torch.zeros(5, 3, 2 * k + 1, 2 * k + 1)
        kernel[:, :, ::k, ::k] = conv.weight
        expected = torch.nn.functional.conv2d(x, kernel, conv.bias, padding=k)
        torch.testing.assert_close(dilated_conv2d(conv, x, k), expected, rtol=1e-5, atol=1e-5)
    # A dilated conv on a nearest-upsampled map, subsampled, is the plain conv on the original map.
    up = torch.repeat_interleave(torch.repeat_interleave(x, 3, dim=-1), 3, dim=-2)
    torch.testing.assert_close(dilated_conv2d(conv, up, 3)[..., ::3, ::3], conv(x), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_strided_dilated_conv_keeps_stride_and_output_size():
    conv = nn.Conv2d(2, 2, 3, stride=2, padding=1)
    x = torch.randn(1, 2, 24, 16)
    y = dilated_conv2d(conv, x, 3)
    assert y.shape == conv(x).shape == (1, 2, 12, 8)
    assert math.isfinite(float(y.sum()))
