"""Finished images as files: safe names, settings keys, PNGs with their settings embedded, atomic writes.

Every file is written to a temporary name in the same folder and renamed into place, so a crash never leaves a
half-written image behind; a rerun recognises finished images by the settings key stored inside them
(:mod:`fouriscale.embedded` is the format of the settings in a PNG). The folder these files live in, shared safely
by processes, is :mod:`.folder`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import secrets
import unicodedata
from pathlib import Path

from PIL import Image

from ..embedded import png_info, settings_from_info
from .errors import UserError

__all__ = [
    "slugify",
    "image_name",
    "name_index",
    "compare_name",
    "encode_png",
    "differing_settings",
    "settings_key",
    "write_png",
    "read_settings",
    "atomic_write_bytes",
    "unlink",
    "DISK_FULL",
]

_SLUG_MAX = 48


def slugify(text: str, max_len: int = _SLUG_MAX) -> str:
    """A file-name-safe slug of ``text``: lowercase ASCII letters, digits and single hyphens, at most
    ``max_len`` characters, never empty (``"image"``). Path separators, dots and control characters
    cannot survive, so a prompt can neither traverse folders nor form a reserved Windows name."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")
    slug = slug[:max_len].rstrip("-")
    return slug or "image"


def name_index(name: str) -> int | None:
    """The number a file name starts with (``00012-23-a-cat.png`` -> 12), ``None`` for other names."""
    match = re.match(r"(\d+)-", name)
    return int(match.group(1)) if match else None


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
    if isinstance(relevant.get("two_pass"), dict):  # where the first pass is saved is bookkeeping too
        relevant["two_pass"] = {k: v for k, v in relevant["two_pass"].items() if k != "first_file"}
    blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


#: Bookkeeping, and what a memory budget chose ("memory": the settings it changed are in "fouriscale").
_NOT_KEYED = ("key", "file", "version", "index", "rank", "input_files", "memory")


def encode_png(image: Image.Image, settings: dict | None = None) -> bytes:
    """``image`` as PNG bytes with ``settings`` embedded (:func:`fouriscale.embedded.png_info`)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(settings) if settings is not None else None)
    return buffer.getvalue()


#: ``errno`` values of a full disk or quota.
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


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
        unlink(tmp)
        if exc.errno in DISK_FULL:
            raise UserError(
                f"no space left on the device while writing {path}; free some space and rerun "
                "(finished images are kept)"
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"cannot write {path} ({exc.strerror})") from None
        raise
    except BaseException:
        unlink(tmp)
        raise


def unlink(path: Path) -> None:
    """Remove ``path`` if it is there (no error when it is not)."""
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
    except (OSError, ValueError, SyntaxError):
        return None
    return settings_from_info(text)


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
