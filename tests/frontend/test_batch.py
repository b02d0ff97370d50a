"""Batches (frontend/batch.py): seeds, resume after a kill, sharding across processes, identity by settings (a batch
grown, shrunk or reordered renders only what is new), and runs that share an output folder: equal settings split the
work, other settings number their images after the rest."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import fouriscale
from fouriscale.frontend.batch import run_batch
from fouriscale.frontend.files import read_settings
from fouriscale.frontend.folder import Manifest, OutputFolder
from fouriscale.frontend.recipe import Job, make_jobs, output_name
from fouriscale.frontend.render import render_images
from fouriscale.testing import tiny_pipeline
from support import forkserver
from support.frontend import env, pixels, run_cli, start_cli, tiny_recipe

GEN = ["generate", "--model", "tiny:sd1", "--size", "64x64", "--no-progress"]


@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline("sd1")
    p.set_progress_bar_config(disable=True)
    return fouriscale.apply_fouriscale(p)


def files_match_manifest(out):
    """The manifest describes exactly the PNGs on disk: one line each, with the key embedded in the file."""
    entries = Manifest(out).entries()
    names = sorted(p.name for p in out.glob("*.png"))
    assert sorted(e["file"] for e in entries) == names and len(entries) == len({e["file"] for e in entries})
    for entry in entries:
        assert read_settings(out / entry["file"])["key"] == entry["key"]
    return names


def leftovers(out):
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".fouriscale.lock")


def test_largest_seed_renders(pipe, tmp_path):
    job = Job(0, "a cat", 2**64 - 1)
    image = render_images(pipe, tiny_recipe(), job)["fouriscale"]
    assert image.size == (64, 64)


def test_batch_resumes_and_repairs_a_lost_manifest_line(pipe, tmp_path):
    jobs = make_jobs(["a cat"], [1, 2])
    first = run_batch(pipe, tiny_recipe(), jobs[:1], tmp_path, progress=False)
    assert first.written == ["00000-1-a-cat.png"]
    (tmp_path / "manifest.jsonl").unlink()  # a crash between the rename and the manifest line
    second = run_batch(pipe, tiny_recipe(), jobs, tmp_path, progress=False)
    assert second.skipped == ["00000-1-a-cat.png"] and second.written == ["00001-2-a-cat.png"]
    assert files_match_manifest(tmp_path) == ["00000-1-a-cat.png", "00001-2-a-cat.png"]
    assert leftovers(tmp_path) == []


def test_waits_for_a_job_another_run_holds(pipe, tmp_path):
    """A job claimed by a live run is left to it; once it is there the batch counts it as made by another run."""
    from fouriscale.frontend.recipe import finished_settings

    jobs = make_jobs(["a cat"], [1, 2])
    folder = OutputFolder(tmp_path).prepare()
    plan = fouriscale.get_plan(pipe, 64, 64, 2)
    settings = finished_settings(tiny_recipe(), jobs[0], "fouriscale", output_name(jobs[0], "fouriscale"), plan)
    image = render_images(pipe, tiny_recipe(), jobs[0])[
        "fouriscale"
    ]  # what the other run makes (one pipeline is not for two threads)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claim = tmp_path / f".{output_name(jobs[0], 'fouriscale')}.claim"
        claim.write_text(json.dumps({"pid": other.pid, "host": os.uname()[1], "start": "", "token": "x"}))

        def the_other_run_finishes():
            time.sleep(1.0)
            folder.save(image, settings, rank=7)
            with folder.lock:
                claim.unlink()

        thread = threading.Thread(target=the_other_run_finishes)
        thread.start()
        result = run_batch(pipe, tiny_recipe(), jobs, tmp_path, progress=False)
        thread.join()
    finally:
        other.kill()
        other.wait()
    assert result.written == ["00001-2-a-cat.png"] and result.by_others == ["00000-1-a-cat.png"]
    assert sorted(e["rank"] for e in Manifest(tmp_path).entries()) == [0, 7]
    files_match_manifest(tmp_path)


def test_a_live_run_with_other_settings_keeps_its_names(pipe, tmp_path):
    """A live run's registered names are taken: this run, with other settings, numbers its images after them."""
    from fouriscale.frontend.recipe import finished_settings

    jobs = make_jobs(["a cat"], [1])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = finished_settings(tiny_recipe(steps=20), jobs[0], "fouriscale", "00000-1-a-cat.png")
        registration = {
            "pid": other.pid,
            "host": os.uname()[1],
            "start": "",
            "token": "y",
            "names": {"00000-1-a-cat.png": [theirs["key"], "a cat", "fouriscale"]},
        }
        (tmp_path / ".fouriscale-run.y.json").write_text(json.dumps(registration))
        assert run_batch(pipe, tiny_recipe(), jobs, tmp_path, progress=False).written == ["00001-1-a-cat.png"]
    finally:
        other.kill()
        other.wait()
    # once that run is gone its registration is stale and removed; this run's image is found by its settings
    assert run_batch(pipe, tiny_recipe(), jobs, tmp_path, progress=False).skipped == ["00001-1-a-cat.png"]
    assert leftovers(tmp_path) == []


def test_a_batch_grown_shrunk_or_reordered_renders_only_what_is_new(pipe, tmp_path):
    """An image's identity is its settings, not its place in the batch (issue 24: --seed 1-3 rerun as 1-5 rendered
    the finished images again under new numbers, with colliding prefixes and keys listed twice)."""
    recipe = tiny_recipe()
    first = run_batch(pipe, recipe, make_jobs(["a cat", "a dog"], [1, 2]), tmp_path, progress=False)
    assert first.written == ["00000-1-a-cat.png", "00001-2-a-cat.png", "00002-1-a-dog.png", "00003-2-a-dog.png"]
    grown = run_batch(pipe, recipe, make_jobs(["a cat", "a dog"], [1, 2, 3]), tmp_path, progress=False)
    assert grown.written == ["00004-3-a-cat.png", "00005-3-a-dog.png"]
    assert sorted(grown.skipped) == sorted(first.written)
    # reordered and shrunk, with a new prompt in front: only the new prompt's images are made, numbered after the rest
    again = run_batch(pipe, recipe, make_jobs(["a cow", "a dog", "a cat"], [3, 1]), tmp_path, progress=False)
    assert again.written == ["00006-3-a-cow.png", "00007-1-a-cow.png"]
    assert again.skipped == ["00005-3-a-dog.png", "00002-1-a-dog.png", "00004-3-a-cat.png", "00000-1-a-cat.png"]
    # a job given twice is made once
    twice = run_batch(pipe, recipe, make_jobs(["a cat", "a cat"], [1]), tmp_path, progress=False)
    assert twice.written == [] and twice.skipped == ["00000-1-a-cat.png"]
    # another setting: a new image under a new number, the old one untouched
    before = (tmp_path / "00000-1-a-cat.png").read_bytes()
    changed = run_batch(pipe, tiny_recipe(steps=3), make_jobs(["a cat"], [1]), tmp_path, progress=False)
    assert changed.written == ["00008-1-a-cat.png"]
    assert (tmp_path / "00000-1-a-cat.png").read_bytes() == before
    names = files_match_manifest(tmp_path)
    keys = [e["key"] for e in Manifest(tmp_path).entries()]
    assert len(keys) == len(set(keys)) == len(names) == 9
    assert len({name.split("-")[0] for name in names}) == 9  # no two files share a number


def test_resume_after_a_killed_run_removes_stale_temp_files(tmp_path):
    out = tmp_path / "o"
    args = [*GEN, "a cat", "--steps", "2", "--seed", "1-8", "--out", out]
    log = open(tmp_path / "killed.log", "w")
    proc = start_cli(*args, stdout=log, stderr=log)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("*.png")) and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    first = sorted(p.name for p in out.glob("*.png"))
    assert 1 <= len(first) < 8, (first, (tmp_path / "killed.log").read_text()[-2000:])
    (out / ".00007-8-a-cat.png.k2j3h4x9.tmp").write_bytes(b"half an image")  # what a kill mid-write leaves
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert f"{len(first)} already done" in done.stdout
    names = files_match_manifest(out)
    assert names == [f"0000{i}-{i + 1}-a-cat.png" for i in range(8)]
    assert leftovers(out) == []  # temp file, claim and run registration of the killed run are gone


def _concurrent(tmp_path, second_args):
    """Two CLI processes into one folder at once (the second with ``second_args``)."""
    out = tmp_path / "o"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\na cow\n", encoding="utf-8")
    common = [*GEN, "--prompts", prompts, "--seed", "1-2", "--out", out]
    a = start_cli(*common, "--steps", "2", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    b = start_cli(*common, *second_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = [(p.returncode, *p.communicate(timeout=300)) for p in (a, b)]
    return out, [(p.returncode, o, e) for p, (_, o, e) in zip((a, b), results)]


def test_two_runs_with_equal_settings_split_the_work(tmp_path):
    out, runs = _concurrent(tmp_path, ["--steps", "2"])
    for code, _, stderr in runs:
        assert code == 0, stderr[-2000:]
    written = [int(stdout.split(" image(s) written")[0].split()[-1]) for _, stdout, _ in runs]
    assert sum(written) == 6  # no image rendered twice
    assert len(files_match_manifest(out)) == 6  # no duplicate manifest line
    assert leftovers(out) == []


def test_two_runs_of_a_grown_batch_share_the_folder(tmp_path):
    """Started together, one with --seed 1-2 and one with --seed 1-3: each image is made once, numbers unique."""
    out, runs = _concurrent(tmp_path, ["--steps", "2", "--seed", "1-3"])
    for code, _, stderr in runs:
        assert code == 0, stderr[-2000:]
    written = [int(stdout.split(" image(s) written")[0].split()[-1]) for _, stdout, _ in runs]
    assert sum(written) == 9
    names = files_match_manifest(out)
    assert len(names) == 9 and len({n.split("-")[0] for n in names}) == 9
    assert {(read_settings(out / n)["prompt"], read_settings(out / n)["seed"]) for n in names} == {
        (p, seed) for p in ("a cat", "a dog", "a cow") for seed in (1, 2, 3)
    }
    assert leftovers(out) == []


def test_two_runs_with_different_settings_both_finish_under_their_own_numbers(tmp_path):
    out, runs = _concurrent(tmp_path, ["--steps", "3"])
    for code, _, stderr in runs:
        assert code == 0, stderr[-2000:]
    names = files_match_manifest(out)
    assert len(names) == 12 and len({n.split("-")[0] for n in names}) == 12  # nothing overwritten, no name shared
    assert sorted(read_settings(out / n)["steps"] for n in names) == [2] * 6 + [3] * 6
    assert leftovers(out) == []


def test_two_processes_share_the_work(tmp_path):
    """``accelerate launch`` with two CPU processes; each is ``fouriscale`` forked from the fork server through its
    relay script (``--no_python``), so the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) is what
    the command sees."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"prompt {i}" for i in range(4)), encoding="utf-8")
    out = tmp_path / "o"
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no", "--no_python"]
    command = [forkserver.relay_script(tmp_path), "generate", "--prompts", prompts, "--model", "tiny:sd1"]
    command += ["--size", "64x64", "--steps", "2", "--device", "cpu", "--out", out, "--no-progress"]
    extra = dict(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true", FORKSERVER_SOCKET=forkserver.socket_path())
    done = subprocess.run(
        [sys.executable, *launcher, *map(str, command)], capture_output=True, text=True, env=env(**extra), timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    files_match_manifest(out)
    entries = Manifest(out).entries()
    assert len(entries) == 4 and {e["rank"] for e in entries} == {0, 1}
    first = next(e for e in entries if e["file"].startswith("00000-"))
    assert pixels(out / first["file"]).shape == (64, 64, 3)
