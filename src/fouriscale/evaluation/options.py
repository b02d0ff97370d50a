"""The keyword arguments of an evaluation, checked before any file is read or network loaded."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .protocol import METRIC_GROUPS

__all__ = ["Options", "check_options", "metric_groups"]


@dataclass(frozen=True)
class Options:
    """The checked settings of one evaluation (see :func:`fouriscale.evaluation.evaluate_with_report`)."""

    groups: frozenset[str]
    explicit: bool
    crops: int
    crop_size: int | None
    seed: int
    feature_extractor: torch.nn.Module | None
    prompts: Mapping[str, str] | Callable[[Path], str | None] | None
    clip_model: str
    batch_size: int
    device: str
    dtype: torch.dtype
    kid_subset_size: int | None
    progress: bool

    @property
    def use_crops(self) -> bool:
        """Whether FID_c/KID_c are computed (``crops > 0``)."""
        return self.crops > 0

    @property
    def scan_crop_size(self) -> int | None:
        """The crop size every image must hold, ``None`` without crops."""
        return self.crop_size if self.use_crops else None

    @property
    def need_features(self) -> bool:
        """Whether a feature network is needed (FID, KID or IS asked for)."""
        return bool(self.groups & {"fid", "kid", "is"})


def metric_groups(metrics: Iterable[str] | None) -> tuple[set[str], bool]:
    """The chosen metric groups (all when ``None``; a string may list them with commas or spaces) and whether
    they were given explicitly; ``ValueError`` for an unknown or empty choice."""
    if metrics is None:
        return set(METRIC_GROUPS), False
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(",", " ").split()]
    chosen = {m.strip().lower() for m in metrics}
    unknown = sorted(chosen - set(METRIC_GROUPS))
    if unknown or not chosen:
        raise ValueError(f"metrics {', '.join(unknown) or '(none)'}: choose from {', '.join(METRIC_GROUPS)}")
    return chosen, True


def check_options(
    *,
    metrics: Iterable[str] | None,
    feature_extractor: torch.nn.Module | None,
    crops: int,
    crop_size: int | None,
    seed: int,
    prompts: Mapping[str, str] | Callable[[Path], str | None] | None,
    clip_model: str,
    batch_size: int,
    device: str,
    dtype: torch.dtype,
    kid_subset_size: int | None,
    progress: bool,
) -> Options:
    """The :class:`Options` of these arguments; ``ValueError`` (``TypeError`` for a feature extractor that is not
    an ``nn.Module``) for the first bad one, in the order the arguments are documented."""
    groups, explicit = metric_groups(metrics)
    if feature_extractor is not None and not isinstance(feature_extractor, torch.nn.Module):
        raise TypeError(f"feature_extractor must be a torch.nn.Module, got {type(feature_extractor).__name__}")
    if not isinstance(crops, int) or isinstance(crops, bool) or crops < 0:
        raise ValueError(f"crops {crops!r}: must be a whole number, 0 or more")
    if crops > 0 and crop_size is None:
        raise ValueError(
            "crops > 0 needs a crop size (crop_size= / --crop-size PX): the model's native size, e.g. 1024 for SDXL, "
            "512 for SD 1.5"
        )
    if crop_size is not None and (not isinstance(crop_size, int) or crop_size <= 0):
        raise ValueError(f"crop size {crop_size!r}: must be a positive number of pixels")
    if crops > 0 and not groups & {"fid", "kid"}:
        raise ValueError("crops are only used by FID_c/KID_c: add fid or kid to the metrics, or drop the crops")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size {batch_size!r}: must be at least 1")
    if kid_subset_size is not None and (not isinstance(kid_subset_size, int) or kid_subset_size < 2):
        raise ValueError(f"KID subset size {kid_subset_size!r}: must be at least 2")
    return Options(
        groups=frozenset(groups),
        explicit=explicit,
        crops=crops,
        crop_size=crop_size,
        seed=seed,
        feature_extractor=feature_extractor,
        prompts=prompts,
        clip_model=clip_model,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        kid_subset_size=kid_subset_size,
        progress=progress,
    )
