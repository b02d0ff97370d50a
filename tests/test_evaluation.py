"""Image-quality metrics (fouriscale.evaluation and the ``eval`` front end) with the real torchmetrics code,
offline: a small seeded conv net stands in for Inception and a tiny random CLIP for CLIP-L."""

import argparse
import importlib
import importlib.util
import io
import json
import os
import shutil
import socket
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, PngImagePlugin

from fouriscale.evaluation import (
    INCEPTION_SIZE,
    METRIC_NAMES,
    PROTOCOL,
    MetricUnavailableError,
    crop_boxes,
    default_kid_subset_size,
    evaluate,
    evaluate_with_report,
    find_images,
    format_table,
    metric_input_size,
    prompt_from_info,
    resize_image,
    to_rgb,
    write_json,
)
from fouriscale.frontend.cli.quality import add_eval_arguments, cmd_eval
from fouriscale.frontend.loading import UserError
from fouriscale.frontend.quality import load_feature_extractor

N_IMAGES = 32
SIZE = 96


class TinyFeatureNet(torch.nn.Module):
    """Seeded random two-layer conv net; features: per-channel mean and std of the second layer (x10)."""

    input_size = 64

    def __init__(self, seed: int = 0, width: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(16, width, 3, stride=2, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / conv.weight[0].numel() ** 0.5)
                conv.bias.zero_()

    def forward(self, x):
        h = torch.relu(self.conv1(x * 2 - 1))
        h = torch.relu(self.conv2(h))
        return 10 * torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1)


def tiny_feature_net():
    """Factory for ``--feature-extractor test_evaluation:tiny_feature_net``."""
    return TinyFeatureNet()


class Recorder(torch.nn.Module):
    """Feature net that keeps a copy of every batch it sees."""

    input_size = 64
    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyFeatureNet()
        self.calls = []

    def forward(self, x):
        self.calls.append(x.detach().clone())
        return self.net(x)


class ColourLogits(torch.nn.Module):
    """'Classifier' over the three colour channels: near one-hot logits for pure red, green or blue images."""

    input_size = 16
    num_features = 3

    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append((x.dtype, float(x.min()), float(x.max()), tuple(x.shape[-2:])))
        return 40 * x.mean(dim=(2, 3))


# ---------------------------------------------------------------------------------------------- images


def smooth_images(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Random images with structure at three scales (coarse blobs to fine texture)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        acc = np.zeros((size, size, 3))
        for res, amp in ((4, 1.0), (12, 0.6), (48, 0.4)):
            small = Image.fromarray((rng.random((res, res, 3)) * 255).astype(np.uint8))
            acc += amp * (
                np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64) / 255 - 0.5
            )
        out.append((np.clip(0.5 + 0.8 * acc, 0, 1) * 255).astype(np.uint8))
    return out


def write_png(path: Path, array: np.ndarray, chunks: dict | None = None) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in (chunks or {}).items():
        info.add_itxt(key, value)
    Image.fromarray(array).save(path, pnginfo=info)
    return path


def derive(src: Path, dst: Path, fn) -> Path:
    dst.mkdir()
    for path in sorted(src.iterdir()):
        with Image.open(path) as image:
            fn(image.convert("RGB")).save(dst / path.name)
    return dst


def shift_right(image: Image.Image, px: int = 16) -> Image.Image:
    a = np.asarray(image)
    b = np.zeros_like(a)
    b[:, px:] = a[:, :-px]
    return Image.fromarray(b)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-images")
    real = root / "real"
    real.mkdir()
    for i, array in enumerate(smooth_images(N_IMAGES, SIZE, seed=0)):
        write_png(real / f"{i:03d}.png", array)
    out = {"real": real, "copy": root / "copy"}
    shutil.copytree(real, out["copy"])
    for radius in (1, 2, 4):
        out[f"blur{radius}"] = derive(
            real, root / f"blur{radius}", lambda im, r=radius: im.filter(ImageFilter.GaussianBlur(r))
        )
    out["shift"] = derive(real, root / "shift", shift_right)
    other = root / "other"
    other.mkdir()
    for i, array in enumerate(smooth_images(N_IMAGES, SIZE, seed=1)):
        write_png(other / f"{i:03d}.png", array)
    out["other"] = other
    return out


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The networks here are tiny: one thread is faster than two, and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(real, fake, **kw):
    kw.setdefault("feature_extractor", TinyFeatureNet())
    kw.setdefault("metrics", ["fid", "kid", "is"])
    return evaluate_with_report(real, fake, **kw)


# ---------------------------------------------------------------------------------------------- pure helpers


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


def test_prompt_from_info():
    assert prompt_from_info({"fouriscale": json.dumps({"prompt": "a cat", "seed": 1})}) == "a cat"
    a1111 = "a red house,\nat night\nNegative prompt: blurry\nSteps: 30, Sampler: DDIM, Seed: 1"
    assert prompt_from_info({"parameters": a1111}) == "a red house,\nat night"
    assert prompt_from_info({"parameters": "a dog\nSteps: 20, Seed: 3"}) == "a dog"
    assert prompt_from_info({"fouriscale": "{broken", "parameters": "fallback"}) == "fallback"
    assert prompt_from_info({"Software": "x"}) is None


# ---------------------------------------------------------------------------------------------- FID / KID / IS


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


# ---------------------------------------------------------------------------------------------- CLIP score


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP (32 px images, character tokenizer) saved like a hub folder. Image and text share the
    projection and a common bias so that the similarities are positive (CLIPScore clamps at 0)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from fouriscale.testing import tiny_tokenizer

    root = tmp_path_factory.mktemp("clip")
    tokenizer = tiny_tokenizer(str(root / "tok"))
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": 77,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIPModel(config).eval()
    with torch.no_grad():
        model.visual_projection.weight.copy_(model.text_projection.weight)
        model.text_model.final_layer_norm.bias.fill_(1.0)
        model.vision_model.post_layernorm.bias.fill_(1.0)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    path = root / "tiny-clip"
    model.save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return str(path)


PROMPTS = ["a red cat", "blue sky, clouds", "an old house", "green grass"]


def clip_reference(path: str, arrays, prompts) -> float:
    """100 x mean cosine similarity computed directly with transformers, clamped at 0 like torchmetrics."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path).eval()
    processor = CLIPProcessor.from_pretrained(path)

    def tensor(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.no_grad():
        pixels = processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")["pixel_values"]
        image = tensor(model.get_image_features(pixel_values=pixels))
        tokens = processor.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        text = tensor(model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))
    cos = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    return max(100 * float(cos.mean()), 0.0)


@pytest.fixture(scope="module")
def clip_sets(tmp_path_factory, sets):
    root = tmp_path_factory.mktemp("clip-images")
    arrays = smooth_images(len(PROMPTS), 48, seed=9)
    folders = {name: root / name for name in ("embedded", "a1111", "manifest", "plain", "partial")}
    for folder in folders.values():
        folder.mkdir()
    for i, (array, prompt) in enumerate(zip(arrays, PROMPTS)):
        name = f"{i:02d}.png"
        write_png(folders["embedded"] / name, array, {"fouriscale": json.dumps({"prompt": prompt, "seed": i})})
        write_png(
            folders["a1111"] / name, array, {"parameters": f"{prompt}\nNegative prompt: ugly\nSteps: 30, Seed: {i}"}
        )
        write_png(folders["manifest"] / name, array)
        write_png(folders["plain"] / name, array)
        write_png(folders["partial"] / name, array, {"fouriscale": json.dumps({"prompt": prompt})} if i < 2 else None)
    with open(folders["manifest"] / "manifest.jsonl", "w") as fh:
        for i, prompt in enumerate(PROMPTS):
            fh.write(json.dumps({"file": f"{i:02d}.png", "prompt": prompt, "key": "k"}) + "\n")
        fh.write("{not json\n")
    return {"arrays": arrays, "real": sets["real"], **folders}


def clip_run(clip_sets, folder, tiny_clip, **kw):
    return evaluate_with_report(clip_sets["real"], clip_sets[folder], clip_model=tiny_clip, metrics=["clip"], **kw)


def test_clip_score_from_every_prompt_source(clip_sets, tiny_clip):
    expected = clip_reference(tiny_clip, clip_sets["arrays"], PROMPTS)
    assert expected > 1.0
    scores = {}
    for folder, source in (("embedded", "embedded"), ("a1111", "embedded"), ("manifest", "manifest")):
        metrics, report = clip_run(clip_sets, folder, tiny_clip)
        assert list(metrics) == ["clip_score"]
        assert report["prompt_sources"] == {source: len(PROMPTS)} and report["clip_images"] == len(PROMPTS)
        assert report["clip_model"] == tiny_clip
        scores[folder] = metrics["clip_score"]
    given = {f"{i:02d}.png": p for i, p in enumerate(PROMPTS)}
    scores["dict"] = clip_run(clip_sets, "plain", tiny_clip, prompts=given)[0]["clip_score"]
    scores["callable"] = clip_run(clip_sets, "plain", tiny_clip, prompts=lambda p: given[p.name])[0]["clip_score"]
    for name, value in scores.items():
        assert value == pytest.approx(expected, rel=1e-4), name
    wrong = clip_run(clip_sets, "plain", tiny_clip, prompts={k: "zzzz qqq" for k in given})[0]["clip_score"]
    assert abs(wrong - expected) > 1e-3  # the score depends on the prompts


def test_clip_skipped_with_a_note_without_prompts(clip_sets, tiny_clip, sets):
    metrics, report = evaluate_with_report(
        clip_sets["real"], clip_sets["plain"], feature_extractor=TinyFeatureNet(), clip_model=tiny_clip
    )
    assert "clip_score" not in metrics and "fid" in metrics and "is_mean" in metrics
    assert any(n.startswith("clip_score skipped: no prompts") for n in report["notes"])
    assert report["clip_model"] is None
    with pytest.raises(ValueError, match="no fake image has a prompt"):
        clip_run(clip_sets, "plain", tiny_clip)  # asked for explicitly


def test_clip_over_the_images_that_have_a_prompt(clip_sets, tiny_clip):
    metrics, report = clip_run(clip_sets, "partial", tiny_clip)
    assert report["clip_images"] == 2
    assert any("clip_score over 2 of 4" in n for n in report["notes"])
    assert metrics["clip_score"] == pytest.approx(
        clip_reference(tiny_clip, clip_sets["arrays"][:2], PROMPTS[:2]), rel=1e-4
    )


def test_long_prompts_are_truncated_keeping_the_end_token(clip_sets, tiny_clip):
    head = "abcdefghij" * 8  # 80 character tokens > 77
    a, b, c = head + "xyz", head + "qqqqqqqq", "zyxwvutsrq" * 8
    scores = [clip_run(clip_sets, "plain", tiny_clip, prompts=lambda p, t=t: t) for t in (a, b, c)]
    assert scores[0][0]["clip_score"] == pytest.approx(scores[1][0]["clip_score"], rel=1e-6)  # same first 77 tokens
    assert abs(scores[0][0]["clip_score"] - scores[2][0]["clip_score"]) > 1e-3  # not all pooled at one position
    assert any("4 prompt(s) longer than 77 tokens were truncated" in n for n in scores[0][1]["notes"])


def test_clip_model_unavailable_is_one_line(clip_sets, tmp_path, monkeypatch):
    attempts = guard_network(monkeypatch)
    with pytest.raises(MetricUnavailableError, match="CLIP model .* could not be loaded") as info:
        clip_run(clip_sets, "embedded", str(tmp_path / "no-such-clip"))
    assert "\n" not in str(info.value) and attempts == []


# ---------------------------------------------------------------------------------------------- report and JSON


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


# ---------------------------------------------------------------------------------------------- front end


def parse(*argv):
    parser = argparse.ArgumentParser(prog="fouriscale eval")
    add_eval_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_feature_extractor_hook_is_importable():
    assert importlib.import_module("test_evaluation").tiny_feature_net is tiny_feature_net
    assert isinstance(load_feature_extractor("test_evaluation:tiny_feature_net"), TinyFeatureNet)
    assert isinstance(load_feature_extractor("test_evaluation:Recorder"), Recorder)
    for spec, message in (
        ("nocolon", "MODULE:ATTR"),
        ("no_such_module_x:f", "cannot import"),
        ("test_evaluation:missing", "has no"),
        ("test_evaluation:N_IMAGES", "not a torch.nn.Module"),
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
        "test_evaluation:tiny_feature_net",
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
    hook = ("--feature-extractor", "test_evaluation:tiny_feature_net", "--no-progress", "--device", "cpu")
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


# ---------------------------------------------------------------------------------------------- bad input


def tiny_folder(root: Path, name: str, n: int, size=(64, 64)) -> Path:
    folder = root / name
    folder.mkdir()
    for i, array in enumerate(smooth_images(n, max(size), seed=20)):
        write_png(folder / f"{i:02d}.png", array[: size[1], : size[0]])
    return folder


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


def test_feature_extractor_with_wrong_output_shape(tmp_path):
    good = tiny_folder(tmp_path, "good", 3)
    with pytest.raises(ValueError, match=r"\(N, D\) features"):
        evaluate(good, good, feature_extractor=torch.nn.Identity(), metrics=["fid"])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        evaluate(good, good, feature_extractor=lambda x: x, metrics=["fid"])


def guard_network(monkeypatch) -> list:
    """Make every socket connection fail loudly; returns the list of attempted addresses."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


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


def test_png_text_after_verify_is_readable(tmp_path):
    """The prompt chunk is read from the header pass (no second decode)."""
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_itxt("fouriscale", json.dumps({"prompt": "a tiny prompt"}))
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG", pnginfo=info)
    (tmp_path / "x.png").write_bytes(buffer.getvalue())
    with Image.open(tmp_path / "x.png") as image:
        assert prompt_from_info(image.info) == "a tiny prompt"


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
