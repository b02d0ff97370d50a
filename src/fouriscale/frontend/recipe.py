"""What one image is made from: the run's :class:`Recipe` and a :class:`Job` (prompt, seed, own picture), and the
settings of every image a job makes (embedded in the PNG, keyed so that a rerun finds finished images).

Jobs may start from pictures (img2img, inpainting, ControlNet): the settings key of each image holds the SHA-256
of every input picture, so a changed input is never taken for done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import fouriscale

from ..two_pass import two_pass_settings
from .defaults import MAX_SEED
from .errors import UserError
from .files import image_name, settings_key
from .pictures import Picture

__all__ = [
    "Recipe",
    "Job",
    "parse_seeds",
    "make_jobs",
    "task_of",
    "run_two_pass_settings",
    "image_settings",
    "finished_settings",
    "image_key",
    "output_name",
    "recipe_settings",
]

_MAX_RANGE = 100_000


@dataclass(frozen=True)
class Recipe:
    """Everything about an image except its prompt and seed."""

    model: str
    height: int
    width: int
    steps: int
    guidance_scale: float
    negative_prompt: str | None
    scheduler: str
    eta: float
    dtype: str
    config: fouriscale.FouriScaleConfig
    loras: tuple[tuple[str, float], ...] = ()
    compare: bool = False
    #: img2img/inpainting strength in (0, 1] (jobs with an init image, and the second pass of ``two_pass``).
    strength: float | None = None
    #: The run's init image (``--init-image``); a job's own picture (prompts file, ``upscale``) replaces it.
    init: Picture | None = None
    #: Inpainting mask (white: repaint), the init image's size; needs an init image.
    mask: Picture | None = None
    #: ControlNets with their conditioning images and scales, in order (``Control`` objects).
    controls: tuple = ()
    #: ``fouriscale.two_pass``: native-size first pass, upscale (``pixel``/``latent``), FouriScale img2img.
    two_pass: bool = False
    upscale: str = "pixel"
    first_size: tuple[int, int] | None = None  # (height, width) of the two-pass first pass
    #: SDXL ``original_size``/``target_size`` of the UNet and ControlNet (the official ControlNet recipe).
    micro_conditions: tuple[int, int] | None = None
    #: What a memory budget chose (:meth:`fouriscale.memory.BudgetChoice.to_dict`); recorded, not keyed (its
    #: settings are in ``config``).
    memory: dict | None = None

    def replace(self, **changes) -> Recipe:
        return replace(self, **changes)


@dataclass(frozen=True)
class Job:
    """One image to make: its prompt, seed and own picture or negative prompt. ``index`` is its position in the
    run's list; a batch numbers its files by identity instead (:func:`fouriscale.frontend.batch.name_units`)."""

    index: int
    prompt: str
    seed: int
    init: Picture | None = None  # this job's own init image (else the recipe's)
    negative: str | None = None  # this job's own negative prompt (else the recipe's)


def _seed(text: str, spec: str) -> int:
    value = int(text)
    if value > MAX_SEED:
        raise UserError(f"--seed {spec}: {text} is above the largest seed, 2**64 - 1 = {MAX_SEED}")
    return value


def parse_seeds(text: str) -> list[int]:
    """``"23"``, ``"1,2,3"``, ``"10-19"`` or a mix (``"1,5-7"``) -> a list of seeds, each in 0 .. 2**64 - 1,
    ranges of at most 100000 seeds."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if match:
            lo, hi = _seed(match.group(1), text), _seed(match.group(2), text)
            if hi < lo:
                raise UserError(f"--seed {text}: the range {part} runs backwards")
            if hi - lo >= _MAX_RANGE:
                raise UserError(f"--seed {text}: the range {part} is too long (at most {_MAX_RANGE} seeds)")
            seeds.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            seeds.append(_seed(part, text))
        else:
            raise UserError(
                f"--seed {text}: expected a seed, a list (1,2,3) or a range (10-19) of non-negative integers"
            )
    if not seeds:
        raise UserError("--seed: no seed given")
    return seeds


def make_jobs(
    prompts: list[str],
    seeds: list[int],
    pictures: list[Picture | None] | None = None,
    negatives: list[str | None] | None = None,
) -> list[Job]:
    """Every prompt with every seed, numbered in that order; ``pictures`` and ``negatives`` (one per prompt, or
    ``None``) give a prompt its own init image and negative prompt."""
    pictures = pictures or [None] * len(prompts)
    negatives = negatives or [None] * len(prompts)
    lines = list(zip(prompts, pictures, negatives))
    pairs = ((line, seed) for line in lines for seed in seeds)
    return [Job(i, p, seed, init, neg) for i, ((p, init, neg), seed) in enumerate(pairs)]


def task_of(recipe: Recipe, job: Job) -> str:
    """``text2img``, ``img2img`` (an init image) or ``inpaint`` (an init image and a mask)."""
    if (job.init or recipe.init) is None:
        return "text2img"
    return "inpaint" if recipe.mask is not None else "img2img"


def run_two_pass_settings(recipe: Recipe, seed: int) -> dict:
    """The ``two_pass`` settings :func:`fouriscale.two_pass` reports for this recipe and seed."""
    return two_pass_settings(recipe.first_size, recipe.upscale, recipe.strength, seed, recipe.steps)


def _input_settings(recipe: Recipe, job: Job, method: str) -> tuple[dict, dict]:
    """``(inputs, input_files)``: the pictures' hashes and sizes, strength and ControlNets (part of the key), and
    the pictures' paths (not part of it: moving an input does not make its images stale)."""
    inputs, files = {}, {}
    init = job.init or recipe.init
    if init is not None:
        inputs.update(init_image=init.record(), strength=recipe.strength)
        files["init_image"] = init.path
    if recipe.mask is not None:
        inputs["mask"] = recipe.mask.record()
        files["mask"] = recipe.mask.path
    if recipe.controls:
        inputs["controlnets"] = [c.record() for c in recipe.controls]
        files["control_images"] = [c.image.path for c in recipe.controls]
    if recipe.micro_conditions is not None:
        inputs["micro_conditions"] = list(recipe.micro_conditions)
    if recipe.two_pass and method in ("fouriscale", "first"):
        inputs["two_pass"] = run_two_pass_settings(recipe, job.seed)
    return inputs, files


def image_settings(recipe: Recipe, job: Job, method: str, plan=None) -> dict:
    """The full, JSON-serialisable settings of one image (what is embedded in the PNG and the manifest)."""
    negative = job.negative if job.negative is not None else recipe.negative_prompt
    first = method == "first"
    settings = {
        "prompt": job.prompt,
        "negative_prompt": negative or "",
        "seed": job.seed,
        "width": recipe.first_size[1] if first else recipe.width,
        "height": recipe.first_size[0] if first else recipe.height,
        "steps": recipe.steps,
        "guidance_scale": recipe.guidance_scale,
        "eta": recipe.eta,
        "scheduler": recipe.scheduler,
        "model": recipe.model,
        "loras": [{"path": path, "scale": scale} for path, scale in recipe.loras],
        "dtype": recipe.dtype,
        "method": "first-pass" if first else method,
        "version": fouriscale.__version__,
    }
    inputs, files = _input_settings(recipe, job, method)
    if "two_pass" in inputs:
        settings["two_pass"] = dict(inputs.pop("two_pass"), first_file=output_name(job, "first"))
    if inputs:
        settings["inputs"] = inputs
    if files:
        settings["input_files"] = files
    if method not in ("direct", "first"):
        settings["fouriscale"] = recipe.config.to_dict()
        if recipe.memory is not None:
            settings["memory"] = recipe.memory
        if plan is not None:
            settings["plan"] = {
                "dilation": plan.dilation,
                "base_size": list(plan.base_size),
                "start_step": plan.start,
                "stop_step": plan.stop,
                "noop": plan.noop,
            }
    return settings


def finished_settings(recipe: Recipe, job: Job, method: str, name: str, plan=None) -> dict:
    """:func:`image_settings` plus the bookkeeping stored with a file: its key, name and job index."""
    settings = image_settings(recipe, job, method, plan if method not in ("direct", "first") else None)
    settings.update(key=settings_key(settings), file=name, index=job.index)
    return settings


def image_key(recipe: Recipe, job: Job, method: str, plan=None) -> str:
    """The settings key of one image of ``job`` (its identity: the same whatever the job's number and file name)."""
    return settings_key(image_settings(recipe, job, method, plan if method not in ("direct", "first") else None))


_SUFFIX = {"fouriscale": "", "direct": "-direct", "side-by-side": "-compare", "first": "-first"}


def output_name(job: Job, method: str) -> str:
    """File name of a job's image: ``NAME.png`` (FouriScale), ``NAME-direct.png`` (direct inference),
    ``NAME-compare.png`` (the two side by side), ``NAME-first.png`` (the first pass of ``--two-pass``)."""
    return image_name(job.index, job.seed, job.prompt, _SUFFIX[method])


def recipe_settings(settings: dict) -> dict:
    """The settings every file of a run shares (for telling which one differs between runs)."""
    per_job = ("prompt", "seed", "file", "key", "index", "method", "input_files")
    return {k: v for k, v in settings.items() if k not in per_job}
