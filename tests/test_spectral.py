"""Masks and filters (fouriscale/spectral.py): values against the formulas, real-FFT equivalence, caching,
structural consistency."""

import pytest
import torch
import torch.nn as nn

from fouriscale.runtime.ops import dilated_conv2d
from fouriscale.spectral import (
    branch_lowpass_masks,
    filter_real,
    freeu_filter,
    freeu_skip_mask,
    lowpass_filter,
    lowpass_mask,
    lowpass_profile,
    padded_size,
    real_filter_mask,
    weak_radius,
)
from support.reference import ref_freeu_filter, ref_lowpass, ref_mask


def _values(t):
    return [round(float(v), 6) for v in t]


# Hand-computed from g(k) = min(max(1 + (1-v)/R * (half/s + 1 - k), v), 1) with half = 8, s = 2:
# strong R = 16 // 8 = 2, weak R = floor(1 * 16 / 4) = 4.
@pytest.mark.parametrize(
    "v, weak, expected",
    [
        (0.0, False, [0, 0.5] + [1] * 12 + [0.5, 0]),
        (0.0, True, [0.5, 0.75] + [1] * 12 + [0.75, 0.5]),
        (0.6, False, [0.6, 0.8] + [1] * 12 + [0.8, 0.6]),
        (0.6, True, [0.8, 0.9] + [1] * 12 + [0.9, 0.8]),
    ],
)
def test_profile_hand_computed(v, weak, expected):
    assert _values(lowpass_profile(16, 2.0, v, weak)) == expected


def test_profile_odd_length_extends_the_ramp():
    # P = 5, half = 2, s = 4, R = 1: g(k) = min(max(2.5 - k, 0), 1) -> g = 1, 1, 0.5.
    # Index half+k holds g(k) (2,3,4 -> 1,1,0.5); index half-1-k holds g(k) (1,0 -> 1,1).
    assert _values(lowpass_profile(5, 4.0, 0.0)) == [1, 1, 1, 1, 0.5]
    assert lowpass_profile(7, 3.0, 0.0, weak=True).shape == (7,)


def test_weak_mask_is_all_ones_when_radius_is_zero():
    assert weak_radius(16, 1.0) == 0
    assert weak_radius(4, 1.5) == 0  # floor(0.5 * 4 / 3)
    assert torch.equal(lowpass_profile(16, 1.0, 0.0, weak=True), torch.ones(16))
    assert torch.equal(lowpass_profile(4, 1.5, 0.6, weak=True), torch.ones(4))


def test_masks_match_elementwise_reference():
    for P_h, P_w, s_h, s_w, v in [
        (16, 24, 2.0, 2.0, 0.0),
        (9, 14, 3.0, 1.5, 0.6),
        (32, 32, 2.6, 2.6, 0.0),
        (1, 3, 2, 2, 0),
    ]:
        for weak in (False, True):
            ours = lowpass_mask((P_h, P_w), (s_h, s_w), v, weak)
            torch.testing.assert_close(ours, ref_mask(P_h, P_w, s_h, s_w, v, weak), rtol=0, atol=1e-6)


def test_mask_is_separable_and_bounded():
    m = lowpass_mask((20, 12), (2.0, 3.0), 0.6)
    assert torch.allclose(m, torch.outer(m[:, 6] / m[10, 6], m[10, :]), atol=1e-6)
    assert float(m.min()) >= 0.6 * 0.6 - 1e-6 and float(m.max()) == 1.0


def test_real_fft_equals_complex_fft_real_part():
    g = torch.Generator().manual_seed(0)
    for H, W in [(16, 16), (9, 14), (13, 7), (1, 5)]:
        x = torch.randn(2, 3, H, W, generator=g)
        mask = torch.rand(H, W, generator=g)  # deliberately not symmetric
        expected = torch.fft.ifftn(
            torch.fft.ifftshift(torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1)), dim=(-2, -1)) * mask, dim=(-2, -1)),
            dim=(-2, -1),
        ).real
        torch.testing.assert_close(filter_real(x, real_filter_mask(mask)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape, base", [((12, 8), (4.0, 4.0)), ((8, 12), (3.25, 4.5)), ((13, 11), (5.0, 3.0)), ((16, 16), (16.0, 16.0))]
)
def test_pad_then_crop_matches_reference_and_keeps_shape(shape, base):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, *shape, generator=g)
    ours = lowpass_filter(x, padded_size(*shape, *base), (2.0, 2.0), 0.0, (False, False, True))
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, ref_lowpass(x, base[0], base[1], 2.0, 2.0, 0.0, 3), rtol=1e-5, atol=1e-5)


def test_padded_size_keeps_base_aspect_ratio():
    assert padded_size(12, 8, 4, 4) == (12, 12)  # r = max(3, 2)
    assert padded_size(8, 12, 3.25, 4.5) == (9, 13)  # r = 3: int(9.75), int(13.5)
    assert padded_size(64, 128, 32, 32) == (128, 128)
    # int() truncation could give 12 (13/23 * 23 = 12.999...) and cut into the map; it never does.
    assert padded_size(13, 13, 13 / 23, 13 / 23) == (13, 13)


def test_branches_get_their_own_masks():
    x = torch.randn(3, 2, 16, 16)
    both = lowpass_filter(x, (16, 16), (2.0, 2.0), 0.0, (False, False, True))
    strong = lowpass_filter(x, (16, 16), (2.0, 2.0), 0.0, (False, False, False))
    weak = lowpass_filter(x, (16, 16), (2.0, 2.0), 0.0, (True, True, True))
    assert torch.allclose(both[:2], strong[:2]) and torch.allclose(both[2:], weak[2:])
    assert not torch.allclose(strong[2:], weak[2:], atol=1e-3)


def test_masks_are_cached_per_shape_scale_and_device():
    a = branch_lowpass_masks((24, 16), (2.0, 2.0), 0.0, (False, False, True), "cpu")
    b = branch_lowpass_masks((24, 16), (2.0, 2.0), 0.0, (False, False, True), torch.device("cpu"))
    c = branch_lowpass_masks((24, 16), (2.5, 2.5), 0.0, (False, False, True), "cpu")
    assert a is b and a is not c
    assert a.shape == (3, 1, 1, 24, 16 // 2 + 1) and a.dtype == torch.float32


def test_filter_runs_in_float32_and_casts_back():
    x = torch.randn(2, 2, 8, 8).to(torch.bfloat16)
    y = lowpass_filter(x, (8, 8), (2.0, 2.0), 0.0, (False, True))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(
        y.float(), lowpass_filter(x.float(), (8, 8), (2.0, 2.0), 0.0, (False, True)), atol=2e-2, rtol=2e-2
    )


def test_freeu_filter_matches_diffusers_and_reference():
    from diffusers.utils.torch_utils import fourier_filter

    g = torch.Generator().manual_seed(2)
    for shape in [(2, 4, 16, 16), (1, 3, 12, 20), (1, 2, 7, 9), (1, 1, 1, 4)]:
        x = torch.randn(*shape, generator=g)
        ours = freeu_filter(x, 0.2)
        torch.testing.assert_close(ours, fourier_filter(x, threshold=1, scale=0.2), rtol=1e-5, atol=1e-5)
        if min(shape[-2:]) > 1:
            torch.testing.assert_close(ours, ref_freeu_filter(x, 0.2), rtol=1e-5, atol=1e-5)
    m = freeu_skip_mask((6, 8), 0.5)
    assert float(m.sum()) == 6 * 8 - 4 * 0.5 and torch.equal(m[2:4, 3:5], torch.full((2, 2), 0.5))


def _band(shape, lo, hi, generator):
    """Random real map whose spectrum lives where ``lo < max(|fy|, |fx|) <= hi`` (cycles per map)."""
    X = torch.fft.fft2(torch.randn(*shape, generator=generator))
    fy = (torch.fft.fftfreq(shape[-2]) * shape[-2]).abs()[:, None]
    fx = (torch.fft.fftfreq(shape[-1]) * shape[-1]).abs()[None, :]
    band = torch.maximum(fy, fx)
    return torch.fft.ifft2(X * ((band > lo) & (band <= hi))).real


@torch.no_grad()
def test_structural_consistency_needs_the_low_pass_filter():
    """Paper, Sec. 3: a conv dilated by s on the s-times upsampled map, then downsampled, matches the conv on
    the original map once the large map is low-pass filtered; the detail a large map carries beyond the
    small map's band aliases into the result otherwise."""
    g = torch.Generator().manual_seed(3)
    s, h = 2, 32
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    small = _band((1, 4, h, h), -1, 4, g)  # low-pass input
    # Ideal s-times upsampling (spectral zero padding) plus detail above the small map's Nyquist band.
    S = torch.fft.fftshift(torch.fft.fft2(small), dim=(-2, -1))
    up = torch.fft.ifft2(torch.fft.ifftshift(nn.functional.pad(S, (h // 2,) * 4), dim=(-2, -1))).real * s * s
    detail = _band(up.shape, s * h // 2 - 7, s * h // 2, g)
    big = up + detail / detail.std() * up.std()
    target = conv(small)

    plain = dilated_conv2d(conv, big, s)[..., ::s, ::s]
    filtered = dilated_conv2d(conv, lowpass_filter(big, big.shape[-2:], (s, s), 0.0, (False,)), s)[..., ::s, ::s]
    err_plain = float((plain - target).norm() / target.norm())
    err_filtered = float((filtered - target).norm() / target.norm())
    assert err_plain > 0.3, err_plain
    assert err_filtered < 0.01 * err_plain, (err_filtered, err_plain)


def test_filters_in_channel_pieces_are_the_same():
    from fouriscale.spectral import freeu_filter, lowpass_filter

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 10, 12, 20, generator=g)
    whole = lowpass_filter(x, (16, 24), (2.0, 2.0), 0.6, (False, True))
    torch.testing.assert_close(lowpass_filter(x, (16, 24), (2.0, 2.0), 0.6, (False, True), pieces=3), whole)
    torch.testing.assert_close(freeu_filter(x, 0.4, pieces=4), freeu_filter(x, 0.4))
