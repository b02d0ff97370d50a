"""The command line's dispatch: parse the arguments, run the command, turn what went wrong into one line and an exit
status (0 done, 2 a mistake the user can fix, 1 a bug, 130 interrupted). ``--debug`` adds the traceback (and library
logs) to what is printed; the exit status stays the same."""

from __future__ import annotations

import logging
import os
import sys
import traceback

from ..errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError, one_line
from .commands import cmd_comfyui, cmd_compare, cmd_generate, cmd_plan, cmd_ui, cmd_upscale
from .logs import quiet_libraries
from .parser import build_parser
from .quality import cmd_benchmark_quality, cmd_eval

__all__ = ["run", "build_parser", "COMMANDS", "INTERRUPTED"]

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

#: The line an interrupt prints, by command (others: "fouriscale: interrupted").
_RESUMABLE = "fouriscale: interrupted; finished images are kept, rerun the same command to resume"
INTERRUPTED = {
    "generate": _RESUMABLE,
    "upscale": _RESUMABLE,
    "compare": _RESUMABLE,
    "benchmark-quality": _RESUMABLE,
    "ui": "fouriscale: interrupted; the web UI stopped (its images are in its output folder)",
}


def run(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 done, 2 user mistake, 1 bug, 130 interrupted)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or an argument error already printed as one line
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    if args.debug:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        quiet_libraries()
    return _run_command(args)


def _run_command(args) -> int:
    """The command, its failures as one line each (with the traceback before it under ``--debug``)."""
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        return _failed(args, f"fouriscale: error: {one_line(exc, 1000)}", EXIT_USER_ERROR)
    except KeyboardInterrupt:
        return _failed(args, INTERRUPTED.get(args.command, "fouriscale: interrupted"), EXIT_INTERRUPTED)
    except Exception as exc:  # a bug: still one line unless --debug
        line = f"fouriscale: error: {type(exc).__name__}: {one_line(exc)} (a bug; rerun with --debug and report it)"
        return _failed(args, line, EXIT_BUG)


def _failed(args, line: str, status: int) -> int:
    if args.debug:
        traceback.print_exc()
    print(line, file=sys.stderr)
    return status
