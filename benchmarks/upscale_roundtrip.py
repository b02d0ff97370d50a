"""Which upscale should two-pass generation use: Lanczos in pixel space then VAE-encode, or bicubic on the latents?

    python benchmarks/upscale_roundtrip.py --model stabilityai/stable-diffusion-xl-base-1.0 --scale 2 --n 8

For ``n`` native-size pictures the model itself draws (seeded), with ``x = decode(z)`` and the target
``t = lanczos(x)`` at ``scale`` times the size, it prints the PSNR (dB) against ``t`` of

* pixel: ``decode(encode(t))``, the picture the img2img pass starts from with ``upscale="pixel"``
  (only the VAE's own round trip is lost);
* latent: ``decode(bicubic(z))``, the picture it starts from with ``upscale="latent"``.

Higher is closer to the upscaled native picture. The numbers mean something only with the model's real
VAE weights (``--model tiny:sd1`` runs offline, as a smoke test, on random weights).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _load(model: str, device: str, dtype):
    if model.startswith("tiny:"):
        from fouriscale.testing import tiny_pipeline

        return tiny_pipeline(model.split(":", 1)[1]).to(device, dtype)
    from diffusers import AutoPipelineForText2Image

    return AutoPipelineForText2Image.from_pretrained(model, torch_dtype=dtype).to(device)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


@torch.no_grad()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny:sd1")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    pipe = _load(args.model, args.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    vae, sf = pipe.vae, pipe.vae.config.scaling_factor
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    pixel, latent = [], []
    for seed in range(args.n):
        g = torch.Generator("cpu").manual_seed(seed)
        z = pipe(
            "a photograph",
            height=native,
            width=native,
            num_inference_steps=args.steps,
            generator=g,
            output_type="latent",
        ).images
        to_pil = pipe.image_processor.postprocess
        x = to_pil(vae.decode(z / sf, return_dict=False)[0], output_type="pil")[0]
        target = x.resize((native * args.scale,) * 2, Image.LANCZOS)
        t = pipe.image_processor.preprocess(target).to(args.device, dtype)
        z_pixel = vae.encode(t).latent_dist.mode()
        via_pixel = to_pil(vae.decode(z_pixel, return_dict=False)[0], output_type="pil")[0]
        z_latent = F.interpolate(z.float(), scale_factor=args.scale, mode="bicubic", align_corners=False).to(dtype)
        via_latent = to_pil(vae.decode(z_latent / sf, return_dict=False)[0], output_type="pil")[0]
        pixel.append(_psnr(np.asarray(via_pixel), np.asarray(target)))
        latent.append(_psnr(np.asarray(via_latent), np.asarray(target)))
    print(f"{args.model}, {args.n} pictures at {native}px upscaled {args.scale}x, PSNR against the Lanczos upscale:")
    print(f"  pixel  (Lanczos + VAE encode): {np.mean(pixel):.2f} dB (min {np.min(pixel):.2f})")
    print(f"  latent (bicubic on latents):   {np.mean(latent):.2f} dB (min {np.min(latent):.2f})")


if __name__ == "__main__":
    main()
