"""The command line's shared options, declared once as argparse parent parsers and reused by every command
that takes them (``generate``, ``upscale``, ``compare``, ``plan``, ``ui``, ``benchmark-quality``), with the helpers
that turn them into a :class:`~fouriscale.FouriScaleConfig` and a size.

Syntax is checked while parsing (``WxH``, finite numbers, eta in [0, 1], seeds in 0 .. 2**64 - 1, conflicting
flags); sizes, steps and start/stop windows by the library's :func:`fouriscale.get_plan`.
"""

from __future__ import annotations

import argparse
import re
import sys

from ...config import PAPER_PRESETS, FouriScaleConfig
from ...memory import parse_memory
from ...schedule import scaled_window
from ..defaults import (
    DEFAULT_ETA,
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    MAX_CONTROL_SCALE,
    MAX_SEED,
    as_float,
    check_control_scale,
    check_eta,
    check_guidance,
    check_strength,
)
from ..errors import UserError, user_errors
from ..loading import SCHEDULERS
from ..recipe import parse_seeds
from ..requests import Size

__all__ = [
    "Parser",
    "parents",
    "size_type",
    "seed_type",
    "seed_list_type",
    "scale_type",
    "strength_type",
    "config_from",
    "size_from",
    "memory_from",
    "preset_window",
    "MAX_MEMORY_HELP",
]


class Parser(argparse.ArgumentParser):
    """Argument errors as one line and exit status 2, like every other error of the command."""

    def error(self, message: str):  # argparse API
        self.exit(2, f"fouriscale: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):  # argparse API
        args = _joined(sys.argv[1:] if args is None else list(args))
        return super().parse_known_args(args, namespace)


#: Options whose value may start with "-" and a digit without being a number argparse knows (``--max-memory -3GB``):
#: joined to their value (``--max-memory=-3GB``), so that the value is refused for what it is.
_SIGNED_VALUES = ("--max-memory",)


def _joined(args: list) -> list:
    joined, rest = [], iter(args)
    for arg in rest:
        if arg in _SIGNED_VALUES:
            value = next(rest, None)
            if value is not None and re.match(r"^-[\d.]", str(value)):
                joined.append(f"{arg}={value}")
                continue
            joined.extend([arg] if value is None else [arg, value])
            continue
        joined.append(arg)
    return joined


def _arg_type(check):
    """An argparse type from a checker that raises UserError."""

    def convert(text: str):
        try:
            return check(text)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = check.__name__
    return convert


def _size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> ``(height, width)``; whether the model can take it is the library's call."""
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"{text!r} is not WIDTHxHEIGHT, e.g. 2048x2048")
    width, height = (int(p) for p in parts)
    return height, width


def _pixels(text: str) -> int:
    if not text.strip().isdigit():
        raise UserError(f"{text!r} is not a whole number of pixels")
    return int(text)


def _seed(text: str) -> int:
    if not text.strip().isdigit() or int(text) > MAX_SEED:
        raise UserError(f"{text!r}: a seed is a whole number from 0 to 2**64 - 1")
    return int(text)


def _seed_list(text: str) -> list[int]:
    return parse_seeds(text)


def _finite(text: str) -> float:
    return as_float(text, "value")


def _scale(text: str) -> float:
    return as_float(text, "scale", 1.0, 16.0)


size_type = _arg_type(_size)
seed_type = _arg_type(_seed)
seed_list_type = _arg_type(_seed_list)
pixels_type = _arg_type(_pixels)
finite_type = _arg_type(_finite)
scale_type = _arg_type(_scale)
guidance_type = _arg_type(check_guidance)
eta_type = _arg_type(check_eta)
strength_type = _arg_type(check_strength)
control_scale_type = _arg_type(check_control_scale)


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def _group(title: str):
    """A parent parser with one argument group: ``(parser, group)``."""
    p = _parser()
    return p, p.add_argument_group(title)


def _common() -> argparse.ArgumentParser:
    p = _parser()
    # SUPPRESS: given after the sub-command it sets args.debug, else the top-level value stays.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and library logs")
    return p


def _model(required: bool) -> argparse.ArgumentParser:
    p, g = _group("model")
    g.add_argument(
        "--model",
        required=required,
        help="hub id, local diffusers folder, single-file .safetensors checkpoint (SD 1.x, 2.x and SDXL are "
        "detected), or tiny:sd1 / tiny:sd2 / tiny:sdxl, a built-in tiny random model that draws noise (checks an "
        "install)",
    )
    g.add_argument(
        "--config",
        dest="model_config",
        metavar="DIR",
        help="diffusers folder (or hub id) whose configs describe a single-file checkpoint (needed offline)",
    )
    g.add_argument(
        "--allow-pickle", action="store_true", help="allow pickle checkpoints (.ckpt/.bin); they can run code"
    )
    return p


def _size_options() -> argparse.ArgumentParser:
    p, g = _group("size and steps")
    size_help = "image size, e.g. 2048x2048 (default: the preset's, else 2x the native size)"
    g.add_argument("--size", type=size_type, metavar="WxH", help=size_help)
    g.add_argument("--height", type=pixels_type, help="image height in pixels (instead of --size)")
    g.add_argument("--width", type=pixels_type, help="image width in pixels (instead of --size)")
    g.add_argument(
        "--preset",
        choices=sorted(PAPER_PRESETS),
        help="one of the paper's settings (size, steps, guidance, "
        "start/stop steps; with another --steps its start/stop are rescaled); explicit options override it",
    )
    g.add_argument("--steps", type=int, help=f"denoising steps, 1 to 1000 (default: {DEFAULT_STEPS})")
    g.add_argument(
        "--no-size-limit",
        action="store_true",
        help="allow sizes above 16384 px per side or 8192x8192 px in total (default: refused)",
    )
    return p


def _fouriscale() -> argparse.ArgumentParser:
    p, g = _group("FouriScale (defaults: the paper's)")
    g.add_argument(
        "--start-step",
        type=int,
        help="first step of the progressive phase (default: the paper's, "
        "10 of 50 for SD at <= 3x, else 20 of 50, scaled to --steps)",
    )
    g.add_argument(
        "--stop-step", type=int, help="step from which convs run plain (default: the paper's, 30 or 35 of 50)"
    )
    freeu = g.add_mutually_exclusive_group()
    freeu.add_argument(
        "--freeu",
        nargs="?",
        const="paper",
        default="paper",
        choices=["paper", "diffusers"],
        help="FreeU as the paper applied it (default: paper), or diffusers' enable_freeu",
    )
    freeu.add_argument("--no-freeu", dest="freeu", action="store_const", const=None, help="switch FreeU off")
    g.add_argument(
        "--freeu-params",
        type=finite_type,
        nargs=4,
        metavar=("B1", "B2", "S1", "S2"),
        help="FreeU values (default by family: SD1 1.2 1.4 0.9 0.2, SD2 1.1 1.2 0.9 0.2, SDXL 1.1 1.2 0.6 0.4)",
    )
    g.add_argument(
        "--amp-guidance",
        action="store_true",
        help="guidance x 2.4 before the start step (the paper's fix for blurry SDXL results; default: off)",
    )
    g.add_argument("--dilation", type=int, help="override the dilation d, 1 to 16 (default: derived from the size)")
    g.add_argument(
        "--base-size",
        type=size_type,
        metavar="WxH",
        help="override the reference size (default: native size for SD, best SDXL training bucket for SDXL)",
    )
    a = p.add_argument_group("ablations (each switches one component of the paper off)")
    for flag, text in ABLATIONS:
        a.add_argument(flag, action="store_true", help=text)
    return p


#: The ablation switches: flag and help (each is ``FouriScaleConfig.<name> = False``).
ABLATIONS = (
    ("--no-low-pass", "dilated convs without the low-pass filter"),
    ("--no-attention-guidance", "no FouriScale guidance (two branches)"),
    ("--no-pad-then-crop", "filter at the feature map's own size"),
    ("--no-progressive", "full dilation until the stop step"),
    (
        "--no-dilated-convs",
        "leave every conv undilated and unfiltered (keeps the conditioning and guidance settings; the official "
        "ControlNet script's recipe)",
    ),
)


def _pictures(init: bool = True) -> argparse.ArgumentParser:
    """Pictures in: ``--init-image``/``--mask`` (with ``init``), ``--strength``, ControlNets and their images."""
    p, g = _group("pictures in (img2img, inpainting, ControlNet)")
    if init:
        g.add_argument("--init-image", metavar="PATH", help="start from this picture (img2img)")
        g.add_argument(
            "--mask",
            metavar="PATH",
            help="inpainting mask, the size of --init-image: white is repainted, black kept (needs --init-image)",
        )
    g.add_argument(
        "--strength",
        type=strength_type,
        help=f"how much of the picture is re-drawn, in (0, 1] (default: {DEFAULT_STRENGTH:g}; inpainting 1.0)",
    )
    g.add_argument(
        "--controlnet",
        action="append",
        default=[],
        metavar="MODEL",
        help="ControlNet: hub id, diffusers folder, .safetensors file, or tiny (random, for the tiny models); "
        "repeatable for several ControlNets, paired in order with --control-image",
    )
    g.add_argument(
        "--control-image",
        action="append",
        default=[],
        metavar="PATH",
        help="conditioning picture of each --controlnet, in order (fitted to the size: see the README)",
    )
    g.add_argument(
        "--control-scale",
        action="append",
        default=[],
        type=control_scale_type,
        metavar="X",
        help=f"conditioning scale, 0 to {MAX_CONTROL_SCALE:g}: one for all ControlNets or one each, in order "
        "(default: 1.0; 0.5 with --official-controlnet)",
    )
    g.add_argument(
        "--official-controlnet",
        action="store_true",
        help="the official SDXL ControlNet script's recipe: --no-dilated-convs --no-freeu, --control-scale 0.5 "
        "unless given, micro-conditions of UNet and ControlNet at the base bucket (SDXL)",
    )
    return p


def _sampling() -> argparse.ArgumentParser:
    p, g = _group("sampling")
    g.add_argument(
        "--guidance", type=guidance_type, help="guidance scale, 0 to 100 (default: 7.5 for SD, 5.0 for SDXL)"
    )
    g.add_argument("--negative", default="", help="negative prompt (default: none)")
    g.add_argument(
        "--scheduler",
        default=DEFAULT_SCHEDULER,
        choices=list(SCHEDULERS),
        help=f"sampler (default: {DEFAULT_SCHEDULER})",
    )
    g.add_argument(
        "--eta",
        type=eta_type,
        default=DEFAULT_ETA,
        help=f"DDIM eta, 0 to 1 (default: {DEFAULT_ETA}, as the official scripts)",
    )
    return p


def _runtime() -> argparse.ArgumentParser:
    p, g = _group("device")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="weights dtype (default: fp16 on GPU, fp32 on CPU)",
    )
    g.add_argument(
        "--offload",
        default="none",
        choices=["none", "model", "sequential"],
        help="CPU offload for small GPUs (default: none)",
    )
    return p


#: ``--max-memory``'s help (``generate``, ``upscale``, ``compare``, ``plan``).
MAX_MEMORY_HELP = (
    "memory budget of the device, e.g. 12GB (GB = 10^9 bytes) or 11GiB: before loading, FouriScale picks the fastest "
    "settings whose estimated peak fits (unconditional pass alone, feed-forwards in pieces, tiled VAE decode, then "
    "model CPU offload; the latents change only by float round-off), prints and records the choice, or refuses "
    "(default: none)"
)


def _memory_budget() -> argparse.ArgumentParser:
    p, g = _group("memory")
    g.add_argument("--max-memory", metavar="SIZE", help=MAX_MEMORY_HELP)
    return p


def _output(progress: bool = True) -> argparse.ArgumentParser:
    p = _parser()
    p.add_argument("--out", default="outputs", metavar="DIR", help="output folder (default: ./outputs)")
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parents(*names: str) -> list[argparse.ArgumentParser]:
    """Parent parsers by name: ``common`` (``--debug``), ``model`` / ``model?`` (optional ``--model``),
    ``size``, ``fouriscale``, ``sampling``, ``runtime``, ``budget`` (``--max-memory``), ``output``, ``pictures``
    (``--init-image``, ``--mask``, ``--strength``, ControlNets) and ``control`` (the same without ``--init-image`` and
    ``--mask``)."""
    table = {
        "common": _common,
        "model": lambda: _model(True),
        "model?": lambda: _model(False),
        "size": _size_options,
        "fouriscale": _fouriscale,
        "sampling": _sampling,
        "runtime": _runtime,
        "budget": _memory_budget,
        "output": _output,
        "pictures": _pictures,
        "control": lambda: _pictures(init=False),
    }
    return [table[name]() for name in names]


def preset_window(preset, steps: int) -> tuple[int | None, int | None]:
    """A preset's start/stop steps (given for its 50 steps) for ``steps`` steps: the same at 50, else rescaled
    as the paper's windows are (``round(start * steps / 50)``, half up)."""
    start, stop = preset.config.start_step, preset.config.stop_step
    if start is None or stop is None:
        return start, stop
    return scaled_window(start, stop, steps)


def config_from(args, steps: int | None = None) -> FouriScaleConfig:
    """The FouriScaleConfig of parsed options: the preset's (start/stop rescaled to ``steps``), then every
    explicit option. ``UserError`` with the library's message for invalid values."""
    preset = PAPER_PRESETS[args.preset] if getattr(args, "preset", None) else None
    config = preset.config if preset else FouriScaleConfig()
    official = getattr(args, "official_controlnet", False) is True
    overrides = dict(
        freeu=None if official else args.freeu,
        amp_guidance=args.amp_guidance or config.amp_guidance,
        low_pass=not args.no_low_pass,
        attention_guidance=not args.no_attention_guidance,
        pad_then_crop=not args.no_pad_then_crop,
        progressive=not args.no_progressive,
        size_limit=not getattr(args, "no_size_limit", False),
        dilated_convs=not (official or getattr(args, "no_dilated_convs", False)),
    )
    if preset and steps is not None:
        overrides["start_step"], overrides["stop_step"] = preset_window(preset, steps)
    for name in ("start_step", "stop_step", "dilation", "freeu_params", "base_size"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    with user_errors():
        return config.replace(**overrides)


def size_from(args) -> Size:
    """The size asked for with --size/--height/--width/--preset/--steps (``--size`` and ``--height``/``--width``
    exclude each other); defaults and the model's limits are :class:`~fouriscale.frontend.requests.Size`'s and the
    library's business."""
    height = width = None
    if getattr(args, "size", None) is not None:
        if args.height is not None or args.width is not None:
            raise UserError("give either --size WxH or --height/--width, not both")
        height, width = args.size
    height = args.height if getattr(args, "height", None) is not None else height
    width = args.width if getattr(args, "width", None) is not None else width
    return Size(height, width, getattr(args, "preset", None), args.steps)


def memory_from(args) -> int | None:
    """``--max-memory`` in bytes (``None`` when not given); a malformed or non-positive amount is a
    :class:`UserError` naming the option."""
    text = getattr(args, "max_memory", None)
    if text is None:
        return None
    with user_errors():
        return parse_memory(text, "--max-memory")
