"""The plan of one generation (fouriscale/plan.py): the sizes and step counts it takes, its text, the default
memory settings, where the branches fork and join."""

import pytest
import torch

import fouriscale
from fouriscale.diffusers.describe import detect_profile
from fouriscale.plan import branch_stages


def test_sizes_the_model_cannot_take(sd_pipe, sdxl_pipe, clean):
    with pytest.raises(ValueError, match="positive multiple of 8"):
        fouriscale.get_plan(sd_pipe, 65, 64)
    with pytest.raises(ValueError, match="positive"):
        fouriscale.get_plan(sd_pipe, 0, 64)
    with pytest.raises(ValueError, match="num_inference_steps"):
        fouriscale.get_plan(sd_pipe, 64, 64, 0)
    with pytest.raises(ValueError, match="from 1 to 1000"):
        fouriscale.get_plan(sd_pipe, 64, 64, 10**6)
    # Bounds state the bound; the size limit can be lifted, the dilation limit cannot.
    with pytest.raises(ValueError, match="16384 px per side, 64 MP in total.*size_limit=False"):
        fouriscale.get_plan(sd_pipe, 8, 20000)
    with pytest.raises(ValueError, match="needs dilation 64, more than FouriScale's 16"):
        fouriscale.get_plan(sd_pipe, 2048, 2048)
    assert fouriscale.get_plan(sd_pipe, 8, 20000, size_limit=False, dilation=2).dilation == 2
    with pytest.raises(ValueError, match="stop_step 45 lies beyond the 2 denoising steps"):
        fouriscale.get_plan(sd_pipe, 64, 64, 2, start_step=1, stop_step=45)
    far = fouriscale.get_plan(sd_pipe, 320, 320, 10)  # 10x the tiny model's 32 px
    assert far.far_beyond_native and "more than 8x" in str(far)
    clean(sdxl_pipe)
    fouriscale.apply_fouriscale(sdxl_pipe)
    # 16:1 is beyond SDXL's 1:4 .. 4:1 buckets: the call fails before the first step with advice.
    with pytest.raises(ValueError, match="aspect ratios SDXL was trained on"):
        sdxl_pipe("a cat", height=32, width=512, num_inference_steps=2, output_type="latent")
    from fouriscale.diffusers.patch import patch_of

    assert patch_of(sdxl_pipe).runtime.call is None
    # An explicit base size makes any aspect ratio possible.
    fouriscale.apply_fouriscale(sdxl_pipe, base_size=(32, 128))
    out = sdxl_pipe("a cat", height=32, width=512, num_inference_steps=2, output_type="latent").images
    assert torch.isfinite(out).all()


class _Reached(Exception):
    """The pipeline got past its own input checks to the first UNet call."""


def _pipeline_takes(pipe, height: int, width: int) -> bool:
    def stop(module, args):
        raise _Reached

    handle = pipe.unet.register_forward_pre_hook(stop)
    try:
        pipe("x", height=height, width=width, num_inference_steps=1, output_type="latent")
    except _Reached:
        return True
    except ValueError as exc:
        assert "divisible by" in str(exc), exc
        return False
    finally:
        handle.remove()
    raise AssertionError("the UNet was never called")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_the_plan_takes_exactly_the_sizes_the_pipeline_takes(family):
    """Sizes around the boundary (the tiny models' VAE factor is 4, diffusers' pipelines want multiples of 8): the
    plan, and so every front end, accepts a size exactly when the stock pipeline does."""
    from fouriscale.testing import tiny_pipeline

    pipe = tiny_pipeline(family)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 4
    for height, width in ((64, 64), (68, 68), (72, 68), (68, 72), (72, 72), (60, 64), (76, 80), (80, 80)):
        try:
            fouriscale.get_plan(pipe, height, width, 1)
            planned = True
        except ValueError as exc:
            assert "multiple of 8 pixels" in str(exc)
            planned = False
        assert planned == _pipeline_takes(pipe, height, width), (family, height, width)
        assert planned == (height % 8 == 0 and width % 8 == 0)


def test_plan_is_printable_and_follows_the_size(sd_pipe):
    plan = fouriscale.get_plan(sd_pipe, 64, 96, 50)
    text = str(plan)
    assert plan.dilation == 3 and (plan.start, plan.stop) == (10, 30)
    assert "down_blocks.2.downsamplers.0.conv" in text and "dilation d         3" in text
    assert fouriscale.get_plan(sd_pipe, 32, 32, 50).noop
    assert fouriscale.get_plan(sd_pipe, 128, 128, 50).dilation == 4
    assert (fouriscale.get_plan(sd_pipe, 128, 128, 50).start, fouriscale.get_plan(sd_pipe, 128, 128, 50).stop) == (
        20,
        35,
    )


def test_sequential_uncond_by_default_from_128x128_latents(sd_pipe):
    from fouriscale.plan import SEQUENTIAL_UNCOND_MIN_LATENT

    assert SEQUENTIAL_UNCOND_MIN_LATENT == 128 * 128
    assert fouriscale.get_plan(sd_pipe, 512, 512, 50).sequential_uncond  # 128x128 latents (vae factor 4)
    assert not fouriscale.get_plan(sd_pipe, 448, 512, 50).sequential_uncond  # 112x128: one batch
    forced = fouriscale.get_plan(sd_pipe, 64, 96, 50, fouriscale.FouriScaleConfig(sequential_uncond=True))
    assert forced.sequential_uncond
    kept = fouriscale.get_plan(sd_pipe, 512, 512, 50, fouriscale.FouriScaleConfig(sequential_uncond=False))
    assert not kept.sequential_uncond


def _stages(pipe, **config):
    profile = detect_profile(pipe.unet, pipe.vae_scale_factor, config.get("layers"))
    fork, join = branch_stages(profile, fouriscale.FouriScaleConfig(**config))
    return tuple(profile.stages[s] if s is not None else None for s in (fork, join))


def test_fork_and_join_follow_the_plan(sd_pipe, sdxl_pipe):
    # The first patched conv is in down_blocks.2; the last self-attention in the last up block with attention.
    assert _stages(sd_pipe) == ("down_blocks.2", "up_blocks.3")
    assert _stages(sdxl_pipe) == ("down_blocks.2", "up_blocks.1")
    assert _stages(sd_pipe, share_branches=False) == ("conv_in", "conv_out")
    assert _stages(sd_pipe, layers=("up_blocks.1.resnets.*.conv1",)) == ("up_blocks.1", "up_blocks.3")
    # SD without the low-pass filter: structure and detail never differ, so no third branch at all; SDXL's
    # detail branch still dilates by its own rule.
    assert _stages(sd_pipe, low_pass=False) == (None, None)
    assert _stages(sdxl_pipe, low_pass=False) == ("down_blocks.2", "up_blocks.1")
    assert _stages(sd_pipe, attention_guidance=False) == (None, None)
    # The batch joins after the transformer model of the last self-attention (without sharing: after conv_out).
    assert fouriscale.get_plan(sdxl_pipe, 64, 96, 10).join_block == "up_blocks.1.attentions.2"
    assert fouriscale.get_plan(sd_pipe, 64, 96, 10, share_branches=False).join_block == "conv_out"
    text = str(fouriscale.get_plan(sd_pipe, 64, 96, 10))
    assert (
        "3 branches (uncond, structure, detail) for down_blocks.2..up_blocks.3.attentions.2; stock batch before "
        "down_blocks.2, detail only after up_blocks.3.attentions.2" in text
    )


def test_feed_forward_pieces_from_64x64_maps_on():
    """The plan splits the feed-forward layers whose maps have 4096 tokens or more (real SD 1.5 layout)."""
    from diffusers import UNet2DConditionModel

    from fouriscale.plan import FEED_FORWARD_PIECES_MIN_TOKENS, make_plan
    from fouriscale.testing import real_unet_config

    assert FEED_FORWARD_PIECES_MIN_TOKENS == 64 * 64
    with torch.device("meta"):
        profile = detect_profile(UNet2DConditionModel(**real_unet_config("sd1")), 8)
    for size, levels in ((1024, {0, 1}), (2048, {0, 1, 2}), (768, {0})):
        plan = make_plan(profile, size, size, 10)
        split = {a.level for a, pieces in zip(profile.attentions, plan.feed_forward_pieces) if pieces}
        assert split == levels, size
