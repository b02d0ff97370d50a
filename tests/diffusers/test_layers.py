"""The hooks on the patched layers one by one (fouriscale/diffusers/layers.py): convs, Q/K sharing, the paper's
FreeU, LoRA layers."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

import fouriscale
from fouriscale.config import FouriScaleConfig
from fouriscale.diffusers.describe import detect_profile
from fouriscale.diffusers.hooks import add_hook, get_hook, remove_hook
from fouriscale.diffusers.layers import CONV_HOOK, ConvHook
from fouriscale.diffusers.patch import patch_of
from fouriscale.plan import make_plan
from fouriscale.runtime.layout import DETAIL, STRUCTURE, UNCOND
from fouriscale.runtime.ops import dilated_conv2d
from fouriscale.runtime.state import CallState, Runtime
from fouriscale.spectral import lowpass_filter
from fouriscale.testing import tiny_unet_config
from support.pipelines import args_for


def _profile(family):
    """The profile of the fine tiny UNet (native latent 16 with a VAE factor of 2: native 32 px)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return detect_profile(UNet2DConditionModel(**tiny_unet_config(family, sample_size=16)), 2)


def _call(plan, step_index, roles, rows):
    stock = tuple(r for r in roles if r != STRUCTURE)
    return CallState(plan=plan, step=plan.steps[step_index], rows=rows, stock=stock, forked=roles)


def test_conv_hook_is_the_plain_conv_outside_fouriscale_passes():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    expected = conv(x)
    runtime = Runtime()
    add_hook(conv, ConvHook(0, runtime), CONV_HOOK)
    assert torch.equal(conv(x), expected)
    remove_hook(conv, CONV_HOOK)
    assert "forward" not in conv.__dict__ and not hasattr(conv, "_diffusers_hook")  # a never-hooked conv again
    assert torch.equal(conv(x), expected)


def test_conv_hook_filters_then_dilates_as_planned():
    torch.manual_seed(0)
    profile = _profile("sd1")
    plan = make_plan(profile, 64, 96, 10, FouriScaleConfig())  # d = 3 on the tiny model (native 32 px)
    index = [lp.spec.name for lp in plan.layers].index("down_blocks.2.resnets.0.conv1")
    layer = plan.layers[index]
    conv = nn.Conv2d(4, 4, 3, padding=1)
    runtime = Runtime()
    add_hook(conv, ConvHook(index, runtime), CONV_HOOK)
    x = torch.randn(3, 4, *layer.input_size)
    runtime.call = _call(plan, 0, (UNCOND, STRUCTURE, DETAIL), 1)
    # The plan holds the layer's base (its native input size, 4x4), padded size (the square around 8x12)
    # and per-step mask scale.
    assert layer.base == (4, 4) and layer.padded == (12, 12) and layer.scales[0] == (3.0, 3.0)
    filtered = lowpass_filter(x, (12, 12), (3.0, 3.0), 0.0, (False, False, True))
    expected = F.conv2d(filtered, conv.weight, conv.bias, padding=3, dilation=3)
    torch.testing.assert_close(conv(x), expected)
    assert conv.dilation == (1, 1) and conv.padding == (1, 1)  # never mutated
    # A map of another size than planned is a bug, reported as such.
    with pytest.raises(RuntimeError, match="the plan expected"):
        conv(torch.randn(3, 4, 6, 6))


def test_sdxl_detail_branch_uses_its_own_dilation():
    torch.manual_seed(0)
    profile = _profile("sdxl")
    plan = make_plan(profile, 96, 96, 10, FouriScaleConfig())
    index = [lp.spec.name for lp in plan.layers].index("up_blocks.0.upsamplers.0.conv")  # dilated, not filtered
    layer = plan.layers[index]
    assert plan.steps[0].conv_dilation == 3 and plan.steps[0].detail_conv_dilation == 2
    conv = nn.Conv2d(2, 2, 3, padding=1)
    runtime = Runtime()
    add_hook(conv, ConvHook(index, runtime), CONV_HOOK)
    runtime.call = _call(plan, 0, (UNCOND, STRUCTURE, DETAIL), 2)
    x = torch.randn(6, 2, *layer.input_size)
    out = conv(x)
    torch.testing.assert_close(out[:4], F.conv2d(x[:4], conv.weight, conv.bias, padding=3, dilation=3))
    torch.testing.assert_close(out[4:], F.conv2d(x[4:], conv.weight, conv.bias, padding=2, dilation=2))
    torch.testing.assert_close(dilated_conv2d(conv, x, 2), F.conv2d(x, conv.weight, conv.bias, padding=2, dilation=2))


class CountingProcessor:
    """A user's own attention processor: the stock math, its calls counted, its output scaled by ``gain``."""

    def __init__(self, gain=1.0):
        self.inner, self.gain, self.calls, self.queries = AttnProcessor(), gain, 0, []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        self.calls += 1
        if encoder_hidden_states is None:
            self.queries.append(attn.to_q(hidden_states).detach())
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb) * self.gain


def test_a_users_processor_runs_on_guided_steps_with_shared_queries_and_keys(sd_pipe, clean):
    clean(sd_pipe)
    default = dict(sd_pipe.unet.attn_processors)
    try:
        fouriscale.apply_fouriscale(sd_pipe, stop_step=1, sequential_uncond=False)
        reference = sd_pipe(**args_for(sd_pipe, steps=2)).images
        counting = CountingProcessor()
        sd_pipe.unet.set_attn_processor(counting)  # after apply: FouriScale keeps working
        out = sd_pipe(**args_for(sd_pipe, steps=2)).images
        torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)  # same math, another processor
        assert counting.calls > 0
        # On the guided step, the detail rows of every query in the three-branch stages are the structure rows.
        plan = fouriscale.get_plan(sd_pipe, 64, 64, 2)
        # Step 0: the stock [uncond, cond] rows before the fork, [uncond, structure, detail] from the fork on, and
        # the last one (the join) without the structure rows: its detail rows get the structure's Q and K.
        attentions = plan.profile.attentions
        first_step = counting.queries[: len(attentions)]
        expected_rows = [3 if plan.fork <= a.stage <= plan.join else 2 for a in attentions[:-1]] + [2]
        assert [q.shape[0] for q in first_step] == expected_rows and 3 in expected_rows
        three = [q for q in first_step if q.shape[0] == 3]
        assert all(torch.equal(q[2], q[1]) and not torch.equal(q[0], q[1]) for q in three)
        # Its output is what the pipeline uses.
        sd_pipe.unet.set_attn_processor(CountingProcessor(gain=0.5))
        assert not torch.allclose(sd_pipe(**args_for(sd_pipe, steps=2)).images, out, atol=1e-3)
    finally:
        sd_pipe.unet.set_attn_processor(default)


def test_qk_sharing_matches_the_formula_on_one_attention_layer():
    """``to_q``/``to_k`` hooks give the detail branch the structure branch's Q and K, its own V (any processor)."""
    from fouriscale.diffusers.layers import QK_HOOK, QKShareHook

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    plan = make_plan(_profile("sd1"), 64, 64, 10)
    runtime = Runtime()
    stage = plan.fork
    for proj in (attn.to_q, attn.to_k):
        add_hook(proj, QKShareHook(stage, runtime), QK_HOOK)
    x = torch.randn(6, 10, 16)
    stock = AttnProcessor2_0()(attn, x)
    assert torch.equal(AttnProcessor2_0()(attn, x), stock)  # outside a pass: unchanged
    runtime.call = _call(plan, 0, (UNCOND, STRUCTURE, DETAIL), 2)
    q, k, v = (F.linear(x, proj.weight, proj.bias) for proj in (attn.to_q, attn.to_k, attn.to_v))
    q[4:], k[4:] = q[2:4], k[2:4]
    heads = lambda t: t.view(6, -1, 2, 8).transpose(1, 2)  # noqa: E731
    ref = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).reshape(6, -1, 16)
    ref = attn.to_out[0](ref)
    for processor in (AttnProcessor2_0(), AttnProcessor()):
        out = processor(attn, x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out[4:], out[2:4])  # its own values
    # A stage outside fork..join is not shared.
    runtime.call = CallState(
        plan=plan, step=plan.steps[0], rows=2, stock=(UNCOND, DETAIL), forked=(UNCOND, STRUCTURE, DETAIL)
    )
    hook = get_hook(attn.to_q, QK_HOOK)
    hook.stage = 0
    get_hook(attn.to_k, QK_HOOK).stage = 0
    assert torch.equal(AttnProcessor2_0()(attn, x), stock)


def test_fused_qkv_projections_before_or_after_apply(tiny_dirs):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_dirs["sd1"])
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(**args_for(pipe)).images
    fouriscale.apply_fouriscale(pipe)
    expected = pipe(**args_for(pipe)).images
    pipe.fuse_qkv_projections()  # after apply: the fused projection is hooked at the next call
    torch.testing.assert_close(pipe(**args_for(pipe)).images, expected, rtol=1e-4, atol=1e-4)
    fouriscale.remove_fouriscale(pipe)
    fused_stock = pipe(**args_for(pipe)).images
    torch.testing.assert_close(fused_stock, stock, rtol=1e-4, atol=1e-4)
    fouriscale.apply_fouriscale(pipe)  # before apply
    torch.testing.assert_close(pipe(**args_for(pipe)).images, expected, rtol=1e-4, atol=1e-4)
    fouriscale.remove_fouriscale(pipe)
    assert torch.equal(pipe(**args_for(pipe)).images, fused_stock)


def test_paper_freeu_hook_scales_backbone_and_filters_skip(sd_pipe, clean):
    """The hook before up_blocks.2.resnets.0 (stage 1 on SD 1.5's layout) against the formula."""
    from fouriscale.spectral import freeu_filter

    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe)
    patch = patch_of(sd_pipe)
    plan = make_plan(patch.profile, 64, 64, 10, patch.config)
    resnet = sd_pipe.unet.get_submodule("up_blocks.2.resnets.0")
    C = patch.profile.deepest_channels  # incoming hidden width = deepest width of the tiny model
    x = torch.randn(3, resnet.in_channels, 8, 8)
    captured = []
    inner = resnet.conv1.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    patch.runtime.call = CallState(plan=plan, step=plan.steps[-1], rows=1, stock=(UNCOND, DETAIL), forked=None)
    try:
        resnet(x, torch.zeros(3, resnet.time_emb_proj.in_features))
    finally:
        inner.remove()
        patch.runtime.call = None
    b1, s1 = 1.2, 0.9
    expected = torch.cat([x[:, : C // 2] * b1, x[:, C // 2 : C], freeu_filter(x[:, C:], s1)], dim=1)
    torch.testing.assert_close(captured[0], resnet.nonlinearity(resnet.norm1(expected)))


def test_lora_on_convs_is_dilated_with_its_base(sd_pipe, clean):
    from peft import LoraConfig

    clean(sd_pipe)
    args = args_for(sd_pipe, steps=3)
    sd_pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["conv1", "conv2", "to_q", "to_v"]),
        adapter_name="t",
    )
    try:
        with_lora = sd_pipe(**args).images
        fouriscale.apply_fouriscale(sd_pipe)
        layer = sd_pipe.unet.get_submodule("mid_block.resnets.0.conv1")
        assert get_hook(layer.base_layer, CONV_HOOK) is not None and get_hook(layer.lora_A["t"], CONV_HOOK) is not None
        patched = sd_pipe(**args).images
        # A conv LoRA is linear in the weights (3x3 down-projection, 1x1 up-projection), so dilating both of its
        # convs with the base equals dilating the fused conv: FouriScale over the LoRA = over the fused weights.
        weights = {name: p.detach().clone() for name, p in sd_pipe.unet.named_parameters()}
        sd_pipe.unet.fuse_lora(lora_scale=1.0, adapter_names=["t"])
        fused = sd_pipe(**args).images
        sd_pipe.unet.unfuse_lora()
        with torch.no_grad():  # unfusing leaves round-off in the base weights: the module's pipeline gets its own back
            for name, p in sd_pipe.unet.named_parameters():
                p.copy_(weights[name])
        fouriscale.remove_fouriscale(sd_pipe)
        assert torch.equal(sd_pipe(**args).images, with_lora)
        assert get_hook(layer.base_layer, CONV_HOOK) is None and get_hook(layer.lora_A["t"], CONV_HOOK) is None
    finally:
        sd_pipe.unet.delete_adapters("t")
    scale = fused.abs().max()
    torch.testing.assert_close(patched / scale, fused / scale, rtol=0, atol=1e-5)
    assert not torch.allclose(patched, with_lora, atol=1e-3)  # and FouriScale changed the LoRA's result


def test_lora_load_set_adapters_fuse_and_unload_while_applied(tiny_dirs, tmp_path):
    from diffusers import StableDiffusionPipeline

    from fouriscale.testing import save_tiny_lora

    pipe = StableDiffusionPipeline.from_pretrained(tiny_dirs["sd1"])
    pipe.set_progress_bar_config(disable=True)
    lora = save_tiny_lora(str(tmp_path / "lora"), pipe, conv=True)
    args = args_for(pipe)
    # Reference: LoRA loaded first, FouriScale applied after.
    pipe.load_lora_weights(str(tmp_path / "lora"), weight_name="lora.safetensors", adapter_name="a")
    pipe.set_adapters(["a"], adapter_weights=[0.7])
    fouriscale.apply_fouriscale(pipe)
    expected = pipe(**args).images
    pipe.unload_lora_weights()
    without_lora = pipe(**args).images
    assert not torch.allclose(expected, without_lora, atol=1e-3)
    # Loaded, weighted, fused and unloaded while applied: the same results; state_dict keys stay peft's own.
    pipe.load_lora_weights(str(tmp_path / "lora"), weight_name="lora.safetensors", adapter_name="a")
    pipe.set_adapters(["a"], adapter_weights=[0.7])
    torch.testing.assert_close(pipe(**args).images, expected, rtol=1e-5, atol=1e-5)
    assert not any("fouriscale" in k for k in pipe.unet.state_dict())
    pipe.fuse_lora(adapter_names=["a"], lora_scale=1.0)
    torch.testing.assert_close(pipe(**args).images, expected, rtol=1e-4, atol=1e-4)
    pipe.unfuse_lora()  # fusing and unfusing leave float round-off in the base weights (peft's doing)
    pipe.unload_lora_weights()
    torch.testing.assert_close(pipe(**args).images, without_lora, rtol=1e-4, atol=1e-4)
    fouriscale.remove_fouriscale(pipe)
    assert lora.endswith("lora.safetensors")


def test_freeu_in_place_leaves_a_callers_own_tensor_alone(sd_pipe, clean):
    """FreeU changes only a concatenation nothing else holds: a caller's tensor that it keeps is copied."""
    clean(sd_pipe)
    fouriscale.apply_fouriscale(sd_pipe, filter_pieces=True)
    patch = fouriscale.diffusers.patch.patch_of(sd_pipe)
    plan = patch.plan(64, 64, 10)
    from fouriscale.runtime.layout import DETAIL, UNCOND
    from fouriscale.runtime.state import CallState

    resnet = sd_pipe.unet.get_submodule("up_blocks.2.resnets.0")
    x = torch.randn(2, resnet.in_channels, 8, 8)
    kept = x.clone()
    held = [x]  # one more reference than the up block's own
    patch.runtime.call = CallState(plan=plan, step=plan.steps[-1], rows=1, stock=(UNCOND, DETAIL), forked=None)
    try:
        resnet(x, torch.zeros(2, resnet.time_emb_proj.in_features))
    finally:
        patch.runtime.call = None
    assert torch.equal(held[0], kept)
