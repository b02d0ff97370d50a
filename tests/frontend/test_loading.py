"""Model loading (frontend/loading.py): the built-in tiny models, and errors that tell the truth in one line
before the weights are read: truncated files, a folder without unet/, pickle files, LoRA scales and
mismatches, devices, and the Hub offline or unreachable (no retries)."""

import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

from fouriscale.frontend.cli import main
from fouriscale.frontend.errors import UserError
from fouriscale.frontend.loading import (
    load_pipeline,
    load_plan_source,
    load_unet_profile_source,
    parse_lora,
    resolve_device,
)
from fouriscale.testing import tiny_vae
from support.frontend import FAST, cli, error_line


@pytest.fixture(scope="module")
def loras(tiny_dirs, tmp_path_factory):
    from diffusers import StableDiffusionXLPipeline

    from fouriscale.testing import save_tiny_lora

    root = tmp_path_factory.mktemp("loras")
    xl = StableDiffusionXLPipeline.from_pretrained(tiny_dirs["sdxl"])
    return {"sdxl": save_tiny_lora(str(root / "xl"), xl), "root": root}


def test_tiny_models_load_offline():
    loaded = load_pipeline("tiny:sdxl", device="cpu")
    assert (
        loaded.family == "sdxl" and loaded.kind == "tiny" and type(loaded.pipe).__name__ == "StableDiffusionXLPipeline"
    )
    unet, factor = load_unet_profile_source("tiny:sd1")
    assert factor == loaded.pipe.vae_scale_factor == 4 and unet.device.type == "meta"
    with pytest.raises(UserError, match="tiny:sd1, tiny:sd2, tiny:sdxl"):
        load_pipeline("tiny:sd3")


def test_planning_sources_are_built_once_per_config(tiny_dirs, tmp_path):
    """The meta-device UNet for planning is cached by its config: the same folder gives the same object, a folder
    whose config changed gives a UNet of the new config."""
    import json

    first, factor = load_unet_profile_source(tiny_dirs["sd1"])
    assert load_unet_profile_source(tiny_dirs["sd1"])[0] is first and factor == 4 and first.device.type == "meta"
    changed = tmp_path / "changed"
    shutil.copytree(tiny_dirs["sd1"], changed)
    config = json.loads((changed / "unet" / "config.json").read_text())
    (changed / "unet" / "config.json").write_text(json.dumps(dict(config, sample_size=12)))
    other, _ = load_unet_profile_source(str(changed))
    assert other is not first and other.config.sample_size == 12 and first.config.sample_size == 8


def test_devices_are_checked_before_loading():
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") in ("cpu", "cuda", "mps")
    for name, message in (("tpu9", "expected auto, cpu"), ("cpu:1", "expected auto, cpu"), ("gpu", "expected")):
        with pytest.raises(UserError, match=message):
            resolve_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_lora_specs(tmp_path):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"x")
    assert parse_lora(str(lora)) == (str(lora), 1.0)
    assert parse_lora(f"{lora}:0.5") == (str(lora), 0.5)
    assert parse_lora("C:\\loras\\x.safetensors") == ("C:\\loras\\x.safetensors", 1.0)
    for spec, message in ((f"{lora}:abc", "bad LoRA scale 'abc'"), (f"{lora}:nan", "finite number")):
        with pytest.raises(UserError, match=message):
            parse_lora(spec)


def _copy(tiny_dirs, tmp_path, family="sd1"):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dirs[family], folder)
    return folder


def test_a_folder_without_unet_is_named(tiny_dirs, tmp_path, capsys):
    folder = _copy(tiny_dirs, tmp_path)
    shutil.rmtree(folder / "unet")
    for args in (["generate", "a cat", "--out", tmp_path / "o", *FAST], ["plan"]):
        assert cli(*args, "--model", folder) == 2
        assert "has no unet/ subfolder" in error_line(capsys)


def test_truncated_weights_are_named_as_such(tiny_dirs, tmp_path, capsys):
    folder = _copy(tiny_dirs, tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert cli("generate", "a cat", "--model", folder, "--out", tmp_path / "o", *FAST) == 2
    line = error_line(capsys)
    assert "diffusion_pytorch_model.safetensors is truncated or corrupt" in line and "pickle" not in line
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    assert cli("generate", "a cat", "--model", garbage, "--out", tmp_path / "o", *FAST) == 2
    assert "not a readable .safetensors checkpoint: it is truncated or corrupt" in error_line(capsys)


def test_pickle_files_are_refused(tiny_dirs, tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, ckpt)
    assert cli("generate", "a cat", "--model", ckpt, "--out", tmp_path / "o", *FAST) == 2
    line = error_line(capsys)
    assert "pickle" in line and "--allow-pickle" in line
    lora = tmp_path / "lora.bin"
    torch.save({}, lora)
    assert cli("generate", "a cat", "--model", "tiny:sd1", "--lora", lora, "--out", tmp_path / "o", *FAST) == 2
    assert "--allow-pickle" in error_line(capsys)


def test_bad_lora_files_fail_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import fouriscale.frontend.requests as requests

    monkeypatch.setattr(requests, "load_pipeline", lambda *a, **k: pytest.fail("loaded the model first"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert cli("generate", "a cat", "--model", "tiny:sd1", "--lora", bad, "--out", tmp_path / "o") == 2
    assert "--lora" in (line := error_line(capsys)) and "truncated or corrupt" in line
    assert cli("generate", "a cat", "--model", "tiny:sd1", "--lora", f"{bad}:abc", "--out", tmp_path / "o") == 2
    assert "bad LoRA scale 'abc'" in error_line(capsys)


def test_a_lora_for_another_family_is_one_line_without_library_logs(tiny_dirs, loras, tmp_path, capfd):
    assert cli("generate", "a cat", "--model", tiny_dirs["sd1"], "--lora", loras["sdxl"], "--out", tmp_path, *FAST) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "its weights do not fit this model" in err[0] and "more" in err[0] and "another model family" in err[0]


def test_hub_offline_and_unreachable_fail_fast(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    assert cli("plan", "--model", "someone/not-cached") == 2
    assert "not in the local Hugging Face cache and the Hub is offline" in error_line(capsys)
    with socket.socket() as closed:  # a port nobody listens on: the Hub "unreachable"
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    for args in (
        ["plan", "--model", "someone/not-cached"],
        ["generate", "x", "--model", "someone/not-cached", "--out", tmp_path],
    ):
        assert cli(*args) == 2
        line = error_line(capsys)
        assert "cannot reach http://127.0.0.1" in line and "--model PATH" in line
    assert time.monotonic() - start < 10  # no retries


def test_the_plan_command_reads_the_vae_class_from_the_folder(tiny_dirs, tmp_path, capsys):
    folder = tmp_path / "asymmetric"  # the configs are all the plan reads
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text((Path(tiny_dirs["sd1"]) / "unet" / "config.json").read_text())
    tiny_vae("AsymmetricAutoencoderKL").save_config(folder / "vae")
    assert load_plan_source(str(folder))[1:] == (4, "AsymmetricAutoencoderKL")
    assert load_plan_source("tiny:sd1")[2] == "AutoencoderKL"
    assert main(["plan", "--model", str(folder), "--size", "64x64", "--steps", "2"]) == 0
    assert "VAE decode         AsymmetricAutoencoderKL's own at this size (tiled" in capsys.readouterr().out
