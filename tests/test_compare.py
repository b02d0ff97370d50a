"""Comparison pictures: the grid's layout, the spectrum plot, and the `compare` command."""

import numpy as np
import pytest
from PIL import Image

from fouriscale.frontend.cli import main
from fouriscale.frontend.compare import (
    PAD,
    LABEL_H,
    comparison_grid,
    radial_power_spectrum,
    render_variants,
    spectrum_plot,
    variant_config,
)


def _image(seed, smooth=False, size=(96, 64)):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (size[1], size[0], 3)).astype(np.uint8)
    image = Image.fromarray(a)
    if smooth:
        image = image.resize((size[0] // 8, size[1] // 8), Image.BILINEAR).resize(size, Image.BICUBIC)
    return image


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
    # the crop is at full resolution: the centre 48x48 of the second image, pixel for pixel
    x, y = PAD + 48 + PAD, PAD + LABEL_H + thumb_h + PAD
    crop = grid.crop((x, y, x + 48, y + 48))
    assert np.array_equal(np.asarray(crop), np.asarray(images["fouriscale"].crop((24, 8, 72, 56))))
    custom = comparison_grid(images, column_width=48, crop=(0, 0, 20, 20))
    assert custom.size == (3 * 48 + 4 * PAD, PAD + LABEL_H + thumb_h + PAD + 20 + PAD)
    with pytest.raises(ValueError, match="same size"):
        comparison_grid({"a": _image(1), "b": _image(2, size=(64, 64))})


def test_spectrum_plot_is_a_png_sized_picture():
    plot = spectrum_plot({"a": _image(1), "b": _image(1, smooth=True)}, size=(640, 400))
    assert plot.size == (640, 400) and plot.mode == "RGB"
    assert len(set(plot.getdata())) > 10  # lines and text, not a blank canvas


def test_variants(sd_pipe):
    import fouriscale

    base = fouriscale.FouriScaleConfig()
    assert variant_config("direct", base) is None
    assert variant_config("no-low-pass", base).low_pass is False
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config("sharper", base)
    images = render_variants(sd_pipe, "a cat", seed=3, height=64, width=96, num_inference_steps=3,
                             variants=["direct", "fouriscale", "no-attention-guidance"])  # fmt: skip
    assert list(images) == ["direct", "fouriscale", "no-attention-guidance"]
    assert all(im.size == (96, 64) for im in images.values())
    assert images["direct"].tobytes() != images["fouriscale"].tobytes()
    assert not fouriscale.is_fouriscale_applied(sd_pipe)  # left as found


def test_compare_command(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "a red cat", "--model", tiny_dirs["sdxl"], "--size", "96x64", "--steps", "3",
                 "--variants", "direct,fouriscale,no-low-pass", "--column-width", "64", "--out", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    grid = Image.open(out / "compare-23-a-red-cat-grid.png")
    assert grid.size == (3 * 64 + 4 * PAD, PAD + LABEL_H + round(64 * 64 / 96) + PAD + 64 + PAD)
    assert Image.open(out / "compare-23-a-red-cat-spectrum.png").size == (800, 500)
    for name in ("direct", "fouriscale", "no-low-pass"):
        assert Image.open(out / f"compare-23-a-red-cat-{name}.png").size == (96, 64)
    assert main(["compare", "x", "--model", tiny_dirs["sd1"], "--variants", "direct,sharper", "--out", str(out)]) == 2
    assert "unknown sharper" in capsys.readouterr().err
