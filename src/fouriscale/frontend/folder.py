"""An output folder shared safely by processes: one lock, claims of the jobs being made, a JSON-lines manifest.

Runs (CLI batches, the web UI, several processes or machines) coordinate through the folder's lock file
(``.fouriscale.lock``): every temporary file is written while it is held, so one seen under the lock is a leftover
of a killed run and is removed; a job being made is claimed (``.NAME.claim``, holding its owner's process id,
start time and a random token), and a claim whose process is gone is stale. Files are committed together with
their manifest line, so the manifest describes exactly the files on disk.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import threading
from pathlib import Path

from filelock import FileLock

from ..embedded import MANIFEST_NAME
from .errors import UserError
from .files import DISK_FULL, atomic_write_bytes, encode_png, unlink

__all__ = [
    "OutputFolder",
    "Manifest",
    "folder_lock",
    "TEMP_FILE",
    "LOCK_NAME",
    "owner",
    "alive",
    "read_json",
]

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


def alive(record: dict) -> bool:
    """Whether the process that wrote a claim (or a run's registration) is still running; claims from other hosts
    count as alive."""
    if record.get("host") != socket.gethostname():
        return True
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return record.get("token") == _OWNER["token"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, not ours to signal
        pass
    return not record.get("start") or record.get("start") == _process_start(pid)


_OWNER = {
    "pid": os.getpid(),
    "host": socket.gethostname(),
    "start": _process_start(os.getpid()),
    "token": secrets.token_hex(8),
}


def owner() -> dict:
    """This process as the owner of a claim: host, pid, start time and a random token (renewed after a fork)."""
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
            unlink(probe)
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
                unlink(Path(entry.path))
                removed.append(name)
            elif name.endswith(CLAIM_SUFFIX):
                record = read_json(Path(entry.path))
                if record is None or not alive(record):
                    unlink(Path(entry.path))
                    removed.append(name)
        return removed

    def _claim_path(self, name: str) -> Path:
        return self.path / f".{name}{CLAIM_SUFFIX}"

    def claim_owner(self, name: str) -> dict | None:
        """The live owner of ``name``'s claim (``None`` if unclaimed or stale; call under the lock)."""
        record = read_json(self._claim_path(name))
        if record is None:
            return None
        if not alive(record):
            unlink(self._claim_path(name))
            return None
        return record

    def claim(self, name: str, info: dict | None = None) -> bool:
        """Claim ``name`` for this process unless a live process holds it (call under the lock)."""
        if self.claim_owner(name) is not None:
            return False
        record = dict(owner(), **(info or {}))
        atomic_write_bytes(self._claim_path(name), json.dumps(record, allow_nan=False).encode("utf-8"))
        self._claims.add(name)
        return True

    def release(self, name: str) -> None:
        """Give up this process's claim on ``name``."""
        with self.lock:
            record = read_json(self._claim_path(name))
            if record is not None and record.get("token") == owner()["token"] and record.get("pid") == os.getpid():
                unlink(self._claim_path(name))
        self._claims.discard(name)

    def release_all(self) -> None:
        for name in list(self._claims):
            self.release(name)

    def save(self, image, settings: dict, rank: int = 0) -> None:
        """Write a finished image as ``settings["file"]`` with its settings embedded (atomic PNG) and its manifest
        line (with the ``rank`` of the process that made it), in one step under the lock."""
        self.commit(settings["file"], encode_png(image, settings), dict(settings, rank=rank))

    def commit(self, name: str, data: bytes, settings: dict | None = None) -> None:
        """Write ``data`` as ``name`` atomically and, with ``settings``, add its manifest line, both under the
        folder lock."""
        with self.lock:
            atomic_write_bytes(self.path / name, data)
            if settings is not None:
                self.manifest.add(settings)


def read_json(path: Path) -> dict | None:
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
                    if exc.errno in DISK_FULL:
                        raise UserError(
                            f"no space left on the device while writing {self.path}; free some space "
                            "and rerun (finished images are kept)"
                        ) from None
                    raise
            self._catch_up()
        return True
