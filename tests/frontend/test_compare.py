"""Comparison pictures (frontend/compare.py): the grid's layout and its bounds, the spectrum plot, the variants
(each equal to a render through the public API), and the ``compare`` command (subprocess smoke test, resume,
refusals before rendering)."""

import numpy as np
import pytest
from PIL import Image

import fouriscale
from fouriscale.frontend.compare import (
    LABEL_H,
    PAD,
    VARIANTS,
    check_layout,
    comparison_grid,
    radial_power_spectrum,
    render_variants,
    spectrum_plot,
    variant_config,
)
from fouriscale.frontend.files import compare_name, read_settings
from fouriscale.frontend.folder import Manifest
from fouriscale.testing import tiny_pipeline
from support.frontend import FAST, IDLE_LOW_PASS, api_render, cli, close, error_line, pixels, run_cli


def _image(seed, smooth=False, size=(96, 64)):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3)).astype(np.uint8))
    if smooth:
        image = image.resize((size[0] // 8, size[1] // 8), Image.BILINEAR).resize(size, Image.BICUBIC)
    return image


@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline("sd1")
    p.set_progress_bar_config(disable=True)
    return p


def test_radial_spectrum_sees_detail():
    freq_n, noise = radial_power_spectrum(_image(0))
    freq_s, smooth = radial_power_spectrum(_image(0, smooth=True))
    assert freq_n[0] > 0 and freq_n[-1] <= 0.5 and np.all(np.diff(freq_n) > 0)
    high = freq_s > 0.3
    assert noise[high].mean() > smooth[high].mean() + 1  # ten times more high-frequency power


def test_grid_layout_and_size():
    images = {"direct": _image(1), "fouriscale": _image(2), "no-low-pass": _image(3)}
    grid = comparison_grid(images, column_width=48)
    thumb_h = round(64 * 48 / 96)
    assert grid.size == (3 * 48 + 4 * PAD, PAD + LABEL_H + thumb_h + PAD + 48 + PAD)
    assert grid.size == check_layout((96, 64), 3, 48)
    # the crop is at full resolution: the centre 48x48 of the second image, pixel for pixel
    x, y = PAD + 48 + PAD, PAD + LABEL_H + thumb_h + PAD
    crop = grid.crop((x, y, x + 48, y + 48))
    assert np.array_equal(np.asarray(crop), np.asarray(images["fouriscale"].crop((24, 8, 72, 56))))
    custom = comparison_grid(images, column_width=48, crop=(0, 0, 20, 20))
    assert custom.size == (3 * 48 + 4 * PAD, PAD + LABEL_H + thumb_h + PAD + 20 + PAD)
    with pytest.raises(ValueError, match="same size"):
        comparison_grid({"a": _image(1), "b": _image(2, size=(64, 64))})


@pytest.mark.parametrize(
    "size, count, width, crop, message",
    [
        ((96, 64), 3, 100000, None, "16 to 2048 pixels"),
        ((96, 64), 3, 8, None, "16 to 2048 pixels"),
        ((96, 64), 3, 48, (90, 0, 110, 20), "inside the 96x64 image"),
        ((96, 64), 3, 48, (-1, 0, 10, 10), "inside"),
        ((16384, 16384), 8, 2048, None, "above 64 MP"),
    ],
)
def test_layout_is_bounded(size, count, width, crop, message):
    with pytest.raises(ValueError, match=message):
        check_layout(size, count, width, crop)


def test_spectrum_plot_is_a_png_sized_picture():
    plot = spectrum_plot({"a": _image(1), "b": _image(1, smooth=True)}, size=(640, 400))
    assert plot.size == (640, 400) and plot.mode == "RGB"
    assert len(set(plot.getdata())) > 10  # lines and text, not a blank canvas


def test_variants_equal_renders_through_the_public_api(pipe, clean):
    base = fouriscale.FouriScaleConfig()
    assert variant_config("direct", base) is None and variant_config("no-low-pass", base).low_pass is False
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config("sharper", base)
    call = dict(num_inference_steps=2, guidance_scale=7.5, eta=1.0)
    images = render_variants(
        pipe, "a cat", seed=3, height=64, width=64, variants=["direct", "no-attention-guidance"], **call
    )
    assert list(images) == ["direct", "no-attention-guidance"]
    assert not fouriscale.is_fouriscale_applied(pipe)  # left as found
    assert (np.asarray(images["direct"]) == api_render(pipe, seed=3)).all()  # stock pipeline, same seed
    clean(pipe)
    fouriscale.apply_fouriscale(pipe, attention_guidance=False)
    assert (np.asarray(images["no-attention-guidance"]) == api_render(pipe, seed=3)).all()
    assert (np.asarray(images["direct"]) != np.asarray(images["no-attention-guidance"])).any()


def test_the_plan_says_when_the_low_pass_changes_nothing(pipe, capsys):
    """Issue 24: at the quick start's 64x64 the no-low-pass variant was pixel-identical to FouriScale without a word
    (the tiny models' filtered feature maps are 8 px or less, where the paper's masks at d=2 pass everything). The
    plan says so, the CLI warns, and at 96x96 (the README's quick start) the variants differ."""
    call = dict(num_inference_steps=2, guidance_scale=7.5, eta=1.0)
    for size, idle in ((64, True), (96, False)):
        assert fouriscale.get_plan(pipe, size, size, 2).low_pass_idle is idle
        images = render_variants(pipe, "a cat", seed=3, height=size, width=size, variants=VARIANT_PAIR, **call)
        same = (np.asarray(images["fouriscale"]) == np.asarray(images["no-low-pass"])).all()
        assert same is np.bool_(idle), size
    assert cli("plan", "--model", "tiny:sd1", "--size", "64x64", "--steps", "2") == 0
    assert "low-pass on (no effect at this size: every mask passes all frequencies)" in capsys.readouterr().out
    assert cli("plan", "--model", "tiny:sd1", "--size", "96x96", "--steps", "2") == 0
    assert "no effect" not in capsys.readouterr().out
    assert not fouriscale.get_plan(pipe, 64, 64, 2, fouriscale.FouriScaleConfig(low_pass=False)).low_pass_idle


VARIANT_PAIR = ["fouriscale", "no-low-pass"]


def test_smoke_compare_command(tmp_path):
    out = tmp_path / "cmp"
    done = run_cli(
        "compare",
        "a red cat",
        "--model",
        "tiny:sd1",
        "--size",
        "96x64",
        "--steps",
        "2",
        "--variants",
        "direct,fouriscale",
        "--column-width",
        "64",
        "--out",
        out,
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    grid = Image.open(out / compare_name(23, "a red cat", "grid"))
    assert grid.size == (2 * 64 + 3 * PAD, PAD + LABEL_H + round(64 * 64 / 96) + PAD + 64 + PAD)
    assert Image.open(out / compare_name(23, "a red cat", "spectrum")).size == (800, 500)
    direct = out / compare_name(23, "a red cat", "direct")
    assert read_settings(direct)["method"] == "direct" and read_settings(direct)["variant"] == "direct"
    stock = tiny_pipeline("sd1")
    stock.set_progress_bar_config(disable=True)
    assert close(pixels(direct), api_render(stock, "a red cat", width=96))
    assert sorted(e["file"] for e in Manifest(out).entries()) == sorted(p.name for p in out.glob("*.png"))


def test_compare_resumes_and_never_overwrites(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"
    args = [
        "compare",
        "a cat",
        "--model",
        "tiny:sd1",
        "--variants",
        "direct,no-low-pass",
        "--column-width",
        "32",
        "--out",
        out,
        *FAST,
    ]
    assert cli(*args) == 0
    assert "2 image(s) (0 already there)" in capsys.readouterr().out
    before = (out / compare_name(23, "a cat", "no-low-pass")).read_bytes()
    assert cli(*args) == 0  # the same again: nothing rendered
    assert "0 image(s) (2 already there)" in capsys.readouterr().out
    assert cli(*args[:-3], "--steps", "3", "--no-progress") == 2
    line = error_line(capsys, after=(IDLE_LOW_PASS,))  # at 64x64 the no-low-pass variant is FouriScale's image
    assert "compare-23-a-cat-direct.png already exists with other settings (steps: 2 there, 3 here" in line
    assert (out / compare_name(23, "a cat", "no-low-pass")).read_bytes() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--column-width", "100000"], "16 to 2048 pixels"),
        (["--crop", "0,0,999"], "inside the 64x64 image"),
        (["--crop", "a,b"], "expected X,Y,SIZE"),
        (["--variants", "direct,sharper"], "unknown sharper"),
        (["--seed", "-1"], "a seed is a whole number"),
        (["--device", "tpu"], "expected auto, cpu"),
    ],
)
def test_compare_refuses_before_rendering(tmp_path, capsys, monkeypatch, args, message):
    import fouriscale.frontend.cli.commands as commands

    monkeypatch.setattr(commands, "render_variants", lambda *a, **k: pytest.fail("rendered before refusing"))
    assert cli("compare", "x", "--model", "tiny:sd1", "--out", tmp_path, *FAST, *args) == 2
    assert message in error_line(capsys)
    assert not list(tmp_path.glob("*.png"))


def test_every_variant_is_known_to_the_cli(capsys):
    assert cli("compare", "--help") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in VARIANTS)
