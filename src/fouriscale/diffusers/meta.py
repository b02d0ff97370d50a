"""Pipelines without weights (layer 3, diffusers host): every component built from its config on the meta device.

Enough for everything that needs shapes but no numbers: plans, hook placement, and memory estimates
(:func:`fouriscale.estimate_memory`). Building takes seconds and reads no weights: from the configs shipped with the
package (:mod:`fouriscale.published`: SD 1.5, SD 2.1 base and 768, SDXL base 1.0), from a diffusers folder's
``model_index.json`` and component configs, or from configs given as dicts (e.g. read from a hub cache).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from ..published import component_config, model_index, published_model

__all__ = ["meta_pipeline", "pipeline_from_configs", "NOT_BUILT"]

#: Components a meta pipeline leaves out (``None``): they hold no weights on the device during generation
#: (tokenizers, image processors) or are optional image inputs.
NOT_BUILT = ("tokenizer", "tokenizer_2", "feature_extractor", "image_encoder")


def _components(index: dict) -> dict[str, tuple]:
    return {
        name: tuple(spec)
        for name, spec in index.items()
        if not name.startswith("_") and isinstance(spec, (list, tuple)) and len(spec) == 2
    }


def meta_pipeline(model, dtype: torch.dtype = torch.float16):
    """A diffusers pipeline of the model's own class with every component on the meta device, in ``dtype``.

    ``model`` is a hub id whose configs ship with the package (:data:`fouriscale.published.PUBLISHED_MODELS`, or a
    mirror of one) or a local diffusers folder (its ``model_index.json`` and ``*/config.json`` are read; no weights).
    Tokenizers, image processors and image encoders are left out. Raises ``ValueError`` for anything else.
    """
    shipped = published_model(model) if isinstance(model, str) else None
    if shipped is not None:
        index = model_index(shipped)
        configs = {
            name: component_config(shipped, name) for name, spec in _components(index).items() if _built(name, spec)
        }
        return pipeline_from_configs(index, configs, dtype)
    path = Path(str(model)).expanduser()
    if not (path / "model_index.json").is_file():
        raise ValueError(
            f"{model!r} is neither a model whose configs ship with fouriscale nor a diffusers folder with a "
            "model_index.json"
        )
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    configs = {}
    for name, spec in _components(index).items():
        if not _built(name, spec):
            continue
        file = path / name / ("scheduler_config.json" if name == "scheduler" else "config.json")
        if not file.is_file():
            raise ValueError(f"{model}: {file.relative_to(path)} is missing")
        configs[name] = json.loads(file.read_text(encoding="utf-8"))
    return pipeline_from_configs(index, configs, dtype)


def _built(name: str, spec: tuple) -> bool:
    return name not in NOT_BUILT and spec[0] is not None and spec[1] is not None


def _build(name: str, library: str, class_name: str, config: dict, dtype: torch.dtype):
    import diffusers

    if library == "diffusers" and name == "scheduler":
        return getattr(diffusers, class_name).from_config(config)
    if library == "diffusers":
        with torch.device("meta"):
            model = getattr(diffusers, class_name).from_config(config)
        return torch.nn.Module.to(model, dtype).eval()  # (ModelMixin.to warns about float32 modules: none here)
    if library == "stable_diffusion" and class_name == "StableDiffusionSafetyChecker":
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPConfig

        with torch.device("meta"):
            return StableDiffusionSafetyChecker(CLIPConfig.from_dict(config)).to(dtype).eval()
    if library == "transformers":
        import transformers

        cls = getattr(transformers, class_name)
        with torch.device("meta"):
            return cls(cls.config_class.from_dict(config)).to(dtype).eval()
    raise ValueError(f"cannot build component {name!r} ({library}.{class_name}) from its config")


def pipeline_from_configs(index: dict, configs: dict[str, dict], dtype: torch.dtype = torch.float16):
    """The pipeline of ``index`` (a ``model_index.json`` as a dict) with the components of ``configs`` (component
    name -> its config dict) built on the meta device in ``dtype``; components without a config are ``None``."""
    import diffusers

    cls = getattr(diffusers, index["_class_name"], None)
    if cls is None:
        raise ValueError(f"unknown pipeline class {index.get('_class_name')!r}")
    kwargs = {}
    for name, (library, class_name) in _components(index).items():
        config = configs.get(name)
        kwargs[name] = (
            None
            if config is None or not _built(name, (library, class_name))
            else _build(name, library, class_name, config, dtype)
        )
    accepted = inspect.signature(cls.__init__).parameters
    if kwargs.get("safety_checker") is not None and kwargs.get("feature_extractor") is None:
        from transformers import CLIPImageProcessor

        kwargs["feature_extractor"] = CLIPImageProcessor()  # the checker's input (CLIP's 224 px defaults); no weights
    if "requires_safety_checker" in accepted:
        kwargs["requires_safety_checker"] = False  # no warning about a checker left out: this pipeline never runs
    if "add_watermarker" in accepted:
        kwargs["add_watermarker"] = False
    if "force_zeros_for_empty_prompt" in accepted and "force_zeros_for_empty_prompt" in index:
        kwargs["force_zeros_for_empty_prompt"] = bool(index["force_zeros_for_empty_prompt"])
    for name in accepted:
        if name not in kwargs and name != "self" and accepted[name].default is inspect.Parameter.empty:
            kwargs[name] = None  # a required component the index does not list (e.g. a tokenizer)
    pipe = cls(**{k: v for k, v in kwargs.items() if k in accepted})
    pipe.set_progress_bar_config(disable=True)
    return pipe
