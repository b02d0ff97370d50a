"""The networks (fouriscale/evaluation/networks.py): a custom feature extractor, CLIP prompts cut at 77 tokens, and
every way Inception or CLIP can be unavailable (no torch-fidelity, a torchvision for another torch, weights not
cached or unreachable, an unreachable hub) as one actionable line, before any network is loaded, with no network
access."""

import importlib
import importlib.util
import time
import urllib.error

import pytest
import torch

from fouriscale.evaluation import MetricUnavailableError, evaluate
from fouriscale.frontend.cli.quality import cmd_eval
from fouriscale.frontend.loading import UserError
from support.evaluation import TinyFeatureNet, clip_run, guard_network, parse, tiny_folder


def test_feature_extractor_with_wrong_output_shape(tmp_path):
    good = tiny_folder(tmp_path, "good", 3)
    with pytest.raises(ValueError, match=r"\(N, D\) features"):
        evaluate(good, good, feature_extractor=torch.nn.Identity(), metrics=["fid"])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        evaluate(good, good, feature_extractor=lambda x: x, metrics=["fid"])


def test_long_prompts_are_truncated_keeping_the_end_token(clip_sets, tiny_clip):
    head = "abcdefghij" * 8  # 80 character tokens > 77
    a, b, c = head + "xyz", head + "qqqqqqqq", "zyxwvutsrq" * 8
    scores = [clip_run(clip_sets, "plain", tiny_clip, prompts=lambda p, t=t: t) for t in (a, b, c)]
    assert scores[0][0]["clip_score"] == pytest.approx(scores[1][0]["clip_score"], rel=1e-6)  # same first 77 tokens
    assert abs(scores[0][0]["clip_score"] - scores[2][0]["clip_score"]) > 1e-3  # not all pooled at one position
    assert any("4 prompt(s) longer than 77 tokens were truncated" in n for n in scores[0][1]["notes"])


def test_clip_model_unavailable_is_one_line(clip_sets, tmp_path, monkeypatch):
    attempts = guard_network(monkeypatch)
    with pytest.raises(MetricUnavailableError, match="CLIP model .*no-such-clip': no such folder") as info:
        clip_run(clip_sets, "embedded", str(tmp_path / "no-such-clip"))
    assert "\n" not in str(info.value) and attempts == []
    with pytest.raises(MetricUnavailableError, match="not in the local Hugging Face cache and the Hub is offline"):
        clip_run(clip_sets, "embedded", "someone/not-cached-clip")
    assert attempts == []


def test_clip_model_behind_an_unreachable_hub_fails_at_once(clip_sets, monkeypatch):
    """Issue 24: without HF_HUB_OFFLINE and without a network the CLIP look-up retried for 46 s; now one connection
    test, then one line."""
    from huggingface_hub import constants

    attempts = guard_network(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    with pytest.raises(MetricUnavailableError, match="not in the local Hugging Face cache and cannot reach http://127"):
        clip_run(clip_sets, "embedded", "someone/not-cached-clip")
    assert attempts == [("127.0.0.1", 9)] and time.monotonic() - start < 10  # one connection test, no retries


def test_a_torchvision_for_another_torch_is_one_actionable_line(tmp_path, monkeypatch):
    """A torchvision wheel built for another torch breaks torch-fidelity's import (and so torchmetrics' FID module):
    one line naming the fix, with Inception and with a custom feature network alike, instead of a traceback."""
    import sys

    import torchmetrics.image

    good = tiny_folder(tmp_path, "good", 3)
    monkeypatch.delattr(torchmetrics.image, "fid")
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", None)  # its import now fails
    for extra in ({}, {"feature_extractor": TinyFeatureNet()}):
        with pytest.raises(MetricUnavailableError, match="torchvision built for the installed torch") as info:
            evaluate(good, good, metrics=["fid"], **extra)
        assert "\n" not in str(info.value) and "--index-url" in str(info.value)


def test_inception_weights_are_checked_before_any_network_is_loaded(tmp_path, monkeypatch):
    """torch-fidelity there, its weights not cached and downloads off: one line before any network is loaded."""
    import torchmetrics.image.fid as tm_fid

    import fouriscale.evaluation.run as run_module

    good = tiny_folder(tmp_path, "good", 3)
    attempts = guard_network(monkeypatch)
    monkeypatch.setattr(tm_fid, "_TORCH_FIDELITY_AVAILABLE", True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(run_module, "load_networks", lambda *a: pytest.fail("loaded a network"))
    with pytest.raises(MetricUnavailableError, match="the Inception weights are not cached .* downloads are off"):
        evaluate(good, good, metrics=["fid"])
    assert attempts == []
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)  # cached: no complaint (the loading itself is stubbed)
    (tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth").write_bytes(b"x")
    with pytest.raises(pytest.fail.Exception, match="loaded a network"):
        evaluate(good, good, metrics=["fid"])


def test_inception_without_torch_fidelity_is_one_actionable_line(tmp_path, monkeypatch):
    import torchmetrics.image.fid as tm_fid

    good = tiny_folder(tmp_path, "good", 3)
    attempts = guard_network(monkeypatch)
    monkeypatch.setattr(tm_fid, "_TORCH_FIDELITY_AVAILABLE", False)
    start = time.monotonic()
    with pytest.raises(MetricUnavailableError, match="torch-fidelity package is not installed") as info:
        evaluate(good, good)
    message = str(info.value)
    assert "\n" not in message and "fouriscale[eval]" in message and "feature_extractor" in message
    assert time.monotonic() - start < 10 and attempts == []
    with pytest.raises(UserError, match="torch-fidelity"):
        cmd_eval(parse("--real", good, "--fake", good, "--no-progress", "--device", "cpu", "--metrics", "fid"))
    # CLIP alone does not need Inception: no error about it, only about the missing prompts
    with pytest.raises(ValueError, match="no fake image has a prompt"):
        evaluate(good, good, metrics=["clip"])


def test_inception_weights_unreachable_is_one_actionable_line(tmp_path, monkeypatch):
    import torchmetrics.image.fid as tm_fid

    good = tiny_folder(tmp_path, "good", 3)
    attempts = guard_network(monkeypatch)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tm_fid, "_TORCH_FIDELITY_AVAILABLE", True)
    monkeypatch.setattr(tm_fid, "NoTrainInceptionV3", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # "cached", yet failing to load
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth").write_bytes(b"x")
    with pytest.raises(MetricUnavailableError, match="Inception weights could not be loaded .*URLError") as info:
        evaluate(good, good, metrics=["kid"])
    assert "\n" not in str(info.value) and "run once with network access" in str(info.value) and attempts == []


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed here")
def test_inception_in_this_environment_fails_fast(tmp_path, monkeypatch):
    good = tiny_folder(tmp_path, "good", 3)
    attempts = guard_network(monkeypatch)
    start = time.monotonic()
    with pytest.raises(MetricUnavailableError, match="pip install 'fouriscale\\[eval\\]'"):
        evaluate(good, good, metrics=["fid", "kid", "is"])
    assert time.monotonic() - start < 10 and attempts == []
