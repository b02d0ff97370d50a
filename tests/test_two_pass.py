"""Two-pass generation (fouriscale/two_pass.py) through the public API: native pass, upscale, FouriScale img2img at
the target size."""

import numpy as np
import pytest
import torch
from PIL import Image

import fouriscale
from fouriscale.two_pass import first_pass_size


def test_first_pass_sizes(fine_pipes, sd_pipe):
    # SD: the target divided by the dilation (3 for 96 px from 32), in multiples of 8 latent pixels (16 px with the
    # fine models' VAE factor of 2).
    assert first_pass_size(fine_pipes["sd1"], 64, 96) == (16, 32)
    assert first_pass_size(fine_pipes["sd1"], 64, 64) == (32, 32)
    assert first_pass_size(sd_pipe, 64, 96) == (32, 32)  # VAE factor 4: 32 px, never below one unit
    # SDXL: the base bucket of the target's aspect (832x1152 scaled to the tiny model's 32 px: 26x36), in
    # multiples of 8 px as the pipelines require.
    assert first_pass_size(fine_pipes["sdxl"], 64, 96) == (24, 40)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_two_pass_equals_its_steps_done_by_hand(request, clean, family):
    from diffusers import AutoPipelineForImage2Image

    pipe = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    clean(pipe)
    args = dict(num_inference_steps=4, negative_prompt="blurry", guidance_scale=7.5)
    result = fouriscale.two_pass(pipe, "a red cat", 64, 96, strength=0.5, seed=3, **args)
    assert result.image.size == (96, 64) and result.first.size == tuple(reversed(first_pass_size(pipe, 64, 96)))
    assert result.settings["two_pass"] == {
        "first_pass": {"height": result.first.height, "width": result.first.width, "fouriscale": False},
        "upscale": "pixel",
        "strength": 0.5,
        "seed": 3,
        "start_step": 2,
    }
    # By hand: the stock pipeline at the native size, Lanczos, FouriScale img2img with the same seed.
    fh, fw = first_pass_size(pipe, 64, 96)
    with fouriscale.disabled(pipe):
        first = pipe("a red cat", height=fh, width=fw, generator=torch.Generator().manual_seed(3), **args).images[0]
    assert np.array_equal(np.asarray(first), np.asarray(result.first))
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)

    def second_pass():
        upscaled = first.resize((96, 64), Image.LANCZOS)
        return img2img("a red cat", image=upscaled, strength=0.5, generator=torch.Generator().manual_seed(3), **args)

    second = second_pass().images[0]
    assert np.array_equal(np.asarray(second), np.asarray(result.image))
    with fouriscale.disabled(pipe):  # and FouriScale made a difference in the second pass
        stock = second_pass().images[0]
    assert not np.array_equal(np.asarray(stock), np.asarray(result.image))


def test_latent_upscale_and_controlnet(sd_pipe, clean, capsys):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    clean(sd_pipe)
    capsys.readouterr()
    latent = fouriscale.two_pass(sd_pipe, "a cat", 64, 64, upscale="latent", num_inference_steps=3, seed=1)
    assert "it/s" not in capsys.readouterr().err  # both passes keep the pipeline's progress bar settings (off)
    assert latent.image.size == (64, 64) and latent.first.size == (32, 32)
    assert latent.settings["two_pass"]["upscale"] == "latent"
    again = fouriscale.two_pass(sd_pipe, "a cat", 64, 64, upscale="latent", num_inference_steps=3, seed=1)
    assert np.array_equal(np.asarray(again.image), np.asarray(latent.image))  # seeded: reproducible
    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(sd_pipe.unet, conditioning_embedding_out_channels=(8, 16, 16)).eval()
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                p.normal_(0, 0.3)
    parts = {k: v for k, v in sd_pipe.components.items() if k != "image_encoder"}
    cn = StableDiffusionControlNetPipeline(**parts, controlnet=controlnet)
    cn.set_progress_bar_config(disable=True)
    control = Image.new("RGB", (64, 64), (200, 30, 30))
    with_cn = fouriscale.two_pass(cn, "a cat", 64, 64, control_image=control, num_inference_steps=3, seed=1)
    weak = fouriscale.two_pass(
        cn, "a cat", 64, 64, control_image=control, num_inference_steps=3, seed=1, controlnet_conditioning_scale=0.0
    )
    assert with_cn.image.size == (64, 64)
    assert not np.array_equal(np.asarray(with_cn.image), np.asarray(weak.image))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strength": 0}, r"strength must be a number in \(0, 1\]"),
        ({"strength": 1.5}, r"strength must be a number in \(0, 1\]"),
        ({"upscale": "nearest"}, "upscale must be one of pixel, latent"),
        ({"image": None}, "two_pass sets 'image' itself"),
    ],
)
def test_two_pass_refuses_bad_settings_before_any_work(sd_pipe, clean, kwargs, message):
    clean(sd_pipe)
    with pytest.raises(ValueError, match=message):
        fouriscale.two_pass(sd_pipe, "a cat", 64, 64, **kwargs)
