"""Defaults and value checks shared by the CLI and the web UI: one place for each.

Per-family values come from :data:`fouriscale.FAMILIES` (guidance 7.5 for SD 1.x/2.x, 5.0 for SDXL, the
official scripts'); sizes, steps and start/stop windows are checked by the library's
:func:`fouriscale.get_plan`, not here. What is here: the recipe defaults (DDIM with eta 1.0, 50 steps,
seed 23, twice the native size), and strict conversions of typed input (a width of ``64.5``, a seed
``"abc"`` or a checkbox ``"no"`` are refused, not rounded or taken as true).
"""

from __future__ import annotations

import math

from ..profiles import FAMILIES
from .errors import UserError

__all__ = [
    "DEFAULT_SEED",
    "DEFAULT_STEPS",
    "DEFAULT_SCHEDULER",
    "DEFAULT_ETA",
    "DEFAULT_STRENGTH",
    "DEFAULT_INPAINT_STRENGTH",
    "DEFAULT_CONTROL_SCALE",
    "MAX_CONTROL_SCALE",
    "MAX_GUIDANCE",
    "MAX_SEED",
    "default_guidance",
    "default_size",
    "as_int",
    "as_float",
    "as_bool",
    "check_guidance",
    "check_eta",
    "check_strength",
    "check_control_scale",
]

DEFAULT_SEED = 23
DEFAULT_STEPS = 50
DEFAULT_SCHEDULER = "ddim"
DEFAULT_ETA = 1.0
#: img2img strength of ``upscale``, ``--init-image`` and ``--two-pass`` (``fouriscale.two_pass``'s default).
DEFAULT_STRENGTH = 0.6
#: Inpainting re-draws the masked part from noise by default.
DEFAULT_INPAINT_STRENGTH = 1.0
#: ControlNet conditioning scale when none is given (diffusers' default; the official recipe's is 0.5).
DEFAULT_CONTROL_SCALE = 1.0
#: ControlNet conditioning scales from 0 to this are accepted (the official recipe uses 0.5, diffusers 1.0).
MAX_CONTROL_SCALE = 10.0
#: Guidance scales from 0 to this are accepted (the paper uses 7.5 and 5.0).
MAX_GUIDANCE = 100.0
MAX_SEED = 2**64 - 1


def default_guidance(family: str) -> float:
    """The official scripts' guidance scale for a family (``fouriscale.FAMILIES[family].guidance_scale``)."""
    return FAMILIES[family].guidance_scale


def default_size(native: tuple[int, int]) -> tuple[int, int]:
    """Twice the native size ``(height, width)``: the smallest size where FouriScale acts on SD models."""
    return 2 * native[0], 2 * native[1]


def as_int(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an integer: ints, integral floats (``64.0``) and digit strings; not booleans, not ``64.5``."""
    number = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if number is None:
        raise UserError(f"{name} must be a whole number, got {_show(value)}")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise UserError(f"{name} must be a whole number from {lo} to {hi}, got {number}")
    return number


def as_float(value, name: str, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a finite float (numbers or numeric strings; not booleans, ``nan`` or ``inf``) in ``lo..hi``."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise UserError(f"{name} must be a finite number, got {_show(value)}")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise UserError(f"{name} must be from {lo:g} to {hi:g}, got {number:g}")
    return number


def as_bool(value, name: str) -> bool:
    """``value`` if it is ``True`` or ``False``; anything else (``"no"``, ``1``, ``None``) is refused."""
    if isinstance(value, bool):
        return value
    raise UserError(f"{name} must be true or false, got {_show(value)}")


def check_guidance(value, name: str = "guidance") -> float:
    """A guidance scale: finite, from 0 to :data:`MAX_GUIDANCE` (100)."""
    return as_float(value, name, 0.0, MAX_GUIDANCE)


def check_eta(value, name: str = "eta") -> float:
    """DDIM's eta: finite, from 0 to 1."""
    return as_float(value, name, 0.0, 1.0)


def check_strength(value, name: str = "strength") -> float:
    """An img2img strength: a finite number in (0, 1] (0 would change nothing, above 1 means nothing)."""
    number = as_float(value, name)
    if not 0 < number <= 1:
        raise UserError(f"{name} must be more than 0 and at most 1, got {number:g}")
    return number


def check_control_scale(value, name: str = "control scale") -> float:
    """A ControlNet conditioning scale: finite, from 0 to :data:`MAX_CONTROL_SCALE` (10)."""
    return as_float(value, name, 0.0, MAX_CONTROL_SCALE)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
