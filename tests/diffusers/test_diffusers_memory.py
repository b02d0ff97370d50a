"""Memory estimates on the diffusers host (fouriscale/diffusers/memory.py) against real runs on tiny models, and the
memory budget: its choices, its refusals, and the same latents with and without it."""

import pytest
import torch

import fouriscale
from fouriscale.diffusers.memory import LiveBytes, MemoryBudgetError, _modules, _names, fit_memory, measure_memory
from fouriscale.memory import DECODE, FOURISCALE_STEP, STOCK_STEP, TEXT
from fouriscale.testing import tiny_pipeline, tiny_unet_config

# Three steps: 0 and 1 active (three branches), 2 plain.
WINDOW = fouriscale.FouriScaleConfig(start_step=1, stop_step=2)


@pytest.fixture(scope="module")
def wide_sd():
    """The tiny SD layout with 32-channel UNet widths: the steps, not the decode, hold most activations."""
    pipe = tiny_pipeline("sd1", unet_config=tiny_unet_config("sd1", 8, width=32))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("family, dtype", [("sd1", torch.float32), ("sdxl", torch.bfloat16)])
def test_estimate_equals_the_same_phases_run_for_real(family, dtype):
    # The estimate runs the phases on weightless meta tensors; measure_memory runs them on the real weights with
    # real tensors, counted the same way. Same operations, so the same bytes: a gap would be a meta kernel that
    # allocates otherwise than the CPU's (1% allowed; it is 0 with torch 2.13).
    pipe = tiny_pipeline(family).to(dtype=dtype)
    height, width = (96, 96) if family == "sd1" else (96, 128)
    for direct in (False, True):
        estimate = fouriscale.estimate_memory(pipe, height, width, 3, WINDOW, device="cpu", direct=direct)
        measured = measure_memory(pipe, height, width, 3, WINDOW, direct=direct)
        names = [p.name for p in estimate.phases]
        assert names == ([TEXT, STOCK_STEP, DECODE] if direct else [TEXT, STOCK_STEP, FOURISCALE_STEP, DECODE])
        for ours, real in zip(estimate.phases, measured.phases):
            assert ours.name == real.name and ours.weights == real.weights
            assert abs(ours.activations - real.activations) <= 0.01 * real.activations, (ours, real)
            assert ours.where == real.where
    assert estimate.dtype == ("fp32" if dtype == torch.float32 else "bf16")
    assert all(p.device.type == "cpu" for p in pipe.unet.parameters())  # the weights were given back


def test_estimate_tracks_a_whole_pipeline_call(sd_pipe, clean):
    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe, WINDOW)
    estimate = fouriscale.estimate_memory(sd_pipe, 96, 96, 3, device="cpu")
    live = LiveBytes(_names(_modules(sd_pipe)))
    with torch.no_grad(), live:
        sd_pipe("a cat", height=96, width=96, num_inference_steps=3, output_type="pt")
    top = max(p.activations for p in estimate.phases)
    # The call also holds what no phase does (prompt embeddings, the scheduler's tables, cached filter masks): a
    # few percent of a tiny model's peak, next to nothing at real sizes.
    assert 0.9 * live.peak <= top <= live.peak, (top, live.peak)
    assert estimate.peak_phase.where.split(" ")[0] == live.where.split(" ")[0]


def test_a_meta_pipeline_gives_the_estimate_of_the_real_one(tiny_dirs, sdxl_pipe):
    meta = fouriscale.meta_pipeline(tiny_dirs["sdxl"], dtype=torch.float32)
    ours = fouriscale.estimate_memory(meta, 96, 128, 3, WINDOW, device="cuda")
    real = fouriscale.estimate_memory(sdxl_pipe, 96, 128, 3, WINDOW, device="cuda")
    assert ours.phases == real.phases and ours.components == real.components


def test_the_estimate_leaves_the_pipeline_as_it_was(sd_pipe, clean):
    def latents():
        g = torch.Generator().manual_seed(3)
        return sd_pipe("a cat", height=96, width=96, num_inference_steps=3, generator=g, output_type="latent").images

    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe, WINDOW, amp_guidance=True)
    before = latents()
    fouriscale.estimate_memory(sd_pipe, 96, 96, 3, WINDOW.replace(share_branches=False))  # re-applied for a while
    assert fouriscale.get_config(sd_pipe) == WINDOW.replace(amp_guidance=True)
    assert torch.equal(latents(), before)
    fouriscale.remove_fouriscale(sd_pipe)
    fouriscale.estimate_memory(sd_pipe, 96, 96, 3, WINDOW)
    assert not fouriscale.is_fouriscale_applied(sd_pipe)


def test_math_attention_keeps_the_scores(wide_sd):
    flash = fouriscale.estimate_memory(wide_sd, 96, 96, 3, WINDOW, attention="sdpa")
    math = fouriscale.estimate_memory(wide_sd, 96, 96, 3, WINDOW, attention="math")
    # The largest self-attention: 24 x 24 tokens, one head, three rows: at least one 576 x 576 float32 score matrix
    # per row is alive at once.
    gap = math.phase(FOURISCALE_STEP).activations - flash.phase(FOURISCALE_STEP).activations
    assert gap >= 3 * 576 * 576 * 4
    assert "N x N scores" in str(math) and "no N x N matrix" in str(flash)
    with pytest.raises(ValueError, match="attention 'xformers'"):
        fouriscale.estimate_memory(wide_sd, 96, 96, 3, attention="xformers")


def test_offload_modes_count_the_running_component(wide_sd):
    sizes = {
        name: sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
        for name, module in _modules(wide_sd).items()
    }
    none = fouriscale.estimate_memory(wide_sd, 96, 96, 3, WINDOW, offload="none")
    model = fouriscale.estimate_memory(wide_sd, 96, 96, 3, WINDOW, offload="model")
    assert none.phase(FOURISCALE_STEP).weights == sum(sizes.values()) == none.weights
    assert model.phase(FOURISCALE_STEP).weights == sizes["unet"] and model.phase(DECODE).weights == sizes["vae"]
    assert model.phase(TEXT).weights == sizes["text_encoder"]
    assert model.phase(FOURISCALE_STEP).activations == none.phase(FOURISCALE_STEP).activations
    sequential = fouriscale.estimate_memory(wide_sd, 96, 96, 3, WINDOW, offload="sequential")
    assert sequential.peak < model.peak


# -- the budget ------------------------------------------------------------------------------------------------------
def _peaks(pipe, **settings):
    return fouriscale.estimate_memory(pipe, 96, 96, 3, WINDOW.replace(**settings), device="cpu")


@pytest.fixture(scope="module")
def rungs(wide_sd):
    """Estimates of ``wide_sd`` at 96x96 with the budget's levers one after the other."""
    return {
        "as set": _peaks(wide_sd),
        "alone": _peaks(wide_sd, sequential_uncond=True),
        "pieces": _peaks(wide_sd, sequential_uncond=True, feed_forward_pieces=True),
        "everywhere": _peaks(
            wide_sd, sequential_uncond=True, feed_forward_pieces=True, sequential_uncond_all_steps=True
        ),
    }


def test_the_budget_takes_the_fastest_settings_that_fit(wide_sd, rungs):
    as_set, alone, pieces, everywhere = rungs["as set"], rungs["alone"], rungs["pieces"], rungs["everywhere"]
    assert as_set.peak > alone.peak >= pieces.peak and pieces.peak > everywhere.peak

    choice = fit_memory(wide_sd, 96, 96, 3, as_set.peak, WINDOW)
    assert choice.fits and choice.overrides == {} and choice.offload == "none"
    choice = fit_memory(wide_sd, 96, 96, 3, alone.peak, WINDOW)
    assert choice.overrides == {"sequential_uncond": True} and choice.peak == alone.peak
    choice = fit_memory(wide_sd, 96, 96, 3, everywhere.peak, WINDOW)
    assert choice.overrides["sequential_uncond_all_steps"] is True and choice.offload == "none"
    assert choice.estimate.peak == choice.peak <= everywhere.peak
    assert "unconditional pass alone on plain steps" in choice.levers
    offloaded = fit_memory(wide_sd, 96, 96, 3, everywhere.peak - 1, WINDOW)
    assert offloaded.offload == "model" and offloaded.levers[-1] == "model CPU offload"
    assert offloaded.estimate.offload == "model" and offloaded.peak <= everywhere.peak - 1
    # A setting the user fixed is never a lever.
    fixed = fit_memory(wide_sd, 96, 96, 3, alone.peak, WINDOW.replace(sequential_uncond=False))
    assert "sequential_uncond" not in fixed.overrides


def test_the_budget_refuses_in_one_line(wide_sd):
    with pytest.raises(MemoryBudgetError) as info:
        fit_memory(wide_sd, 96, 96, 3, "1MB", WINDOW)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ValueError)
    assert message.startswith("FouriScale: Stable Diffusion 1.x at 96x96 (fp32) needs an estimated ")
    assert message.endswith("more than the memory budget of 1 MB")
    assert "even with every memory setting and model CPU offload" in message
    assert info.value.choice.estimate.peak == info.value.choice.peak > 10**6
    for bad, says in (("12 parsecs", "unknown unit"), ("0", "more than 0 bytes"), ("-3GB", "more than 0 bytes")):
        with pytest.raises(ValueError, match=says):
            fit_memory(wide_sd, 96, 96, 3, bad, WINDOW)


def test_same_latents_with_and_without_a_budget(wide_sd, rungs, clean):
    def run():
        g = torch.Generator().manual_seed(5)
        return wide_sd("a cat", height=96, width=96, num_inference_steps=3, generator=g, output_type="latent").images

    clean(wide_sd)
    fouriscale.apply_fouriscale(wide_sd, WINDOW)
    free = run()
    tight = rungs["everywhere"]
    fouriscale.apply_fouriscale(wide_sd, WINDOW, max_memory=tight.peak)
    budgeted = run()
    scale = free.abs().max()
    torch.testing.assert_close(budgeted / scale, free / scale, rtol=0, atol=1e-5)  # float round-off only
    plan = fouriscale.get_plan(wide_sd, 96, 96, 3, device="cpu")
    assert plan.memory is not None and plan.sequential_uncond and plan.sequential_uncond_all
    assert plan.config.max_memory == tight.peak and all(plan.feed_forward_pieces)
    text = str(plan)
    assert "memory budget      budget " in text and "unconditional branch as a pass of its own on every step" in text
    # The estimate of a pipeline with a budget is the estimate of what the budget chose.
    assert fouriscale.estimate_memory(wide_sd, 96, 96, 3, device="cpu").peak == plan.memory.peak <= tight.peak


def test_a_budget_too_small_stops_before_the_first_step(wide_sd, clean):
    calls = []

    handle = wide_sd.unet.conv_in.register_forward_pre_hook(lambda module, args: calls.append(args[0].device.type))
    clean(wide_sd)
    fouriscale.apply_fouriscale(wide_sd, WINDOW, max_memory="2MB")
    try:
        with pytest.raises(MemoryBudgetError, match="more than the memory budget of 2 MB"):
            wide_sd("a cat", height=96, width=96, num_inference_steps=3)
    finally:
        handle.remove()
    assert calls and "cpu" not in calls  # the UNet ran only the estimate's weightless calls


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_every_memory_lever_keeps_the_latents(request, clean, monkeypatch, family):
    """The unconditional pass alone on every step, feed-forwards in row and token pieces, the Fourier filters in
    groups of channels and FreeU in place, the forked resnets one branch at a time: the latents of the settings as
    they are, to float round-off."""
    import fouriscale.diffusers.layers as layers
    import fouriscale.plan

    pipe = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    height, width = (96, 96) if family == "sd1" else (96, 128)

    def run():
        g = torch.Generator().manual_seed(7)
        return pipe("a cat", height=height, width=width, num_inference_steps=3, generator=g, output_type="latent")[0]

    clean(pipe)
    fouriscale.apply_fouriscale(pipe, WINDOW)
    plain = run()
    fouriscale.apply_fouriscale(pipe, WINDOW, filter_pieces=True)  # filters in channel groups, FreeU in place
    in_place = run()
    torch.testing.assert_close(in_place, plain, rtol=0, atol=0)  # every channel filtered alone: the same numbers
    monkeypatch.setattr(layers, "_FRESH_REFS", 0)  # FreeU on a copy (the concatenation path)
    torch.testing.assert_close(run(), in_place, rtol=0, atol=0)
    monkeypatch.undo()
    monkeypatch.setattr(fouriscale.plan, "FEED_FORWARD_PIECES_MIN_TOKENS", 16)  # token pieces on the tiny maps
    levers = dict(sequential_uncond_all_steps=True, feed_forward_pieces=True, filter_pieces=True, resnet_pieces=True)
    fouriscale.apply_fouriscale(pipe, WINDOW.replace(**levers))
    plan = fouriscale.get_plan(pipe, height, width, 3)
    assert plan.feed_forward_tokens == 16 and plan.filter_pieces == 8 and plan.sequential_uncond_all
    assert plan.resnet_pieces and "Fourier filters in 8 groups of channels; forked resnets one branch" in str(plan)
    scale = plain.abs().max()
    torch.testing.assert_close(run() / scale, plain / scale, rtol=0, atol=1e-5)


def test_a_budget_that_needs_offload_turns_it_on(wide_sd, rungs, clean):
    def run():
        g = torch.Generator().manual_seed(5)
        return wide_sd("a cat", height=96, width=96, num_inference_steps=3, generator=g, output_type="latent").images

    from fouriscale.diffusers.memory import _offload_of

    clean(wide_sd)
    fouriscale.apply_fouriscale(wide_sd, WINDOW)
    free = run()
    budget = rungs["everywhere"].peak - 1  # below every setting without offload
    fouriscale.apply_fouriscale(wide_sd, WINDOW, max_memory=budget)
    try:
        offloaded = run()
        assert _offload_of(wide_sd) == "model"  # diffusers' enable_model_cpu_offload, from the first step on
        plan = fouriscale.get_plan(wide_sd, 96, 96, 3, device="cpu")
        assert plan.memory.offload == "model" and plan.memory.peak <= budget
        assert "model CPU offload" in str(plan)
    finally:
        wide_sd.remove_all_hooks()
        wide_sd.to("cpu")
    scale = free.abs().max()
    torch.testing.assert_close(offloaded / scale, free / scale, rtol=0, atol=1e-5)
