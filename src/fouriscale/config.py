"""FouriScale settings: one frozen, validated dataclass and the paper's presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import SettingError
from .memory import parse_memory
from .profiles import FAMILIES
from .schedule import choose_bucket, sd_dilation

__all__ = [
    "FouriScaleConfig",
    "Preset",
    "PAPER_PRESETS",
    "OFFICIAL_CONTROLNET",
    "FREEU_MODES",
    "MAX_DILATION",
    "MAX_STEPS",
    "MAX_SIDE",
    "MAX_PIXELS",
    "FAR_BEYOND_NATIVE",
    "MIN_VAE_TILE",
    "VAE_TILE",
]

FREEU_MODES = ("paper", "diffusers", None)

#: Largest dilation ``d`` (16x the native size per side; the paper goes to 4x, 8x is already far out).
MAX_DILATION = 16
#: Most denoising steps a plan takes (the schedulers' 1000 training timesteps).
MAX_STEPS = 1000
#: Output size limit (``size_limit=True``): pixels per side, and in total (8192 x 8192).
MAX_SIDE = 16384
MAX_PIXELS = 8192 * 8192
#: Above this many times the native size per side a warning says results are unlikely to hold together.
FAR_BEYOND_NATIVE = 8
#: Smallest tile of the tiled VAE decode in latent pixels (its cores are 32 pixels narrower: 16-pixel margins), and
#: the tile of ``vae_tile_size=None``.
MIN_VAE_TILE = 48
VAE_TILE = 128


@dataclass(frozen=True)
class FouriScaleConfig:
    """Settings of FouriScale. Every field has the paper's behaviour as its default.

    Settings that depend on the requested size (dilation, base size, layer base sizes, start/stop
    steps) are derived at call time from ``height``/``width`` and the UNet's native size unless given
    here; one config therefore serves every size and aspect ratio.

    Attributes:
        start_step (`int`, *optional*, defaults to `None`):
            First step of the progressive phase: before it the full dilation ``d`` is used. `None` takes the
            paper's value (10 of 50 steps for SD 1.x/2.x with ``d <= 3``, else 20 of 50), scaled to the
            number of steps.
        stop_step (`int`, *optional*, defaults to `None`):
            From this step on the patched convs run as plain convs. `None` takes the paper's value (30 of 50 for
            SD with ``d <= 3``, else 35 of 50), scaled to the number of steps.
        progressive (`bool`, defaults to `True`):
            Shrink the dilation linearly from ``d`` to 1 between ``start_step`` and ``stop_step``
            (ablation: `False` keeps ``d`` until ``stop_step``).
        low_pass (`bool`, defaults to `True`):
            Low-pass filter the input of each dilated conv (the paper's structural consistency; ablation:
            `False` leaves plain dilated convolutions, as in ScaleCrafter).
        attention_guidance (`bool`, defaults to `True`):
            FouriScale guidance: a third UNet branch with the weak mask whose self-attention uses the
            queries and keys of the strongly filtered branch (ablation: `False` runs the usual two branches).
        pad_then_crop (`bool`, defaults to `True`):
            Pad feature maps to the base aspect ratio before filtering and crop after (arbitrary aspect
            ratios; ablation: `False` filters at the map's own size).
        amp_guidance (`bool`, defaults to `False`):
            Multiply the guidance scale by ``amp_guidance_factor`` before ``start_step`` (the paper's advice
            for blurry SDXL results).
        amp_guidance_factor (`float`, defaults to `2.4`):
            Factor of ``amp_guidance``.
        freeu (`str`, *optional*, defaults to `"paper"`):
            FreeU as the official scripts apply it (`"paper"`: stage chosen by the channel count of the
            incoming hidden state), diffusers' ``enable_freeu`` (`"diffusers"`: stage chosen by up-block
            index), or `None` for no FreeU.
        freeu_params (`tuple[float, float, float, float]`, *optional*, defaults to `None`):
            FreeU's ``(b1, b2, s1, s2)``. `None` picks the paper's values by family: SD 1.x
            ``(1.2, 1.4, 0.9, 0.2)``, SD 2.x ``(1.1, 1.2, 0.9, 0.2)``, SDXL ``(1.1, 1.2, 0.6, 0.4)``.
        dilation (`int`, *optional*, defaults to `None`):
            Dilation ``d``. `None` derives it from the size: SD ``max(ceil(H / h0), ceil(W / w0))``; SDXL the
            scale of the chosen base bucket.
        base_size (`tuple[int, int]`, *optional*, defaults to `None`):
            Reference size ``(height, width)`` in pixels. `None`: the UNet's native size for SD, the best of
            SDXL's 40 training buckets for SDXL.
        layers (`tuple[str, ...]`, *optional*, defaults to `None`):
            Module paths (or glob patterns) of the convolutions to patch. `None` derives the paper's sets from
            the UNet's structure.
        mask_floor (`float`, *optional*, defaults to `None`):
            Floor value ``v`` of both low-pass masks. `None`: 0 for SD, 0.6 for SDXL.
        detail_dilation_divisor (`float`, *optional*, defaults to `None`):
            The detail branch convolves with dilation ``ceil(max(d_i / divisor, 1))``. `None`: 1 for SD,
            1.5 for SDXL.
        base_size_conditioning (`bool`, defaults to `True`):
            SDXL: set the ``original_size`` and ``target_size`` micro-conditions to the base bucket when they
            are left at their default ``(height, width)``.
        sequential_uncond (`bool`, *optional*, defaults to `None`):
            Run the unconditional branch as a UNet pass of its own, so no pass is larger than direct
            inference's two-image batch (same peak memory; same output to round-off). `None`: on from
            128x128 latents (1024 px) up.
        filter_pieces (`bool`, *optional*, defaults to `None`):
            Run the Fourier filters (FouriScale's low-pass filter and the paper's FreeU) in eight groups of channels
            one after the other, so their float32 copies and spectra are an eighth of the feature map's (every
            channel is filtered on its own: the same result), and the paper's FreeU in place on the up block's
            concatenation of hidden state and skip instead of on a copy of it. `None`: off, unless a memory budget
            needs it.
        resnet_pieces (`bool`, *optional*, defaults to `None`):
            Run each resnet of the stages that carry three branches one branch at a time, so its intermediate
            tensors (normalised input, filtered copy, conv outputs) are one branch large (same result to
            round-off). `None`: off, unless a memory budget needs it.
        sequential_uncond_all_steps (`bool`, *optional*, defaults to `None`):
            Run the unconditional branch as a pass of its own on every guided step, the plain ones (after
            ``stop_step``) included: every pass is then one branch, half of direct inference's batch (less memory
            than direct inference, a little slower; same output to round-off). `None`: off, unless a memory budget
            (``max_memory``) needs it.
        vae_tiling (`bool`, *optional*, defaults to `None`):
            Decode in tiles that share GroupNorm statistics (no colour or contrast seams). `None`: on for
            images above ``vae_tiling_threshold`` pixels. Only for ``AutoencoderKL`` and
            ``AsymmetricAutoencoderKL``; other VAEs (``AutoencoderTiny``, ``ConsistencyDecoderVAE``) decode as
            they do stock.
        vae_tiling_threshold (`int`, defaults to `2048 * 2048`):
            Pixel count above which `vae_tiling=None` tiles the decode.
        vae_tile_size (`int`, *optional*, defaults to `None`):
            Side of a tile of the tiled decode in latent pixels, its 16-pixel margins included; a latent no larger
            than one tile is never tiled. Smaller tiles need less memory and take longer (the margins are decoded
            twice). A multiple of 8 from 48 up; `None`: 128 (1024 px for SD/SDXL), or what a memory budget picks.
        feed_forward_pieces (`bool`, *optional*, defaults to `None`):
            Run the feed-forward layers of the stages that carry three branches in pieces of the stock batch's
            size, so their hidden layer (the largest tensor of a transformer block) is never larger than in direct
            inference (same result to round-off). `None`: on feature maps from 64 x 64 tokens on, where it is also
            faster; `True`: everywhere, and every feed-forward from the first stage with three branches on also
            runs in pieces of 4096 tokens (its hidden layer a piece at a time); `False`: never.
        max_memory (`int` or `str`, *optional*, defaults to `None`):
            A budget for the device's peak memory: bytes, or a size such as `"12GB"` (GB = 10^9 bytes, GiB = 2^30;
            :func:`fouriscale.memory.parse_memory`), stored as bytes. Before the first step of each size, the
            diffusers host estimates the peak (:func:`fouriscale.estimate_memory`) and picks the fastest settings
            that fit: the unconditional pass alone, feed-forward pieces everywhere, a tiled decode with smaller
            tiles, then diffusers' model CPU offload; only settings left at `None` (auto) are changed, and none
            changes the result beyond float round-off. When nothing fits it refuses before any work with one
            `ValueError` line giving the estimate and the budget. `None`: no budget.
        dilated_convs (`bool`, defaults to `True`):
            Dilate (and low-pass filter) the patched convs. `False` leaves every conv as it is, keeping only
            FouriScale's conditioning and guidance settings; with ``freeu=None`` this is the official
            ControlNet script's recipe (its conv patch is commented out), see ``OFFICIAL_CONTROLNET``.
        size_limit (`bool`, defaults to `True`):
            Refuse sizes above ``MAX_SIDE`` (16384) pixels per side or ``MAX_PIXELS`` (8192 x 8192) in total before
            any work starts; `False` lifts the limit.
        share_branches (`bool`, defaults to `True`):
            Run the structure and detail branches as one until the first layer that treats them differently,
            and drop the structure branch after the last self-attention that reads it (same result to float
            round-off, less work). `False` runs all three branches through the whole UNet.
    """

    start_step: int | None = None
    stop_step: int | None = None
    progressive: bool = True
    low_pass: bool = True
    attention_guidance: bool = True
    pad_then_crop: bool = True
    amp_guidance: bool = False
    amp_guidance_factor: float = 2.4
    freeu: str | None = "paper"
    freeu_params: tuple[float, float, float, float] | None = None
    dilation: int | None = None
    base_size: tuple[int, int] | None = None
    layers: tuple[str, ...] | None = None
    mask_floor: float | None = None
    detail_dilation_divisor: float | None = None
    base_size_conditioning: bool = True
    sequential_uncond: bool | None = None
    vae_tiling: bool | None = None
    vae_tiling_threshold: int = 2048 * 2048
    vae_tile_size: int | None = None
    feed_forward_pieces: bool | None = None
    sequential_uncond_all_steps: bool | None = None
    filter_pieces: bool | None = None
    resnet_pieces: bool | None = None
    max_memory: int | None = None
    share_branches: bool = True
    dilated_convs: bool = True
    size_limit: bool = True

    def __post_init__(self) -> None:
        def fail(name: str, problem: str) -> None:
            raise SettingError(name, f"FouriScaleConfig.{name}: {problem}", value=getattr(self, name, None))

        for name in (
            "progressive",
            "low_pass",
            "attention_guidance",
            "pad_then_crop",
            "amp_guidance",
            "base_size_conditioning",
            "share_branches",
            "dilated_convs",
            "size_limit",
        ):
            if not isinstance(getattr(self, name), bool):
                fail(name, f"expected True or False, got {getattr(self, name)!r}")
        for name in ("start_step", "stop_step"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or not 0 <= value <= MAX_STEPS):
                fail(name, f"expected a step number from 0 to {MAX_STEPS} or None, got {value!r}")
        if self.start_step is not None and self.stop_step is not None and self.start_step > self.stop_step:
            fail("start_step", f"start_step ({self.start_step}) must not exceed stop_step ({self.stop_step})")
        if not _is_number(self.amp_guidance_factor) or not self.amp_guidance_factor > 0:
            fail("amp_guidance_factor", f"expected a positive number, got {self.amp_guidance_factor!r}")
        if self.freeu not in FREEU_MODES:
            fail("freeu", f"expected 'paper', 'diffusers' or None, got {self.freeu!r}")
        if self.freeu_params is not None:
            params = self.freeu_params
            if not isinstance(params, (tuple, list)) or len(params) != 4 or not all(_is_number(p) for p in params):
                fail("freeu_params", f"expected four numbers (b1, b2, s1, s2), got {params!r}")
            object.__setattr__(self, "freeu_params", tuple(float(p) for p in params))
        if self.dilation is not None and (not _is_int(self.dilation) or not 1 <= self.dilation <= MAX_DILATION):
            fail("dilation", f"expected an integer from 1 to {MAX_DILATION} or None, got {self.dilation!r}")
        if self.base_size is not None:
            size = self.base_size
            if (
                not isinstance(size, (tuple, list))
                or len(size) != 2
                or not all(_is_int(s) and 0 < s <= MAX_SIDE for s in size)
            ):
                fail(
                    "base_size",
                    f"expected (height, width) in pixels as two integers from 1 to {MAX_SIDE}, got {size!r}",
                )
            object.__setattr__(self, "base_size", (int(size[0]), int(size[1])))
        if self.layers is not None:
            layers = (self.layers,) if isinstance(self.layers, str) else self.layers
            if not isinstance(layers, (tuple, list)) or not layers or not all(isinstance(s, str) and s for s in layers):
                fail("layers", f"expected a non-empty list of module paths, got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(layers))
        for name in (
            "sequential_uncond",
            "vae_tiling",
            "feed_forward_pieces",
            "sequential_uncond_all_steps",
            "filter_pieces",
            "resnet_pieces",
        ):
            if getattr(self, name) not in (None, True, False):
                fail(name, f"expected True, False or None, got {getattr(self, name)!r}")
        if not _is_int(self.vae_tiling_threshold) or self.vae_tiling_threshold < 1:
            fail("vae_tiling_threshold", f"expected a positive pixel count, got {self.vae_tiling_threshold!r}")
        tile = self.vae_tile_size
        if tile is not None and (not _is_int(tile) or tile < MIN_VAE_TILE or tile % 8):
            fail(
                "vae_tile_size",
                f"expected a multiple of 8 from {MIN_VAE_TILE} latent pixels up or None, got {tile!r}",
            )
        if self.max_memory is not None:
            try:
                budget = parse_memory(self.max_memory, "max_memory")
            except ValueError as exc:
                fail("max_memory", str(exc).removeprefix("max_memory: "))
            object.__setattr__(self, "max_memory", budget)
        if self.mask_floor is not None and (not _is_number(self.mask_floor) or not 0 <= self.mask_floor < 1):
            fail("mask_floor", f"expected a number in [0, 1), got {self.mask_floor!r}")
        if self.detail_dilation_divisor is not None and (
            not _is_number(self.detail_dilation_divisor) or not self.detail_dilation_divisor >= 1
        ):
            fail("detail_dilation_divisor", f"expected a number >= 1, got {self.detail_dilation_divisor!r}")

    @property
    def tile_size(self) -> int:
        """The tiled decode's tile side in latent pixels (``vae_tile_size``, or 128)."""
        return self.vae_tile_size or VAE_TILE

    def replace(self, **overrides) -> FouriScaleConfig:
        """A copy with some fields changed; unknown names raise ``TypeError`` listing the valid ones."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(self))
            raise TypeError(f"unknown FouriScale option(s) {', '.join(unknown)}; valid options: {valid}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        """Plain-Python form (JSON-serialisable) of every field."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Preset:
    """One of the paper's experimental settings (50 DDIM steps, official start/stop steps)."""

    name: str
    family: str  # "sd1", "sd2" or "sdxl": the model family the setting was reported for
    height: int
    width: int
    guidance_scale: float
    num_inference_steps: int = 50
    config: FouriScaleConfig = field(default_factory=FouriScaleConfig)


# The sizes of the paper's tables (height, width) per family.
_PAPER_SIZES = {
    "sd1": ((1024, 1024), (1280, 1280), (1024, 2048), (2048, 2048)),
    "sd2": ((1024, 1024), (1280, 1280), (1024, 2048), (2048, 2048)),
    "sdxl": ((2048, 2048), (2560, 2560), (2048, 4096), (4096, 4096)),
}


def _paper_presets() -> dict[str, Preset]:
    presets = {}
    for name, sizes in _PAPER_SIZES.items():
        fam = FAMILIES[name]
        for h, w in sizes:
            native = fam.paper_native
            d = choose_bucket(h, w)[1] if fam.bucketed else sd_dilation(h, w, native, native)
            start, stop = fam.window(d, 50)
            key = f"{name}-{w}x{h}"
            presets[key] = Preset(
                key, name, h, w, fam.guidance_scale, config=FouriScaleConfig(start_step=start, stop_step=stop)
            )
    return presets


#: The paper's settings by name, e.g. ``PAPER_PRESETS["sdxl-4096x4096"]`` (names are ``FAMILY-WIDTHxHEIGHT``).
PAPER_PRESETS: dict[str, Preset] = _paper_presets()

#: The official SDXL ControlNet script's recipe (``text2image_xl_controlnet.py``): its conv patch is commented out,
#: so its three branches get identical inputs and the Q/K copy changes nothing; what remains is plain ControlNet
#: inference with the micro-conditions at the base bucket, no FreeU, optional ``amp_guidance=True``, and a
#: conditioning scale of 0.5 (the call arguments come from :func:`fouriscale.official_controlnet_kwargs`).
OFFICIAL_CONTROLNET = FouriScaleConfig(dilated_convs=False, freeu=None)
