"""FID, KID and IS (fouriscale/evaluation/metrics.py) with the real torchmetrics code, offline: a small seeded conv net
stands in for Inception."""

import numpy as np
import pytest
import torch

from fouriscale.evaluation import evaluate
from support.evaluation import N_IMAGES, ColourLogits, run, write_png


def test_identical_folders_score_zero(sets):
    metrics, _ = run(sets["real"], sets["copy"], crops=2, crop_size=48)
    blurred, _ = run(sets["real"], sets["blur4"], crops=2, crop_size=48)
    assert abs(metrics["fid"]) < 1e-3 and abs(metrics["fid_c"]) < 1e-3
    assert blurred["fid"] > 1.0 and blurred["fid_c"] > 1.0
    # KID's estimator (torchmetrics, as Binkowski et al.) is slightly negative for two identical sets: the cross
    # term keeps the pairs of an image with itself; its size shrinks as 1/n
    for name in ("kid_mean", "kid_c_mean"):
        assert metrics[name] <= 0 and abs(metrics[name]) < 0.25 * blurred[name], name


def test_blur_is_worse_monotonically_and_shift_is_worse(sets):
    fid = {name: run(sets["real"], sets[name])[0]["fid"] for name in ("copy", "blur1", "blur2", "blur4", "shift")}
    assert fid["copy"] < fid["blur1"] < fid["blur2"] < fid["blur4"]
    assert fid["shift"] > 100 * max(fid["copy"], 1e-6) and fid["shift"] > 0.5
    kid = {name: run(sets["real"], sets[name])[0]["kid_mean"] for name in ("blur2", "blur4")}
    assert kid["blur2"] < kid["blur4"]


def test_other_images_from_the_same_distribution_score_better_than_blur(sets):
    same_kind = run(sets["real"], sets["other"])[0]["fid"]
    assert 0 < same_kind < run(sets["real"], sets["blur4"])[0]["fid"]


def test_deterministic_and_batch_size_independent(sets):
    a, _ = run(sets["real"], sets["blur2"], crops=2, crop_size=48, batch_size=64)
    b, _ = run(sets["real"], sets["blur2"], crops=2, crop_size=48, batch_size=64)
    assert a == b
    c, _ = run(sets["real"], sets["blur2"], crops=2, crop_size=48, batch_size=5)
    for name in a:
        assert c[name] == pytest.approx(a[name], rel=1e-4, abs=1e-6), name
    d, _ = run(sets["real"], sets["blur2"], crops=2, crop_size=48, seed=1)
    assert d["fid"] == pytest.approx(a["fid"], rel=1e-6)  # whole-image FID does not depend on the seed
    assert d["fid_c"] != pytest.approx(a["fid_c"], rel=1e-3)  # other crop positions


def test_crop_metrics_only_with_crops(sets):
    without, report = run(sets["real"], sets["blur2"])
    assert list(without) == ["fid", "kid_mean", "kid_std", "is_mean", "is_std"]
    assert report["crop_size"] is None and report["crops_real"] == 0
    with_crops, report = run(sets["real"], sets["blur2"], crops=3, crop_size=64)
    assert list(with_crops) == ["fid", "kid_mean", "kid_std", "fid_c", "kid_c_mean", "kid_c_std", "is_mean", "is_std"]
    assert report["crops_real"] == report["crops_fake"] == 3 * N_IMAGES
    assert report["kid_c_subset_size"] == 3 * N_IMAGES and report["kid_subset_size"] == N_IMAGES
    only_fid, _ = run(sets["real"], sets["blur2"], crops=1, crop_size=64, metrics=["fid"])
    assert list(only_fid) == ["fid", "fid_c"]


def test_same_boxes_for_every_method(sets):
    """Real and fake folders of the same sizes get the same crops: a copy scores 0 whatever the seed."""
    for seed in (0, 11):
        metrics, _ = run(sets["real"], sets["copy"], crops=4, crop_size=40, seed=seed, metrics=["fid"])
        assert abs(metrics["fid_c"]) < 1e-3


def test_inception_score_uses_custom_outputs_as_logits(tmp_path):
    real, diverse, single = tmp_path / "real", tmp_path / "diverse", tmp_path / "single"
    for folder in (real, diverse, single):
        folder.mkdir()
    colours = np.eye(3, dtype=np.uint8) * 255
    for i in range(30):
        write_png(diverse / f"{i:02d}.png", np.broadcast_to(colours[i % 3], (24, 24, 3)).copy())
        write_png(single / f"{i:02d}.png", np.broadcast_to(colours[0], (24, 24, 3)).copy())
        write_png(real / f"{i:02d}.png", np.full((24, 24, 3), 7 * i, dtype=np.uint8))
    net = ColourLogits()
    spread = evaluate(real, diverse, feature_extractor=net, metrics=["is"])
    same = evaluate(real, single, feature_extractor=net, metrics=["is"])
    assert set(spread) == {"is_mean", "is_std"}
    assert 1.5 < spread["is_mean"] <= 3.0
    assert same["is_mean"] == pytest.approx(1.0, abs=1e-6)
    # the module got floats in [0, 1] at its input size (not bytes)
    assert {s[0] for s in net.seen} == {torch.float32} and {s[3] for s in net.seen} == {(16, 16)}
    assert min(s[1] for s in net.seen) == 0.0 and max(s[2] for s in net.seen) == 1.0
