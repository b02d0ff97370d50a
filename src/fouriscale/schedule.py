"""Dilation factors, SDXL base buckets and the per-step schedule (layer 1: pure Python)."""

from __future__ import annotations

import math

from .errors import SettingError

__all__ = [
    "SDXL_BUCKETS",
    "sd_dilation",
    "choose_bucket",
    "scaled_window",
    "step_dilation",
    "conv_dilation",
    "detail_conv_dilation",
    "mask_scale",
    "step_of_timestep_index",
    "denoising_steps",
    "step_of_sigma",
]

# SDXL's 40 training buckets (SDXL paper, appendix) as (height, width) in pixels, in ascending
# height/width order as the official FouriScale code lists them. The order decides ties in
# :func:`choose_bucket` (the first of equally good buckets wins). Note 704x1344 has no transposed twin.
SDXL_BUCKETS: tuple[tuple[int, int], ...] = (
    (512, 2048),
    (512, 1984),
    (512, 1920),
    (512, 1856),
    (576, 1792),
    (576, 1728),
    (576, 1664),
    (640, 1600),
    (640, 1536),
    (704, 1472),
    (704, 1408),
    (704, 1344),
    (768, 1344),
    (768, 1280),
    (832, 1216),
    (832, 1152),
    (896, 1152),
    (896, 1088),
    (960, 1088),
    (960, 1024),
    (1024, 1024),
    (1024, 960),
    (1088, 960),
    (1088, 896),
    (1152, 896),
    (1152, 832),
    (1216, 832),
    (1280, 768),
    (1344, 768),
    (1408, 704),
    (1472, 704),
    (1536, 640),
    (1600, 640),
    (1664, 576),
    (1728, 576),
    (1792, 576),
    (1856, 512),
    (1920, 512),
    (1984, 512),
    (2048, 512),
)


def sd_dilation(H: int, W: int, h0: int, w0: int) -> int:
    """Dilation for SD 1.x/2.x: ``d = max(ceil(H / h0), ceil(W / w0))`` on latent (or pixel) sizes."""
    return max(math.ceil(H / h0), math.ceil(W / w0))


def choose_bucket(
    height: float, width: float, buckets=SDXL_BUCKETS, scale: float = 1.0
) -> tuple[tuple[float, float], int]:
    """SDXL base bucket: among buckets with ``ceil(height/bh) == ceil(width/bw)`` (= ``s``), the one with
    the least padding ``(bh*s - height) + (bw*s - width)``; returns ``((bh, bw), s)``.

    ``scale`` multiplies every bucket (1.0 for SDXL's 1024-pixel native size). Raises ``ValueError`` when
    no bucket fits, i.e. the aspect ratio is beyond SDXL's 1:4 .. 4:1 range.
    """
    best = None
    for bh, bw in buckets:
        bh, bw = bh * scale, bw * scale
        s = math.ceil(height / bh)
        if s != math.ceil(width / bw):
            continue
        padding = (bh * s - height) + (bw * s - width)
        if best is None or padding < best[0]:
            best = (padding, (bh, bw), s)
    if best is None:
        ratio = height / width
        raise SettingError(
            "size",
            f"{int(height)}x{int(width)} (height x width, aspect {ratio:.3g}) is outside the aspect ratios SDXL was "
            "trained on (height/width between 0.25 and 4); choose a size closer to square",
            value=(height, width),
            bound=(0.25, 4.0),
            remedy="set an explicit base size",
            remedy_setting="base_size",
        )
    return best[1], best[2]


def scaled_window(start50: int, stop50: int, num_steps: int) -> tuple[int, int]:
    """A ``(start, stop)`` window given for 50 steps, scaled to ``num_steps`` (rounded half up)."""
    if num_steps == 50:
        return start50, stop50
    return int(start50 * num_steps / 50 + 0.5), int(stop50 * num_steps / 50 + 0.5)


def step_dilation(i: int, d: float, start: int, stop: int, progressive: bool = True) -> float | None:
    """Dilation ``d_i`` at denoising step ``i``; ``None`` once ``i >= stop`` (patched convs run plain).

    ``d_i = d`` before ``start``; in ``[start, stop)`` when progressive,
    ``d_i = max((d - 1) * ((stop - i) / (stop - start)) + 1, 1)`` (this evaluation order, in floats).
    """
    if i >= stop:
        return None
    if progressive and i >= start:
        return max((d - 1.0) * ((stop - i) / (stop - start)) + 1.0, 1.0)
    return float(d)


def conv_dilation(d_i: float) -> int:
    """Integer dilation of a patched conv, ``ceil(d_i)``."""
    return int(math.ceil(d_i))


def detail_conv_dilation(d_i: float, divisor: float) -> int:
    """Dilation of the detail branch's conv, ``ceil(max(d_i / divisor, 1))`` (SDXL uses ``divisor = 1.5``)."""
    return int(math.ceil(max(d_i / divisor, 1)))


def mask_scale(d_i: float, stride: int) -> float:
    """Mask scale ``s = max(d_i / stride, 1)`` of a conv with the given stride."""
    return max(d_i / stride, 1)


def step_of_timestep_index(k: int, order: int) -> int:
    """Denoising step of the ``k``-th entry of ``scheduler.timesteps``; second-order schedulers list
    ``[t0, t1, t1, t2, t2, ...]`` (two UNet calls per step), so step ``= ceil(k / order)``."""
    return (k + order - 1) // order


def denoising_steps(num_timesteps: int, order: int) -> int:
    """Number of denoising steps behind ``num_timesteps`` scheduler entries."""
    return (num_timesteps + order - 1) // order


def step_of_sigma(sigmas, sigma: float, rtol: float = 1e-5) -> tuple[int, int]:
    """``(step, N)`` of a model call at noise level ``sigma`` in a run over ``sigmas`` (``N + 1`` descending values,
    the last one where the run ends): the first step whose sigma is at or below ``sigma`` (values within ``rtol``
    count as equal). A second-order sampler's extra call between two steps thus counts to the later one, as the
    step of an entry of diffusers' interleaved timestep tables does (:func:`step_of_timestep_index`)."""
    n = len(sigmas) - 1
    if n < 1:
        raise ValueError(f"a run needs at least two sigmas, got {len(sigmas)}")
    above = sum(1 for s in sigmas[:n] if s > sigma * (1 + rtol))
    return min(above, n - 1), n
