"""What runs inside one model call, the same for every host (layer 3, shared): the branch layout
(:mod:`.layout`), the state of a pass (:mod:`.state`) and the per-layer operations (:mod:`.ops`).

Nothing here imports diffusers or ComfyUI; :mod:`fouriscale.diffusers` and :mod:`fouriscale.comfyui` plug these
pieces into their host's own extension points.
"""
