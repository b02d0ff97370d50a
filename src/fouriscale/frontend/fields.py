"""How each front end names the settings and inputs its messages point to: the command line's options and the web
UI's fields, one table each with the same keys.

Front-end checks word their messages with a table (``labels[...]``); the library's
:class:`~fouriscale.errors.SettingError` is worded with one through :func:`~fouriscale.frontend.errors.user_errors`.
A name of ``None`` is a setting the front end does not offer: a remedy through it is left out. The ComfyUI nodes'
widgets are named as the config fields, so they need only :data:`NODE_NAMES` for what they lack.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = ["CLI_NAMES", "UI_NAMES", "NODE_NAMES"]

CLI_NAMES = MappingProxyType(
    {
        "init": "--init-image",
        "mask": "--mask",
        "strength": "--strength",
        "two_pass": "--two-pass",
        "upscale": "--upscale",
        "controlnet": "--controlnet",
        "controlnet_path": "--controlnet PATH",
        "control_image": "--control-image",
        "control_scale": "--control-scale",
        "official": "--official-controlnet",
        "steps": "--steps",
        "model_path": "--model PATH",
        "allow_pickle": "--allow-pickle",
        "base_size": "--base-size WxH",
        "size_limit": "--no-size-limit",
    }
)
UI_NAMES = MappingProxyType(
    {
        "init": "the input picture",
        "mask": "the mask",
        "strength": "the strength",
        "two_pass": "two-pass",
        "upscale": "the upscale mode",
        "controlnet": "the ControlNet model",
        "controlnet_path": "the ControlNet model field",
        "control_image": "the ControlNet picture",
        "control_scale": "the ControlNet scale",
        "official": "the official ControlNet recipe",
        "steps": "the steps",
        "model_path": "the model field",
        "allow_pickle": "fouriscale ui --allow-pickle",
        "base_size": None,
        "size_limit": None,
    }
)

#: The ComfyUI nodes: no base size or size limit widget (ComfyUI's own latent size bound applies).
NODE_NAMES = MappingProxyType({"base_size": None, "size_limit": None})
