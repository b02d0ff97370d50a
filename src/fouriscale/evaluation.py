"""Image-quality metrics the way the high-resolution papers report them: FID/KID, crop FID/KID, IS and CLIP score.

```python
from fouriscale.evaluation import evaluate_with_report, format_table, write_json

metrics, report = evaluate_with_report("real/", "fouriscale-2048/", crops=1, crop_size=1024)
print(format_table(metrics))
write_json("scores.json", metrics, report)
```

Every number comes from torchmetrics (``FrechetInceptionDistance``, ``KernelInceptionDistance``,
``InceptionScore``, ``CLIPScore``); this module only decides which pixels go in, in which order, and
records every choice in the report. The protocol (also in :data:`PROTOCOL`):

* **Whole-image metrics (FID, KID, IS).** Each image is resized as a whole to the metric's input size
  (299x299 for Inception; for a custom ``feature_extractor`` its ``input_size`` attribute, an int or
  ``(height, width)``, else 299) with Pillow's antialiased bicubic filter. The aspect ratio is *not*
  preserved: a non-square image is squeezed, exactly as torchmetrics/torch-fidelity do when they resize
  inside the network and as the papers (ScaleCrafter, FouriScale, HiDiffusion ...) evaluate high-resolution
  images. We chose this over centre-crop-then-resize because a centre crop would throw away the borders,
  where the repetition and structure artefacts these methods fight usually show up. Resizing in Pillow
  (rather than letting the network's bilinear resize do it) keeps batches small for 4k images and uses a
  properly antialiased filter; the network then sees an image already at its input size, so its own
  resize is the identity.
* **Crop metrics (FID_c, KID_c).** For each image, ``crops`` squares of ``crop_size`` pixels (the model's
  native size, e.g. 1024 for SDXL, 512 for SD 1.5) are cut at full resolution at positions drawn by
  :func:`crop_boxes`, which depends only on ``(seed, index of the image in its sorted folder, image size)``:
  two methods evaluated with the same seed and image sizes get exactly the same boxes. Each crop is then
  resized to the metric input like a whole image. The real folder's crops are drawn the same way from the
  real images.
* **Colours.** Every image becomes 8-bit RGB with Pillow's ``convert("RGB")`` (RGBA/LA/PA: alpha dropped,
  as other FID tools do; P, L, 1, CMYK, YCbCr: converted); 16-bit grey (``I;16*``, ``I``) is scaled from
  0-65535 to 0-255, ``F`` is clipped to 0-255. The report counts the converted images by mode. EXIF
  orientation is ignored (pixels as stored). A file Pillow cannot open, verify or decode is refused.
* **Inception** (``feature_extractor=None``): the 2048-d pool features of torch-fidelity's Inception-v3
  (``NoTrainInceptionV3``) for FID and KID, its unbiased logits for IS; images go in as uint8.
  Needs the ``torch-fidelity`` package (``pip install 'fouriscale[eval]'``) and downloads the weights on
  first use.
* **Custom feature extractor**: any ``nn.Module`` mapping float images in [0, 1] of shape (N, 3, H, W)
  (dtype ``dtype``, on ``device``; the module is put in eval mode and moved there) to (N, D) features. It
  replaces Inception for FID/KID and, because torchmetrics' ``InceptionScore`` applies a softmax to whatever
  its network returns, IS is then the softmax of the module's outputs treated as logits over D "classes":
  only comparable between runs with the same extractor, not with published IS values.
* **KID**: torchmetrics' defaults (100 subsets, cubic polynomial kernel), subset size
  ``min(1000, n_real, n_fake)`` unless given (for KID_c, counted in crops); subsets are drawn from ``seed``.
  IS uses 10 splits, permuted from ``seed``.
* **CLIP score** (fake images only): torchmetrics' ``CLIPScore`` (100 x cosine similarity, clamped at 0)
  with ``clip_model`` (default ``openai/clip-vit-large-patch14``), CLIP's own preprocessing of the
  full-resolution image. Prompts longer than the text encoder's 77 tokens are truncated by the tokenizer
  (keeping the end-of-text token CLIP pools at; torchmetrics would cut it off). Prompts: the ``prompts``
  argument, else each image's embedded settings (PNG chunk ``fouriscale`` JSON ``prompt``, or the first
  part of an AUTOMATIC1111 ``parameters`` chunk), else ``manifest.jsonl`` beside the images; without
  any prompt the score is skipped with a note.

Inputs are checked before any network is loaded: missing or empty folders, unreadable images, images
smaller than the crop size and too few images all raise a one-line ``ValueError``; a metric whose
network cannot be loaded raises :class:`MetricUnavailableError` (a ``RuntimeError``) saying what to do.
Images are streamed in batches of ``batch_size``, so memory does not grow with the number of images
(KID and IS keep the features, not the images).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import math
import os
import random
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .embedded import embedded_prompt, manifest_prompts
from .errors import one_line

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "IMAGE_SUFFIXES",
    "INCEPTION_SIZE",
    "METRIC_GROUPS",
    "METRIC_NAMES",
    "PROTOCOL",
    "MetricUnavailableError",
    "check_inception_available",
    "crop_boxes",
    "default_kid_subset_size",
    "evaluate",
    "evaluate_with_report",
    "find_images",
    "format_table",
    "metric_input_size",
    "prompt_from_info",
    "resize_image",
    "to_rgb",
    "write_json",
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

_INCEPTION_HELP = (
    "pip install 'fouriscale[eval]' (torch-fidelity) and run once with network access to cache the Inception "
    "weights, or pass feature_extractor=... (--feature-extractor) to use another network"
)


class MetricUnavailableError(RuntimeError):
    """A metric's network (Inception, CLIP) or package cannot be loaded here; the message says what to do."""


# ----------------------------------------------------------------------------------------------------------
# small pure helpers
# ----------------------------------------------------------------------------------------------------------


def find_images(source: str | os.PathLike | Sequence[str | os.PathLike], what: str = "images") -> list[Path]:
    """The image files of ``source``: a folder (non-recursive, suffixes :data:`IMAGE_SUFFIXES`, any case,
    sorted by name) or a list of paths (kept in the given order). ``ValueError`` if the folder is missing
    or holds no image, or a listed file is missing."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.exists():
            raise ValueError(f"{what} folder {str(folder)!r} does not exist")
        if not folder.is_dir():
            raise ValueError(f"{what} {str(folder)!r} is not a folder; give a folder of images")
        files = sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=lambda p: p.name
        )
        if not files:
            raise ValueError(f"{what} folder {str(folder)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
        return files
    files = [Path(p) for p in source]
    if not files:
        raise ValueError(f"{what}: the list of images is empty")
    for path in files:
        if not path.is_file():
            raise ValueError(f"{what}: {str(path)!r} does not exist or is not a file")
    return files


def crop_boxes(
    width: int, height: int, crop_size: int, n: int, seed: int, index: int
) -> list[tuple[int, int, int, int]]:
    """``n`` square boxes ``(left, top, right, bottom)`` of ``crop_size`` pixels inside a ``width`` x ``height``
    image, at uniformly drawn integer positions.

    Deterministic from ``(seed, index, width, height)`` only (not from pixels, folder or platform: Python's
    string-seeded ``random.Random``), so every method evaluated with the same seed and image sizes gets the
    same boxes for its ``index``-th image. ``ValueError`` if the crop does not fit.
    """
    if n < 0:
        raise ValueError(f"crops {n}: must be 0 or more")
    if crop_size <= 0:
        raise ValueError(f"crop size {crop_size}: must be a positive number of pixels")
    if crop_size > width or crop_size > height:
        raise ValueError(f"crop size {crop_size} does not fit in a {width}x{height} image")
    rng = random.Random(f"fouriscale-crops/{int(seed)}/{int(index)}/{int(width)}x{int(height)}")
    boxes = []
    for _ in range(n):
        left = rng.randint(0, width - crop_size)
        top = rng.randint(0, height - crop_size)
        boxes.append((left, top, left + crop_size, top + crop_size))
    return boxes


def resize_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` resized to ``size = (height, width)`` with Pillow's antialiased bicubic filter, aspect ratio
    not preserved; returned unchanged if it already has that size."""
    height, width = size
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of ``image``: ``convert("RGB")`` (alpha dropped) for every mode, except 16-bit grey
    (``I;16*`` and ``I``) scaled from 0-65535 to 0-255 and ``F`` clipped to 0-255 first."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float64)
        grey = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey, "L")
    elif mode == "F":
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey, "L")
    return image.convert("RGB")


def metric_input_size(feature_extractor: torch.nn.Module | None) -> tuple[int, int]:
    """``(height, width)`` the images are resized to: 299x299 for Inception (``None``), else the module's
    ``input_size`` attribute (int or ``(height, width)``), else 299x299."""
    size = INCEPTION_SIZE if feature_extractor is None else getattr(feature_extractor, "input_size", INCEPTION_SIZE)
    if isinstance(size, int):
        size = (size, size)
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"feature_extractor.input_size {size!r}: expected an int or (height, width)") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"feature_extractor.input_size {size!r}: must be positive")
    return height, width


def default_kid_subset_size(n_real: int, n_fake: int, cap: int = KID_MAX_SUBSET) -> int:
    """KID subset size: ``min(cap, n_real, n_fake)`` (torchmetrics needs it <= both sample counts)."""
    return max(1, min(cap, n_real, n_fake))


def prompt_from_info(info: Mapping) -> str | None:
    """The prompt embedded in an image's text metadata (Pillow's ``image.info``): the ``prompt`` of the
    ``fouriscale`` JSON chunk, else the prompt part of an AUTOMATIC1111 ``parameters`` chunk, else ``None``
    (:func:`fouriscale.embedded.embedded_prompt`)."""
    found = embedded_prompt(info)
    return found.prompt if found is not None else None


# ----------------------------------------------------------------------------------------------------------
# checking the inputs (header reads only)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Record:
    path: Path
    index: int
    width: int
    height: int
    mode: str
    prompt: str | None = None
    prompt_source: str | None = None


def _scan(files: list[Path], what: str, crop_size: int | None, want_info: bool) -> tuple[list[_Record], list[dict]]:
    """Open and verify every file (no decoding of pixels); sizes checked against the crop size."""
    records, infos = [], []
    for index, path in enumerate(files):
        try:
            with Image.open(path) as image:
                width, height = image.size
                mode = image.mode
                info = dict(image.info) if want_info else {}
                image.verify()
        except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
            raise ValueError(
                f"{what} image {str(path)!r} cannot be read ({one_line(exc, with_type=True)}); replace or remove it"
            ) from None
        if crop_size is not None and (width < crop_size or height < crop_size):
            raise ValueError(
                f"{what} image {str(path)!r} is {width}x{height}, smaller than the {crop_size}x{crop_size} crop; "
                "use a smaller crop size or remove the image"
            )
        records.append(_Record(path, index, width, height, mode))
        infos.append(info)
    return records, infos


def _attach_prompts(records: list[_Record], infos: list[dict], prompts) -> None:
    """Fill ``record.prompt`` from ``prompts`` (dict by file name/path, or callable(path)), else the embedded
    settings, else ``manifest.jsonl`` in the image's folder."""
    manifests: dict[Path, dict[str, str]] = {}
    for record, info in zip(records, infos):
        prompt, source = None, None
        if prompts is not None:
            if callable(prompts):
                prompt = prompts(record.path)
            else:
                prompt = prompts.get(record.path.name, prompts.get(str(record.path)))
            source = "given"
        else:
            prompt = prompt_from_info(info)
            source = "embedded"
            if not prompt:
                folder = record.path.parent
                if folder not in manifests:
                    manifests[folder] = manifest_prompts(folder)
                prompt = manifests[folder].get(record.path.name)
                source = "manifest"
        if isinstance(prompt, str) and prompt.strip():
            record.prompt, record.prompt_source = prompt, source


# ----------------------------------------------------------------------------------------------------------
# networks
# ----------------------------------------------------------------------------------------------------------


class _SharedFeatures(torch.nn.Module):
    """Feature network shared by several torchmetrics objects: the output for the last input tensor is
    reused (FID and KID, and IS with a custom extractor, see the same batch), returned as float32 (N, D)."""

    def __init__(self, net: torch.nn.Module, num_features: int, uint8_input: bool) -> None:
        super().__init__()
        self.net = net
        self.num_features = int(num_features)
        self.uint8_input = uint8_input
        self._last_input: torch.Tensor | None = None
        self._last_output: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self._last_input is images and self._last_output is not None:
            return self._last_output
        out = self.net(images)
        out = out.reshape(images.shape[0], -1).float()
        self._last_input, self._last_output = images, out
        return out

    def clear(self) -> None:
        self._last_input = self._last_output = None


def check_inception_available() -> None:
    """Raise :class:`MetricUnavailableError` (one line saying what to do) when FID's standard Inception network
    cannot be used here (torch-fidelity missing); front ends call it before rendering anything."""
    from torchmetrics.image import fid as tm_fid

    if not tm_fid._TORCH_FIDELITY_AVAILABLE:
        raise MetricUnavailableError(
            f"FID/KID/IS need the Inception network but the torch-fidelity package is not installed: {_INCEPTION_HELP}"
        )


def _inception(feature: str, device: str) -> _SharedFeatures:
    """torch-fidelity's Inception-v3 as torchmetrics builds it (``feature``: "2048" or "logits_unbiased")."""
    from torchmetrics.image import fid as tm_fid

    try:
        net = tm_fid.NoTrainInceptionV3(name="inception-v3-compat", features_list=[feature])
    except Exception as exc:  # noqa: BLE001 - missing package, no network, corrupt cache: all the same advice
        raise MetricUnavailableError(
            f"the Inception weights could not be loaded ({one_line(exc, with_type=True)}): {_INCEPTION_HELP}"
        ) from None
    width = INCEPTION_FEATURES if feature == "2048" else 1008
    return _SharedFeatures(net, width, uint8_input=True).to(device)


def _custom_features(
    module: torch.nn.Module, size: tuple[int, int], device: str, dtype: torch.dtype
) -> _SharedFeatures:
    module = module.eval().to(device=device, dtype=dtype)
    num = getattr(module, "num_features", None)
    if isinstance(num, torch.Tensor):
        num = int(num.item())
    if not isinstance(num, int):
        with torch.no_grad():
            out = module(torch.zeros(1, 3, *size, device=device, dtype=dtype))
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"feature_extractor must map (N, 3, H, W) images to (N, D) features; got {shape} for N=1")
        num = out.shape[1]
    return _SharedFeatures(module, num, uint8_input=False)


class _ClipModelAdapter(torch.nn.Module):
    """CLIPModel whose ``get_*_features`` return the projected embeddings as tensors: transformers 5 returns
    a ``BaseModelOutputWithPooling`` there, which torchmetrics 1.9's ``CLIPScore`` cannot normalise."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return out
        pooled = getattr(out, "pooler_output", None)
        if isinstance(pooled, torch.Tensor):
            return pooled
        return out[0]

    def get_image_features(self, pixel_values: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(pixel_values, *args, **kwargs))

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw
    ) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kw))


class _TruncatingProcessor:
    """CLIP processor that truncates prompts to the text encoder's length with the tokenizer (so the
    end-of-text token CLIP pools at survives; torchmetrics would slice it off)."""

    def __init__(self, processor, max_length: int) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = int(max_length)

    def __call__(self, *args, **kwargs):
        if kwargs.get("text") is not None:
            kwargs.setdefault("truncation", True)
            kwargs.setdefault("max_length", self.max_length)
        return self.processor(*args, **kwargs)

    def too_long(self, prompt: str) -> bool:
        return len(self.tokenizer(prompt)["input_ids"]) > self.max_length


def _load_clip(name: str):
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(name)
        processor = CLIPProcessor.from_pretrained(name)
    except Exception as exc:  # noqa: BLE001 - missing cache, no network, bad folder
        reason = one_line(exc, with_type=True)
        raise MetricUnavailableError(
            f"CLIP model {name!r} could not be loaded ({reason}): run once with network access to cache it, "
            "pass a local CLIP folder (clip_model= / --clip-model), or leave CLIP score out (metrics= / --metrics)"
        ) from None
    model.eval()
    max_length = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", 77)
    return _ClipModelAdapter(model), _TruncatingProcessor(processor, max_length)


# ----------------------------------------------------------------------------------------------------------
# the evaluation
# ----------------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str | None]:
    import PIL
    import torchmetrics

    from . import __version__ as fouriscale_version

    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "fouriscale": fouriscale_version,
        "torch": torch.__version__,
        "torchmetrics": torchmetrics.__version__,
        "torch-fidelity": dist("torch-fidelity"),
        "transformers": dist("transformers"),
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"list of {len(source)} files"


def _groups(metrics: Iterable[str] | None) -> tuple[set[str], bool]:
    if metrics is None:
        return set(METRIC_GROUPS), False
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(",", " ").split()]
    chosen = {m.strip().lower() for m in metrics}
    unknown = sorted(chosen - set(METRIC_GROUPS))
    if unknown or not chosen:
        raise ValueError(f"metrics {', '.join(unknown) or '(none)'}: choose from {', '.join(METRIC_GROUPS)}")
    return chosen, True


def _load_rgb(record: _Record, what: str) -> Image.Image:
    try:
        with Image.open(record.path) as image:
            image.load()
            rgb = to_rgb(image)
            if rgb is image:
                rgb = image.copy()
    except Exception as exc:  # noqa: BLE001
        reason = one_line(exc, with_type=True)
        raise ValueError(
            f"{what} image {str(record.path)!r} cannot be decoded ({reason}); replace or remove it"
        ) from None
    if rgb.size != (record.width, record.height):
        raise ValueError(f"{what} image {str(record.path)!r} changed while being evaluated; rerun")
    return rgb


def _batch(images: list[Image.Image], features: _SharedFeatures, device: str, dtype: torch.dtype) -> torch.Tensor:
    array = np.stack([np.asarray(image, dtype=np.uint8) for image in images])
    batch = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous().to(device)
    if features.uint8_input:
        return batch
    return batch.to(dtype) / 255.0


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
    groups, explicit = _groups(metrics)
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

    use_crops = crops > 0
    real_files = find_images(real, "real")
    fake_files = find_images(fake, "fake")
    for what, files in (("real", real_files), ("fake", fake_files)):
        if len(files) < MIN_IMAGES:
            raise ValueError(
                f"{what} has {len(files)} image; FID and KID need at least {MIN_IMAGES} images in each set "
                "(and many more for meaningful numbers)"
            )
    want_clip = "clip" in groups
    real_records, _ = _scan(real_files, "real", crop_size if use_crops else None, want_info=False)
    fake_records, fake_infos = _scan(fake_files, "fake", crop_size if use_crops else None, want_info=want_clip)

    notes: list[str] = []
    clip_records: list[_Record] = []
    if want_clip:
        _attach_prompts(fake_records, fake_infos, prompts)
        clip_records = [r for r in fake_records if r.prompt]
        if not clip_records:
            if explicit:
                raise ValueError(
                    "CLIP score asked for but no fake image has a prompt (embedded settings, manifest.jsonl or "
                    "prompts=); give the prompts or leave clip out of the metrics"
                )
            notes.append("clip_score skipped: no prompts (none embedded in the images, no manifest.jsonl, none given)")
            want_clip = False
        elif len(clip_records) < len(fake_records):
            notes.append(
                f"clip_score over {len(clip_records)} of {len(fake_records)} fake images "
                f"({len(fake_records) - len(clip_records)} have no prompt)"
            )

    want_fid, want_kid, want_is = "fid" in groups, "kid" in groups, "is" in groups
    need_features = want_fid or want_kid or want_is
    n_real, n_fake = len(real_records), len(fake_records)
    kid_subset = kid_subset_size or default_kid_subset_size(n_real, n_fake)
    kid_c_subset = kid_subset_size or default_kid_subset_size(n_real * crops, n_fake * crops)
    if want_kid:
        if kid_subset > min(n_real, n_fake):
            raise ValueError(f"KID subset size {kid_subset} exceeds the image count ({n_real} real, {n_fake} fake)")
        if use_crops and kid_c_subset > min(n_real, n_fake) * crops:
            raise ValueError(
                f"KID subset size {kid_c_subset} exceeds the crop count ({n_real * crops} real, {n_fake * crops} fake)"
            )
        if kid_subset < KID_MAX_SUBSET:
            notes.append(
                f"kid subset size {kid_subset} (< {KID_MAX_SUBSET}: fewer images); KID is comparable only between "
                "runs with the same subset size"
            )

    # ---- networks (the first heavy step; failures are quick and one line) ----
    size = metric_input_size(feature_extractor)
    features = is_features = None
    if need_features:
        if feature_extractor is None:
            check_inception_available()
            if want_fid or want_kid:
                features = _inception("2048", device)
            if want_is:
                is_features = _inception("logits_unbiased", device)
            extractor_name = INCEPTION_NAME
        else:
            features = _custom_features(feature_extractor, size, device, dtype)
            is_features = features if want_is else None
            extractor_name = type(feature_extractor).__name__
            if want_is:
                notes.append(
                    f"is_*: softmax of the custom feature extractor's {features.num_features} outputs treated as "
                    "logits; not comparable with Inception IS"
                )
    else:
        extractor_name = None
    feature_dim = (features if features is not None else is_features).num_features if need_features else None
    if want_fid and features is not None and min(n_real, n_fake) < features.num_features:
        notes.append(
            f"fid: fewer images ({min(n_real, n_fake)}) than feature dimensions ({features.num_features}); the "
            "covariances are rank-deficient and FID is biased upwards"
        )

    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        normalize = features is not None and not features.uint8_input

        def make_fid():
            return FrechetInceptionDistance(feature=features, normalize=normalize).to(device)

        def make_kid(subset: int):
            return KernelInceptionDistance(
                feature=features, subsets=KID_SUBSETS, subset_size=subset, normalize=normalize
            ).to(device)

        fid = make_fid() if want_fid else None
        kid = make_kid(kid_subset) if want_kid else None
        fid_c = make_fid() if want_fid and use_crops else None
        kid_c = make_kid(kid_c_subset) if want_kid and use_crops else None
        # normalize=False: torchmetrics would turn floats into bytes even for a custom network
        inception_score = (
            InceptionScore(feature=is_features, splits=IS_SPLITS, normalize=False).to(device) if want_is else None
        )

    clip = processor = None
    truncated = 0
    if want_clip:
        from torchmetrics.multimodal.clip_score import CLIPScore

        model, processor = _load_clip(clip_model)
        clip = CLIPScore(model_name_or_path=lambda: (model, processor)).to(device)

    # ---- streaming ----
    from tqdm.auto import tqdm

    bar = tqdm(total=n_real + n_fake, desc="evaluating", unit="img", disable=not progress)
    try:
        with torch.no_grad():
            for is_real, records in ((True, real_records), (False, fake_records)):
                what = "real" if is_real else "fake"
                for start in range(0, len(records), batch_size):
                    chunk = records[start : start + batch_size]
                    wholes, crops_list, clip_images, clip_prompts = [], [], [], []
                    for record in chunk:
                        rgb = _load_rgb(record, what)
                        if need_features:
                            wholes.append(resize_image(rgb, size))
                        if use_crops and features is not None:
                            for box in crop_boxes(record.width, record.height, crop_size, crops, seed, record.index):
                                crops_list.append(resize_image(rgb.crop(box), size))
                        if clip is not None and not is_real and record.prompt:
                            clip_images.append(
                                torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
                            )
                            clip_prompts.append(record.prompt)
                    if features is not None:
                        x = _batch(wholes, features, device, dtype)
                        if fid is not None:
                            fid.update(x, real=is_real)
                        if kid is not None:
                            kid.update(x, real=is_real)
                        if inception_score is not None and not is_real and is_features is features:
                            inception_score.update(x)
                    if inception_score is not None and not is_real and is_features is not features:
                        inception_score.update(_batch(wholes, is_features, device, dtype))
                    for c in range(0, len(crops_list), batch_size):
                        xc = _batch(crops_list[c : c + batch_size], features, device, dtype)
                        if fid_c is not None:
                            fid_c.update(xc, real=is_real)
                        if kid_c is not None:
                            kid_c.update(xc, real=is_real)
                    if clip_images:
                        truncated += sum(processor.too_long(p) for p in clip_prompts)
                        clip.update([img.to(device) for img in clip_images], clip_prompts)
                    bar.update(len(chunk))
    finally:
        bar.close()
        for shared in (features, is_features):
            if shared is not None:
                shared.clear()

    # ---- results ----
    results: dict[str, float] = {}

    def seeded(compute):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return compute()

    if fid is not None:
        results["fid"] = float(fid.compute())
    if kid is not None:
        mean, std = seeded(kid.compute)
        results["kid_mean"], results["kid_std"] = float(mean), float(std)
    if fid_c is not None:
        results["fid_c"] = float(fid_c.compute())
    if kid_c is not None:
        mean, std = seeded(kid_c.compute)
        results["kid_c_mean"], results["kid_c_std"] = float(mean), float(std)
    if inception_score is not None:
        mean, std = seeded(inception_score.compute)
        results["is_mean"], results["is_std"] = float(mean), float(std)
    if clip is not None:
        results["clip_score"] = float(clip.compute())
        if truncated:
            notes.append(f"clip_score: {truncated} prompt(s) longer than {processor.max_length} tokens were truncated")

    converted = Counter(r.mode for r in real_records + fake_records if r.mode != "RGB")
    report = {
        "protocol": PROTOCOL,
        "real": _describe(real),
        "fake": _describe(fake),
        "images_real": n_real,
        "images_fake": n_fake,
        "metrics": [name for name in METRIC_NAMES if name in results],
        "resize": "whole image, Pillow bicubic (antialiased), aspect ratio not preserved",
        "metric_input_size": list(size) if need_features else None,
        "crops_per_image": crops,
        "crop_size": crop_size if use_crops else None,
        "crop_rule": "seeded uniform positions from (seed, image index, image size), full resolution, then resized"
        if use_crops
        else None,
        "crops_real": n_real * crops if use_crops else 0,
        "crops_fake": n_fake * crops if use_crops else 0,
        "seed": seed,
        "feature_extractor": extractor_name,
        "feature_dim": feature_dim,
        "kid_subset_size": kid_subset if want_kid else None,
        "kid_c_subset_size": kid_c_subset if want_kid and use_crops else None,
        "kid_subsets": KID_SUBSETS if want_kid else None,
        "is_splits": IS_SPLITS if want_is else None,
        "clip_model": clip_model if clip is not None else None,
        "clip_images": len(clip_records) if clip is not None else 0,
        "prompt_sources": dict(Counter(r.prompt_source for r in clip_records)) if clip is not None else {},
        "converted_to_rgb": dict(converted),
        "batch_size": batch_size,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "notes": notes,
        "versions": _versions(),
    }
    ordered = {name: results[name] for name in METRIC_NAMES if name in results}
    return ordered, report


def evaluate(real, fake, **options) -> dict[str, float]:
    """:func:`evaluate_with_report` without the report: metric name -> value.

    Same keyword arguments and defaults: ``crops=0, crop_size=None, seed=0, feature_extractor=None, prompts=None,
    clip_model="openai/clip-vit-large-patch14", batch_size=16, device="cpu", dtype=torch.float32,
    kid_subset_size=None, progress=False, metrics=None``.
    """
    return evaluate_with_report(real, fake, **options)[0]


evaluate.__signature__ = inspect.signature(evaluate_with_report).replace(return_annotation="dict[str, float]")


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


def _json_safe(value, path: str, notes: list[str]):
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
        return {str(k): _json_safe(v, f"{path}.{k}" if path else str(k), notes) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{path}[{i}]", notes) for i, v in enumerate(value)]
    return str(value)


def write_json(path: str | os.PathLike, metrics: Mapping[str, float], report: Mapping) -> Path:
    """Write ``{"metrics": ..., "report": ...}`` to ``path`` atomically (temporary file in the same folder,
    then ``os.replace``). Non-finite numbers become ``null`` with a note in ``report.notes``; strict JSON."""
    path = Path(path)
    notes = list(report.get("notes", []))
    extra: list[str] = []
    clean_metrics = _json_safe(dict(metrics), "", extra)
    clean_report = _json_safe({k: v for k, v in report.items() if k != "notes"}, "", extra)
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
