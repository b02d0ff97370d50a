"""Bad input raises a TypeError/ValueError that says what to do, and leaves the pipeline untouched."""

import dataclasses

import pytest
import torch

import fouriscale
from fouriscale import PAPER_PRESETS, FouriScaleConfig


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"start_step": -1}, "start_step"),
        ({"start_step": 1.5}, "start_step"),
        ({"start_step": 30, "stop_step": 10}, "must not exceed"),
        ({"amp_guidance_factor": 0}, "positive"),
        ({"amp_guidance_factor": float("nan")}, "positive"),
        ({"freeu": "yes"}, "'paper', 'diffusers' or None"),
        ({"freeu_params": (1, 2, 3)}, "four numbers"),
        ({"dilation": 0}, "integer from 1 to 16"),
        ({"dilation": True}, "integer from 1 to 16"),
        ({"dilation": 10**6}, "integer from 1 to 16"),
        ({"start_step": 10**6}, "from 0 to 1000"),
        ({"base_size": (10**6, 1024)}, "from 1 to 16384"),
        ({"size_limit": 1}, "True or False"),
        ({"base_size": (1024,)}, "height, width"),
        ({"base_size": (1024, -8)}, "height, width"),
        ({"layers": ()}, "non-empty"),
        ({"layers": ("a", 3)}, "non-empty"),
        ({"mask_floor": 1.0}, r"\[0, 1\)"),
        ({"detail_dilation_divisor": 0.5}, ">= 1"),
        ({"progressive": "no"}, "True or False"),
    ],
)
def test_invalid_config_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FouriScaleConfig(**kwargs)


def test_config_is_frozen_and_normalised():
    config = FouriScaleConfig(layers=["mid_block.resnets.0.conv1"], freeu_params=[1, 2, 3, 4], base_size=[1024, 768])
    assert config.layers == ("mid_block.resnets.0.conv1",) and config.freeu_params == (1.0, 2.0, 3.0, 4.0)
    assert config.base_size == (1024, 768) and hash(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.amp_guidance = True
    assert config.replace(amp_guidance=True).amp_guidance and not config.amp_guidance
    assert FouriScaleConfig().to_dict()["freeu"] == "paper"


def test_paper_presets():
    assert set(PAPER_PRESETS) == {
        "sd1-1024x1024",
        "sd1-1280x1280",
        "sd1-2048x1024",
        "sd1-2048x2048",
        "sd2-1024x1024",
        "sd2-1280x1280",
        "sd2-2048x1024",
        "sd2-2048x2048",
        "sdxl-2048x2048",
        "sdxl-2560x2560",
        "sdxl-4096x2048",
        "sdxl-4096x4096",
    }
    preset = PAPER_PRESETS["sd1-2048x1024"]
    assert (preset.height, preset.width, preset.config.start_step, preset.config.stop_step) == (1024, 2048, 20, 35)
    assert (
        PAPER_PRESETS["sd1-1280x1280"].config.start_step == 10 and PAPER_PRESETS["sd1-1280x1280"].guidance_scale == 7.5
    )
    assert PAPER_PRESETS["sdxl-4096x2048"].guidance_scale == 5.0


def test_unknown_override_is_a_type_error(sd_pipe):
    with pytest.raises(TypeError, match="unknown FouriScale option.*dilaton.*valid options"):
        fouriscale.apply_fouriscale(sd_pipe, dilaton=2)
    assert not fouriscale.is_fouriscale_applied(sd_pipe)


def test_non_diffusers_objects_are_type_errors(sd_pipe):
    with pytest.raises(TypeError, match="diffusers pipeline"):
        fouriscale.apply_fouriscale(object())
    with pytest.raises(TypeError, match="not its UNet"):
        fouriscale.apply_fouriscale(sd_pipe.unet)
    with pytest.raises(TypeError, match="FouriScaleConfig"):
        fouriscale.apply_fouriscale(sd_pipe, config={"amp_guidance": True})
    with pytest.raises(TypeError, match="diffusers pipeline"):
        fouriscale.remove_fouriscale("pipe")


def test_unknown_unet_layout_is_a_value_error():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
    )
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    with pytest.raises(ValueError, match="unknown UNet layout"):
        fouriscale.apply_fouriscale(pipe)


def test_unknown_layer_names_fail_cleanly(sd_pipe):
    with pytest.raises(ValueError, match="matches no spatial convolution"):
        fouriscale.apply_fouriscale(sd_pipe, layers=("down_blocks.7.resnets.0.conv1",))
    assert not fouriscale.is_fouriscale_applied(sd_pipe)
    assert not hasattr(sd_pipe.unet, "_diffusers_hook")


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


def test_setting_errors_carry_their_setting_and_are_worded_by_each_front_end(sd_pipe):
    """A value the library cannot take names its setting, the value and the bound as data; the remedy through
    another setting is worded with the API's, the CLI's or no name (the web UI has no such field)."""
    from fouriscale.config import MAX_PIXELS, MAX_SIDE
    from fouriscale.errors import SettingError
    from fouriscale.frontend.errors import UserError, user_errors
    from fouriscale.frontend.fields import UI_NAMES

    with pytest.raises(SettingError) as info:
        fouriscale.get_plan(sd_pipe, 8, 20000)
    error = info.value
    assert (error.setting, error.value, error.bound) == ("size", (8, 20000), (MAX_SIDE, MAX_PIXELS))
    assert str(error).endswith("choose a smaller size, or lift the limit (size_limit=False)")
    worded = {}
    for front, labels in (("cli", None), ("ui", UI_NAMES)):
        with pytest.raises(UserError) as info, user_errors(**({"labels": labels} if labels else {})):
            raise error
        worded[front] = str(info.value)
    assert worded["cli"].endswith("or lift the limit (--no-size-limit)")
    assert worded["ui"].endswith("choose a smaller size") and worded["ui"] in str(error)
    with pytest.raises(SettingError) as info:
        fouriscale.FouriScaleConfig(dilation=99)
    assert (info.value.setting, info.value.value) == ("dilation", 99) and isinstance(info.value, ValueError)
    with pytest.raises(SettingError) as info:
        fouriscale.get_plan(sd_pipe, 64, 64, 2, stop_step=5)
    assert (info.value.setting, info.value.value, info.value.bound) == ("stop_step", 5, (0, 2))


def test_failed_apply_leaves_no_patch(sd_pipe, monkeypatch):
    import fouriscale.diffusers.patch as patch_module

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(patch_module, "PaperFreeUHook", boom)
    before = dict(sd_pipe.unet.named_modules())
    with pytest.raises(RuntimeError, match="boom"):
        fouriscale.apply_fouriscale(sd_pipe)
    assert dict(sd_pipe.unet.named_modules()).keys() == before.keys()
    assert not fouriscale.is_fouriscale_applied(sd_pipe)
    assert not any(hasattr(m, "_diffusers_hook") or "forward" in m.__dict__ for m in sd_pipe.unet.modules())


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
