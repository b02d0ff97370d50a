"""Finished files (frontend/files.py): safe names, atomic writes with the usual permissions, embedded settings,
full disks. No model needed."""

import errno
import os

import numpy as np
import pytest
from PIL import Image

from fouriscale.embedded import a1111_parameters
from fouriscale.frontend.errors import UserError
from fouriscale.frontend.files import (
    atomic_write_bytes,
    compare_name,
    differing_settings,
    encode_png,
    image_name,
    read_settings,
    settings_key,
    slugify,
    write_png,
)


def _image(seed=0, size=(16, 8)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3)).astype(np.uint8))


SETTINGS = {
    "prompt": "a red cat, 4k",
    "negative_prompt": "blurry",
    "seed": 7,
    "width": 16,
    "height": 8,
    "steps": 3,
    "guidance_scale": 7.5,
    "eta": 1.0,
    "scheduler": "ddim",
    "model": "tiny:sd1",
    "loras": [],
    "dtype": "float32",
    "method": "fouriscale",
    "version": "0.1.0",
}


@pytest.mark.parametrize(
    "prompt",
    [
        "../../etc/passwd",
        "..\\..\\windows\\system32",
        "CON",
        'a/b\\c:d*e?f"g<h>i|j',
        "   ",
        "\x00\x1f\x7f",
        "ééé ünïcødé 猫",
        "x" * 500,
        ".hidden",
    ],
)
def test_hostile_prompts_give_safe_names(prompt):
    name = image_name(12, 99, prompt)
    assert name.startswith("00012-99-") and name.endswith(".png")
    assert "/" not in name and "\\" not in name and ".." not in name and len(name) <= 80
    assert all(c.isalnum() or c in "-." for c in name)
    assert slugify(prompt) == slugify(prompt).strip("-") and slugify(prompt)


def test_names_come_from_one_function():
    assert image_name(3, 23, "A Red Cat!") == "00003-23-a-red-cat.png"
    assert image_name(3, 23, "A Red Cat!", "-direct") == "00003-23-a-red-cat-direct.png"
    assert compare_name(23, "A Red Cat!", "no-low-pass") == "compare-23-a-red-cat-no-low-pass.png"
    assert compare_name(23, "../x", "../grid") == "compare-23-x-grid.png"


def test_png_round_trip_and_a1111_text(tmp_path):
    path = tmp_path / "x.png"
    write_png(_image(), path, dict(SETTINGS, key=settings_key(SETTINGS)))
    assert read_settings(path)["key"] == settings_key(SETTINGS)
    with Image.open(path) as image:
        assert np.array_equal(np.asarray(image), np.asarray(_image()))
        lines = image.text["parameters"].splitlines()
        assert lines[:2] == ["a red cat, 4k", "Negative prompt: blurry"]
        assert "Steps: 3, Sampler: ddim, CFG scale: 7.5, Seed: 7, Size: 16x8" in lines[2]
    assert a1111_parameters(SETTINGS).splitlines()[0] == "a red cat, 4k"
    assert read_settings(tmp_path / "missing.png") is None
    (tmp_path / "garbage.png").write_bytes(b"not a png")
    assert read_settings(tmp_path / "garbage.png") is None


def test_settings_must_be_strict_json():
    with pytest.raises(ValueError):
        encode_png(_image(), dict(SETTINGS, guidance_scale=float("nan")))


def test_settings_key_ignores_bookkeeping_only():
    key = settings_key(SETTINGS)
    assert settings_key(dict(SETTINGS, file="other.png", index=4, rank=1, version="9")) == key
    assert settings_key(dict(SETTINGS, steps=4)) != key


def test_differing_settings_names_the_setting():
    ours = dict(SETTINGS, steps=10, fouriscale={"start_step": 2, "low_pass": True})
    theirs = dict(SETTINGS, steps=20, fouriscale={"start_step": 2, "low_pass": False}, key="k", file="f")
    assert differing_settings(ours, theirs) == "steps: 20 there, 10 here; fouriscale.low_pass: false there, true here"
    assert differing_settings(dict(SETTINGS, a=1, b=2, c=3, d=4), SETTINGS, limit=2).endswith("2 more")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_png(_image(), tmp_path / "a.png")
        atomic_write_bytes(tmp_path / "b.txt", b"x")
    finally:
        os.umask(old)
    for name in ("a.png", "b.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.txt"]  # no temp file left


def test_disk_full_names_the_path_and_leaves_nothing(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match=r"no space left on the device while writing .*a\.png") as info:
        write_png(_image(), tmp_path / "a.png")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
