"""Fitting input pictures to a target size (pure Pillow, no diffusers): one documented rule for every front end.

An init image, inpainting mask or control image whose size differs from the target is

* resized (Lanczos; masks: nearest, so they stay binary) when its aspect ratio is within 1% of the
  target's;
* otherwise centre-cropped to the target's aspect ratio first, then resized.

Nothing is padded or stretched. :func:`fit_image` says what it did, so front ends can show it.
"""

from __future__ import annotations

from PIL import Image

__all__ = ["ASPECT_TOLERANCE", "fit_image", "centre_crop_box"]

#: Relative aspect-ratio difference up to which an image is only resized, not cropped.
ASPECT_TOLERANCE = 0.01


def centre_crop_box(size: tuple[int, int], aspect: float) -> tuple[int, int, int, int]:
    """The largest centred box ``(left, top, right, bottom)`` of width/height ``aspect`` inside ``size = (w, h)``."""
    w, h = size
    if w / h > aspect:  # too wide: crop the sides
        cw, ch = max(1, round(h * aspect)), h
    else:  # too tall: crop top and bottom
        cw, ch = w, max(1, round(w / aspect))
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, left + cw, top + ch


def fit_image(image: Image.Image, height: int, width: int, *, mask: bool = False) -> tuple[Image.Image, str | None]:
    """``image`` at ``width`` x ``height`` by the rule above; returns ``(image, note)`` where ``note`` says what was
    done (``None`` when the image already had the target size)."""
    w, h = image.size
    if (w, h) == (width, height):
        return image, None
    resample = Image.NEAREST if mask else Image.LANCZOS
    target, actual = width / height, w / h
    notes = []
    if abs(actual / target - 1) > ASPECT_TOLERANCE:
        box = centre_crop_box((w, h), target)
        image = image.crop(box)
        notes.append(f"centre-cropped from {w}x{h} to {box[2] - box[0]}x{box[3] - box[1]} (the target's aspect ratio)")
    cw, ch = image.size
    if (cw, ch) != (width, height):  # a crop may already give the target size
        image = image.resize((width, height), resample)
        verb = "upscaled" if width > cw else "downscaled"
        notes.append(f"{verb} from {cw}x{ch} to {width}x{height}")
    return image, "; ".join(notes)
