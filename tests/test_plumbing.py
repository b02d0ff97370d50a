"""The patched modules one by one: conv wrapper, attention processor, FreeU, LoRA layers."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

import fouriscale
from conftest import latents_for
from fouriscale.attention import FouriScaleAttnProcessor
from fouriscale.config import FouriScaleConfig
from fouriscale.conv import FouriScaleConv2d
from fouriscale.plan import DETAIL, STRUCTURE, UNCOND, StepSetting, make_plan
from fouriscale.profiles import LayerSpec, detect_profile
from fouriscale.state import CallState, Runtime
from fouriscale.testing import tiny_unet_config


def _state(plan, d_i, roles, rows, detail_k=None):
    k = int(-(-d_i // 1))
    step = StepSetting(0, d_i, k, detail_k or k, False)
    return CallState(plan=plan, step=step, roles=roles, branch_size=rows)


@pytest.fixture(scope="module")
def tiny_profile():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**tiny_unet_config("sd15"))
    return detect_profile(unet, 2)


def test_conv_wrapper_is_the_plain_conv_when_inactive():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    runtime = Runtime()
    wrapper = FouriScaleConv2d(conv, LayerSpec("x", "conv", 0, (1, 1)), runtime)
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(wrapper(x), conv(x))
    assert wrapper.conv is conv and conv.dilation == (1, 1) and conv.padding == (1, 1)


def test_conv_wrapper_filters_then_dilates(tiny_profile):
    torch.manual_seed(0)
    spec = tiny_profile.layer("down_blocks.2.resnets.0.conv1")
    conv = nn.Conv2d(4, 4, 3, padding=1)
    runtime = Runtime()
    wrapper = FouriScaleConv2d(conv, spec, runtime)
    plan = make_plan(tiny_profile, 64, 96, 10, FouriScaleConfig())
    runtime.state = _state(plan, 3.0, (UNCOND, STRUCTURE, DETAIL), 1)
    x = torch.randn(3, 4, 8, 12)
    from fouriscale.spectral import lowpass_filter

    expected = F.conv2d(lowpass_filter(x, (4, 4), (3.0, 3.0), 0.0, (False, False, True)), conv.weight, conv.bias,
                        padding=3, dilation=3)  # fmt: skip
    torch.testing.assert_close(wrapper(x), expected)
    assert conv.dilation == (1, 1) and conv.padding == (1, 1)  # never mutated


def test_sdxl_detail_branch_uses_its_own_dilation():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 2, 3, padding=1)
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        profile = detect_profile(UNet2DConditionModel(**tiny_unet_config("sdxl")), 2)
    runtime = Runtime()
    wrapper = FouriScaleConv2d(conv, profile.layer("up_blocks.0.upsamplers.0.conv"), runtime)  # not filtered
    plan = make_plan(profile, 96, 96, 10, FouriScaleConfig())
    runtime.state = _state(plan, 3.0, (UNCOND, STRUCTURE, DETAIL), 2, detail_k=2)
    x = torch.randn(6, 2, 12, 12)
    out = wrapper(x)
    torch.testing.assert_close(out[:4], F.conv2d(x[:4], conv.weight, conv.bias, padding=3, dilation=3))
    torch.testing.assert_close(out[4:], F.conv2d(x[4:], conv.weight, conv.bias, padding=2, dilation=2))


def test_attention_processor_shares_structure_qk_with_detail(tiny_profile):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    runtime = Runtime()
    proc = FouriScaleAttnProcessor(AttnProcessor2_0(), runtime)
    x = torch.randn(6, 10, 16)
    assert torch.equal(proc(attn, x), AttnProcessor2_0()(attn, x))  # outside FouriScale: the original
    plan = make_plan(tiny_profile, 64, 64, 10)
    runtime.state = _state(plan, 2.0, (UNCOND, STRUCTURE, DETAIL), 2)
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    q[4:], k[4:] = q[2:4], k[2:4]
    heads = lambda t: t.view(6, -1, 2, 8).transpose(1, 2)  # noqa: E731
    ref = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(6, -1, 16)
    ref = attn.to_out[0](ref)
    out = proc(attn, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # The detail branch attends with the structure branch's map but its own values.
    assert not torch.allclose(out[4:], out[2:4])
    # Cross-attention is never changed.
    ctx = torch.randn(6, 5, 16)
    assert torch.equal(proc(attn, x, ctx), AttnProcessor2_0()(attn, x, ctx))


def test_paper_freeu_differs_from_diffusers_freeu_and_both_are_removable(sd_pipe, clean):
    clean(sd_pipe)
    lat = latents_for(sd_pipe, 64, 64)
    args = dict(prompt="a cat", height=64, width=64, num_inference_steps=4, latents=lat, output_type="latent")
    stock = sd_pipe(**args).images
    results = {}
    for mode in ("paper", "diffusers", None):
        fouriscale.apply_fouriscale(sd_pipe, freeu=mode)
        if mode == "diffusers":
            assert sd_pipe.unet.up_blocks[0].b1 == 1.2
        results[mode] = sd_pipe(**args).images
        fouriscale.remove_fouriscale(sd_pipe)
        assert getattr(sd_pipe.unet.up_blocks[0], "b1", None) is None
    assert not torch.equal(results["paper"], results["diffusers"])
    assert not torch.equal(results["paper"], results[None])
    assert torch.equal(sd_pipe(**args).images, stock)


def test_user_freeu_is_restored_after_removal(sd_pipe):
    sd_pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
    try:
        fouriscale.apply_fouriscale(sd_pipe)  # the paper's FreeU replaces it while applied
        assert getattr(sd_pipe.unet.up_blocks[0], "b1", None) is None
        fouriscale.remove_fouriscale(sd_pipe)
        assert sd_pipe.unet.up_blocks[0].b1 == 1.5 and sd_pipe.unet.up_blocks[1].s2 == 0.2
    finally:
        sd_pipe.disable_freeu()


def test_paper_freeu_hook_scales_backbone_and_filters_skip(sd_pipe, clean):
    """The hook before up_blocks.2.resnets.0 (stage 1 on SD 1.5's layout) against the formula."""
    from fouriscale.spectral import freeu_filter

    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe)
    patch = sd_pipe._fouriscale_patch
    plan = make_plan(patch.profile, 64, 64, 10, patch.config)
    resnet = sd_pipe.unet.get_submodule("up_blocks.2.resnets.0")
    C = 2 * 32  # incoming hidden width = deepest width of the tiny model
    x = torch.randn(3, resnet.in_channels, 8, 8)
    captured = []
    inner = resnet.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    patch.runtime.state = _state(plan, 2.0, (UNCOND, STRUCTURE, DETAIL), 1)
    try:
        resnet(x, torch.zeros(3, 128))
    finally:
        inner.remove()
        patch.runtime.state = None
    b1, s1 = 1.2, 0.9
    expected = torch.cat([x[:, : C // 2] * b1, x[:, C // 2 : C], freeu_filter(x[:, C:], s1)], dim=1)
    torch.testing.assert_close(captured[0], expected)


def test_lora_conv_layers_are_dilated_with_their_base(sd_pipe, clean):
    from peft import LoraConfig

    clean(sd_pipe)
    lat = latents_for(sd_pipe, 64, 64)
    args = dict(prompt="a cat", height=64, width=64, num_inference_steps=3, latents=lat, output_type="latent")
    sd_pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                        target_modules=["conv1", "conv2", "to_q", "to_v"]), adapter_name="t")  # fmt: skip
    try:
        with_lora = sd_pipe(**args).images
        fouriscale.apply_fouriscale(sd_pipe)
        layer = sd_pipe.unet.get_submodule("mid_block.resnets.0.conv1")
        assert isinstance(layer.base_layer, FouriScaleConv2d) and isinstance(layer.lora_A["t"], FouriScaleConv2d)
        patched = sd_pipe(**args).images
        assert torch.isfinite(patched).all()
        fouriscale.remove_fouriscale(sd_pipe)
        assert torch.equal(sd_pipe(**args).images, with_lora)
    finally:
        sd_pipe.unet.delete_adapters("t")
