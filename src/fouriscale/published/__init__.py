"""The published configs of the models the paper used, shipped as package data (layer 2: JSON only, no weights).

``stabilityai/stable-diffusion-xl-base-1.0`` and friends are known here without a download: the pipeline's
``model_index.json`` and each component's config (UNet, VAE, text encoders, safety checker, scheduler) as published
on the Hugging Face Hub, one folder per model in diffusers' layout. Tokenizers are left out (a plan or a memory
estimate needs no text). :func:`fouriscale.diffusers.meta.meta_pipeline` builds a pipeline from them with every
component on the meta device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

__all__ = ["PublishedModel", "PUBLISHED_MODELS", "published_model", "model_index", "component_config"]


@dataclass(frozen=True)
class PublishedModel:
    """A model whose configs ship with the package."""

    id: str  # the hub id, e.g. "stabilityai/stable-diffusion-xl-base-1.0"
    folder: str  # its folder under fouriscale/published
    family: str  # "sd1", "sd2" or "sdxl"
    label: str  # e.g. "SDXL base 1.0"
    aliases: tuple[str, ...] = ()  # other hub ids of the same files (mirrors)


#: The paper's models by hub id (SD 1.5 with its mirrors, SD 2.1 768 and base, SDXL base 1.0).
PUBLISHED_MODELS: dict[str, PublishedModel] = {
    model.id: model
    for model in (
        PublishedModel(
            "runwayml/stable-diffusion-v1-5",
            "sd15",
            "sd1",
            "SD 1.5",
            ("stable-diffusion-v1-5/stable-diffusion-v1-5", "sd-legacy/stable-diffusion-v1-5"),
        ),
        PublishedModel("stabilityai/stable-diffusion-2-1", "sd21", "sd2", "SD 2.1 (768, v-prediction)"),
        PublishedModel("stabilityai/stable-diffusion-2-1-base", "sd21-base", "sd2", "SD 2.1 base"),
        PublishedModel("stabilityai/stable-diffusion-xl-base-1.0", "sdxl-base", "sdxl", "SDXL base 1.0"),
    )
}
_BY_NAME = {name.lower(): model for model in PUBLISHED_MODELS.values() for name in (model.id, *model.aliases)}


def published_model(model_id: str) -> PublishedModel | None:
    """The shipped model called ``model_id`` (a hub id or one of its mirrors, any case), or ``None``."""
    if not isinstance(model_id, str):
        return None
    return _BY_NAME.get(model_id.strip().lower())


def _read(model: PublishedModel, *parts: str) -> dict:
    path = resources.files(__name__).joinpath(model.folder, *parts)
    return json.loads(path.read_text(encoding="utf-8"))


def _model(model_id: str | PublishedModel) -> PublishedModel:
    model = model_id if isinstance(model_id, PublishedModel) else published_model(model_id)
    if model is None:
        known = ", ".join(PUBLISHED_MODELS)
        raise ValueError(f"no shipped configs for {model_id!r}; shipped: {known}")
    return model


def model_index(model_id: str | PublishedModel) -> dict:
    """The pipeline's ``model_index.json``: its class and each component's ``[library, class]``."""
    return _read(_model(model_id), "model_index.json")


def component_config(model_id: str | PublishedModel, component: str) -> dict:
    """The config of one component (``"unet"``, ``"vae"``, ``"text_encoder"``, ``"scheduler"``, ...)."""
    model = _model(model_id)
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    try:
        return _read(model, component, name)
    except FileNotFoundError:
        raise ValueError(f"{model.id} ships no config for {component!r}") from None
