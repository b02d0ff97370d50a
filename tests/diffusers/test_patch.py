"""``apply_fouriscale``, ``remove_fouriscale`` and friends (fouriscale/diffusers/patch.py), end to end through the
public API on tiny SD 1.5-layout and SDXL-layout pipelines; removal restores bit-identical output, the model stays
stock while applied, and bad input raises a TypeError/ValueError that says what to do and leaves the pipeline
untouched."""

import logging

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

import fouriscale
from fouriscale.diffusers.hooks import get_hook
from fouriscale.diffusers.layers import CONV_HOOK, ConvHook
from fouriscale.diffusers.patch import patch_of
from support.pipelines import latents_for

PROMPT = "a red cat"


def run(pipe, height=64, width=64, steps=3, seed=0, **kwargs):
    """Final latents of a generation; 3 steps hold all three phases (full dilation, progressive, plain convs)."""
    kwargs.setdefault("output_type", "latent")
    kwargs.setdefault("latents", latents_for(pipe, height, width, seed=seed))
    kwargs.setdefault("negative_prompt", "blurry")
    prompt = kwargs.pop("prompt", PROMPT)
    return pipe(prompt, height=height, width=width, num_inference_steps=steps, **kwargs).images


def record_steps(pipe, layer="mid_block.resnets.0.conv1"):
    """Record, at each forward of a patched conv, the rows it sees and the step FouriScale runs."""
    seen = []
    runtime = patch_of(pipe).runtime

    def hook(module, args):
        call = runtime.call
        seen.append((args[0].shape[0], None if call is None else call.step.index))

    return seen, pipe.unet.get_submodule(layer).register_forward_pre_hook(hook)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("height, width", [(64, 64), (64, 96), (96, 48)])
def test_generates_images_of_the_requested_size(request, clean, family, height, width):
    pipe = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    stock = run(pipe, height, width, output_type="np")
    clean(pipe)
    fouriscale.apply_fouriscale(pipe)
    image = run(pipe, height, width, output_type="np")
    assert image.shape == (1, height, width, 3)
    assert np.isfinite(image).all()
    assert np.abs(image - stock).max() > 1e-3  # FouriScale changed the result
    pil = run(pipe, height, width, output_type="pil", steps=2)[0]
    assert pil.size == (width, height)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_remove_restores_bit_identical_output(request, family):
    pipe = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    before = run(pipe, 64, 96)
    modules = dict(pipe.unet.named_modules())
    processors = dict(pipe.unet.attn_processors)
    fouriscale.apply_fouriscale(pipe)
    patched = run(pipe, 64, 96)
    fouriscale.remove_fouriscale(pipe)
    after = run(pipe, 64, 96)
    assert not torch.equal(before, patched)
    assert torch.equal(before, after)
    assert dict(pipe.unet.named_modules()).keys() == modules.keys()
    assert all(a is b for a, b in zip(pipe.unet.modules(), modules.values()))
    assert all(pipe.unet.attn_processors[k] is v for k, v in processors.items())
    assert not any(hasattr(m, "_diffusers_hook") or "forward" in m.__dict__ for m in pipe.unet.modules())
    assert "decode" not in pipe.vae.__dict__
    assert not fouriscale.is_fouriscale_applied(pipe) and fouriscale.get_config(pipe) is None
    fouriscale.remove_fouriscale(pipe)  # removing twice is harmless


def test_apply_twice_is_harmless_and_new_config_replaces(sd_pipe, clean):
    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe)
    once = run(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe)
    assert torch.equal(run(sd_pipe), once)
    assert len(sd_pipe.unet._diffusers_hook.hooks) == 1
    fouriscale.apply_fouriscale(sd_pipe, freeu=None)
    without_freeu = run(sd_pipe)
    assert not torch.equal(without_freeu, once)
    fouriscale.apply_fouriscale(sd_pipe, config=fouriscale.FouriScaleConfig(freeu=None))
    assert torch.equal(run(sd_pipe), without_freeu)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_native_size_is_a_noop_and_says_so_once(request, clean, caplog, family):
    pipe = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    stock = run(pipe, 32, 32)
    clean(pipe)
    fouriscale.apply_fouriscale(pipe)
    with caplog.at_level(logging.INFO, logger="fouriscale"):
        assert torch.equal(run(pipe, 32, 32), stock)
        assert torch.equal(run(pipe, 32, 32), stock)
    assert sum("no-op" in r.getMessage() for r in caplog.records) == 1
    small = run(pipe, 32, 24)
    fouriscale.remove_fouriscale(pipe)
    assert torch.equal(small, run(pipe, 32, 24))


def test_three_branches_while_active_two_after_stop(sd_pipe, clean):
    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe, start_step=1, stop_step=2)
    seen, handle = record_steps(sd_pipe)
    try:
        out = run(sd_pipe, steps=3, num_images_per_prompt=2, latents=None, generator=torch.Generator().manual_seed(0))
        run(sd_pipe, steps=3, guidance_scale=1.0)
    finally:
        handle.remove()
    assert out.shape[0] == 2  # the pipeline gets the stock batch back
    # [uncond, structure, detail] x 2 images while active, then [uncond, cond]; without CFG
    # [structure, detail] while active, then [cond].
    assert seen == [(6, 0), (6, 1), (4, 2), (2, 0), (2, 1), (1, 2)]


def test_no_cfg_changes_the_result(sd_pipe, clean):
    clean(sd_pipe)
    stock = run(sd_pipe, guidance_scale=1.0)
    fouriscale.apply_fouriscale(sd_pipe)
    out = run(sd_pipe, guidance_scale=1.0)
    assert out.shape == stock.shape and torch.isfinite(out).all()
    assert not torch.equal(out, stock)


def test_batches_of_prompts_match_single_prompts(sd_pipe, clean):
    """Each image of a batch comes out as if generated alone: the branch bookkeeping keeps rows apart."""
    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe)
    lat = torch.cat([latents_for(sd_pipe, 64, 64, seed=s) for s in (0, 1, 2, 3)])
    prompts = ["a red cat", "a blue dog"]
    both = run(sd_pipe, prompt=prompts, negative_prompt=["blurry", "dark"], num_images_per_prompt=2, latents=lat)
    assert both.shape[0] == 4
    for index, (prompt, negative) in enumerate([(prompts[0], "blurry")] * 2 + [(prompts[1], "dark")] * 2):
        alone = run(sd_pipe, prompt=prompt, negative_prompt=negative, latents=lat[index : index + 1])
        scale = alone.abs().max()
        torch.testing.assert_close(both[index : index + 1] / scale, alone / scale, rtol=0, atol=1e-5)


def test_prompt_embeds_and_callbacks(sd_pipe, clean):
    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe)
    direct = run(sd_pipe)
    embeds, negative = sd_pipe.encode_prompt(PROMPT, "cpu", 1, True, "blurry")
    steps = []

    def on_step(pipe, i, t, tensors):
        steps.append(i)
        assert tensors["latents"].shape[0] == 1
        return tensors

    via_embeds = run(
        sd_pipe,
        prompt=None,
        negative_prompt=None,
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        callback_on_step_end=on_step,
    )
    assert steps == list(range(3))
    torch.testing.assert_close(via_embeds, direct, rtol=0, atol=1e-5)
    rescaled = run(sd_pipe, guidance_rescale=0.7)
    assert torch.isfinite(rescaled).all() and not torch.equal(rescaled, direct)


@pytest.mark.parametrize("scheduler_cls", [EulerDiscreteScheduler, DPMSolverMultistepScheduler, HeunDiscreteScheduler])
def test_any_scheduler_and_steps_counted_not_calls(sd_pipe, clean, scheduler_cls):
    clean(sd_pipe)
    original = sd_pipe.scheduler
    sd_pipe.scheduler = scheduler_cls.from_config(original.config)
    try:
        fouriscale.apply_fouriscale(sd_pipe)
        seen, handle = record_steps(sd_pipe)
        out = run(sd_pipe, steps=5)
        handle.remove()
    finally:
        sd_pipe.scheduler = original
    assert torch.isfinite(out).all()
    steps = [step for _, step in seen]
    if scheduler_cls is HeunDiscreteScheduler:  # two UNet calls per step after the first
        assert steps == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    else:
        assert steps == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(tiny_dirs, sd_pipe, clean, dtype):
    """Half precision (the filter's FFTs in float32, cast back) stays close to the float32 result."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_dirs["sd1"], torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    fouriscale.apply_fouriscale(pipe)
    out = run(pipe, latents=latents_for(pipe, 64, 64).to(dtype))
    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe)
    full = run(sd_pipe)
    assert out.dtype == dtype
    error = ((out.float() - full).abs().max() / full.abs().max()).item()
    assert error < (0.05 if dtype == torch.bfloat16 else 0.01), error


def test_sdxl_conditions_on_the_base_bucket(sdxl_pipe, clean):
    clean(sdxl_pipe)
    fouriscale.apply_fouriscale(sdxl_pipe)
    seen = []  # what the UNet embeds: add_time_proj receives the flattened time ids
    handle = sdxl_pipe.unet.add_time_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].view(-1, 6).clone()))
    try:
        run(sdxl_pipe, 64, 96, steps=2)
        run(sdxl_pipe, 64, 96, steps=2, original_size=(512, 512))
    finally:
        handle.remove()
    # Bucket 832x1152 scaled to the tiny model's native 32 px: (26, 36), for the stock [uncond, cond] batch
    # (the branches fork later, inside the UNet).
    assert seen[0].shape == (2, 6)
    assert seen[0][0].tolist() == [26.0, 36.0, 0.0, 0.0, 26.0, 36.0] and seen[0][1].tolist() == seen[0][0].tolist()
    assert seen[2][1].tolist() == [512.0, 512.0, 0.0, 0.0, 26.0, 36.0]  # an explicit original_size stays


def test_plan_of_a_patched_pipeline_is_the_same(sd_pipe, clean):
    before = str(fouriscale.get_plan(sd_pipe, 64, 96, 20))
    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe)
    assert str(fouriscale.get_plan(sd_pipe, 64, 96, 20)) == before
    assert str(fouriscale.get_plan(sd_pipe.unet, 64, 96, 20, vae_scale_factor=4, vae=sd_pipe.vae)) == before


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_sequential_uncond_gives_the_same_result_with_smaller_passes(request, clean, family):
    pipe = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    clean(pipe)
    fouriscale.apply_fouriscale(pipe, sequential_uncond=False, amp_guidance=True)
    batched = run(pipe, 64, 96)
    fouriscale.apply_fouriscale(pipe, sequential_uncond=True, amp_guidance=True)
    seen, handle = record_steps(pipe)
    try:
        sequential = run(pipe, 64, 96)
    finally:
        handle.remove()
    scale = batched.abs().max()
    torch.testing.assert_close(sequential / scale, batched / scale, rtol=0, atol=1e-5)
    plan = fouriscale.get_plan(pipe, 64, 96, 3)
    expected = []
    for i in range(3):
        expected += [(1, i), (2, i)] if plan.step(i).active else [(2, i)]
    assert seen == expected  # never more rows than the stock [uncond, cond] batch


def test_a_custom_denoising_loop_tells_the_step(sd_pipe, clean):
    """``fouriscale.denoising_step`` around the UNet calls of a hand-written loop gives the pipeline's own result."""
    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe)
    latents = latents_for(sd_pipe, 64, 64)
    expected = run(sd_pipe, steps=3, latents=latents, guidance_scale=7.5)
    embeds, negative = sd_pipe.encode_prompt(PROMPT, "cpu", 1, True, "blurry")
    scheduler = sd_pipe.scheduler
    scheduler.set_timesteps(3)
    x = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        with fouriscale.denoising_step(sd_pipe, i, len(scheduler.timesteps)), torch.no_grad():
            noise = sd_pipe.unet(torch.cat([x] * 2), t, encoder_hidden_states=torch.cat([negative, embeds])).sample
        uncond, cond = noise.chunk(2)
        x = scheduler.step(uncond + 7.5 * (cond - uncond), t, x).prev_sample
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
    # Without it the same loop runs the stock UNet (and says so); bad steps and unpatched pipelines are refused.
    with pytest.raises(ValueError, match="step 3 lies beyond the 3 steps"):
        with fouriscale.denoising_step(sd_pipe, 3, 3):
            pass
    with pytest.raises(ValueError, match="num_inference_steps must be an integer from 1"):
        with fouriscale.denoising_step(sd_pipe, 0, 0):
            pass
    fouriscale.remove_fouriscale(sd_pipe)
    with pytest.raises(RuntimeError, match="FouriScale is not applied"):
        with fouriscale.denoising_step(sd_pipe, 0, 3):
            pass


def test_unknown_override_is_a_type_error(sd_pipe):
    with pytest.raises(TypeError, match="unknown FouriScale option.*dilaton.*valid options"):
        fouriscale.apply_fouriscale(sd_pipe, dilaton=2)
    assert not fouriscale.is_fouriscale_applied(sd_pipe)


def test_non_diffusers_objects_are_type_errors(sd_pipe):
    with pytest.raises(TypeError, match="diffusers pipeline"):
        fouriscale.apply_fouriscale(object())
    with pytest.raises(TypeError, match="not its UNet"):
        fouriscale.apply_fouriscale(sd_pipe.unet)
    with pytest.raises(TypeError, match="FouriScaleConfig"):
        fouriscale.apply_fouriscale(sd_pipe, config={"amp_guidance": True})
    with pytest.raises(TypeError, match="diffusers pipeline"):
        fouriscale.remove_fouriscale("pipe")


def test_unknown_unet_layout_is_a_value_error():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
    )
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    with pytest.raises(ValueError, match="unknown UNet layout"):
        fouriscale.apply_fouriscale(pipe)


def test_unknown_layer_names_fail_cleanly(sd_pipe):
    with pytest.raises(ValueError, match="matches no spatial convolution"):
        fouriscale.apply_fouriscale(sd_pipe, layers=("down_blocks.7.resnets.0.conv1",))
    assert not fouriscale.is_fouriscale_applied(sd_pipe)
    assert not hasattr(sd_pipe.unet, "_diffusers_hook")


def test_failed_apply_leaves_no_patch(sd_pipe, monkeypatch):
    import fouriscale.diffusers.patch as patch_module

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(patch_module, "PaperFreeUHook", boom)
    before = dict(sd_pipe.unet.named_modules())
    with pytest.raises(RuntimeError, match="boom"):
        fouriscale.apply_fouriscale(sd_pipe)
    assert dict(sd_pipe.unet.named_modules()).keys() == before.keys()
    assert not fouriscale.is_fouriscale_applied(sd_pipe)
    assert not any(hasattr(m, "_diffusers_hook") or "forward" in m.__dict__ for m in sd_pipe.unet.modules())


def test_state_dict_keys_and_module_types_stay_stock_while_applied(sd_pipe, clean, tmp_path):
    keys = list(sd_pipe.unet.state_dict().keys())
    types = [(name, type(m)) for name, m in sd_pipe.unet.named_modules()]
    processors = dict(sd_pipe.unet.attn_processors)
    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe)
    assert list(sd_pipe.unet.state_dict().keys()) == keys
    assert [(name, type(m)) for name, m in sd_pipe.unet.named_modules()] == types
    assert all(sd_pipe.unet.attn_processors[k] is v for k, v in processors.items())  # the user's processors
    # save_pretrained and load_state_dict work while applied and give the stock weights.
    sd_pipe.unet.save_pretrained(tmp_path / "unet")
    from diffusers import UNet2DConditionModel

    reloaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), sd_pipe.unet.state_dict().values()))
    sd_pipe.unet.load_state_dict(reloaded.state_dict())
    conv = sd_pipe.unet.get_submodule("mid_block.resnets.0.conv1")
    assert isinstance(get_hook(conv, CONV_HOOK), ConvHook) and conv.dilation == (1, 1) and conv.padding == (1, 1)
