"""The ComfyUI nodes (classic node API, which every ComfyUI version loads).

* **FouriScale** (``MODEL`` -> ``MODEL``): a patched clone of the model
  (:func:`~fouriscale.comfyui.patch.apply_fouriscale`); the widgets are the fields of the same names of
  :class:`~fouriscale.FouriScaleConfig`, with the library's defaults; ``-1`` (``0`` for ``native_size``) is "auto".
* **FouriScale Plan** (``MODEL``, width, height, steps -> ``STRING``): the plan text of ``fouriscale plan``.
"""

from __future__ import annotations

from ..config import MAX_DILATION, MAX_STEPS, FouriScaleConfig
from ..errors import SettingError
from ..frontend.fields import NODE_NAMES
from .patch import apply_fouriscale, get_patch, get_plan

__all__ = ["FouriScale", "FouriScalePlan", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "config_from_widgets"]

_DEFAULTS = FouriScaleConfig()
_AUTO = -1
_SEQUENTIAL = {"auto": None, "on": True, "off": False}


def _flag(default: bool, tooltip: str):
    return ("BOOLEAN", {"default": default, "tooltip": tooltip})


def _auto_int(high: int, tooltip: str):
    return ("INT", {"default": _AUTO, "min": _AUTO, "max": high, "tooltip": f"{tooltip} -1: auto."})


class FouriScale:
    """Patch an SD 1.x / 2.x / SDXL model to sample far above its native size with FouriScale (ECCV 2024)."""

    DESCRIPTION = (
        "FouriScale: training-free high-resolution sampling (dilated convolutions with a low-pass filter, FouriScale "
        "guidance, pad-then-crop for any aspect ratio). Planned per run from the latent size; at or below the "
        "model's native size it changes nothing."
    )
    CATEGORY = "model_patches/unet"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        d = _DEFAULTS
        return {
            "required": {
                "model": ("MODEL",),
                "amp_guidance": _flag(d.amp_guidance, "Amplify the guidance scale before start_step (blurry SDXL)."),
                "amp_guidance_factor": (
                    "FLOAT",
                    {"default": d.amp_guidance_factor, "min": 0.1, "max": 10.0, "step": 0.1, "tooltip": "Factor."},
                ),
                "freeu": (["paper", "off"], {"default": "paper", "tooltip": "FreeU as the paper applied it, or none."}),
                "low_pass": _flag(d.low_pass, "Low-pass filter the dilated convolutions' inputs."),
                "attention_guidance": _flag(d.attention_guidance, "FouriScale guidance (a third branch)."),
                "pad_then_crop": _flag(d.pad_then_crop, "Any aspect ratio: filter at the base aspect ratio."),
                "share_branches": _flag(d.share_branches, "Run the branches as one where they agree (exact)."),
                "start_step": _auto_int(MAX_STEPS, "First step of the progressive phase (paper's, scaled)."),
                "stop_step": _auto_int(MAX_STEPS, "Plain convolutions from this step on (paper's, scaled)."),
                "dilation": _auto_int(MAX_DILATION, "Dilation d (from the size and the native size)."),
                "native_size": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 8192,
                        "step": 8,
                        "tooltip": "The model's native size in pixels. 0: auto (SD 1.x 512, SD 2.x 768-v / 512, "
                        "SDXL 1024).",
                    },
                ),
                "sequential_uncond": (
                    list(_SEQUENTIAL),
                    {"default": "auto", "tooltip": "Unconditional branch as a pass of its own (less memory)."},
                ),
            }
        }

    def patch(self, model, native_size=0, **widgets):
        patched = apply_fouriscale(model, config_from_widgets(**widgets), native_size=native_size or None)
        get_patch(patched).names = NODE_NAMES  # its plans' errors name no setting the node lacks
        return (patched,)


def config_from_widgets(**widgets) -> FouriScaleConfig:
    """The :class:`~fouriscale.FouriScaleConfig` of the FouriScale node's widget values (validated by it)."""
    values = dict(widgets)
    for name in ("start_step", "stop_step", "dilation"):
        if values.get(name) == _AUTO:
            values[name] = None
    if "freeu" in values:
        values["freeu"] = None if values["freeu"] == "off" else values["freeu"]
    if "sequential_uncond" in values:
        values["sequential_uncond"] = _SEQUENTIAL[values["sequential_uncond"]]
    return FouriScaleConfig(**values)


class FouriScalePlan:
    """Show what FouriScale will do for a model at a size and step count."""

    DESCRIPTION = (
        "The FouriScale plan of a model (patched or not) at a size and step count: the text of `fouriscale plan`."
    )
    CATEGORY = "model_patches/unet"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("plan",)
    FUNCTION = "plan"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        size = {"min": 8, "max": 16384, "step": 8}
        return {
            "required": {
                "model": ("MODEL",),
                "width": ("INT", dict(size, default=2048)),
                "height": ("INT", dict(size, default=2048)),
                "steps": ("INT", {"default": 50, "min": 1, "max": MAX_STEPS}),
            }
        }

    def plan(self, model, width, height, steps):
        try:
            text = get_plan(model, width, height, steps).describe()
        except SettingError as exc:
            raise exc.reworded(NODE_NAMES) from None
        return {"ui": {"text": [text]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {"FouriScale": FouriScale, "FouriScalePlan": FouriScalePlan}
NODE_DISPLAY_NAME_MAPPINGS = {"FouriScale": "FouriScale", "FouriScalePlan": "FouriScale Plan"}
