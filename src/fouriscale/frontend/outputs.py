"""Finished images on disk: safe names, atomic writes, settings embedded in the PNG, a JSON-lines manifest.

Every file is written to a temporary name in the same folder and renamed into place, so a crash never
leaves a half-written image or manifest line behind; a rerun recognises finished images by the
settings key stored inside them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import unicodedata
from pathlib import Path

from filelock import FileLock
from PIL import Image, PngImagePlugin

__all__ = [
    "slugify",
    "image_name",
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


def image_name(index: int, seed: int, prompt: str, suffix: str = "") -> str:
    """``{index:05d}-{seed}-{slug}{suffix}.png``: the job's position, its seed and the prompt's slug."""
    return f"{index:05d}-{seed}-{slugify(prompt)}{suffix}.png"


def settings_key(settings: dict) -> str:
    """Stable hash of the settings that determine an image (everything but bookkeeping fields)."""
    relevant = {k: v for k, v in settings.items() if k not in ("key", "file", "version", "index", "rank")}
    blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


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
        ("Method", settings.get("method")),
        ("FouriScale", _fouriscale_summary(settings)),
        ("Version", f"fouriscale {settings.get('version')}"),
    ]
    lines.append(", ".join(f"{k}: {_quote(str(v))}" for k, v in pairs if v is not None))
    return "\n".join(lines)


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_png(image: Image.Image, path: str | os.PathLike, settings: dict | None = None) -> None:
    """Save ``image`` as PNG atomically, with ``settings`` as text chunks: ``parameters`` (A1111),
    ``fouriscale`` (JSON, every setting), ``Description`` (the prompt) and ``Software``."""
    info = PngImagePlugin.PngInfo()
    if settings is not None:
        info.add_itxt("parameters", a1111_parameters(settings))
        info.add_itxt("fouriscale", json.dumps(settings, sort_keys=True))
        info.add_itxt("Description", settings.get("prompt", ""))
        info.add_text("Software", f"fouriscale {settings.get('version', '')}".strip())
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buffer.getvalue())


def read_settings(path: str | os.PathLike) -> dict | None:
    """The settings embedded by :func:`write_png`, or ``None`` if the file is missing or carries none."""
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}) or {}
            raw = text.get("fouriscale")
    except (OSError, ValueError):
        return None
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None


class Manifest:
    """``manifest.jsonl`` of an output folder: one JSON line per finished image, shared safely by processes.

    Append-only: each line goes out in one write followed by ``fsync`` under a file lock, so every complete
    line is valid; a line torn by a crash is skipped by readers and fenced off by the next append.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / MANIFEST_NAME
        self._lock = FileLock(str(Path(folder) / ".manifest.lock"))
        self._known: set | None = None

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

    def add(self, entry: dict) -> bool:
        """Append ``entry`` unless one with the same key and file is there; returns whether it was added."""
        ident = (entry.get("key"), entry.get("file"))
        data = (json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self._known is None:
                self._known = {(e.get("key"), e.get("file")) for e in self.entries()}
            if ident in self._known:
                return False
            with open(self.path, "ab+") as fh:
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        data = b"\n" + data  # fence off a torn line
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            self._known.add(ident)
        return True
