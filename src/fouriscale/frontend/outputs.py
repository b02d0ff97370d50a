"""Finished images on disk: safe names, atomic writes, settings embedded in the PNG, a JSON-lines manifest.

Every file is written to a temporary name in the same folder and renamed into place, so a crash never
leaves a half-written image or manifest line behind; a rerun recognises finished images by the
settings key stored inside them.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import threading
import unicodedata
from pathlib import Path

from filelock import FileLock
from PIL import Image, PngImagePlugin

from .errors import UserError

__all__ = [
    "slugify",
    "image_name",
    "compare_name",
    "encode_png",
    "differing_settings",
    "OutputFolder",
    "folder_lock",
    "TEMP_FILE",
    "settings_key",
    "a1111_parameters",
    "write_png",
    "read_settings",
    "Manifest",
    "atomic_write_bytes",
]

MANIFEST_NAME = "manifest.jsonl"
_SLUG_MAX = 48


def slugify(text: str, max_len: int = _SLUG_MAX) -> str:
    """A file-name-safe slug of ``text``: lowercase ASCII letters, digits and single hyphens, at most
    ``max_len`` characters, never empty (``"image"``). Path separators, dots and control characters
    cannot survive, so a prompt can neither traverse folders nor form a reserved Windows name."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")
    slug = slug[:max_len].rstrip("-")
    return slug or "image"


def image_name(index: int | str, seed: int, prompt: str, suffix: str = "") -> str:
    """``{index:05d}-{seed}-{slug}{suffix}.png``: the job's position (or a word such as ``compare``), its seed
    and the prompt's slug. Every file name the front ends write comes from here."""
    head = f"{index:05d}" if isinstance(index, int) else slugify(index)
    return f"{head}-{seed}-{slugify(prompt)}{suffix}.png"


def compare_name(seed: int, prompt: str, part: str) -> str:
    """File names of ``fouriscale compare``: ``compare-{seed}-{slug}-{part}.png`` (``part``: a variant, ``grid``
    or ``spectrum``)."""
    return image_name("compare", seed, prompt, f"-{slugify(part)}")


def settings_key(settings: dict) -> str:
    """Stable hash of the settings that determine an image (everything but bookkeeping fields and the paths of input
    pictures, which are identified by their content hashes)."""
    relevant = {k: v for k, v in settings.items() if k not in _NOT_KEYED}
    blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


_NOT_KEYED = ("key", "file", "version", "index", "rank", "input_files")


def _quote(value: str) -> str:
    return json.dumps(value) if ("," in value or ":" in value or '"' in value) else value


def a1111_parameters(settings: dict) -> str:
    """The settings in the AUTOMATIC1111 ``parameters`` convention (prompt, negative, then ``key: value`` pairs)."""
    lines = [settings.get("prompt", "")]
    if settings.get("negative_prompt"):
        lines.append(f"Negative prompt: {settings['negative_prompt']}")
    pairs = [
        ("Steps", settings.get("steps")),
        ("Sampler", settings.get("scheduler")),
        ("CFG scale", settings.get("guidance_scale")),
        ("Seed", settings.get("seed")),
        ("Size", f"{settings.get('width')}x{settings.get('height')}"),
        ("Model", settings.get("model")),
        ("Eta", settings.get("eta")),
        ("Lora", ", ".join(f"{lo['path']}:{lo['scale']:g}" for lo in settings.get("loras", [])) or None),
        ("Denoising strength", (settings.get("inputs") or {}).get("strength")),
        ("ControlNet", _controlnet_summary(settings)),
        ("Two pass", _two_pass_summary(settings)),
        ("Method", settings.get("method")),
        ("FouriScale", _fouriscale_summary(settings)),
        ("Version", f"fouriscale {settings.get('version')}"),
    ]
    lines.append(", ".join(f"{k}: {_quote(str(v))}" for k, v in pairs if v is not None))
    return "\n".join(lines)


def _controlnet_summary(settings: dict) -> str | None:
    nets = (settings.get("inputs") or {}).get("controlnets")
    return ", ".join(f"{c['model']}:{c['scale']:g}" for c in nets) if nets else None


def _two_pass_summary(settings: dict) -> str | None:
    two = settings.get("two_pass")
    if not two:
        return None
    first = two["first_pass"]
    return f"first {first['width']}x{first['height']}, {two['upscale']} upscale, strength {two['strength']:g}"


def _fouriscale_summary(settings: dict) -> str | None:
    """Short human form: the plan, then every option that differs from the paper's defaults."""
    if settings.get("method") != "fouriscale" or "fouriscale" not in settings:
        return None
    from ..config import FouriScaleConfig

    parts = []
    plan = settings.get("plan")
    if plan:
        bh, bw = plan["base_size"]
        parts.append(f"dilation {plan['dilation']}, base {bw:g}x{bh:g}, steps {plan['start_step']}-{plan['stop_step']}")
    defaults = FouriScaleConfig().to_dict()
    parts += [f"{k}={v}" for k, v in sorted(settings["fouriscale"].items()) if defaults.get(k) != v]
    return "; ".join(parts) or "defaults"


def encode_png(image: Image.Image, settings: dict | None = None) -> bytes:
    """``image`` as PNG bytes with ``settings`` as text chunks: ``parameters`` (A1111), ``fouriscale`` (strict
    JSON, every setting), ``Description`` (the prompt) and ``Software``."""
    info = PngImagePlugin.PngInfo()
    if settings is not None:
        info.add_itxt("parameters", a1111_parameters(settings))
        info.add_itxt("fouriscale", json.dumps(settings, sort_keys=True, allow_nan=False))
        info.add_itxt("Description", settings.get("prompt", ""))
        info.add_text("Software", f"fouriscale {settings.get('version', '')}".strip())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename. The file
    gets the usual permissions (``0666`` less the umask, so ``0644`` by default). A full disk or a refused
    write raises :class:`~fouriscale.frontend.errors.UserError` naming the path; nothing is left behind."""
    path = Path(path)
    tmp = _temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        if exc.errno in _DISK_FULL:
            raise UserError(
                f"no space left on the device while writing {path}; free some space and rerun "
                "(finished images are kept)"
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"cannot write {path} ({exc.strerror})") from None
        raise
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_png(image: Image.Image, path: str | os.PathLike, settings: dict | None = None) -> None:
    """Save ``image`` as PNG atomically with ``settings`` embedded (:func:`encode_png`)."""
    atomic_write_bytes(path, encode_png(image, settings))


def read_settings(path: str | os.PathLike) -> dict | None:
    """The settings embedded by :func:`write_png`, or ``None`` if the file is missing or carries none."""
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}) or {}
            raw = text.get("fouriscale")
    except (OSError, ValueError, SyntaxError):
        return None
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None


def differing_settings(ours: dict, theirs: dict, limit: int = 3) -> str:
    """``"steps: 20 there, 10 here"``-style summary of the settings two images differ in (bookkeeping fields
    left out, nested FouriScale options as ``fouriscale.NAME``); at most ``limit`` named, then a count."""

    def flat(settings: dict) -> dict:
        out = {}
        for key, value in settings.items():
            if key in _BOOKKEEPING:
                continue
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    a, b = flat(ours), flat(theirs)
    names = [k for k in list(a) + [k for k in b if k not in a] if a.get(k, _MISSING) != b.get(k, _MISSING)]
    parts = [f"{k}: {_show(b.get(k, _MISSING))} there, {_show(a.get(k, _MISSING))} here" for k in names[:limit]]
    if len(names) > limit:
        parts.append(f"{len(names) - limit} more")
    return "; ".join(parts) or "unknown"


_BOOKKEEPING = ("key", "file", "version", "index", "rank", "plan", "input_files")
_MISSING = object()


def _show(value) -> str:
    if value is _MISSING:
        return "unset"
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: Temporary files of this tool: ``.NAME.RANDOM.tmp`` (earlier versions: ``.NAME.XXXXXXXX.tmp`` from mkstemp),
#: claims included (``..NAME.png.claim.RANDOM.tmp``, left when a run is killed while claiming).
TEMP_FILE = re.compile(r"^\..+\.(png|jsonl|json|txt|claim)\.[A-Za-z0-9_]{6,}\.tmp$")
LOCK_NAME = ".fouriscale.lock"
CLAIM_SUFFIX = ".claim"
_LOCKS: dict[str, FileLock] = {}
_LOCKS_GUARD = threading.Lock()


def folder_lock(folder: str | os.PathLike) -> FileLock:
    """The inter-process lock of an output folder (one object per folder and process)."""
    key = os.path.abspath(os.path.join(os.fspath(folder), LOCK_NAME))
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = FileLock(key)
        return lock


def _process_start(pid: int) -> str:
    """A token that changes when a process id is reused (Linux: start time in clock ticks; elsewhere empty)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(owner: dict) -> bool:
    """Whether the process that wrote a claim is still running (claims from other hosts count as alive)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return owner.get("token") == _OWNER["token"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, not ours to signal
        pass
    return not owner.get("start") or owner.get("start") == _process_start(pid)


_OWNER = {
    "pid": os.getpid(),
    "host": socket.gethostname(),
    "start": _process_start(os.getpid()),
    "token": secrets.token_hex(8),
}


def _owner() -> dict:
    if _OWNER["pid"] != os.getpid():  # forked
        _OWNER.update(pid=os.getpid(), start=_process_start(os.getpid()), token=secrets.token_hex(8))
    return dict(_OWNER)


class OutputFolder:
    """An output folder shared safely by processes: one lock, stale leftovers removed, per-job claims, and
    files committed together with their manifest line (so the manifest describes exactly the files on disk).

    All temporary files are written while the folder lock is held, so any temporary file of this tool seen
    under the lock is a leftover of a killed run and is removed by :meth:`prepare`.
    """

    def __init__(self, path: str | os.PathLike, option: str = "--out") -> None:
        self.path = Path(path)
        self.option = option
        self._lock: FileLock | None = None
        self._manifest: Manifest | None = None
        self._claims: set[str] = set()

    @property
    def lock(self) -> FileLock:
        if self._lock is None:
            self._lock = folder_lock(self.path)
        return self._lock

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = Manifest(self.path, lock=self.lock)
        return self._manifest

    def prepare(self, bytes_needed: int = 0) -> OutputFolder:
        """Create the folder, check that it is a writable folder with ``bytes_needed`` free, and remove stale
        temporary files and claims. Raises :class:`UserError` (before any work) otherwise; returns ``self``."""
        where = f"{self.option} {self.path}"
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{where}: is a file, not a folder; choose a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{where}: cannot create the folder ({exc.strerror or exc})") from None
        probe = self.path / f".fouriscale-probe.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            raise UserError(f"{where}: the folder is not writable ({exc.strerror or exc})") from None
        finally:
            _unlink(probe)
        if bytes_needed:
            free = shutil.disk_usage(self.path).free
            if free < bytes_needed:
                raise UserError(
                    f"{where}: only {free / 2**20:.1f} MiB free, the next image needs up to "
                    f"{bytes_needed / 2**20:.1f} MiB; free some space or choose another folder"
                )
        try:
            with self.lock:
                self.remove_stale()
        except OSError as exc:
            raise UserError(f"{where}: cannot lock the folder ({exc.strerror or exc})") from None
        return self

    def remove_stale(self) -> list[str]:
        """Remove this tool's temporary files and the claims of processes that are gone (call under the lock)."""
        removed = []
        for entry in os.scandir(self.path):
            name = entry.name
            if not name.startswith("."):
                continue
            if TEMP_FILE.match(name) or name.startswith(".fouriscale-probe."):
                _unlink(Path(entry.path))
                removed.append(name)
            elif name.endswith(CLAIM_SUFFIX):
                owner = _read_json(Path(entry.path))
                if owner is None or not _alive(owner):
                    _unlink(Path(entry.path))
                    removed.append(name)
        return removed

    def _claim_path(self, name: str) -> Path:
        return self.path / f".{name}{CLAIM_SUFFIX}"

    def claim_owner(self, name: str) -> dict | None:
        """The live owner of ``name``'s claim (``None`` if unclaimed or stale; call under the lock)."""
        owner = _read_json(self._claim_path(name))
        if owner is None:
            return None
        if not _alive(owner):
            _unlink(self._claim_path(name))
            return None
        return owner

    def claim(self, name: str, info: dict | None = None) -> bool:
        """Claim ``name`` for this process unless a live process holds it (call under the lock)."""
        if self.claim_owner(name) is not None:
            return False
        owner = dict(_owner(), **(info or {}))
        atomic_write_bytes(self._claim_path(name), json.dumps(owner, allow_nan=False).encode("utf-8"))
        self._claims.add(name)
        return True

    def release(self, name: str) -> None:
        """Give up this process's claim on ``name``."""
        with self.lock:
            owner = _read_json(self._claim_path(name))
            if owner is not None and owner.get("token") == _owner()["token"] and owner.get("pid") == os.getpid():
                _unlink(self._claim_path(name))
        self._claims.discard(name)

    def release_all(self) -> None:
        for name in list(self._claims):
            self.release(name)

    def commit(self, name: str, data: bytes, settings: dict | None = None) -> None:
        """Write ``data`` as ``name`` atomically and, with ``settings``, add its manifest line, both under the
        folder lock."""
        with self.lock:
            atomic_write_bytes(self.path / name, data)
            if settings is not None:
                self.manifest.add(settings)


def _read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class Manifest:
    """``manifest.jsonl`` of an output folder: one JSON line per finished image, shared safely by processes.

    Append-only: each line goes out in one write followed by ``fsync`` under the folder's lock, so every
    complete line is valid; a line torn by a crash is skipped by readers and fenced off by the next append.
    Lines are strict JSON (``nan``/``inf`` refused). Lines other processes appended are read before each
    append, so no (key, file) pair is written twice.
    """

    def __init__(self, folder: str | os.PathLike, lock: FileLock | None = None) -> None:
        self.path = Path(folder) / MANIFEST_NAME
        self._lock = lock or folder_lock(folder)
        self._known: set = set()
        self._offset = 0

    def entries(self) -> list[dict]:
        """All well-formed lines."""
        if not self.path.exists():
            return []
        entries = []
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries

    def _catch_up(self) -> None:
        """Read the lines appended since the last look (under the lock)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            self._known, self._offset = set(), 0
            return
        if size < self._offset:  # replaced or truncated: start over
            self._known, self._offset = set(), 0
        if size == self._offset:
            return
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1
        for line in chunk[:end].splitlines():
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(entry, dict):
                self._known.add((entry.get("key"), entry.get("file")))
        self._offset += end

    def add(self, entry: dict) -> bool:
        """Append ``entry`` unless one with the same key and file is there; returns whether it was added."""
        ident = (entry.get("key"), entry.get("file"))
        data = (json.dumps(entry, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        with self._lock:
            self._catch_up()
            if ident in self._known:
                return False
            with open(self.path, "ab+") as fh:
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        data = b"\n" + data  # fence off a torn line
                try:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                except OSError as exc:
                    if exc.errno in _DISK_FULL:
                        raise UserError(
                            f"no space left on the device while writing {self.path}; free some space "
                            "and rerun (finished images are kept)"
                        ) from None
                    raise
            self._catch_up()
        return True
