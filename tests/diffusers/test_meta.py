"""Pipelines without weights (fouriscale/diffusers/meta.py): the shipped configs of the paper's models and a diffusers
folder, built on the meta device."""

import time

import pytest
import torch

import fouriscale


def test_shipped_configs_build_the_papers_pipelines_on_the_meta_device():
    from fouriscale.diffusers.meta import meta_pipeline
    from fouriscale.published import PUBLISHED_MODELS, published_model
    from fouriscale.testing import real_unet_config

    start = time.perf_counter()
    pipe = meta_pipeline("stabilityai/stable-diffusion-xl-base-1.0")
    assert time.perf_counter() - start < 30  # seconds, no weights read (about 2 s on a quiet 2-core CPU)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert all(p.device.type == "meta" and p.dtype == torch.float16 for p in pipe.unet.parameters())
    for key, value in real_unet_config("sdxl").items():
        got = pipe.unet.config[key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == (
            list(value) if isinstance(value, (list, tuple)) else value
        ), key
    # The published parameter counts (facts): SDXL's UNet and second text encoder, SD 1.5's UNet.
    assert sum(p.numel() for p in pipe.unet.parameters()) == 2_567_463_684
    assert sum(p.numel() for p in pipe.text_encoder_2.parameters()) == 694_659_840
    assert pipe.vae.config.force_upcast and pipe.vae.config.scaling_factor == 0.13025
    sd = meta_pipeline("sd-legacy/stable-diffusion-v1-5", dtype=torch.float32)  # a mirror of runwayml's
    assert sum(p.numel() for p in sd.unet.parameters()) == 859_520_964 and sd.safety_checker is not None
    assert published_model("STABILITYAI/stable-diffusion-2-1").family == "sd2"
    assert meta_pipeline("stabilityai/stable-diffusion-2-1").scheduler.config.prediction_type == "v_prediction"
    assert meta_pipeline("stabilityai/stable-diffusion-2-1-base").unet.config.sample_size == 64
    assert {m.family for m in PUBLISHED_MODELS.values()} == {"sd1", "sd2", "sdxl"}
    plan = fouriscale.get_plan(pipe, 4096, 4096, 50)
    assert plan.dilation == 4 and plan.vae_decode.tiled


def test_meta_pipeline_from_a_diffusers_folder(tiny_dirs):
    from fouriscale.diffusers.meta import meta_pipeline

    pipe = meta_pipeline(tiny_dirs["sdxl"], dtype=torch.bfloat16)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and pipe.tokenizer is None
    assert next(pipe.unet.parameters()).device.type == "meta" and pipe.unet.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="neither a model whose configs ship with fouriscale nor a diffusers folder"):
        meta_pipeline("someone/unknown-model")
