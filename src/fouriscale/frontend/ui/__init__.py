"""``fouriscale ui``: the web UI (Gradio). :mod:`.studio` does the work (one kept model, requests through the request
path), :mod:`.app` lays out the page and serves it."""

from .app import QUEUE_SIZE, build_app, check_address, launch
from .studio import CUSTOM, NATIVE, SIZE_CHOICES, Studio

__all__ = ["Studio", "build_app", "launch", "check_address", "SIZE_CHOICES", "NATIVE", "CUSTOM", "QUEUE_SIZE"]
