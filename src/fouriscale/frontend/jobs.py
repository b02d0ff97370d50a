"""Batch generation: prompts x seeds as numbered jobs, resumable, shardable, safe to run concurrently.

Each image is generated alone from its own seed, written atomically with its settings, and recorded in the
folder's manifest in the same locked step. A rerun with the same arguments finds finished images by the
settings key stored in them and skips them, so an interrupted batch loses at most the image in flight.

Runs that share an output folder coordinate through the folder's lock:

* each run registers the files it will make (with their settings keys) before it renders anything; a run
  that would make a file another live run or an existing file holds with other settings stops at once,
  with one line naming the file and the setting that differs;
* each job (one prompt and seed: its image, and with ``--compare`` the direct image and the side by side; with
  ``--two-pass`` also the native-size first pass) is claimed before it is rendered, so runs with the same
  settings split the work and no image is made twice; a job claimed by another run is waited for at the end
  (and taken over if that run dies).

Jobs may start from pictures (img2img, inpainting, ControlNet): the settings key of each image holds the SHA-256
of every input picture, so a changed input is never taken for done.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace

import torch
from PIL import Image

import fouriscale

from .errors import UserError
from .inputs import Picture
from .outputs import (
    OutputFolder,
    _alive,
    _owner,
    _read_json,
    _unlink,
    atomic_write_bytes,
    differing_settings,
    encode_png,
    image_name,
    read_settings,
    settings_key,
)

__all__ = [
    "Recipe",
    "Job",
    "BatchResult",
    "MAX_SEED",
    "parse_seeds",
    "make_jobs",
    "image_settings",
    "finished_settings",
    "output_name",
    "generate_image",
    "render",
    "render_images",
    "task_of",
    "two_pass_settings",
    "save_image",
    "run_batch",
    "side_by_side",
]

#: Seeds are 64-bit: 0 .. 2**64 - 1 (what ``torch.Generator.manual_seed`` takes).
MAX_SEED = 2**64 - 1
_MAX_RANGE = 100_000
_WAIT_POLL = 0.5  # seconds between looks at jobs another run is making


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

    def replace(self, **changes) -> Recipe:
        return replace(self, **changes)


@dataclass(frozen=True)
class Job:
    index: int
    prompt: str
    seed: int
    init: Picture | None = None  # this job's own init image (else the recipe's)
    negative: str | None = None  # this job's own negative prompt (else the recipe's)


@dataclass
class BatchResult:
    written: list[str] = field(default_factory=list)  # rendered by this run
    skipped: list[str] = field(default_factory=list)  # already there when the run looked
    by_others: list[str] = field(default_factory=list)  # made meanwhile by another run into the same folder


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


def two_pass_settings(recipe: Recipe, seed: int) -> dict:
    """The ``two_pass`` settings :func:`fouriscale.two_pass` reports for this recipe (known before rendering, so
    they are part of the settings key)."""
    fh, fw = recipe.first_size
    strength = float(recipe.strength)
    return {
        "first_pass": {"height": fh, "width": fw, "fouriscale": False},
        "upscale": recipe.upscale,
        "strength": strength,
        "seed": int(seed),
        "start_step": recipe.steps - int(strength * recipe.steps),
    }


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
        inputs["two_pass"] = two_pass_settings(recipe, job.seed)
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


_SUFFIX = {"fouriscale": "", "direct": "-direct", "side-by-side": "-compare", "first": "-first"}


def output_name(job: Job, method: str) -> str:
    """File name of a job's image: ``NAME.png`` (FouriScale), ``NAME-direct.png`` (direct inference),
    ``NAME-compare.png`` (the two side by side), ``NAME-first.png`` (the first pass of ``--two-pass``)."""
    return image_name(job.index, job.seed, job.prompt, _SUFFIX[method])


def generate_image(pipe, prompt: str, *, seed: int, direct: bool = False, on_step=None, **call) -> Image.Image:
    """One image from ``pipe`` with a CPU generator seeded with ``seed``; ``direct=True`` renders it with the stock
    pipeline (:func:`fouriscale.disabled`). ``on_step(i)`` is called after each denoising step. The one render
    path of the CLI, the UI and the comparison pictures."""
    call["generator"] = torch.Generator("cpu").manual_seed(seed)
    if on_step is not None:

        def callback(pipe, i, t, tensors):
            on_step(i)
            return tensors

        call["callback_on_step_end"] = callback
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

        def callback(pipe, i, t, tensors):
            on_step(i)
            return tensors

        call["callback_on_step_end"] = callback
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
    expected = two_pass_settings(recipe, job.seed)
    if result.settings.get("two_pass") != expected:  # the settings key was made from these
        raise RuntimeError(f"two_pass reported {result.settings.get('two_pass')}, expected {expected}")
    return {"fouriscale": result.image, "first": result.first}


def render_images(pipe, recipe: Recipe, job: Job, method: str = "fouriscale", on_step=None) -> dict:
    """Generate one job's image for ``method`` as ``{method: image}``; with ``recipe.two_pass`` the FouriScale image
    comes with its first pass (``{"fouriscale": ..., "first": ...}``, one call of :func:`fouriscale.two_pass`).
    ``method="direct"`` renders the same inputs and seed with the stock pipeline (for two-pass: plain
    text-to-image at the target size). ``pipe`` is a pipeline or a :class:`~.pipelines.Pipelines`."""
    from .pipelines import Pipelines, call_arguments

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


def render(pipe, recipe: Recipe, job: Job, method: str = "fouriscale", on_step=None) -> Image.Image:
    """Generate one image; ``method="direct"`` renders the same seed with the stock pipeline.

    ``on_step(i)`` is called after each denoising step (progress reporting).
    """
    return render_images(pipe, recipe, job, method, on_step)[method]


def save_image(image: Image.Image, out, settings: dict, rank: int = 0, folder: OutputFolder | None = None) -> None:
    """Write a finished image as ``out / settings["file"]`` with its settings (atomic PNG) and its manifest line,
    in one step under the folder's lock."""
    folder = folder or OutputFolder(out)
    folder.commit(settings["file"], encode_png(image, settings), dict(settings, rank=rank))


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 8) -> Image.Image:
    """``left | right`` on a white canvas (direct inference left, FouriScale right)."""
    canvas = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    return canvas


# ------------------------------------------------------------------------------------------------ the batch


@dataclass
class _Unit:
    """One job's files: ``(method, name, settings)`` in render order."""

    job: Job
    files: list[tuple[str, str, dict]]

    @property
    def name(self) -> str:
        return self.files[0][1]


def _recipe_settings(settings: dict) -> dict:
    """The settings every file of a run shares (for telling which one differs between runs)."""
    per_job = ("prompt", "seed", "file", "key", "index", "method", "input_files")
    return {k: v for k, v in settings.items() if k not in per_job}


class _Registration:
    """This run's entry in the folder: the files it will make and their keys (``.fouriscale-run.TOKEN.json``)."""

    PREFIX = ".fouriscale-run."

    def __init__(self, folder: OutputFolder, units: list[_Unit]) -> None:
        self.folder = folder
        owner = _owner()
        self.path = folder.path / f"{self.PREFIX}{owner['token']}-{owner['pid']}.json"
        first = units[0].files[0][2] if units else {}
        self.data = {
            **owner,
            "recipe": _recipe_settings(first),
            "names": {name: [s["key"], s["prompt"], s["method"]] for u in units for _, name, s in u.files},
        }

    def others(self) -> list[dict]:
        """Live registrations of other runs (stale ones are removed; call under the lock)."""
        found = []
        for path in self.folder.path.glob(f"{self.PREFIX}*.json"):
            if path == self.path:
                continue
            data = _read_json(path)
            if data is None or not _alive(data):
                _unlink(path)
                continue
            found.append(data)
        return found

    def write(self) -> None:
        atomic_write_bytes(self.path, json.dumps(self.data, allow_nan=False).encode("utf-8"))

    def remove(self) -> None:
        with self.folder.lock:
            _unlink(self.path)


def _conflict(name: str, ours: dict, theirs_recipe: dict, theirs_prompt: str, theirs_method: str, pid) -> str:
    mine = _recipe_settings(ours)
    if mine != theirs_recipe:
        diff = differing_settings(mine, theirs_recipe)
    elif ours["prompt"] != theirs_prompt:
        diff = differing_settings({"prompt": ours["prompt"]}, {"prompt": theirs_prompt})
    else:
        diff = differing_settings({"method": ours["method"]}, {"method": theirs_method})
    return (
        f"{name} is being made right now by another run (pid {pid}) with other settings ({diff}); wait for it to "
        "finish or choose another --out folder (nothing was rendered)"
    )


def _check_and_register(folder: OutputFolder, units: list[_Unit], registration: _Registration) -> None:
    """Refuse files that exist or are planned by a live run with other settings; then register (under the lock)."""
    for unit in units:
        for _, name, settings in unit.files:
            path = folder.path / name
            if not path.exists():
                continue
            existing = read_settings(path)
            if existing is None:
                raise UserError(
                    f"{path} exists and is not a fouriscale image; move it away or choose another --out folder"
                )
            if existing.get("key") != settings["key"]:
                raise UserError(
                    f"{path} already holds an image made with other settings "
                    f"({differing_settings(settings, existing)}); choose another --out folder or move that file "
                    "away (nothing was overwritten)"
                )
    for other in registration.others():
        names = other.get("names", {})
        for unit in units:
            for _, name, settings in unit.files:
                theirs = names.get(name)
                if theirs and theirs[0] != settings["key"]:
                    raise UserError(_conflict(name, settings, other.get("recipe", {}), *theirs[1:3], other.get("pid")))
    registration.write()


def _estimate_bytes(recipe: Recipe, files: int) -> int:
    """Upper bound of one job's PNGs on disk (uncompressed RGB, plus the side by side, plus headroom)."""
    return files * 3 * recipe.height * recipe.width * (2 if recipe.compare else 1) + (1 << 20)


def run_batch(
    pipe,
    recipe: Recipe,
    jobs: list[Job],
    out_dir,
    *,
    state=None,
    progress: bool = True,
    methods: tuple[str, ...] | None = None,
) -> BatchResult:
    """Generate ``jobs`` (this process's share when ``state`` is an accelerate ``PartialState``) into ``out_dir``.

    ``methods`` default: FouriScale, plus direct inference and a side by side with ``recipe.compare``;
    ``("direct",)`` makes only direct-inference images. Everything that could stop the batch (folder not
    writable or full, files held by other settings) is checked before the first image.
    """
    from tqdm.auto import tqdm

    from .pipelines import Pipelines

    if methods is None:
        methods = ("fouriscale", "first") if recipe.two_pass else ("fouriscale",)
        methods += ("direct", "side-by-side") if recipe.compare else ()
    elif "side-by-side" in methods and not {"fouriscale", "direct"} <= set(methods):
        raise ValueError("side-by-side needs both the fouriscale and the direct image")
    folder = OutputFolder(out_dir).prepare(_estimate_bytes(recipe, len(methods)))
    pipe = pipe if isinstance(pipe, Pipelines) else Pipelines(pipe)
    plan = fouriscale.get_plan(pipe.base, recipe.height, recipe.width, recipe.steps, recipe.config)
    if state is not None and state.num_processes > 1:
        with state.split_between_processes(jobs) as share:
            mine = list(share)
    else:
        mine = list(jobs)
    rank = state.process_index if state is not None else 0

    units = [
        _Unit(
            job,
            [(m, output_name(job, m), finished_settings(recipe, job, m, output_name(job, m), plan)) for m in methods],
        )
        for job in mine
    ]
    registration = _Registration(folder, units)
    result = BatchResult()
    with folder.lock:
        folder.remove_stale()
        _check_and_register(folder, units, registration)
    bar = tqdm(total=sum(len(u.files) for u in units), desc="images", unit="img", disable=not progress, position=0)
    try:
        waiting = []
        for unit in units:
            if not _take(folder, unit, pipe, recipe, rank, result, bar, first_look=True):
                waiting.append(unit)
        while waiting:  # jobs another run holds: wait for them, or take them over if that run is gone
            time.sleep(_WAIT_POLL)
            waiting = [u for u in waiting if not _take(folder, u, pipe, recipe, rank, result, bar, first_look=False)]
    finally:
        bar.close()
        folder.release_all()
        registration.remove()
    return result


def _done(folder: OutputFolder, settings: dict) -> bool:
    existing = read_settings(folder.path / settings["file"])
    return existing is not None and existing.get("key") == settings["key"]


def _take(
    folder: OutputFolder, unit: _Unit, pipe, recipe: Recipe, rank: int, result: BatchResult, bar, first_look: bool
) -> bool:
    """Make the missing files of ``unit`` unless another live run holds it; ``False`` when it must be waited for."""
    with folder.lock:
        missing = set()
        for _, name, settings in unit.files:
            if _done(folder, settings):
                folder.manifest.add(dict(settings, rank=rank))  # repairs a line lost to a crash
            else:
                missing.add(name)
        if missing and not folder.claim(unit.name, {"file": unit.name}):
            return False
    found = result.skipped if first_look else result.by_others
    try:
        images: dict[str, Image.Image] = {}
        for method, name, settings in unit.files:
            if name not in missing:
                found.append(name)
                bar.update(1)
                continue
            free = _free_bytes(folder)
            need = 3 * recipe.width * recipe.height * (2 if method == "side-by-side" else 1)
            if free is not None and free < need:
                raise UserError(
                    f"no space left for {folder.path / name} ({free / 2**20:.1f} MiB free, up to {need / 2**20:.1f} "
                    "MiB needed); free some space and rerun (finished images are kept)"
                )
            if method == "side-by-side":
                direct = images.get("direct") or _open(folder, unit, "direct")
                ours = images.get("fouriscale") or _open(folder, unit, "fouriscale")
                image = side_by_side(direct, ours)
            elif method in images:  # made together with another file (the two passes of --two-pass)
                image = images[method]
            else:
                images.update(render_images(pipe, recipe, unit.job, method))
                image = images[method]
            images[method] = image
            save_image(image, folder.path, settings, rank, folder)
            result.written.append(name)
            bar.update(1)
    finally:
        if missing:
            folder.release(unit.name)
    return True


def _open(folder: OutputFolder, unit: _Unit, method: str) -> Image.Image:
    name = next(n for m, n, _ in unit.files if m == method)
    with Image.open(folder.path / name) as image:
        return image.convert("RGB")


def _free_bytes(folder: OutputFolder) -> int | None:
    import shutil

    try:
        return shutil.disk_usage(folder.path).free
    except OSError:
        return None
