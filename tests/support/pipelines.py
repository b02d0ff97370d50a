"""The tiny diffusers pipelines of the tests (not a test module): loading them, seeded latents for them."""

import torch


def load_pipeline(path, family):
    """The SD (``sd1``/``sd2``) or SDXL (``sdxl``) pipeline saved at ``path``, loaded with ``from_pretrained``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents_for(pipe, height, width, batch=1, seed=0):
    f = pipe.vae_scale_factor
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, pipe.unet.config.in_channels, height // f, width // f, generator=g)


def args_for(pipe, steps=3, height=64, width=64, **extra):
    """The arguments of a seeded call that returns the final latents (a negative prompt: guided)."""
    return dict(
        prompt="a cat",
        negative_prompt="blurry",
        height=height,
        width=width,
        num_inference_steps=steps,
        latents=latents_for(pipe, height, width),
        output_type="latent",
        **extra,
    )
