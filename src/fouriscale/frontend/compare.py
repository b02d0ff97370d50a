"""Pictures that show what FouriScale does: a labelled grid (whole images and a full-resolution detail crop)
and the radially averaged log power spectrum of each image on one plot.

    images = render_variants(pipe, "a corgi", seed=23, height=2048, width=2048,
                             variants=["direct", "fouriscale", "no-low-pass"])
    comparison_grid(images).save("grid.png"); spectrum_plot(images).save("spectrum.png")
"""

from __future__ import annotations

import importlib.util
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import fouriscale

from .errors import UserError
from .render import generate_image

__all__ = [
    "VARIANTS",
    "variant_config",
    "render_variants",
    "radial_power_spectrum",
    "comparison_grid",
    "spectrum_plot",
    "default_crop",
    "check_layout",
    "require_matplotlib",
]

# Variant name -> FouriScaleConfig changes ("direct" is the stock pipeline).
VARIANTS: dict[str, dict | None] = {
    "direct": None,
    "fouriscale": {},
    "no-low-pass": {"low_pass": False},
    "no-attention-guidance": {"attention_guidance": False},
    "no-pad-then-crop": {"pad_then_crop": False},
    "no-progressive": {"progressive": False},
    "no-freeu": {"freeu": None},
    "amp-guidance": {"amp_guidance": True},
}

PAD, LABEL_H = 8, 28


def variant_config(name: str, base: fouriscale.FouriScaleConfig) -> fouriscale.FouriScaleConfig | None:
    """The config of a named variant (``None`` for direct inference); ``ValueError`` for unknown names."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    changes = VARIANTS[name]
    return None if changes is None else base.replace(**changes)


def render_variants(
    pipe,
    prompt: str,
    *,
    seed: int,
    height: int,
    width: int,
    variants: list[str],
    config: fouriscale.FouriScaleConfig | None = None,
    skip: dict[str, Image.Image] | None = None,
    **call,
) -> dict[str, Image.Image]:
    """Generate the same prompt and seed once per variant (in the order given); the pipeline is left as it was
    found. ``config`` (default: the pipeline's applied config, else the paper's) is the base the variants
    change; ``skip`` maps variants already rendered to their images; ``call`` goes to the pipeline."""
    previous = fouriscale.get_config(pipe)
    base = config or previous or fouriscale.FouriScaleConfig()
    configs = {name: variant_config(name, base) for name in variants}
    images = {}
    try:
        for name, cfg in configs.items():
            if skip and name in skip:
                images[name] = skip[name]
                continue
            if cfg is not None:
                fouriscale.apply_fouriscale(pipe, cfg)
            images[name] = generate_image(
                pipe, prompt, seed=seed, direct=cfg is None, height=height, width=width, **call
            )
    finally:
        if previous is not None:
            fouriscale.apply_fouriscale(pipe, previous)
        else:
            fouriscale.remove_fouriscale(pipe)
    return images


def radial_power_spectrum(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(frequency in cycles/pixel, log10 mean power)`` of the image's luminance, averaged over rings."""
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    gray = gray - gray.mean()
    power = np.abs(np.fft.fftshift(np.fft.fft2(gray))) ** 2
    h, w = gray.shape
    fy = (np.arange(h) - h // 2) / h
    fx = (np.arange(w) - w // 2) / w
    radius = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    bins = np.linspace(0, 0.5, min(h, w) // 2 + 1)
    index = np.digitize(radius.ravel(), bins) - 1
    valid = (index >= 0) & (index < len(bins) - 1)
    sums = np.bincount(index[valid], weights=power.ravel()[valid], minlength=len(bins) - 1)
    counts = np.bincount(index[valid], minlength=len(bins) - 1)
    mean = sums / np.maximum(counts, 1)
    centres = (bins[:-1] + bins[1:]) / 2
    keep = counts > 0
    return centres[keep], np.log10(mean[keep] + 1e-12)


def default_crop(size: tuple[int, int], side: int) -> tuple[int, int, int, int]:
    """A centred ``side`` x ``side`` box (clipped to the image) as ``(left, top, right, bottom)``."""
    w, h = size
    side = min(side, w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def _font():
    try:
        return ImageFont.load_default(size=16)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


#: Bounds of the grid's layout: column width in pixels, and the grid's total size.
MIN_COLUMN_WIDTH, MAX_COLUMN_WIDTH = 16, 2048
MAX_GRID_PIXELS = 64 * 2**20


def check_layout(
    size: tuple[int, int], count: int, column_width: int = 384, crop: tuple[int, int, int, int] | None = None
) -> tuple[int, int]:
    """Validate a grid of ``count`` images of ``size`` (width, height) before anything is rendered; returns the
    grid's ``(width, height)``. ``ValueError`` names the bound: column width 16..2048 px, the crop box inside
    the image, at most 64 MP in all."""
    w, h = size
    if not isinstance(column_width, int) or not MIN_COLUMN_WIDTH <= column_width <= MAX_COLUMN_WIDTH:
        raise ValueError(f"column width {column_width!r}: must be {MIN_COLUMN_WIDTH} to {MAX_COLUMN_WIDTH} pixels")
    if crop is not None:
        left, top, right, bottom = crop
        if min(crop) < 0 or right > w or bottom > h or right <= left or bottom <= top:
            raise ValueError(f"crop box {left},{top},{right - left}: must lie inside the {w}x{h} image")
    box = crop or default_crop(size, column_width)
    thumb_h = max(1, round(h * column_width / w))
    grid = (count * column_width + (count + 1) * PAD, PAD + LABEL_H + thumb_h + PAD + (box[3] - box[1]) + PAD)
    if grid[0] * grid[1] > MAX_GRID_PIXELS:
        raise ValueError(
            f"the grid would be {grid[0]}x{grid[1]} pixels, above {MAX_GRID_PIXELS // 2**20} MP; use a smaller "
            "column width or fewer variants"
        )
    return grid


def comparison_grid(
    images: dict[str, Image.Image], column_width: int = 384, crop: tuple[int, int, int, int] | None = None
) -> Image.Image:
    """One labelled column per image: the whole image scaled to ``column_width`` (default 384), then a crop of
    ``column_width`` x ``column_width`` pixels at full resolution (default: the centre), or the ``crop`` box
    ``(left, top, right, bottom)``.

    Size: ``n * column_width + (n + 1) * 8`` wide, ``8 + 28 + thumb_h + 8 + crop_h + 8`` high; bounded by
    :func:`check_layout`.
    """
    if not images:
        raise ValueError("no images to compare")
    first = next(iter(images.values()))
    if any(im.size != first.size for im in images.values()):
        raise ValueError("the images to compare must have the same size")
    check_layout(first.size, len(images), column_width, crop)
    w, h = first.size
    thumb_h = max(1, round(h * column_width / w))
    box = crop or default_crop(first.size, column_width)
    crop_h = box[3] - box[1]
    n = len(images)
    grid = Image.new("RGB", (n * column_width + (n + 1) * PAD, PAD + LABEL_H + thumb_h + PAD + crop_h + PAD), "white")
    draw = ImageDraw.Draw(grid)
    font = _font()
    for i, (label, image) in enumerate(images.items()):
        x = PAD + i * (column_width + PAD)
        draw.text((x, PAD + 4), label, fill="black", font=font)
        grid.paste(image.convert("RGB").resize((column_width, thumb_h), Image.LANCZOS), (x, PAD + LABEL_H))
        grid.paste(image.convert("RGB").crop(box), (x, PAD + LABEL_H + thumb_h + PAD))
    corners = [PAD + box[0] * column_width / w, PAD + LABEL_H + box[1] * thumb_h / h]
    corners += [PAD + box[2] * column_width / w, PAD + LABEL_H + box[3] * thumb_h / h]
    draw.rectangle(corners, outline="red", width=2)  # where the crop comes from, on the first thumbnail
    return grid


def require_matplotlib(what: str = "this command") -> None:
    """``UserError`` naming the extra to install when matplotlib (plots and charts) is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError(f"{what} draws its plots with matplotlib: pip install 'fouriscale[ui]'")


def spectrum_plot(images: dict[str, Image.Image], size: tuple[int, int] = (800, 500)) -> Image.Image:
    """The radially averaged log power spectrum of every image on one matplotlib plot, as a PIL image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dpi = 100
    fig, ax = plt.subplots(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    try:
        for label, image in images.items():
            freq, power = radial_power_spectrum(image)
            ax.plot(freq, power, label=label, linewidth=1.4)
        ax.set_xlabel("spatial frequency (cycles / pixel)")
        ax.set_ylabel("log10 power (radially averaged)")
        ax.set_title("Power spectrum")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
