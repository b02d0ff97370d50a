"""The torchmetrics objects (FID, KID, FID_c, KID_c, IS, CLIP score): KID subset sizes (checked before any network
is loaded), building them for the chosen groups, feeding them batch by batch and computing seeded results."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .images import Batch, ImageSets
from .networks import Networks, TruncatingProcessor, feature_batch, load_clip
from .options import Options
from .protocol import IS_SPLITS, KID_MAX_SUBSET, KID_SUBSETS, METRIC_NAMES

__all__ = ["Metrics", "build_metrics", "default_kid_subset_size", "kid_subset_sizes", "seeded"]


def default_kid_subset_size(n_real: int, n_fake: int, cap: int = KID_MAX_SUBSET) -> int:
    """KID subset size: ``min(cap, n_real, n_fake)`` (torchmetrics needs it <= both sample counts)."""
    return max(1, min(cap, n_real, n_fake))


def kid_subset_sizes(options: Options, n_real: int, n_fake: int, notes: list[str]) -> tuple[int, int]:
    """The KID and KID_c subset sizes (given, else :func:`default_kid_subset_size` of the image and crop
    counts); ``ValueError`` when KID is asked for and one exceeds its sample count; a note below 1000."""
    crops = options.crops
    kid_subset = options.kid_subset_size or default_kid_subset_size(n_real, n_fake)
    kid_c_subset = options.kid_subset_size or default_kid_subset_size(n_real * crops, n_fake * crops)
    if "kid" in options.groups:
        if kid_subset > min(n_real, n_fake):
            raise ValueError(f"KID subset size {kid_subset} exceeds the image count ({n_real} real, {n_fake} fake)")
        if options.use_crops and kid_c_subset > min(n_real, n_fake) * crops:
            raise ValueError(
                f"KID subset size {kid_c_subset} exceeds the crop count ({n_real * crops} real, {n_fake * crops} fake)"
            )
        if kid_subset < KID_MAX_SUBSET:
            notes.append(
                f"kid subset size {kid_subset} (< {KID_MAX_SUBSET}: fewer images); KID is comparable only between "
                "runs with the same subset size"
            )
    return kid_subset, kid_c_subset


def seeded(compute: Callable[[], Any], seed: int) -> Any:
    """``compute()`` with torch's CPU generator seeded from ``seed`` (and restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return compute()


@dataclass
class Metrics:
    """The torchmetrics objects of one evaluation (``None`` where not asked for), the networks they share and
    the count of prompts the CLIP processor truncated."""

    networks: Networks
    device: str
    dtype: torch.dtype
    batch_size: int
    kid_subset: int
    kid_c_subset: int
    fid: Any = None
    kid: Any = None
    fid_c: Any = None
    kid_c: Any = None
    inception_score: Any = None
    clip: Any = None
    processor: TruncatingProcessor | None = None
    truncated: int = 0

    def add_image_metrics(self, options: Options) -> None:
        """FID, KID, FID_c, KID_c and IS for the chosen groups, on the shared feature networks."""
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore
        from torchmetrics.image.kid import KernelInceptionDistance

        features, device = self.networks.features, self.device
        want_fid, want_kid, use_crops = "fid" in options.groups, "kid" in options.groups, options.use_crops
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            normalize = features is not None and not features.uint8_input

            def make_fid():
                return FrechetInceptionDistance(feature=features, normalize=normalize).to(device)

            def make_kid(subset: int):
                return KernelInceptionDistance(
                    feature=features, subsets=KID_SUBSETS, subset_size=subset, normalize=normalize
                ).to(device)

            self.fid = make_fid() if want_fid else None
            self.kid = make_kid(self.kid_subset) if want_kid else None
            self.fid_c = make_fid() if want_fid and use_crops else None
            self.kid_c = make_kid(self.kid_c_subset) if want_kid and use_crops else None
            # normalize=False: torchmetrics would turn floats into bytes even for a custom network
            self.inception_score = (
                InceptionScore(feature=self.networks.is_features, splits=IS_SPLITS, normalize=False).to(device)
                if "is" in options.groups
                else None
            )

    def add_clip(self, clip_model: str) -> None:
        """The CLIP score with ``clip_model`` (loaded here) and its truncating processor."""
        from torchmetrics.multimodal.clip_score import CLIPScore

        model, processor = load_clip(clip_model)
        self.processor = processor
        self.clip = CLIPScore(model_name_or_path=lambda: (model, processor)).to(self.device)

    def update(self, batch: Batch, is_real: bool) -> None:
        """Feed one decoded batch to every metric (IS and CLIP see the fake images only)."""
        features, is_features = self.networks.features, self.networks.is_features
        inception_score = None if is_real else self.inception_score
        if features is not None:
            x = feature_batch(batch.wholes, features, self.device, self.dtype)
            if self.fid is not None:
                self.fid.update(x, real=is_real)
            if self.kid is not None:
                self.kid.update(x, real=is_real)
            if inception_score is not None and is_features is features:
                inception_score.update(x)
        if inception_score is not None and is_features is not features:
            inception_score.update(feature_batch(batch.wholes, is_features, self.device, self.dtype))
        for c in range(0, len(batch.crops), self.batch_size):
            xc = feature_batch(batch.crops[c : c + self.batch_size], features, self.device, self.dtype)
            if self.fid_c is not None:
                self.fid_c.update(xc, real=is_real)
            if self.kid_c is not None:
                self.kid_c.update(xc, real=is_real)
        if batch.clip_images:
            self.truncated += sum(self.processor.too_long(p) for p in batch.clip_prompts)
            self.clip.update([img.to(self.device) for img in batch.clip_images], batch.clip_prompts)

    def results(self, seed: int, notes: list[str]) -> dict[str, float]:
        """Metric name -> value in :data:`METRIC_NAMES` order; KID subsets and IS splits drawn from ``seed``."""
        results: dict[str, float] = {}
        if self.fid is not None:
            results["fid"] = float(self.fid.compute())
        if self.kid is not None:
            mean, std = seeded(self.kid.compute, seed)
            results["kid_mean"], results["kid_std"] = float(mean), float(std)
        if self.fid_c is not None:
            results["fid_c"] = float(self.fid_c.compute())
        if self.kid_c is not None:
            mean, std = seeded(self.kid_c.compute, seed)
            results["kid_c_mean"], results["kid_c_std"] = float(mean), float(std)
        if self.inception_score is not None:
            mean, std = seeded(self.inception_score.compute, seed)
            results["is_mean"], results["is_std"] = float(mean), float(std)
        if self.clip is not None:
            results["clip_score"] = float(self.clip.compute())
            if self.truncated:
                notes.append(
                    f"clip_score: {self.truncated} prompt(s) longer than {self.processor.max_length} tokens were "
                    "truncated"
                )
        return {name: results[name] for name in METRIC_NAMES if name in results}


def build_metrics(
    options: Options, networks: Networks, images: ImageSets, kid_subsets: tuple[int, int], notes: list[str]
) -> Metrics:
    """The :class:`Metrics` of the chosen groups (CLIP only when some fake image has a prompt); a note when FID
    has fewer images than feature dimensions."""
    features, n_images = networks.features, min(len(images.real), len(images.fake))
    if "fid" in options.groups and features is not None and n_images < features.num_features:
        notes.append(
            f"fid: fewer images ({n_images}) than feature dimensions ({features.num_features}); the "
            "covariances are rank-deficient and FID is biased upwards"
        )
    meters = Metrics(networks, options.device, options.dtype, options.batch_size, *kid_subsets)
    meters.add_image_metrics(options)
    if images.prompted:
        meters.add_clip(options.clip_model)
    return meters
