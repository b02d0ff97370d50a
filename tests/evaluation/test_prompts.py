"""The fake images' prompts (fouriscale/evaluation/prompts.py) and the CLIP score over them: embedded, A1111
parameters, manifest.jsonl, given; skipped without prompts, over the images that have one. A tiny random CLIP stands
in for CLIP-L."""

import io
import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from fouriscale.evaluation import evaluate_with_report, prompt_from_info
from support.evaluation import PROMPTS, TinyFeatureNet, clip_reference, clip_run


def test_prompt_from_info():
    assert prompt_from_info({"fouriscale": json.dumps({"prompt": "a cat", "seed": 1})}) == "a cat"
    a1111 = "a red house,\nat night\nNegative prompt: blurry\nSteps: 30, Sampler: DDIM, Seed: 1"
    assert prompt_from_info({"parameters": a1111}) == "a red house,\nat night"
    assert prompt_from_info({"parameters": "a dog\nSteps: 20, Seed: 3"}) == "a dog"
    assert prompt_from_info({"fouriscale": "{broken", "parameters": "fallback"}) == "fallback"
    assert prompt_from_info({"Software": "x"}) is None


def test_png_text_after_verify_is_readable(tmp_path):
    """The prompt chunk is read from the header pass (no second decode)."""
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_itxt("fouriscale", json.dumps({"prompt": "a tiny prompt"}))
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG", pnginfo=info)
    (tmp_path / "x.png").write_bytes(buffer.getvalue())
    with Image.open(tmp_path / "x.png") as image:
        assert prompt_from_info(image.info) == "a tiny prompt"


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
