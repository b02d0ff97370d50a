"""Tiled VAE decoding whose tiles share GroupNorm statistics (layer 3).

diffusers' tiled decode normalises every tile with its own GroupNorm statistics, so neighbouring tiles
can differ in colour and contrast. Here every tile is normalised with the statistics of the *whole*
image, while each tile is still decoded on its own, so memory stays that of one tile:

* the GroupNorm layers are settled one at a time, in the order the decoder calls them: every tile runs up
  to the first unsettled layer (earlier ones use their settled statistics), adds the sums of its *core*
  region (the cores partition the image) and stops there; the totals settle that layer;
* a last pass decodes every tile with all statistics settled and keeps its core.

The statistics are exactly those of an untiled decode up to the tiles' border effects, which the margin
around each core absorbs. The passes stop early, and the early layers run at low resolution, so the cost
is a few decodes (about ten for the SD/SDXL VAE), not one per layer.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn

__all__ = ["tile_grid", "sync_tiled_decode", "SyncTiledDecode"]


def tile_grid(size: int, tile: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Split ``[0, size)`` into cores of ``tile - 2 * margin``; returns ``(start, stop, core_start, core_stop)``
    per tile, each tile being its core widened by ``margin`` (clipped to the image)."""
    core = max(tile - 2 * margin, 1)
    spans = []
    for c0 in range(0, size, core):
        c1 = min(c0 + core, size)
        spans.append((max(c0 - margin, 0), min(c1 + margin, size), c0, c1))
    return spans


class _Stop(Exception):
    """Ends a tile's pass once it reached the layer being settled."""


@dataclass
class _Stats:
    """GroupNorm statistics shared by all tiles: settled ones, and sums for the layer being settled."""

    fixed: dict = field(default_factory=dict)  # module -> (mean, var), each (B, G)
    target: nn.Module | None = None  # the layer being settled in this pass
    sums: list = field(default_factory=lambda: [0.0, 0.0, 0])  # sum, sum of squares, count
    core: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)  # core box as fractions of the tile
    shape: tuple[int, int] = (1, 1)  # the tile's latent height and width

    def settle(self) -> None:
        s, ss, n = self.sums
        mean = s / n
        self.fixed[self.target] = (mean.float(), (ss / n - mean * mean).clamp_min(0).float())
        self.target, self.sums = None, [0.0, 0.0, 0]


class _SharedStatsGroupNorm(nn.Module):
    """Stands in for an ``nn.GroupNorm`` during a tiled decode: normalises with shared statistics."""

    def __init__(self, norm: nn.GroupNorm, stats: _Stats) -> None:
        super().__init__()
        self.norm = norm
        self._stats = stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm, stats = self.norm, self._stats
        B, C = x.shape[:2]
        G = norm.num_groups
        if norm not in stats.fixed:
            if stats.target is None:
                stats.target = norm
            if stats.target is not norm:
                raise RuntimeError("decoder GroupNorm layers were called in a different order across tiles")
            top, bottom, left, right = stats.core
            if x.dim() == 3:  # attention's norm sees (B, C, h*w): recover the map from the tile's shape
                th, tw = stats.shape
                s = round(math.sqrt(x.shape[-1] / (th * tw)))
                spatial = x.reshape(B, C, th * s, tw * s)
            else:
                spatial = x
            H, W = spatial.shape[-2:]
            core = spatial[..., round(top * H) : round(bottom * H), round(left * W) : round(right * W)]
            core = core.double().reshape(B, G, -1)
            stats.sums[0] = stats.sums[0] + core.sum(-1)
            stats.sums[1] = stats.sums[1] + (core * core).sum(-1)
            stats.sums[2] += core.shape[-1]
            raise _Stop
        mean, var = stats.fixed[norm]
        y = (x.float().reshape(B, G, -1) - mean[..., None]) * torch.rsqrt(var[..., None] + norm.eps)
        y = y.reshape(B, C, -1)
        if norm.affine:
            y = y * norm.weight.float().view(1, C, 1) + norm.bias.float().view(1, C, 1)
        return y.reshape(x.shape).to(x.dtype)


@contextmanager
def _shared_group_norms(decoder: nn.Module, stats: _Stats):
    swapped = []
    for module in list(decoder.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(module, name, _SharedStatsGroupNorm(child, stats))
                swapped.append((module, name, child))
    try:
        yield
    finally:
        for module, name, child in swapped:
            setattr(module, name, child)


def _tiles(z: torch.Tensor, tile: int, margin: int):
    H, W = z.shape[-2:]
    for r0, r1, cr0, cr1 in tile_grid(H, tile, margin):
        for c0, c1, cc0, cc1 in tile_grid(W, tile, margin):
            h, w = r1 - r0, c1 - c0
            core = ((cr0 - r0) / h, (cr1 - r0) / h, (cc0 - c0) / w, (cc1 - c0) / w)
            yield (r0, r1, c0, c1), (cr0, cr1, cc0, cc1), core


@torch.no_grad()
def sync_tiled_decode(decoder: nn.Module, z: torch.Tensor, tile: int = 128, margin: int = 16) -> torch.Tensor:
    """Decode latent ``z`` (after ``post_quant_conv``) with ``decoder`` in tiles of ``tile`` latent pixels that
    overlap by ``margin`` and share the whole image's GroupNorm statistics; returns the image tensor."""
    H, W = z.shape[-2:]
    tiles = list(_tiles(z, tile, margin))
    stats = _Stats()
    with _shared_group_norms(decoder, stats):
        while True:
            pieces, settling = [], False
            for (r0, r1, c0, c1), _, core in tiles:
                stats.core, stats.shape = core, (r1 - r0, c1 - c0)
                try:
                    pieces.append(decoder(z[..., r0:r1, c0:c1]))
                except _Stop:
                    settling = True
            if not settling:
                break
            stats.settle()
    out = None
    for piece, ((r0, r1, c0, _c1), (cr0, cr1, cc0, cc1), _) in zip(pieces, tiles):
        f = piece.shape[-2] // (r1 - r0)
        if out is None:
            out = piece.new_empty(*piece.shape[:2], H * f, W * f)
        out[..., cr0 * f : cr1 * f, cc0 * f : cc1 * f] = piece[
            ..., (cr0 - r0) * f : (cr1 - r0) * f, (cc0 - c0) * f : (cc1 - c0) * f
        ]
    return out


class SyncTiledDecode:
    """Installs :func:`sync_tiled_decode` as ``vae.decode`` for images above ``threshold`` pixels; ``remove()``
    gives the VAE back its own ``decode``. Smaller images take diffusers' own path unchanged."""

    def __init__(self, vae: nn.Module, threshold: int | None, runtime=None, tile: int = 128, margin: int = 16):
        self.vae = vae
        self.threshold = threshold  # None: always tile (when larger than one tile)
        self.runtime = runtime  # its `enabled` switch (fouriscale.disabled) turns tiling off too
        self.tile, self.margin = tile, margin
        self.scale = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.decode = self

    def __call__(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        vae = self.vae
        H, W = z.shape[-2:]
        pixels = H * W * self.scale * self.scale
        small = max(H, W) <= self.tile or (self.threshold is not None and pixels <= self.threshold)
        if small or (self.runtime is not None and not self.runtime.enabled):
            return type(vae).decode(vae, z, return_dict=return_dict, generator=generator)
        hook = getattr(vae, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(vae)  # model CPU offload: bring the VAE to its device, as `decode` would
        if getattr(vae, "post_quant_conv", None) is not None:
            z = vae.post_quant_conv(z)
        images = sync_tiled_decode(vae.decoder, z, self.tile, self.margin)
        if not return_dict:
            return (images,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=images)

    def remove(self) -> None:
        if self.vae.__dict__.get("decode") is self:
            del self.vae.__dict__["decode"]
