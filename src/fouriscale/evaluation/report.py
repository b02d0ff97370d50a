"""The report of every protocol setting, the metrics as a table, and both as strict JSON."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import PIL
import torch

import fouriscale

from .images import ImageSets
from .metrics import Metrics
from .options import Options
from .protocol import HIGHER_IS_BETTER, IS_SPLITS, KID_SUBSETS, LOWER_IS_BETTER, METRIC_NAMES, PROTOCOL

__all__ = ["build_report", "describe", "format_table", "json_safe", "versions", "write_json"]


def versions() -> dict[str, str | None]:
    """The versions of fouriscale and the libraries the numbers depend on (``None``: not installed)."""
    import torchmetrics

    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "fouriscale": fouriscale.__version__,
        "torch": torch.__version__,
        "torchmetrics": torchmetrics.__version__,
        "torch-fidelity": dist("torch-fidelity"),
        "transformers": dist("transformers"),
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }


def describe(source) -> str:
    """A folder as its path, a list of files as its length."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"list of {len(source)} files"


def build_report(
    real, fake, options: Options, images: ImageSets, meters: Metrics, results: Mapping[str, float], notes: list[str]
) -> dict:
    """Every setting of the protocol, the image and crop counts, the notes and the library versions."""
    use_crops, crops = options.use_crops, options.crops
    n_real, n_fake = len(images.real), len(images.fake)
    networks, clip = meters.networks, meters.clip is not None
    converted = Counter(r.mode for r in images.real + images.fake if r.mode != "RGB")
    return {
        "protocol": PROTOCOL,
        "real": describe(real),
        "fake": describe(fake),
        "images_real": n_real,
        "images_fake": n_fake,
        "metrics": [name for name in METRIC_NAMES if name in results],
        "resize": "whole image, Pillow bicubic (antialiased), aspect ratio not preserved",
        "metric_input_size": list(networks.size) if options.need_features else None,
        "crops_per_image": crops,
        "crop_size": options.crop_size if use_crops else None,
        "crop_rule": "seeded uniform positions from (seed, image index, image size), full resolution, then resized"
        if use_crops
        else None,
        "crops_real": n_real * crops if use_crops else 0,
        "crops_fake": n_fake * crops if use_crops else 0,
        "seed": options.seed,
        "feature_extractor": networks.name,
        "feature_dim": networks.feature_dim,
        "kid_subset_size": meters.kid_subset if meters.kid is not None else None,
        "kid_c_subset_size": meters.kid_c_subset if meters.kid_c is not None else None,
        "kid_subsets": KID_SUBSETS if meters.kid is not None else None,
        "is_splits": IS_SPLITS if meters.inception_score is not None else None,
        "clip_model": options.clip_model if clip else None,
        "clip_images": len(images.prompted) if clip else 0,
        "prompt_sources": dict(Counter(r.prompt_source for r in images.prompted)) if clip else {},
        "converted_to_rgb": dict(converted),
        "batch_size": options.batch_size,
        "device": str(options.device),
        "dtype": str(options.dtype).replace("torch.", ""),
        "notes": notes,
        "versions": versions(),
    }


# ----------------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------------


def format_table(metrics: Mapping[str, float | None]) -> str:
    """A fixed-width table: metric, value (6 significant digits; non-finite as ``nan``/``inf``, missing as
    ``-``) and whether lower or higher is better."""
    rows = [("metric", "value", "better")]
    for name, value in metrics.items():
        if value is None:
            text = "-"
        else:
            text = f"{float(value):.6g}"
        better = "lower" if name in LOWER_IS_BETTER else "higher" if name in HIGHER_IS_BETTER else ""
        rows.append((name, text, better))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def json_safe(value, path: str, notes: list[str]):
    """``value`` with numpy scalars as Python numbers, non-finite floats as ``None`` (noted by ``path``), mappings
    and sequences converted recursively, anything else as ``str``."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            notes.append(f"{path} was {value}; written as null")
            return None
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, f"{path}.{k}" if path else str(k), notes) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, f"{path}[{i}]", notes) for i, v in enumerate(value)]
    return str(value)


def write_json(path: str | os.PathLike, metrics: Mapping[str, float], report: Mapping) -> Path:
    """Write ``{"metrics": ..., "report": ...}`` to ``path`` atomically (temporary file in the same folder,
    then ``os.replace``). Non-finite numbers become ``null`` with a note in ``report.notes``; strict JSON."""
    path = Path(path)
    notes = list(report.get("notes", []))
    extra: list[str] = []
    clean_metrics = json_safe(dict(metrics), "", extra)
    clean_report = json_safe({k: v for k, v in report.items() if k != "notes"}, "", extra)
    clean_report["notes"] = notes + extra
    text = json.dumps({"metrics": clean_metrics, "report": clean_report}, indent=2, allow_nan=False, ensure_ascii=False)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
