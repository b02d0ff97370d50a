"""The command line's parser: one function per command adds its options (shared option groups in
:mod:`.options`)."""

from __future__ import annotations

import importlib.metadata

import fouriscale

from ..compare import VARIANTS
from ..defaults import DEFAULT_SEED, DEFAULT_STRENGTH
from .options import Parser, parents, scale_type, seed_list_type, seed_type
from .quality import add_benchmark_arguments, add_eval_arguments

__all__ = ["build_parser", "installed_version", "UPSCALE_OUT", "DEFAULT_VARIANTS"]

DEFAULT_VARIANTS = "direct,fouriscale,no-low-pass,no-attention-guidance"
UPSCALE_OUT = "outputs/upscaled"


def installed_version() -> str:
    """The installed package's version (its metadata), else the source's ``fouriscale.__version__``."""
    try:
        return importlib.metadata.version("fouriscale")
    except importlib.metadata.PackageNotFoundError:
        return fouriscale.__version__


def _command(sub, name: str, groups: str, **kwargs) -> Parser:
    """A sub-command with the shared option groups named in ``groups`` (see :func:`.options.parents`)."""
    return sub.add_parser(name, parents=parents(*groups.split()), **kwargs)


def build_parser() -> Parser:
    """The ``fouriscale`` parser with every command."""
    parser = Parser(prog="fouriscale", description="Training-free high-resolution Stable Diffusion (FouriScale).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    parser.add_argument("--version", action="version", version=f"fouriscale {installed_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add in (_generate, _upscale, _plan, _compare, _ui, _eval, _benchmark, _comfyui):
        add(sub)
    return parser


def _generate(sub) -> None:
    gen = _command(
        sub,
        "generate",
        "common model size sampling runtime budget output fouriscale pictures",
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


def _upscale(sub) -> None:
    up = _command(
        sub,
        "upscale",
        "common model size sampling runtime budget output fouriscale control",
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


def _plan(sub) -> None:
    plan = _command(
        sub,
        "plan",
        "common model size budget fouriscale",
        help="show what FouriScale will do for a model and size, and the memory it needs",
        description="Print the plan (native size, dilation, SDXL base bucket, patched layers with their base sizes, "
        "per-step schedule) without generating; with --memory, the peak GPU memory estimated without weights (the "
        "paper's models from configs shipped with fouriscale, offline; other hub ids from their configs). With "
        "--max-memory, the settings chosen to fit the budget.",
    )
    g = plan.add_argument_group("memory estimate")
    g.add_argument("--memory", action="store_true", help="estimate the peak GPU memory (FouriScale and direct)")
    g.add_argument(
        "--dtype", default="fp16", choices=["fp32", "fp16", "bf16"], help="dtype of the estimate (default: fp16)"
    )
    g.add_argument(
        "--offload",
        default="none",
        choices=["none", "model", "sequential"],
        help="CPU offload of the estimate (default: none; --max-memory may choose model offload)",
    )


def _compare(sub) -> None:
    cmp = _command(
        sub,
        "compare",
        "common model size sampling runtime budget output fouriscale",
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


def _ui(sub) -> None:
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


def _eval(sub) -> None:
    ev = _command(
        sub,
        "eval",
        "common",
        help="FID/KID, crop FID/KID, IS and CLIP score of generated images",
        description="Score a folder of generated images against real ones, as the high-resolution papers do.",
    )
    add_eval_arguments(ev)


def _benchmark(sub) -> None:
    bench = _command(
        sub,
        "benchmark-quality",
        "common model size sampling runtime fouriscale",
        help="generate with several methods and score them",
        description="Generate N images per method (resumable, one subfolder per method under --out), score each "
        "against --real and against direct inference, and write a table, the JSON and a bar chart.",
    )
    add_benchmark_arguments(bench)


def _comfyui(sub) -> None:
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
