"""The ``fouriscale`` command: ``generate`` images (from text, or from pictures: img2img, inpainting, ControlNet,
two-pass), ``upscale`` pictures, show the ``plan`` for a size, ``compare`` variants, start the ``ui``, score images
with ``eval``, run ``benchmark-quality`` and install the ``comfyui`` node pack.

Every user mistake ends in one line on stderr and exit status 2, checked before any rendering where it can be;
exit status 1 means a bug, 130 an interrupt (at any moment, start-up included: one line). ``--debug`` (before or
after the sub-command) adds tracebacks and library logs to what is printed, never changing the exit status.
:mod:`.parser` declares the options, :mod:`.dispatch` runs them, :mod:`.commands` and :mod:`.quality` are the
commands.

This module is light on purpose: :func:`main` imports the commands (torch, diffusers: seconds) with an interrupt
handler of its own in place, so that Ctrl-C during start-up is answered like Ctrl-C later.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

__all__ = ["main", "build_parser", "COMMANDS"]

_EXIT_INTERRUPTED = 130  # frontend.errors.EXIT_INTERRUPTED, without importing anything before the handler is in place
_INTERRUPTED = "fouriscale: interrupted\n"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 done, 2 user mistake, 1 bug, 130 interrupted)."""
    with _start_up():
        from .dispatch import run
    try:
        return run(argv)
    except KeyboardInterrupt:  # outside a command (parsing the arguments)
        sys.stderr.write(_INTERRUPTED)
        return _EXIT_INTERRUPTED


@contextlib.contextmanager
def _start_up():
    """While the commands are imported (torch, diffusers: seconds), Ctrl+C prints one line and ends the process with
    status 130 at once: nothing has been written yet, and a KeyboardInterrupt raised inside the libraries' imports
    (some run code through ``exec``) can make Python end by the signal after all, whatever ``main`` returns. Only
    where Python's own handler is in place (not under a host that set its own, nor where SIGINT is ignored)."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous = signal.signal(signal.SIGINT, _exit_interrupted)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _exit_interrupted(signum, frame) -> None:
    sys.stderr.write(_INTERRUPTED)
    sys.stderr.flush()
    os._exit(_EXIT_INTERRUPTED)


def __getattr__(name: str):
    """``COMMANDS`` and ``build_parser``, from :mod:`.dispatch` (imported on first use)."""
    if name in ("COMMANDS", "build_parser"):
        from . import dispatch

        return getattr(dispatch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
