"""The plan of one generation (layer 2): everything FouriScale will do, decided before the first step.

A :class:`Plan` is immutable and printable (``fouriscale plan`` shows it). It is built from the model
profile, the requested size and the number of denoising steps; the patched modules only read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import FouriScaleConfig
from .profiles import LayerSpec, ModelProfile
from .schedule import (
    choose_bucket,
    conv_dilation,
    default_window,
    detail_conv_dilation,
    sd_dilation,
    step_dilation,
)

__all__ = ["Plan", "StepSetting", "LayerPlan", "make_plan", "UNCOND", "STRUCTURE", "DETAIL", "COND"]

# Branch roles in the UNet batch.
UNCOND, STRUCTURE, DETAIL, COND = "uncond", "structure", "detail", "cond"


@dataclass(frozen=True)
class StepSetting:
    """What the patched convs do at one denoising step."""

    index: int
    dilation: float | None  # d_i; None once the step is past stop (plain convs)
    conv_dilation: int  # ceil(d_i), 1 when inactive
    detail_conv_dilation: int  # dilation of the detail branch's convs
    amp_guidance: bool  # guidance scale amplified at this step

    @property
    def active(self) -> bool:
        """Patched convs dilate (and filter) at this step."""
        return self.dilation is not None and self.dilation != 1


_INACTIVE = StepSetting(index=-1, dilation=None, conv_dilation=1, detail_conv_dilation=1, amp_guidance=False)


@dataclass(frozen=True)
class LayerPlan:
    """A patched conv and the base size its filter pads to."""

    spec: LayerSpec
    input_size: tuple[int, int]  # feature size at this call's resolution
    filtered: bool  # low-pass filtered before the conv
    base: tuple[float, float] | None  # (hb, wb) of pad-then-crop; None: no padding


@dataclass(frozen=True)
class Plan:
    """FouriScale's decisions for one ``(model, height, width, steps, config)``."""

    profile: ModelProfile
    config: FouriScaleConfig
    height: int
    width: int
    num_steps: int
    dilation: int  # d
    base_size: tuple[float, float]  # reference size (pixels): native size (SD) or bucket (SDXL)
    start: int
    stop: int
    mask_floor: float
    detail_divisor: float
    freeu_params: tuple[float, float, float, float] | None
    layers: tuple[LayerPlan, ...]
    steps: tuple[StepSetting, ...]

    @property
    def latent(self) -> tuple[int, int]:
        f = self.profile.vae_scale_factor
        return self.height // f, self.width // f

    @property
    def noop(self) -> bool:
        """At or below the reference size FouriScale changes nothing."""
        return self.dilation <= 1

    @property
    def family(self) -> str:
        return self.profile.family

    def step(self, i: int) -> StepSetting:
        """Setting of denoising step ``i`` (inactive outside ``0..num_steps-1``)."""
        if self.noop or not 0 <= i < len(self.steps):
            return _INACTIVE
        return self.steps[i]

    def layer_base(self, spec: LayerSpec, Hf: int) -> tuple[float, float]:
        """Base size ``(hb, wb)`` the filter of ``spec`` pads to, for an input of height ``Hf``.

        SD: the layer's input size at the native resolution. SDXL: the bucket scaled by the feature's
        height ratio, ``hb = bh / (height / Hf)``, ``wb = bw / (height / Hf)`` (official evaluation order).
        """
        bh, bw = self.base_size
        if self.family == "sdxl":
            ratio = self.height / Hf
            return bh / ratio, bw / ratio
        f = self.profile.vae_scale_factor
        return _halve(round(bh / f), spec.level), _halve(round(bw / f), spec.level)

    def branches(self, step: StepSetting, cfg: bool) -> tuple[str, ...]:
        """Roles of the UNet batch's branches at ``step`` (with or without classifier-free guidance).

        FouriScale guidance needs a structure and a detail branch only while the convs are active: past
        ``stop`` both would receive identical inputs and give identical outputs, so the stock batch runs.
        """
        if self.config.attention_guidance and step.active:
            return (UNCOND, STRUCTURE, DETAIL) if cfg else (STRUCTURE, DETAIL)
        return (UNCOND, COND) if cfg else (COND,)

    def describe(self) -> str:
        """Human-readable summary (what ``fouriscale plan`` prints)."""
        p, c = self.profile, self.config
        nh, nw = p.native_size
        lines = [
            f"FouriScale plan: {_family_name(p.variant)} at {self.width}x{self.height} (width x height), "
            f"latent {self.latent[1]}x{self.latent[0]}, {self.num_steps} steps",
            f"  native size        {nw}x{nh}",
        ]
        if self.noop:
            lines.append("  dilation           1: the size fits the reference size, FouriScale is a no-op")
            return "\n".join(lines)
        bh, bw = self.base_size
        label = "base bucket" if self.family == "sdxl" else "base size"
        lines += [
            f"  {label:<18} {_num(bw)}x{_num(bh)}",
            f"  dilation d         {self.dilation}",
            f"  schedule           full dilation for steps < {self.start}, "
            + (f"progressive for {self.start} <= i < {self.stop}, " if c.progressive else "")
            + f"plain convs from step {self.stop}",
            f"  masks              floor v={self.mask_floor:g}; low-pass {'on' if c.low_pass else 'off'}; "
            f"pad-then-crop {'on' if c.pad_then_crop else 'off'}",
            f"  guidance           {'3 branches (uncond, structure, detail)' if c.attention_guidance else 'off'}"
            + (f"; detail dilation ceil(max(d_i/{self.detail_divisor:g}, 1))" if self.detail_divisor != 1 else "")
            + (f"; amp x{c.amp_guidance_factor:g} before step {self.start}" if c.amp_guidance else ""),
            "  FreeU              "
            + (f"{c.freeu} (b1={self.freeu_params[0]:g}, b2={self.freeu_params[1]:g}, "
               f"s1={self.freeu_params[2]:g}, s2={self.freeu_params[3]:g})" if self.freeu_params else "off"),
            f"  patched layers     {len(self.layers)}",
        ]  # fmt: skip
        width = max(len(lp.spec.name) for lp in self.layers)
        for lp in self.layers:
            size = f"{lp.input_size[1]}x{lp.input_size[0]}"
            if not lp.filtered:
                base = "dilated only"
            elif lp.base is None:
                base = "filtered at own size"
            else:
                base = f"filtered, base {_num(lp.base[1])}x{_num(lp.base[0])}"
            lines.append(f"    {lp.spec.name:<{width}}  {lp.spec.kind:<11}  input {size:<9}  {base}")
        lines.append("  steps (i: d_i -> conv dilation[, detail dilation])")
        for s in self.steps:
            if s.dilation is None:
                lines.append(f"    {s.index:>3}: plain")
                continue
            extra = f", detail {s.detail_conv_dilation}" if s.detail_conv_dilation != s.conv_dilation else ""
            amp = ", amp guidance" if s.amp_guidance else ""
            lines.append(f"    {s.index:>3}: d_i={s.dilation:.4f} -> {s.conv_dilation}{extra}{amp}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def _halve(size: int, times: int) -> int:
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}"


def _family_name(variant: str) -> str:
    return {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL"}[variant]


def make_plan(
    profile: ModelProfile, height: int, width: int, num_steps: int, config: FouriScaleConfig | None = None
) -> Plan:
    """Derive the :class:`Plan` for a ``height`` x ``width`` image in ``num_steps`` denoising steps.

    Raises ``ValueError`` for sizes the model cannot take (non-positive, not a multiple of the VAE's
    scale factor, or an SDXL aspect ratio outside its buckets).
    """
    config = config or FouriScaleConfig()
    f = profile.vae_scale_factor
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % f:
            raise ValueError(f"{name} must be a positive multiple of {f} pixels for this model, got {value!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_steps!r}")

    if config.base_size is not None:
        base = (float(config.base_size[0]), float(config.base_size[1]))
        d = sd_dilation(height, width, base[0], base[1])
    elif profile.family == "sdxl":
        scale = profile.native_size[0] / 1024
        base, d = choose_bucket(height, width, scale=scale)
    else:
        nh, nw = profile.native_size
        base = (float(nh), float(nw))
        d = sd_dilation(height, width, nh, nw)
    if config.dilation is not None:
        d = config.dilation

    start, stop = default_window(profile.family, d, num_steps)
    start = config.start_step if config.start_step is not None else start
    stop = config.stop_step if config.stop_step is not None else stop
    if config.start_step is None and start > stop:
        start = stop
    if config.stop_step is None and stop < start:
        stop = start

    divisor = config.detail_dilation_divisor or profile.detail_dilation_divisor
    steps = []
    for i in range(num_steps):
        d_i = step_dilation(i, d, start, stop, config.progressive)
        amp = config.amp_guidance and i < start
        if d_i is None:
            steps.append(StepSetting(i, None, 1, 1, amp))
        else:
            steps.append(StepSetting(i, d_i, conv_dilation(d_i), detail_conv_dilation(d_i, divisor), amp))

    freeu = None
    if config.freeu is not None:
        freeu = config.freeu_params or profile.freeu_values

    plan = Plan(
        profile=profile,
        config=config,
        height=height,
        width=width,
        num_steps=num_steps,
        dilation=int(d),
        base_size=base,
        start=start,
        stop=stop,
        mask_floor=config.mask_floor if config.mask_floor is not None else profile.mask_floor,
        detail_divisor=float(divisor),
        freeu_params=freeu,
        layers=(),
        steps=tuple(steps),
    )
    latent_h, latent_w = height // f, width // f
    layers = []
    for spec in profile.layers:
        size = (_halve(latent_h, spec.level), _halve(latent_w, spec.level))
        if spec.kind == "upsampler":
            size = (size[0] * 2, size[1] * 2)  # the conv sees the upsampled map
        filtered = spec.filtered and config.low_pass
        base_hw = plan.layer_base(spec, size[0]) if (filtered and config.pad_then_crop) else None
        layers.append(LayerPlan(spec, size, filtered, base_hw))
    object.__setattr__(plan, "layers", tuple(layers))
    return plan
