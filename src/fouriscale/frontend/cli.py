"""The ``fouriscale`` command: ``generate`` images, show the ``plan`` for a size, start the ``ui``.

Every user mistake ends in one line on stderr and a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..config import PAPER_PRESETS, FouriScaleConfig
from ..profiles import FAMILIES
from .loading import SCHEDULERS, UserError

__all__ = ["main", "build_parser"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEFAULT_SEED = 23
VARIANT_NAMES = ("direct", "fouriscale", "no-low-pass", "no-attention-guidance", "no-pad-then-crop", "no-progressive",
                 "no-freeu", "amp-guidance")  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line, like every other error of the command."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_USER_ERROR, f"fouriscale: error: {message} (see {self.prog} --help)\n")


def _size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> ``(height, width)``."""
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 2048x2048")
    width, height = (int(p) for p in parts)
    return height, width


def _add_fouriscale_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("FouriScale (defaults: the paper's)")
    g.add_argument("--start-step", type=int, help="first step of the progressive phase (default: the paper's, "
                   "10 of 50 for SD at <= 3x, else 20 of 50, scaled to --steps)")  # fmt: skip
    g.add_argument("--stop-step", type=int, help="step from which convs run plain (default: the paper's, 30 or 35 of 50)")
    g.add_argument("--freeu", nargs="?", const="paper", default="paper", choices=["paper", "diffusers"],
                   help="FreeU as the paper applied it (default: paper), or diffusers' enable_freeu")  # fmt: skip
    g.add_argument("--no-freeu", dest="freeu", action="store_const", const=None, help="switch FreeU off")
    g.add_argument("--freeu-params", type=float, nargs=4, metavar=("B1", "B2", "S1", "S2"),
                   help="FreeU values (default by family: SD1 1.2 1.4 0.9 0.2, SD2 1.1 1.2 0.9 0.2, SDXL 1.1 1.2 0.6 0.4)")  # fmt: skip
    g.add_argument("--amp-guidance", action="store_true", help="guidance x 2.4 before the start step "
                   "(the paper's fix for blurry SDXL results; default: off)")  # fmt: skip
    g.add_argument("--dilation", type=int, help="override the dilation d (default: derived from the size)")
    g.add_argument("--base-size", type=_size, metavar="WxH", help="override the reference size "
                   "(default: native size for SD, best SDXL training bucket for SDXL)")  # fmt: skip
    a = p.add_argument_group("ablations (each switches one component of the paper off)")
    a.add_argument("--no-low-pass", action="store_true", help="dilated convs without the low-pass filter")
    a.add_argument("--no-attention-guidance", action="store_true", help="no FouriScale guidance (two branches)")
    a.add_argument("--no-pad-then-crop", action="store_true", help="filter at the feature map's own size")
    a.add_argument("--no-progressive", action="store_true", help="full dilation until the stop step")


def _add_model_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help="hub id, local diffusers folder, or single-file .safetensors "
                   "checkpoint (SD 1.x, 2.x and SDXL are detected)")  # fmt: skip
    p.add_argument("--config", dest="model_config", metavar="DIR",
                   help="diffusers folder (or hub id) whose configs describe a single-file checkpoint (needed offline)")  # fmt: skip
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle checkpoints (.ckpt/.bin); they can run code")


def _add_size_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=_size, metavar="WxH", help="image size, e.g. 2048x2048 (default: the preset's, "
                   "else 2x the native size)")  # fmt: skip
    p.add_argument("--height", type=int, help="image height in pixels (instead of --size)")
    p.add_argument("--width", type=int, help="image width in pixels (instead of --size)")
    p.add_argument("--preset", choices=sorted(PAPER_PRESETS), help="one of the paper's settings (size, steps, "
                   "guidance, start/stop steps); explicit options override it")  # fmt: skip
    p.add_argument("--steps", type=int, help="denoising steps (default: 50)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fouriscale", description="Training-free high-resolution Stable Diffusion (FouriScale).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    gen = sub.add_parser("generate", help="generate images", description="Generate images with FouriScale. "
                         "Defaults are the official scripts' recipe: DDIM with eta 1.0, 50 steps, guidance 7.5 (SD) "
                         "or 5.0 (SDXL), FreeU as the paper applied it, seed 23.")  # fmt: skip
    gen.add_argument("prompt", nargs="?", help="the prompt (or use --prompts FILE)")
    gen.add_argument("--prompts", metavar="FILE", help="text file with one prompt per line")
    _add_model_options(gen)
    _add_size_options(gen)
    gen.add_argument("--guidance", type=float, help="guidance scale (default: 7.5 for SD, 5.0 for SDXL)")
    gen.add_argument("--negative", default="", help="negative prompt (default: none)")
    gen.add_argument("--seed", default=str(DEFAULT_SEED), help="a seed, a list 1,2,3 or a range 10-19 (default: 23)")
    gen.add_argument("--num-images", type=int, help="images per prompt; with one seed S they use seeds S, S+1, ... "
                     "(default: one per seed)")  # fmt: skip
    gen.add_argument("--scheduler", default="ddim", choices=list(SCHEDULERS), help="sampler (default: ddim)")
    gen.add_argument("--eta", type=float, default=1.0, help="DDIM eta (default: 1.0, as the official scripts)")
    gen.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                     help="LoRA weights, repeatable (scale default 1.0)")  # fmt: skip
    gen.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                     help="weights dtype (default: fp16 on GPU, fp32 on CPU)")  # fmt: skip
    gen.add_argument("--device", default="auto", help="cuda, cuda:N, mps or cpu (default: auto)")
    gen.add_argument("--offload", default="none", choices=["none", "model", "sequential"],
                     help="CPU offload for small GPUs (default: none)")  # fmt: skip
    gen.add_argument("--out", default="outputs", metavar="DIR", help="output folder (default: ./outputs)")
    gen.add_argument("--compare", action="store_true", help="also render the same seed without FouriScale "
                     "(NAME-direct.png) and a side-by-side NAME-compare.png")  # fmt: skip
    gen.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_fouriscale_options(gen)

    plan = sub.add_parser("plan", help="show what FouriScale will do for a model and size",
                          description="Print the plan (native size, dilation, SDXL base bucket, patched layers "
                          "with their base sizes, per-step schedule) without generating.")  # fmt: skip
    _add_model_options(plan)
    _add_size_options(plan)
    _add_fouriscale_options(plan)

    cmp = sub.add_parser("compare", help="picture direct inference, FouriScale and ablations side by side",
                         description="Render one prompt and seed under several variants, then save a labelled grid "
                         "(whole images and a full-resolution detail crop) and their power spectra on one plot.")  # fmt: skip
    cmp.add_argument("prompt", help="the prompt")
    _add_model_options(cmp)
    _add_size_options(cmp)
    cmp.add_argument("--guidance", type=float, help="guidance scale (default: 7.5 for SD, 5.0 for SDXL)")
    cmp.add_argument("--negative", default="", help="negative prompt (default: none)")
    cmp.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed (default: 23)")
    cmp.add_argument("--variants", default="direct,fouriscale,no-low-pass,no-attention-guidance",
                     help="comma-separated, from: " + ", ".join(VARIANT_NAMES) + " (default: %(default)s)")  # fmt: skip
    cmp.add_argument("--crop", metavar="X,Y,SIZE", help="detail crop: left, top and side in pixels (default: centre)")
    cmp.add_argument("--column-width", type=int, default=384, help="grid column width in pixels (default: 384)")
    cmp.add_argument("--scheduler", default="ddim", choices=list(SCHEDULERS), help="sampler (default: ddim)")
    cmp.add_argument("--eta", type=float, default=1.0, help="DDIM eta (default: 1.0)")
    cmp.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="weights dtype")
    cmp.add_argument("--device", default="auto", help="cuda, cuda:N, mps or cpu (default: auto)")
    cmp.add_argument("--out", default="outputs", metavar="DIR", help="output folder (default: ./outputs)")
    cmp.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_fouriscale_options(cmp)

    ui = sub.add_parser("ui", help="start the local web UI")
    ui.add_argument("--model", help="model to load at start (hub id, folder or .safetensors)")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    ui.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    ui.add_argument("--public", action="store_true", help="also listen on all interfaces (0.0.0.0); off by default")
    ui.add_argument("--device", default="auto", help="cuda, cuda:N, mps or cpu (default: auto)")
    ui.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="weights dtype")
    ui.add_argument("--config", dest="model_config", metavar="DIR", help="configs for a single-file checkpoint")
    ui.add_argument("--out", default="outputs", metavar="DIR", help="where finished images are saved")
    return parser


def _config_from(args) -> FouriScaleConfig:
    preset = PAPER_PRESETS[args.preset].config if getattr(args, "preset", None) else FouriScaleConfig()
    overrides = dict(
        freeu=args.freeu,
        amp_guidance=args.amp_guidance or preset.amp_guidance,
        low_pass=not args.no_low_pass,
        attention_guidance=not args.no_attention_guidance,
        pad_then_crop=not args.no_pad_then_crop,
        progressive=not args.no_progressive,
    )
    for name in ("start_step", "stop_step", "dilation", "freeu_params"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.base_size is not None:
        overrides["base_size"] = args.base_size
    try:
        return preset.replace(**overrides)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None


def _resolve_size(args, native: tuple[int, int], family: str) -> tuple[int, int, int]:
    """``(height, width, steps)`` from --size/--height/--width/--preset/--steps."""
    height = width = None
    steps = args.steps
    if steps is not None and steps < 1:
        raise UserError(f"--steps {steps}: must be at least 1")
    if args.preset:
        preset = PAPER_PRESETS[args.preset]
        if FAMILIES[preset.family].bucketed != FAMILIES[family].bucketed:
            raise UserError(f"--preset {args.preset} is for {FAMILIES[preset.family].label}; "
                            f"this model is {FAMILIES[family].label}")  # fmt: skip
        height, width = preset.height, preset.width
        steps = steps if steps is not None else preset.num_inference_steps
    if args.size:
        if args.height or args.width:
            raise UserError("give either --size WxH or --height/--width, not both")
        height, width = args.size
    height = args.height or height or 2 * native[0]
    width = args.width or width or 2 * native[1]
    steps = steps if steps is not None else 50
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % 8:
            raise UserError(f"--{name} {value}: must be a positive multiple of 8 pixels")
    return height, width, steps


def _read_prompts(args) -> list[str]:
    if args.prompt is not None and args.prompts:
        raise UserError("give a PROMPT or --prompts FILE, not both")
    if args.prompts:
        try:
            with open(args.prompts, encoding="utf-8") as fh:
                prompts = [line.strip() for line in fh if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--prompts {args.prompts}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
        if not prompts:
            raise UserError(f"--prompts {args.prompts}: the file holds no prompt")
        return prompts
    if args.prompt is None or not args.prompt.strip():
        raise UserError("no prompt: give one as an argument or use --prompts FILE")
    return [args.prompt]


def _seeds(args) -> list[int]:
    from .jobs import parse_seeds

    seeds = parse_seeds(args.seed)
    if args.num_images is not None:
        if args.num_images < 1:
            raise UserError(f"--num-images {args.num_images}: must be at least 1")
        if len(seeds) == 1:
            seeds = [seeds[0] + i for i in range(args.num_images)]
        elif len(seeds) != args.num_images:
            raise UserError(f"--num-images {args.num_images} does not match the {len(seeds)} seeds given; drop one of them")
    return seeds


def _distributed_state(device: str):
    """accelerate's process state when launched with several processes, else ``None``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")


def cmd_generate(args) -> int:
    import fouriscale

    from .jobs import Recipe, make_jobs, run_batch
    from .loading import load_pipeline, native_size, parse_lora, resolve_device, resolve_dtype

    prompts = _read_prompts(args)
    seeds = _seeds(args)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps {args.steps}: must be at least 1")
    if args.no_progress:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    config = _config_from(args)
    device = resolve_device(args.device)
    state = _distributed_state(device)
    if state is not None and device != "cpu":
        device = str(state.device)
    loras = tuple(parse_lora(spec) for spec in args.lora)
    loaded = load_pipeline(args.model, dtype=args.dtype, device=device, offload=args.offload, scheduler=args.scheduler,
                           loras=list(loras), allow_pickle=args.allow_pickle, config=args.model_config)  # fmt: skip
    pipe = loaded.pipe
    if args.no_progress:
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe.set_progress_bar_config(leave=False, desc="steps", position=1)
    height, width, steps = _resolve_size(args, native_size(pipe), loaded.family)
    guidance = args.guidance
    if guidance is None:
        guidance = PAPER_PRESETS[args.preset].guidance_scale if args.preset else FAMILIES[loaded.family].guidance_scale
    try:
        fouriscale.apply_fouriscale(pipe, config)
        fouriscale.get_plan(pipe, height, width, steps)  # a size the model cannot take fails here, before any work
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    recipe = Recipe(model=args.model, height=height, width=width, steps=steps, guidance_scale=guidance,
                    negative_prompt=args.negative or None, scheduler=args.scheduler, eta=args.eta,
                    dtype=str(resolve_dtype(args.dtype, device)).replace("torch.", ""), config=config, loras=loras,
                    compare=args.compare)  # fmt: skip
    jobs = make_jobs(prompts, seeds)
    result = run_batch(pipe, recipe, jobs, args.out, state=state, progress=not args.no_progress)
    print(f"{len(result.written)} image(s) written, {len(result.skipped)} already done, in {args.out}")
    return 0


def cmd_plan(args) -> int:
    import fouriscale

    from ..profiles import detect_profile
    from .loading import load_unet_profile_source

    config = _config_from(args)
    unet, factor = load_unet_profile_source(args.model, args.model_config)
    try:
        profile = detect_profile(unet, factor, config.layers)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    height, width, steps = _resolve_size(args, profile.native_size, profile.family.name)
    try:
        plan = fouriscale.get_plan(unet, height, width, steps, config, vae_scale_factor=factor)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(plan.describe())
    return 0


def cmd_compare(args) -> int:
    from .compare import comparison_grid, render_variants, spectrum_plot
    from .loading import load_pipeline, native_size
    from .outputs import slugify, write_png

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANT_NAMES]
    if not variants or unknown:
        raise UserError(f"--variants: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(VARIANT_NAMES)}")
    crop = None
    if args.crop:
        try:
            x, y, side = (int(v) for v in args.crop.split(","))
        except ValueError:
            raise UserError(f"--crop {args.crop}: expected X,Y,SIZE in pixels") from None
        crop = (x, y, x + side, y + side)
    if args.column_width < 16:
        raise UserError("--column-width must be at least 16 pixels")
    config = _config_from(args)
    loaded = load_pipeline(args.model, dtype=args.dtype, device=args.device, scheduler=args.scheduler,
                           allow_pickle=args.allow_pickle, config=args.model_config)  # fmt: skip
    pipe = loaded.pipe
    pipe.set_progress_bar_config(disable=args.no_progress)
    height, width, steps = _resolve_size(args, native_size(pipe), loaded.family)
    if crop and (crop[2] > width or crop[3] > height or min(crop) < 0):
        raise UserError(f"--crop {args.crop}: the box leaves the {width}x{height} image")
    guidance = args.guidance if args.guidance is not None else FAMILIES[loaded.family].guidance_scale
    import fouriscale

    try:
        fouriscale.get_plan(pipe, height, width, steps, config)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    images = render_variants(pipe, args.prompt, seed=args.seed, height=height, width=width, variants=variants,
                             config=config, num_inference_steps=steps, guidance_scale=guidance,
                             negative_prompt=args.negative or None, eta=args.eta)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"compare-{args.seed}-{slugify(args.prompt)}"
    for name, image in images.items():
        write_png(image, out / f"{stem}-{name}.png")
    write_png(comparison_grid(images, args.column_width, crop), out / f"{stem}-grid.png")
    write_png(spectrum_plot(images), out / f"{stem}-spectrum.png")
    print(f"wrote {stem}-grid.png, {stem}-spectrum.png and {len(images)} images in {args.out}")
    return 0


def cmd_ui(args) -> int:
    from .ui import launch

    host = "0.0.0.0" if args.public else args.host
    return launch(model=args.model, host=host, port=args.port, device=args.device, dtype=args.dtype,
                  model_config=args.model_config, out_dir=args.out)  # fmt: skip


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or an argument error already printed as one line
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    if not args.debug:
        _quiet_libraries()
    commands = {"generate": cmd_generate, "plan": cmd_plan, "compare": cmd_compare, "ui": cmd_ui}
    try:
        return commands[args.command](args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"fouriscale: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fouriscale: interrupted; finished images are kept, rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # unexpected: still one line unless --debug
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"fouriscale: error: {type(exc).__name__}: {message} (rerun with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
