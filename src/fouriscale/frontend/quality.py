"""``fouriscale eval``: FID/KID, crop FID/KID, IS and CLIP score of a folder of images against real ones.

The command line glue around :mod:`fouriscale.evaluation`: :func:`add_eval_arguments` fills a (sub)parser,
:func:`cmd_eval` runs it, prints the table and writes the JSON report. Every bad input ends as one
:class:`~fouriscale.frontend.loading.UserError` (mapped in :func:`run_evaluation` only).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .loading import UserError, resolve_device

__all__ = ["add_eval_arguments", "cmd_eval", "load_feature_extractor", "run_evaluation"]


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


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``eval`` options to ``parser`` and return it."""
    from ..evaluation import DEFAULT_CLIP_MODEL, METRIC_GROUPS

    p = parser
    p.add_argument("--real", required=True, metavar="DIR", help="folder of reference images (e.g. LAION samples)")
    p.add_argument("--fake", required=True, metavar="DIR", help="folder of generated images to score")
    p.add_argument("--crops", type=_non_negative, default=0, metavar="N",
                   help="random crops per image for FID_c/KID_c (default: 0, no crop metrics)")  # fmt: skip
    p.add_argument("--crop-size", type=_positive, metavar="PX",
                   help="crop side in pixels, required with --crops: the model's native size "
                   "(1024 for SDXL, 512 for SD 1.5, 768 for SD 2.1)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the crop positions and KID/IS subsets (default: 0)")
    p.add_argument(
        "--json", metavar="OUT", help="also write the metrics and the full protocol report to this JSON file"
    )
    p.add_argument("--batch-size", type=_positive, default=16, help="images per batch (default: 16)")
    p.add_argument("--device", default="auto", help="auto (default: cuda if available), cpu, cuda, cuda:1, mps")
    p.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, metavar="ID_OR_DIR",
                   help=f"CLIP model for the CLIP score, hub id or local folder (default: {DEFAULT_CLIP_MODEL})")  # fmt: skip
    p.add_argument("--kid-subset-size", type=_positive, metavar="N",
                   help="KID subset size (default: min(1000, number of images); for KID_c, of crops)")  # fmt: skip
    p.add_argument("--metrics", metavar="LIST",
                   help=f"comma-separated subset of {','.join(METRIC_GROUPS)} (default: all; clip is skipped "
                   "when the images carry no prompt)")  # fmt: skip
    p.add_argument("--feature-extractor", metavar="MODULE:ATTR",
                   help="for research and tests: an importable factory (or nn.Module) used instead of Inception, "
                   "mapping float images in [0,1] (N,3,H,W) to (N,D) features")  # fmt: skip
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


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args``; prints the table (and notes) on stdout; returns 0."""
    from ..evaluation import format_table, write_json

    extractor = load_feature_extractor(args.feature_extractor) if args.feature_extractor else None
    device = resolve_device(args.device)
    metrics, report = run_evaluation(
        args.real,
        args.fake,
        crops=args.crops,
        crop_size=args.crop_size,
        seed=args.seed,
        feature_extractor=extractor,
        clip_model=args.clip_model,
        batch_size=args.batch_size,
        device=device,
        kid_subset_size=args.kid_subset_size,
        progress=not args.no_progress,
        metrics=args.metrics,
    )
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
