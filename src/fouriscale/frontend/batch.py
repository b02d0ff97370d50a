"""Batch generation: prompts x seeds as numbered jobs, resumable, shardable, safe to run concurrently.

Each image is generated alone from its own seed, written atomically with its settings, and recorded in the
folder's manifest in the same locked step. A rerun with the same arguments finds finished images by the
settings key stored in them and skips them, so an interrupted batch loses at most the image in flight.

Runs that share an output folder coordinate through the folder's lock (:mod:`.folder`):

* each run registers the files it will make (with their settings keys) before it renders anything; a run
  that would make a file another live run or an existing file holds with other settings stops at once,
  with one line naming the file and the setting that differs;
* each job (one prompt and seed: its image, and with ``--compare`` the direct image and the side by side; with
  ``--two-pass`` also the native-size first pass) is claimed before it is rendered, so runs with the same
  settings split the work and no image is made twice; a job claimed by another run is waited for at the end
  (and taken over if that run dies).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field

from PIL import Image
from tqdm.auto import tqdm

import fouriscale

from .errors import UserError
from .files import atomic_write_bytes, differing_settings, read_settings, unlink
from .folder import OutputFolder, alive, owner, read_json
from .pipelines import Pipelines
from .recipe import Job, Recipe, finished_settings, output_name, recipe_settings
from .render import render_images, side_by_side

__all__ = ["BatchResult", "run_batch", "distributed_state"]

_WAIT_POLL = 0.5  # seconds between looks at jobs another run is making


def distributed_state(device: str):
    """accelerate's process state when launched with several processes (the batch is then split between them),
    else ``None``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState  # only when launched by accelerate or torchrun

    return PartialState(cpu=device == "cpu")


@dataclass
class BatchResult:
    written: list[str] = field(default_factory=list)  # rendered by this run
    skipped: list[str] = field(default_factory=list)  # already there when the run looked
    by_others: list[str] = field(default_factory=list)  # made meanwhile by another run into the same folder


@dataclass
class _Unit:
    """One job's files: ``(method, name, settings)`` in render order."""

    job: Job
    files: list[tuple[str, str, dict]]

    @property
    def name(self) -> str:
        return self.files[0][1]


class _Registration:
    """This run's entry in the folder: the files it will make and their keys (``.fouriscale-run.TOKEN.json``)."""

    PREFIX = ".fouriscale-run."

    def __init__(self, folder: OutputFolder, units: list[_Unit]) -> None:
        self.folder = folder
        me = owner()
        self.path = folder.path / f"{self.PREFIX}{me['token']}-{me['pid']}.json"
        first = units[0].files[0][2] if units else {}
        self.data = {
            **me,
            "recipe": recipe_settings(first),
            "names": {name: [s["key"], s["prompt"], s["method"]] for u in units for _, name, s in u.files},
        }

    def others(self) -> list[dict]:
        """Live registrations of other runs (stale ones are removed; call under the lock)."""
        found = []
        for path in self.folder.path.glob(f"{self.PREFIX}*.json"):
            if path == self.path:
                continue
            data = read_json(path)
            if data is None or not alive(data):
                unlink(path)
                continue
            found.append(data)
        return found

    def write(self) -> None:
        atomic_write_bytes(self.path, json.dumps(self.data, allow_nan=False).encode("utf-8"))

    def remove(self) -> None:
        with self.folder.lock:
            unlink(self.path)


def _conflict(name: str, ours: dict, theirs_recipe: dict, theirs_prompt: str, theirs_method: str, pid) -> str:
    mine = recipe_settings(ours)
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
            folder.save(image, settings, rank)
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
    try:
        return shutil.disk_usage(folder.path).free
    except OSError:
        return None
