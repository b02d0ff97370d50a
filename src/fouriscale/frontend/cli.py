"""The ``fouriscale`` command: ``generate`` images (from text, or from pictures: img2img, inpainting, ControlNet,
two-pass), ``upscale`` pictures, show the ``plan`` for a size, ``compare`` variants, start the ``ui``, score images
with ``eval``, run ``benchmark-quality`` and install the ``comfyui`` node pack.

Every user mistake ends in one line on stderr and exit status 2, checked before any rendering where it can be;
exit status 1 means a bug. ``--debug`` (before or after the sub-command) shows tracebacks and library logs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from .errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError, one_line, user_errors
from .options import Parser, config_from, parents, resolve_size, scale_type, seed_list_type, seed_type
from .params import DEFAULT_SEED, DEFAULT_STRENGTH

__all__ = ["main", "build_parser"]

DEFAULT_VARIANTS = "direct,fouriscale,no-low-pass,no-attention-guidance"
UPSCALE_OUT = "outputs/upscaled"


def _command(sub, name: str, groups: str, **kwargs) -> Parser:
    """A sub-command with the shared option groups named in ``groups`` (see :func:`.options.parents`)."""
    return sub.add_parser(name, parents=parents(*groups.split()), **kwargs)


def build_parser() -> Parser:
    from .compare import VARIANTS
    from .quality import add_benchmark_arguments, add_eval_arguments

    parser = Parser(prog="fouriscale", description="Training-free high-resolution Stable Diffusion (FouriScale).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    gen = _command(
        sub,
        "generate",
        "common model size sampling runtime output fouriscale pictures",
        help="generate images",
        description="Generate images with FouriScale, from text or from pictures (--init-image, --mask, "
        "--controlnet), or in two passes (--two-pass). Defaults are the official scripts' recipe: DDIM with eta "
        "1.0, 50 steps, guidance 7.5 (SD) or 5.0 (SDXL), FreeU as the paper applied it, seed 23. Rerun the same "
        "command to resume; runs into one --out folder share the work.",
    )
    gen.add_argument("prompt", nargs="?", help="the prompt (or use --prompts FILE)")
    gen.add_argument(
        "--prompts",
        metavar="FILE",
        help="text file with one prompt per line; a line PROMPT<TAB>PICTURE gives that prompt its own init image "
        "(img2img; the path relative to the file's folder)",
    )
    gen.add_argument(
        "--two-pass",
        action="store_true",
        help="render at the native size first, upscale it, then FouriScale img2img at the size with the same seed "
        f"(--strength, default {DEFAULT_STRENGTH:g}); saves NAME.png and NAME-first.png",
    )
    gen.add_argument(
        "--upscale",
        choices=["pixel", "latent"],
        help="how --two-pass upscales its first picture: Lanczos in pixels, then VAE-encode (default: pixel), or "
        "bicubic on the latents",
    )
    _job_options(gen)

    up = _command(
        sub,
        "upscale",
        "common model size sampling runtime output fouriscale control",
        help="make pictures larger: FouriScale img2img from each picture at the size",
        description="Render each picture again at --size WxH (or --scale times its size) with FouriScale img2img. "
        "The prompt is --prompt, else the one the picture carries (settings embedded by this tool, or A1111's "
        "parameters). Resumable like generate.",
    )
    for action in up._actions:  # its own folder, so that upscaling ./outputs does not collide with its pictures
        if action.dest == "out":
            action.default, action.help = UPSCALE_OUT, f"output folder (default: ./{UPSCALE_OUT})"
    up.add_argument("images", nargs="+", metavar="IMAGE", help="pictures to upscale")
    up.add_argument("--prompt", help="the prompt for every picture (default: the one each picture carries)")
    up.add_argument(
        "--scale", type=scale_type, help="target size as a factor of each picture's size, 1 to 16 (instead of --size)"
    )
    _job_options(up)

    _command(
        sub,
        "plan",
        "common model size fouriscale",
        help="show what FouriScale will do for a model and size",
        description="Print the plan (native size, dilation, SDXL base bucket, patched layers with their base sizes, "
        "per-step schedule) without generating.",
    )

    cmp = _command(
        sub,
        "compare",
        "common model size sampling runtime output fouriscale",
        help="picture direct inference, FouriScale and ablations side by side",
        description="Render one prompt and seed under several variants, then save a labelled grid (whole images and "
        "a full-resolution detail crop) and their power spectra on one plot.",
    )
    cmp.add_argument("prompt", help="the prompt")
    cmp.add_argument("--seed", type=seed_type, default=DEFAULT_SEED, help="seed, 0 to 2**64 - 1 (default: 23)")
    cmp.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help="comma-separated, from: " + ", ".join(VARIANTS) + " (default: %(default)s)",
    )
    cmp.add_argument("--crop", metavar="X,Y,SIZE", help="detail crop: left, top and side in pixels (default: centre)")
    cmp.add_argument(
        "--column-width", type=int, default=384, help="grid column width in pixels, 16 to 2048 (default: 384)"
    )

    ui = _command(
        sub,
        "ui",
        "common model? runtime output",
        help="start the local web UI",
        description="Serve the web UI (Gradio) on this machine; it prints its URL when it is up.",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    ui.add_argument("--port", type=int, default=7860, help="port, 1 to 65535 (default: 7860)")
    ui.add_argument("--public", action="store_true", help="listen on all interfaces (0.0.0.0); off by default")

    ev = _command(
        sub,
        "eval",
        "common",
        help="FID/KID, crop FID/KID, IS and CLIP score of generated images",
        description="Score a folder of generated images against real ones, as the high-resolution papers do.",
    )
    add_eval_arguments(ev)

    bench = _command(
        sub,
        "benchmark-quality",
        "common model size sampling runtime fouriscale",
        help="generate with several methods and score them",
        description="Generate N images per method (resumable, one subfolder per method under --out), score each "
        "against --real and against direct inference, and write a table, the JSON and a bar chart.",
    )
    add_benchmark_arguments(bench)

    comfy = _command(
        sub,
        "comfyui",
        "common",
        help="add the FouriScale nodes to a ComfyUI folder",
        description="Manage the ComfyUI node pack of this installation.",
    )
    actions = comfy.add_subparsers(dest="comfyui_action", metavar="ACTION", parser_class=Parser, required=True)
    install = actions.add_parser(
        "install",
        help="write the node pack into PATH/custom_nodes/fouriscale",
        description="Write the FouriScale nodes and example workflows into PATH/custom_nodes/fouriscale, loading the "
        "nodes from this installation; ComfyUI must run with this Python. Rerun it to update the pack.",
    )
    install.add_argument("path", help="the ComfyUI folder (the one holding main.py)")
    return parser


def _job_options(p) -> None:
    """Options of the commands that render batches of jobs (``generate``, ``upscale``)."""
    p.add_argument(
        "--seed",
        type=seed_list_type,
        default=[DEFAULT_SEED],
        help="a seed (0 to 2**64 - 1), a list 1,2,3 or a range 10-19 (default: 23)",
    )
    p.add_argument(
        "--num-images",
        type=int,
        help="images per prompt; with one seed S they use seeds S, S+1, ... (default: one per seed)",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="LoRA weights, repeatable (scale default 1.0)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="also render the same seed without FouriScale (NAME-direct.png) and a side-by-side NAME-compare.png",
    )


# ------------------------------------------------------------------------------------------------- helpers


def _read_prompts(args) -> list[str]:
    if getattr(args, "prompt", None) is not None and args.prompts:
        raise UserError("give a PROMPT or --prompts FILE, not both")
    if args.prompts:
        try:
            with open(args.prompts, encoding="utf-8") as fh:
                prompts = [line.strip() for line in fh if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or one_line(exc, 120)
            raise UserError(f"--prompts {args.prompts}: cannot read it ({reason})") from None
        if not prompts:
            raise UserError(f"--prompts {args.prompts}: the file holds no prompt")
        return prompts
    if getattr(args, "prompt", None) is None or not args.prompt.strip():
        raise UserError("no prompt: give one as an argument or use --prompts FILE")
    return [args.prompt]


def _prompt_lines(args):
    """``(prompts, pictures)`` of a PROMPT argument or a --prompts file whose lines may read PROMPT<TAB>PICTURE
    (every picture checked now)."""
    from .sources import line_picture

    if getattr(args, "prompt", None) is not None and args.prompts:
        raise UserError("give a PROMPT or --prompts FILE, not both")
    if not args.prompts:
        return _read_prompts(args), [None]
    try:
        with open(args.prompts, encoding="utf-8") as fh:
            lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(fh, 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or one_line(exc, 120)
        raise UserError(f"--prompts {args.prompts}: cannot read it ({reason})") from None
    if not lines:
        raise UserError(f"--prompts {args.prompts}: the file holds no prompt")
    pairs = [line_picture(line, n, args.prompts) for n, line in lines]
    return [p for p, _ in pairs], [picture for _, picture in pairs]


def _seeds(args) -> list[int]:
    seeds = list(args.seed)
    if args.num_images is not None:
        if args.num_images < 1:
            raise UserError(f"--num-images {args.num_images}: must be at least 1")
        if len(seeds) == 1:
            if seeds[0] + args.num_images - 1 > 2**64 - 1:
                raise UserError(f"--seed {seeds[0]} --num-images {args.num_images}: the seeds run past 2**64 - 1")
            seeds = [seeds[0] + i for i in range(args.num_images)]
        elif len(seeds) != args.num_images:
            raise UserError(f"--num-images {args.num_images} does not match the {len(seeds)} seeds given; drop one")
    return seeds


def _distributed_state(device: str):
    """accelerate's process state when launched with several processes, else ``None``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")


def _warn(message: str) -> None:
    print(f"fouriscale: warning: {message}", file=sys.stderr)


def _profile_source(model: str, model_config: str | None):
    """``(UNet on the meta device, vae scale factor)`` for folders, hub ids and tiny models, without weights;
    ``None`` for single files (they are checked when loaded)."""
    from .loading import load_unet_profile_source

    if Path(model).expanduser().is_file():
        return None
    return load_unet_profile_source(model, model_config)


def _plan_for(target, args, family: str, native: tuple[int, int], vae_scale_factor: int | None = None, vae=None):
    """``(height, width, steps, config, plan)``: the options resolved and checked by the library."""
    import fouriscale

    height, width, steps = resolve_size(args, native, family)
    config = config_from(args, steps)
    with user_errors():
        plan = fouriscale.get_plan(target, height, width, steps, config, vae_scale_factor=vae_scale_factor, vae=vae)
    return height, width, steps, config, plan


def _check_model_and_size(args):
    """Before loading weights (folders, hub ids, tiny models): family, size, steps and plan, via the UNet's config
    on the meta device. Returns ``(the plan's values, unet, vae factor)``, or ``None`` for single files."""
    from ..diffusers.describe import detect_profile

    source = _profile_source(args.model, args.model_config)
    if source is None:
        return None
    unet, factor = source
    with user_errors():
        profile = detect_profile(unet, factor)
    return _plan_for(unet, args, profile.family.name, profile.native_size, factor), unet, factor


def _warn_far(plan) -> None:
    if plan.far_beyond_native:
        _LibraryLog.told_far = True
        nh, nw = plan.profile.native_size
        _warn(
            f"{plan.width}x{plan.height} is {plan.dilation}x the model's native {nw}x{nh} per side (more than 8x): "
            "expect broken structure, and a long run"
        )


def _no_progress(args, pipe) -> None:
    if args.no_progress:
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe.set_progress_bar_config(leave=False, desc="steps", position=1)


def _load(args, loras=(), device: str | None = None):
    from .loading import load_pipeline

    if args.no_progress:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    return load_pipeline(
        args.model,
        dtype=args.dtype,
        device=device or args.device,
        offload=args.offload,
        scheduler=args.scheduler,
        loras=list(loras),
        allow_pickle=args.allow_pickle,
        config=args.model_config,
    )


def _loaded_plan(args, loaded):
    """Size, steps, config and plan for a loaded pipeline (the library's checks), with FouriScale applied."""
    import fouriscale

    from .loading import native_size

    height, width, steps, config, plan = _plan_for(loaded.pipe, args, loaded.family, native_size(loaded.pipe))
    with user_errors():
        fouriscale.apply_fouriscale(loaded.pipe, config)
    return height, width, steps, config, plan


def prepare(args, loras=(), device: str | None = None, check=None, state=None, check_inputs=None):
    """The shared start of every rendering command, in the order that fails fastest: size, steps and plan from
    the model's config without weights (folders, hub ids, tiny models), ``check(height, width)`` (e.g. the
    compare layout), ``check_inputs(height, width, steps, unet, vae_factor)`` (pictures and ControlNets against
    the model), the far-beyond-native warning, then the model with its LoRAs, the plan again on the loaded
    pipeline and FouriScale applied. Returns ``(loaded, recipe, plan)``."""
    early = _check_model_and_size(args)
    if early is not None:
        (height, width, steps, _, plan), unet, factor = early
        if check is not None:
            check(height, width)
        if check_inputs is not None:
            check_inputs(height, width, steps, unet, factor)
        _warn_far(plan)
    if state is not None and device != "cpu":
        device = str(state.device)
    loaded = _load(args, loras, device)
    _no_progress(args, loaded.pipe)
    height, width, steps, config, plan = _loaded_plan(args, loaded)
    if early is None:
        if check is not None:
            check(height, width)
        if check_inputs is not None:
            check_inputs(height, width, steps, loaded.pipe.unet, loaded.pipe.vae_scale_factor)
        _warn_far(plan)
    return loaded, _recipe(args, loaded, height, width, steps, config, loras), plan


def _guidance(args, family: str) -> float:
    from ..config import PAPER_PRESETS
    from .params import default_guidance

    if args.guidance is not None:
        return args.guidance
    return PAPER_PRESETS[args.preset].guidance_scale if args.preset else default_guidance(family)


def _recipe(args, loaded, height, width, steps, config, loras=()):
    from .jobs import Recipe

    return Recipe(
        model=args.model,
        height=height,
        width=width,
        steps=steps,
        guidance_scale=_guidance(args, loaded.family),
        negative_prompt=args.negative or None,
        scheduler=args.scheduler,
        eta=args.eta,
        dtype=str(loaded.pipe.unet.dtype).replace("torch.", ""),
        config=config,
        loras=tuple(loras),
        compare=getattr(args, "compare", False) is True,
    )


# ------------------------------------------------------------------------------------------------ commands


def _runtime_checks(args):
    """Device, offload, LoRA files and the output folder, before any model is loaded: ``(device, loras, state)``."""
    from .loading import check_lora_files, check_offload, parse_lora, resolve_device
    from .outputs import OutputFolder

    device = resolve_device(args.device)
    check_offload(args.offload, device)
    loras = tuple(parse_lora(spec) for spec in args.lora)
    check_lora_files(list(loras), args.allow_pickle)
    OutputFolder(args.out).prepare()
    return device, loras, _distributed_state(device)


def _sources(args, job_pictures=(), has_own_pictures: bool = False):
    from .sources import check_sources

    return check_sources(
        init=getattr(args, "init_image", None),
        mask=getattr(args, "mask", None),
        job_pictures=list(job_pictures),
        controlnets=args.controlnet,
        control_images=args.control_image,
        control_scales=args.control_scale,
        strength=args.strength,
        two_pass=getattr(args, "two_pass", False),
        upscale=getattr(args, "upscale", None),
        official=args.official_controlnet,
        allow_pickle=args.allow_pickle,
        has_own_pictures=has_own_pictures,
    )


def _input_checks(sources, inits, warn: bool = True):
    """``check_inputs`` for :func:`prepare`: the ControlNets fit the model, the strength leaves a step, and the
    fitting of the pictures to the size is reported (warnings) before anything is loaded or rendered."""
    from .sources import check_steps_run, fit_warnings

    def check(height, width, steps, unet, factor):
        sources.check_model(unet, factor)
        check_steps_run(sources.strength, steps)
        if warn:
            for line in fit_warnings(height, width, [p for p in inits if p is not None], _control_pictures(sources)):
                _warn(line)

    return check


def _control_pictures(sources):
    return [picture for _, picture, _ in sources.controls or ()]


def _finish(args, loaded, recipe, sources):
    """The recipe with the run's pictures and modes, and the pipelines (ControlNets loaded and checked)."""
    import fouriscale

    from .controlnets import combine, load_controlnet
    from .pipelines import Pipelines

    nets = [load_controlnet(source, loaded.pipe, args.allow_pickle) for source, _, _ in sources.controls or ()]
    pipes = Pipelines(loaded.pipe, combine(nets) if nets else None)
    micro = None
    if sources.official:
        micro = fouriscale.official_controlnet_kwargs(loaded.pipe, recipe.height, recipe.width).get("original_size")
    first = None
    if sources.two_pass:
        from ..two_pass import first_pass_size

        first = first_pass_size(loaded.pipe, recipe.height, recipe.width, recipe.config)
    recipe = recipe.replace(
        strength=sources.strength,
        init=sources.init,
        mask=sources.mask,
        controls=sources.control_objects(),
        two_pass=sources.two_pass,
        upscale=sources.upscale,
        first_size=first,
        micro_conditions=micro,
    )
    return recipe, pipes


def _report(results, out) -> None:
    written = sum(len(r.written) for r in results)
    skipped = sum(len(r.skipped) for r in results)
    by_others = sum(len(r.by_others) for r in results)
    others = f", {by_others} made by another run" if by_others else ""
    print(f"{written} image(s) written, {skipped} already done{others}, in {out}")


def cmd_generate(args) -> int:
    from .jobs import make_jobs, run_batch

    prompts, pictures = _prompt_lines(args)
    seeds = _seeds(args)
    sources = _sources(args, pictures)
    device, loras, state = _runtime_checks(args)
    check_inputs = _input_checks(sources, [sources.init, *pictures])
    loaded, recipe, _ = prepare(args, loras, device, state=state, check_inputs=check_inputs)
    recipe, pipes = _finish(args, loaded, recipe, sources)
    jobs = make_jobs(prompts, seeds, pictures)
    result = run_batch(pipes, recipe, jobs, args.out, state=state, progress=not args.no_progress)
    _report([result], args.out)
    return 0


def _upscale_prompts(args, pictures):
    """``(prompts, negatives)``: --prompt for every picture, else the prompt each carries (said where it came from);
    a picture without one is refused before anything is loaded."""
    from .inputs import embedded_prompt

    prompts, negatives = [], []
    for picture in pictures:
        if args.prompt is not None:
            if not args.prompt.strip():
                raise UserError("--prompt is empty; give a prompt, or leave it out to use the pictures' own")
            prompts.append(args.prompt.strip())
            negatives.append(None)
            print(f"{picture.path}: prompt from --prompt")
            continue
        found = embedded_prompt(picture)
        if found is None:
            raise UserError(
                f"{picture.path} carries no prompt (no fouriscale settings or A1111 parameters in it); give one with "
                "--prompt"
            )
        prompt, negative, where = found
        prompts.append(prompt)
        negatives.append(None if args.negative else negative)
        print(f"{picture.path}: prompt from {where}: {prompt!r}")
    return prompts, negatives


def _scaled(picture, scale: float, factor: int) -> tuple[int, int]:
    """``(height, width)``: the picture's size times ``scale``, to the nearest multiple of the VAE's factor."""
    return tuple(max(factor, round(side * scale / factor) * factor) for side in (picture.height, picture.width))


def _sized(args, size):
    copy = argparse.Namespace(**vars(args))
    copy.size, copy.height, copy.width = size, None, None
    return copy


def cmd_upscale(args) -> int:
    import fouriscale

    from .inputs import read_picture
    from .jobs import make_jobs, run_batch
    from .loading import native_size
    from .sources import check_steps_run, fit_warnings

    if args.scale is not None and (args.size or args.height or args.width or args.preset):
        raise UserError("give --scale or a size (--size, --height/--width, --preset), not both")
    if args.scale is None and not (args.size or args.height or args.width or args.preset):
        raise UserError("give the size to make: --size WxH, or --scale F (e.g. --scale 2)")
    pictures = [read_picture(path, "image") for path in args.images]
    prompts, negatives = _upscale_prompts(args, pictures)
    seeds = _seeds(args)
    sources = _sources(args, pictures, has_own_pictures=True)
    device, loras, state = _runtime_checks(args)
    early = _profile_source(args.model, args.model_config) if args.scale is not None else None
    if early is not None:
        args = _sized(args, _scaled(pictures[0], args.scale, early[1]))
    loaded, recipe, _ = prepare(args, loras, device, state=state, check_inputs=_input_checks(sources, [], False))
    recipe, pipes = _finish(args, loaded, recipe, sources)
    factor = loaded.pipe.vae_scale_factor
    sizes = [
        _scaled(p, args.scale, factor) if args.scale is not None else (recipe.height, recipe.width) for p in pictures
    ]
    jobs = make_jobs(prompts, seeds, pictures, negatives)
    groups: dict[tuple[int, int], list] = {}
    for job in jobs:
        groups.setdefault(sizes[pictures.index(job.init)], []).append(job)
    recipes = {}
    for (height, width), group in groups.items():  # every size checked before anything is rendered
        changes = {}
        if (height, width) != (recipe.height, recipe.width):
            height, width, _, _, plan = _plan_for(
                loaded.pipe, _sized(args, (height, width)), loaded.family, native_size(loaded.pipe)
            )
            _warn_far(plan)
            if sources.official:
                kwargs = fouriscale.official_controlnet_kwargs(loaded.pipe, height, width)
                changes["micro_conditions"] = kwargs.get("original_size")
        recipes[height, width] = recipe.replace(height=height, width=width, **changes)
        check_steps_run(recipe.strength, recipe.steps)
        for line in fit_warnings(height, width, list(dict.fromkeys(j.init for j in group)), _control_pictures(sources)):
            _warn(line)
    results = [
        run_batch(pipes, recipes[size], group, args.out, state=state, progress=not args.no_progress)
        for size, group in groups.items()
    ]
    _report(results, args.out)
    return 0


def cmd_plan(args) -> int:
    from ..diffusers.describe import detect_profile
    from .loading import load_plan_source

    unet, factor, vae = load_plan_source(args.model, args.model_config)
    with user_errors():
        profile = detect_profile(unet, factor)
    *_, plan = _plan_for(unet, args, profile.family.name, profile.native_size, factor, vae)
    print(plan.describe())
    return 0


def _parse_crop(text: str | None):
    if not text:
        return None
    try:
        x, y, side = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--crop {text}: expected X,Y,SIZE in pixels, e.g. 0,0,256") from None
    if side < 1:
        raise UserError(f"--crop {text}: the side must be at least 1 pixel")
    return x, y, x + side, y + side


def cmd_compare(args) -> int:
    from .compare import VARIANTS, check_layout, comparison_grid, render_variants, require_matplotlib, spectrum_plot
    from .jobs import Job, finished_settings
    from .loading import resolve_device
    from .outputs import OutputFolder, compare_name, differing_settings, encode_png, read_settings, settings_key

    variants = list(dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()))
    unknown = [v for v in variants if v not in VARIANTS]
    if not variants or unknown:
        raise UserError(
            f"--variants: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(VARIANTS)}"
        )
    crop = _parse_crop(args.crop)
    require_matplotlib("fouriscale compare")
    resolve_device(args.device)
    folder = OutputFolder(args.out).prepare()

    def layout(height, width):
        with user_errors("--crop/--column-width: " if crop else "--column-width: "):
            check_layout((width, height), len(variants), args.column_width, crop)

    loaded, recipe, plan = prepare(args, check=layout)
    pipe, config = loaded.pipe, recipe.config
    height, width, steps = recipe.height, recipe.width, recipe.steps
    job = Job(0, args.prompt, args.seed)
    targets, done = {}, {}
    for name in variants:
        variant_recipe = (
            recipe.replace(config=config.replace(**VARIANTS[name])) if VARIANTS[name] is not None else recipe
        )
        file = compare_name(args.seed, args.prompt, name)
        method = "direct" if VARIANTS[name] is None else "fouriscale"
        settings = finished_settings(variant_recipe, job, method, file, plan if method != "direct" else None)
        settings["variant"] = name
        targets[name] = settings
    with folder.lock:
        for name, settings in targets.items():
            existing = read_settings(folder.path / settings["file"])
            if (folder.path / settings["file"]).exists():
                if existing is None or existing.get("key") != settings["key"]:
                    diff = differing_settings(settings, existing) if existing else "not a fouriscale image"
                    raise UserError(
                        f"{folder.path / settings['file']} already exists with other settings ({diff}); "
                        "choose another --out folder or move it away (nothing was overwritten)"
                    )
                from PIL import Image

                with Image.open(folder.path / settings["file"]) as image:
                    done[name] = image.convert("RGB")
    images = render_variants(
        pipe,
        args.prompt,
        seed=args.seed,
        height=height,
        width=width,
        variants=variants,
        config=config,
        skip=done,
        num_inference_steps=steps,
        guidance_scale=recipe.guidance_scale,
        negative_prompt=recipe.negative_prompt,
        eta=args.eta,
    )
    for name, image in images.items():
        if name not in done:
            folder.commit(targets[name]["file"], encode_png(image, targets[name]), targets[name])
    grid, spectrum = compare_name(args.seed, args.prompt, "grid"), compare_name(args.seed, args.prompt, "spectrum")
    for file, picture, extra in (
        (grid, comparison_grid(images, args.column_width, crop), {"column_width": args.column_width, "crop": crop}),
        (spectrum, spectrum_plot(images), {}),
    ):
        settings = {
            "prompt": args.prompt,
            "seed": args.seed,
            "method": file.rsplit("-", 1)[1][:-4],
            "variants": {name: targets[name]["key"] for name in variants},
            **extra,
        }
        settings.update(key=settings_key(settings), file=file, version=targets[variants[0]]["version"])
        folder.commit(file, encode_png(picture, settings), settings)
    rendered = len(images) - len(done)
    print(f"wrote {grid}, {spectrum} and {rendered} image(s) ({len(done)} already there) in {args.out}")
    return 0


def cmd_ui(args) -> int:
    from .ui import launch

    if args.public and args.host != "127.0.0.1":
        raise UserError("give --public or --host, not both")
    host = "0.0.0.0" if args.public else args.host
    return launch(
        model=args.model,
        host=host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
        model_config=args.model_config,
        out_dir=args.out,
        offload=args.offload,
        allow_pickle=args.allow_pickle,
    )


def cmd_eval(args) -> int:
    from .quality import cmd_eval as run

    return run(args)


def cmd_benchmark(args) -> int:
    from .quality import cmd_benchmark_quality

    return cmd_benchmark_quality(args)


def cmd_comfyui(args) -> int:
    from ..comfyui.install import install_node_pack

    with user_errors():
        target = install_node_pack(args.path)
    print(f"installed the FouriScale nodes in {target}; restart ComfyUI, run with {sys.executable}")
    return 0


COMMANDS = {
    "generate": cmd_generate,
    "upscale": cmd_upscale,
    "plan": cmd_plan,
    "compare": cmd_compare,
    "ui": cmd_ui,
    "eval": cmd_eval,
    "benchmark-quality": cmd_benchmark,
    "comfyui": cmd_comfyui,
}


# ------------------------------------------------------------------------------------------- noise control

_LIBRARIES = r"(diffusers|transformers|huggingface_hub|accelerate|peft|torch|torchmetrics|gradio)(\.|$)"


class _LibraryLog(logging.Handler):
    """FouriScale's own warnings as ``fouriscale: warning: ...`` lines (once each; the size warning the command
    already gave up front is not repeated)."""

    told_far = False

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().removeprefix("FouriScale: ")
        far = getattr(record, "fouriscale_warning", None) == "far_beyond_native"
        if message in self.seen or (self.told_far and far):
            return
        self.seen.add(message)
        _warn(message)


def _quiet_libraries() -> None:
    """Library chatter off: diffusers/transformers logs below errors, their deprecation and future warnings
    (by category and module, nothing else), Gradio's analytics unless asked for."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=_LIBRARIES)
    logger = logging.getLogger("fouriscale")
    if not any(isinstance(h, _LibraryLog) for h in logger.handlers):
        logger.addHandler(_LibraryLog())
    logger.propagate = False
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 done, 2 user mistake, 1 bug, 130 interrupted)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or an argument error already printed as one line
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    if args.debug:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        _quiet_libraries()
    _LibraryLog.told_far = False
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"fouriscale: error: {one_line(exc, 1000)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fouriscale: interrupted; finished images are kept, rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: still one line unless --debug
        if args.debug:
            raise
        print(
            f"fouriscale: error: {type(exc).__name__}: {one_line(exc)} (a bug; rerun with --debug and report it)",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
