"""The plan of one generation (layer 2): everything FouriScale will do, decided before the first step.

A :class:`Plan` is immutable and printable (``fouriscale plan`` shows it). It is built from the model
profile, the requested size and the number of denoising steps, and it is the one place where
per-size, per-layer and per-step values are computed: the dilation of every step, each patched
layer's base and padded size and mask scale per step, and where the structure and detail branches
fork and join. The hooks only read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import FAR_BEYOND_NATIVE, MAX_DILATION, MAX_PIXELS, MAX_SIDE, MAX_STEPS, FouriScaleConfig
from .errors import SettingError
from .memory import BudgetChoice
from .profiles import LayerSpec, ModelProfile
from .schedule import choose_bucket, conv_dilation, detail_conv_dilation, mask_scale, sd_dilation, step_dilation
from .spectral import lowpass_passes_all, padded_size

__all__ = [
    "Plan",
    "DecodePlan",
    "StepSetting",
    "LayerPlan",
    "make_plan",
    "SEQUENTIAL_UNCOND_MIN_LATENT",
    "FEED_FORWARD_PIECES_MIN_TOKENS",
    "PIPELINE_MULTIPLE",
    "size_multiple",
    "FILTER_PIECES",
]

# `sequential_uncond=None` runs the unconditional branch as its own pass from this latent area on
# (128 x 128 latents: 1024 px for SD, every SDXL size FouriScale acts on), where activations, not
# weights, dominate memory and the stock two-image batch already fills the device; there it is faster too
# (SD stand-in at 1024 px, 2-core CPU: guided steps 1.22x direct split, 1.32x batched). Below it the split
# can cost time: at 64 x 64 latents on a 2-core CPU it took the SDXL stand-in from 1.18x to 1.51x direct
# (the SD stand-in: 1.27x batched, 1.22x split), for 1-6% of peak memory.
SEQUENTIAL_UNCOND_MIN_LATENT = 128 * 128

#: What a size beyond ``FAR_BEYOND_NATIVE`` times the native size per side leads to (every front end says it).
FAR_BEYOND_CONSEQUENCE = "expect broken structure, and a long run"

# The feed-forward layers of the forked stages run the three-branch batch in pieces of the stock batch's size from
# this many tokens (a 64 x 64 feature map) on, where their hidden layer is the largest tensor of the step: the peak
# stays direct inference's, and on a CPU the pieces reuse its cache and pages. On smaller maps one whole-batch call
# is faster (GEGLU feed-forwards, 2-core CPU, 3 rows whole vs in pieces: 1024 tokens x 128 or 256 channels and 256
# tokens x 256 or 1280 channels 3-13% slower in pieces; 4096 tokens x 64-320 channels 2-15% faster, 16384 tokens
# 12-30% faster).
FEED_FORWARD_PIECES_MIN_TOKENS = 64 * 64

#: diffusers' SD and SDXL text-to-image, inpainting and adapter pipelines refuse sides not divisible by 8 in their
#: ``check_inputs``, whatever the VAE's factor (img2img and ControlNet text-to-image take multiples of the factor).
PIPELINE_MULTIPLE = 8


def size_multiple(vae_scale_factor: int) -> int:
    """What every image side must be a multiple of: the VAE's factor and :data:`PIPELINE_MULTIPLE` (8 for the
    real VAEs, also 8 for the tiny ones, whose factor is 4)."""
    return math.lcm(int(vae_scale_factor), PIPELINE_MULTIPLE)


# With `filter_pieces`, the Fourier filters run in this many groups of channels.
FILTER_PIECES = 8


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
    """A patched conv: its input size, whether and how its input is filtered, and its mask scale per step."""

    spec: LayerSpec
    input_size: tuple[int, int]  # feature size at this call's resolution
    filtered: bool  # low-pass filtered before the conv
    base: tuple[float, float] | None  # (hb, wb) of pad-then-crop; None: no padding
    padded: tuple[int, int] | None  # size the filter runs at (the input size without pad-then-crop); None: unfiltered
    scales: tuple[tuple[float, float] | None, ...]  # mask scale (s_h, s_w) per step; None where inactive
    forked: bool  # on three-branch steps it runs the forked batch (between the fork and the join block)


@dataclass(frozen=True)
class DecodePlan:
    """How the pipeline's VAE decodes this size's latents: FouriScale's tiled decode, or the VAE's own."""

    vae: str  # the VAE's class name
    patched: bool  # FouriScale's tiled decode stands in for the VAE's `decode` (it tiles large images only)
    tiled: bool  # ... and tiles this size
    text: str  # the same in words (the plan text's "VAE decode" line)


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
    layers: tuple[LayerPlan, ...]  # in the profile's layer order
    steps: tuple[StepSetting, ...]
    fork: int | None  # first stage run as three branches; None: never more than the stock branches
    join: int | None  # last stage run as three branches
    join_block: str | None  # the module of stage ``join`` that hands the batch back in stock layout
    sequential_uncond: bool  # with CFG, three-branch steps run the unconditional branch as a pass of its own
    feed_forward_pieces: tuple[bool, ...]  # per self-attention: its block's feed-forward runs a forked batch in pieces
    vae_decode: DecodePlan | None = None  # known when the plan is made for a pipeline (or given its VAE)
    memory: BudgetChoice | None = None  # what a memory budget (config.max_memory) chose for this size, by the host
    sequential_uncond_all: bool = False  # with CFG, every step runs the unconditional branch as a pass of its own
    filter_pieces: int = 1  # the Fourier filters run in this many groups of channels, one after the other
    feed_forward_tokens: int = 0  # hooked feed-forwards run in pieces of this many tokens (0: whole)
    resnet_pieces: bool = False  # the resnets of the forked stages run the forked batch one branch at a time

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
        return self.profile.family.name

    @property
    def far_beyond_native(self) -> bool:
        """More than ``FAR_BEYOND_NATIVE`` (8) times the reference size per side: results are unlikely to hold up."""
        return self.dilation > FAR_BEYOND_NATIVE

    @property
    def far_beyond_native_text(self) -> str:
        """The warning every front end gives for :attr:`far_beyond_native` sizes."""
        nh, nw = self.profile.native_size
        return (
            f"{self.width}x{self.height} is {self.dilation}x the model's native {nw}x{nh} per side (more than "
            f"{FAR_BEYOND_NATIVE}x): {FAR_BEYOND_CONSEQUENCE}"
        )

    @property
    def low_pass_idle(self) -> bool:
        """The low-pass filter is on but changes nothing at this size: at every step it acts, every filtered feature
        map's masks (strong and weak) pass every frequency, so the image is the same without it (small maps)."""
        filtered = [lp for lp in self.layers if lp.filtered]
        if self.noop or not filtered:
            return False
        return all(
            lowpass_passes_all(size, scale, self.mask_floor, weak)
            for lp in filtered
            for scales in lp.scales
            if scales is not None
            for size, scale in zip(lp.padded, scales)
            for weak in (False, True)
        )

    @property
    def low_pass_idle_text(self) -> str:
        """What every front end says when :attr:`low_pass_idle`."""
        side = max(max(lp.padded) for lp in self.layers if lp.filtered)
        return (
            f"at {self.width}x{self.height} the low-pass filter changes nothing: its masks pass every frequency of the "
            f"filtered feature maps (at most {side} px a side), so the image is the same without it; a larger size "
            "shows what it does"
        )

    def step(self, i: int) -> StepSetting:
        """Setting of denoising step ``i`` (inactive outside ``0..num_steps-1``)."""
        if self.noop or not 0 <= i < len(self.steps):
            return _INACTIVE
        return self.steps[i]

    def guided(self, step: StepSetting) -> bool:
        """FouriScale guidance acts at ``step``: the cond branch is the detail branch (weak masks)."""
        return self.config.attention_guidance and step.active

    def three_branch(self, step: StepSetting) -> bool:
        """A structure branch runs beside the detail branch at ``step`` (stages ``fork..join``)."""
        return self.guided(step) and self.fork is not None

    def describe(self) -> str:
        """Human-readable summary (what ``fouriscale plan`` prints)."""
        p = self.profile
        nh, nw = p.native_size
        lines = [
            f"FouriScale plan: {p.family.label} at {self.width}x{self.height} (width x height), "
            f"latent {self.latent[1]}x{self.latent[0]}, {self.num_steps} steps",
            f"  native size        {nw}x{nh}",
        ]
        vae = [f"  VAE decode         {self.vae_decode.text}"] if self.vae_decode is not None else []
        if self.memory is not None:
            vae.append(f"  memory budget      {self.memory.describe()}")
        if self.noop:
            lines.append("  dilation           1: the size fits the reference size, FouriScale is a no-op")
            return "\n".join(lines + vae)
        lines += self._setting_lines() + vae + [f"  patched layers     {len(self.layers)}"]
        return "\n".join(lines + self._layer_lines() + self._step_lines())

    def _branches_text(self) -> str:
        c, stages = self.config, self.profile.stages
        if self.fork is None:
            return "off" if not c.attention_guidance else "detail branch only (no layer tells the branches apart)"
        shared = f"; stock batch before {stages[self.fork]}" if self.fork > 0 else ""
        tail = f", detail only after {self.join_block}" if self.join < len(stages) - 1 else ""
        return f"3 branches (uncond, structure, detail) for {stages[self.fork]}..{self.join_block}{shared}{tail}"

    def _setting_lines(self) -> list[str]:
        """The plan text's base size, dilation, schedule, masks, guidance, FreeU and memory lines."""
        c = self.config
        bh, bw = self.base_size
        label = "base bucket" if self.profile.family.bucketed else "base size"
        far = f" (more than {FAR_BEYOND_NATIVE}x the native size per side: {FAR_BEYOND_CONSEQUENCE})"
        schedule = (
            f"full dilation for steps < {self.start}, "
            + (f"progressive for {self.start} <= i < {self.stop}, " if c.progressive else "")
            + f"plain convs from step {self.stop}"
        )
        freeu = self.freeu_params
        return [
            f"  {label:<18} {_num(bw)}x{_num(bh)}",
            f"  dilation d         {self.dilation}" + (far if self.far_beyond_native else ""),
            f"  schedule           {schedule if c.dilated_convs else 'convs not dilated (dilated_convs=False)'}",
            f"  masks              floor v={self.mask_floor:g}; low-pass {'on' if c.low_pass else 'off'}"
            + (" (no effect at this size: every mask passes all frequencies)" if self.low_pass_idle else "")
            + f"; pad-then-crop {'on' if c.pad_then_crop else 'off'}",
            f"  guidance           {self._branches_text()}"
            + (f"; detail dilation ceil(max(d_i/{self.detail_divisor:g}, 1))" if self.detail_divisor != 1 else "")
            + (f"; amp x{c.amp_guidance_factor:g} before step {self.start}" if c.amp_guidance else ""),
            "  FreeU              "
            + (f"{c.freeu} (b1={freeu[0]:g}, b2={freeu[1]:g}, s1={freeu[2]:g}, s2={freeu[3]:g})" if freeu else "off"),
            f"  memory             {self.memory_text()}",
        ]

    def _layer_lines(self) -> list[str]:
        """One line per patched conv: name, kind, input size, how it is filtered."""
        width = max(len(lp.spec.name) for lp in self.layers)
        lines = []
        for lp in self.layers:
            size = f"{lp.input_size[1]}x{lp.input_size[0]}"
            if not lp.filtered:
                base = "dilated only"
            elif lp.base is None:
                base = "filtered at own size"
            else:
                base = f"filtered, base {_num(lp.base[1])}x{_num(lp.base[0])}, padded {lp.padded[1]}x{lp.padded[0]}"
            lines.append(f"    {lp.spec.name:<{width}}  {lp.spec.kind:<11}  input {size:<9}  {base}")
        return lines

    def _step_lines(self) -> list[str]:
        """One line per step: ``d_i`` and the conv dilations, or plain."""
        lines = ["  steps (i: d_i -> conv dilation[, detail dilation])"]
        for s in self.steps:
            if s.dilation is None:
                lines.append(f"    {s.index:>3}: plain")
                continue
            extra = f", detail {s.detail_conv_dilation}" if s.detail_conv_dilation != s.conv_dilation else ""
            amp = ", amp guidance" if s.amp_guidance else ""
            lines.append(f"    {s.index:>3}: d_i={s.dilation:.4f} -> {s.conv_dilation}{extra}{amp}")
        return lines

    def memory_text(self) -> str:
        """The memory settings of the steps in words (the plan text's "memory" line)."""
        if self.sequential_uncond_all:
            uncond = "unconditional branch as a pass of its own on every step"
        elif self.fork is None:
            return "no structure branch: passes of the stock batch"
        elif self.sequential_uncond:
            uncond = "unconditional branch as a pass of its own on three-branch steps"
        else:
            uncond = "one pass of all branches"
        if self.filter_pieces > 1:
            uncond += f"; Fourier filters in {self.filter_pieces} groups of channels"
        if self.resnet_pieces:
            uncond += "; forked resnets one branch at a time"
        if self.fork is None:
            return uncond
        forked = [
            pieces
            for attention, pieces in zip(self.profile.attentions, self.feed_forward_pieces)
            if self.fork <= attention.stage <= self.join
        ]
        n, k = len(forked), sum(forked)
        tokens = f", and of {self.feed_forward_tokens} tokens" if self.feed_forward_tokens else ""
        if not k:
            return f"{uncond}; feed-forwards whole"
        return f"{uncond}; feed-forwards in pieces in {'all' if k == n else k} of {n} forked transformer blocks{tokens}"

    def __str__(self) -> str:
        return self.describe()


def _halve(size: int, times: int) -> int:
    """Feature size after ``times`` stride-2 downsamplings (each gives ``ceil(size / 2)``)."""
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}"


def layer_base(
    spec: LayerSpec, base_size: tuple[float, float], height: int, input_height: int, bucketed: bool, scale_factor: int
) -> tuple[float, float]:
    """Base size ``(hb, wb)`` the filter of ``spec`` pads to.

    SD: the layer's input size at the native resolution. SDXL: the bucket scaled by the feature's height
    ratio, ``hb = bh / (height / Hf)``, ``wb = bw / (height / Hf)`` (official evaluation order).
    """
    bh, bw = base_size
    if bucketed:
        ratio = height / input_height
        return bh / ratio, bw / ratio
    return _halve(round(bh / scale_factor), spec.level), _halve(round(bw / scale_factor), spec.level)


def _input_size(spec: LayerSpec, latent: tuple[int, int]) -> tuple[int, int]:
    # An upsampler conv sees its block's map upsampled to the next level's size (the matching skip tensor).
    level = spec.level - 1 if spec.kind == "upsampler" else spec.level
    return _halve(latent[0], level), _halve(latent[1], level)


def layer_differs(spec: LayerSpec, config: FouriScaleConfig, detail_divisor: float) -> bool:
    """The structure and detail branches compute ``spec`` differently (weak vs strong mask, or their own dilation)."""
    return config.dilated_convs and ((config.low_pass and spec.filtered) or detail_divisor != 1)


def branch_stages(profile: ModelProfile, config: FouriScaleConfig) -> tuple[int | None, int | None]:
    """``(fork, join)``: the structure branch exists from the stage of the first layer where it differs from the
    detail branch to the stage of the last self-attention that reads it (``None, None``: it is never needed).
    ``share_branches=False`` runs it through every stage. The same for every size."""
    if not config.attention_guidance:
        return None, None
    if not config.share_branches:
        return 0, len(profile.stages) - 1
    divisor = config.detail_dilation_divisor or profile.family.detail_dilation_divisor
    differing = [spec.stage for spec in profile.layers if layer_differs(spec, config, divisor)]
    if not differing:
        return None, None
    fork = min(differing)
    readers = [a.stage for a in profile.attentions if a.stage >= fork]
    if not readers:
        return None, None
    return fork, max(readers)


def join_block(profile: ModelProfile, config: FouriScaleConfig, join: int | None) -> str | None:
    """The module after which the batch is the stock one again: with ``share_branches`` the block (transformer
    model) of the last self-attention, whose output nothing of the structure branch reads; else the stage ``join``.
    """
    if join is None:
        return None
    return profile.attentions[-1].block if config.share_branches else profile.stages[join]


def runs_forked(spec: LayerSpec, profile: ModelProfile, fork: int | None, join: int | None, block: str | None) -> bool:
    """A patched conv sees the forked batch on three-branch steps: its stage lies in ``fork..join``, and in the join
    stage it comes before the join block (diffusers' blocks run their resampler after every resnet and attention)."""
    if fork is None or not fork <= spec.stage <= join:
        return False
    return not (spec.stage == join and block != profile.stages[join] and spec.kind != "conv")


def _check_size_and_steps(height: int, width: int, num_steps: int, f: int, config: FouriScaleConfig) -> None:
    """The size and step count a plan takes (:class:`~fouriscale.errors.SettingError` otherwise)."""
    f = size_multiple(f)
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % f:
            raise SettingError(
                name, f"{name} must be a positive multiple of {f} pixels for this model, got {value!r}", value=value,
                bound=f,
            )  # fmt: skip
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or not 1 <= num_steps <= MAX_STEPS:
        problem = f"num_inference_steps must be an integer from 1 to {MAX_STEPS}, got {num_steps!r}"
        raise SettingError("num_inference_steps", problem, value=num_steps, bound=(1, MAX_STEPS))
    if config.size_limit and (max(height, width) > MAX_SIDE or height * width > MAX_PIXELS):
        raise SettingError(
            "size",
            f"{width}x{height} is above FouriScale's size limit ({MAX_SIDE} px per side, {MAX_PIXELS // 2**20} MP in "
            "total); choose a smaller size",
            value=(height, width),
            bound=(MAX_SIDE, MAX_PIXELS),
            remedy="lift the limit",
            remedy_setting="size_limit",
        )
    for name, value in (("start_step", config.start_step), ("stop_step", config.stop_step)):
        if value is not None and value > num_steps:
            problem = (
                f"{name} {value} lies beyond the {num_steps} denoising steps of this generation; choose a value up to "
                f"{num_steps}, or leave it unset for the paper's window scaled to the step count"
            )
            raise SettingError(name, problem, value=value, bound=(0, num_steps))


def base_and_dilation(
    profile: ModelProfile, height: int, width: int, config: FouriScaleConfig
) -> tuple[tuple[float, float], int]:
    """The reference size ``(hb, wb)`` in pixels and the dilation ``d``: the explicit base size, SDXL's closest
    training bucket, or the native size; ``config.dilation`` overrides ``d`` (at most 16)."""
    fam = profile.family
    if config.base_size is not None:
        base = (float(config.base_size[0]), float(config.base_size[1]))
        d = sd_dilation(height, width, base[0], base[1])
    elif fam.bucketed:
        base, d = choose_bucket(height, width, scale=profile.native_size[0] / fam.paper_native)
    else:
        nh, nw = profile.native_size
        base = (float(nh), float(nw))
        d = sd_dilation(height, width, nh, nw)
    if config.dilation is not None:
        d = config.dilation
    if d > MAX_DILATION:
        problem = (
            f"{width}x{height} needs dilation {d}, more than FouriScale's {MAX_DILATION} (that many times the "
            f"reference size {int(base[1])}x{int(base[0])} per side); choose a smaller size"
        )
        raise SettingError("size", problem, value=(height, width), bound=MAX_DILATION)
    return base, d


def step_window(profile: ModelProfile, d: int, num_steps: int, config: FouriScaleConfig) -> tuple[int, int]:
    """``(start, stop)``: the family's window for ``d`` scaled to ``num_steps``, or the configured steps (an unset
    end never crosses a set one)."""
    start, stop = profile.family.window(d, num_steps)
    start = config.start_step if config.start_step is not None else start
    stop = config.stop_step if config.stop_step is not None else stop
    if config.start_step is None and start > stop:
        start = stop
    if config.stop_step is None and stop < start:
        stop = start
    return start, stop


def step_settings(
    d: int, start: int, stop: int, num_steps: int, divisor: float, config: FouriScaleConfig
) -> tuple[StepSetting, ...]:
    """Each step's dilation ``d_i``, its conv dilations (structure and detail branch) and amplified guidance."""
    steps = []
    for i in range(num_steps):
        d_i = step_dilation(i, d, start, stop, config.progressive) if config.dilated_convs else None
        amp = config.amp_guidance and i < start
        if d_i is None:
            steps.append(StepSetting(i, None, 1, 1, amp))
        else:
            steps.append(StepSetting(i, d_i, conv_dilation(d_i), detail_conv_dilation(d_i, divisor), amp))
    return tuple(steps)


def layer_plans(
    profile: ModelProfile,
    height: int,
    width: int,
    base: tuple[float, float],
    steps: tuple[StepSetting, ...],
    branches: tuple[int | None, int | None, str | None],
    config: FouriScaleConfig,
) -> tuple[LayerPlan, ...]:
    """Each patched conv's input size, whether it is filtered, its base and padded size (pad-then-crop), its mask
    scale per step and whether it runs the forked batch (``branches``: fork, join, join block)."""
    fam, f = profile.family, profile.vae_scale_factor
    latent = (height // f, width // f)
    layers = []
    for spec in profile.layers:
        size = _input_size(spec, latent)
        filtered = spec.filtered and config.low_pass and config.dilated_convs
        base_hw = padded = None
        if filtered:
            padded = size
            if config.pad_then_crop:
                base_hw = layer_base(spec, base, height, size[0], fam.bucketed, f)
                padded = padded_size(size[0], size[1], base_hw[0], base_hw[1])
        scales = tuple(
            (mask_scale(s.dilation, spec.stride[0]), mask_scale(s.dilation, spec.stride[1]))
            if filtered and s.active
            else None
            for s in steps
        )
        layers.append(LayerPlan(spec, size, filtered, base_hw, padded, scales, runs_forked(spec, profile, *branches)))
    return tuple(layers)


def make_plan(
    profile: ModelProfile, height: int, width: int, num_steps: int, config: FouriScaleConfig | None = None
) -> Plan:
    """Derive the :class:`Plan` for a ``height`` x ``width`` image in ``num_steps`` denoising steps.

    Raises :class:`~fouriscale.errors.SettingError` (a ``ValueError``) for sizes the model cannot take (non-positive,
    not a multiple of :func:`size_multiple`, above the size limit, an SDXL aspect ratio outside its buckets, a
    dilation above 16) and start or stop steps beyond the step count.
    """
    config = config or FouriScaleConfig()
    fam, f = profile.family, profile.vae_scale_factor
    _check_size_and_steps(height, width, num_steps, f, config)
    base, d = base_and_dilation(profile, height, width, config)
    start, stop = step_window(profile, d, num_steps, config)
    divisor = config.detail_dilation_divisor or fam.detail_dilation_divisor
    steps = step_settings(d, start, stop, num_steps, divisor, config)
    fork, join = branch_stages(profile, config)
    block = join_block(profile, config, join)
    latent = (height // f, width // f)
    return Plan(
        profile=profile,
        config=config,
        height=height,
        width=width,
        num_steps=num_steps,
        dilation=int(d),
        base_size=base,
        start=start,
        stop=stop,
        mask_floor=config.mask_floor if config.mask_floor is not None else fam.mask_floor,
        detail_divisor=float(divisor),
        freeu_params=(config.freeu_params or fam.freeu) if config.freeu is not None else None,
        layers=layer_plans(profile, height, width, base, steps, (fork, join, block), config),
        steps=steps,
        fork=fork,
        join=join,
        join_block=block,
        **memory_settings(profile, latent, fork, config),
    )


def memory_settings(profile: ModelProfile, latent: tuple[int, int], fork: int | None, config: FouriScaleConfig) -> dict:
    """The plan's memory fields: the configured memory settings, or the defaults for this latent size (the
    unconditional branch alone from 128 x 128 latents, feed-forward pieces on maps of 64 x 64 and more)."""
    sequential = config.sequential_uncond
    return dict(
        sequential_uncond=sequential
        if sequential is not None
        else latent[0] * latent[1] >= SEQUENTIAL_UNCOND_MIN_LATENT,
        feed_forward_pieces=tuple(
            config.feed_forward_pieces
            if config.feed_forward_pieces is not None
            else _halve(latent[0], a.level) * _halve(latent[1], a.level) >= FEED_FORWARD_PIECES_MIN_TOKENS
            for a in profile.attentions
        ),
        sequential_uncond_all=bool(config.sequential_uncond_all_steps),
        filter_pieces=FILTER_PIECES if config.filter_pieces else 1,
        feed_forward_tokens=FEED_FORWARD_PIECES_MIN_TOKENS if config.feed_forward_pieces else 0,
        resnet_pieces=bool(config.resnet_pieces) and fork is not None,
    )
