"""Loading models for the front ends: hub ids, diffusers folders, single-file checkpoints and the built-in
tiny random models (``tiny:sd1``, ``tiny:sd2``, ``tiny:sdxl``, for checking an installation offline).

Everything the user can get wrong is checked before the weights are read, and reported as one
:class:`~fouriscale.frontend.errors.UserError` line: missing or truncated files, a folder without ``unet/``,
pickle files (refused unless allowed), a device that does not exist, a LoRA that does not fit. A hub id
that is not cached while the Hub cannot be reached fails at once (no retries) with a hint to pass a path.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from safetensors import safe_open

from ..diffusers.describe import detect_family, native_latent, vae_scale_factor
from ..hub import hub_unreachable, offline
from ..published import component_config, published_model
from ..testing import TINY_FAMILIES, tiny_pipeline, tiny_unet_config, tiny_vae_config
from .errors import UserError, captured_logs, one_line
from .fields import CLI_NAMES

# diffusers' model and pipeline classes (and transformers' models) are imported where they are used: each adds
# 1-2 s and 300-500 modules to `import fouriscale` (docs/architecture.md, "Imports").
__all__ = [
    "UserError",
    "TINY_PREFIX",
    "SCHEDULERS",
    "LoadedModel",
    "load_pipeline",
    "load_unet_profile_source",
    "load_plan_source",
    "load_estimate_source",
    "native_size",
    "set_scheduler",
    "parse_lora",
    "resolve_device",
    "resolve_dtype",
]

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
#: ``--model tiny:FAMILY`` loads :func:`fouriscale.testing.tiny_pipeline` (random weights: its pictures are noise).
TINY_PREFIX = "tiny:"

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


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


def resolve_device(name: str = "auto") -> str:
    """``auto`` (default) -> ``cuda`` if available, else ``mps``, else ``cpu``. Any other name must be ``cpu``,
    ``mps``, ``cuda`` or ``cuda:N`` and exist on this machine (checked before any model is loaded)."""
    name = str(name).strip().lower()
    match = _DEVICE.match(name)
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        raise UserError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps")
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        count = torch.cuda.device_count()
        if index is not None and int(index) >= count:
            raise UserError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return name
    if kind == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise UserError(f"--device {name}: Apple's MPS is not available here; use --device cpu")
        return name
    if kind == "cpu":
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


def looks_like_path(model: str) -> bool:
    """Anything but ``name`` or ``org/name`` (or with a checkpoint suffix) is meant as a local path."""
    return model.lower().endswith((".safetensors",) + PICKLE_SUFFIXES) or not _HUB_ID.match(model)


def tiny_family(model: str) -> str | None:
    """``"tiny:sd1"`` -> ``"sd1"`` (``None`` for other model names); ``UserError`` for an unknown family."""
    if not str(model).lower().startswith(TINY_PREFIX):
        return None
    name = str(model)[len(TINY_PREFIX) :].strip().lower()
    if name not in TINY_FAMILIES:
        raise UserError(
            f"--model {model}: the built-in tiny models are {', '.join('tiny:' + f for f in TINY_FAMILIES)}"
        )
    return name


def _family_of_pipeline(pipe) -> str:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if not isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        raise UserError(
            f"{type(pipe).__name__} is not a Stable Diffusion 1.x/2.x or SDXL text-to-image pipeline; fouriscale "
            "generates with those."
        )
    try:
        return detect_family(pipe.unet.config).name
    except ValueError as exc:
        raise UserError(str(exc)) from None


def safetensors_keys(path: Path, what: str) -> list[str]:
    """The tensor names of a ``.safetensors`` file; a truncated or corrupt file (the header's offsets must
    cover the file) is a ``UserError`` starting with ``what`` (e.g. the path)."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except Exception as exc:  # safetensors raises its own error types
        raise UserError(f"{what} is truncated or corrupt ({one_line(exc, 160)})") from None


def _checkpoint_keys(path: Path, allow_pickle: bool, labels: Mapping) -> list[str]:
    if path.suffix.lower() == ".safetensors":
        return safetensors_keys(path, f"{path} is not a readable .safetensors checkpoint: it")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UserError(
                f"{path.name} is a pickle checkpoint, which can run arbitrary code when loaded; convert it to "
                f".safetensors, or pass {labels['allow_pickle']} if you trust its source"
            )
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=False, mmap=True)
        except Exception as exc:
            raise UserError(
                f"{path} is not a readable checkpoint: truncated or corrupt ({one_line(exc, 160)})"
            ) from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        return list(state.keys())
    raise UserError(f"{path}: expected a .safetensors checkpoint or a diffusers folder")


def _load_single_file(path: Path, dtype, config: str | None, allow_pickle: bool, labels: Mapping):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    keys = _checkpoint_keys(path, allow_pickle, labels)
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
        kind = "SDXL" if is_xl else "SD"
        raise UserError(
            f"could not load {path.name} as a {kind} checkpoint: {one_line(exc, first_line=True)}{hint}"
        ) from None


def _check_folder(path: Path, allow_pickle: bool, labels: Mapping) -> None:
    """A diffusers folder's structure and weight files, before loading: ``model_index.json`` and ``unet/``
    present, every ``.safetensors`` file readable (not truncated), pickle-only components refused."""
    if not (path / "model_index.json").exists():
        raise UserError(f"{path} is a folder but not a diffusers pipeline (no model_index.json)")
    if not (path / "unet").is_dir():
        raise UserError(f"{path} has no unet/ subfolder: not a complete Stable Diffusion pipeline")
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        folder = path / component
        if not folder.is_dir():
            continue
        weights = sorted(folder.glob("*.safetensors"))
        for file in weights:
            safetensors_keys(file, str(file))
        if not weights and not allow_pickle and any(folder.glob(f"*{suffix}") for suffix in PICKLE_SUFFIXES):
            raise UserError(
                f"{folder} holds only pickle weights, which can run code when loaded; pass {labels['allow_pickle']} "
                "if you trust the source"
            )


def _load_pretrained(source: str, dtype, allow_pickle: bool, is_hub: bool, labels: Mapping):
    from diffusers import DiffusionPipeline

    kwargs = {"torch_dtype": dtype, "use_safetensors": None if allow_pickle else True}
    try:
        return DiffusionPipeline.from_pretrained(source, local_files_only=True, **kwargs)
    except Exception as exc:
        local_error = exc
    message = one_line(local_error, first_line=True)
    if not is_hub:
        raise UserError(f"could not load the diffusers folder {source}: {message}") from None
    check_hub(source, option=labels["model_path"])
    try:
        return DiffusionPipeline.from_pretrained(source, **kwargs)
    except Exception as exc:
        reason = one_line(exc, first_line=True)
        raise UserError(
            f"could not get {source!r} from the Hugging Face Hub ({reason}); check the id and the network, or "
            "pass a local diffusers folder or .safetensors file with --model PATH"
        ) from None


def check_hub(source: str, subject: str = "model", option: str = "--model PATH") -> None:
    """Fail fast for a hub id that is not cached: offline (``HF_HUB_OFFLINE``) or the Hub unreachable. ``subject``
    (default ``"model"``) and ``option`` (default ``"--model PATH"``) word the message."""
    hint = f"download it where there is network, or pass a local diffusers folder or .safetensors file with {option}"
    if offline():
        raise UserError(f"{subject} {source!r} is not in the local Hugging Face cache and the Hub is offline; {hint}")
    problem = hub_unreachable()
    if problem:
        raise UserError(f"{subject} {source!r} is not in the local Hugging Face cache and {problem}; {hint}")


def parse_lora(spec: str) -> tuple[str, float]:
    """``PATH[:SCALE]`` -> ``(path, scale)`` (scale default 1.0). A Windows drive colon is not taken for a scale;
    a suffix after the last colon of an existing path that is not a finite number is refused as a bad scale."""
    head, sep, tail = spec.rpartition(":")
    if not sep or not head or (len(head) == 1 and head.isalpha()) or Path(spec).expanduser().exists():
        return spec, 1.0
    try:
        scale = float(tail)
    except ValueError:
        if Path(head).expanduser().exists():
            raise UserError(f"--lora {spec}: bad LoRA scale {tail!r}; expected a number, e.g. {head}:0.8") from None
        return spec, 1.0
    if not math.isfinite(scale):
        raise UserError(f"--lora {spec}: bad LoRA scale {tail!r}; expected a finite number, e.g. {head}:0.8")
    return head, scale


def check_lora_files(loras: list[tuple[str, float]], allow_pickle: bool = False) -> None:
    """Each LoRA exists, is not a pickle file unless allowed, and its ``.safetensors`` is readable (before any
    model is loaded)."""
    for path, _ in loras:
        p = Path(path).expanduser()
        if not p.exists():
            raise UserError(f"--lora {path}: no such file or folder")
        files = [p] if p.is_file() else sorted(p.glob("*.safetensors"))
        for file in files:
            if file.suffix.lower() != ".safetensors":
                if not allow_pickle:
                    raise UserError(
                        f"--lora {path}: pickle LoRA files need --allow-pickle; .safetensors is safe to load"
                    )
                continue
            safetensors_keys(file, f"--lora {path}: not a readable .safetensors file, it")


def _lora_fit_problem(pipe, state: dict) -> str | None:
    """The first LoRA weight that does not fit ``pipe`` (its layer missing, or of another width), and how many more,
    from diffusers' reading of the file (``lora_A``: rank x input width, ``lora_B``: output width x rank)."""
    problems = []
    for key, tensor in state.items():
        component, _, rest = key.partition(".")
        name, _, kind = rest.rpartition(".lora_")
        module = getattr(pipe, component, None)
        layer = dict(module.named_modules()).get(name) if isinstance(module, torch.nn.Module) else None
        if layer is None or not hasattr(layer, "weight"):
            problems.append(f"{component}.{name} is not in the model")
            continue
        axis, dim = (1, 1) if kind.startswith("A") else (0, 0)
        given, needed = tensor.shape[axis], layer.weight.shape[dim]
        if given != needed:
            width = "input" if axis else "output"
            problems.append(f"{component}.{name}: {width} width {given} in the file, {needed} in the model")
    if not problems:
        return None
    more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
    return f"its weights do not fit this model ({problems[0]}{more}); is it a LoRA for another model family?"


def _load_loras(pipe, loras: list[tuple[str, float]], allow_pickle: bool) -> None:
    check_lora_files(loras, allow_pickle)
    names, scales = [], []
    for i, (path, scale) in enumerate(loras):
        p = Path(path).expanduser()
        name = f"lora_{i}"
        kwargs = {"adapter_name": name}
        if p.is_file():
            kwargs["weight_name"] = p.name
            source = str(p.parent)
        else:
            source = str(p)
        with captured_logs():
            try:
                read = pipe.lora_state_dict(source, **{k: v for k, v in kwargs.items() if k != "adapter_name"})
            except Exception as exc:
                reason = one_line(exc, first_line=True)
                raise UserError(f"--lora {path}: not a LoRA file diffusers can read ({reason})") from None
            problem = _lora_fit_problem(pipe, read[0] if isinstance(read, tuple) else read)
            if problem is not None:
                raise UserError(f"--lora {path}: {problem}")
            try:
                pipe.load_lora_weights(source, **kwargs)
            except Exception as exc:
                reason = one_line(exc, first_line=True)
                raise UserError(f"--lora {path}: not a LoRA this model can load ({reason})") from None
        names.append(name)
        scales.append(scale)
    if names:
        pipe.set_adapters(names, adapter_weights=scales)


def set_scheduler(pipe, name: str) -> None:
    """Swap ``pipe.scheduler`` for one of :data:`SCHEDULERS` built from its config."""
    if name not in SCHEDULERS:
        raise UserError(f"--scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    cls_name, extra = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)


def check_offload(offload: str, device: str) -> None:
    """``none``, or ``model``/``sequential`` CPU offload with a GPU device."""
    if offload not in ("none", "model", "sequential"):
        raise UserError(f"--offload {offload!r}: choose none, model or sequential")
    if offload != "none" and device == "cpu":
        raise UserError("--offload moves weights between the CPU and a GPU; it needs a GPU device")


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
    labels: Mapping = CLI_NAMES,
) -> LoadedModel:
    """Load an SD 1.x/2.x or SDXL pipeline from a hub id, a diffusers folder, a single checkpoint file or
    ``tiny:FAMILY``, with scheduler (default ``ddim``), LoRAs, dtype (default fp16 on a GPU, fp32 on the CPU)
    and placement set. Raises :class:`UserError` for anything the user can fix, checked before the weights
    are read where possible; messages name the settings with ``labels`` (default: the CLI's options)."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    check_offload(offload, device)
    check_lora_files(list(loras), allow_pickle)
    path = Path(model).expanduser()
    tiny = tiny_family(model)
    if tiny is not None:
        pipe, kind = tiny_pipeline(tiny), "tiny"
        if torch_dtype != torch.float32:
            pipe.to(dtype=torch_dtype)
    elif path.is_file():
        pipe, kind = _load_single_file(path, torch_dtype, config, allow_pickle, labels), "file"
    elif path.is_dir():
        _check_folder(path, allow_pickle, labels)
        pipe, kind = _load_pretrained(str(path), torch_dtype, allow_pickle, False, labels), "folder"
    elif looks_like_path(model):
        raise UserError(f"--model {model}: no such file or folder")
    else:
        pipe, kind = _load_pretrained(model, torch_dtype, allow_pickle, True, labels), "hub"
    family = _family_of_pipeline(pipe)
    if scheduler:
        set_scheduler(pipe, scheduler)
    _load_loras(pipe, list(loras), allow_pickle)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    return LoadedModel(pipe=pipe, family=family, source=model, kind=kind)


def native_size(pipe) -> tuple[int, int]:
    """The pipeline's native image size ``(height, width)`` in pixels."""
    h0, w0 = native_latent(pipe.unet.config)
    return h0 * pipe.vae_scale_factor, w0 * pipe.vae_scale_factor


@functools.lru_cache(maxsize=8)
def _meta_unet(config_json: str):
    """A ``UNet2DConditionModel`` on the meta device from its config (as JSON text). Cached: building one takes as
    long as a small generation, and a UI or a batch asks for the same few again and again."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(json.loads(config_json))


def load_unet_profile_source(model: str, config: str | None = None):
    """``(unet, vae_scale_factor)`` for planning without weights: the UNet is built on the meta device from
    its config when ``model`` is a diffusers folder, cached hub id or tiny model (the same config gives the same
    UNet object: read it, never change it); single files are loaded on the CPU."""
    return load_plan_source(model, config)[:2]


def load_plan_source(model: str, config: str | None = None, labels: Mapping = CLI_NAMES):
    """``(unet, vae_scale_factor, vae class name)``: :func:`load_unet_profile_source` and the class of the VAE
    (from its config's ``_class_name``), which the plan's "VAE decode" line needs; ``labels`` word the messages."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    path = Path(model).expanduser()
    tiny = tiny_family(model)
    if tiny is not None:
        unet = _meta_unet(json.dumps(tiny_unet_config(tiny), sort_keys=True))
        return unet, vae_scale_factor(tiny_vae_config()), "AutoencoderKL"
    if path.is_file():
        loaded = load_pipeline(model, device="cpu", dtype="fp32", scheduler=None, config=config, labels=labels)
        return loaded.pipe.unet, loaded.pipe.vae_scale_factor, type(loaded.pipe.vae).__name__
    shipped = None if path.exists() else published_model(model)
    if shipped is not None:  # the paper's models: their configs ship with the package (no download, no cache)
        unet_config, vae_config = component_config(shipped, "unet"), component_config(shipped, "vae")
        unet = _meta_unet(json.dumps(unet_config, sort_keys=True))
        return unet, vae_scale_factor(vae_config), vae_config.get("_class_name", "AutoencoderKL")
    if looks_like_path(model) and not path.exists():
        raise UserError(f"--model {model}: no such file or folder")
    if path.is_dir():
        if not (path / "unet").is_dir():
            raise UserError(f"{model} has no unet/ subfolder: not a complete Stable Diffusion pipeline")
        if not (path / "unet" / "config.json").is_file():
            raise UserError(f"{model}: unet/config.json is missing")
    source = str(path) if path.is_dir() else model

    def configs(local_files_only: bool):
        read = dict(local_files_only=local_files_only)
        unet_config = UNet2DConditionModel.load_config(source, subfolder="unet", **read)
        return unet_config, AutoencoderKL.load_config(source, subfolder="vae", **read)

    if path.is_dir():
        try:
            unet_config, vae_config = configs(True)
        except Exception as exc:
            raise UserError(f"could not read the configs of {model} ({one_line(exc, first_line=True)})") from None
    else:
        unet_config, vae_config = _cached_or_fetched(model, labels, configs, "config")
    unet = _meta_unet(json.dumps(dict(unet_config), sort_keys=True))
    return unet, vae_scale_factor(vae_config), vae_config.get("_class_name", "AutoencoderKL")


#: The files of a hub repository that describe a pipeline without its weights.
CONFIG_FILES = ("model_index.json", "*/config.json", "scheduler/scheduler_config.json")


def _cached_or_fetched(model: str, labels: Mapping, fetch, what: str):
    """``fetch(local_files_only)`` for a hub id: from the cache, else (once the Hub is known to answer:
    :func:`check_hub`) from the Hub; a failure is one line about the ``what`` of ``model``."""
    try:
        return fetch(True)
    except Exception:
        check_hub(model, option=labels["model_path"])
    try:
        return fetch(False)
    except Exception as exc:
        raise UserError(f"could not read the {what} of {model!r} ({one_line(exc, first_line=True)})") from None


def _hub_configs(model: str, labels: Mapping) -> str:
    """The folder of a hub id's configs (:data:`CONFIG_FILES`): from the cache, else fetched (kilobytes)."""
    from huggingface_hub import snapshot_download

    def fetch(local_files_only: bool) -> str:
        return snapshot_download(model, allow_patterns=list(CONFIG_FILES), local_files_only=local_files_only)

    return _cached_or_fetched(model, labels, fetch, "configs")


def load_estimate_source(
    model: str,
    dtype: str = "fp16",
    device: str = "cuda",
    *,
    config: str | None = None,
    allow_pickle: bool = False,
    labels: Mapping = CLI_NAMES,
):
    """A pipeline to estimate memory on (:func:`fouriscale.estimate_memory`), in ``dtype`` (resolved for
    ``device``): weightless for the models whose configs ship with the package, diffusers folders and hub ids (their
    configs only: from the cache, else a few kilobytes from the Hub); the tiny models as they are; a single file
    loaded on the CPU (its configs are in the file)."""
    from ..diffusers.meta import meta_pipeline

    torch_dtype = resolve_dtype(dtype, device)
    path = Path(model).expanduser()
    tiny = tiny_family(model)
    if tiny is not None:
        return tiny_pipeline(tiny).to(dtype=torch_dtype)
    if path.is_file():
        name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(torch_dtype, "fp32")
        kwargs = dict(device="cpu", dtype=name, scheduler=None, config=config, allow_pickle=allow_pickle)
        return load_pipeline(model, labels=labels, **kwargs).pipe
    if looks_like_path(model) and not path.exists():
        raise UserError(f"--model {model}: no such file or folder")
    if path.is_dir() or published_model(model) is not None:
        source = str(path) if path.is_dir() else model
    else:
        source = _hub_configs(model, labels)
    try:
        return meta_pipeline(source, torch_dtype)
    except (ValueError, OSError) as exc:
        raise UserError(f"could not build {model} from its configs ({one_line(exc, first_line=True)})") from None
