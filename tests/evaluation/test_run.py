"""An evaluation as a composition of its steps (fouriscale/evaluation/run.py): bad options and bad images are refused
in one line before any feature is computed."""

import pytest

from fouriscale.evaluation import evaluate
from support.evaluation import Recorder, smooth_images, tiny_folder, write_png


def test_bad_inputs_fail_early_with_one_line(tmp_path, sets):
    good = tiny_folder(tmp_path, "good", 4)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    garbage = tiny_folder(tmp_path, "garbage", 3)
    (garbage / "01.png").write_bytes(b"this is not a png")
    truncated = tiny_folder(tmp_path, "truncated", 3)
    data = (truncated / "02.png").read_bytes()
    (truncated / "02.png").write_bytes(data[: len(data) // 2])
    small = tiny_folder(tmp_path, "small", 3)
    write_png(small / "00.png", smooth_images(1, 64, seed=1)[0][:40])  # 64x40
    single = tiny_folder(tmp_path, "single", 1)
    cases = [
        ({"real": tmp_path / "nope", "fake": good}, "real folder .*nope.* does not exist"),
        ({"real": good, "fake": empty}, "fake folder .*empty.* holds no image"),
        ({"real": good, "fake": garbage}, "fake image .*01.png.* cannot be read"),
        ({"real": truncated, "fake": good}, "real image .*02.png.* cannot be read"),
        ({"real": good, "fake": small, "crops": 1, "crop_size": 48}, r"00.png.* is 64x40, smaller than the 48x48 crop"),
        ({"real": single, "fake": good}, "real has 1 image; .*at least 2"),
        ({"real": good, "fake": good, "crops": 2}, "needs a crop size"),
        ({"real": good, "fake": good, "crops": -1}, "0 or more"),
        ({"real": good, "fake": good, "crop_size": 0, "crops": 1}, "positive"),
        ({"real": good, "fake": good, "batch_size": 0}, "batch size"),
        ({"real": good, "fake": good, "kid_subset_size": 9}, "exceeds the image count"),
        ({"real": good, "fake": good, "metrics": ["fid", "lpips"]}, "lpips"),
        ({"real": good, "fake": good, "crops": 1, "crop_size": 32, "metrics": ["is"]}, "crops are only used by"),
        ({"real": good, "fake": sets["real"] / "000.png"}, "not a folder"),
        ({"real": [good / "00.png", tmp_path / "gone.png"], "fake": good}, "gone.png.* does not exist"),
    ]
    net = Recorder()
    for kwargs, message in cases:
        real, fake = kwargs.pop("real"), kwargs.pop("fake")
        with pytest.raises(ValueError, match=message) as info:
            evaluate(real, fake, feature_extractor=net, **kwargs)
        assert "\n" not in str(info.value), message
    assert net.calls == []  # refused before any feature was computed
