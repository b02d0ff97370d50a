"""The report (fouriscale/evaluation/report.py): every protocol setting, the table, strict and atomic JSON."""

import json
import os

import numpy as np
import pytest
import torch

from fouriscale.evaluation import PROTOCOL, format_table, write_json
from support.evaluation import N_IMAGES, run


def test_report_holds_the_protocol(sets):
    metrics, report = run(sets["real"], sets["blur1"], crops=2, crop_size=48, seed=5, kid_subset_size=20)
    assert report["images_real"] == report["images_fake"] == N_IMAGES
    assert report["real"] == str(sets["real"]) and report["fake"] == str(sets["blur1"])
    assert report["seed"] == 5 and report["crops_per_image"] == 2 and report["crop_size"] == 48
    assert report["crops_fake"] == 2 * N_IMAGES and report["kid_subset_size"] == report["kid_c_subset_size"] == 20
    assert report["feature_extractor"] == "TinyFeatureNet" and report["feature_dim"] == 16
    assert report["metric_input_size"] == [64, 64] and "aspect ratio not preserved" in report["resize"]
    assert report["protocol"] == PROTOCOL and report["kid_subsets"] == 100 and report["is_splits"] == 10
    assert report["metrics"] == list(metrics) and report["device"] == "cpu" and report["dtype"] == "float32"
    versions = report["versions"]
    import torchmetrics

    import fouriscale

    assert versions["torchmetrics"] == torchmetrics.__version__ and versions["torch"] == torch.__version__
    assert versions["fouriscale"] == fouriscale.__version__ and versions["transformers"]
    assert "torch-fidelity" in versions
    assert any("kid subset size 20" in n for n in report["notes"])
    assert any("not comparable with Inception IS" in n for n in report["notes"])
    listed = run(
        [str(p) for p in sorted(sets["real"].iterdir())],
        sets["blur1"],
        crops=2,
        crop_size=48,
        seed=5,
        kid_subset_size=20,
    )
    assert listed[1]["real"] == f"list of {N_IMAGES} files" and listed[0] == metrics


def test_write_json_is_strict_and_atomic(tmp_path, monkeypatch):
    out = tmp_path / "deep" / "scores.json"
    metrics = {"fid": 12.5, "kid_mean": float("nan"), "is_mean": float("inf")}
    report = {"seed": 0, "notes": ["kept"], "nested": {"x": float("-inf")}, "size": (64, 64)}
    write_json(out, metrics, report)

    def refuse(token):
        raise AssertionError(f"non-strict JSON: {token}")

    data = json.loads(out.read_text(), parse_constant=refuse)
    assert data["metrics"] == {"fid": 12.5, "kid_mean": None, "is_mean": None}
    assert data["report"]["nested"] == {"x": None} and data["report"]["size"] == [64, 64]
    notes = data["report"]["notes"]
    assert notes[0] == "kept" and any("kid_mean was nan" in n for n in notes) and any("nested.x" in n for n in notes)
    assert os.listdir(out.parent) == ["scores.json"]
    assert report["notes"] == ["kept"] and np.isnan(metrics["kid_mean"])  # inputs untouched

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json(out, {"fid": 1.0}, {"notes": []})
    assert os.listdir(out.parent) == ["scores.json"]  # no temp file left, old file intact
    assert json.loads(out.read_text())["metrics"]["fid"] == 12.5


def test_format_table():
    table = format_table({"fid": 12.3456789, "kid_mean": 0.00123456, "clip_score": float("nan"), "is_std": None})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value", "better"] and set(lines[1]) == {"-"}
    assert lines[2].split() == ["fid", "12.3457", "lower"]
    assert lines[3].split() == ["kid_mean", "0.00123456", "lower"]
    assert lines[4].split() == ["clip_score", "nan", "higher"]
    assert lines[5].split() == ["is_std", "-"]
    values = [line.index(line.split()[1]) + len(line.split()[1]) for line in lines[2:]]
    assert len(set(values)) == 1  # right-aligned column
