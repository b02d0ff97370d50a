"""Error text shared by the library and its front ends: the one formatter of a message as one line."""

from __future__ import annotations

import re

__all__ = ["one_line"]


def one_line(text: object, limit: int = 300, *, first_line: bool = False, with_type: bool = False) -> str:
    """``text`` (or an exception's message) as one line of at most ``limit`` characters, cut at a word boundary
    with an ellipsis when longer. An exception with an empty message gives its type name; ``with_type`` puts the
    type before any exception's message (``"OSError: ..."``); ``first_line`` keeps the message's first line only."""
    message = str(text).strip()
    if first_line:
        message = (message.splitlines() or [""])[0]
    if isinstance(text, BaseException):
        name = type(text).__name__
        message = f"{name}: {message}" if with_type and message else (message or name)
    message = re.sub(r"\s+", " ", message)
    if len(message) <= limit:
        return message
    cut = message[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:(") + "…"
