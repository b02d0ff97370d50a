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

from .images import crop_boxes, find_images, resize_image, to_rgb
from .metrics import default_kid_subset_size
from .networks import MetricUnavailableError, check_inception_available, metric_input_size
from .prompts import prompt_from_info
from .protocol import (
    DEFAULT_CLIP_MODEL,
    IMAGE_SUFFIXES,
    INCEPTION_SIZE,
    METRIC_GROUPS,
    METRIC_NAMES,
    PROTOCOL,
)
from .report import format_table, write_json
from .run import evaluate, evaluate_with_report

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
