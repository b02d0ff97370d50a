"""The networks: Inception via torch-fidelity or a custom feature extractor (shared by FID, KID and IS),
and CLIP with a prompt-truncating processor; one-line errors saying what to do when one cannot be loaded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import one_line
from .options import Options
from .protocol import INCEPTION_FEATURES, INCEPTION_HELP, INCEPTION_NAME, INCEPTION_SIZE

__all__ = [
    "ClipModelAdapter",
    "MetricUnavailableError",
    "Networks",
    "SharedFeatures",
    "TruncatingProcessor",
    "check_inception_available",
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


def check_inception_available() -> None:
    """Raise :class:`MetricUnavailableError` (one line saying what to do) when FID's standard Inception network
    cannot be used here (torch-fidelity missing); front ends call it before rendering anything."""
    from torchmetrics.image import fid as tm_fid

    if not tm_fid._TORCH_FIDELITY_AVAILABLE:
        raise MetricUnavailableError(
            f"FID/KID/IS need the Inception network but the torch-fidelity package is not installed: {INCEPTION_HELP}"
        )


def inception_network(feature: str, device: str) -> SharedFeatures:
    """torch-fidelity's Inception-v3 as torchmetrics builds it (``feature``: "2048" or "logits_unbiased")."""
    from torchmetrics.image import fid as tm_fid

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


def load_clip(name: str) -> tuple[ClipModelAdapter, TruncatingProcessor]:
    """The CLIP model (eval mode) and its truncating processor from a hub id or local folder;
    :class:`MetricUnavailableError` if it cannot be loaded."""
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
    return ClipModelAdapter(model), TruncatingProcessor(processor, max_length)
