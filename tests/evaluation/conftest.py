"""Fixtures of the image-quality tests; ``sets``, ``tiny_clip`` and ``one_thread`` are in tests/conftest.py (the
command-line tests use them too)."""

import json

import pytest

from support.evaluation import PROMPTS, smooth_images, write_png


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every module here runs its tiny networks on one thread."""


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
