"""``fouriscale eval`` and ``fouriscale benchmark-quality`` on the command line: their options and the commands, thin
over :mod:`fouriscale.evaluation` and :mod:`fouriscale.frontend.quality`."""

from __future__ import annotations

import argparse
import sys

from ...evaluation import DEFAULT_CLIP_MODEL, METRIC_GROUPS, format_table, write_json
from ..batch import distributed_state
from ..compare import VARIANTS, require_matplotlib
from ..defaults import DEFAULT_SEED
from ..errors import UserError
from ..folder import OutputFolder
from ..loading import resolve_device
from ..prompts import read_prompts
from ..quality import (
    BENCHMARK_FILES,
    check_metrics_available,
    check_real,
    generate_methods,
    load_feature_extractor,
    metric_groups,
    run_evaluation,
    score_methods,
    write_benchmark,
)
from .commands import prepare, request_of

__all__ = ["add_eval_arguments", "add_metric_arguments", "add_benchmark_arguments", "cmd_eval", "cmd_benchmark_quality"]


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def add_metric_arguments(parser: argparse.ArgumentParser, crop_size_help: str | None = None) -> argparse.ArgumentParser:
    """The metric options ``eval`` and ``benchmark-quality`` share (crops, batch size, CLIP model, KID subset,
    metric list, feature extractor); returns ``parser``."""
    p = parser.add_argument_group("metrics")
    p.add_argument(
        "--crops",
        type=_non_negative,
        default=0,
        metavar="N",
        help="random crops per image for FID_c/KID_c (default: 0, no crop metrics)",
    )
    p.add_argument(
        "--crop-size",
        type=_positive,
        metavar="PX",
        help=crop_size_help
        or "crop side in pixels, required with --crops: the model's native size "
        "(1024 for SDXL, 512 for SD 1.5, 768 for SD 2.1)",
    )
    p.add_argument("--batch-size", type=_positive, default=16, help="images per batch (default: 16)")
    p.add_argument(
        "--clip-model",
        default=DEFAULT_CLIP_MODEL,
        metavar="ID_OR_DIR",
        help=f"CLIP model for the CLIP score, hub id or local folder (default: {DEFAULT_CLIP_MODEL})",
    )
    p.add_argument(
        "--kid-subset-size",
        type=_positive,
        metavar="N",
        help="KID subset size (default: min(1000, number of images); for KID_c, of crops)",
    )
    p.add_argument(
        "--metrics",
        metavar="LIST",
        help=f"comma-separated subset of {','.join(METRIC_GROUPS)} (default: all; clip is skipped "
        "when the images carry no prompt)",
    )
    p.add_argument(
        "--feature-extractor",
        metavar="MODULE:ATTR",
        help="for research and tests: an importable factory (or nn.Module) used instead of Inception, "
        "mapping float images in [0,1] (N,3,H,W) to (N,D) features",
    )
    return parser


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``eval`` options to ``parser`` and return it."""
    p = parser
    p.add_argument("--real", required=True, metavar="DIR", help="folder of reference images (e.g. LAION samples)")
    p.add_argument("--fake", required=True, metavar="DIR", help="folder of generated images to score")
    p.add_argument("--seed", type=int, default=0, help="seed of the crop positions and KID/IS subsets (default: 0)")
    p.add_argument(
        "--json", metavar="OUT", help="also write the metrics and the full protocol report to this JSON file"
    )
    p.add_argument("--device", default="auto", help="auto (default: cuda if available), cpu, cuda, cuda:1, mps")
    add_metric_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def metric_options(args: argparse.Namespace, extractor, device: str, crop_size: int | None) -> dict:
    """The evaluation keywords the metric options of ``eval`` and ``benchmark-quality`` stand for."""
    return dict(
        crops=args.crops,
        crop_size=crop_size,
        seed=args.seed,
        feature_extractor=extractor,
        clip_model=args.clip_model,
        batch_size=args.batch_size,
        device=device,
        kid_subset_size=args.kid_subset_size,
        progress=not args.no_progress,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args``; prints the table (and notes) on stdout; returns 0."""
    extractor = load_feature_extractor(args.feature_extractor) if args.feature_extractor else None
    device = resolve_device(args.device)
    options = metric_options(args, extractor, device, args.crop_size)
    metrics, report = run_evaluation(args.real, args.fake, metrics=args.metrics, **options)
    print(format_table(metrics))
    print(
        f"{report['images_real']} real, {report['images_fake']} fake images; "
        f"features: {report['feature_extractor'] or '-'}; seed {report['seed']}"
        + (
            f"; {report['crops_per_image']} crop(s) of {report['crop_size']} px per image"
            if report["crop_size"]
            else ""
        )
    )
    for note in report["notes"]:
        print(f"note: {note}")
    if args.json:
        try:
            path = write_json(args.json, metrics, report)
        except OSError as exc:
            raise UserError(f"--json {args.json}: cannot write it ({exc.strerror or exc})") from None
        print(f"wrote {path}", file=sys.stderr)
    return 0


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``benchmark-quality`` beyond the shared model/size/sampling/device/FouriScale ones."""
    p = parser
    p.add_argument("--prompts", required=True, metavar="FILE", help="text file with one prompt per line")
    p.add_argument(
        "--methods",
        default="direct,fouriscale",
        help="comma-separated, from: " + ", ".join(VARIANTS) + "; direct inference is always made, as "
        "the reference (default: %(default)s)",
    )
    p.add_argument(
        "--n",
        type=_positive,
        metavar="N",
        help="images per method: prompt i mod P with seed SEED + i (default: one per prompt)",
    )
    p.add_argument("--seed", type=_non_negative, default=DEFAULT_SEED, help=f"first seed (default: {DEFAULT_SEED})")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: one subfolder per method, the report")
    p.add_argument(
        "--real",
        metavar="DIR",
        help="folder of reference images; without it only direct inference is the reference (and IS/CLIP are absolute)",
    )
    add_metric_arguments(p, crop_size_help="crop side in pixels for --crops (default: the model's native size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _methods(text: str) -> list[str]:
    methods = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in methods if m not in VARIANTS]
    if unknown or not methods:
        raise UserError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(VARIANTS)}")
    return ["direct"] + [m for m in methods if m != "direct"]


def cmd_benchmark_quality(args: argparse.Namespace) -> int:
    """Generate ``--n`` images per method into ``--out/METHOD`` (resumable), score each method against ``--real``
    (when given) and against direct inference, write ``benchmark.txt``, ``benchmark.json`` and ``benchmark.png``.
    Everything that can be checked before rendering is checked first (prompts, methods, metrics, the metric
    networks, the reference folder, the output folder, the model and size)."""
    require_matplotlib("fouriscale benchmark-quality")
    prompts = read_prompts(None, args.prompts)
    methods = _methods(args.methods)
    groups = metric_groups(args.metrics)
    n = args.n or len(prompts)
    if n < 2:
        raise UserError(
            f"--n {n}: FID and KID need at least 2 images per method (and many more for meaningful numbers)"
        )
    device = resolve_device(args.device)
    out = OutputFolder(args.out).prepare()
    check_real(args.real)
    extractor = load_feature_extractor(args.feature_extractor) if args.feature_extractor else None
    check_metrics_available(groups, extractor)
    state = distributed_state(device)
    ready = prepare(args, request_of(args), device, state=state)
    folders = generate_methods(ready, methods, prompts, n, args.seed, out, state, progress=not args.no_progress)
    if state is not None and state.num_processes > 1:  # sharded: every share is done, one process scores
        state.wait_for_everyone()
        if not state.is_main_process:
            return 0
    crop_size = args.crop_size or (min(ready.plan.profile.native_size) if args.crops else None)
    options = metric_options(args, extractor, device, crop_size)
    results, reports = score_methods(folders, args.real, groups, options)
    table = write_benchmark(out, args, ready, methods, n, groups, crop_size, results, reports)
    print(table)
    print(f"wrote {', '.join(BENCHMARK_FILES)} in {args.out}", file=sys.stderr)
    return 0
