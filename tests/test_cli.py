"""The ``fouriscale`` command end to end on tiny models: folders, single files, LoRA, metadata, resume,
two processes, hostile prompts and every error path (one line, non-zero exit)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from fouriscale.frontend.cli import main
from fouriscale.frontend.outputs import Manifest, image_name, read_settings, slugify

FAST = ["--steps", "3", "--no-progress"]


@pytest.fixture(scope="module")
def files(tiny_dirs, tmp_path_factory):
    """Single-file checkpoints and a LoRA made from the tiny pipelines."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from fouriscale.testing import save_single_file, save_tiny_lora

    root = tmp_path_factory.mktemp("files")
    sd = StableDiffusionPipeline.from_pretrained(tiny_dirs["sd1"])
    xl = StableDiffusionXLPipeline.from_pretrained(tiny_dirs["sdxl"])
    return {
        "sd1": save_single_file(sd, str(root / "sd1.safetensors")),
        "sdxl": save_single_file(xl, str(root / "sdxl.safetensors")),
        "lora": save_tiny_lora(str(root / "lora"), sd),
        "root": root,
    }


def cli(*args):
    return main([str(a) for a in args])


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fouriscale: error:"), err
    assert "Traceback" not in err[0]
    return err[0]


def test_generate_from_folder_with_lora_and_metadata_round_trip(tiny_dirs, files, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli("generate", "a red cat", "--model", tiny_dirs["sd1"], "--size", "96x64", "--seed", "7",
               "--negative", "blurry, dark", "--lora", f"{files['lora']}:0.8", "--out", out, *FAST)  # fmt: skip
    assert code == 0, capsys.readouterr().err
    name = image_name(0, 7, "a red cat")
    image = Image.open(out / name)
    assert image.size == (96, 64)
    settings = read_settings(out / name)
    assert settings["prompt"] == "a red cat" and settings["negative_prompt"] == "blurry, dark"
    assert (settings["seed"], settings["width"], settings["height"], settings["steps"]) == (7, 96, 64, 3)
    assert settings["scheduler"] == "ddim" and settings["eta"] == 1.0 and settings["guidance_scale"] == 7.5
    assert settings["loras"] == [{"path": files["lora"], "scale": 0.8}]
    assert settings["fouriscale"]["freeu"] == "paper" and settings["plan"]["dilation"] == 3
    assert settings["version"] and settings["model"] == tiny_dirs["sd1"]
    params = image.text["parameters"].splitlines()
    assert params[0] == "a red cat" and params[1] == "Negative prompt: blurry, dark"
    assert "Seed: 7" in params[2] and "Size: 96x64" in params[2] and "Sampler: ddim" in params[2]
    assert image.text["Description"] == "a red cat" and image.text["Software"].startswith("fouriscale")
    entries = Manifest(out).entries()
    assert len(entries) == 1 and entries[0]["file"] == name and entries[0]["key"] == settings["key"]
    # Same arguments again: nothing to do.
    assert cli("generate", "a red cat", "--model", tiny_dirs["sd1"], "--size", "96x64", "--seed", "7",
               "--negative", "blurry, dark", "--lora", f"{files['lora']}:0.8", "--out", out, *FAST) == 0  # fmt: skip
    assert "0 image(s) written, 1 already done" in capsys.readouterr().out
    assert len(Manifest(out).entries()) == 1


def test_lora_changes_the_image(tiny_dirs, files, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("generate", "a cat", "--model", tiny_dirs["sd1"], "--size", "64x64", "--out", a, *FAST) == 0
    assert cli("generate", "a cat", "--model", tiny_dirs["sd1"], "--size", "64x64", "--out", b,
               "--lora", files["lora"], *FAST) == 0  # fmt: skip
    name = image_name(0, 23, "a cat")
    assert Image.open(a / name).tobytes() != Image.open(b / name).tobytes()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_generate_from_single_file(tiny_dirs, files, tmp_path, family, capsys):
    out = tmp_path / "out"
    code = cli("generate", "a house", "--model", files[family], "--config", tiny_dirs[family], "--size", "64x64",
               "--out", out, *FAST)  # fmt: skip
    assert code == 0, capsys.readouterr().err
    settings = read_settings(out / image_name(0, 23, "a house"))
    assert settings["guidance_scale"] == (5.0 if family == "sdxl" else 7.5)
    # The single file holds the same weights as the folder: same image.
    folder_out = tmp_path / "folder"
    assert cli("generate", "a house", "--model", tiny_dirs[family], "--size", "64x64", "--out", folder_out, *FAST) == 0
    name = image_name(0, 23, "a house")
    assert Image.open(out / name).tobytes() == Image.open(folder_out / name).tobytes()


def test_compare_seeds_and_prompts_file(tiny_dirs, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\n  a dog  \n", encoding="utf-8")
    out = tmp_path / "out"
    assert cli("generate", "--prompts", prompts, "--model", tiny_dirs["sdxl"], "--size", "64x64", "--seed", "3-4",
               "--compare", "--out", out, *FAST) == 0  # fmt: skip
    names = sorted(p.name for p in out.glob("*.png"))
    assert len(names) == 12  # 2 prompts x 2 seeds x (fouriscale, direct, side by side)
    assert "00003-4-a-dog-compare.png" in names and "00000-3-a-cat-direct.png" in names
    direct = read_settings(out / "00000-3-a-cat-direct.png")
    ours = read_settings(out / "00000-3-a-cat.png")
    assert direct["method"] == "direct" and "fouriscale" not in direct and ours["method"] == "fouriscale"
    assert Image.open(out / "00000-3-a-cat-compare.png").size == (64 * 2 + 8, 64)
    assert len(Manifest(out).entries()) == 8


def test_num_images_and_seed_lists(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli("generate", "a cat", "--model", tiny_dirs["sd1"], "--size", "64x64", "--num-images", "2",
               "--seed", "5", "--out", out, *FAST) == 0  # fmt: skip
    assert sorted(p.name for p in out.glob("*.png")) == ["00000-5-a-cat.png", "00001-6-a-cat.png"]
    assert cli("generate", "a cat", "--model", tiny_dirs["sd1"], "--num-images", "3", "--seed", "1,2",
               "--out", out, *FAST) == 2  # fmt: skip
    assert "does not match" in error_line(capsys)


def test_plan_command(tiny_dirs, files, capsys):
    assert cli("plan", "--model", tiny_dirs["sdxl"], "--size", "96x64", "--steps", "10") == 0
    out = capsys.readouterr().out
    assert "base bucket        36x26" in out and "dilation d         3" in out and "up_blocks.0.upsamplers.0.conv" in out
    assert cli("plan", "--model", files["sd1"], "--config", tiny_dirs["sd1"], "--size", "128x128") == 0
    out = capsys.readouterr().out
    assert "dilation d         4" in out and "plain convs from step 35" in out


def test_help_shows_defaults(capsys):
    assert main(["generate", "--help"]) == 0
    text = capsys.readouterr().out
    for default in ("default: ddim", "default: 1.0", "default: 23", "7.5 for SD, 5.0 for SDXL", "default: paper",
                    "default: 50"):  # fmt: skip
        assert default in text, default


@pytest.mark.parametrize(
    "prompt",
    ["../../etc/passwd", "..\\..\\windows\\system32", "CON", "a/b\\c:d*e?f\"g<h>i|j", "   ", "\x00\x1f\x7f",
     "ééé ünïcødé 猫", "x" * 500, ".hidden"],
)  # fmt: skip
def test_hostile_prompts_give_safe_names(prompt):
    name = image_name(12, 99, prompt)
    assert name.startswith("00012-99-") and name.endswith(".png")
    assert "/" not in name and "\\" not in name and ".." not in name and len(name) <= 80
    assert all(c.isalnum() or c in "-." for c in name)
    assert slugify(prompt) == slugify(prompt).strip("-")


def test_hostile_prompt_end_to_end(tiny_dirs, tmp_path):
    out = tmp_path / "out"
    assert cli("generate", "../../escape/../me", "--model", tiny_dirs["sd1"], "--size", "64x64", "--out", out, *FAST) == 0
    assert [p.name for p in out.glob("*.png")] == ["00000-23-escape-me.png"]
    assert not (tmp_path / "escape").exists()


def test_pickle_checkpoints_are_refused(tiny_dirs, tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, ckpt)
    assert cli("generate", "a cat", "--model", ckpt, "--out", tmp_path / "o", *FAST) == 2
    line = error_line(capsys)
    assert "pickle" in line and "--allow-pickle" in line
    lora = tmp_path / "lora.bin"
    torch.save({}, lora)
    assert cli("generate", "a cat", "--model", tiny_dirs["sd1"], "--lora", lora, "--out", tmp_path / "o", *FAST) == 2
    assert "--allow-pickle" in error_line(capsys)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/no/such/model"], "no such file or folder"),
        (["--model", "someone/not-cached-model"], "not in the local Hugging Face cache"),
        (["--prompts", "/no/such/prompts.txt"], "cannot read it"),
        (["--size", "64x65"], "multiple of 8"),
        (["--size", "sixtyfour"], "WIDTHxHEIGHT"),
        (["--size", "64x64", "--height", "64"], "not both"),
        (["--seed", "9-3"], "backwards"),
        (["--seed", "abc"], "expected a seed"),
        (["--steps", "0"], "at least 1"),
        (["--start-step", "9", "--stop-step", "2"], "must not exceed"),
        (["--preset", "sdxl-2048x2048"], "is for SDXL"),
        (["--scheduler", "nope"], "invalid choice"),
        (["--lora", "/no/such/lora.safetensors"], "no such file"),
        (["--offload", "model", "--device", "cpu"], "needs a GPU"),
    ],
)
def test_error_paths(tiny_dirs, tmp_path, capsys, args, message):
    argv = ["generate", "a cat", "--out", tmp_path / "o", *FAST]
    if "--model" not in args:
        argv += ["--model", tiny_dirs["sd1"]]
    if "--prompts" in args:
        argv.remove("a cat")
    assert cli(*argv, *args) == 2
    assert message in error_line(capsys)
    assert not list((tmp_path / "o").glob("*.png")) if (tmp_path / "o").exists() else True


def test_bad_lora_file_and_size_the_model_cannot_take(tiny_dirs, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert cli("generate", "a cat", "--model", tiny_dirs["sd1"], "--lora", bad, "--out", tmp_path / "o", *FAST) == 2
    assert "--lora" in error_line(capsys)
    assert cli("generate", "a cat", "--model", tiny_dirs["sdxl"], "--size", "512x32", "--out", tmp_path / "o", *FAST) == 2
    assert "aspect ratios SDXL was trained on" in error_line(capsys)
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    assert cli("generate", "a cat", "--model", garbage, "--out", tmp_path / "o", *FAST) == 2
    assert "not a readable .safetensors" in error_line(capsys)


def test_out_of_memory_gives_a_hint_and_keeps_finished_images(tiny_dirs, tmp_path, capsys, monkeypatch):
    from diffusers import StableDiffusionPipeline

    real_call = StableDiffusionPipeline.__call__
    calls = []

    def call(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", call)
    out = tmp_path / "o"
    assert cli("generate", "a cat", "--model", tiny_dirs["sd1"], "--seed", "1-3", "--out", out, *FAST) == 2
    line = error_line(capsys)
    assert "out of GPU memory" in line and "--offload" in line
    assert [p.name for p in out.glob("*.png")] == ["00000-1-a-cat.png"]
    assert len(Manifest(out).entries()) == 1


def test_existing_different_image_is_never_overwritten(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "o"
    assert cli("generate", "a cat", "--model", tiny_dirs["sd1"], "--size", "64x64", "--out", out, *FAST) == 0
    before = (out / image_name(0, 23, "a cat")).read_bytes()
    assert cli("generate", "a cat", "--model", tiny_dirs["sd1"], "--size", "64x64", "--guidance", "3",
               "--out", out, *FAST) == 2  # fmt: skip
    assert "other settings" in error_line(capsys)
    assert (out / image_name(0, 23, "a cat")).read_bytes() == before


def _run_cli(args, env_extra=None, **popen):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "fouriscale", *map(str, args)], env=env, **popen)


def test_resume_after_a_killed_run(tiny_dirs, tmp_path):
    out = tmp_path / "o"
    args = ["generate", "a cat", "--model", tiny_dirs["sd1"], "--size", "64x64", "--steps", "8", "--seed", "1-4",
            "--out", out, "--no-progress"]  # fmt: skip
    proc = _run_cli(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.png"))) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = sorted(p.name for p in out.glob("*.png"))
    assert 1 <= len(first) < 4
    done = subprocess.run([sys.executable, "-m", "fouriscale", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{len(first)} already done" in done.stdout
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"0000{i}-{i + 1}-a-cat.png" for i in range(4)]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    entries = Manifest(out).entries()
    assert sorted(e["file"] for e in entries) == names  # no duplicates, nothing missing


def test_two_processes_share_the_work(tiny_dirs, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"prompt {i}" for i in range(4)), encoding="utf-8")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fouriscale",
           "generate", "--prompts", str(prompts), "--model", tiny_dirs["sd1"], "--size", "64x64", "--steps", "2",
           "--device", "cpu", "--out", str(out), "--no-progress"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    entries = Manifest(out).entries()
    assert sorted(e["file"] for e in entries) == sorted(p.name for p in out.glob("*.png"))
    assert len(entries) == 4 and len({e["file"] for e in entries}) == 4
    assert {e["rank"] for e in entries} == {0, 1}
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    assert all(json.loads(line) for line in lines) and len(lines) == 4
