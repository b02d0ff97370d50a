"""Dilation, SDXL buckets and the step schedule (fouriscale/schedule.py)."""

import math
from fractions import Fraction

import pytest

from fouriscale.profiles import FAMILIES
from fouriscale.schedule import (
    SDXL_BUCKETS,
    choose_bucket,
    conv_dilation,
    detail_conv_dilation,
    mask_scale,
    scaled_window,
    sd_dilation,
    step_dilation,
)


def test_sd_dilation_from_latent_sizes():
    assert sd_dilation(128, 128, 64, 64) == 2  # 1024^2 from 512
    assert sd_dilation(160, 160, 64, 64) == 3  # 1280^2
    assert sd_dilation(128, 256, 64, 64) == 4  # 2048x1024
    assert sd_dilation(256, 256, 64, 64) == 4  # 2048^2
    assert sd_dilation(64, 64, 64, 64) == 1
    assert sd_dilation(65, 64, 64, 64) == 2


def test_bucket_table_is_sdxls_forty():
    assert len(SDXL_BUCKETS) == 40 == len(set(SDXL_BUCKETS))
    assert SDXL_BUCKETS[0] == (512, 2048) and SDXL_BUCKETS[20] == (1024, 1024) and SDXL_BUCKETS[-1] == (2048, 512)
    ratios = [h / w for h, w in SDXL_BUCKETS]
    assert ratios == sorted(ratios)
    assert all(h % 64 == 0 and w % 64 == 0 for h, w in SDXL_BUCKETS)


@pytest.mark.parametrize(
    "height, width, bucket, scale",
    [
        (2048, 2048, (1024, 1024), 2),
        (4096, 4096, (1024, 1024), 4),
        (1024, 1024, (1024, 1024), 1),
        (768, 1280, (768, 1280), 1),
        # s = 3 needs 683 <= bh < 1024 and 1366 <= bw < 2048: 704x1408 pads 64 + 128, 704x1472 pads 64 + 320.
        (2048, 4096, (704, 1408), 3),
        (4096, 2048, (1408, 704), 3),
        # 896x1088 and 960x1024 both pad 832 at s = 3; the first in table order wins, as in the official code.
        (2560, 2560, (896, 1088), 3),
        (1408, 2688, (704, 1344), 2),  # exact fit
    ],
)
def test_bucket_choice(height, width, bucket, scale):
    assert choose_bucket(height, width) == (bucket, scale)


def test_bucket_choice_scales_with_native_size():
    assert choose_bucket(64, 96, scale=1 / 32) == ((26.0, 36.0), 3)


def test_bucket_choice_rejects_extreme_aspect_ratios():
    with pytest.raises(ValueError, match="aspect"):
        choose_bucket(512, 8192)


def test_family_windows_are_the_papers_scaled():
    sd, xl = FAMILIES["sd1"], FAMILIES["sdxl"]
    assert sd.window(2, 50) == (10, 30)
    assert sd.window(3, 50) == (10, 30)
    assert sd.window(4, 50) == (20, 35)
    assert FAMILIES["sd2"].window(4, 50) == (20, 35)
    assert xl.window(2, 50) == (20, 35)
    assert sd.window(2, 25) == (5, 15)
    assert xl.window(3, 30) == (12, 21)
    assert sd.window(2, 10) == (2, 6)
    assert scaled_window(10, 30, 7) == (1, 4)  # 1.4 -> 1, 4.2 -> 4 (half up)


def test_step_dilation_follows_the_schedule():
    d, start, stop = 4, 20, 35
    assert [step_dilation(i, d, start, stop) for i in (0, 19, 20)] == [4.0, 4.0, 4.0]
    assert step_dilation(27, d, start, stop) == pytest.approx(3 * 8 / 15 + 1)
    assert step_dilation(34, d, start, stop) == pytest.approx(1.2)
    assert step_dilation(35, d, start, stop) is None and step_dilation(49, d, start, stop) is None
    assert step_dilation(27, d, start, stop, progressive=False) == 4.0


def test_step_dilation_ceil_matches_exact_arithmetic():
    for d in range(2, 7):
        for start, stop in [(10, 30), (20, 35), (5, 15), (12, 21), (0, 7)]:
            for i in range(start, stop):
                exact = Fraction(d - 1) * Fraction(stop - i, stop - start) + 1
                assert conv_dilation(step_dilation(i, d, start, stop)) == math.ceil(exact)


def test_branch_dilations_and_mask_scales():
    assert conv_dilation(2.0) == 2 and conv_dilation(2.0001) == 3
    assert detail_conv_dilation(3.0, 1.5) == 2 and detail_conv_dilation(1.2, 1.5) == 1
    assert detail_conv_dilation(2.6, 1.0) == 3
    assert mask_scale(3.0, 2) == 1.5 and mask_scale(1.5, 2) == 1
