"""FouriScale on pipelines that start from pictures: img2img, inpainting, ControlNet (and its img2img and inpaint
variants, multi-ControlNet, guess mode, guidance windows), T2I-Adapter, IP-Adapter and ``from_pipe``."""

import numpy as np
import pytest
import torch
from PIL import Image

import fouriscale
from fouriscale.diffusers.patch import patch_of
from support.pipelines import latents_for

PROMPT = "a red cat"
SIZES = [(64, 64), (64, 96)]  # 2x the tiny models' 32 px, square and not


def picture(height, width, seed=0, mask=False):
    """A smooth seeded test picture (or a binary mask: a centred rectangle)."""
    if mask:
        a = np.zeros((height, width), dtype=np.uint8)
        a[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
        return Image.fromarray(a, "L")
    g = np.random.default_rng(seed)
    small = g.random((4, 4, 3))
    return Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)


def components(pipe):
    return dict(pipe.components)


def seeded(module, seed):
    """Re-initialise ControlNet's zero-initialised output convs with seeded noise, so it changes the result."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith(
                ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")
            ):
                p.normal_(0, 0.3)
    return module.eval()


@pytest.fixture(scope="module")
def controlnets(sd_pipe, sdxl_pipe):
    from diffusers import ControlNetModel

    out = {}
    for family, pipe in (("sd1", sd_pipe), ("sdxl", sdxl_pipe)):
        # The tiny VAE downsamples by 4: two stride-2 stages in the conditioning embedding match it.
        out[family] = [
            seeded(ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(8, 16, 16)), seed)
            for seed in (0, 1)
        ]
    return out


def call(pipe, height, width, steps=3, **kwargs):
    kwargs.setdefault("negative_prompt", "blurry")
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    kwargs.setdefault("output_type", "np")
    import inspect

    if "height" in inspect.signature(type(pipe).__call__).parameters:  # img2img pipelines take the image's size
        kwargs.update(height=height, width=width)
    return pipe(PROMPT, num_inference_steps=steps, **kwargs).images


def check_fouriscale_and_removal(pipe, **kwargs):
    """Stock, FouriScale, stock again: FouriScale changes the picture, removal restores it bit for bit."""
    stock = call(pipe, **kwargs)
    fouriscale.apply_fouriscale(pipe)
    ours = call(pipe, **kwargs)
    fouriscale.remove_fouriscale(pipe)
    assert np.array_equal(call(pipe, **kwargs), stock)
    assert ours.shape == stock.shape == (1, kwargs["height"], kwargs["width"], 3), (ours.shape, stock.shape)
    assert np.abs(ours - stock).max() > 1e-3
    return stock, ours


def sharing_is_exact(pipe, **args):
    """FouriScale with branch sharing equals it without (every input in its stage's row layout); returns
    ``(shared result, its scale)``."""
    fouriscale.apply_fouriscale(pipe, share_branches=False)
    unshared = call(pipe, **args)
    fouriscale.apply_fouriscale(pipe)
    shared = call(pipe, **args)
    scale = unshared.abs().max()
    torch.testing.assert_close(shared / scale, unshared / scale, rtol=0, atol=1e-5)
    return shared, scale


def record_steps(pipe):
    """The denoising step of every FouriScale UNet pass (read off the runtime the hooks share)."""
    seen = []
    runtime = patch_of(pipe).runtime
    handle = pipe.unet.conv_in.register_forward_pre_hook(
        lambda m, a: seen.append(None if runtime.call is None else runtime.call.step.index)
    )
    return seen, handle


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("height, width", SIZES)
def test_img2img(request, clean, family, height, width):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    base = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    cls = StableDiffusionXLImg2ImgPipeline if family == "sdxl" else StableDiffusionImg2ImgPipeline
    pipe = cls(**components(base))
    pipe.set_progress_bar_config(disable=True)
    clean(pipe)
    check_fouriscale_and_removal(pipe, height=height, width=width, image=picture(height, width), strength=0.7)


@pytest.mark.parametrize("strength, steps, first", [(0.5, 10, 5), (0.75, 8, 2), (1.0, 6, 0)])
def test_steps_under_strength_are_positions_in_the_full_schedule(sd_pipe, clean, strength, steps, first):
    """img2img with strength s over N steps runs steps N - int(s N) .. N - 1, so the dilation phases follow the
    noise level: the plan's steps, not the number of steps run."""
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**components(sd_pipe))
    pipe.set_progress_bar_config(disable=True)
    clean(pipe)
    fouriscale.apply_fouriscale(pipe, sequential_uncond=False)
    seen, handle = record_steps(pipe)
    try:
        call(pipe, 64, 64, steps=steps, image=picture(64, 64), strength=strength, output_type="latent")
    finally:
        handle.remove()
    assert first == steps - int(strength * steps)
    assert seen == list(range(first, steps))
    plan = fouriscale.get_plan(pipe, 64, 64, steps)
    assert [plan.step(i).active for i in seen] == [i < plan.stop for i in seen]


@pytest.mark.parametrize("family, channels", [("sd1", 4), ("sd1", 9), ("sdxl", 4)])
@pytest.mark.parametrize("height, width", SIZES)
def test_inpaint(request, clean, family, channels, height, width):
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline, UNet2DConditionModel

    from fouriscale.testing import tiny_unet_config

    base = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    parts = components(base)
    if channels == 9:  # a dedicated inpainting UNet: latents, mask and masked-image latents in
        torch.manual_seed(3)
        parts["unet"] = UNet2DConditionModel(**dict(tiny_unet_config(family), in_channels=9)).eval()
    cls = StableDiffusionXLInpaintPipeline if family == "sdxl" else StableDiffusionInpaintPipeline
    pipe = cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    clean(pipe)
    kwargs = dict(
        height=height, width=width, image=picture(height, width), mask_image=picture(height, width, mask=True)
    )
    check_fouriscale_and_removal(pipe, strength=1.0, **kwargs)


def _controlnet_pipe(base, controlnet, kind="text2img"):
    import diffusers

    xl = "XL" if base.unet.config.addition_embed_type == "text_time" else ""
    name = {
        "text2img": f"StableDiffusion{xl}ControlNetPipeline",
        "img2img": f"StableDiffusion{xl}ControlNetImg2ImgPipeline",
        "inpaint": f"StableDiffusion{xl}ControlNetInpaintPipeline",
    }[kind]
    parts = {k: v for k, v in components(base).items() if k != "image_encoder" or xl}
    pipe = getattr(diffusers, name)(**parts, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("height, width", SIZES)
def test_controlnet_scale_zero_equals_no_controlnet_and_residuals_feed_every_branch(
    request, clean, controlnets, family, height, width
):
    base = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    pipe = _controlnet_pipe(base, controlnets[family][0])
    clean(pipe)
    control = picture(height, width, seed=5)
    latents = latents_for(base, height, width)
    args = dict(height=height, width=width, latents=latents, output_type="latent")
    fouriscale.apply_fouriscale(pipe)
    plain = call(base, **args)
    zero = call(pipe, image=control, controlnet_conditioning_scale=0.0, **args)
    scale = plain.abs().max()
    torch.testing.assert_close(zero / scale, plain / scale, rtol=0, atol=1e-5)
    full = call(pipe, image=control, controlnet_conditioning_scale=1.0, **args)
    assert (full - plain).abs().max() / scale > 1e-3  # the ControlNet acts
    # Its residuals reach every branch in the layout each stage needs: sharing on equals sharing off.
    fouriscale.apply_fouriscale(pipe, share_branches=False)
    unshared = call(pipe, image=control, controlnet_conditioning_scale=1.0, **args)
    torch.testing.assert_close(full / scale, unshared / scale, rtol=0, atol=1e-5)
    fouriscale.remove_fouriscale(pipe)
    check_fouriscale_and_removal(pipe, height=height, width=width, image=control)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_multi_controlnet_guess_mode_and_guidance_window(request, clean, controlnets, family):
    from diffusers.models.controlnets import MultiControlNetModel

    base = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    pipe = _controlnet_pipe(base, MultiControlNetModel(controlnets[family]))
    clean(pipe)
    images = [picture(64, 96, seed=5), picture(64, 96, seed=6)]
    args = dict(
        height=64,
        width=96,
        latents=latents_for(base, 64, 96),
        output_type="latent",
        image=images,
        controlnet_conditioning_scale=[1.0, 0.5],
    )
    for extra in ({}, {"guess_mode": True}, {"control_guidance_start": [0.0, 0.3], "control_guidance_end": [0.6, 1.0]}):
        shared, scale = sharing_is_exact(pipe, **args, **extra)
        fouriscale.remove_fouriscale(pipe)
        assert (call(pipe, **args, **extra) - shared).abs().max() / scale > 1e-3


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("kind", ["img2img", "inpaint"])
def test_controlnet_img2img_and_inpaint(request, clean, controlnets, family, kind):
    base = request.getfixturevalue("sdxl_pipe" if family == "sdxl" else "sd_pipe")
    pipe = _controlnet_pipe(base, controlnets[family][0], kind)
    clean(pipe)
    kwargs = dict(height=64, width=96, image=picture(64, 96), control_image=picture(64, 96, seed=5), strength=0.8)
    if kind == "inpaint":
        kwargs.update(mask_image=picture(64, 96, mask=True), strength=1.0)
    check_fouriscale_and_removal(pipe, **kwargs)


def test_t2i_adapter(sd_pipe, clean):
    from diffusers import StableDiffusionAdapterPipeline, T2IAdapter

    torch.manual_seed(4)
    adapter = T2IAdapter(
        in_channels=3,
        channels=list(sd_pipe.unet.config.block_out_channels),
        num_res_blocks=1,
        downscale_factor=sd_pipe.vae_scale_factor,
        adapter_type="full_adapter",
    ).eval()
    parts = {k: v for k, v in components(sd_pipe).items() if k not in ("image_encoder",)}
    pipe = StableDiffusionAdapterPipeline(**parts, adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    clean(pipe)
    args = dict(
        height=64, width=96, latents=latents_for(sd_pipe, 64, 96), output_type="latent", image=picture(64, 96, seed=7)
    )
    shared, scale = sharing_is_exact(pipe, **args)
    no_adapter = call(pipe, **dict(args, adapter_conditioning_scale=0.0))
    assert (shared - no_adapter).abs().max() / scale > 1e-3  # the adapter's residuals act inside the branches
    fouriscale.remove_fouriscale(pipe)
    check_fouriscale_and_removal(pipe, height=64, width=96, image=picture(64, 96, seed=7))


def _ip_adapter_state(unet, clip_dim=16, seed=5):
    """A random IP-Adapter (image projection + to_k_ip/to_v_ip of every cross-attention) for ``unet``."""
    torch.manual_seed(seed)
    cross = unet.config.cross_attention_dim
    state = {
        "image_proj": {
            "proj.weight": torch.randn(4 * cross, clip_dim),
            "proj.bias": torch.zeros(4 * cross),
            "norm.weight": torch.ones(cross),
            "norm.bias": torch.zeros(cross),
        },
        "ip_adapter": {},
    }
    key = 1
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            hidden = module.to_q.out_features
            state["ip_adapter"][f"{key}.to_k_ip.weight"] = torch.randn(hidden, cross)
            state["ip_adapter"][f"{key}.to_v_ip.weight"] = torch.randn(hidden, cross)
            key += 2
    return state


def test_ip_adapter_embeddings_reach_every_branch(tiny_dirs):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_dirs["sd1"])
    pipe.set_progress_bar_config(disable=True)
    pipe.unet._load_ip_adapter_weights([_ip_adapter_state(pipe.unet)])
    embeds = [torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(8))]  # [negative, positive]
    args = dict(
        height=64, width=96, latents=latents_for(pipe, 64, 96), output_type="latent", ip_adapter_image_embeds=embeds
    )
    shared, scale = sharing_is_exact(pipe, **args)
    other = [torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(9))]  # (a scaled one: the same after norm)
    assert (shared - call(pipe, **dict(args, ip_adapter_image_embeds=other))).abs().max() / scale > 1e-3
    fouriscale.remove_fouriscale(pipe)


def test_from_pipe_shares_the_patch_and_runs_with_its_own_settings(sd_pipe, clean):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe, amp_guidance=True)
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(sd_pipe)
    assert fouriscale.get_config(img2img) == fouriscale.get_config(sd_pipe)  # the UNet, and its patch, are shared
    # A pipeline made later runs FouriScale with its own guidance (no CFG here), not its parent's last one.
    call(sd_pipe, 64, 64, guidance_scale=7.5)
    twin = StableDiffusionPipeline.from_pipe(sd_pipe)
    no_cfg = call(twin, 64, 64, guidance_scale=1.0, output_type="latent", latents=latents_for(sd_pipe, 64, 64))
    fouriscale.apply_fouriscale(sd_pipe, amp_guidance=True, share_branches=False)
    expected = call(sd_pipe, 64, 64, guidance_scale=1.0, output_type="latent", latents=latents_for(sd_pipe, 64, 64))
    scale = expected.abs().max()
    torch.testing.assert_close(no_cfg / scale, expected / scale, rtol=0, atol=1e-5)
    out = call(img2img, 64, 96, image=picture(64, 96), strength=0.6)
    assert out.shape == (1, 64, 96, 3)
    fouriscale.remove_fouriscale(img2img)  # removing through either pipeline removes it from both
    assert not fouriscale.is_fouriscale_applied(sd_pipe)


def test_official_controlnet_recipe_is_plain_controlnet_at_the_base_bucket(sdxl_pipe, clean, controlnets):
    """The official SDXL ControlNet script's settings: no dilation, no low-pass, no FreeU, conditioning scale 0.5,
    micro-conditions at the base bucket: plain ControlNet inference with those call arguments."""
    pipe = _controlnet_pipe(sdxl_pipe, controlnets["sdxl"][0])
    clean(pipe)
    recipe = fouriscale.official_controlnet_kwargs(pipe, 64, 96)
    # The 832x1152 bucket scaled to the tiny model's 32 px native size: (26, 36).
    assert recipe == {"controlnet_conditioning_scale": 0.5, "original_size": (26, 36), "target_size": (26, 36)}
    args = dict(
        height=64,
        width=96,
        latents=latents_for(sdxl_pipe, 64, 96),
        output_type="latent",
        image=picture(64, 96, seed=5),
        **recipe,
    )
    fouriscale.apply_fouriscale(pipe, fouriscale.OFFICIAL_CONTROLNET)
    plan = fouriscale.get_plan(pipe, 64, 96, 3)
    assert not any(s.active for s in plan.steps) and plan.fork is None and plan.freeu_params is None
    ours = call(pipe, **args)
    fouriscale.remove_fouriscale(pipe)
    torch.testing.assert_close(ours, call(pipe, **args), rtol=0, atol=1e-5)
    # With amplified guidance (the script's option) the recipe differs from plain inference before the start step.
    fouriscale.apply_fouriscale(pipe, fouriscale.OFFICIAL_CONTROLNET.replace(amp_guidance=True))
    assert (call(pipe, **args) - ours).abs().max() > 1e-3
