"""The images of an evaluation (fouriscale/evaluation/images.py): found, filtered and sorted; crops at seeded boxes
cut at full resolution; resized and converted to RGB; a run folder gives only the images its manifest lists."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fouriscale.evaluation import (
    INCEPTION_SIZE,
    crop_boxes,
    default_kid_subset_size,
    evaluate,
    evaluate_with_report,
    find_images,
    metric_input_size,
    resize_image,
    to_rgb,
)
from support.evaluation import Recorder, TinyFeatureNet, run, smooth_images, tiny_folder, write_png


def test_crop_boxes_deterministic_seeded_and_inside():
    boxes = crop_boxes(300, 200, 128, 20, seed=3, index=5)
    assert boxes == crop_boxes(300, 200, 128, 20, seed=3, index=5)
    assert len(boxes) == 20 and len(set(boxes)) > 10
    for left, top, right, bottom in boxes:
        assert right - left == 128 and bottom - top == 128
        assert 0 <= left and right <= 300 and 0 <= top and bottom <= 200
    assert boxes != crop_boxes(300, 200, 128, 20, seed=4, index=5)
    assert boxes != crop_boxes(300, 200, 128, 20, seed=3, index=6)
    assert boxes != crop_boxes(301, 200, 128, 20, seed=3, index=5)
    assert crop_boxes(128, 128, 128, 3, seed=0, index=0) == [(0, 0, 128, 128)] * 3
    assert crop_boxes(300, 200, 128, 0, seed=0, index=0) == []
    # positions cover the whole allowed range (uniform draw, not a fixed grid)
    lefts = [b[0] for i in range(50) for b in crop_boxes(300, 200, 128, 4, seed=0, index=i)]
    assert min(lefts) < 20 and max(lefts) > 300 - 128 - 20
    with pytest.raises(ValueError, match="does not fit"):
        crop_boxes(100, 200, 128, 1, seed=0, index=0)
    with pytest.raises(ValueError, match="0 or more"):
        crop_boxes(300, 200, 128, -1, seed=0, index=0)


def test_resize_rgb_and_sizes():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 100, 3), dtype=np.uint8))
    small = resize_image(image, (30, 20))
    assert small.size == (20, 30)  # (width, height): aspect ratio not kept
    assert resize_image(image, (40, 100)) is image
    assert metric_input_size(None) == (INCEPTION_SIZE, INCEPTION_SIZE)
    assert metric_input_size(TinyFeatureNet()) == (64, 64)
    assert metric_input_size(torch.nn.Identity()) == (299, 299)
    net = torch.nn.Identity()
    net.input_size = (32, 48)
    assert metric_input_size(net) == (32, 48)
    assert default_kid_subset_size(5000, 3000) == 1000
    assert default_kid_subset_size(40, 25) == 25
    grey16 = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert grey16.mode.startswith("I;16")
    assert np.asarray(to_rgb(grey16))[0].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]
    rgba = Image.fromarray(np.array([[[10, 20, 30, 0]]], dtype=np.uint8), "RGBA")
    assert np.asarray(to_rgb(rgba)).tolist() == [[[10, 20, 30]]]  # alpha dropped, colour kept


def test_find_images_filters_and_sorts(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.webp", "notes.txt", "d.bmp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.png").write_bytes(b"x")
    assert [p.name for p in find_images(tmp_path)] == ["a.jpg", "b.PNG", "c.webp", "d.bmp"]


def test_crops_are_cut_at_full_resolution_at_the_seeded_boxes(tmp_path):
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir()
    fake.mkdir()
    arrays = smooth_images(4, 160, seed=5)
    for i, array in enumerate(arrays):
        write_png(real / f"{i}.png", array)
        write_png(fake / f"{i}.png", 255 - array)
    net = Recorder()
    evaluate(real, fake, crops=2, crop_size=80, seed=7, feature_extractor=net, metrics=["fid"], batch_size=64)
    # calls: real whole images, real crops, fake whole images, fake crops
    assert [tuple(c.shape) for c in net.calls] == [(4, 3, 64, 64), (8, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64)]
    for call, source in ((1, arrays), (3, [255 - a for a in arrays])):
        for i in range(4):
            for j, box in enumerate(crop_boxes(160, 160, 80, 2, seed=7, index=i)):
                crop = resize_image(Image.fromarray(source[i]).crop(box), (64, 64))
                expected = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255
                assert torch.equal(net.calls[call][2 * i + j], expected)
    whole = resize_image(Image.fromarray(arrays[2]), (64, 64))
    assert torch.equal(net.calls[0][2], torch.from_numpy(np.array(whole)).permute(2, 0, 1).float() / 255)


def test_non_rgb_images_are_converted(tmp_path):
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir()
    fake.mkdir()
    arrays = smooth_images(6, 64, seed=3)
    alpha = np.random.default_rng(0).integers(0, 255, (64, 64, 1), dtype=np.uint8)
    for i, array in enumerate(arrays):
        write_png(real / f"{i}.png", array)
        Image.fromarray(np.concatenate([array, alpha], axis=2), "RGBA").save(fake / f"{i}.png")
    metrics, report = run(real, fake, metrics=["fid"])
    assert abs(metrics["fid"]) < 1e-3  # alpha dropped, colours untouched
    assert report["converted_to_rgb"] == {"RGBA": 6}
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(arrays[0]).convert("L").save(mixed / "0.png")
    Image.fromarray(arrays[1]).convert("P").save(mixed / "1.png")
    Image.fromarray(arrays[2]).convert("CMYK").save(mixed / "2.jpg")
    Image.fromarray(arrays[3][..., 0].astype(np.uint16) * 257).save(mixed / "3.png")
    modes = {}
    for path in sorted(mixed.iterdir()):
        with Image.open(path) as image:
            modes[image.mode] = modes.get(image.mode, 0) + 1
    assert set(modes) >= {"L", "P", "CMYK"} and any(m.startswith("I") for m in modes)
    metrics, report = run(real, mixed, metrics=["fid", "kid"])
    assert np.isfinite(metrics["fid"]) and report["converted_to_rgb"] == modes


def test_a_run_folder_gives_only_its_images(tmp_path):
    """In a folder with a manifest.jsonl (a fouriscale run) eval takes the images it lists, not the grid and spectrum
    compare wrote beside them nor files it does not list, and says what it left out (issue 24: they were counted)."""
    fake = tiny_folder(tmp_path, "fake", 5)
    lines = [
        {"file": "00.png", "method": "fouriscale", "key": "a"},
        {"file": "01.png", "method": "fouriscale", "key": "b"},
        {"file": "02.png", "method": "direct", "key": "c"},
        {"file": "03.png", "method": "grid", "key": "d"},
    ]
    (fake / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    real = tiny_folder(tmp_path, "real", 3)
    _, report = evaluate_with_report(real, fake, feature_extractor=TinyFeatureNet(), metrics=["fid"])
    assert report["images_fake"] == 3 and report["images_real"] == 3
    notes = " | ".join(report["notes"])
    assert "fake: 2 file(s) left out" in notes and "03.png, 04.png" in notes
    assert "images of several methods taken together (fouriscale: 2, direct: 1)" in notes
    (fake / "manifest.jsonl").write_text(json.dumps({"file": "03.png", "method": "grid"}) + "\n")
    with pytest.raises(ValueError, match="holds no image listed in its manifest.jsonl"):
        evaluate(real, fake, feature_extractor=TinyFeatureNet(), metrics=["fid"])
