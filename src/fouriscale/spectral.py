"""Fourier-domain math of FouriScale and FreeU (layer 1: pure torch, no diffusers).

Conventions follow the paper (Huang et al., ECCV 2024, arXiv 2403.12963) and its official
implementation:

* A mask is first defined in the *fftshifted* layout (zero frequency at index ``P // 2``) and is
  separable, ``M = outer(m_h, m_w)``.
* Filtering keeps the real part of the inverse transform: ``y = Re(IFFT2(M * FFT2(x)))``.
  For a real ``x`` that equals filtering with the symmetrised mask ``(M(k) + M(-k)) / 2``, which a
  real FFT (``rfft2``/``irfft2``) applies at about half the cost. Every mask handed to
  :func:`filter_real` is therefore a *half-spectrum, symmetrised* mask, built once per
  shape/scale/device and cached.
* All transforms run in float32 and the result is cast back to the input dtype.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = [
    "strong_radius",
    "weak_radius",
    "lowpass_profile",
    "lowpass_mask",
    "lowpass_passes_all",
    "freeu_skip_mask",
    "real_filter_mask",
    "filter_real",
    "padded_size",
    "branch_lowpass_masks",
    "freeu_filter",
    "lowpass_filter",
    "clear_caches",
]


def strong_radius(P: int) -> int:
    """Transition width ``R = max(P // 8, 1)`` of the strong low-pass mask (official code)."""
    return max(P // 8, 1)


def weak_radius(P: int, s: float) -> float:
    """Transition width ``R = floor((s - 1) * P / (2 * s))`` of the weak mask (Python float floor-division)."""
    return ((s - 1) * P) // (2 * s)


def lowpass_profile(
    P: int, s: float, v: float, weak: bool = False, device: torch.device | str | None = None
) -> torch.Tensor:
    """1-D mask ``m`` of length ``P`` in fftshifted order, Eq. (low-pass mask) of the paper.

    With ``half = P // 2``: ``g(k) = min(max(1 + (1 - v) / R * (half / s + 1 - k), v), 1)``; index
    ``half + k`` holds ``g(k)`` and index ``half - 1 - k`` holds ``g(k)``. For odd ``P`` the last index
    (the highest positive frequency, ``half``) holds ``g(half)``, which extends the same ramp.
    ``R`` is :func:`strong_radius` or :func:`weak_radius`; a weak mask with ``R == 0`` is all ones.
    """
    if P < 1:
        raise ValueError(f"mask length must be positive, got {P}")
    half = P // 2
    n_pos = P - half
    R = weak_radius(P, s) if weak else strong_radius(P)
    if R == 0:
        return torch.ones(P, dtype=torch.float32, device=device)
    k = torch.arange(n_pos, dtype=torch.float32, device=device)
    # Same evaluation order (and float32 arithmetic) as the reference implementation.
    g = (1 - v) / R * (half / s + 1 - k) + 1
    g = torch.clamp(g, min=v, max=1.0)
    return torch.cat([torch.flip(g[:half], dims=[0]), g])


@lru_cache(maxsize=1024)
def lowpass_passes_all(P: int, s: float, v: float, weak: bool = False) -> bool:
    """Whether the 1-D mask :func:`lowpass_profile` is all ones: the filter changes nothing along that axis (the ramp
    starts beyond the highest frequency, as on small feature maps at small scales)."""
    return bool(torch.all(lowpass_profile(P, s, v, weak) == 1))


def lowpass_mask(
    shape: tuple[int, int],
    scale: tuple[float, float],
    v: float,
    weak: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Separable 2-D low-pass mask ``outer(m_h, m_w)`` in fftshifted layout (float32)."""
    m_h = lowpass_profile(shape[0], scale[0], v, weak, device)
    m_w = lowpass_profile(shape[1], scale[1], v, weak, device)
    return torch.outer(m_h, m_w)


def freeu_skip_mask(shape: tuple[int, int], s: float, device: torch.device | str | None = None) -> torch.Tensor:
    """FreeU skip-feature mask (fftshifted): ones, the central 2x2 bins (``c-1..c``, ``c = size // 2``) set to ``s``."""
    H, W = shape
    mask = torch.ones(H, W, dtype=torch.float32, device=device)
    ch, cw = H // 2, W // 2
    mask[max(ch - 1, 0) : ch + 1, max(cw - 1, 0) : cw + 1] = s
    return mask


def real_filter_mask(mask_shifted: torch.Tensor) -> torch.Tensor:
    """Turn an fftshifted mask into the symmetrised half-spectrum mask used with ``rfft2``.

    ``Re(IFFT2(M * FFT2(x))) == IRFFT2(M_sym[..., :W // 2 + 1] * RFFT2(x))`` for real ``x``, where
    ``M_sym(k) = (M(k) + M(-k)) / 2``.
    """
    W = mask_shifted.shape[-1]
    m = torch.fft.ifftshift(mask_shifted, dim=(-2, -1))
    m_neg = torch.roll(torch.flip(m, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    return ((m + m_neg) / 2)[..., : W // 2 + 1].contiguous()


def _channel_pieces(channels: int, pieces: int) -> list[tuple[int, int]]:
    """``pieces`` nearly equal channel ranges ``(start, stop)`` covering ``channels``."""
    pieces = max(1, min(pieces, channels))
    step = -(-channels // pieces)
    return [(c, min(c + step, channels)) for c in range(0, channels, step)]


def filter_real(x: torch.Tensor, half_mask: torch.Tensor, pieces: int = 1) -> torch.Tensor:
    """``Re(IFFT2(M * FFT2(x)))`` over the last two dims, in float32, cast back to ``x.dtype``.

    ``half_mask`` comes from :func:`real_filter_mask`; it may carry a leading branch dimension
    ``(n, 1, 1, H, W//2+1)``, in which case ``x``'s batch is split into ``n`` equal branches. ``pieces > 1`` filters
    that many groups of channels one after the other into one output (every channel is filtered on its own, so the
    result is the same; the float32 copies and spectra are those of one group at a time).
    """
    if pieces > 1 and x.dim() == 4 and x.shape[1] > 1:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        for c0, c1 in _channel_pieces(x.shape[1], pieces):
            out[:, c0:c1] = filter_real(x[:, c0:c1], half_mask)
        return out
    H, W = x.shape[-2:]
    spec = torch.fft.rfft2(x.float(), dim=(-2, -1))
    if half_mask.dim() == 5:
        spec.unflatten(0, (half_mask.shape[0], -1)).mul_(half_mask)  # in place: one spectrum alive at a time
    else:
        spec.mul_(half_mask)
    return torch.fft.irfft2(spec, s=(H, W), dim=(-2, -1)).to(x.dtype)


def padded_size(Hf: int, Wf: int, hb: float, wb: float) -> tuple[int, int]:
    """Padding target of pad-then-crop: ``r = max(ceil(Hf / hb), ceil(Wf / wb))``, size ``(int(hb * r), int(wb * r))``.

    The result keeps the base aspect ratio ``hb : wb`` and never cuts into the feature map.
    """
    r = max(math.ceil(Hf / hb), math.ceil(Wf / wb))
    return max(int(hb * r), Hf), max(int(wb * r), Wf)


@lru_cache(maxsize=512)
def _branch_masks(
    size: tuple[int, int],
    scale: tuple[float, float],
    v: float,
    weak_flags: tuple[bool, ...],
    device: torch.device,
) -> torch.Tensor:
    halves = {}
    for weak in set(weak_flags):
        halves[weak] = real_filter_mask(lowpass_mask(size, scale, v, weak, device))
    return torch.stack([halves[w] for w in weak_flags]).unsqueeze(1).unsqueeze(1)


def branch_lowpass_masks(
    size: tuple[int, int],
    scale: tuple[float, float],
    v: float,
    weak_flags: tuple[bool, ...],
    device: torch.device | str,
) -> torch.Tensor:
    """Cached stack of half-spectrum low-pass masks, one per branch, shape ``(n, 1, 1, H, W//2+1)``.

    ``weak_flags[i]`` picks the weak mask for branch ``i`` (the detail branch) and the strong mask otherwise.
    """
    return _branch_masks(
        (int(size[0]), int(size[1])),
        (float(scale[0]), float(scale[1])),
        float(v),
        tuple(bool(w) for w in weak_flags),
        torch.device(device),
    )


def lowpass_filter(
    x: torch.Tensor,
    padded: tuple[int, int],
    scale: tuple[float, float],
    v: float,
    weak_flags: tuple[bool, ...],
    pieces: int = 1,
) -> torch.Tensor:
    """FouriScale's low-pass step on a feature map ``x`` of shape ``(n*B, C, Hf, Wf)``.

    Pads zeros at the bottom/right up to ``padded`` (from :func:`padded_size`; ``(Hf, Wf)`` filters at the
    map's own size), filters each branch with its mask (``weak_flags[i]``: branch ``i`` takes the weak mask),
    and crops back. ``pieces > 1``: that many groups of channels one after the other (padding, float32 copy and
    spectrum of one group at a time; the same result).
    """
    Hf, Wf = x.shape[-2:]
    Ph, Pw = padded
    if pieces > 1 and x.shape[1] > 1:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        for c0, c1 in _channel_pieces(x.shape[1], pieces):
            out[:, c0:c1] = lowpass_filter(x[:, c0:c1], padded, scale, v, weak_flags)
        return out
    if (Ph, Pw) != (Hf, Wf):
        x = F.pad(x, (0, Pw - Wf, 0, Ph - Hf))
    masks = branch_lowpass_masks((Ph, Pw), scale, v, weak_flags, x.device)
    y = filter_real(x, masks)
    if (Ph, Pw) != (Hf, Wf):
        y = y[..., :Hf, :Wf]
    return y


def clear_caches() -> None:
    """Forget the cached masks (they are rebuilt on their next use)."""
    _branch_masks.cache_clear()
    _freeu_mask.cache_clear()


@lru_cache(maxsize=256)
def _freeu_mask(size: tuple[int, int], s: float, device: torch.device) -> torch.Tensor:
    return real_filter_mask(freeu_skip_mask(size, s, device))


def freeu_filter(x: torch.Tensor, s: float, pieces: int = 1) -> torch.Tensor:
    """FreeU's skip-feature filter: scale the lowest frequencies (central 2x2 fftshifted bins) by ``s``
    (``pieces``: as :func:`filter_real`)."""
    return filter_real(x, _freeu_mask((x.shape[-2], x.shape[-1]), float(s), x.device), pieces)
