"""Pictures the front ends take in: img2img init images, inpainting masks, ControlNet conditioning images.

Each picture is checked when the command starts, before any model is loaded: it must exist, be a file and decode
completely (a missing, truncated or non-image file is one :class:`~fouriscale.frontend.errors.UserError` line). It
is identified by the SHA-256 of its bytes, which goes into the settings key of every image made from it, so a
changed input is never taken for a finished job. At render time it is read again (and must still have that hash)
and fitted to the target size by the library's one rule, :func:`fouriscale.images.fit_image`.

:func:`embedded_prompt` reads the prompt a picture carries: the ``fouriscale`` settings this tool embeds, or the
AUTOMATIC1111 ``parameters`` text (PNG text chunk, or the EXIF user comment of JPEG/WebP files).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import UserError, one_line

__all__ = ["Picture", "read_picture", "embedded_prompt", "parse_a1111", "fit_note"]


@dataclass(frozen=True)
class Picture:
    """An input picture: where it is, the hash of its bytes and its size in pixels."""

    path: str
    sha256: str
    width: int
    height: int
    option: str = "--init-image"

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def record(self) -> dict:
        """What the settings (and their key) hold about the picture: its content hash and size, not its path."""
        return {"sha256": self.sha256, "size": [self.width, self.height]}

    def image(self, mode: str = "RGB") -> Image.Image:
        """The picture, read again and converted to ``mode``; ``UserError`` if the file changed since it was checked."""
        data = _read_bytes(Path(self.path).expanduser(), self.option, self.path)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise UserError(
                f"{self.option} {self.path}: the file changed while the run was going on; rerun to use the new "
                "picture (finished images are kept)"
            )
        return _decode(data, self.option, self.path).convert(mode)

    def fitted(self, height: int, width: int, mask: bool = False) -> tuple[Image.Image, str | None]:
        """The picture at ``width`` x ``height`` by :func:`fouriscale.images.fit_image` (a mask in mode ``L``,
        resized with nearest neighbours), and the note saying what was done (``None``: the size was right)."""
        from ..images import fit_image

        return fit_image(self.image("L" if mask else "RGB"), height, width, mask=mask)


def _read_bytes(path: Path, option: str, shown: str) -> bytes:
    if not path.exists():
        raise UserError(f"{option} {shown}: no such file")
    if path.is_dir():
        raise UserError(f"{option} {shown}: is a folder, not a picture")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"{option} {shown}: cannot read it ({exc.strerror or one_line(exc, 120)})") from None


def _decode(data: bytes, option: str, shown: str) -> Image.Image:
    """The fully decoded picture; a non-image, truncated or absurdly large file is a ``UserError``."""
    if not data:
        raise UserError(f"{option} {shown}: the file is empty, not a picture")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise UserError(
            f"{option} {shown}: not a picture this tool can read (PNG, JPEG, WebP, BMP, TIFF, ...)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise UserError(f"{option} {shown}: too large to open safely ({one_line(exc, 160)})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{option} {shown}: the picture is truncated or corrupt ({one_line(exc, 120)})") from None
    return image


def read_picture(path: str, option: str = "--init-image") -> Picture:
    """Check a picture file (exists, decodes completely) and return its :class:`Picture`; ``UserError`` (naming
    ``option`` and the path) otherwise."""
    shown = str(path)
    data = _read_bytes(Path(shown).expanduser(), option, shown)
    image = _decode(data, option, shown)
    return Picture(shown, hashlib.sha256(data).hexdigest(), image.width, image.height, option)


def fit_note(picture: Picture, note: str | None) -> str | None:
    """The warning line for a picture fitted to the target size (``None`` when nothing needs saying)."""
    return None if note is None else f"{picture.option} {picture.path}: {note}"


# ------------------------------------------------------------------------------------------ embedded prompts

_USER_COMMENT = 0x9286  # EXIF tag of A1111's parameters in JPEG and WebP files
_EXIF_IFD = 0x8769


def parse_a1111(text: str) -> tuple[str, str]:
    """``(prompt, negative prompt)`` of an AUTOMATIC1111 ``parameters`` text: the prompt lines, an optional
    ``Negative prompt:`` part, then the ``Steps: ...`` line of settings (which is dropped)."""
    lines = text.strip().splitlines()
    last = max((i for i, line in enumerate(lines) if re.match(r"\s*Steps: ", line)), default=len(lines))
    prompt: list[str] = []
    negative: list[str] = []
    current = prompt
    for line in lines[:last]:
        if line.startswith("Negative prompt:"):
            current = negative
            line = line[len("Negative prompt:") :]
        current.append(line)
    return "\n".join(prompt).strip(), "\n".join(negative).strip()


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


def embedded_prompt(picture: Picture) -> tuple[str, str, str] | None:
    """``(prompt, negative prompt, where it came from)`` a picture carries, or ``None``: the ``fouriscale``
    settings this tool embeds, else A1111's ``parameters`` (PNG text chunk, or EXIF user comment)."""
    try:
        with Image.open(Path(picture.path).expanduser()) as image:
            info = dict(getattr(image, "text", None) or {})
            info.update({k: v for k, v in image.info.items() if isinstance(v, str)})
            comment = _exif_comment(image)
    except (OSError, ValueError, SyntaxError):
        return None
    raw = info.get("fouriscale")
    if raw:
        try:
            settings = json.loads(raw)
        except json.JSONDecodeError:
            settings = None
        if isinstance(settings, dict) and isinstance(settings.get("prompt"), str) and settings["prompt"].strip():
            negative = settings.get("negative_prompt") if isinstance(settings.get("negative_prompt"), str) else ""
            return settings["prompt"].strip(), negative.strip(), "its embedded fouriscale settings"
    for text, where in ((info.get("parameters"), "its A1111 parameters"), (comment, "its A1111 parameters (EXIF)")):
        if text and text.strip():
            prompt, negative = parse_a1111(text)
            if prompt:
                return prompt, negative, where
    return None
