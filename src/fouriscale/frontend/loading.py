"""Loading real models for the front ends: hub ids, diffusers folders and single-file checkpoints.

Safetensors only unless pickle files are explicitly allowed; a hub id that is not cached while the
Hub is unreachable becomes one clear :class:`UserError` instead of a stack of retries.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "UserError",
    "SCHEDULERS",
    "LoadedModel",
    "load_pipeline",
    "load_unet_profile_source",
    "native_size",
    "set_scheduler",
    "parse_lora",
    "resolve_device",
    "resolve_dtype",
]

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")


class UserError(Exception):
    """A mistake the user can fix; front ends show its message as one line."""


# name -> (diffusers scheduler class, extra config)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++2m-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
}


@dataclass
class LoadedModel:
    pipe: object
    family: str  # "sd1", "sd2" or "sdxl" (fouriscale.FAMILIES)
    source: str  # what the user passed
    kind: str  # "hub", "folder" or "file"


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` if available, else ``mps``, else ``cpu``."""
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto`` -> float16 on a GPU, float32 on the CPU; else ``fp32``/``fp16``/``bf16``."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    if name not in table:
        raise UserError(f"--dtype {name!r}: choose auto, fp32, fp16 or bf16")
    return table[name]


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_like_path(model: str) -> bool:
    """Anything but ``name`` or ``org/name`` (or with a checkpoint suffix) is meant as a local path."""
    return model.lower().endswith((".safetensors",) + PICKLE_SUFFIXES) or not _HUB_ID.match(model)


def _family_of_pipeline(pipe) -> str:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from ..profiles import detect_family

    if not isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        raise UserError(
            f"{type(pipe).__name__} is not a Stable Diffusion 1.x/2.x or SDXL text-to-image pipeline; fouriscale "
            "generates with those."
        )
    try:
        return detect_family(pipe.unet.config).name
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _checkpoint_keys(path: Path, allow_pickle: bool) -> list[str]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                return list(fh.keys())
        except Exception as exc:  # safetensors raises its own error types
            raise UserError(f"{path} is not a readable .safetensors checkpoint ({exc})") from None
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UserError(
                f"{path.name} is a pickle checkpoint, which can run arbitrary code when loaded; convert it to "
                ".safetensors, or pass --allow-pickle if you trust its source"
            )
        state = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        return list(state.keys())
    raise UserError(f"{path}: expected a .safetensors checkpoint or a diffusers folder")


def _load_single_file(path: Path, dtype, config: str | None, allow_pickle: bool):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    keys = _checkpoint_keys(path, allow_pickle)
    is_xl = any(k.startswith("conditioner.") or k.startswith("model.diffusion_model.label_emb") for k in keys)
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise UserError(f"{path.name} holds no Stable Diffusion UNet (no 'model.diffusion_model.*' weights)")
    cls = StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline
    kwargs = {"torch_dtype": dtype}
    if config:
        kwargs.update(config=config, local_files_only=True)
    try:
        return cls.from_single_file(str(path), **kwargs)
    except UserError:
        raise
    except Exception as exc:
        hint = "" if config else "; offline, pass --config with a diffusers folder of the same architecture"
        raise UserError(f"could not load {path.name} as a {'SDXL' if is_xl else 'SD'} checkpoint: {_short(exc)}{hint}") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _load_pretrained(source: str, dtype, allow_pickle: bool, is_hub: bool):
    from diffusers import DiffusionPipeline

    kwargs = {"torch_dtype": dtype, "use_safetensors": None if allow_pickle else True}
    try:
        return DiffusionPipeline.from_pretrained(source, local_files_only=True, **kwargs)
    except Exception as exc:
        local_error = exc
    message = _short(local_error)
    if not is_hub:
        if "safetensors" in message.lower() and not allow_pickle:
            raise UserError(
                f"{source} has no .safetensors weights (only pickle files); pass --allow-pickle if you trust it"
            ) from None
        raise UserError(f"could not load the diffusers folder {source}: {message}") from None
    if _offline():
        raise UserError(
            f"model {source!r} is not in the local Hugging Face cache and the Hub is offline; download it where "
            "there is network, or pass a local diffusers folder or .safetensors file with --model PATH"
        ) from None
    try:
        return DiffusionPipeline.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise UserError(
            f"could not get {source!r} from the Hugging Face Hub ({_short(exc)}); check the id and the network, or "
            "pass a local diffusers folder or .safetensors file with --model PATH"
        ) from None


def parse_lora(spec: str) -> tuple[str, float]:
    """``PATH[:SCALE]`` -> ``(path, scale)``; a Windows drive colon is not taken for a scale."""
    path, scale = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep and head and not (len(head) == 1 and head.isalpha()):
        try:
            scale = float(tail)
            path = head
        except ValueError:
            path = spec
    return path, scale


def _load_loras(pipe, loras: list[tuple[str, float]], allow_pickle: bool) -> None:
    names, scales = [], []
    for i, (path, scale) in enumerate(loras):
        p = Path(path).expanduser()
        if not p.exists():
            raise UserError(f"--lora {path}: no such file or folder")
        if p.is_file() and p.suffix.lower() != ".safetensors" and not allow_pickle:
            raise UserError(f"--lora {path}: pickle LoRA files need --allow-pickle; .safetensors is safe to load")
        name = f"lora_{i}"
        kwargs = {"adapter_name": name}
        if p.is_file():
            kwargs["weight_name"] = p.name
            source = str(p.parent)
        else:
            source = str(p)
        try:
            pipe.load_lora_weights(source, **kwargs)
        except Exception as exc:
            raise UserError(f"--lora {path}: not a LoRA this model can load ({_short(exc)})") from None
        names.append(name)
        scales.append(scale)
    if names:
        pipe.set_adapters(names, adapter_weights=scales)


def set_scheduler(pipe, name: str) -> None:
    """Swap ``pipe.scheduler`` for one of :data:`SCHEDULERS` built from its config."""
    import diffusers

    if name not in SCHEDULERS:
        raise UserError(f"--scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    cls_name, extra = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)


def load_pipeline(
    model: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    offload: str = "none",
    scheduler: str | None = "ddim",
    loras: list[tuple[str, float]] = (),
    allow_pickle: bool = False,
    config: str | None = None,
) -> LoadedModel:
    """Load an SD 1.x/2.x or SDXL pipeline from a hub id, a diffusers folder or a single checkpoint file,
    with scheduler, LoRAs, dtype and placement set. Raises :class:`UserError` for anything the user can fix."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    path = Path(model).expanduser()
    if path.is_file():
        pipe, kind = _load_single_file(path, torch_dtype, config, allow_pickle), "file"
    elif path.is_dir():
        if not (path / "model_index.json").exists():
            raise UserError(f"{model} is a folder but not a diffusers pipeline (no model_index.json)")
        pipe, kind = _load_pretrained(str(path), torch_dtype, allow_pickle, is_hub=False), "folder"
    elif _looks_like_path(model):
        raise UserError(f"--model {model}: no such file or folder")
    else:
        pipe, kind = _load_pretrained(model, torch_dtype, allow_pickle, is_hub=True), "hub"
    family = _family_of_pipeline(pipe)
    if scheduler:
        set_scheduler(pipe, scheduler)
    _load_loras(pipe, list(loras), allow_pickle)
    if offload != "none" and device == "cpu":
        raise UserError("--offload moves weights between the CPU and a GPU; it needs a GPU device")
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "none":
        pipe.to(device)
    else:
        raise UserError(f"--offload {offload!r}: choose none, model or sequential")
    return LoadedModel(pipe=pipe, family=family, source=model, kind=kind)


def native_size(pipe) -> tuple[int, int]:
    """The pipeline's native image size ``(height, width)`` in pixels."""
    from ..profiles import native_latent

    h0, w0 = native_latent(pipe.unet.config)
    return h0 * pipe.vae_scale_factor, w0 * pipe.vae_scale_factor


def load_unet_profile_source(model: str, config: str | None = None):
    """``(unet, vae_scale_factor)`` for planning without weights: the UNet is built on the meta device from
    its config when ``model`` is a diffusers folder or cached hub id; single files are loaded on the CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    path = Path(model).expanduser()
    if path.is_file():
        loaded = load_pipeline(model, device="cpu", dtype="fp32", scheduler=None, config=config)
        return loaded.pipe.unet, loaded.pipe.vae_scale_factor
    if _looks_like_path(model) and not path.exists():
        raise UserError(f"--model {model}: no such file or folder")
    source = str(path) if path.is_dir() else model
    try:
        unet_config = UNet2DConditionModel.load_config(source, subfolder="unet", local_files_only=True)
        vae_config = AutoencoderKL.load_config(source, subfolder="vae", local_files_only=True)
    except Exception:
        if path.is_dir() or _offline():
            raise UserError(
                f"no UNet config found for {model!r} locally; pass a diffusers folder (with unet/config.json) "
                "or a cached hub id"
            ) from None
        try:
            unet_config = UNet2DConditionModel.load_config(source, subfolder="unet")
            vae_config = AutoencoderKL.load_config(source, subfolder="vae")
        except Exception as exc:
            raise UserError(f"could not read the config of {model!r} ({_short(exc)})") from None
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    return unet, 2 ** (len(vae_config["block_out_channels"]) - 1)
