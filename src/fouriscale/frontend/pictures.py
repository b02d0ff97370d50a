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
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..images import fit_image
from .errors import UserError, one_line

__all__ = ["Picture", "read_picture"]


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
