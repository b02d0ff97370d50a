"""Final latents through the public API match the plain re-statement of the algorithm (tests/support/reference.py)."""

import pytest
import torch

import fouriscale
from support.pipelines import latents_for
from support.reference import reference_latents

STEPS = 6  # full dilation, the progressive phase and plain convs all occur


def _sd_base(name):
    """Native feature size of a layer of the fine tiny SD model (native latent 16): 16 >> level."""
    block, index = name.split(".")[:2]
    if block == "mid_block":
        return (2, 2)
    level = int(index) if block == "down_blocks" else 3 - int(index)
    return (16 >> level,) * 2


# (height, width, d, base): tiny native size is 32 px. SDXL buckets scale by 32/1024; for 64x96
# (h x w) the best is 832x1152 -> (26, 36) with s = 3 (see test_schedule).
SD_CASES = [(64, 64, 2), (64, 96, 3)]
SDXL_CASES = [(64, 64, 2, (32.0, 32.0)), (64, 96, 3, (26.0, 36.0))]


def _reference(pipe, height, width, latents, **kwargs):
    """The reference re-statement with the recipe of :func:`_ours` (prompt, negative prompt, steps, guidance)."""
    return reference_latents(pipe, "a red cat", "blurry", height, width, STEPS, 7.5, latents, **kwargs)


def _ours(pipe, height, width, latents, **config):
    fouriscale.apply_fouriscale(pipe, **config)
    try:
        return pipe(
            "a red cat",
            negative_prompt="blurry",
            height=height,
            width=width,
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            latents=latents,
            output_type="latent",
        ).images
    finally:
        fouriscale.remove_fouriscale(pipe)


@pytest.mark.parametrize("height, width, d", SD_CASES)
@pytest.mark.parametrize("amp", [False, True])
def test_sd_matches_reference(fine_pipes, height, width, d, amp):
    pipe = fine_pipes["sd1"]
    latents = latents_for(pipe, height, width)
    start, stop = 1, 4  # the paper's 10/30 of 50 (d <= 3) scaled to 6 steps
    freeu = (1.2, 1.4, 0.9, 0.2)
    ours = _ours(pipe, height, width, latents, amp_guidance=amp)
    ref = _reference(
        pipe,
        height,
        width,
        latents,
        d=d,
        base=_sd_base,
        start=start,
        stop=stop,
        amp=amp,
        freeu=freeu,
    )
    scale = ref.abs().max()
    torch.testing.assert_close(ours / scale, ref / scale, rtol=0, atol=1e-5)
    if not amp:  # The comparison is sharp: moving the window by one step is far outside the tolerance.
        shifted = _ours(pipe, height, width, latents, start_step=start + 1, stop_step=stop)
        assert (shifted - ref).abs().max() / scale > 1e-3


@pytest.mark.parametrize("height, width, d, bucket", SDXL_CASES)
@pytest.mark.parametrize("amp", [False, True])
def test_sdxl_matches_reference(fine_pipes, height, width, d, bucket, amp):
    pipe = fine_pipes["sdxl"]
    latents = latents_for(pipe, height, width)
    start, stop = 2, 4  # the paper's 20/35 of 50 scaled to 6 steps
    ours = _ours(pipe, height, width, latents, amp_guidance=amp)
    ref = _reference(
        pipe,
        height,
        width,
        latents,
        d=d,
        base=bucket,
        start=start,
        stop=stop,
        amp=amp,
        freeu=(1.1, 1.2, 0.6, 0.4),
    )
    scale = ref.abs().max()
    torch.testing.assert_close(ours / scale, ref / scale, rtol=0, atol=1e-5)
    if not amp:  # sharp here too: another mask floor is far outside the tolerance
        other_floor = _ours(pipe, height, width, latents, mask_floor=0.5)
        assert (other_floor - ref).abs().max() / scale > 1e-3
