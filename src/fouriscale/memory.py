"""The memory model (layer 2): budgets, estimates, and the budget's choice of settings.

Nothing here runs a model. A host measures (:func:`fouriscale.estimate_memory` on the diffusers host runs the real
components on weightless tensors and counts live bytes); this module holds what it measures and decides from it:

* :func:`parse_memory` reads a budget (``"12GB"``, ``"11.5GiB"``, ``8_000_000_000``). **GB is 10^9 bytes** (SI, as
  accelerate's ``max_memory`` and disk sizes count), GiB is 2^30 bytes (what ``nvidia-smi`` calls MiB/GiB). A card
  sold as "12 GB" has 12 GiB = 12.88 GB, so ``12GB`` leaves it about 0.9 GB for the CUDA context and the
  allocator's slack, which the estimate does not include.
* :class:`PhaseEstimate` and :class:`MemoryEstimate`: the peak of each phase of a generation (text encoders, a stock
  step, a FouriScale step, the VAE decode), as resident weights plus the peak of live activation bytes, the module
  where that peak happens, and the assumptions behind the numbers. ``print(estimate)`` shows it.
* :func:`choose_settings`: the fastest settings that fit a budget, from ordered levers (:class:`Rung`) per phase and a
  measure of each; pure bookkeeping over estimates, so it is tested without a model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import SettingError

__all__ = [
    "parse_memory",
    "format_bytes",
    "PhaseEstimate",
    "MemoryEstimate",
    "Rung",
    "BudgetChoice",
    "choose_settings",
    "TEXT",
    "STOCK_STEP",
    "FOURISCALE_STEP",
    "DECODE",
    "OFFLOADS",
    "LEVER_NAMES",
]

#: Phase names, in the order a generation runs them.
TEXT, STOCK_STEP, FOURISCALE_STEP, DECODE = "text encoders", "stock step", "FouriScale step", "VAE decode"
#: Offload modes of the estimate, fastest first: every component on the device; diffusers'
#: ``enable_model_cpu_offload`` (one component on the device while it runs); ``enable_sequential_cpu_offload``.
OFFLOADS = ("none", "model", "sequential")

_UNITS = {
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_AMOUNT = re.compile(r"^\s*([+-]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")
_HINT = "e.g. 12GB (GB = 10^9 bytes), 11.5GiB (GiB = 2^30 bytes), 8000MB, or a number of bytes"


def _bad(value, problem: str) -> SettingError:
    return SettingError("max_memory", problem, value=value)


def parse_memory(value, name: str = "max_memory") -> int:
    """A memory amount in bytes from ``value``: an integer number of bytes, or a string of a number and a unit
    (``B``, ``KB``, ``MB``, ``GB``, ``TB``: powers of 1000; ``KiB``, ``MiB``, ``GiB``, ``TiB``: powers of 1024;
    case-insensitive; no unit: bytes). Raises ``ValueError`` naming ``name`` for anything else, for amounts that are
    not more than 0, and for ambiguous units (``12G``: write ``12GB`` or ``12GiB``): a
    :class:`~fouriscale.errors.SettingError` (a ``ValueError``) of the setting ``max_memory``."""
    if isinstance(value, bool):
        raise _bad(value, f"{name}: expected a memory size, got {value!r}; {_HINT}")
    if isinstance(value, int):
        amount = float(value)
    elif isinstance(value, float):
        amount = value
    elif isinstance(value, str):
        match = _AMOUNT.match(value)
        if not match:
            raise _bad(value, f"{name}: {value!r} is not a memory size; {_HINT}")
        number, unit = match.group(1).replace("_", ""), match.group(2).lower()
        if unit and unit not in _UNITS:
            if unit in ("k", "m", "g", "t"):
                raise _bad(
                    value,
                    f"{name}: {value!r} is ambiguous; write {number}{unit.upper()}B (10^n bytes) or "
                    f"{number}{unit.upper()}iB (2^n bytes)",
                )
            raise _bad(value, f"{name}: {value!r} has an unknown unit {match.group(2)!r}; {_HINT}")
        amount = float(number) * _UNITS.get(unit, 1)
    else:
        raise _bad(value, f"{name}: expected a memory size such as '12GB' or a number of bytes, got {value!r}")
    if not math.isfinite(amount):
        raise _bad(value, f"{name}: {value!r} is not a finite amount; {_HINT}")
    if amount <= 0 or round(amount) < 1:
        raise _bad(value, f"{name}: {value!r} must be more than 0 bytes; {_HINT}")
    return int(round(amount))


def format_bytes(n: int | float) -> str:
    """``n`` bytes for people: ``13.42 GB``, ``512 MB``, ``3 KB`` (powers of 1000, as :func:`parse_memory`)."""
    n = float(n)
    for unit, size in (("TB", 1e12), ("GB", 1e9)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class PhaseEstimate:
    """One phase of a generation: the weights on the device while it runs and the peak of the tensors it allocates."""

    name: str  # TEXT, STOCK_STEP, FOURISCALE_STEP or DECODE
    weights: int  # bytes of weights resident on the device during the phase
    activations: int  # peak of live bytes of the tensors the phase allocates (its inputs included)
    where: str  # the module (and operation) running at that peak
    detail: str = ""  # e.g. "step 0 of 50: 3 branches, conv dilation 4 (detail 3)"
    components: tuple[str, ...] = ()  # the components whose weights are resident

    @property
    def peak(self) -> int:
        return self.weights + self.activations


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak device memory of a generation, known before it runs.

    ``peak`` is the largest of the phases' peaks (resident weights plus live activations); ``phases`` holds each
    one with the module where its activations peak; ``assumptions`` says what the numbers include and leave out.
    """

    label: str  # e.g. "SDXL at 4096x4096, 50 steps, FouriScale"
    height: int
    width: int
    num_steps: int
    dtype: str  # "fp16", "bf16", "fp32"
    device: str
    attention: str  # "sdpa" or "math"
    offload: str  # one of OFFLOADS
    phases: tuple[PhaseEstimate, ...]
    components: tuple[tuple[str, int], ...]  # (component, bytes of its weights on the device when resident)
    settings: tuple[str, ...] = ()  # the memory-relevant settings the estimate ran with, in words
    assumptions: tuple[str, ...] = ()

    @property
    def peak(self) -> int:
        """Bytes on the device at the worst moment: resident weights plus the live activations then."""
        return max(phase.peak for phase in self.phases)

    @property
    def peak_phase(self) -> PhaseEstimate:
        """The phase where :attr:`peak` happens."""
        return max(self.phases, key=lambda phase: phase.peak)

    @property
    def weights(self) -> int:
        """Bytes of all weights of the pipeline's components (what sits on the device without offload)."""
        return sum(size for _, size in self.components)

    def phase(self, name: str) -> PhaseEstimate | None:
        """The phase called ``name`` (``TEXT``, ``STOCK_STEP``, ``FOURISCALE_STEP``, ``DECODE``), or ``None``."""
        return next((phase for phase in self.phases if phase.name == name), None)

    def describe(self) -> str:
        top = self.peak_phase
        offload = {"none": "no offload", "model": "model CPU offload", "sequential": "sequential CPU offload"}
        lines = [
            f"Memory estimate: {self.label}; {self.dtype} on {self.device}, {offload.get(self.offload, self.offload)}",
            f"  peak               {format_bytes(self.peak)} in the {top.name}, at {top.where}",
            "  weights            "
            + ", ".join(f"{name} {format_bytes(size)}" for name, size in self.components if size)
            + f" (all {format_bytes(self.weights)})",
            f"  {'phase':<18} {'weights':>10} {'activations':>12} {'peak':>10}  at",
        ]
        for phase in self.phases:
            lines.append(
                f"  {phase.name:<18} {format_bytes(phase.weights):>10} {format_bytes(phase.activations):>12} "
                f"{format_bytes(phase.peak):>10}  {phase.where}" + (f" ({phase.detail})" if phase.detail else "")
            )
        if self.settings:
            lines.append("  settings           " + "; ".join(self.settings))
        for k, text in enumerate(self.assumptions):
            lines.append(("  assumes            " if k == 0 else "                     ") + text)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


#: The budget's levers (``FouriScaleConfig`` fields) in words.
LEVER_NAMES = {
    "sequential_uncond": "unconditional pass alone",
    "sequential_uncond_all_steps": "unconditional pass alone on plain steps",
    "feed_forward_pieces": "feed-forwards in pieces",
    "filter_pieces": "Fourier filters in pieces",
    "resnet_pieces": "forked resnets one branch at a time",
    "vae_tiling": "tiled VAE decode",
}


@dataclass(frozen=True)
class Rung:
    """One step of a phase's ladder of memory levers: the settings it takes (cumulative: a rung keeps the levers of
    the rungs before it) and their name in words. The first rung of a ladder is the settings as they are."""

    label: str  # e.g. "unconditional pass alone", "VAE tiles of 96 latent px"
    overrides: tuple[tuple[str, object], ...] = ()  # FouriScaleConfig fields and values

    @property
    def settings(self) -> dict:
        return dict(self.overrides)


@dataclass(frozen=True)
class BudgetChoice:
    """What :func:`choose_settings` picked: an offload mode and one rung per phase, with the peaks they give."""

    budget: int
    fits: bool  # every phase's peak is within the budget
    offload: str  # one of OFFLOADS
    rungs: tuple[tuple[str, Rung], ...]  # (phase, chosen rung)
    peaks: tuple[tuple[str, int], ...]  # (phase, estimated peak with that rung and offload)
    estimate: MemoryEstimate | None = field(default=None, compare=False)  # the host's estimate of the choice

    @property
    def peak(self) -> int:
        return max(peak for _, peak in self.peaks)

    @property
    def overrides(self) -> dict:
        """The config fields every chosen rung sets, merged."""
        merged: dict = {}
        for _, rung in self.rungs:
            merged.update(rung.overrides)
        return merged

    @property
    def levers(self) -> tuple[str, ...]:
        """The chosen levers in words, each once (the settings as they are are no lever), offload last."""
        overrides, words = self.overrides, []
        for name, value in overrides.items():
            if name == "vae_tile_size":
                continue
            if name == "vae_tiling":
                tile = overrides.get("vae_tile_size")
                words.append(f"VAE tiles of {tile} latent px" if tile else LEVER_NAMES[name])
            else:
                words.append(LEVER_NAMES.get(name, f"{name}={value!r}"))
        if self.offload != "none":
            words.append(f"{self.offload} CPU offload")
        return tuple(words)

    def to_dict(self) -> dict:
        """Plain-Python form (JSON-serialisable), for an image's embedded settings."""
        return {
            "budget": self.budget,
            "fits": self.fits,
            "offload": self.offload,
            "levers": list(self.levers),
            "settings": {k: v for k, v in self.overrides.items()},
            "peak": self.peak,
            "phases": dict(self.peaks),
        }

    def describe(self) -> str:
        """One line: the budget, what was chosen and the estimate."""
        chosen = ", ".join(self.levers) or "the settings as they are"
        verdict = "fits with" if self.fits else "does not fit even with"
        return f"budget {format_bytes(self.budget)}: {verdict} {chosen}; estimated peak {format_bytes(self.peak)}"

    def __str__(self) -> str:
        return self.describe()


def choose_settings(
    budget: int,
    ladders: Mapping[str, Sequence[Rung]],
    activations: Callable[[str, Rung], int],
    weights: Callable[[str, str], int],
    offloads: Sequence[str] = ("none", "model"),
) -> BudgetChoice:
    """The fastest settings whose estimated peak is within ``budget`` bytes.

    ``ladders`` maps each phase to its rungs, fastest first (the first: the settings as they are);
    ``activations(phase, rung)`` is the phase's activation peak with that rung, ``weights(offload, phase)`` the
    bytes of weights on the device during the phase under an offload mode. Phases are independent (a step's levers
    do not change the decode, and back), so each phase takes its own fastest rung that fits; offload modes are
    tried in the order given, the first that lets every phase fit wins. Each ``activations`` value is asked once.

    Returns a :class:`BudgetChoice`; when nothing fits, ``fits`` is ``False`` and it holds the lowest peak found
    (every phase at its least-memory rung, under the offload mode that gives the lowest peak), for the refusal.
    """
    measured: dict[tuple[str, int], int] = {}

    def act(phase: str, index: int) -> int:
        key = (phase, index)
        if key not in measured:
            measured[key] = int(activations(phase, ladders[phase][index]))
        return measured[key]

    lowest = None
    for offload in offloads:
        rungs, peaks = [], []
        for phase, ladder in ladders.items():
            if not ladder:
                raise ValueError(f"phase {phase!r} has no rung (its first rung is the settings as they are)")
            resident = int(weights(offload, phase))
            pick = None
            for index in range(len(ladder)):
                if resident + act(phase, index) <= budget:
                    pick = index
                    break
            if pick is None:  # nothing fits: the least-memory rung, for the refusal's numbers
                pick = min(range(len(ladder)), key=lambda k: (act(phase, k), k))
            rungs.append((phase, ladder[pick]))
            peaks.append((phase, resident + act(phase, pick)))
        choice = BudgetChoice(budget, all(p <= budget for _, p in peaks), offload, tuple(rungs), tuple(peaks))
        if choice.fits:
            return choice
        if lowest is None or choice.peak < lowest.peak:
            lowest = choice
    if lowest is None:
        raise ValueError("choose_settings needs at least one offload mode")
    return lowest
