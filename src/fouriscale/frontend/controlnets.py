"""ControlNets for the front ends, loaded by the rules of the model: a hub id, a diffusers folder, a single-file
``.safetensors`` (pickle files only with ``--allow-pickle``), or ``tiny`` / ``tiny:SEED``, a random ControlNet
built from the loaded model's UNet (for checking an installation, like ``--model tiny:sd1``).

What can be checked without the weights is checked before any model is loaded: the files, and whether the
ControlNet fits the model (its family, SD 1.x/2.x or SDXL, its text-conditioning width, block widths, latent
channels, and the downsampling of its conditioning embedding against the VAE's factor), from its config or
the tensor shapes in a ``.safetensors`` header. Every problem is one :class:`UserError` line.

A single-file ControlNet is built with the architecture of the model's UNet (as ``ControlNetModel.from_unet``
does) and must load into it exactly, so it works offline; the original (LDM) key layout is converted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..diffusers.describe import detect_family
from ..profiles import FAMILIES
from .errors import UserError, captured_logs, one_line
from .fields import CLI_NAMES
from .loading import PICKLE_SUFFIXES, check_hub, looks_like_path, safetensors_keys
from .pictures import Picture

# diffusers' model and pipeline classes (and transformers' models) are imported where they are used: each adds
# 1-2 s and 300-500 modules to `import fouriscale` (docs/architecture.md, "Imports").
__all__ = [
    "TINY",
    "Control",
    "tiny_controlnet",
    "tiny_seed",
    "ControlSource",
    "check_source",
    "check_fit",
    "load_controlnet",
    "combine",
]

TINY = "tiny"
#: The output convs ``ControlNetModel.from_unet`` initialises to zero (so a fresh ControlNet changes nothing).
ZERO_INIT = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")
_CONDITIONING = (16, 32, 96, 256)  # the conditioning embedding's widths of the published ControlNets


@dataclass(frozen=True)
class Control:
    """One ``--controlnet`` with its ``--control-image`` and ``--control-scale``."""

    model: str
    image: Picture
    scale: float = 1.0

    def record(self) -> dict:
        return {"model": self.model, "image": self.image.record(), "scale": self.scale}


def tiny_seed(spec: str, labels: Mapping = CLI_NAMES) -> int | None:
    """``"tiny"`` -> 0, ``"tiny:3"`` -> 3; ``None`` for anything else; ``UserError`` for ``tiny:`` + no number."""
    text = str(spec).strip().lower()
    if text == TINY:
        return 0
    if not text.startswith(TINY + ":"):
        return None
    seed = text[len(TINY) + 1 :]
    if not seed.isdigit():
        raise UserError(
            f"{labels['controlnet']} {spec}: the built-in tiny ControlNets are tiny or tiny:SEED (e.g. tiny:1)"
        )
    return int(seed)


def _conditioning_widths(vae_scale_factor: int) -> tuple[int, ...]:
    stages = round(math.log2(vae_scale_factor))
    return (_CONDITIONING + (_CONDITIONING[-1],) * stages)[: stages + 1]


def tiny_controlnet(unet, vae_scale_factor: int, seed: int = 0):
    """A random ControlNet for ``unet``: ``ControlNetModel.from_unet`` (its conditioning embedding downsampling by
    ``vae_scale_factor``), with the zero-initialised output convs re-initialised with noise seeded by ``seed``, so
    it changes the result. Deterministic (the fresh layers are initialised under ``seed`` too, the global RNG left
    as it was); on the UNet's device and dtype."""
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):  # the conditioning embedding's default init draws from the global RNG
        torch.manual_seed(seed)
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=_conditioning_widths(vae_scale_factor)
        )
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if name.startswith(ZERO_INIT):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return controlnet.to(device=unet.device, dtype=unet.dtype).eval()


# ------------------------------------------------------------------------------------------ before loading


@dataclass
class ControlSource:
    """What ``--controlnet SPEC`` names, found without reading weights: ``kind`` is ``tiny``, ``file``, ``folder``
    or ``hub``; ``summary`` the architecture facts known so far (for :func:`check_fit`); ``labels`` how messages
    about it name the front end's settings (:mod:`~fouriscale.frontend.fields`)."""

    spec: str
    kind: str
    summary: dict
    seed: int = 0
    labels: Mapping = field(default_factory=lambda: CLI_NAMES, repr=False, compare=False)

    @property
    def shown(self) -> str:
        """How messages name it: ``--controlnet SPEC`` on the command line."""
        return f"{self.labels['controlnet']} {self.spec}"


def _summary_of_config(config) -> dict:
    cfg = dict(config)
    try:
        family = detect_family(SimpleNamespace(**cfg)).name
    except ValueError:
        family = None
    widths = cfg.get("conditioning_embedding_out_channels")
    return {
        "family": family,
        "cross_attention_dim": cfg.get("cross_attention_dim"),
        "block_out_channels": tuple(cfg["block_out_channels"]) if cfg.get("block_out_channels") else None,
        "layers_per_block": cfg.get("layers_per_block"),
        "in_channels": cfg.get("in_channels"),
        "downsampling": 2 ** (len(widths) - 1) if widths else None,
        "conditioning_channels": cfg.get("conditioning_channels", 3),
        "projection_class_embeddings_input_dim": cfg.get("projection_class_embeddings_input_dim"),
    }


def _summary_of_model(unet_config, vae_scale_factor: int) -> dict:
    """What a ControlNet must match: the UNet's (a 9-channel inpainting UNet's ControlNet takes the 4 latents)."""
    summary = _summary_of_config(unet_config)
    summary.update(
        in_channels=4 if summary["in_channels"] == 9 else summary["in_channels"],
        downsampling=vae_scale_factor,
        conditioning_channels=3,
    )
    return summary


def _summary_of_header(path: Path, shown: str) -> dict:
    """Architecture facts from a ``.safetensors`` header (diffusers or original key layout), no tensors read."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise UserError(f"{shown}: truncated or corrupt ({one_line(exc, 160)})") from None
    return _summary_of_shapes(shapes, shown)


def _summary_of_shapes(shapes: dict, shown: str) -> dict:
    keys = [re.sub(r"^control_model\.", "", k) for k in shapes]
    shapes = dict(zip(keys, shapes.values()))
    ldm = any(k.startswith("input_hint_block.") for k in keys)
    if not ldm and not any(k.startswith("controlnet_cond_embedding.") for k in keys):
        raise UserError(f"{shown}: holds no ControlNet (no conditioning embedding weights)")
    cross = next((s[-1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    xl = any(k.startswith(("add_embedding.", "label_emb.")) for k in keys)
    first = shapes.get("input_blocks.0.0.weight" if ldm else "conv_in.weight")
    if ldm:
        convs = sum(1 for k in keys if re.fullmatch(r"input_hint_block\.\d+\.weight", k))
        stride2 = max(convs - 2, 0) // 2
    else:
        blocks = sum(1 for k in keys if re.fullmatch(r"controlnet_cond_embedding\.blocks\.\d+\.weight", k))
        stride2 = blocks // 2
    hint = shapes.get("input_hint_block.0.weight" if ldm else "controlnet_cond_embedding.conv_in.weight")
    return {
        "family": "sdxl" if xl else ("sd2" if cross == 1024 else "sd1") if cross is not None else None,
        "cross_attention_dim": cross,
        "first_width": first[0] if first else None,
        "in_channels": first[1] if first else None,
        "downsampling": 2**stride2,
        "conditioning_channels": hint[1] if hint else None,
        "layout": "ldm" if ldm else "diffusers",
    }


def _hub_config(spec: str, labels: Mapping) -> dict:
    from diffusers import ControlNetModel

    try:
        return ControlNetModel.load_config(spec, local_files_only=True)
    except Exception:
        pass
    try:
        check_hub(spec, subject="ControlNet", option=labels["controlnet_path"])
    except UserError as exc:
        raise UserError(f"{labels['controlnet']}: {exc}") from None
    try:
        return ControlNetModel.load_config(spec)
    except Exception as exc:
        reason = one_line(exc, first_line=True)
        raise UserError(
            f"{labels['controlnet']} {spec}: could not get its config from the Hugging Face Hub ({reason}); check "
            "the id, or pass a local folder or .safetensors file"
        ) from None


def check_source(spec: str, allow_pickle: bool = False, labels: Mapping = CLI_NAMES) -> ControlSource:
    """Find and check ``--controlnet SPEC`` without loading weights (files present and readable, pickle refused
    unless allowed, the config readable); ``UserError`` otherwise."""
    from diffusers import ControlNetModel

    spec = str(spec).strip()
    if not spec:
        raise UserError(f"{labels['controlnet']}: empty; give a hub id, a folder, a .safetensors file or tiny")
    shown = f"{labels['controlnet']} {spec}"
    seed = tiny_seed(spec, labels)
    if seed is not None:
        return ControlSource(spec, "tiny", {}, seed, labels)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise UserError(
                    f"{shown}: a pickle file, which can run arbitrary code when loaded; convert it to "
                    f".safetensors, or pass {labels['allow_pickle']} if you trust its source"
                )
            return ControlSource(spec, "file", {}, labels=labels)
        if path.suffix.lower() != ".safetensors":
            raise UserError(f"{shown}: expected a .safetensors file, a diffusers folder or a hub id")
        return ControlSource(spec, "file", _summary_of_header(path, shown), labels=labels)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{shown}: a folder without config.json, not a diffusers ControlNet")
        weights = sorted(path.glob("*.safetensors"))
        for file in weights:
            safetensors_keys(file, f"{shown}: {file.name}")
        if not weights:
            if not any(path.glob(f"*{suffix}") for suffix in PICKLE_SUFFIXES):
                raise UserError(f"{shown}: the folder holds no weights (.safetensors)")
            if not allow_pickle:
                raise UserError(
                    f"{shown}: the folder holds only pickle weights, which can run code when loaded; "
                    f"pass {labels['allow_pickle']} if you trust the source"
                )
        try:
            config = ControlNetModel.load_config(str(path))
        except Exception as exc:
            raise UserError(f"{shown}: cannot read its config.json ({one_line(exc, 160)})") from None
        return ControlSource(spec, "folder", _summary_of_config(config), labels=labels)
    if looks_like_path(spec):
        raise UserError(f"{shown}: no such file or folder")
    return ControlSource(spec, "hub", _summary_of_config(_hub_config(spec, labels)), labels=labels)


_FACTS = (
    ("cross_attention_dim", "text-conditioning width"),
    ("projection_class_embeddings_input_dim", "SDXL conditioning width"),
    ("block_out_channels", "block widths"),
    ("first_width", "first block width"),
    ("layers_per_block", "layers per block"),
    ("in_channels", "latent channels"),
    ("downsampling", "conditioning image downsampling"),
    ("conditioning_channels", "conditioning image channels"),
)


def check_fit(source: ControlSource, unet_config, vae_scale_factor: int) -> None:
    """``UserError`` when the ControlNet cannot drive this UNet: another family, or a width, channel count or
    downsampling that differs (each named with both values)."""
    if source.kind == "tiny":
        return
    ours = _summary_of_model(unet_config, vae_scale_factor)
    ours["first_width"] = ours["block_out_channels"][0] if ours["block_out_channels"] else None
    theirs = source.summary
    label = lambda name: FAMILIES[name].label if name in FAMILIES else name  # noqa: E731
    if theirs.get("family") and ours["family"] and theirs["family"] != ours["family"]:
        raise UserError(
            f"{source.shown} is a ControlNet for {label(theirs['family'])}; the model is "
            f"{label(ours['family'])}: use a ControlNet made for {label(ours['family'])}"
        )
    for key, what in _FACTS:
        a, b = theirs.get(key), ours.get(key)
        if a is not None and b is not None and a != b:
            show = lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
            raise UserError(
                f"{source.shown} does not fit this model: its {what} is {show(a)}, the model's "
                f"{show(b)} (a ControlNet for another base model?)"
            )


# --------------------------------------------------------------------------------------------------- loading


def _fit_problem(state: dict, model: torch.nn.Module) -> str | None:
    """The first way the weights ``state`` do not fit ``model`` (a weight missing, unknown or of another shape), or
    ``None`` when they fit."""
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name, shape in ours.items():
        if name not in state:
            return f"its weights do not fit this model's architecture ({name} is missing)"
        if tuple(state[name].shape) != shape:
            given, needed = ("x".join(map(str, s)) for s in (state[name].shape, shape))
            return f"its weights do not fit this model's architecture ({name}: {given} in the file, {needed} in it)"
    extra = sorted(set(state) - set(ours))
    return f"its weights do not fit this model's architecture ({extra[0]} is not in it)" if extra else None


def _load_file(source: ControlSource, pipe, allow_pickle: bool):
    from diffusers import ControlNetModel

    path = Path(source.spec).expanduser()
    if path.suffix.lower() == ".safetensors":
        state = load_file(str(path))
    else:
        if not allow_pickle:  # checked before; kept here so the loader never reads a pickle unasked
            raise UserError(f"{source.shown}: a pickle file; pass {source.labels['allow_pickle']} if you trust it")
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise UserError(f"{source.shown}: not a readable checkpoint ({one_line(exc, 160)})") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {re.sub(r"^control_model\.", "", k): v for k, v in state.items()}
    summary = _summary_of_shapes({k: tuple(v.shape) for k, v in state.items()}, source.shown)
    checked = ControlSource(source.spec, "file", summary, labels=source.labels)
    check_fit(checked, pipe.unet.config, pipe.vae_scale_factor)
    if summary["layout"] == "ldm":
        from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

        try:
            state = convert_controlnet_checkpoint(state, dict(pipe.unet.config))
        except Exception as exc:
            raise UserError(f"{source.shown}: cannot convert its weights ({one_line(exc, 160)})") from None
    widths = [state["controlnet_cond_embedding.conv_in.weight"].shape[0]] + [
        state[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0]
        for i in range(1, 2 * round(math.log2(summary["downsampling"])), 2)
    ]
    with torch.device("meta"):
        controlnet = ControlNetModel.from_unet(
            pipe.unet, conditioning_embedding_out_channels=tuple(widths), load_weights_from_unet=False
        )
    problem = _fit_problem(state, controlnet)
    if problem is not None:
        raise UserError(f"{source.shown}: {problem}")
    controlnet.load_state_dict(state, strict=True, assign=True)
    return controlnet


def load_controlnet(source: ControlSource, pipe, allow_pickle: bool = False):
    """The ControlNet ``source`` names, checked against ``pipe``'s UNet and placed on its device and dtype."""
    from diffusers import ControlNetModel

    dtype = pipe.unet.dtype
    device = getattr(pipe, "_execution_device", None) or pipe.unet.device
    if source.kind == "tiny":
        controlnet = tiny_controlnet(pipe.unet, pipe.vae_scale_factor, source.seed)
        return controlnet.to(device=device)
    check_fit(source, pipe.unet.config, pipe.vae_scale_factor)
    kwargs = {"torch_dtype": dtype, "use_safetensors": None if allow_pickle else True}
    with captured_logs():
        if source.kind == "file":
            controlnet = _load_file(source, pipe, allow_pickle)
        else:
            try:
                controlnet = ControlNetModel.from_pretrained(source.spec, local_files_only=True, **kwargs)
            except Exception as exc:
                if source.kind == "folder":
                    raise UserError(f"{source.shown}: could not load it ({one_line(exc, first_line=True)})") from None
                try:
                    controlnet = ControlNetModel.from_pretrained(source.spec, **kwargs)
                except Exception as exc:
                    reason = one_line(exc, first_line=True)
                    raise UserError(f"{source.shown}: could not get it from the Hugging Face Hub ({reason})") from None
    check_fit(
        ControlSource(source.spec, source.kind, _summary_of_config(controlnet.config), labels=source.labels),
        pipe.unet.config,
        pipe.vae_scale_factor,
    )
    return controlnet.to(device=device, dtype=dtype).eval()


def combine(controlnets: list):
    """One ControlNet as it is; several as diffusers' ``MultiControlNetModel`` (pairs in order)."""
    if len(controlnets) == 1:
        return controlnets[0]
    from diffusers.models.controlnets import MultiControlNetModel

    return MultiControlNetModel(controlnets)
