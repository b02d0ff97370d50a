"""The quality benchmark's steps (generate each method, score it, write the report) and the evaluation's front-end
helpers, shared by ``fouriscale eval`` and ``fouriscale benchmark-quality`` (their options: :mod:`.cli.quality`).

Images are made through the batch machinery (:mod:`.batch`: resumable, sharded, settings embedded; one subfolder
per method); every number comes from :mod:`fouriscale.evaluation`. Every bad input ends as one
:class:`~fouriscale.frontend.errors.UserError`.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import sys

import torch

from ..evaluation import (
    METRIC_GROUPS,
    MetricUnavailableError,
    check_inception_available,
    evaluate_with_report,
    find_images,
)
from .batch import run_batch
from .compare import VARIANTS
from .errors import UserError
from .recipe import Job

__all__ = [
    "load_feature_extractor",
    "run_evaluation",
    "metric_groups",
    "check_real",
    "check_metrics_available",
    "generate_methods",
    "score_methods",
    "benchmark_table",
    "benchmark_chart",
    "write_benchmark",
    "BENCHMARK_FILES",
]

BENCHMARK_FILES = ("benchmark.txt", "benchmark.json", "benchmark.png")


def load_feature_extractor(spec: str):
    """``package.module:attr.path`` -> the ``nn.Module`` it names, calling it first if it is a factory."""
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
    try:
        return evaluate_with_report(real, fake, **kwargs)
    except (ValueError, MetricUnavailableError) as exc:
        raise UserError(str(exc)) from None


def metric_groups(text: str | None) -> list[str]:
    """The metric groups of ``--metrics`` (default: all of fid, kid, is, clip)."""
    if not text:
        return list(METRIC_GROUPS)
    groups = [g.strip().lower() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in METRIC_GROUPS]
    if unknown or not groups:
        raise UserError(
            f"--metrics: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRIC_GROUPS)}"
        )
    return groups


def check_real(real: str | None) -> None:
    """The reference folder holds images (when given)."""
    if real:
        try:
            find_images(real, "real")
        except ValueError as exc:
            raise UserError(f"--real: {exc}") from None


def check_metrics_available(groups: list[str], extractor) -> None:
    """The Inception network of FID/KID/IS can be used here, unless another feature extractor replaces it."""
    if extractor is None and set(groups) & {"fid", "kid", "is"}:
        try:
            check_inception_available()
        except MetricUnavailableError as exc:
            raise UserError(str(exc)) from None


def generate_methods(ready, methods: list[str], prompts: list[str], n: int, seed: int, out, state, progress=True):
    """``n`` images per method (prompt ``i mod P`` with seed ``seed + i``) into ``out/METHOD``, through the batch
    machinery (resumable, sharded between ``state``'s processes); returns ``{method: folder}``."""
    recipe = ready.recipe
    jobs = [Job(i, prompts[i % len(prompts)], seed + i) for i in range(n)]
    folders = {}
    for method in methods:
        changes = VARIANTS[method]
        folders[method] = folder = out.path / method
        method_recipe = recipe if changes is None else recipe.replace(config=recipe.config.replace(**changes))
        print(f"{method}: generating {n} image(s) into {folder}", file=sys.stderr)
        result = run_batch(
            ready.pipes,
            method_recipe,
            jobs,
            folder,
            progress=progress,
            state=state,
            methods=("direct",) if changes is None else ("fouriscale",),
        )
        print(f"{method}: {len(result.written)} written, {len(result.skipped)} already done", file=sys.stderr)
    return folders


def score_methods(folders: dict, real: str | None, groups: list[str], options: dict) -> tuple[dict, dict]:
    """``(results, reports)``: each method against ``real`` (FID/KID; IS and CLIP on its own) and against direct
    inference (FID/KID)."""
    pair = [g for g in groups if g in ("fid", "kid")]
    own = [g for g in groups if g in ("is", "clip")]
    results: dict[str, dict[str, dict[str, float]]] = {}
    reports: dict[str, dict[str, dict]] = {}
    for method, folder in folders.items():
        scores, method_reports = {}, {}
        if real:
            metrics, report = run_evaluation(real, folder, metrics=groups, **options)
            scores["vs_real"] = {k: v for k, v in metrics.items() if not k.startswith(("is_", "clip"))}
            scores["own"] = {k: v for k, v in metrics.items() if k.startswith(("is_", "clip"))}
            method_reports["vs_real"] = report
        elif own:
            metrics, report = run_evaluation(
                folders["direct"], folder, metrics=own, **dict(options, crops=0, crop_size=None)
            )
            scores["own"] = metrics
            method_reports["own"] = report
        if method != "direct" and pair:
            metrics, report = run_evaluation(folders["direct"], folder, metrics=pair, **options)
            scores["vs_direct"] = metrics
            method_reports["vs_direct"] = report
        results[method] = {k: v for k, v in scores.items() if v}
        reports[method] = method_reports
    return results, reports


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
    import matplotlib  # optional (the ui extra); checked up front by require_matplotlib

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


def write_benchmark(out, args, ready, methods, n, groups, crop_size, results, reports) -> str:
    """``benchmark.txt`` (the table), ``benchmark.json`` (results, settings, reports) and ``benchmark.png`` (the
    chart) in the output folder; returns the table."""
    recipe = ready.recipe
    table = benchmark_table(results)
    title = f"{args.model} at {recipe.width}x{recipe.height}, {recipe.steps} steps, {n} image(s) per method"
    document = {
        "results": results,
        "settings": {
            "model": args.model,
            "width": recipe.width,
            "height": recipe.height,
            "steps": recipe.steps,
            "n": n,
            "first_seed": args.seed,
            "methods": methods,
            "prompts": args.prompts,
            "real": args.real,
            "guidance_scale": recipe.guidance_scale,
            "scheduler": args.scheduler,
            "eta": args.eta,
            "fouriscale": recipe.config.to_dict(),
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
    return table
