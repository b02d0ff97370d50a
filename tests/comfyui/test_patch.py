"""The FouriScale node's model patch in a real ComfyUI sampling run equals the diffusers plug-in, call by call."""

import pytest
import torch

import fouriscale
import fouriscale.comfyui as fc

from .twins import NATIVE, Capture, Twin, capturing, replay, sample

STEPS = 6  # Euler: one call per step; full dilation (step 0), the progressive phase (1-3), plain convs (4-5)


@pytest.fixture(scope="module")
def twins(comfyui):
    return {family: Twin(family, "v" if family == "sd2" else "eps") for family in ("sd1", "sd2", "sdxl")}


def _close(a, b, tol=2e-5):
    scale = b.abs().max().clamp_min(1e-6)
    assert ((a - b).abs().max() / scale).item() < tol


def _replayed(twin, capture):
    """``(call, the diffusers plug-in's output)`` per recorded call; checks that FouriScale acts at the first one."""
    fouriscale.apply_fouriscale(twin.pipe)
    try:
        with fouriscale.disabled(twin.pipe):
            stock = replay(twin.pipe, capture.calls[0])
        assert (stock - capture.calls[0]["out"]).abs().max() > 1e-2 * stock.abs().max()
        return [(call, replay(twin.pipe, call)) for call in capture.calls]
    finally:
        fouriscale.remove_fouriscale(twin.pipe)


@pytest.mark.parametrize(
    "family, latent, cfg, batch",
    [
        ("sd1", (16, 16), 5.0, 1),
        ("sd1", (16, 24), 1.0, 1),  # non-square, no CFG
        ("sd2", (16, 16), 5.0, 1),  # v-prediction
        ("sdxl", (16, 16), 5.0, 2),
        ("sdxl", (24, 16), 5.0, 1),  # non-square: bucket 1216x832 scaled, d = 3
        ("sdxl", (16, 24), 1.0, 1),
    ],
)
def test_every_model_call_equals_the_diffusers_plugin(comfyui, twins, family, latent, cfg, batch):
    twin = twins[family]
    capture = Capture()
    model = fc.apply_fouriscale(capturing(twin.model, capture), native_size=8 * NATIVE)
    positive, negative = twin.conds(batch)
    out = sample(comfyui, model, latent, STEPS, positive, negative, cfg=cfg, batch=batch)
    assert torch.isfinite(out).all()
    assert len(capture.calls) == STEPS
    assert all(
        call["kinds"] == ([1, 0] if cfg != 1.0 else [0]) or sorted(call["kinds"]) == [0, 1] for call in capture.calls
    )
    for call, expected in _replayed(twin, capture):
        _close(call["out"], expected)


def test_controlnet_residuals_reach_every_branch_in_the_right_rows(comfyui, twins):
    """Residuals handed to the model (as ComfyUI's ControlNets do) give what diffusers' residual arguments give."""
    twin = twins["sdxl"]
    capture = Capture(residuals=twin.pipe.unet)
    model = fc.apply_fouriscale(capturing(twin.model, capture), native_size=8 * NATIVE)
    positive, negative = twin.conds()
    sample(comfyui, model, (16, 16), 3, positive, negative)
    for call, expected in _replayed(twin, capture):
        _close(call["out"], expected)


@pytest.mark.parametrize("kind", ["plain", "area", "mask"])
def test_several_conds_and_areas(comfyui, twins, kind):
    """Two positive conds (ComfyUI batches them with the negative one as [uncond, cond, cond]), an area cond, whose
    calls see a cropped latent, and a masked cond: every call equals the diffusers plug-in's for its own size."""
    twin = twins["sd1"]
    capture = Capture()
    model = fc.apply_fouriscale(capturing(twin.model, capture), native_size=8 * NATIVE)
    positive, negative = twin.conds(count=2)
    if kind == "area":
        (positive,) = comfyui.nodes.ConditioningSetArea().append([positive[1]], 128, 128, 64, 64, 1.0)
        positive = [twin.conds()[0][0]] + positive
    elif kind == "mask":
        mask = torch.zeros(1, 192, 192)
        mask[:, :96] = 1.0
        (masked,) = comfyui.nodes.ConditioningSetMask().append([positive[1]], mask, "default", 1.0)
        positive = [positive[0]] + masked
    sample(comfyui, model, (24, 24), 3, positive, negative)
    kinds = {tuple(call["kinds"]) for call in capture.calls}
    assert any(len(k) == 3 for k in kinds) if kind != "area" else any(len(k) < 3 for k in kinds)
    sizes = {tuple(call["x"].shape[-2:]) for call in capture.calls}
    assert sizes == ({(24, 24), (16, 16)} if kind == "area" else {(24, 24)})
    for call, expected in _replayed(twin, capture):
        _close(call["out"], expected)


def _run(comfyui, twin, model, latent=(16, 16), steps=4, cfg=5.0, **kwargs):
    positive, negative = twin.conds()
    return sample(comfyui, model, latent, steps, positive, negative, cfg=cfg, **kwargs)


def test_native_size_is_bit_identical_and_the_input_model_is_never_changed(comfyui, twins):
    twin = twins["sdxl"]
    before = (dict(twin.model.object_patches), dict(twin.model.wrappers), repr(twin.model.model_options))
    stock_native, stock_large = _run(comfyui, twin, twin.model, (8, 8)), _run(comfyui, twin, twin.model)
    patched = fc.apply_fouriscale(twin.model, native_size=8 * NATIVE)
    assert torch.equal(_run(comfyui, twin, patched, (8, 8)), stock_native)
    assert not torch.equal(_run(comfyui, twin, patched), stock_large)
    assert torch.equal(_run(comfyui, twin, twin.model), stock_large)  # the unpatched model after a patched run
    assert (dict(twin.model.object_patches), dict(twin.model.wrappers), repr(twin.model.model_options)) == before
    assert fc.get_patch(twin.model) is None


def test_apply_again_replaces_remove_restores_and_clones_share_the_patch(comfyui, twins):
    twin = twins["sd1"]
    once = _run(comfyui, twin, fc.apply_fouriscale(twin.model, native_size=8 * NATIVE, low_pass=False))
    twice = fc.apply_fouriscale(fc.apply_fouriscale(twin.model, native_size=64), native_size=64, low_pass=False)
    assert len(twice.get_all_wrappers("diffusion_model")) == 1
    assert len(twice.model_options["transformer_options"]["patches"]["output_block_patch"]) == 1
    assert torch.equal(_run(comfyui, twin, twice), once)
    assert fc.get_patch(twice).config.low_pass is False
    # A later node's clone (a LoRA loader, another patch) carries the same patch.
    clone = twice.clone()
    assert fc.get_patch(clone) is fc.get_patch(twice)
    assert torch.equal(_run(comfyui, twin, clone), once)
    removed = fc.remove_fouriscale(twice)
    assert fc.get_patch(removed) is None and not removed.get_all_wrappers("diffusion_model")
    assert set(removed.object_patches) == set(twin.model.object_patches)
    assert torch.equal(_run(comfyui, twin, removed), _run(comfyui, twin, twin.model))


def test_amplified_guidance_is_the_guidance_scale_times_the_factor(comfyui, twins):
    """With amplified guidance at every step (start = stop = the step count), CFG at ``s`` gives what CFG at
    ``s * factor`` gives without it (ComfyUI guides denoised predictions, linear in the model's output)."""
    twin = twins["sd1"]
    kwargs = dict(native_size=8 * NATIVE, start_step=4, stop_step=4)
    amp = fc.apply_fouriscale(twin.model, amp_guidance=True, amp_guidance_factor=2.0, **kwargs)
    plain = fc.apply_fouriscale(twin.model, **kwargs)
    a, b = _run(comfyui, twin, amp, cfg=3.0), _run(comfyui, twin, plain, cfg=6.0)
    _close(a, b, 1e-4)
    assert not torch.allclose(a, _run(comfyui, twin, plain, cfg=3.0))


def test_a_unet_function_wrapper_of_another_node_still_works(comfyui, twins):
    twin = twins["sd1"]
    seen = []

    def wrapper(apply_model, args):
        seen.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"]) * 0.5

    plain = fc.apply_fouriscale(twin.model, native_size=8 * NATIVE)
    before = twin.model.clone()
    before.set_model_unet_function_wrapper(wrapper)
    after = plain.clone()
    after.set_model_unet_function_wrapper(wrapper)
    a = _run(comfyui, twin, fc.apply_fouriscale(before, native_size=8 * NATIVE))
    b = _run(comfyui, twin, after)
    assert torch.equal(a, b) and len(seen) == 8
    assert not torch.allclose(a, _run(comfyui, twin, plain))


def test_refused_sizes_and_settings_fail_before_the_first_step(comfyui, twins):
    twin = twins["sdxl"]
    capture = Capture()
    model = fc.apply_fouriscale(capturing(twin.model, capture), native_size=8 * NATIVE)
    with pytest.raises(ValueError, match="aspect ratios SDXL was trained on"):
        _run(comfyui, twin, model, latent=(8, 64))
    late = fc.apply_fouriscale(twin.model, native_size=8 * NATIVE, start_step=1, stop_step=30)
    with pytest.raises(ValueError, match="stop_step 30 lies beyond the 4 denoising steps"):
        _run(comfyui, twin, late)
    assert not capture.calls
    with pytest.raises(ValueError, match="freeu='diffusers'"):
        fc.apply_fouriscale(twin.model, freeu="diffusers")
    with pytest.raises(ValueError, match="native_size must be a positive multiple of 8"):
        fc.apply_fouriscale(twin.model, native_size=60)
    with pytest.raises(TypeError, match="FouriScaleConfig"):
        fc.apply_fouriscale(twin.model, config={"low_pass": False})
