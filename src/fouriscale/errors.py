"""Errors and error text shared by the library and its front ends: :class:`SettingError`, a value the library
cannot take with the setting it belongs to as data, and the one formatter of a message as one line."""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["SettingError", "API_NAMES", "one_line"]

#: How the Python API names the settings a :class:`SettingError`'s remedy points to (front ends have their own).
API_NAMES = {"base_size": "base_size=(h, w)", "size_limit": "size_limit=False"}


class SettingError(ValueError):
    """A value FouriScale cannot take: ``setting`` names what it belongs to (a :class:`~fouriscale.FouriScaleConfig`
    field, or ``height``, ``width``, ``size``, ``num_inference_steps``), ``value`` is what was given and ``bound`` what
    is allowed (data, for front ends); ``problem`` says what is wrong in words that name no option. ``remedy`` is
    another way out through the setting ``remedy_setting`` (``"lift the limit"`` through ``size_limit``), worded with
    each front end's name for it, or left out where a front end has none."""

    def __init__(
        self,
        setting: str,
        problem: str,
        *,
        value=None,
        bound=None,
        remedy: str | None = None,
        remedy_setting: str | None = None,
        names: Mapping[str, str | None] = API_NAMES,
    ) -> None:
        self.setting, self.problem, self.value, self.bound = setting, problem, value, bound
        self.remedy, self.remedy_setting = remedy, remedy_setting
        super().__init__(self.worded(names))

    def reworded(self, names: Mapping[str, str | None]) -> SettingError:
        """The same error, its message worded with ``names`` (for a front end that shows it as it is)."""
        data = dict(value=self.value, bound=self.bound, remedy=self.remedy, remedy_setting=self.remedy_setting)
        return SettingError(self.setting, self.problem, **data, names=names)

    def worded(self, names: Mapping[str, str | None]) -> str:
        """The message with the remedy's setting named by ``names`` (setting -> name; a missing name drops the
        remedy)."""
        name = names.get(self.remedy_setting) if self.remedy_setting else None
        return f"{self.problem}, or {self.remedy} ({name})" if self.remedy and name else self.problem


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
