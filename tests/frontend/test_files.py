"""Finished files (frontend/outputs.py): safe names, atomic writes with the usual permissions, embedded settings,
a strict and duplicate-free manifest, stale leftovers, full disks and unwritable folders. No model needed."""

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from fouriscale.embedded import a1111_parameters
from fouriscale.frontend.errors import UserError, one_line
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
from fouriscale.frontend.folder import TEMP_FILE, Manifest, OutputFolder


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


def test_stale_temp_files_and_dead_claims_are_removed(tmp_path):
    folder = OutputFolder(tmp_path)
    keep = ["00000-1-a-cat.png", "notes.tmp", ".hidden-user-file", "manifest.jsonl"]
    stale = [
        ".00000-1-a-cat.png.k2j3h4x9.tmp",
        ".manifest.jsonl.a1b2c3d4e5f6.tmp",
        ".x.png.0123456789ab.tmp",
        "..00001-2-a-cat.png.claim.2d6463b380c0.tmp",
    ]
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".00000-2-a-cat.png.claim").write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname()[1]}))
    (tmp_path / ".00000-3-a-cat.png.claim").write_text(json.dumps({"pid": 1, "host": "another-machine"}))
    assert all(TEMP_FILE.match(name) for name in stale) and not any(TEMP_FILE.match(name) for name in keep)
    folder.prepare()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != ".fouriscale.lock")
    assert left == sorted(keep + [".00000-3-a-cat.png.claim"])  # other hosts' claims are not ours to judge


def test_claims_are_exclusive_and_released(tmp_path):
    a, b = OutputFolder(tmp_path).prepare(), OutputFolder(tmp_path)
    with a.lock:
        assert a.claim("x.png") and not a.claim("x.png") and not b.claim("x.png")
    a.release("x.png")
    with b.lock:
        assert b.claim("x.png")
    b.release_all()
    assert not (tmp_path / ".x.png.claim").exists()


def test_folder_checks_before_any_work(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        OutputFolder(file).prepare()
    with pytest.raises(UserError, match="cannot create the folder"):
        OutputFolder(file / "sub").prepare()  # below a regular file: no permission trick needed as root
    with pytest.raises(UserError, match=r"MiB free, the next image needs up to"):
        OutputFolder(tmp_path / "ok").prepare(bytes_needed=2**62)
    with pytest.raises(UserError, match="cannot create the folder"):
        OutputFolder(file / "sub").check()
    OutputFolder(tmp_path / "new" / "deeper").check()  # can be made: checked, nothing created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_manifest_is_strict_deduplicated_and_survives_torn_lines(tmp_path):
    m = Manifest(tmp_path)
    assert m.add({"key": "k1", "file": "a.png", "seed": 1})
    assert not m.add({"key": "k1", "file": "a.png", "seed": 1})
    with open(tmp_path / "manifest.jsonl", "ab") as fh:
        fh.write(b'{"key": "k2", "fi')  # torn by a crash
    other = Manifest(tmp_path)  # another process: sees the first line, appends after a fence
    assert not other.add({"key": "k1", "file": "a.png"})
    assert other.add({"key": "k2", "file": "b.png"})
    assert not m.add({"key": "k2", "file": "b.png"})  # the first writer catches up with the other's line
    with pytest.raises(ValueError):
        m.add({"key": "k3", "file": "c.png", "guidance_scale": float("inf")})
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["file"] for line in lines if line.endswith("}")] == ["a.png", "b.png"]
    assert [e["file"] for e in Manifest(tmp_path).entries()] == ["a.png", "b.png"]


def test_one_line_cuts_at_a_word_boundary():
    text = "could not reach the hub because " + "the network is down " * 30
    line = one_line(text, 100)
    assert len(line) <= 100 and line.endswith("…") and line[:-1].split()[-1] in text.split()
    assert one_line("a\n  b\tc") == "a b c" and one_line(ValueError()) == "ValueError"
