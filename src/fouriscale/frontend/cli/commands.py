"""The rendering commands of the command line (``generate``, ``upscale``, ``plan``, ``compare``) and the small ones
(``ui``, ``comfyui``): each turns its options into a :class:`~fouriscale.frontend.requests.Request` and renders
the ready run through the request path (:mod:`fouriscale.frontend.requests`), the batch machinery
(:mod:`fouriscale.frontend.batch`) or the comparison pictures (:mod:`fouriscale.frontend.compare`)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from diffusers.utils import logging as dlog
from PIL import Image
from transformers.utils import logging as tlog

import fouriscale

from ...comfyui.install import install_node_pack
from ...diffusers.describe import detect_profile
from ...embedded import read_embedded_prompt
from ...plan import size_multiple
from ..batch import distributed_state, run_batch
from ..compare import VARIANTS, check_layout, comparison_grid, render_variants, require_matplotlib, spectrum_plot
from ..defaults import MAX_SEED
from ..errors import UserError, user_errors
from ..files import compare_name, differing_settings, encode_png, read_settings, settings_key
from ..folder import OutputFolder
from ..loading import (
    check_lora_files,
    check_offload,
    load_estimate_source,
    load_plan_source,
    native_size,
    parse_lora,
    resolve_device,
)
from ..pictures import read_picture
from ..prompts import cut_prompts, prompt_lines
from ..recipe import Job, finished_settings, make_jobs
from ..requests import Request, Size, check_request, fit_budget, get_ready, load_model, plan_request
from ..sources import check_sources, check_steps_run, fit_warnings
from .logs import warn
from .options import config_from, memory_from, size_from

__all__ = [
    "cmd_generate",
    "cmd_upscale",
    "cmd_plan",
    "cmd_compare",
    "cmd_ui",
    "cmd_comfyui",
    "prepare",
    "request_of",
    "warn_cut",
]


# ------------------------------------------------------------------------------------------- the request path


def request_of(args, sources=None, loras=()) -> Request:
    """The :class:`Request` of a rendering command's options."""
    compare = getattr(args, "compare", False) is True
    return Request(
        model=args.model,
        config=lambda steps: config_from(args, steps),
        size=size_from(args),
        guidance=args.guidance,
        negative=args.negative or None,
        scheduler=args.scheduler,
        eta=args.eta,
        sources=sources or check_sources(),
        loras=tuple(loras),
        compare=compare,
        model_config=args.model_config,
        allow_pickle=args.allow_pickle,
        dtype=args.dtype,
        offload=args.offload,
        max_memory=memory_from(args),
    )


def _progress(args, pipe=None) -> None:
    """``--no-progress``: the libraries' loading bars off (before loading) and ``pipe``'s step bar off; else the step
    bar under the batch's."""
    if args.no_progress:
        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    if pipe is not None:
        pipe.set_progress_bar_config(
            **({"disable": True} if args.no_progress else dict(leave=False, desc="steps", position=1))
        )


def prepare(args, request: Request, device: str, *, check=None, inits=(), fit=True, state=None):
    """The request path in the order that fails fastest, with the command's warnings given once the run is ready,
    before anything is rendered (so that a refused request is one line; ``fit=False``: no fitting warnings, the
    command gives them itself); returns the :class:`~fouriscale.frontend.requests.Ready` run."""
    if state is not None and device != "cpu":
        device = str(state.device)
    early = check_request(request, check=check, inits=tuple(inits), fit=fit, device=device)
    _progress(args)
    loaded = load_model(request, device, early)
    _progress(args, loaded.pipe)
    ready = get_ready(loaded, request, early, check=check, inits=tuple(inits), fit=fit)
    for line in early.notes if early is not None else ready.notes:
        warn(line)
    if ready.plan.memory is not None:
        print(f"memory {ready.plan.memory.describe()}")
    return ready


def warn_cut(ready, prompts, negatives=()) -> None:
    """A warning for each prompt and negative prompt the text encoder cuts (where, and what is left out)."""
    pipe = ready.loaded.pipe
    for line in cut_prompts(pipe, prompts) + cut_prompts(pipe, negatives, "negative prompt"):
        warn(line)


def runtime_checks(args):
    """Device, offload, LoRA files and the output folder (checked, not yet created), before any model is loaded:
    ``(device, loras, state)``."""
    device = resolve_device(args.device)
    check_offload(args.offload, device)
    loras = tuple(parse_lora(spec) for spec in args.lora)
    check_lora_files(list(loras), args.allow_pickle)
    OutputFolder(args.out).check()
    return device, loras, distributed_state(device)


def _sources(args, job_pictures=(), has_own_pictures: bool = False):
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


def _seeds(args) -> list[int]:
    seeds = list(args.seed)
    if args.num_images is not None:
        if args.num_images < 1:
            raise UserError(f"--num-images {args.num_images}: must be at least 1")
        if len(seeds) == 1:
            if seeds[0] + args.num_images - 1 > MAX_SEED:
                raise UserError(f"--seed {seeds[0]} --num-images {args.num_images}: the seeds run past 2**64 - 1")
            seeds = [seeds[0] + i for i in range(args.num_images)]
        elif len(seeds) != args.num_images:
            raise UserError(f"--num-images {args.num_images} does not match the {len(seeds)} seeds given; drop one")
    return seeds


def _report(results, out) -> None:
    written = sum(len(r.written) for r in results)
    skipped = sum(len(r.skipped) for r in results)
    by_others = sum(len(r.by_others) for r in results)
    others = f", {by_others} made by another run" if by_others else ""
    print(f"{written} image(s) written, {skipped} already done{others}, in {out}")


# ------------------------------------------------------------------------------------------------ commands


def cmd_generate(args) -> int:
    prompts, pictures = prompt_lines(getattr(args, "prompt", None), args.prompts)
    seeds = _seeds(args)
    sources = _sources(args, pictures)
    device, loras, state = runtime_checks(args)
    request = request_of(args, sources, loras)
    ready = prepare(args, request, device, inits=(sources.init, *pictures), state=state)
    warn_cut(ready, prompts, [args.negative])
    jobs = make_jobs(prompts, seeds, pictures)
    result = run_batch(ready.pipes, ready.recipe, jobs, args.out, state=state, progress=not args.no_progress)
    _report([result], args.out)
    return 0


def _upscale_prompts(args, pictures):
    """``(prompts, negatives)``: --prompt for every picture, else the prompt each carries (said where it came from);
    a picture without one is refused before anything is loaded."""
    prompts, negatives = [], []
    for picture in pictures:
        if args.prompt is not None:
            if not args.prompt.strip():
                raise UserError("--prompt is empty; give a prompt, or leave it out to use the pictures' own")
            prompts.append(args.prompt.strip())
            negatives.append(None)
            print(f"{picture.path}: prompt from --prompt")
            continue
        found = read_embedded_prompt(picture.path)
        if found is None:
            raise UserError(
                f"{picture.path} carries no prompt (no fouriscale settings or A1111 parameters in it); give one with "
                "--prompt"
            )
        prompts.append(found.prompt)
        negatives.append(None if args.negative else found.negative)
        print(f"{picture.path}: prompt from {found.source}: {found.prompt!r}")
    return prompts, negatives


def _scaled(picture, scale: float, factor: int) -> tuple[int, int]:
    """``(height, width)``: the picture's size times ``scale``, to the nearest size the pipeline takes (a multiple of
    the VAE's factor and of 8: :func:`fouriscale.plan.size_multiple`)."""
    unit = size_multiple(factor)
    return tuple(max(unit, round(side * scale / unit) * unit) for side in (picture.height, picture.width))


def cmd_upscale(args) -> int:
    if args.scale is not None and (args.size or args.height or args.width or args.preset):
        raise UserError("give --scale or a size (--size, --height/--width, --preset), not both")
    if args.scale is None and not (args.size or args.height or args.width or args.preset):
        raise UserError("give the size to make: --size WxH, or --scale F (e.g. --scale 2)")
    pictures = [read_picture(path, "image") for path in args.images]
    prompts, negatives = _upscale_prompts(args, pictures)
    seeds = _seeds(args)
    sources = _sources(args, pictures, has_own_pictures=True)
    device, loras, state = runtime_checks(args)
    request = request_of(args, sources, loras)
    if args.scale is not None and not Path(request.model).expanduser().is_file():
        _, factor, _ = load_plan_source(request.model, request.model_config)
        request = replace(request, size=Size(*_scaled(pictures[0], args.scale, factor), steps=args.steps))
    ready = prepare(args, request, device, fit=False, state=state)
    warn_cut(ready, prompts, [args.negative, *negatives])
    recipe, pipe = ready.recipe, ready.loaded.pipe
    factor = pipe.vae_scale_factor
    sizes = [
        _scaled(p, args.scale, factor) if args.scale is not None else (recipe.height, recipe.width) for p in pictures
    ]
    groups: dict[tuple[int, int], list] = {}
    for job in make_jobs(prompts, seeds, pictures, negatives):
        groups.setdefault(sizes[pictures.index(job.init)], []).append(job)
    recipes = {}
    for (height, width), group in groups.items():  # every size checked before anything is rendered
        changes = {}
        if (height, width) != (recipe.height, recipe.width):
            sized = replace(request, size=Size(height, width, steps=args.steps))
            prepared = plan_request(sized, pipe, ready.loaded.family, native_size(pipe))
            height, width = prepared.height, prepared.width
            if prepared.plan.far_beyond_native:
                warn(prepared.plan.far_beyond_native_text)
            if sources.official:
                kwargs = fouriscale.official_controlnet_kwargs(pipe, height, width)
                changes["micro_conditions"] = kwargs.get("original_size")
        recipes[height, width] = recipe.replace(height=height, width=width, **changes)
        check_steps_run(recipe.strength, recipe.steps)
        controls = [picture for _, picture, _ in sources.controls or ()]
        for line in fit_warnings(height, width, list(dict.fromkeys(j.init for j in group)), controls):
            warn(line)
    results = [
        run_batch(ready.pipes, recipes[size], group, args.out, state=state, progress=not args.no_progress)
        for size, group in groups.items()
    ]
    _report(results, args.out)
    return 0


def cmd_plan(args) -> int:
    budget = memory_from(args)
    unet, factor, vae = load_plan_source(args.model, args.model_config)
    with user_errors():
        profile = detect_profile(unet, factor)
    request = Request(
        args.model,
        config=lambda steps: config_from(args, steps),
        size=size_from(args),
        dtype=args.dtype,
        offload=args.offload,
        max_memory=budget,
        allow_pickle=args.allow_pickle,
        model_config=args.model_config,
    )
    family, native = profile.family.name, profile.native_size
    prepared = plan_request(request, unet, family, native, factor, vae)
    if not args.memory and budget is None:
        print(prepared.plan.describe())
        return 0
    # The estimate is for a GPU: what --memory is asked for is whether a card will do.
    source = load_estimate_source(
        args.model, args.dtype, "cuda", config=args.model_config, allow_pickle=args.allow_pickle
    )
    chosen = None
    if budget is not None:
        chosen = plan_request(request, unet, family, native, factor, vae, fit_budget(request, prepared, source, "cuda"))
    print((chosen or prepared).plan.describe())
    if args.memory:
        for direct in (True, False):
            print()
            print(_estimate(request, prepared, source, direct))
    if chosen is not None:
        print()
        print(f"--max-memory: {chosen.memory.describe()}")
        print(chosen.memory.estimate)
    return 0


def _estimate(request: Request, prepared, source, direct: bool):
    """The memory estimate of direct inference or of FouriScale's settings (as asked, before any budget)."""
    with user_errors():
        return fouriscale.estimate_memory(
            source,
            prepared.height,
            prepared.width,
            prepared.steps,
            prepared.config,
            dtype=request.dtype,
            device="cuda",
            offload=request.offload,
            direct=direct,
        )


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


def _compare_targets(args, ready, variants: list[str]) -> dict[str, dict]:
    """The settings of each variant's image (the direct one without the plan)."""
    recipe, job = ready.recipe, Job(0, args.prompt, args.seed)
    targets = {}
    for name in variants:
        changes = VARIANTS[name]
        variant = recipe.replace(config=recipe.config.replace(**changes)) if changes is not None else recipe
        method = "direct" if changes is None else "fouriscale"
        file = compare_name(args.seed, args.prompt, name)
        targets[name] = dict(finished_settings(variant, job, method, file, ready.plan), variant=name)
    return targets


def _finished_variants(folder: OutputFolder, targets: dict[str, dict]) -> dict:
    """The variants already in the folder with the same settings (refusing files of other settings)."""
    done = {}
    with folder.lock:
        for name, settings in targets.items():
            path = folder.path / settings["file"]
            if not path.exists():
                continue
            existing = read_settings(path)
            if existing is None or existing.get("key") != settings["key"]:
                diff = differing_settings(settings, existing) if existing else "not a fouriscale image"
                raise UserError(
                    f"{path} already exists with other settings ({diff}); choose another --out folder or move it "
                    "away (nothing was overwritten)"
                )
            with Image.open(path) as image:
                done[name] = image.convert("RGB")
    return done


def _save_comparison(args, folder, images, targets, variants, crop) -> tuple[str, str]:
    """The grid and the spectrum plot, with the keys of the images they show."""
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
    return grid, spectrum


def cmd_compare(args) -> int:
    variants = list(dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()))
    unknown = [v for v in variants if v not in VARIANTS]
    if not variants or unknown:
        raise UserError(
            f"--variants: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(VARIANTS)}"
        )
    crop = _parse_crop(args.crop)
    require_matplotlib("fouriscale compare")
    device = resolve_device(args.device)
    folder = OutputFolder(args.out).check()

    def layout(height, width):
        with user_errors("--crop/--column-width: " if crop else "--column-width: "):
            check_layout((width, height), len(variants), args.column_width, crop)

    ready = prepare(args, request_of(args), device, check=layout)
    warn_cut(ready, [args.prompt], [args.negative])
    folder.prepare()
    recipe = ready.recipe
    targets = _compare_targets(args, ready, variants)
    done = _finished_variants(folder, targets)
    images = render_variants(
        ready.loaded.pipe,
        args.prompt,
        seed=args.seed,
        height=recipe.height,
        width=recipe.width,
        variants=variants,
        config=recipe.config,
        skip=done,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance_scale,
        negative_prompt=recipe.negative_prompt,
        eta=args.eta,
    )
    for name, image in images.items():
        if name not in done:
            folder.commit(targets[name]["file"], encode_png(image, targets[name]), targets[name])
    grid, spectrum = _save_comparison(args, folder, images, targets, variants, crop)
    rendered = len(images) - len(done)
    print(f"wrote {grid}, {spectrum} and {rendered} image(s) ({len(done)} already there) in {args.out}")
    return 0


def cmd_ui(args) -> int:
    from ..ui import launch  # Gradio, an optional dependency, is imported by the UI only

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


def cmd_comfyui(args) -> int:
    with user_errors():
        target = install_node_pack(args.path)
    print(f"installed the FouriScale nodes in {target}; restart ComfyUI, run with {sys.executable}")
    return 0
