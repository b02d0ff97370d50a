"""Two-pass generation: the model's own picture at its native size, then FouriScale img2img at the target size.

```python
result = fouriscale.two_pass(pipe, "a lighthouse at dusk", 2048, 2048, strength=0.6, seed=23)
result.first.save("native.png"); result.image.save("2048.png")
```

Cascaded methods (DemoFusion, FreeScale) start their high-resolution pass from an upscaled native-size
result, which keeps the layout the model draws at its training size. Here:

1. the pipeline renders at the native size of the target's aspect: SDXL's training bucket of the target
   (the plan's base bucket), SD's native size scaled to the target's aspect (target / dilation);
2. that image is upscaled to the target: by default Lanczos in pixel space, then the img2img pipeline
   VAE-encodes it (``upscale="pixel"``); or bicubic on the latents (``upscale="latent"``);
3. the img2img counterpart of the pipeline (``from_pipe``: same components, same FouriScale patch) runs
   FouriScale at the target size from that image with the same seed and the given ``strength``.

Why pixel space by default: the VAE's decoder is far from linear, so a bicubic upscale of latents is not
the latent of an upscaled picture; in pixel space the only loss is the VAE's own round trip.
``benchmarks/upscale_roundtrip.py`` measures both errors for a model (it needs real VAE weights to mean
anything).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from .config import FouriScaleConfig
from .diffusers.patch import apply_fouriscale, disabled, get_config, get_plan

# diffusers' model and pipeline classes (and transformers' models) are imported where they are used: each adds
# 1-2 s and 300-500 modules to `import fouriscale` (docs/architecture.md, "Imports").
__all__ = ["TwoPassResult", "two_pass", "first_pass_size", "two_pass_settings", "UPSCALE_MODES"]

UPSCALE_MODES = ("pixel", "latent")


@dataclass
class TwoPassResult:
    """Both pictures of :func:`two_pass` and the settings of both passes (JSON-serialisable)."""

    image: Image.Image  # the FouriScale pass at the target size
    first: Image.Image  # the native-size pass
    settings: dict = field(default_factory=dict)


def first_pass_size(pipe, height: int, width: int, config: FouriScaleConfig | None = None) -> tuple[int, int]:
    """``(height, width)`` of the native pass for a target size: SDXL's base bucket, else the target divided by the
    dilation (at most the native size); both rounded to what the pipeline and the UNet's downsamplers take."""
    plan = get_plan(pipe, height, width, 1, config or get_config(pipe))
    profile = plan.profile
    f = profile.vae_scale_factor
    n_down = sum(1 for stage in profile.stages if stage.startswith("down_blocks.")) - 1
    unit = math.lcm(8, f * 2**n_down)

    def fit(size: float, limit: float) -> int:
        return max(unit, min(int(limit // unit) * unit, int(size / unit + 0.5) * unit))

    if profile.family.bucketed and plan.config.base_size is None:
        bh, bw = plan.base_size
        return fit(bh, bh + unit / 2), fit(bw, bw + unit / 2)
    nh, nw = profile.native_size
    d = max(plan.dilation, 1)
    return fit(height / d, nh), fit(width / d, nw)


def two_pass_settings(first_size: tuple[int, int], upscale: str, strength: float, seed: int, steps: int) -> dict:
    """The settings of a two-pass generation, as :attr:`TwoPassResult.settings` reports them under ``"two_pass"``
    (known before rendering: front ends key finished images by them)."""
    fh, fw = first_size
    return {
        "first_pass": {"height": fh, "width": fw, "fouriscale": False},
        "upscale": upscale,
        "strength": float(strength),
        "seed": int(seed),
        "start_step": steps - int(strength * steps),
    }


def _accepts(pipe, name: str) -> bool:
    return name in inspect.signature(type(pipe).__call__).parameters


def two_pass(
    pipe,
    prompt,
    height: int,
    width: int,
    *,
    strength: float = 0.6,
    upscale: str = "pixel",
    seed: int = 0,
    first_size: tuple[int, int] | None = None,
    config: FouriScaleConfig | None = None,
    control_image=None,
    **call_kwargs,
) -> TwoPassResult:
    """Render ``prompt`` at the native size, upscale it, refine it with FouriScale img2img at ``height`` x ``width``.

    Args:
        pipe: a text-to-image SD 1.x/2.x or SDXL pipeline, with or without ControlNet; FouriScale is applied to it
            (with ``config``, else its applied config, else the paper's) if it is not already.
        strength (`float`, defaults to 0.6): img2img strength of the second pass, in (0, 1]; it starts at step
            ``N - int(strength * N)`` of the full schedule, so the dilation phases follow the noise level.
        upscale (`str`, defaults to ``"pixel"``): ``"pixel"`` (Lanczos, then VAE-encode) or ``"latent"`` (bicubic).
        seed (`int`, defaults to 0): the seed of both passes.
        first_size (`tuple[int, int]`, *optional*): ``(height, width)`` of the first pass instead of
            :func:`first_pass_size`.
        control_image: the ControlNet conditioning image(s) of a ControlNet pipeline, used by both passes.
        **call_kwargs: passed to both pipeline calls (``num_inference_steps``, ``guidance_scale``,
            ``negative_prompt``, ``controlnet_conditioning_scale``, ...).

    Returns a :class:`TwoPassResult`. Raises ``ValueError`` for settings it cannot use.
    """
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    if upscale not in UPSCALE_MODES:
        raise ValueError(f"upscale must be one of {', '.join(UPSCALE_MODES)}, got {upscale!r}")
    for name in ("image", "latents", "output_type", "generator", "strength", "height", "width"):
        if name in call_kwargs:
            raise ValueError(f"two_pass sets {name!r} itself; remove it from the call arguments")
    apply_fouriscale(pipe, config or get_config(pipe))
    steps = call_kwargs.get("num_inference_steps", 50)
    get_plan(pipe, height, width, steps)  # a size the model cannot take fails here, before any work
    fh, fw = first_size or first_pass_size(pipe, height, width)

    def generator():
        return torch.Generator("cpu").manual_seed(seed)

    text2img = AutoPipelineForText2Image.from_pipe(pipe) if _accepts(pipe, "strength") else pipe
    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    bar = getattr(pipe, "_progress_bar_config", None)
    if bar is not None:  # from_pipe does not carry the progress bar settings over
        for made in (text2img, img2img):
            made.set_progress_bar_config(**bar)
    first_kwargs, second_kwargs = dict(call_kwargs), dict(call_kwargs)
    if control_image is not None:
        first_kwargs["image"] = control_image
        second_kwargs["control_image"] = control_image
    for name, value in (("height", height), ("width", width)):
        if _accepts(img2img, name):
            second_kwargs[name] = value

    with disabled(pipe):  # the model's own picture: no FouriScale at its native size
        out = text2img(
            prompt,
            height=fh,
            width=fw,
            generator=generator(),
            output_type="latent" if upscale == "latent" else "pil",
            **first_kwargs,
        )
    if upscale == "latent":
        latents = out.images
        f = pipe.vae_scale_factor
        init = F.interpolate(latents.float(), size=(height // f, width // f), mode="bicubic", align_corners=False)
        init = init.to(latents.dtype)
        first = _decode(pipe, latents)
    else:
        first = out.images[0]
        init = first.resize((width, height), Image.LANCZOS)
    image = img2img(prompt, image=init, strength=strength, generator=generator(), **second_kwargs).images[0]
    settings = {"two_pass": two_pass_settings((fh, fw), upscale, strength, seed, steps)}
    return TwoPassResult(image=image, first=first, settings=settings)


@torch.no_grad()
def _decode(pipe, latents: torch.Tensor) -> Image.Image:
    """The picture of diffusion-space ``latents`` (as the pipeline's own decode would give it)."""
    vae = pipe.vae
    z = latents.to(vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        z = z + shift
    image = vae.decode(z, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="pil")[0]
