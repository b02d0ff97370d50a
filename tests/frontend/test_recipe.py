"""What one image is made from (frontend/recipe.py): seeds and jobs."""

import pytest

from fouriscale.frontend.errors import UserError
from fouriscale.frontend.recipe import make_jobs, parse_seeds


def test_parse_seeds():
    assert parse_seeds("23") == [23] and parse_seeds("1,5-7") == [1, 5, 6, 7]
    assert parse_seeds(str(2**64 - 1)) == [2**64 - 1]
    for text, message in (
        ("2**64", "expected a seed"),
        (str(2**64), "largest seed"),
        ("0-100000", "too long"),
        ("5-1", "backwards"),
        ("-3", "expected a seed"),
        ("", "expected a seed"),
    ):
        with pytest.raises(UserError, match=message):
            parse_seeds(text)
    assert [(j.index, j.prompt, j.seed) for j in make_jobs(["a", "b"], [1, 2])] == [
        (0, "a", 1),
        (1, "a", 2),
        (2, "b", 1),
        (3, "b", 2),
    ]
