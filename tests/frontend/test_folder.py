"""An output folder shared by processes (frontend/folder.py): stale temp files and dead claims removed, exclusive
claims, the folder checked before any work, a strict manifest without duplicates that survives torn lines."""

import json
import os

import pytest

from fouriscale.frontend.errors import UserError
from fouriscale.frontend.folder import TEMP_FILE, Manifest, OutputFolder


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
