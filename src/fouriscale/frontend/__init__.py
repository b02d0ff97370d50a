"""Front ends (layer 4): the ``fouriscale`` command, the web UI and comparison pictures.

They use the public API (``apply_fouriscale``, ``get_plan``, ...) and share model loading
(:mod:`.loading`), output files (:mod:`.outputs`) and batch runs (:mod:`.jobs`).
"""
