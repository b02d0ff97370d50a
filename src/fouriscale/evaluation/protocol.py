"""The fixed settings: image suffixes, metric names and groups, Inception, KID and IS constants, the protocol."""

from __future__ import annotations

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "HIGHER_IS_BETTER",
    "IMAGE_SUFFIXES",
    "INCEPTION_FEATURES",
    "INCEPTION_HELP",
    "INCEPTION_NAME",
    "INCEPTION_SIZE",
    "IS_SPLITS",
    "KID_MAX_SUBSET",
    "KID_SUBSETS",
    "LOWER_IS_BETTER",
    "METRIC_GROUPS",
    "METRIC_NAMES",
    "MIN_IMAGES",
    "PROTOCOL",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
INCEPTION_SIZE = 299
INCEPTION_NAME = "inception-v3 (torch-fidelity)"
INCEPTION_FEATURES = 2048
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
KID_MAX_SUBSET = 1000
KID_SUBSETS = 100
IS_SPLITS = 10
MIN_IMAGES = 2
METRIC_GROUPS = ("fid", "kid", "is", "clip")
METRIC_NAMES = ("fid", "kid_mean", "kid_std", "fid_c", "kid_c_mean", "kid_c_std", "is_mean", "is_std", "clip_score")
LOWER_IS_BETTER = {"fid", "kid_mean", "fid_c", "kid_c_mean"}
HIGHER_IS_BETTER = {"is_mean", "clip_score"}

PROTOCOL = (
    "FID/KID/IS: each whole image resized to the metric input size (Inception 299x299) with Pillow's antialiased "
    "bicubic filter, aspect ratio not preserved; FID_c/KID_c: per image `crops` squares of `crop_size` px at "
    "seeded positions (seed, image index, image size), cut at full resolution then resized like whole images; "
    "images converted to 8-bit RGB (alpha dropped); KID: 100 subsets of min(1000, n_real, n_fake), cubic kernel; "
    "IS on the fake images, 10 splits; CLIP score on the fake images with their prompts, truncated to 77 tokens; "
    "metric values from torchmetrics."
)

INCEPTION_HELP = (
    "pip install 'fouriscale[eval]' (torch-fidelity) and run once with network access to cache the Inception "
    "weights, or pass feature_extractor=... (--feature-extractor) to use another network"
)
