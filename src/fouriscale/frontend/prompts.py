"""The prompts of a batch: one given on the command line, or a prompts file (one prompt per line; a line
``PROMPT<TAB>PICTURE`` gives that prompt its own init image, its path relative to the file's folder)."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError, one_line
from .pictures import Picture, read_picture

__all__ = ["read_prompts", "prompt_lines", "line_picture"]


def _lines(prompts_file: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of the file's non-empty lines."""
    try:
        with open(prompts_file, encoding="utf-8") as fh:
            lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(fh, 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or one_line(exc, 120)
        raise UserError(f"--prompts {prompts_file}: cannot read it ({reason})") from None
    if not lines:
        raise UserError(f"--prompts {prompts_file}: the file holds no prompt")
    return lines


def read_prompts(prompt: str | None, prompts_file: str | None) -> list[str]:
    """The prompts of a PROMPT argument or a prompts file (one per line, stripped), not both."""
    if prompt is not None and prompts_file:
        raise UserError("give a PROMPT or --prompts FILE, not both")
    if prompts_file:
        return [line.strip() for _, line in _lines(prompts_file)]
    if prompt is None or not prompt.strip():
        raise UserError("no prompt: give one as an argument or use --prompts FILE")
    return [prompt]


def prompt_lines(prompt: str | None, prompts_file: str | None) -> tuple[list[str], list[Picture | None]]:
    """``(prompts, pictures)`` of a PROMPT argument or a prompts file whose lines may read PROMPT<TAB>PICTURE (every
    picture checked now)."""
    if not prompts_file:
        return read_prompts(prompt, prompts_file), [None]
    if prompt is not None:
        raise UserError("give a PROMPT or --prompts FILE, not both")
    pairs = [line_picture(line, n, prompts_file) for n, line in _lines(prompts_file)]
    return [p for p, _ in pairs], [picture for _, picture in pairs]


def line_picture(line: str, number: int, prompts_file: str) -> tuple[str, Picture | None]:
    """A prompts-file line ``PROMPT`` or ``PROMPT<TAB>PICTURE`` -> ``(prompt, picture or None)``; the picture's path
    is relative to the prompts file's folder."""
    prompt, tab, path = line.rpartition("\t")
    if not tab:
        return line.strip(), None
    path = path.strip()
    if not path:
        return prompt.strip(), None
    if not prompt.strip():
        raise UserError(f"--prompts {prompts_file} line {number}: a picture without a prompt")
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = Path(prompts_file).expanduser().parent / resolved
    return prompt.strip(), read_picture(str(resolved), f"--prompts line {number}:")
