"""FouriScale in ComfyUI (layer 3, ComfyUI host): a ``MODEL`` patch on ComfyUI's own extension points, and its nodes.

``apply_fouriscale(model)`` returns a patched clone of a ComfyUI ``ModelPatcher`` (:mod:`.patch`); the nodes
(:mod:`.nodes`) are its front end in ComfyUI. Nothing here imports ComfyUI until a function needs it, so
``import fouriscale`` never does.
"""

from .patch import apply_fouriscale, get_patch, get_plan, remove_fouriscale

__all__ = ["apply_fouriscale", "remove_fouriscale", "get_plan", "get_patch"]
