"""The ``fouriscale`` command's argument handling (frontend/cli.py, options.py, params.py): one smoke test per
command in a process of its own (forked from the fork server; the first in a new interpreter), everything else
in-process through ``main([...])``: defaults, what every option reaches, values refused before any work with one
line and exit status 2, exit status 1 only for a bug."""

import json
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
from PIL import Image

import fouriscale
from fouriscale.frontend.cli import main
from fouriscale.frontend.files import image_name, read_settings
from fouriscale.frontend.folder import Manifest
from fouriscale.testing import tiny_pipeline
from support.frontend import FAST, IDLE_LOW_PASS, api_render, cli, close, env, error_line, pixels, run_cli


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


@pytest.fixture(scope="module")
def api_pipe():
    """The built-in tiny SD model with FouriScale applied through the public API."""
    pipe = tiny_pipeline("sd1")
    pipe.set_progress_bar_config(disable=True)
    return fouriscale.apply_fouriscale(pipe)


# ---------------------------------------------------------------------------------------------- smoke tests


def test_smoke_generate_with_the_builtin_tiny_model(tmp_path, api_pipe):
    """The README's offline check, with --debug after the sub-command, in a new interpreter as from a shell."""
    out = tmp_path / "out"
    done = run_cli(
        "generate",
        "a cat",
        "--model",
        "tiny:sd1",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--out",
        out,
        "--no-progress",
        "--debug",
        fresh=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 image(s) written, 0 already done" in done.stdout
    name = image_name(0, 23, "a cat")
    assert close(pixels(out / name), api_render(api_pipe))  # the CLI's image is the API's (another process)
    assert read_settings(out / name)["model"] == "tiny:sd1"


def test_smoke_plan_and_a_size_refusal_within_seconds(tmp_path):
    done = run_cli("plan", "--model", "tiny:sdxl", "--size", "96x64", "--steps", "10")
    assert done.returncode == 0, done.stderr
    assert "base bucket        36x26" in done.stdout and "dilation d         3" in done.stdout
    start = time.monotonic()
    refused = run_cli("generate", "a cat", "--model", "tiny:sd1", "--size", "20000x20000", "--out", tmp_path / "o")
    assert time.monotonic() - start < 30
    assert refused.returncode == 2 and refused.stdout == ""
    line = refused.stderr.strip()
    assert "\n" not in line and line.startswith("fouriscale: error: ")
    assert "above FouriScale's size limit" in line and "--no-size-limit" in line
    assert not list((tmp_path / "o").glob("*.png"))


# -------------------------------------------------------------------------------------------- in-process


def test_generate_from_folder_with_lora_and_metadata_round_trip(tiny_dirs, files, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "generate",
        "a red cat",
        "--model",
        tiny_dirs["sd1"],
        "--size",
        "96x64",
        "--seed",
        "7",
        "--negative",
        "blurry, dark",
        "--lora",
        f"{files['lora']}:0.8",
        "--out",
        out,
        *FAST,
    ]
    assert cli(*args) == 0, capsys.readouterr().err
    name = image_name(0, 7, "a red cat")
    image = Image.open(out / name)
    assert image.size == (96, 64) and (out / name).stat().st_mode & 0o777 == 0o644
    settings = read_settings(out / name)
    assert settings["prompt"] == "a red cat" and settings["negative_prompt"] == "blurry, dark"
    assert (settings["seed"], settings["width"], settings["height"], settings["steps"]) == (7, 96, 64, 2)
    assert settings["scheduler"] == "ddim" and settings["eta"] == 1.0 and settings["guidance_scale"] == 7.5
    assert settings["loras"] == [{"path": files["lora"], "scale": 0.8}]
    assert settings["fouriscale"]["freeu"] == "paper" and settings["plan"]["dilation"] == 3
    params = image.text["parameters"].splitlines()
    assert params[0] == "a red cat" and params[1] == "Negative prompt: blurry, dark"
    assert "Seed: 7" in params[2] and "Size: 96x64" in params[2] and "Lora: " in params[2]
    entries = Manifest(out).entries()
    assert len(entries) == 1 and entries[0]["file"] == name and entries[0]["key"] == settings["key"]
    assert cli(*args) == 0  # same arguments again: nothing to do
    assert "0 image(s) written, 1 already done" in capsys.readouterr().out
    assert len(Manifest(out).entries()) == 1


def test_lora_scale_reaches_the_pipeline(tiny_dirs, files, tmp_path, api_pipe):
    """A LoRA at scale 0 gives the image without it; at 1.0 another one."""
    for scale in ("0", "1"):
        assert (
            cli(
                "generate",
                "a cat",
                "--model",
                tiny_dirs["sd1"],
                "--lora",
                f"{files['lora']}:{scale}",
                "--out",
                tmp_path / scale,
                *FAST,
            )
            == 0
        )
    name = image_name(0, 23, "a cat")
    plain = api_render(api_pipe)
    assert (pixels(tmp_path / "0" / name) == plain).all()
    assert (pixels(tmp_path / "1" / name) != plain).any()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_generate_from_single_file(tiny_dirs, files, tmp_path, family, capsys):
    out, folder_out = tmp_path / "out", tmp_path / "folder"
    code = cli("generate", "a house", "--model", files[family], "--config", tiny_dirs[family], "--out", out, *FAST)
    assert code == 0, capsys.readouterr().err
    settings = read_settings(out / image_name(0, 23, "a house"))
    assert settings["guidance_scale"] == fouriscale.FAMILIES[family].guidance_scale
    assert (settings["width"], settings["height"]) == (64, 64)  # default: twice the 32 px native size
    assert cli("generate", "a house", "--model", tiny_dirs[family], "--out", folder_out, *FAST) == 0
    name = image_name(0, 23, "a house")
    assert (pixels(out / name) == pixels(folder_out / name)).all()  # same weights, same image


def test_compare_seeds_and_prompts_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\n  a dog  \n", encoding="utf-8")
    out = tmp_path / "out"
    assert (
        cli("generate", "--prompts", prompts, "--model", "tiny:sdxl", "--seed", "3", "--compare", "--out", out, *FAST)
        == 0
    )
    names = sorted(p.name for p in out.glob("*.png"))
    assert len(names) == 6  # 2 prompts x (fouriscale, direct, side by side)
    assert "00001-3-a-dog-compare.png" in names and "00000-3-a-cat-direct.png" in names
    direct, ours = read_settings(out / "00000-3-a-cat-direct.png"), read_settings(out / "00000-3-a-cat.png")
    assert direct["method"] == "direct" and "fouriscale" not in direct and ours["method"] == "fouriscale"
    assert direct["guidance_scale"] == ours["guidance_scale"] == 5.0
    both = Image.open(out / "00000-3-a-cat-compare.png")
    assert both.size == (64 * 2 + 8, 64)
    assert (pixels(out / "00000-3-a-cat-compare.png")[:, :64] == pixels(out / "00000-3-a-cat-direct.png")).all()
    assert (pixels(out / "00000-3-a-cat-compare.png")[:, 72:] == pixels(out / "00000-3-a-cat.png")).all()
    assert sorted(e["file"] for e in Manifest(out).entries()) == names  # the manifest describes every file


def test_num_images_and_seed_lists(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli("generate", "a cat", "--model", "tiny:sd1", "--num-images", "2", "--seed", "5", "--out", out, *FAST) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["00000-5-a-cat.png", "00001-6-a-cat.png"]
    capsys.readouterr()
    assert cli("generate", "a cat", "--model", "tiny:sd1", "--num-images", "3", "--seed", "1,2", "--out", out) == 2
    assert "does not match" in error_line(capsys)


def test_plan_command_and_preset_windows(tiny_dirs, files, capsys):
    assert cli("plan", "--model", tiny_dirs["sdxl"], "--size", "96x64", "--steps", "10") == 0
    out = capsys.readouterr().out
    assert "base bucket        36x26" in out and "up_blocks.0.upsamplers.0.conv" in out
    assert cli("plan", "--model", files["sd1"], "--config", tiny_dirs["sd1"], "--size", "128x128") == 0
    assert "dilation d         4" in capsys.readouterr().out
    # A preset's 50-step window (10-30 for sd1 at d <= 3) is rescaled to other step counts: 2-6 of 10.
    assert cli("plan", "--model", "tiny:sd1", "--preset", "sd1-1024x1024", "--size", "64x64", "--steps", "10") == 0
    out = capsys.readouterr().out
    assert "full dilation for steps < 2, progressive for 2 <= i < 6, plain convs from step 6" in out
    # the pipeline's size rule: the tiny models' VAE factor is 4, diffusers' pipelines want multiples of 8
    assert cli("plan", "--model", "tiny:sd1", "--size", "68x68") == 2
    assert "height must be a positive multiple of 8 pixels for this model, got 68" in error_line(capsys)


def test_no_size_limit_lifts_the_bound(capsys):
    args = ["plan", "--model", "tiny:sd1", "--size", "16392x1024", "--base-size", "2048x2048", "--steps", "2"]
    assert cli(*args) == 2
    assert "above FouriScale's size limit" in error_line(capsys)
    assert cli(*args, "--no-size-limit") == 0
    assert "dilation d         9 (more than 8x" in capsys.readouterr().out


def test_far_beyond_native_warns_once_before_rendering(tmp_path, capsys):
    assert (
        cli(
            "generate",
            "a cat",
            "--model",
            "tiny:sdxl",
            "--size",
            "288x288",
            "--steps",
            "1",
            "--no-freeu",
            "--out",
            tmp_path,
            "--no-progress",
        )
        == 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fouriscale: warning: 288x288 is 9x the model's native 32x32")


def test_help_shows_defaults(capsys):
    assert main(["generate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in (
        "default: ddim",
        "default: 1.0",
        "default: 23",
        "7.5 for SD, 5.0 for SDXL",
        "default: paper",
        "default: 50",
        "tiny:sd1",
        "--no-size-limit",
    ):
        assert default in text, default
    for command in ("plan", "compare", "ui", "eval", "benchmark-quality"):
        assert main([command, "--help"]) == 0
        assert "--debug" in capsys.readouterr().out


def test_shared_options_are_declared_once():
    """generate, compare and plan take the same model/size/FouriScale options from one parent parser."""
    from fouriscale.frontend.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    flags = {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.items()}
    shared = {"--model", "--size", "--preset", "--steps", "--no-size-limit", "--start-step", "--no-low-pass", "--debug"}
    for name in ("generate", "compare", "plan", "benchmark-quality"):
        assert shared <= flags[name], name
    for name in ("generate", "compare", "ui", "benchmark-quality"):
        assert {"--device", "--dtype", "--offload"} <= flags[name], name


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "0x0"], "positive multiple of 8 pixels"),
        (["--width", "0"], "width must be a positive multiple"),
        (["--size", "64x65"], "multiple of 8 pixels"),
        (["--size", "68x68"], "multiple of 8 pixels"),
        (["--size", "sixtyfour"], "WIDTHxHEIGHT"),
        (["--size", "64x64", "--height", "64"], "not both"),
        (["--steps", "0"], "from 1 to 1000"),
        (["--steps", "1001"], "from 1 to 1000"),
        (["--dilation", "100"], "from 1 to 16"),
        (["--guidance", "inf"], "finite number"),
        (["--guidance", "nan"], "finite number"),
        (["--guidance", "-5"], "from 0 to 100"),
        (["--guidance", "1e308"], "from 0 to 100"),
        (["--eta", "-3"], "from 0 to 1"),
        (["--eta", "1.5"], "from 0 to 1"),
        (["--freeu-params", "1", "nan", "1", "1"], "finite number"),
        (["--start-step", "40", "--stop-step", "45"], "beyond the 2 denoising steps"),
        (["--start-step", "9", "--stop-step", "2", "--steps", "10"], "must not exceed"),
        (["--freeu", "diffusers", "--no-freeu"], "not allowed with argument"),
        (["--seed", "18446744073709551616"], "largest seed"),
        (["--seed", "9-3"], "backwards"),
        (["--seed", "abc"], "expected a seed"),
        (["--seed", "18446744073709551615", "--num-images", "2"], "run past 2**64 - 1"),
        (["--device", "tpu9"], "expected auto, cpu, cuda, cuda:N or mps"),
        (["--device", "cuda:7"], "no CUDA GPU" if not torch.cuda.is_available() else "CUDA GPU(s)"),
        (["--preset", "sdxl-2048x2048"], "is for SDXL"),
        (["--scheduler", "nope"], "invalid choice"),
        (["--lora", "/no/such/lora.safetensors"], "no such file"),
        (["--offload", "model", "--device", "cpu"], "needs a GPU"),
        (["--model", "tiny:sd9"], "tiny:sd1, tiny:sd2, tiny:sdxl"),
        (["--model", "/no/such/model"], "no such file or folder"),
        (["--model", "someone/not-cached-model"], "not in the local Hugging Face cache"),
        (["--prompts", "/no/such/prompts.txt"], "cannot read it"),
        (["--size", "2048x2048"], "needs dilation 64, more than FouriScale's 16"),
    ],
)
def test_bad_values_are_refused_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    import fouriscale.frontend.requests as requests

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(requests, "load_pipeline", no_load)
    argv = ["generate", "a cat", "--out", tmp_path / "o", *FAST]
    if "--model" not in args:
        argv += ["--model", "tiny:sd1"]
    if "--prompts" in args:
        argv.remove("a cat")
    assert cli(*argv, *args) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "o").exists()  # a refused run creates no folder and no file


@pytest.mark.parametrize("args", [["--size", "66x66"], ["--steps", "0"], ["--size", "64x64", "--width", "64"]])
def test_a_refused_run_leaves_nothing_behind(tmp_path, capsys, monkeypatch, args):
    """Issue 24: refused runs created ./outputs and left a 0-byte lock file in it."""
    monkeypatch.chdir(tmp_path)
    assert cli("generate", "a cat", "--model", "tiny:sd1", *args) == 2
    error_line(capsys)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "outputs").mkdir()
    assert cli("generate", "a cat", "--model", "tiny:sd1", "--no-progress", *args) == 2
    error_line(capsys)
    assert list((tmp_path / "outputs").iterdir()) == []


def test_conflicting_and_missing_prompts(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    assert cli("generate", "--prompts", empty, "--model", "tiny:sd1", "--out", tmp_path) == 2
    assert "holds no prompt" in error_line(capsys)
    assert cli("generate", "x", "--prompts", empty, "--model", "tiny:sd1", "--out", tmp_path) == 2
    assert "not both" in error_line(capsys)
    assert cli("generate", "--model", "tiny:sd1", "--out", tmp_path) == 2
    assert "no prompt" in error_line(capsys)


def test_out_must_be_a_writable_folder_before_loading(tmp_path, capsys):
    file = tmp_path / "file.png"
    file.write_bytes(b"x")
    assert cli("generate", "a cat", "--model", "/no/such/model", "--out", file) == 2
    assert "is a file, not a folder" in error_line(capsys)
    assert cli("generate", "a cat", "--model", "/no/such/model", "--out", file / "sub") == 2
    assert "cannot create the folder" in error_line(capsys)


def test_existing_different_image_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli("generate", "a cat", "--model", "tiny:sd1", "--out", out, *FAST) == 0
    before = (out / image_name(0, 23, "a cat")).read_bytes()
    capsys.readouterr()
    assert cli("generate", "a cat", "--model", "tiny:sd1", "--guidance", "3", "--out", out, *FAST) == 0
    assert "1 image(s) written, 0 already done" in capsys.readouterr().out  # another image: the next number
    assert (out / image_name(0, 23, "a cat")).read_bytes() == before
    assert read_settings(out / image_name(1, 23, "a cat"))["guidance_scale"] == 3.0
    # a file replaced by hand (its manifest line says other settings) is refused, not overwritten
    (out / image_name(0, 23, "a cat")).write_bytes((out / image_name(1, 23, "a cat")).read_bytes())
    assert cli("generate", "a cat", "--model", "tiny:sd1", "--out", out, *FAST) == 2
    line = error_line(capsys, after=(IDLE_LOW_PASS,))
    assert "00000-23-a-cat.png already holds an image made with other settings" in line
    assert "guidance_scale: 3.0 there, 7.5 here" in line


def test_hostile_prompt_end_to_end(tmp_path):
    out = tmp_path / "out"
    assert cli("generate", "../../escape/../me", "--model", "tiny:sd1", "--out", out, *FAST) == 0
    assert [p.name for p in out.glob("*.png")] == ["00000-23-escape-me.png"]
    assert not (tmp_path / "escape").exists()


def test_out_of_memory_gives_a_hint_and_keeps_finished_images(tmp_path, capsys, monkeypatch):
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
    assert cli("generate", "a cat", "--model", "tiny:sd1", "--seed", "1-3", "--out", out, *FAST) == 2
    line = error_line(capsys, after=(IDLE_LOW_PASS,))
    assert "out of GPU memory" in line and "--offload" in line
    assert [p.name for p in out.glob("*.png")] == ["00000-1-a-cat.png"]
    assert [e["file"] for e in Manifest(out).entries()] == ["00000-1-a-cat.png"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".fouriscale.lock"]  # no claim left


def test_an_interrupt_while_rendering_is_one_line_and_keeps_finished_images(tmp_path, capsys, monkeypatch):
    import fouriscale.frontend.batch as batch

    real_render, calls = batch.render_images, []

    def render(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(batch, "render_images", render)
    out = tmp_path / "o"
    args = ["generate", "a cat", "--model", "tiny:sd1", "--size", "96x96", "--seed", "1-3", "--out", out, *FAST]
    assert cli(*args) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "fouriscale: interrupted; finished images are kept, rerun the same command to resume"
    ]
    assert [p.name for p in out.glob("*.png")] == ["00000-1-a-cat.png"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".fouriscale.lock"]  # no claim left
    calls.clear()
    assert cli(*args, "--debug") == 130  # --debug: the traceback too, the same status
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" in err[0] and err[-1].startswith("fouriscale: interrupted")


def test_a_bug_exits_1_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import fouriscale.frontend.cli as cli_module

    def broken(args):
        raise RuntimeError("something inside broke")

    monkeypatch.setitem(cli_module.COMMANDS, "plan", broken)
    assert cli("plan", "--model", "tiny:sd1") == 1
    line = error_line(capsys)
    assert "RuntimeError: something inside broke" in line and "a bug" in line
    # --debug (after the sub-command too) adds the traceback; the exit status stays (issue 24: a mistake exited 1)
    assert cli("plan", "--model", "tiny:sd1", "--debug") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "Traceback (most recent call last):" and "a bug" in err[-1]
    assert cli("--debug", "generate", "a cat", "--model", "tiny:sd1", "--size", "68x68", "--out", tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" in err[0] and err[-1].startswith("fouriscale: error: height must be a positive multiple of 8")


def test_a_prompt_the_text_encoder_cuts_is_named_with_where(tmp_path, capsys):
    """Issue 24: prompts longer than the text encoder's 77 tokens were cut without a word unless --debug. The tiny
    models' tokenizer has a token per character: 75 fit between the start and end tokens."""
    prompt = "a photograph of a very small cat sitting on a red carpet in a sunny room with many plants and a window"
    assert cli("generate", prompt, "--model", "tiny:sd1", "--size", "96x96", "--out", tmp_path, *FAST) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"fouriscale: warning: prompt {prompt[:40].rstrip() + '…'!r} is longer than the text encoder's 77 tokens and "
        "is cut after '…t in a sunny room with many plants and a'; the rest is ignored: 'window'"
    ]


def test_version_and_model_help(capsys):
    import importlib.metadata

    assert cli("--version") == 0
    assert capsys.readouterr().out.strip() == f"fouriscale {importlib.metadata.version('fouriscale')}"
    assert cli("generate", "--help") == 0
    assert "tiny:sd1 / tiny:sd2 / tiny:sdxl" in " ".join(capsys.readouterr().out.split())


def test_an_interrupt_during_start_up_is_one_line_and_exit_130(tmp_path):
    """Ctrl+C while the command line still imports torch and diffusers (seconds): one line, exit status 130 (issue 24:
    a 67-line KeyboardInterrupt traceback). A new interpreter, as a shell starts it."""
    command = [sys.executable, "-m", "fouriscale", "plan", "--model", "tiny:sd1"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines() == ["fouriscale: interrupted"] and out == ""


def test_library_warnings_are_filtered_by_category_and_module(capsys):
    with warnings.catch_warnings():
        assert cli("plan", "--model", "tiny:sd1", "--size", "64x64") == 0
        catch_all = [
            f for f in warnings.filters if f[0] == "ignore" and f[1] is None and f[2] is Warning and f[3] is None
        ]
        assert not catch_all
        ours = [f for f in warnings.filters if f[0] == "ignore" and f[3] is not None and "diffusers" in f[3].pattern]
        assert {f[2] for f in ours} >= {FutureWarning, DeprecationWarning}
        with pytest.warns(UserWarning, match="still shown"):
            warnings.warn("still shown", UserWarning, stacklevel=1)  # other code's warnings are not silenced


def test_smoke_eval(tmp_path, capsys):
    import numpy as np

    for name in ("real", "fake"):
        (tmp_path / name).mkdir()
        for i in range(3):
            rng = np.random.default_rng(i + (10 if name == "fake" else 0))
            Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)).save(tmp_path / name / f"{i}.png")
    report = tmp_path / "scores.json"
    hook = ["--feature-extractor", "support.evaluation:tiny_feature_net", "--device", "cpu", "--no-progress"]
    done = run_cli(
        "eval",
        "--real",
        tmp_path / "real",
        "--fake",
        tmp_path / "fake",
        "--metrics",
        "fid,kid",
        "--json",
        report,
        *hook,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(report.read_text())
    assert set(data["metrics"]) == {"fid", "kid_mean", "kid_std"} and f"{data['metrics']['fid']:.6g}" in done.stdout
    assert cli("eval", "--real", tmp_path / "nope", "--fake", tmp_path / "fake", *hook) == 2
    assert "does not exist" in error_line(capsys)
