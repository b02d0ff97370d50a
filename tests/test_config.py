"""FouriScale settings (fouriscale/config.py): invalid values refused with what to do, a frozen and normalised
config, the paper's presets."""

import dataclasses

import pytest

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
