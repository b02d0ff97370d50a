"""``fouriscale eval`` and ``fouriscale benchmark-quality``: FID/KID, crop FID/KID, IS and CLIP score.

The command line glue around :mod:`fouriscale.evaluation`: :func:`add_eval_arguments` fills a (sub)parser,
:func:`cmd_eval` runs it, prints the table and writes the JSON report. :func:`add_benchmark_arguments` and
:func:`cmd_benchmark_quality` generate every method through the batch machinery (:mod:`.jobs`: resumable,
sharded, settings embedded; one subfolder per method) and score each against ``--real`` and against direct
inference. Every bad input ends as one :class:`~fouriscale.frontend.errors.UserError`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys

from .errors import UserError
from .loading import resolve_device

__all__ = [
    "add_eval_arguments",
    "add_metric_arguments",
    "add_benchmark_arguments",
    "cmd_eval",
    "cmd_benchmark_quality",
    "load_feature_extractor",
    "run_evaluation",
    "benchmark_table",
    "benchmark_chart",
]


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
    from ..evaluation import DEFAULT_CLIP_MODEL, METRIC_GROUPS

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


def load_feature_extractor(spec: str):
    """``package.module:attr.path`` -> the ``nn.Module`` it names, calling it first if it is a factory."""
    import torch

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--feature-extractor {spec!r}: expected MODULE:ATTR, e.g. mypkg.nets:make_net")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"--feature-extractor {spec!r}: cannot import {module_name!r} ({exc})") from None
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UserError(f"--feature-extractor {spec!r}: {module_name!r} has no {attr!r}") from None
    if not isinstance(obj, torch.nn.Module) and callable(obj):
        obj = obj()
    if not isinstance(obj, torch.nn.Module):
        raise UserError(f"--feature-extractor {spec!r}: gave a {type(obj).__name__}, not a torch.nn.Module")
    return obj


def run_evaluation(real, fake, **kwargs):
    """:func:`fouriscale.evaluation.evaluate_with_report`, its input and availability errors as :class:`UserError`."""
    from ..evaluation import MetricUnavailableError, evaluate_with_report

    try:
        return evaluate_with_report(real, fake, **kwargs)
    except (ValueError, MetricUnavailableError) as exc:
        raise UserError(str(exc)) from None


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
    from ..evaluation import format_table, write_json

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


# ------------------------------------------------------------------------------------------ benchmark-quality

BENCHMARK_FILES = ("benchmark.txt", "benchmark.json", "benchmark.png")


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``benchmark-quality`` beyond the shared model/size/sampling/device/FouriScale ones."""
    from .compare import VARIANTS
    from .params import DEFAULT_SEED

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
    from .compare import VARIANTS

    methods = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in methods if m not in VARIANTS]
    if unknown or not methods:
        raise UserError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(VARIANTS)}")
    return ["direct"] + [m for m in methods if m != "direct"]


def _groups(text: str | None) -> list[str]:
    from ..evaluation import METRIC_GROUPS

    if not text:
        return list(METRIC_GROUPS)
    groups = [g.strip().lower() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in METRIC_GROUPS]
    if unknown or not groups:
        raise UserError(
            f"--metrics: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRIC_GROUPS)}"
        )
    return groups


def _json_clean(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def benchmark_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Fixed-width table: one row per method, one column per ``metric (reference)``; ``-`` where not measured."""
    columns = []
    for scores in results.values():
        for ref, metrics in scores.items():
            for name in metrics:
                if (ref, name) not in columns:
                    columns.append((ref, name))
    heads = ["method"] + [name if ref == "own" else f"{name} ({ref.replace('vs_', 'vs ')})" for ref, name in columns]
    rows = [heads]
    for method, scores in results.items():
        row = [method]
        for ref, name in columns:
            value = scores.get(ref, {}).get(name)
            row.append("-" if value is None else f"{value:.6g}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(heads))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


def benchmark_chart(results: dict[str, dict[str, dict[str, float]]], title: str = "") -> bytes:
    """A bar chart PNG: one panel per metric and reference, one bar per method."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for scores in results.values():
        for ref, metrics in scores.items():
            for name in metrics:
                if (ref, name) not in panels and not name.endswith("_std"):
                    panels.append((ref, name))
    cols = min(4, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), dpi=100, squeeze=False)
    try:
        methods = list(results)
        for ax, (ref, name) in zip(axes.flat, panels):
            values = [results[m].get(ref, {}).get(name) for m in methods]
            shown = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
            ax.bar(range(len(methods)), shown, color=[f"C{i}" for i in range(len(methods))])
            ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
            ax.set_title(name if ref == "own" else f"{name} ({ref.replace('vs_', 'vs ')})", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def cmd_benchmark_quality(args: argparse.Namespace) -> int:
    """Generate ``--n`` images per method into ``--out/METHOD`` (resumable), score each method against ``--real``
    (when given) and against direct inference, write ``benchmark.txt``, ``benchmark.json`` and ``benchmark.png``."""
    from ..evaluation import find_images
    from .cli import _distributed_state, _read_prompts, prepare
    from .compare import VARIANTS, require_matplotlib
    from .jobs import Job, run_batch
    from .outputs import OutputFolder

    args.prompt = None
    require_matplotlib("fouriscale benchmark-quality")
    prompts = _read_prompts(args)
    methods = _methods(args.methods)
    groups = _groups(args.metrics)
    n = args.n or len(prompts)
    if n < 2:
        raise UserError(
            f"--n {n}: FID and KID need at least 2 images per method (and many more for meaningful numbers)"
        )
    device = resolve_device(args.device)
    out = OutputFolder(args.out).prepare()
    if args.real:
        try:
            find_images(args.real, "real")
        except ValueError as exc:
            raise UserError(f"--real: {exc}") from None
    extractor = load_feature_extractor(args.feature_extractor) if args.feature_extractor else None
    if extractor is None and set(groups) & {"fid", "kid", "is"}:
        from ..evaluation import MetricUnavailableError, check_inception_available

        try:
            check_inception_available()
        except MetricUnavailableError as exc:
            raise UserError(str(exc)) from None
    state = _distributed_state(device)
    loaded, recipe, plan = prepare(args, device=device, state=state)
    height, width, steps, config = recipe.height, recipe.width, recipe.steps, recipe.config
    crop_size = args.crop_size or (min(plan.profile.native_size) if args.crops else None)
    jobs = [Job(i, prompts[i % len(prompts)], args.seed + i) for i in range(n)]
    folders = {}
    for method in methods:
        changes = VARIANTS[method]
        folder = out.path / method
        folders[method] = folder
        method_recipe = recipe if changes is None else recipe.replace(config=config.replace(**changes))
        print(f"{method}: generating {n} image(s) into {folder}", file=sys.stderr)
        result = run_batch(
            loaded.pipe,
            method_recipe,
            jobs,
            folder,
            progress=not args.no_progress,
            state=state,
            methods=("direct",) if changes is None else ("fouriscale",),
        )
        print(f"{method}: {len(result.written)} written, {len(result.skipped)} already done", file=sys.stderr)
    if state is not None and state.num_processes > 1:  # sharded: every share is done, one process scores
        state.wait_for_everyone()
        if not state.is_main_process:
            return 0

    common = metric_options(args, extractor, device, crop_size)
    pair = [g for g in groups if g in ("fid", "kid")]
    own = [g for g in groups if g in ("is", "clip")]
    results: dict[str, dict[str, dict[str, float]]] = {}
    reports: dict[str, dict[str, dict]] = {}
    for method in methods:
        scores, method_reports = {}, {}
        if args.real:
            metrics, report = run_evaluation(args.real, folders[method], metrics=groups, **common)
            scores["vs_real"] = {k: v for k, v in metrics.items() if not k.startswith(("is_", "clip"))}
            scores["own"] = {k: v for k, v in metrics.items() if k.startswith(("is_", "clip"))}
            method_reports["vs_real"] = report
        elif own:
            c = dict(common, crops=0, crop_size=None)
            metrics, report = run_evaluation(folders["direct"], folders[method], metrics=own, **c)
            scores["own"] = metrics
            method_reports["own"] = report
        if method != "direct" and pair:
            metrics, report = run_evaluation(folders["direct"], folders[method], metrics=pair, **common)
            scores["vs_direct"] = metrics
            method_reports["vs_direct"] = report
        results[method] = {k: v for k, v in scores.items() if v}
        reports[method] = method_reports

    table = benchmark_table(results)
    title = f"{args.model} at {width}x{height}, {steps} steps, {n} image(s) per method"
    document = {
        "results": results,
        "settings": {
            "model": args.model,
            "width": width,
            "height": height,
            "steps": steps,
            "n": n,
            "first_seed": args.seed,
            "methods": methods,
            "prompts": args.prompts,
            "real": args.real,
            "guidance_scale": recipe.guidance_scale,
            "scheduler": args.scheduler,
            "eta": args.eta,
            "fouriscale": config.to_dict(),
            "metrics": groups,
            "crops": args.crops,
            "crop_size": crop_size,
        },
        "reports": reports,
    }
    text = json.dumps(_json_clean(document), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    out.commit("benchmark.txt", (title + "\n\n" + table + "\n").encode("utf-8"))
    out.commit("benchmark.json", text.encode("utf-8"))
    out.commit("benchmark.png", benchmark_chart(results, title))
    print(table)
    print(f"wrote {', '.join(BENCHMARK_FILES)} in {args.out}", file=sys.stderr)
    return 0
