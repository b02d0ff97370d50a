"""Batch generation: prompts x seeds as numbered jobs, resumable, shardable, safe to run concurrently.

Each image is generated alone from its own seed, written atomically with its settings, and recorded in the
folder's manifest in the same locked step. An image's identity is its settings key (prompt, seed, input pictures'
hashes and every other setting), not its place in the batch: a rerun finds finished images by their keys and skips
them, whatever their numbers, so an interrupted batch loses at most the image in flight, and a batch grown, shrunk
or reordered (more seeds, more prompts, another order) renders only what is new.

File numbers (:func:`name_units`): an image whose key the folder already holds (a file, its manifest line, or a live
run's registration) keeps that file's name; the files of a new job get the next number after every number used in
the folder, in the batch's order (prompt by prompt, seed by seed). So names never collide and the manifest never
lists a key twice.

Runs that share an output folder coordinate through the folder's lock (:mod:`.folder`):

* each run names its files and registers them (with their settings keys) in one locked step before it renders
  anything, so runs started together agree on the names, whatever their settings; a file that holds other settings
  than its manifest line says (replaced by hand) stops the run at once, with one line naming the file and the
  setting that differs;
* each job (one prompt and seed: its image, and with ``--compare`` the direct image and the side by side; with
  ``--two-pass`` also the native-size first pass) is claimed before it is rendered, so runs with the same
  settings split the work and no image is made twice; a job claimed by another run is waited for at the end
  (and taken over if that run dies).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace

from PIL import Image
from tqdm.auto import tqdm

import fouriscale

from .errors import UserError
from .files import atomic_write_bytes, differing_settings, name_index, read_settings, unlink
from .folder import OutputFolder, alive, owner, read_json
from .pipelines import Pipelines
from .recipe import Job, Recipe, finished_settings, image_key, output_name
from .render import render_images, side_by_side

__all__ = ["BatchResult", "run_batch", "distributed_state", "name_units", "live_runs", "Unit"]

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
class Unit:
    """One job's files: ``(method, name, settings)`` in render order; ``job.index`` is the number of its new files."""

    job: Job
    files: list[tuple[str, str, dict]]

    @property
    def name(self) -> str:
        return self.files[0][1]


def _reused_index(job: Job, keys: list[tuple[str, str]], known: dict[str, str], taken: set[str]) -> int | None:
    """The number of the job's files already in the folder, when they share one and its missing files' names are
    free; else ``None``."""
    found = {name_index(known[key]) for _, key in keys if key in known} - {None}
    if len(found) != 1:
        return None
    numbered = replace(job, index=found.pop())
    if any(key not in known and output_name(numbered, method) in taken for method, key in keys):
        return None
    return numbered.index


def name_units(
    folder: OutputFolder, recipe: Recipe, jobs: list[Job], methods: tuple[str, ...], plan, others=()
) -> list[Unit]:
    """Name each job's files by identity (call under the folder's lock): a file whose settings key the folder or a
    live run (``others``: their registrations) already holds keeps its name; a new job takes the number of its
    files already there, else the next number after every number in use. One unit per job, in order; a job with the
    same settings as an earlier one gets the earlier one's unit."""
    known, taken = folder.known_images()
    for other in others:
        for name, entry in other.get("names", {}).items():
            known.setdefault(entry[0], name)
            taken.add(name)
    fresh = itertools.count(max((i for i in map(name_index, taken) if i is not None), default=-1) + 1)
    units, by_name = [], {}
    for job in jobs:
        keys = [(method, image_key(recipe, job, method, plan)) for method in methods]
        if keys[0][1] in known and known[keys[0][1]] in by_name:
            units.append(by_name[known[keys[0][1]]])
            continue
        index = _reused_index(job, keys, known, taken)
        job = replace(job, index=next(fresh) if index is None else index)
        files = []
        for method, key in keys:
            name = known.get(key) or output_name(job, method)
            files.append((method, name, finished_settings(recipe, job, method, name, plan)))
            known.setdefault(key, name)
            taken.add(name)
        units.append(by_name.setdefault(files[0][1], Unit(job, files)))
    return units


def _unique(units: list[Unit]) -> list[Unit]:
    return list({id(unit): unit for unit in units}.values())


def live_runs(folder: OutputFolder, exclude=None) -> list[dict]:
    """The registrations of the live runs in the folder (but ``exclude``, a registration's path), with the names
    they will make; stale ones are removed (call under the lock)."""
    found = []
    for path in folder.path.glob(f"{_Registration.PREFIX}*.json"):
        if path == exclude:
            continue
        data = read_json(path)
        if data is None or not alive(data):
            unlink(path)
            continue
        found.append(data)
    return found


class _Registration:
    """This run's entry in the folder: the files it will make and their keys (``.fouriscale-run.TOKEN.json``)."""

    PREFIX = ".fouriscale-run."

    def __init__(self, folder: OutputFolder) -> None:
        self.folder = folder
        me = owner()
        self.path = folder.path / f"{self.PREFIX}{me['token']}-{me['pid']}.json"
        self.data = {**me, "names": {}}

    def name(self, units: list[Unit]) -> None:
        """Record the files of ``units`` (named by :func:`name_units`)."""
        self.data["names"] = {name: [s["key"], s["prompt"], s["method"]] for u in units for _, name, s in u.files}

    def others(self) -> list[dict]:
        """Live registrations of other runs (stale ones are removed; call under the lock)."""
        return live_runs(self.folder, self.path)

    def write(self) -> None:
        atomic_write_bytes(self.path, json.dumps(self.data, allow_nan=False).encode("utf-8"))

    def remove(self) -> None:
        with self.folder.lock:
            unlink(self.path)


def _check_and_register(folder: OutputFolder, units: list[Unit], registration: _Registration) -> None:
    """Refuse files that hold other settings than their manifest line says (a file replaced by hand: numbering by
    identity never names a file of other settings otherwise); then register (under the lock)."""
    registration.name(units)
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
        with state.split_between_processes(list(range(len(jobs)))) as share:
            mine = set(share)
    else:
        mine = set(range(len(jobs)))
    rank = state.process_index if state is not None else 0

    registration = _Registration(folder)
    result = BatchResult()
    with folder.lock:  # every process names the whole batch, so that they agree; each renders its share
        folder.remove_stale()
        others = registration.others()
        named = name_units(folder, recipe, jobs, methods, plan, others)
        units = _unique([unit for i, unit in enumerate(named) if i in mine])
        _check_and_register(folder, _unique(named), registration)
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


def _take(
    folder: OutputFolder, unit: Unit, pipe, recipe: Recipe, rank: int, result: BatchResult, bar, first_look: bool
) -> bool:
    """Make the missing files of ``unit`` unless another live run holds it; ``False`` when it must be waited for."""
    with folder.lock:
        missing = set()
        for _, name, settings in unit.files:
            if folder.holds(settings):
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


def _open(folder: OutputFolder, unit: Unit, method: str) -> Image.Image:
    name = next(n for m, n, _ in unit.files if m == method)
    with Image.open(folder.path / name) as image:
        return image.convert("RGB")


def _free_bytes(folder: OutputFolder) -> int | None:
    try:
        return shutil.disk_usage(folder.path).free
    except OSError:
        return None
