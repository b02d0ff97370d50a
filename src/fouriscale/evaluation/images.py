"""The images: finding and checking the files (headers only, before any network is loaded), then decoding them
to 8-bit RGB, cutting the seeded crops and resizing to the metric input, one batch at a time."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import one_line
from .protocol import IMAGE_SUFFIXES, MIN_IMAGES

__all__ = [
    "Batch",
    "ImageRecord",
    "ImageSets",
    "crop_boxes",
    "decode_batch",
    "find_images",
    "load_rgb",
    "resize_image",
    "scan_images",
    "scan_sets",
    "to_rgb",
]


# ----------------------------------------------------------------------------------------------------------
# small pure helpers
# ----------------------------------------------------------------------------------------------------------


def find_images(source: str | os.PathLike | Sequence[str | os.PathLike], what: str = "images") -> list[Path]:
    """The image files of ``source``: a folder (non-recursive, suffixes :data:`IMAGE_SUFFIXES`, any case,
    sorted by name) or a list of paths (kept in the given order). ``ValueError`` if the folder is missing
    or holds no image, or a listed file is missing."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.exists():
            raise ValueError(f"{what} folder {str(folder)!r} does not exist")
        if not folder.is_dir():
            raise ValueError(f"{what} {str(folder)!r} is not a folder; give a folder of images")
        files = sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=lambda p: p.name
        )
        if not files:
            raise ValueError(f"{what} folder {str(folder)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
        return files
    files = [Path(p) for p in source]
    if not files:
        raise ValueError(f"{what}: the list of images is empty")
    for path in files:
        if not path.is_file():
            raise ValueError(f"{what}: {str(path)!r} does not exist or is not a file")
    return files


def crop_boxes(
    width: int, height: int, crop_size: int, n: int, seed: int, index: int
) -> list[tuple[int, int, int, int]]:
    """``n`` square boxes ``(left, top, right, bottom)`` of ``crop_size`` pixels inside a ``width`` x ``height``
    image, at uniformly drawn integer positions.

    Deterministic from ``(seed, index, width, height)`` only (not from pixels, folder or platform: Python's
    string-seeded ``random.Random``), so every method evaluated with the same seed and image sizes gets the
    same boxes for its ``index``-th image. ``ValueError`` if the crop does not fit.
    """
    if n < 0:
        raise ValueError(f"crops {n}: must be 0 or more")
    if crop_size <= 0:
        raise ValueError(f"crop size {crop_size}: must be a positive number of pixels")
    if crop_size > width or crop_size > height:
        raise ValueError(f"crop size {crop_size} does not fit in a {width}x{height} image")
    rng = random.Random(f"fouriscale-crops/{int(seed)}/{int(index)}/{int(width)}x{int(height)}")
    boxes = []
    for _ in range(n):
        left = rng.randint(0, width - crop_size)
        top = rng.randint(0, height - crop_size)
        boxes.append((left, top, left + crop_size, top + crop_size))
    return boxes


def resize_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` resized to ``size = (height, width)`` with Pillow's antialiased bicubic filter, aspect ratio
    not preserved; returned unchanged if it already has that size."""
    height, width = size
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of ``image``: ``convert("RGB")`` (alpha dropped) for every mode, except 16-bit grey
    (``I;16*`` and ``I``) scaled from 0-65535 to 0-255 and ``F`` clipped to 0-255 first."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float64)
        grey = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey, "L")
    elif mode == "F":
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey, "L")
    return image.convert("RGB")


# ----------------------------------------------------------------------------------------------------------
# checking the inputs (header reads only)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ImageRecord:
    """One image file as scanned: its index in its set, size and mode; its prompt (and where it came from)."""

    path: Path
    index: int
    width: int
    height: int
    mode: str
    prompt: str | None = None
    prompt_source: str | None = None


@dataclass
class ImageSets:
    """The scanned real and fake images, the fake images' text metadata (for their prompts) and the fake images
    the CLIP score is computed on (those with a prompt; filled by :func:`.prompts.select_prompted`)."""

    real: list[ImageRecord]
    fake: list[ImageRecord]
    fake_infos: list[dict]
    prompted: list[ImageRecord] = field(default_factory=list)


def scan_images(
    files: list[Path], what: str, crop_size: int | None, want_info: bool
) -> tuple[list[ImageRecord], list[dict]]:
    """Open and verify every file (no decoding of pixels); sizes checked against the crop size."""
    records, infos = [], []
    for index, path in enumerate(files):
        try:
            with Image.open(path) as image:
                width, height = image.size
                mode = image.mode
                info = dict(image.info) if want_info else {}
                image.verify()
        except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
            raise ValueError(
                f"{what} image {str(path)!r} cannot be read ({one_line(exc, with_type=True)}); replace or remove it"
            ) from None
        if crop_size is not None and (width < crop_size or height < crop_size):
            raise ValueError(
                f"{what} image {str(path)!r} is {width}x{height}, smaller than the {crop_size}x{crop_size} crop; "
                "use a smaller crop size or remove the image"
            )
        records.append(ImageRecord(path, index, width, height, mode))
        infos.append(info)
    return records, infos


def scan_sets(real, fake, crop_size: int | None, want_info: bool) -> ImageSets:
    """Find the real then the fake images, check there are enough of each, then scan real then fake
    (:func:`scan_images`; the fake images' metadata kept when ``want_info``)."""
    real_files = find_images(real, "real")
    fake_files = find_images(fake, "fake")
    for what, files in (("real", real_files), ("fake", fake_files)):
        if len(files) < MIN_IMAGES:
            raise ValueError(
                f"{what} has {len(files)} image; FID and KID need at least {MIN_IMAGES} images in each set "
                "(and many more for meaningful numbers)"
            )
    real_records, _ = scan_images(real_files, "real", crop_size, want_info=False)
    fake_records, fake_infos = scan_images(fake_files, "fake", crop_size, want_info=want_info)
    return ImageSets(real_records, fake_records, fake_infos)


# ----------------------------------------------------------------------------------------------------------
# decoding, one batch at a time
# ----------------------------------------------------------------------------------------------------------


def load_rgb(record: ImageRecord, what: str) -> Image.Image:
    """The pixels of ``record`` as 8-bit RGB (:func:`to_rgb`); ``ValueError`` if it cannot be decoded or changed
    size since it was scanned."""
    try:
        with Image.open(record.path) as image:
            image.load()
            rgb = to_rgb(image)
            if rgb is image:
                rgb = image.copy()
    except Exception as exc:  # noqa: BLE001
        reason = one_line(exc, with_type=True)
        raise ValueError(
            f"{what} image {str(record.path)!r} cannot be decoded ({reason}); replace or remove it"
        ) from None
    if rgb.size != (record.width, record.height):
        raise ValueError(f"{what} image {str(record.path)!r} changed while being evaluated; rerun")
    return rgb


@dataclass
class Batch:
    """The pixels of one batch of images, ready for the metrics: whole images and crops at the metric input
    size, and full-resolution uint8 (3, H, W) tensors with their prompts for CLIP."""

    wholes: list[Image.Image] = field(default_factory=list)
    crops: list[Image.Image] = field(default_factory=list)
    clip_images: list[torch.Tensor] = field(default_factory=list)
    clip_prompts: list[str] = field(default_factory=list)


def decode_batch(
    records: list[ImageRecord],
    what: str,
    size: tuple[int, int],
    *,
    wholes: bool,
    crops: int,
    crop_size: int | None,
    seed: int,
    clip: bool,
) -> Batch:
    """Decode ``records`` (:func:`load_rgb`) into a :class:`Batch`: the whole images resized to ``size`` when
    ``wholes``, ``crops`` seeded crops per image (:func:`crop_boxes`) resized likewise, and the images that have
    a prompt when ``clip``."""
    batch = Batch()
    for record in records:
        rgb = load_rgb(record, what)
        if wholes:
            batch.wholes.append(resize_image(rgb, size))
        if crops:
            for box in crop_boxes(record.width, record.height, crop_size, crops, seed, record.index):
                batch.crops.append(resize_image(rgb.crop(box), size))
        if clip and record.prompt:
            batch.clip_images.append(torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1))
            batch.clip_prompts.append(record.prompt)
    return batch
