"""Any order of set-up: FouriScale applied before or after offloading, QKV fusing, compiling, VAE tiling or slicing,
a user's attention processor, and many apply/remove rounds; removal always restores bit-identical output."""

import pytest
import torch

import fouriscale
from support.pipelines import latents_for, load_pipeline


def _fresh(tiny_dirs):
    return load_pipeline(tiny_dirs["sd1"], "sd1")


@pytest.fixture
def pipe(tiny_dirs):
    """A fresh tiny SD 1.5-layout pipeline per test (set-ups change it for good)."""
    return _fresh(tiny_dirs)


def render(pipe, steps=2, output_type="latent"):
    return pipe(
        "a cat",
        negative_prompt="blurry",
        height=64,
        width=64,
        num_inference_steps=steps,
        latents=latents_for(pipe, 64, 64),
        output_type=output_type,
    ).images


@pytest.fixture(scope="module")
def expected(tiny_dirs):
    """:func:`render` with FouriScale on a plain pipeline (no set-up)."""
    pipe = fouriscale.apply_fouriscale(_fresh(tiny_dirs))
    return render(pipe)


def _close(a, b):
    scale = b.abs().max()
    torch.testing.assert_close(a / scale, b / scale, rtol=0, atol=1e-5)


def _model_offload(pipe):
    pipe.enable_model_cpu_offload(device="cpu")


def _sequential_offload(pipe):
    # diffusers' enable_sequential_cpu_offload(device="cpu") fails for the stock pipeline on a CPU-only torch
    # (accelerate cannot re-create the parameters), so the same accelerate hooks go on the UNet directly.
    from accelerate import cpu_offload

    cpu_offload(pipe.unet, execution_device=torch.device("cpu"))


def _fused_qkv(pipe):
    pipe.fuse_qkv_projections()


def _processor(pipe):
    from diffusers.models.attention_processor import AttnProcessor

    pipe.unet.set_attn_processor(AttnProcessor())


def _vae_tiling(pipe):
    pipe.vae.enable_tiling()


def _vae_slicing(pipe):
    pipe.vae.enable_slicing()


SETUPS = {
    "model_offload": _model_offload,
    "sequential_offload": _sequential_offload,
    "fused_qkv": _fused_qkv,
    "attn_processor": _processor,
    "vae_tiling": _vae_tiling,
    "vae_slicing": _vae_slicing,
}


@pytest.mark.parametrize("order", ["before", "after"])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_setup_before_or_after_apply(pipe, expected, setup, order):
    if order == "before":
        SETUPS[setup](pipe)
        stock = render(pipe)
        fouriscale.apply_fouriscale(pipe)
    else:
        fouriscale.apply_fouriscale(pipe)
        SETUPS[setup](pipe)
    _close(render(pipe), expected)
    fouriscale.remove_fouriscale(pipe)
    after = render(pipe)
    if order == "after":
        stock = after  # the set-up itself, never patched while it was installed
        fresh = render(pipe)
        assert torch.equal(fresh, after)
    else:
        assert torch.equal(after, stock)
    assert not any(hasattr(m, "_diffusers_hook") for m in pipe.unet.modules())


def test_removal_under_set_ups_is_bit_identical_to_never_patched(tiny_dirs):
    """Apply after a set-up, remove: the output equals a twin pipeline with the same set-up that was never patched."""
    for setup in ("model_offload", "sequential_offload", "fused_qkv"):
        twin, patched = _fresh(tiny_dirs), _fresh(tiny_dirs)
        for p in (twin, patched):
            SETUPS[setup](p)
        fouriscale.apply_fouriscale(patched)
        render(patched, steps=2)
        fouriscale.remove_fouriscale(patched)
        assert torch.equal(render(patched), render(twin)), setup


def test_offload_hooks_stay_outermost_and_survive_removal(pipe, expected):
    """Whichever came first, accelerate's hook wraps FouriScale's, and removing either leaves the other working."""
    from accelerate.hooks import remove_hook_from_submodules

    fouriscale.apply_fouriscale(pipe)
    _sequential_offload(pipe)
    conv = pipe.unet.get_submodule("mid_block.resnets.0.conv1")
    assert conv.weight.device.type == "meta"  # weights live in accelerate's offload map between calls
    _close(render(pipe), expected)
    remove_hook_from_submodules(pipe.unet)  # take accelerate out first: FouriScale stays
    _close(render(pipe), expected)
    fouriscale.remove_fouriscale(pipe)
    stock = render(pipe)
    _sequential_offload(pipe)
    fouriscale.apply_fouriscale(pipe)
    _close(render(pipe), expected)
    fouriscale.remove_fouriscale(pipe)  # FouriScale out first: the offload hooks stay and work
    assert conv.weight.device.type == "meta"
    assert torch.equal(render(pipe), stock)


def test_torch_compile_before_or_after_apply(pipe):
    """Dynamo traces through the hooks (the eager backend, and a UNet with one resnet per level where the real ones
    have two, keep the test fast on a CPU: tracing the stock UNet is most of its time)."""
    from diffusers import UNet2DConditionModel

    from fouriscale.testing import tiny_unet_config

    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(**dict(tiny_unet_config("sd1"), layers_per_block=1)).eval()
    fouriscale.apply_fouriscale(pipe)
    expected = render(pipe, steps=2)
    fouriscale.remove_fouriscale(pipe)
    stock = render(pipe, steps=2)
    pipe.unet = torch.compile(pipe.unet, backend="eager")
    fouriscale.apply_fouriscale(pipe)  # after compile
    _close(render(pipe, steps=2), expected)
    fouriscale.remove_fouriscale(pipe)
    assert torch.equal(render(pipe, steps=2), stock)
    pipe.unet = pipe.unet._orig_mod
    fouriscale.apply_fouriscale(pipe)  # before compile
    pipe.unet = torch.compile(pipe.unet, backend="eager")
    _close(render(pipe, steps=2), expected)
    fouriscale.remove_fouriscale(pipe)
    assert torch.equal(render(pipe, steps=2), stock)


def test_many_apply_remove_rounds(pipe):
    stock = render(pipe, steps=2)
    fouriscale.apply_fouriscale(pipe)
    expected = render(pipe, steps=2)
    for i in range(5):
        fouriscale.remove_fouriscale(pipe)
        fouriscale.remove_fouriscale(pipe)
        assert torch.equal(render(pipe, steps=2), stock)
        fouriscale.apply_fouriscale(pipe)
        fouriscale.apply_fouriscale(pipe, amp_guidance=i % 2 == 1)
        fouriscale.apply_fouriscale(pipe)
        assert torch.equal(render(pipe, steps=2), expected)
    assert len(pipe.unet._diffusers_hook.hooks) == 1
    fouriscale.remove_fouriscale(pipe)
    assert not any(hasattr(m, "_diffusers_hook") or "forward" in m.__dict__ for m in pipe.unet.modules())
