"""Batch generation: prompts x seeds as numbered jobs, resumable, shardable across processes.

Each image is generated alone from its own seed, written atomically with its settings, and recorded in
the folder's manifest. A rerun with the same arguments finds finished images by the settings key stored
in them and skips them, so an interrupted batch loses at most the image in flight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

import fouriscale

from .loading import UserError
from .outputs import Manifest, image_name, read_settings, settings_key, write_png

__all__ = ["Recipe", "Job", "parse_seeds", "make_jobs", "image_settings", "finished_settings", "output_name", "render",
           "save_image", "run_batch", "side_by_side"]


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


@dataclass(frozen=True)
class Job:
    index: int
    prompt: str
    seed: int


@dataclass
class BatchResult:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def parse_seeds(text: str) -> list[int]:
    """``"23"``, ``"1,2,3"``, ``"10-19"`` or a mix (``"1,5-7"``) -> a list of seeds."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if hi < lo:
                raise UserError(f"--seed {text}: the range {part} runs backwards")
            if hi - lo >= 100_000:
                raise UserError(f"--seed {text}: the range {part} is too long")
            seeds.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        else:
            raise UserError(f"--seed {text}: expected a seed, a list (1,2,3) or a range (10-19) of non-negative integers")
    if not seeds:
        raise UserError("--seed: no seed given")
    return seeds


def make_jobs(prompts: list[str], seeds: list[int]) -> list[Job]:
    """Every prompt with every seed, numbered in that order."""
    return [Job(i, prompt, seed) for i, (prompt, seed) in enumerate((p, s) for p in prompts for s in seeds)]


def image_settings(recipe: Recipe, job: Job, method: str, plan=None) -> dict:
    """The full, JSON-serialisable settings of one image (what is embedded in the PNG and the manifest)."""
    settings = {
        "prompt": job.prompt,
        "negative_prompt": recipe.negative_prompt or "",
        "seed": job.seed,
        "width": recipe.width,
        "height": recipe.height,
        "steps": recipe.steps,
        "guidance_scale": recipe.guidance_scale,
        "eta": recipe.eta,
        "scheduler": recipe.scheduler,
        "model": recipe.model,
        "loras": [{"path": path, "scale": scale} for path, scale in recipe.loras],
        "dtype": recipe.dtype,
        "method": method,
        "version": fouriscale.__version__,
    }
    if method == "fouriscale":
        settings["fouriscale"] = recipe.config.to_dict()
        if plan is not None:
            settings["plan"] = {
                "dilation": plan.dilation,
                "base_size": list(plan.base_size),
                "start_step": plan.start,
                "stop_step": plan.stop,
                "noop": plan.noop,
            }
    return settings


def render(pipe, recipe: Recipe, job: Job, method: str = "fouriscale", on_step=None) -> Image.Image:
    """Generate one image; ``method="direct"`` renders the same seed with the stock pipeline.

    ``on_step(i)`` is called after each denoising step (progress reporting).
    """
    kwargs = dict(
        prompt=job.prompt,
        negative_prompt=recipe.negative_prompt or None,
        height=recipe.height,
        width=recipe.width,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance_scale,
        eta=recipe.eta,
        generator=torch.Generator("cpu").manual_seed(job.seed),
    )
    if on_step is not None:

        def callback(pipe, i, t, tensors):
            on_step(i)
            return tensors

        kwargs["callback_on_step_end"] = callback
    try:
        if method == "direct":
            with fouriscale.disabled(pipe):
                return pipe(**kwargs).images[0]
        return pipe(**kwargs).images[0]
    except torch.OutOfMemoryError:
        raise UserError(
            f"out of GPU memory at {recipe.width}x{recipe.height}; try --offload model (or sequential), "
            "--dtype fp16, or a smaller size"
        ) from None


def save_image(image: Image.Image, out: Path, settings: dict, rank: int = 0, manifest: Manifest | None = None) -> None:
    """Write a finished image as ``out / settings["file"]`` with its settings (atomic PNG) and record it in the
    folder's manifest."""
    write_png(image, out / settings["file"], settings)
    (manifest or Manifest(out)).add(dict(settings, rank=rank))


def finished_settings(recipe: Recipe, job: Job, method: str, name: str, plan=None) -> dict:
    """:func:`image_settings` plus the bookkeeping stored with a file: its key, name and job index."""
    settings = image_settings(recipe, job, method, plan if method == "fouriscale" else None)
    settings.update(key=settings_key(settings), file=name, index=job.index)
    return settings


def output_name(job: Job, method: str) -> str:
    """File name of a job's image: ``NAME.png`` for FouriScale, ``NAME-direct.png`` for direct inference."""
    return image_name(job.index, job.seed, job.prompt, "" if method == "fouriscale" else "-direct")


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 8) -> Image.Image:
    """``left | right`` on a white canvas (direct inference left, FouriScale right)."""
    canvas = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    return canvas


def run_batch(pipe, recipe: Recipe, jobs: list[Job], out_dir: str, *, state=None, progress: bool = True) -> BatchResult:
    """Generate ``jobs`` (this process's share when ``state`` is an accelerate ``PartialState``) into ``out_dir``."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out_dir}: cannot create the folder ({exc.strerror})") from None
    manifest = Manifest(out)
    plan = fouriscale.get_plan(pipe, recipe.height, recipe.width, recipe.steps, recipe.config)
    if state is not None and state.num_processes > 1:
        with state.split_between_processes(jobs) as share:
            mine = list(share)
    else:
        mine = list(jobs)

    rank = state.process_index if state is not None else 0
    planned = []
    methods = ["fouriscale", "direct"] if recipe.compare else ["fouriscale"]
    for job in mine:
        for method in methods:
            name = output_name(job, method)
            settings = finished_settings(recipe, job, method, name, plan)
            existing = read_settings(out / name)
            if existing is not None and existing.get("key") != settings["key"]:
                raise UserError(
                    f"{out / name} already holds an image made with other settings; choose another --out folder "
                    "or move that file away (nothing was overwritten)"
                )
            if existing is None and (out / name).exists():
                raise UserError(f"{out / name} exists and is not a fouriscale image; move it away or choose another --out")
            planned.append((job, method, name, settings, existing is not None))

    result = BatchResult()
    bar = tqdm(total=len(planned), desc="images", unit="img", disable=not progress, position=0)
    images: dict[tuple[int, str], Image.Image] = {}
    for job, method, name, settings, done in planned:
        if done:
            manifest.add(dict(settings, rank=rank))  # repairs a line lost to a crash between rename and append
            result.skipped.append(name)
        else:
            image = render(pipe, recipe, job, method)
            save_image(image, out, settings, rank, manifest)
            result.written.append(name)
            images[(job.index, method)] = image
        bar.update(1)
        if recipe.compare and method == "direct":
            compare_name = name.replace("-direct.png", "-compare.png")
            if not (out / compare_name).exists() or not done:
                direct = images.pop((job.index, "direct"), None) or Image.open(out / name).convert("RGB")
                ours = images.pop((job.index, "fouriscale"), None) or Image.open(out / name.replace("-direct", "")).convert("RGB")
                write_png(side_by_side(direct, ours), out / compare_name, None)
    bar.close()
    return result
