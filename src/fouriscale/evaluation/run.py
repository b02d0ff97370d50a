"""The evaluation as a composition of its steps: check the options, find and scan the images, their prompts, the
KID subsets, the networks, the metrics, stream the batches, the results and the report."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from .images import scan_sets
from .metrics import build_metrics, kid_subset_sizes
from .networks import load_networks
from .options import check_options
from .prompts import prompted_images
from .protocol import DEFAULT_CLIP_MODEL
from .report import build_report
from .stream import stream_batches

__all__ = ["evaluate", "evaluate_with_report"]


def evaluate_with_report(
    real,
    fake,
    *,
    crops: int = 0,
    crop_size: int | None = None,
    seed: int = 0,
    feature_extractor: torch.nn.Module | None = None,
    prompts: Mapping[str, str] | Callable[[Path], str | None] | None = None,
    clip_model: str = DEFAULT_CLIP_MODEL,
    batch_size: int = 16,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    kid_subset_size: int | None = None,
    progress: bool = False,
    metrics: Iterable[str] | None = None,
) -> tuple[dict[str, float], dict]:
    """Compare the images of ``fake`` with those of ``real``; returns ``(metrics, report)``.

    Args:
        real, fake: folders of images (non-recursive, sorted by name) or lists of image paths.
        crops: random crops per image for FID_c/KID_c (default 0: no crop metrics).
        crop_size: side of the square crops in pixels, required when ``crops > 0`` (the model's native size).
        seed: seeds the crop positions and the KID/IS subset draws (default 0).
        feature_extractor: ``None`` (default) for torch-fidelity's Inception-v3, or an ``nn.Module`` mapping
            float images in [0, 1] (N, 3, H, W) to (N, D) features (see the module docstring).
        prompts: ``{file name: prompt}`` or ``callable(path) -> prompt`` for the CLIP score; default ``None``:
            read the prompts embedded in the fake images, else from ``manifest.jsonl``.
        clip_model: hub id or local folder of a CLIP model (default ``openai/clip-vit-large-patch14``).
        batch_size: images decoded and fed to the networks at once (default 16).
        device: where the metrics and networks run (default ``"cpu"``).
        dtype: input dtype of a custom feature extractor (default float32; Inception always gets uint8).
        kid_subset_size: KID subset size; default ``min(1000, n_real, n_fake)`` (KID_c: counted in crops).
        progress: show a tqdm progress bar on stderr (default off).
        metrics: the metric groups to compute among ``fid``, ``kid``, ``is``, ``clip`` (default: all; CLIP is
            then skipped with a note when no prompt is found, while an explicit ``clip`` without prompts is an error).

    Returns:
        ``metrics``: name -> float among :data:`METRIC_NAMES`; ``report``: every setting of the protocol,
        image counts, notes and library versions.

    Raises:
        ValueError: bad input, before any network is loaded (one line, naming the file).
        TypeError: ``feature_extractor`` is not an ``nn.Module``.
        MetricUnavailableError: torch-fidelity, the Inception weights or the CLIP model cannot be loaded.
    """
    options = check_options(
        metrics=metrics,
        feature_extractor=feature_extractor,
        crops=crops,
        crop_size=crop_size,
        seed=seed,
        prompts=prompts,
        clip_model=clip_model,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        kid_subset_size=kid_subset_size,
        progress=progress,
    )
    notes: list[str] = []
    images = scan_sets(real, fake, options.scan_crop_size, want_info="clip" in options.groups)
    images.prompted = prompted_images(images, options, notes)
    kid_subsets = kid_subset_sizes(options, len(images.real), len(images.fake), notes)
    # the networks: the first heavy step (failures are quick and one line)
    networks = load_networks(options, notes)
    meters = build_metrics(options, networks, images, kid_subsets, notes)
    stream_batches(meters, images, options)
    results = meters.results(options.seed, notes)
    return results, build_report(real, fake, options, images, meters, results, notes)


def evaluate(real, fake, **options) -> dict[str, float]:
    """:func:`evaluate_with_report` without the report: metric name -> value.

    Same keyword arguments and defaults: ``crops=0, crop_size=None, seed=0, feature_extractor=None, prompts=None,
    clip_model="openai/clip-vit-large-patch14", batch_size=16, device="cpu", dtype=torch.float32,
    kid_subset_size=None, progress=False, metrics=None``.
    """
    return evaluate_with_report(real, fake, **options)[0]


evaluate.__signature__ = inspect.signature(evaluate_with_report).replace(return_annotation="dict[str, float]")
