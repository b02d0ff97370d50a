"""The front ends' one error type and the helpers that turn other errors into it.

A :class:`UserError` is a mistake the user can fix: the CLI prints its message as one line and exits with
status 2, the web UI shows it in the page. Anything else is a bug (CLI exit status 1).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

from ..errors import SettingError, one_line
from .fields import CLI_NAMES

__all__ = [
    "UserError",
    "EXIT_USER_ERROR",
    "EXIT_BUG",
    "EXIT_INTERRUPTED",
    "user_errors",
    "one_line",
    "captured_logs",
]

EXIT_USER_ERROR = 2
EXIT_BUG = 1
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake the user can fix; front ends show its message as one line."""


@contextlib.contextmanager
def user_errors(prefix: str = "", labels: Mapping = CLI_NAMES):
    """Turn the library's ``TypeError``/``ValueError`` (bad values, sizes the model cannot take) raised inside
    the block into a :class:`UserError` with the same message, optionally prefixed (e.g. ``"--size 0x0: "``); a
    :class:`~fouriscale.errors.SettingError`'s remedy is worded with ``labels`` (default: the CLI's options)."""
    try:
        yield
    except SettingError as exc:
        raise UserError(prefix + one_line(exc.worded(labels), 600)) from None
    except (TypeError, ValueError) as exc:
        raise UserError(prefix + one_line(exc, 600)) from None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:  # pragma: no cover - a malformed record is not worth a crash
            pass


@contextlib.contextmanager
def captured_logs(*names: str, level: int = logging.WARNING):
    """Keep the records of the named loggers (default: diffusers, transformers, peft) at ``level`` and above
    from being printed inside the block; yields the list their messages are collected in."""
    names = names or ("diffusers", "transformers", "peft")
    handler = _Collect()
    handler.setLevel(level)
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate, logger.level))
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(level)
    try:
        yield handler.messages
    finally:
        for logger, handlers, propagate, previous in saved:
            logger.handlers = handlers
            logger.propagate = propagate
            logger.setLevel(previous)
