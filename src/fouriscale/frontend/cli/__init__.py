"""The ``fouriscale`` command: ``generate`` images (from text, or from pictures: img2img, inpainting, ControlNet,
two-pass), ``upscale`` pictures, show the ``plan`` for a size, ``compare`` variants, start the ``ui``, score images
with ``eval``, run ``benchmark-quality`` and install the ``comfyui`` node pack.

Every user mistake ends in one line on stderr and exit status 2, checked before any rendering where it can be;
exit status 1 means a bug. ``--debug`` (before or after the sub-command) shows tracebacks and library logs.
:mod:`.parser` declares the options, :mod:`.commands` and :mod:`.quality` run the commands.
"""

from __future__ import annotations

import logging
import os
import sys

from ..errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError, one_line
from .commands import cmd_comfyui, cmd_compare, cmd_generate, cmd_plan, cmd_ui, cmd_upscale
from .logs import quiet_libraries
from .parser import build_parser
from .quality import cmd_benchmark_quality, cmd_eval

__all__ = ["main", "build_parser", "COMMANDS"]

COMMANDS = {
    "generate": cmd_generate,
    "upscale": cmd_upscale,
    "plan": cmd_plan,
    "compare": cmd_compare,
    "ui": cmd_ui,
    "eval": cmd_eval,
    "benchmark-quality": cmd_benchmark_quality,
    "comfyui": cmd_comfyui,
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 done, 2 user mistake, 1 bug, 130 interrupted)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or an argument error already printed as one line
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    if args.debug:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"fouriscale: error: {one_line(exc, 1000)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fouriscale: interrupted; finished images are kept, rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: still one line unless --debug
        if args.debug:
            raise
        print(
            f"fouriscale: error: {type(exc).__name__}: {one_line(exc)} (a bug; rerun with --debug and report it)",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
