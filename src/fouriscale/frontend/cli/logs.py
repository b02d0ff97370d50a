"""What the command line prints besides its results: its warnings and the library's, as ``fouriscale: warning:``
lines, each once; the libraries' own chatter off."""

from __future__ import annotations

import logging
import os
import sys
import warnings

from diffusers.utils import logging as dlog
from transformers.utils import logging as tlog

__all__ = ["warn", "quiet_libraries", "CommandLog"]

_LIBRARIES = r"(diffusers|transformers|huggingface_hub|accelerate|peft|torch|torchmetrics|gradio)(\.|$)"
_LOGGER = logging.getLogger("fouriscale")


def warn(message: str) -> None:
    """A warning of the command, through the ``fouriscale`` logger (so that the library's own warning with the same
    text, e.g. far beyond the native size, is given once)."""
    _LOGGER.warning(message)


class CommandLog(logging.Handler):
    """The ``fouriscale`` logger's warnings as ``fouriscale: warning: ...`` lines on stderr, each text once per run."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.seen:
            self.seen.add(message)
            print(f"fouriscale: warning: {message}", file=sys.stderr)


def quiet_libraries() -> CommandLog:
    """Library chatter off: diffusers/transformers logs below errors, their deprecation and future warnings (by
    category and module, nothing else), Gradio's analytics unless asked for; a fresh :class:`CommandLog` on the
    ``fouriscale`` logger (returned)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=_LIBRARIES)
    for handler in [h for h in _LOGGER.handlers if isinstance(h, CommandLog)]:
        _LOGGER.removeHandler(handler)
    log = CommandLog()
    _LOGGER.addHandler(log)
    _LOGGER.propagate = False
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    return log
