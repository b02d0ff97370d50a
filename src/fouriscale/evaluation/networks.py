"""The networks: Inception via torch-fidelity or a custom feature extractor (shared by FID, KID and IS),
and CLIP with a prompt-truncating processor; one-line errors saying what to do when one cannot be loaded."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import try_to_load_from_cache
from PIL import Image

from ..errors import one_line
from ..hub import hub_unreachable, offline, unreachable
from .options import Options
from .protocol import (
    INCEPTION_FEATURES,
    INCEPTION_HELP,
    INCEPTION_NAME,
    INCEPTION_SIZE,
    INCEPTION_WEIGHTS_URL,
    TORCHVISION_HELP,
)

__all__ = [
    "ClipModelAdapter",
    "MetricUnavailableError",
    "Networks",
    "SharedFeatures",
    "TruncatingProcessor",
    "check_clip_available",
    "check_inception_available",
    "check_networks",
    "image_metric_classes",
    "inception_weights_path",
    "custom_network",
    "feature_batch",
    "inception_network",
    "load_clip",
    "load_networks",
    "metric_input_size",
]


class MetricUnavailableError(RuntimeError):
    """A metric's network (Inception, CLIP) or package cannot be loaded here; the message says what to do."""


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


# ----------------------------------------------------------------------------------------------------------
# feature networks (FID, KID, IS)
# ----------------------------------------------------------------------------------------------------------


class SharedFeatures(torch.nn.Module):
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


def _fid_module():
    """torchmetrics' FID module; a torchvision built for another torch (it breaks torch-fidelity's import, and so
    torchmetrics' image metrics) is a :class:`MetricUnavailableError`."""
    try:
        from torchmetrics.image import fid as tm_fid
    except Exception as exc:  # noqa: BLE001 - e.g. RuntimeError: operator torchvision::nms does not exist
        raise MetricUnavailableError(
            f"torchmetrics' image metrics do not import here ({one_line(exc, 160, with_type=True)}): {TORCHVISION_HELP}"
        ) from None
    return tm_fid


def image_metric_classes() -> tuple[type, type, type]:
    """``(FrechetInceptionDistance, KernelInceptionDistance, InceptionScore)`` from torchmetrics (see
    :func:`_fid_module` for what can go wrong)."""
    tm_fid = _fid_module()
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    return tm_fid.FrechetInceptionDistance, KernelInceptionDistance, InceptionScore


def inception_weights_path() -> Path:
    """Where torch-fidelity keeps the Inception weights once downloaded (torch's hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlsplit(INCEPTION_WEIGHTS_URL).path).name


def check_inception_available() -> None:
    """Raise :class:`MetricUnavailableError` (one line saying what to do) when FID's standard Inception network
    cannot be used here: torch-fidelity missing or not importable, or its weights neither cached nor downloadable
    now (offline, or their host unreachable: found at once, not after a download's retries). Front ends call it
    before rendering or reading any image."""
    if not _fid_module()._TORCH_FIDELITY_AVAILABLE:
        raise MetricUnavailableError(
            f"FID/KID/IS need the Inception network but the torch-fidelity package is not installed: {INCEPTION_HELP}"
        )
    path = inception_weights_path()
    if path.is_file():
        return
    problem = "downloads are off (HF_HUB_OFFLINE)" if offline() else unreachable(INCEPTION_WEIGHTS_URL)
    if problem:
        raise MetricUnavailableError(f"the Inception weights are not cached ({path}) and {problem}: {INCEPTION_HELP}")


def inception_network(feature: str, device: str) -> SharedFeatures:
    """torch-fidelity's Inception-v3 as torchmetrics builds it (``feature``: "2048" or "logits_unbiased")."""
    tm_fid = _fid_module()
    try:
        net = tm_fid.NoTrainInceptionV3(name="inception-v3-compat", features_list=[feature])
    except Exception as exc:  # noqa: BLE001 - missing package, no network, corrupt cache: all the same advice
        raise MetricUnavailableError(
            f"the Inception weights could not be loaded ({one_line(exc, with_type=True)}): {INCEPTION_HELP}"
        ) from None
    width = INCEPTION_FEATURES if feature == "2048" else 1008
    return SharedFeatures(net, width, uint8_input=True).to(device)


def custom_network(module: torch.nn.Module, size: tuple[int, int], device: str, dtype: torch.dtype) -> SharedFeatures:
    """A custom feature extractor in eval mode on ``device``/``dtype``; its feature count from its ``num_features``
    attribute, else from one blank image (``ValueError`` unless it gives (1, D))."""
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
    return SharedFeatures(module, num, uint8_input=False)


@dataclass
class Networks:
    """The feature networks of one evaluation: ``features`` for FID/KID (and IS with a custom extractor),
    ``is_features`` for IS, the input ``size`` and the extractor's ``name`` (``None`` when none is needed)."""

    size: tuple[int, int]
    features: SharedFeatures | None = None
    is_features: SharedFeatures | None = None
    name: str | None = None

    @property
    def feature_dim(self) -> int | None:
        """Width of the FID/KID features (else of the IS logits); ``None`` without a network."""
        net = self.features if self.features is not None else self.is_features
        return net.num_features if net is not None else None

    def clear(self) -> None:
        """Drop the cached last outputs."""
        for shared in (self.features, self.is_features):
            if shared is not None:
                shared.clear()


def check_networks(options: Options, clip: bool) -> None:
    """Every network the evaluation will load can be had now (:func:`check_inception_available` unless a custom
    extractor replaces Inception; :func:`check_clip_available` when ``clip``); before any network is loaded."""
    if options.need_features and options.feature_extractor is None:
        check_inception_available()
    if clip:
        check_clip_available(options.clip_model)


def load_networks(options: Options, notes: list[str]) -> Networks:
    """The networks FID, KID and IS need (none for CLIP alone): Inception (checked to be available first) or
    ``options.feature_extractor``; with a custom extractor IS reuses its outputs as logits, with a note."""
    networks = Networks(metric_input_size(options.feature_extractor))
    if not options.need_features:
        return networks
    want_fid_kid, want_is = bool(options.groups & {"fid", "kid"}), "is" in options.groups
    extractor = options.feature_extractor
    if extractor is None:
        check_inception_available()
        if want_fid_kid:
            networks.features = inception_network("2048", options.device)
        if want_is:
            networks.is_features = inception_network("logits_unbiased", options.device)
        networks.name = INCEPTION_NAME
    else:
        networks.features = custom_network(extractor, networks.size, options.device, options.dtype)
        networks.is_features = networks.features if want_is else None
        networks.name = type(extractor).__name__
        if want_is:
            notes.append(
                f"is_*: softmax of the custom feature extractor's {networks.features.num_features} outputs treated "
                "as logits; not comparable with Inception IS"
            )
    return networks


def feature_batch(images: list[Image.Image], features: SharedFeatures, device: str, dtype: torch.dtype) -> torch.Tensor:
    """``images`` as one (N, 3, H, W) tensor on ``device``: uint8 for Inception, ``dtype`` in [0, 1] otherwise."""
    array = np.stack([np.asarray(image, dtype=np.uint8) for image in images])
    batch = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous().to(device)
    if features.uint8_input:
        return batch
    return batch.to(dtype) / 255.0


# ----------------------------------------------------------------------------------------------------------
# CLIP
# ----------------------------------------------------------------------------------------------------------


class ClipModelAdapter(torch.nn.Module):
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


class TruncatingProcessor:
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


_CLIP_HELP = (
    "run once with network access to cache it, pass a local CLIP folder (clip_model= / --clip-model), or leave CLIP "
    "score out (metrics= / --metrics)"
)


def _clip_cached(name: str) -> bool:
    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid hub id
        return False


def check_clip_available(name: str) -> None:
    """Raise :class:`MetricUnavailableError` (one line) when the CLIP model cannot be had now: a folder that is not
    there, or a hub id that is not cached while the Hub is offline or unreachable (found at once, no retries)."""
    path = Path(name).expanduser()
    if path.is_dir() or _clip_cached(name):
        return
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise MetricUnavailableError(f"CLIP model {name!r}: no such folder; {_CLIP_HELP}")
    problem = "the Hub is offline (HF_HUB_OFFLINE)" if offline() else hub_unreachable()
    if problem:
        raise MetricUnavailableError(
            f"CLIP model {name!r} is not in the local Hugging Face cache and {problem}: {_CLIP_HELP}"
        )


def _clip_from(name: str, **kwargs):
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(name, **kwargs), CLIPProcessor.from_pretrained(name, **kwargs)


def load_clip(name: str) -> tuple[ClipModelAdapter, TruncatingProcessor]:
    """The CLIP model (eval mode) and its truncating processor from a hub id or local folder: the cache or the folder
    first, the Hub only when it can be reached (:func:`check_clip_available`); :class:`MetricUnavailableError` if it
    cannot be loaded."""
    try:
        try:
            model, processor = _clip_from(name, local_files_only=True)
        except OSError:  # not cached (or not complete in the cache)
            check_clip_available(name)
            model, processor = _clip_from(name)
    except MetricUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - missing cache, no network, bad folder
        reason = one_line(exc, with_type=True)
        raise MetricUnavailableError(f"CLIP model {name!r} could not be loaded ({reason}): {_CLIP_HELP}") from None
    model.eval()
    max_length = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", 77)
    return ClipModelAdapter(model), TruncatingProcessor(processor, max_length)
