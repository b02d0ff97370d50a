"""FouriScale's ComfyUI node pack: this repository cloned into ``ComfyUI/custom_nodes/`` (as ComfyUI-Manager and the
Comfy registry install node packs), with the ``fouriscale`` package installed in the Python that runs ComfyUI
(``install.py`` does that for ComfyUI-Manager; by hand: ``python -m pip install .`` in this folder, with that
Python). The nodes are :mod:`fouriscale.comfyui.nodes`; nothing here imports ComfyUI.
"""

try:
    from fouriscale.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ModuleNotFoundError as error:
    if (error.name or "").partition(".")[0] != "fouriscale":
        raise
    import os
    import sys

    raise ImportError(
        "the FouriScale nodes need the fouriscale package in the Python that runs ComfyUI: run "
        f"`{sys.executable} -m pip install {os.path.dirname(os.path.abspath(__file__))}` and restart ComfyUI"
    ) from None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
