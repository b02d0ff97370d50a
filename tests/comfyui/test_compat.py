"""The FouriScale node beside ComfyUI's own nodes: LoRAs, ControlNets, T2I-Adapters, FreeU_V2, every sampler and
scheduler."""

import logging

import pytest
import torch
from safetensors.torch import save_file

import fouriscale.comfyui as fc
from fouriscale.schedule import step_of_sigma

from .test_patch import _close, _replayed
from .twins import NATIVE, Capture, Twin, capturing, sample

SIZE = 8 * NATIVE  # the twins' native size in pixels


@pytest.fixture(scope="module")
def twin(comfyui):
    return Twin("sd1")


def _run(comfyui, twin, model, steps=3, positive=None, negative=None, **kwargs):
    if positive is None:
        positive, negative = twin.conds()
    return sample(comfyui, model, (16, 16), steps, positive, negative, **kwargs)


def test_a_lora_before_or_after_the_node(comfyui, twin):
    """ComfyUI's LoraLoader patches the weights: before or after the FouriScale node, the same result."""
    g = torch.Generator().manual_seed(3)
    lora = {}
    for name, shape in (("down_blocks_2_resnets_0_conv1", (64, 32)), ("down_blocks_2_attentions_0_proj_in", (64, 64))):
        out_ch, in_ch = shape
        kernel = (3, 3) if name.endswith("conv1") else (1, 1)
        lora[f"lora_unet_{name}.lora_down.weight"] = torch.randn(4, in_ch, *kernel, generator=g) * 0.3
        lora[f"lora_unet_{name}.lora_up.weight"] = torch.randn(out_ch, 4, 1, 1, generator=g) * 0.3
        lora[f"lora_unet_{name}.alpha"] = torch.tensor(4.0)
    folder = comfyui.root / "models" / "loras"
    save_file(lora, str(folder / "tiny.safetensors"))
    loader = comfyui.nodes.LoraLoaderModelOnly()
    (before,) = loader.load_lora_model_only(twin.model, "tiny.safetensors", 1.0)
    first = fc.apply_fouriscale(before, native_size=SIZE)
    (second,) = loader.load_lora_model_only(fc.apply_fouriscale(twin.model, native_size=SIZE), "tiny.safetensors", 1.0)
    a, b = _run(comfyui, twin, first), _run(comfyui, twin, second)
    assert torch.equal(a, b)
    assert not torch.allclose(a, _run(comfyui, twin, fc.apply_fouriscale(twin.model, native_size=SIZE)))


def _tiny_controlnet(comfyui):
    import comfy.cldm.cldm
    import comfy.controlnet

    from fouriscale.testing import comfy_twin_configs

    config, _ = comfy_twin_configs("sd1")
    config = {k: v for k, v in config.items() if k not in ("use_temporal_attention", "use_temporal_resblock")}
    model = comfy.cldm.cldm.ControlNet(hint_channels=3, **config)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return comfy.controlnet.ControlNet(model, load_device=torch.device("cpu"))


def _tiny_t2i_adapter():
    import comfy.controlnet
    import comfy.t2i_adapter.adapter

    torch.manual_seed(6)
    adapter = comfy.t2i_adapter.adapter.Adapter(
        channels=[32, 32, 64, 64], nums_rb=1, cin=3 * 64, ksize=1, sk=True, use_conv=False, xl=False
    )
    return comfy.controlnet.T2IAdapter(adapter, adapter.input_channels, 8, "nearest-exact")


def _controlled(comfyui, twin, control_net):
    positive, negative = twin.conds()
    hint = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(7))
    apply = comfyui.nodes.ControlNetApplyAdvanced()
    return apply.apply_controlnet(positive, negative, control_net, hint, 1.0, 0.0, 1.0)


def test_a_controlnet_applied_by_comfyui_reaches_every_branch(comfyui, twin, caplog):
    positive, negative = _controlled(comfyui, twin, _tiny_controlnet(comfyui))
    capture = Capture()
    model = fc.apply_fouriscale(capturing(twin.model, capture), native_size=SIZE)
    with caplog.at_level(logging.WARNING):
        out = _run(comfyui, twin, model, positive=positive, negative=negative)
    assert "could not be applied" not in caplog.text
    assert all(call["control"] is not None for call in capture.calls)
    assert not torch.allclose(out, _run(comfyui, twin, fc.apply_fouriscale(twin.model, native_size=SIZE)))
    for call, expected in _replayed(twin, capture):
        _close(call["out"], expected)


def test_a_t2i_adapter_reaches_every_branch(comfyui, twin, caplog):
    """T2I-Adapter residuals land after input blocks: with the branches shared (laid out per stage) the result is
    the one of three full branches (laid out once, at the top)."""
    positive, negative = _controlled(comfyui, twin, _tiny_t2i_adapter())
    with caplog.at_level(logging.WARNING):
        shared = _run(comfyui, twin, fc.apply_fouriscale(twin.model, native_size=SIZE), 3, positive, negative)
    unshared = fc.apply_fouriscale(twin.model, native_size=SIZE, share_branches=False)
    _close(shared, _run(comfyui, twin, unshared, 3, positive, negative), 1e-4)
    assert "could not be applied" not in caplog.text
    assert not torch.allclose(shared, _run(comfyui, twin, fc.apply_fouriscale(twin.model, native_size=SIZE)))


def test_freeu_v2_before_or_after_the_node(comfyui, twin):
    from comfy_extras.nodes_freelunch import FreeU_V2

    def freeu(model):
        return FreeU_V2.execute(model, 1.3, 1.4, 0.9, 0.2).result[0]

    node = fc.apply_fouriscale(twin.model, native_size=SIZE, freeu=None)
    a = _run(comfyui, twin, fc.apply_fouriscale(freeu(twin.model), native_size=SIZE, freeu=None))
    assert torch.equal(a, _run(comfyui, twin, freeu(node)))
    assert not torch.allclose(a, _run(comfyui, twin, node))
    # At the native size (here 128 px: FreeU_V2's normalisation needs maps larger than 1x1) nothing changes.
    at_native = fc.apply_fouriscale(twin.model, native_size=128)
    assert torch.equal(_run(comfyui, twin, freeu(at_native)), _run(comfyui, twin, freeu(twin.model)))


def _steps(capture) -> list[int]:
    return [step_of_sigma(call["sample_sigmas"], call["sigma"])[0] for call in capture.calls]


def test_second_order_samplers_count_denoising_steps(comfyui, twin):
    capture = Capture()
    _run(comfyui, twin, fc.apply_fouriscale(capturing(twin.model, capture), native_size=SIZE), 4, sampler="heun")
    # Heun evaluates each step twice, the second time at the next step's noise level (the last step once).
    assert _steps(capture) == [0, 1, 1, 2, 2, 3, 3]


def test_every_sampler_and_scheduler_runs(comfyui, twin):
    samplers, schedulers = comfyui.samplers.KSampler.SAMPLERS, comfyui.samplers.KSampler.SCHEDULERS
    runs = [(name, "normal") for name in samplers] + [("euler", name) for name in schedulers if name != "normal"]
    for sampler_name, scheduler in runs:
        capture = Capture()
        model = fc.apply_fouriscale(capturing(twin.model, capture), native_size=SIZE)
        out = _run(comfyui, twin, model, sampler=sampler_name, scheduler=scheduler, seed=1)
        assert torch.isfinite(out).all(), (sampler_name, scheduler)
        steps = _steps(capture)  # by noise level: heunpp2 also evaluates two steps ahead
        assert steps[0] == 0 and set(steps) <= {0, 1, 2}, (sampler_name, scheduler, steps)
