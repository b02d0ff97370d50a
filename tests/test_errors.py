"""Errors shared by the library and its front ends (fouriscale/errors.py): a :class:`SettingError` names its setting,
value and bound and is worded by each front end; ``one_line`` keeps messages to one line."""

import pytest

import fouriscale
from fouriscale.frontend.errors import one_line


def test_setting_errors_carry_their_setting_and_are_worded_by_each_front_end(sd_pipe):
    """A value the library cannot take names its setting, the value and the bound as data; the remedy through
    another setting is worded with the API's, the CLI's or no name (the web UI has no such field)."""
    from fouriscale.config import MAX_PIXELS, MAX_SIDE
    from fouriscale.errors import SettingError
    from fouriscale.frontend.errors import UserError, user_errors
    from fouriscale.frontend.fields import UI_NAMES

    with pytest.raises(SettingError) as info:
        fouriscale.get_plan(sd_pipe, 8, 20000)
    error = info.value
    assert (error.setting, error.value, error.bound) == ("size", (8, 20000), (MAX_SIDE, MAX_PIXELS))
    assert str(error).endswith("choose a smaller size, or lift the limit (size_limit=False)")
    worded = {}
    for front, labels in (("cli", None), ("ui", UI_NAMES)):
        with pytest.raises(UserError) as info, user_errors(**({"labels": labels} if labels else {})):
            raise error
        worded[front] = str(info.value)
    assert worded["cli"].endswith("or lift the limit (--no-size-limit)")
    assert worded["ui"].endswith("choose a smaller size") and worded["ui"] in str(error)
    with pytest.raises(SettingError) as info:
        fouriscale.FouriScaleConfig(dilation=99)
    assert (info.value.setting, info.value.value) == ("dilation", 99) and isinstance(info.value, ValueError)
    with pytest.raises(SettingError) as info:
        fouriscale.get_plan(sd_pipe, 64, 64, 2, stop_step=5)
    assert (info.value.setting, info.value.value, info.value.bound) == ("stop_step", 5, (0, 2))


def test_one_line_cuts_at_a_word_boundary():
    text = "could not reach the hub because " + "the network is down " * 30
    line = one_line(text, 100)
    assert len(line) <= 100 and line.endswith("…") and line[:-1].split()[-1] in text.split()
    assert one_line("a\n  b\tc") == "a b c" and one_line(ValueError()) == "ValueError"
