"""The memory budget and estimate in the front ends: ``fouriscale plan --memory`` / ``--max-memory``, ``generate
--max-memory`` (chosen before the weights are loaded, recorded in the image, refused in one line) and the web UI's
memory budget field. The budgets are taken from the estimates of the same model, so each test asks for a lever."""

from pathlib import Path

import pytest

import fouriscale
from fouriscale.frontend.errors import UserError
from fouriscale.frontend.files import read_settings
from fouriscale.frontend.loading import load_estimate_source
from fouriscale.frontend.ui import Studio
from fouriscale.memory import format_bytes
from support.frontend import FAST, cli, close, error_line, pixels

SIZE = ["--size", "96x96"]


@pytest.fixture(scope="module")
def estimates():
    """``tiny:sd2`` at 96x96, 2 steps, fp32 on the CPU (its FouriScale step, not the decode, has the highest peak):
    the estimate as set and with the unconditional pass alone (the budget's first lever)."""
    pipe = load_estimate_source("tiny:sd2", "fp32", "cpu")

    def peak(**settings):
        config = fouriscale.FouriScaleConfig(**settings)
        return fouriscale.estimate_memory(pipe, 96, 96, 2, config, device="cpu").peak

    return dict(as_set=peak(), alone=peak(sequential_uncond=True))


def test_plan_memory_prints_the_plan_and_both_estimates(capsys):
    assert cli("plan", "--model", "tiny:sd1", *SIZE, "--steps", "2", "--dtype", "fp32", "--memory") == 0
    out = capsys.readouterr().out
    assert "dilation" in out and out.count("peak") >= 2
    pipe = load_estimate_source("tiny:sd1", "fp32", "cuda")
    for direct in (True, False):
        estimate = fouriscale.estimate_memory(pipe, 96, 96, 2, dtype="fp32", direct=direct)
        assert str(estimate) in out  # the library's own report, for a GPU
        assert format_bytes(estimate.peak) in out


def test_plan_with_a_budget_shows_what_it_chose(capsys, estimates):
    budget = estimates["alone"]
    assert estimates["as_set"] > budget
    assert cli("plan", "--model", "tiny:sd2", *SIZE, "--steps", "2", "--dtype", "fp32", "--max-memory", budget) == 0
    out = capsys.readouterr().out
    assert f"memory budget      budget {format_bytes(budget)}: fits with unconditional pass alone" in out
    assert "unconditional branch as a pass of its own" in out  # the plan follows the choice


def test_the_paper_models_are_planned_offline_from_the_shipped_configs(capsys, monkeypatch):
    # No cache, no network: the shipped configs alone (the hub is never asked).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("fouriscale.frontend.loading.check_hub", _no_hub)
    model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert cli("plan", "--model", model, "--size", "1024x1024", "--steps", "50") == 0
    out = capsys.readouterr().out
    assert "native 512x512" in out or "512x512" in out


def _no_hub(*args, **kwargs):
    raise AssertionError("the hub was asked")


@pytest.mark.parametrize(
    "budget, says",
    [
        ("12 parsecs", "has an unknown unit 'parsecs'"),
        ("0", "must be more than 0 bytes"),
        ("=-3GB", "must be more than 0 bytes"),
        ("12G", "is ambiguous; write 12GB"),
    ],
)
def test_malformed_budgets_are_refused_in_one_line(capsys, tmp_path, budget, says):
    flag = ["--max-memory" + budget] if budget.startswith("=") else ["--max-memory", budget]
    out = tmp_path / "out"
    for command in (["plan"], ["generate", "a cat", "--out", out, *FAST]):
        assert cli(*command, "--model", "tiny:sd1", *SIZE, *flag) == 2
        line = error_line(capsys)
        assert "--max-memory" in line and says in line, line
    assert not out.exists()


def test_a_negative_budget_after_a_space_is_explained(capsys):
    assert cli("plan", "--model", "tiny:sd1", "--max-memory", "-3GB") == 2
    line = error_line(capsys)
    assert "--max-memory" in line and "more than 0 bytes" in line


def test_a_budget_too_small_is_refused_before_any_weights(capsys, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr("fouriscale.frontend.requests.load_pipeline", no_loading)
    out = tmp_path / "out"
    small = ["--size", "64x64"]
    assert cli("generate", "a cat", "--model", "tiny:sd1", *small, *FAST, "--max-memory", "1KB", "--out", out) == 2
    line = error_line(capsys)
    assert "needs an estimated" in line and line.endswith("more than the memory budget of 1 KB")
    assert not out.exists()
    assert cli("plan", "--model", "tiny:sd1", *small, "--steps", "2", "--max-memory", "1KB") == 2
    assert "more than the memory budget of 1 KB" in error_line(capsys)


def test_generate_with_a_budget_records_its_choice_and_keeps_the_picture(capsys, tmp_path, estimates):
    budget = estimates["alone"]
    run = ["generate", "a cat", "--model", "tiny:sd2", *SIZE, *FAST, "--seed", "3"]
    assert cli(*run, "--out", tmp_path / "free") == 0
    capsys.readouterr()
    assert cli(*run, "--max-memory", budget, "--out", tmp_path / "budget") == 0
    assert f"memory budget {format_bytes(budget)}: fits with unconditional pass alone" in capsys.readouterr().out
    (free,) = (tmp_path / "free").glob("*.png")
    (tight,) = (tmp_path / "budget").glob("*.png")
    settings = read_settings(tight)
    assert settings["memory"]["budget"] == budget and settings["memory"]["fits"] is True
    assert settings["memory"]["levers"] == ["unconditional pass alone"]
    assert settings["fouriscale"]["sequential_uncond"] is True and "max_memory" not in settings["memory"]["settings"]
    assert read_settings(free)["fouriscale"]["sequential_uncond"] is None
    assert close(pixels(free), pixels(tight))  # the lever changes the latents by float round-off only
    # A rerun with the same budget finds its image: the choice is recorded, the settings it made are the key.
    assert cli(*run, "--max-memory", budget, "--out", tmp_path / "budget") == 0
    assert "0 image(s) written, 1 already done" in capsys.readouterr().out


def test_a_single_file_gets_its_budget_once_loaded(tmp_path, estimates):
    from fouriscale.frontend.requests import Request, Size, check_request, get_ready, load_model
    from fouriscale.testing import save_single_file, save_tiny_pipeline, tiny_pipeline

    folder = save_tiny_pipeline(str(tmp_path / "sd2"), "sd2")  # its configs (offline)
    path = save_single_file(tiny_pipeline("sd2"), str(tmp_path / "tiny.safetensors"))
    request = Request(path, size=Size(96, 96, steps=2), max_memory=estimates["alone"], model_config=folder)
    assert check_request(request) is None  # a single file is checked once loaded
    loaded = load_model(request, "cpu")
    ready = get_ready(loaded, request)
    assert ready.plan.memory is not None and ready.plan.memory.overrides == {"sequential_uncond": True}
    assert ready.recipe.config.sequential_uncond is True and ready.recipe.memory["budget"] == estimates["alone"]
    fouriscale.remove_fouriscale(loaded.pipe)


UI = dict(negative="", width=96, height=96, steps=2, guidance=None, seed=5, freeu=True, amp_guidance=False)
UI.update(low_pass=True, attention_guidance=True, pad_then_crop=True, progressive=True, compare=False)


def test_the_ui_memory_budget(tmp_path, estimates):
    studio = Studio(out_dir=str(tmp_path / "ui"), device="cpu")
    ask = dict(UI, prompt="a cat", model="tiny:sd2")
    with pytest.raises(UserError, match=r"^the memory budget: '12 parsecs' has an unknown unit"):
        studio.generate(**ask, max_memory="12 parsecs")
    with pytest.raises(UserError, match="more than the memory budget of 1 KB"):
        studio.generate(**ask, max_memory="1KB")
    assert not Path(tmp_path / "ui").exists()
    result = studio.generate(**ask, max_memory=f"{estimates['alone']}")
    assert f"memory budget {format_bytes(estimates['alone'])}: fits with unconditional pass alone" in result["info"]
    assert read_settings(result["image"])["memory"]["levers"] == ["unconditional pass alone"]
    plain = studio.generate(**dict(ask, seed=6), max_memory="  ")
    assert "memory" not in read_settings(plain["image"])
