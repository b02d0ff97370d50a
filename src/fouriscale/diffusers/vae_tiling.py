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

It stands in for a decode made of ``post_quant_conv`` and then a decoder of convolutions, GroupNorms and one
mid-block attention (which sees one tile at a time, the one thing the margin cannot absorb):
``AutoencoderKL``'s, and ``AsymmetricAutoencoderKL``'s, whose decoder also takes the masked picture and the mask
(each tile gets its crop of them; the decoder's condition encoder is convolutions only). FouriScale installs it on
those two classes (and subclasses that keep their ``decode``) only; every other VAE (``AutoencoderTiny``,
``ConsistencyDecoderVAE``, ...) keeps its own ``decode``.
"""

from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .describe import vae_scale_factor

# diffusers' model and pipeline classes (and transformers' models) are imported where they are used: each adds
# 1-2 s and 300-500 modules to `import fouriscale` (docs/architecture.md, "Imports").
__all__ = ["tile_grid", "sync_tiled_decode", "SyncTiledDecode", "tiles_exactly", "tiles_size", "decode_plan", "TILE"]

#: Latent pixels per tile side of the installed decode (latents up to this size per side are never tiled), and the
#: margin around each tile's core.
TILE, MARGIN = 128, 16


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
def sync_tiled_decode(
    decoder: nn.Module,
    z: torch.Tensor,
    tile: int = 128,
    margin: int = 16,
    pictures: tuple[torch.Tensor | None, ...] = (),
    factor: int = 1,
) -> torch.Tensor:
    """Decode latent ``z`` (after ``post_quant_conv``) with ``decoder`` in tiles of ``tile`` latent pixels that
    overlap by ``margin`` and share the whole image's GroupNorm statistics; returns the image tensor.

    ``pictures`` are pixel-space inputs the decoder takes after the latent (``AsymmetricAutoencoderKL``'s masked
    picture and mask; ``None`` passes as ``None``), ``factor`` pixels per latent pixel: each tile's decoder call
    gets their crop under the tile."""
    H, W = z.shape[-2:]
    for picture in pictures:
        if picture is not None and tuple(picture.shape[-2:]) != (H * factor, W * factor):
            raise ValueError(
                f"a picture of {tuple(picture.shape[-2:])} pixels does not cover the latent's {H}x{W} at {factor} "
                "pixels per latent pixel"
            )
    tiles = list(_tiles(z, tile, margin))
    stats = _Stats()
    with _shared_group_norms(decoder, stats):
        while True:
            pieces, settling = [], False
            for (r0, r1, c0, c1), _, core in tiles:
                stats.core, stats.shape = core, (r1 - r0, c1 - c0)
                crops = [
                    p if p is None else p[..., r0 * factor : r1 * factor, c0 * factor : c1 * factor] for p in pictures
                ]
                try:
                    pieces.append(decoder(z[..., r0:r1, c0:c1], *crops))
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


def _exact_classes() -> dict:
    """VAE class -> ``(its decoder's class, the arguments of its ``decode`` that the decoder takes after the
    latent)``: the decodes :func:`sync_tiled_decode` stands in for. Neither class's ``decode`` uses its
    ``generator``."""
    from diffusers import AsymmetricAutoencoderKL, AutoencoderKL
    from diffusers.models.autoencoders.vae import Decoder, MaskConditionDecoder

    return {AutoencoderKL: (Decoder, ()), AsymmetricAutoencoderKL: (MaskConditionDecoder, ("image", "mask"))}


def _exact_base(cls) -> type | None:
    """The class of :func:`_exact_classes` whose ``decode`` (and ``_decode``) ``cls`` runs unchanged, or ``None``."""
    if not isinstance(cls, type):
        return None
    for base in _exact_classes():
        if issubclass(cls, base) and cls.decode is base.decode and cls._decode is base._decode:
            return base
    return None


def tiles_exactly(vae) -> bool:
    """Whether the tiled decode stands in for ``vae``'s own ``decode`` (equal up to what tiling changes): an
    ``AutoencoderKL`` or ``AsymmetricAutoencoderKL`` (or a subclass that keeps their ``decode``) with the decoder
    that class builds. A VAE class (or its name in ``diffusers``) is judged by the class alone."""
    if isinstance(vae, str):
        import diffusers

        vae = getattr(diffusers, vae, None)
    if isinstance(vae, type):
        return _exact_base(vae) is not None
    base = _exact_base(type(vae))
    return base is not None and type(getattr(vae, "decoder", None)) is _exact_classes()[base][0]


def tiles_size(height: int, width: int, factor: int, threshold: int | None, tile: int = TILE) -> bool:
    """Whether a ``height`` x ``width`` latent is decoded in tiles: larger than one tile, and above ``threshold``
    pixels (``factor`` per latent pixel; ``None``: any size larger than one tile)."""
    return max(height, width) > tile and (threshold is None or height * width * factor * factor > threshold)


class SyncTiledDecode:
    """Installs :func:`sync_tiled_decode` as ``vae.decode`` for images above ``threshold`` pixels; ``remove()``
    gives the VAE back its own ``decode``. Smaller images take diffusers' own path unchanged.

    Only for VAEs where :func:`tiles_exactly` holds. The replacement has the signature of the class's own
    ``decode`` and takes the same arguments, positional or by name; a call it cannot tile exactly (an argument
    the tiled path does not know with a value other than its default, a picture whose size does not match the
    latent's, arguments the class's ``decode`` would refuse) goes to the class's own ``decode`` as it was made.
    """

    def __init__(self, vae: nn.Module, threshold: int | None, runtime=None, tile: int = TILE, margin: int = MARGIN):
        if not tiles_exactly(vae):
            raise TypeError(
                f"the tiled decode stands in for AutoencoderKL's and AsymmetricAutoencoderKL's decode only, not "
                f"{type(vae).__name__}'s"
            )
        self.vae = vae
        self.threshold = threshold  # None: always tile (when larger than one tile)
        self.runtime = runtime  # its `enabled` switch (fouriscale.disabled) turns tiling off too
        self.tile, self.margin = tile, margin
        # Set by the patch: latent size (h, w) -> (tile or not, tile size) where a memory budget or an estimate
        # decides them, else None (then `threshold` and `tile` do).
        self.choose = None
        self.scale = vae_scale_factor(vae.config)
        self._own = type(vae).decode
        self._signature = inspect.signature(self._own)  # with `self`; apply_forward_hook keeps it (functools.wraps)
        parameters = list(self._signature.parameters.values())
        self._latent = parameters[1].name
        self._pictures = _exact_classes()[_exact_base(type(vae))][1]
        self._known = {parameters[0].name, self._latent, "return_dict", "generator", *self._pictures}
        self.__signature__ = self._signature.replace(parameters=parameters[1:])
        self.__doc__ = self._own.__doc__
        vae.decode = self

    def _tiled_call(self, args: tuple, kwargs: dict) -> tuple | None:
        """``(latent, pictures, return_dict, tile)`` when this call is tiled, else ``None``."""
        if self.runtime is not None and not self.runtime.enabled:
            return None
        try:
            call = self._signature.bind(self.vae, *args, **kwargs)
        except TypeError:
            return None  # the class's own decode says what is wrong
        call.apply_defaults()
        values = call.arguments
        z = values[self._latent]
        if not isinstance(z, torch.Tensor) or z.dim() != 4:
            return None
        decision = self.choose(tuple(z.shape[-2:])) if self.choose is not None else None
        if decision is None:
            tiled, tile = tiles_size(*z.shape[-2:], self.scale, self.threshold, self.tile), self.tile
        else:
            tiled, tile = decision
        if not tiled or max(z.shape[-2:]) <= tile:
            return None
        for name, value in values.items():
            if name in self._known:
                continue
            parameter = self._signature.parameters[name]
            if parameter.kind is parameter.VAR_POSITIONAL and value == ():
                continue
            if parameter.kind is parameter.VAR_KEYWORD and value == {}:
                continue
            if value is not parameter.default:
                return None  # an argument the tiled path would not honour
        H, W = z.shape[-2:]
        pictures = tuple(values.get(name) for name in self._pictures)
        for picture in pictures:
            if picture is not None and (
                not isinstance(picture, torch.Tensor) or tuple(picture.shape[-2:]) != (H * self.scale, W * self.scale)
            ):
                return None
        return z, pictures, values.get("return_dict", True), tile

    def __call__(self, *args, **kwargs):
        vae = self.vae
        tiled = self._tiled_call(args, kwargs)
        if tiled is None:
            return self._own(vae, *args, **kwargs)
        z, pictures, return_dict, tile = tiled
        hook = getattr(vae, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(vae)  # model CPU offload: bring the VAE to its device, as `decode` would
        if getattr(vae, "post_quant_conv", None) is not None:
            z = vae.post_quant_conv(z)
        images = sync_tiled_decode(vae.decoder, z, tile, self.margin, pictures, self.scale)
        if not return_dict:
            return (images,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=images)

    def remove(self) -> None:
        if self.vae.__dict__.get("decode") is self:
            del self.vae.__dict__["decode"]


def decode_plan(vae, config, latent: tuple[int, int], factor: int):
    """The :class:`~fouriscale.plan.DecodePlan` of ``vae`` (a VAE, its class or its class name) for a latent of
    ``latent`` ``(height, width)`` under ``config`` (a :class:`~fouriscale.config.FouriScaleConfig`)."""
    from ..plan import DecodePlan

    name = vae if isinstance(vae, str) else (vae.__name__ if isinstance(vae, type) else type(vae).__name__)
    if not tiles_exactly(vae):
        return DecodePlan(
            name,
            False,
            False,
            f"{name}'s own, left alone (the tiled decode stands in for AutoencoderKL's and AsymmetricAutoencoderKL's "
            "only)",
        )
    if config.vae_tiling is False:
        return DecodePlan(name, False, False, f"{name}'s own (vae_tiling=False)")
    threshold = None if config.vae_tiling else config.vae_tiling_threshold
    tile = config.tile_size
    when = f"latents over {tile} px per side" if threshold is None else f"images above {threshold} px"
    if tiles_size(latent[0], latent[1], factor, threshold, tile):
        return DecodePlan(
            name,
            True,
            True,
            f"tiled, tiles share GroupNorm statistics ({name}; tiles {when}"
            + (f", {tile} latent px a side)" if tile != TILE else ")"),
        )
    return DecodePlan(
        name, True, False, f"{name}'s own at this size (tiled, with shared GroupNorm statistics, for {when})"
    )
