"""The quality commands (frontend/quality.py, frontend/cli/quality.py), offline with the small feature network of
support/evaluation.py and the tiny CLIP of tests/conftest.py. ``fouriscale benchmark-quality``: every method generated
through the batch machinery and scored against ``--real`` and against direct inference; resumable; bad input refused
before any image is rendered. ``fouriscale eval``: its options, its feature-extractor hook, its errors as one line."""

import importlib
import json

import pytest
from PIL import Image

from fouriscale.evaluation import evaluate
from fouriscale.frontend.cli.quality import cmd_eval
from fouriscale.frontend.files import read_settings
from fouriscale.frontend.folder import Manifest
from fouriscale.frontend.loading import UserError
from fouriscale.frontend.quality import load_feature_extractor
from support.evaluation import Recorder, TinyFeatureNet, parse, smooth_images, tiny_feature_net
from support.frontend import cli, error_line, run_cli

# The eval tests ran under one torch thread (as all of tests/evaluation/ does).
pytestmark = pytest.mark.usefixtures("one_thread")

HOOK = ["--feature-extractor", "support.evaluation:tiny_feature_net"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-in")
    prompts = root / "prompts.txt"
    prompts.write_text("a red cat\nblue sky\n", encoding="utf-8")
    real = root / "real"
    real.mkdir()
    for i, array in enumerate(smooth_images(3, 64, seed=4)):
        Image.fromarray(array).save(real / f"{i}.png")
    return {"prompts": prompts, "real": real}


def _args(inputs, out, *extra):
    return [
        "benchmark-quality",
        "--prompts",
        inputs["prompts"],
        "--model",
        "tiny:sd1",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--n",
        "2",
        "--out",
        out,
        "--device",
        "cpu",
        "--no-progress",
        *HOOK,
        *extra,
    ]


def test_smoke_end_to_end_and_resume(inputs, tmp_path, capsys):
    out = tmp_path / "bench"
    args = _args(
        inputs,
        out,
        "--methods",
        "fouriscale,no-low-pass",
        "--real",
        inputs["real"],
        "--metrics",
        "fid,kid,is",
        "--crops",
        "1",
    )
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {
        "direct",
        "fouriscale",
        "no-low-pass",
        "benchmark.txt",
        "benchmark.json",
        "benchmark.png",
    }
    for method in ("direct", "fouriscale", "no-low-pass"):
        names = sorted(p.name for p in (out / method).glob("*.png"))
        assert len(names) == 2 and sorted(e["file"] for e in Manifest(out / method).entries()) == names
        settings = read_settings(out / method / names[0])
        assert settings["method"] == ("direct" if method == "direct" else "fouriscale")
        if method == "no-low-pass":
            assert settings["fouriscale"]["low_pass"] is False
    data = json.loads((out / "benchmark.json").read_text())  # strict JSON
    results = data["results"]
    assert list(results) == ["direct", "fouriscale", "no-low-pass"]
    assert set(results["fouriscale"]) == {"vs_real", "own", "vs_direct"} and "vs_direct" not in results["direct"]
    assert set(results["fouriscale"]["vs_real"]) == {"fid", "kid_mean", "kid_std", "fid_c", "kid_c_mean", "kid_c_std"}
    # the numbers are those of the evaluation API on the same folders
    from support.evaluation import TinyFeatureNet

    expected = evaluate(
        out / "direct",
        out / "fouriscale",
        feature_extractor=TinyFeatureNet(),
        metrics=["fid", "kid"],
        crops=1,
        crop_size=32,
        seed=23,
    )
    for name, value in expected.items():
        assert results["fouriscale"]["vs_direct"][name] == pytest.approx(value, rel=1e-5), name
    assert data["settings"]["crop_size"] == 32 and data["reports"]["fouriscale"]["vs_real"]["feature_extractor"]
    table = (out / "benchmark.txt").read_text()
    assert "fid (vs real)" in table and "fid (vs direct)" in table and "no-low-pass" in table
    assert Image.open(out / "benchmark.png").size[0] > 300
    assert cli(*args) == 0  # resumable (in this process): nothing rendered, same numbers
    assert capsys.readouterr().err.count("0 written, 2 already done") == 3
    assert json.loads((out / "benchmark.json").read_text())["results"] == results


def test_without_real_images_direct_is_the_reference(inputs, tmp_path, tiny_clip, capsys):  # noqa: F811
    out = tmp_path / "bench"
    assert cli(*_args(inputs, out, "--metrics", "fid,clip", "--clip-model", tiny_clip)) == 0
    results = json.loads((out / "benchmark.json").read_text())["results"]
    assert set(results["direct"]) == {"own"} and set(results["direct"]["own"]) == {"clip_score"}
    assert set(results["fouriscale"]) == {"own", "vs_direct"} and set(results["fouriscale"]["vs_direct"]) == {"fid"}
    assert "clip_score" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--n", "1"], "at least 2 images per method"),
        (["--methods", "direct,sharper"], "unknown sharper"),
        (["--metrics", "fid,psnr"], "unknown psnr"),
        (["--real", "/no/such/folder"], "does not exist"),
        (["--size", "0x0"], "positive multiple"),
        (["--guidance", "nan"], "finite number"),
    ],
)
def test_bad_input_is_refused_before_rendering(inputs, tmp_path, capsys, monkeypatch, extra, message):
    import fouriscale.frontend.batch as batch

    monkeypatch.setattr(batch, "render_images", lambda *a, **k: pytest.fail("rendered before refusing"))
    assert cli(*_args(inputs, tmp_path / "bench", *extra)) == 2
    assert message in error_line(capsys)


def test_metric_networks_are_checked_before_rendering(inputs, tmp_path, capsys, monkeypatch):
    """Issue 24: without the Inception weights every image was rendered, then the run stopped. Now the weights (and
    the CLIP model) are checked after the model's and the size's checks, before anything is loaded or rendered."""
    import torch
    import torchmetrics.image.fid as tm_fid

    import fouriscale.frontend.batch as batch
    import fouriscale.frontend.requests as requests

    monkeypatch.setattr(batch, "render_images", lambda *a, **k: pytest.fail("rendered before refusing"))
    monkeypatch.setattr(requests, "load_pipeline", lambda *a, **k: pytest.fail("loaded before refusing"))
    monkeypatch.setattr(tm_fid, "_TORCH_FIDELITY_AVAILABLE", True)  # torch-fidelity "installed", its weights not
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    args = [a for a in _args(inputs, tmp_path / "bench") if a not in HOOK]
    assert cli(*args, "--metrics", "fid") == 2
    assert "the Inception weights are not cached" in error_line(capsys)
    assert cli(*_args(inputs, tmp_path / "bench", "--metrics", "fid,clip")) == 2  # the default CLIP-L, not cached
    assert "CLIP model 'openai/clip-vit-large-patch14' is not in the local Hugging Face cache" in error_line(capsys)
    assert not (tmp_path / "bench").exists()


# ---------------------------------------------------------------------------------------------- fouriscale eval


def test_feature_extractor_hook_is_importable():
    assert importlib.import_module("support.evaluation").tiny_feature_net is tiny_feature_net
    assert isinstance(load_feature_extractor("support.evaluation:tiny_feature_net"), TinyFeatureNet)
    assert isinstance(load_feature_extractor("support.evaluation:Recorder"), Recorder)
    for spec, message in (
        ("nocolon", "MODULE:ATTR"),
        ("no_such_module_x:f", "cannot import"),
        ("support.evaluation:missing", "has no"),
        ("support.evaluation:N_IMAGES", "not a torch.nn.Module"),
    ):
        with pytest.raises(UserError, match=message):
            load_feature_extractor(spec)


def test_cli_end_to_end(sets, tmp_path, capsys):
    out = tmp_path / "scores.json"
    args = parse(
        "--real",
        sets["real"],
        "--fake",
        sets["blur2"],
        "--crops",
        2,
        "--crop-size",
        48,
        "--seed",
        3,
        "--json",
        out,
        "--feature-extractor",
        "support.evaluation:tiny_feature_net",
        "--device",
        "cpu",
        "--no-progress",
        "--batch-size",
        7,
    )
    assert args.clip_model == "openai/clip-vit-large-patch14" and args.kid_subset_size is None
    assert cmd_eval(args) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    expected = evaluate(
        sets["real"], sets["blur2"], crops=2, crop_size=48, seed=3, feature_extractor=TinyFeatureNet(), batch_size=7
    )
    assert (
        list(data["metrics"])
        == list(expected)
        == ["fid", "kid_mean", "kid_std", "fid_c", "kid_c_mean", "kid_c_std", "is_mean", "is_std"]
    )
    for name, value in expected.items():
        assert data["metrics"][name] == pytest.approx(value, rel=1e-6), name
        assert name in printed
    assert f"{expected['fid']:.6g}" in printed
    assert "note: clip_score skipped: no prompts" in printed
    assert data["report"]["seed"] == 3 and data["report"]["crop_size"] == 48 and data["report"]["batch_size"] == 7
    assert data["report"]["feature_extractor"] == "TinyFeatureNet"


def test_cli_errors_are_user_errors(sets, tmp_path):
    hook = ("--feature-extractor", "support.evaluation:tiny_feature_net", "--no-progress", "--device", "cpu")
    cases = [
        (("--real", tmp_path / "missing", "--fake", sets["real"]), "does not exist"),
        (("--real", sets["real"], "--fake", sets["real"], "--crops", 2), "needs a crop size"),
        (
            ("--real", sets["real"], "--fake", sets["real"], "--crops", 1, "--crop-size", 500),
            "smaller than the 500x500",
        ),
        (("--real", sets["real"], "--fake", sets["real"], "--metrics", "fid,psnr"), "choose from"),
        (("--real", sets["real"], "--fake", sets["real"], "--kid-subset-size", 100), "exceeds the image count"),
    ]
    for argv, message in cases:
        with pytest.raises(UserError, match=message) as info:
            cmd_eval(parse(*argv, *hook))
        assert "\n" not in str(info.value)
    with pytest.raises(SystemExit):
        parse("--real", sets["real"], "--fake", sets["real"], "--crops", -1)
    with pytest.raises(SystemExit):
        parse("--fake", sets["real"])
