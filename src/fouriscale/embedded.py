"""Settings stored with images: one writer and one reader for every front end and the evaluation.

Each PNG this project writes carries its settings twice (:func:`png_info`): as strict JSON in the ``fouriscale``
text chunk (every setting, exactly) and as AUTOMATIC1111's ``parameters`` text (prompt, ``Negative prompt:``, then
one ``Steps: ...`` line of ``key: value`` pairs), which other viewers read. A folder of images also holds
``manifest.jsonl``, one JSON line per image.

Reading (:func:`embedded_prompt`) prefers the JSON; A1111 text (a PNG chunk, or the EXIF user comment of JPEG and
WebP files) is split by :func:`parse_a1111`: the settings line is the *last* line starting with ``Steps:``, so a
prompt may hold such a line itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from PIL import Image, PngImagePlugin

from .config import FouriScaleConfig

__all__ = [
    "MANIFEST_NAME",
    "SETTINGS_CHUNK",
    "EmbeddedPrompt",
    "a1111_parameters",
    "parse_a1111",
    "png_info",
    "settings_from_info",
    "embedded_prompt",
    "read_embedded_prompt",
    "manifest_prompts",
]

MANIFEST_NAME = "manifest.jsonl"
SETTINGS_CHUNK = "fouriscale"
_USER_COMMENT = 0x9286  # EXIF tag of A1111's parameters in JPEG and WebP files
_EXIF_IFD = 0x8769


class EmbeddedPrompt(NamedTuple):
    """The prompt a picture carries, its negative prompt, and where it was found."""

    prompt: str
    negative: str
    source: str  # "its embedded fouriscale settings", "its A1111 parameters" or "its A1111 parameters (EXIF)"


# -- writing ---------------------------------------------------------------------------------------------------------


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
    parts = []
    plan = settings.get("plan")
    if plan:
        bh, bw = plan["base_size"]
        parts.append(f"dilation {plan['dilation']}, base {bw:g}x{bh:g}, steps {plan['start_step']}-{plan['stop_step']}")
    defaults = FouriScaleConfig().to_dict()
    parts += [f"{k}={v}" for k, v in sorted(settings["fouriscale"].items()) if defaults.get(k) != v]
    return "; ".join(parts) or "defaults"


def png_info(settings: dict) -> PngImagePlugin.PngInfo:
    """PNG text chunks of ``settings``: ``parameters`` (A1111), ``fouriscale`` (strict JSON, every setting),
    ``Description`` (the prompt) and ``Software``."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", a1111_parameters(settings))
    info.add_itxt(SETTINGS_CHUNK, json.dumps(settings, sort_keys=True, allow_nan=False))
    info.add_itxt("Description", settings.get("prompt", ""))
    info.add_text("Software", f"fouriscale {settings.get('version', '')}".strip())
    return info


# -- reading ---------------------------------------------------------------------------------------------------------


def parse_a1111(text: str) -> tuple[str, str]:
    """``(prompt, negative prompt)`` of an AUTOMATIC1111 ``parameters`` text: the prompt lines, an optional
    ``Negative prompt:`` part, then the last ``Steps: ...`` line, the settings (dropped)."""
    lines = text.strip().splitlines()
    last = max((i for i, line in enumerate(lines) if re.match(r"\s*Steps: ", line)), default=len(lines))
    prompt: list[str] = []
    negative: list[str] = []
    current = prompt
    for line in lines[:last]:
        if current is prompt and line.startswith("Negative prompt:"):
            current = negative
            line = line[len("Negative prompt:") :]
        current.append(line)
    return "\n".join(prompt).strip(), "\n".join(negative).strip()


def settings_from_info(info: Mapping) -> dict | None:
    """The ``fouriscale`` settings in a picture's text metadata (Pillow's ``image.info`` or ``image.text``)."""
    raw = info.get(SETTINGS_CHUNK)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str):
        return None
    try:
        settings = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return settings if isinstance(settings, dict) else None


def embedded_prompt(info: Mapping, exif_comment: str | None = None) -> EmbeddedPrompt | None:
    """The prompt in a picture's metadata: its ``fouriscale`` settings (exactly as given), else A1111's
    ``parameters`` (a text chunk, else ``exif_comment``); ``None`` when there is none."""
    settings = settings_from_info(info)
    if settings is not None and isinstance(settings.get("prompt"), str) and settings["prompt"].strip():
        negative = settings.get("negative_prompt")
        return EmbeddedPrompt(
            settings["prompt"], negative if isinstance(negative, str) else "", "its embedded fouriscale settings"
        )
    parameters = info.get("parameters")
    if isinstance(parameters, bytes):
        parameters = parameters.decode("utf-8", "replace")
    for text, where in ((parameters, "its A1111 parameters"), (exif_comment, "its A1111 parameters (EXIF)")):
        if isinstance(text, str) and text.strip():
            prompt, negative = parse_a1111(text)
            if prompt:
                return EmbeddedPrompt(prompt, negative, where)
    return None


def _exif_comment(image: Image.Image) -> str | None:
    try:
        raw = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # a broken EXIF block is not worth failing for
        return None
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes) or len(raw) < 8:
        return None
    head, body = raw[:8], raw[8:]
    if head.startswith(b"UNICODE"):
        for encoding in ("utf-16-be", "utf-16-le"):
            try:
                text = body.decode(encoding)
            except UnicodeDecodeError:
                continue
            if text.isprintable() or "\n" in text:
                return text
        return None
    return body.decode("utf-8", errors="replace") if head.startswith(b"ASCII") else None


def read_embedded_prompt(path: str | Path) -> EmbeddedPrompt | None:
    """:func:`embedded_prompt` of a picture file (text chunks and the EXIF user comment); ``None`` when the file
    cannot be read or carries no prompt."""
    try:
        with Image.open(Path(path).expanduser()) as image:
            info = dict(getattr(image, "text", None) or {})
            info.update({k: v for k, v in image.info.items() if isinstance(v, (str, bytes))})
            comment = _exif_comment(image)
    except (OSError, ValueError, SyntaxError):
        return None
    return embedded_prompt(info, comment)


def manifest_prompts(folder: str | Path) -> dict[str, str]:
    """``file`` -> ``prompt`` from ``folder/manifest.jsonl`` (keys: each entry's file and its base name); broken
    lines are skipped."""
    path = Path(folder) / MANIFEST_NAME
    table: dict[str, str] = {}
    if not path.is_file():
        return table
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return table
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("prompt"), str):
            table.setdefault(entry["file"], entry["prompt"])
            table.setdefault(Path(entry["file"]).name, entry["prompt"])
    return table
