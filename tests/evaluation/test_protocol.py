"""The fixed settings of the evaluation (fouriscale/evaluation/protocol.py)."""

from fouriscale.evaluation import METRIC_NAMES


def test_metric_names_are_the_documented_ones():
    assert METRIC_NAMES == (
        "fid",
        "kid_mean",
        "kid_std",
        "fid_c",
        "kid_c_mean",
        "kid_c_std",
        "is_mean",
        "is_std",
        "clip_score",
    )
