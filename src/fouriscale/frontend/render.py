"""Rendering one job: the pipeline for its task, its pictures fitted to the size, one image per method (FouriScale,
direct inference with the same seed, two-pass with its first pass). The one render path of the CLI, the web UI,
the comparison pictures and the quality benchmark.
"""

from __future__ import annotations

import torch
from PIL import Image

import fouriscale

from .errors import UserError
from .pipelines import Pipelines, call_arguments
from .recipe import Job, Recipe, task_of

__all__ = ["generate_image", "fitted_pictures", "render_images", "side_by_side", "step_callback"]


def step_callback(on_step):
    """A diffusers ``callback_on_step_end`` that calls ``on_step(i)`` after each denoising step."""

    def callback(pipe, i, t, tensors):
        on_step(i)
        return tensors

    return callback


def generate_image(pipe, prompt: str, *, seed: int, direct: bool = False, on_step=None, **call) -> Image.Image:
    """One image from ``pipe`` with a CPU generator seeded with ``seed``; ``direct=True`` renders it with the stock
    pipeline (:func:`fouriscale.disabled`). ``on_step(i)`` is called after each denoising step. The one render
    path of the CLI, the UI and the comparison pictures."""
    call["generator"] = torch.Generator("cpu").manual_seed(seed)
    if on_step is not None:
        call["callback_on_step_end"] = step_callback(on_step)
    if direct:
        with fouriscale.disabled(pipe):
            return pipe(prompt, **call).images[0]
    return pipe(prompt, **call).images[0]


def fitted_pictures(recipe: Recipe, job: Job) -> dict:
    """The job's input pictures fitted to the recipe's size (:func:`fouriscale.images.fit_image`): ``init``,
    ``mask`` (mode ``L``), ``controls`` (a list) and ``scales``."""
    h, w = recipe.height, recipe.width
    init = job.init or recipe.init
    mask = recipe.mask
    return {
        "init": init.fitted(h, w)[0] if init is not None else None,
        "mask": mask.fitted(h, w, mask=True)[0] if mask is not None else None,
        "controls": [c.image.fitted(h, w)[0] for c in recipe.controls],
        "scales": [c.scale for c in recipe.controls],
    }


def _common_call(recipe: Recipe, job: Job) -> dict:
    negative = job.negative if job.negative is not None else recipe.negative_prompt
    call = dict(
        negative_prompt=negative or None,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance_scale,
        eta=recipe.eta,
    )
    if recipe.micro_conditions is not None:
        call.update(original_size=tuple(recipe.micro_conditions), target_size=tuple(recipe.micro_conditions))
    return call


def _render_two_pass(pipes, recipe: Recipe, job: Job, on_step=None) -> dict[str, Image.Image]:
    pictures = fitted_pictures(recipe, job)
    call = _common_call(recipe, job)
    control = None
    if pictures["controls"]:
        several = len(pictures["controls"]) > 1
        control = pictures["controls"] if several else pictures["controls"][0]
        call["controlnet_conditioning_scale"] = pictures["scales"] if several else pictures["scales"][0]
    if on_step is not None:
        call["callback_on_step_end"] = step_callback(on_step)
    result = fouriscale.two_pass(
        pipes.get("text2img"),
        job.prompt,
        recipe.height,
        recipe.width,
        strength=recipe.strength,
        upscale=recipe.upscale,
        seed=job.seed,
        first_size=recipe.first_size,
        config=recipe.config,
        control_image=control,
        **call,
    )
    return {"fouriscale": result.image, "first": result.first}


def render_images(pipe, recipe: Recipe, job: Job, method: str = "fouriscale", on_step=None) -> dict:
    """Generate one job's image for ``method`` as ``{method: image}``; with ``recipe.two_pass`` the FouriScale image
    comes with its first pass (``{"fouriscale": ..., "first": ...}``, one call of :func:`fouriscale.two_pass`).
    ``method="direct"`` renders the same inputs and seed with the stock pipeline (for two-pass: plain
    text-to-image at the target size). ``pipe`` is a pipeline or a :class:`~.pipelines.Pipelines`."""
    pipes = pipe if isinstance(pipe, Pipelines) else Pipelines(pipe)
    try:
        if recipe.two_pass and method in ("fouriscale", "first"):
            return _render_two_pass(pipes, recipe, job, on_step)
        task = task_of(recipe, job)
        target = pipes.get(task)
        pictures = fitted_pictures(recipe, job)
        call = _common_call(recipe, job)
        call.update(call_arguments(target, task, recipe.height, recipe.width, strength=recipe.strength, **pictures))
        image = generate_image(target, job.prompt, seed=job.seed, direct=method == "direct", on_step=on_step, **call)
        return {method: image}
    except torch.OutOfMemoryError:
        raise UserError(
            f"out of GPU memory at {recipe.width}x{recipe.height}; try --offload model (or sequential), "
            "--dtype fp16, or a smaller size"
        ) from None


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 8) -> Image.Image:
    """``left | right`` on a white canvas (direct inference left, FouriScale right)."""
    canvas = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    return canvas
