"""Model families and what FouriScale patches (fouriscale/profiles.py): layer selection and FreeU stages read off
real and tiny UNet structures (fouriscale/diffusers/describe.py)."""

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from fouriscale.diffusers.describe import detect_profile
from fouriscale.runtime.ops import freeu_stage
from fouriscale.testing import real_unet_config, tiny_unet_config
from support.reference import SD_LAYERS, SDXL_LAYERS


def _meta_unet(config):
    with torch.device("meta"):
        return UNet2DConditionModel(**config)


@pytest.fixture(scope="module")
def real_unets():
    return {family: _meta_unet(real_unet_config(family)) for family in ("sd1", "sd2", "sdxl")}


def test_real_sd15_layers_are_the_papers(real_unets):
    profile = detect_profile(real_unets["sd1"], 8)
    assert sorted(s.name for s in profile.layers) == sorted(SD_LAYERS)
    assert (profile.family.name, profile.native_latent) == ("sd1", (64, 64))
    assert profile.family.freeu == (1.2, 1.4, 0.9, 0.2) and profile.family.mask_floor == 0.0
    kinds = {s.name: s.kind for s in profile.layers}
    assert kinds["down_blocks.2.downsamplers.0.conv"] == "downsampler"
    assert kinds["up_blocks.1.upsamplers.0.conv"] == "upsampler"
    assert profile.layer("down_blocks.2.downsamplers.0.conv").stride == (2, 2)
    # The level of each layer gives the official base sizes (SD 1.5: 16 for down_blocks.2, 32 for up_blocks.2).
    levels = {s.name.rsplit(".resnets", 1)[0]: s.level for s in profile.layers if s.kind == "conv"}
    assert levels == {
        "down_blocks.2": 2,
        "down_blocks.3": 3,
        "mid_block": 3,
        "up_blocks.0": 3,
        "up_blocks.1": 2,
        "up_blocks.2": 1,
    }


def test_real_sd21_uses_the_same_layers_and_its_own_values(real_unets):
    profile = detect_profile(real_unets["sd2"], 8)
    assert sorted(s.name for s in profile.layers) == sorted(SD_LAYERS)
    assert (profile.family.name, profile.native_latent, profile.native_size) == ("sd2", (96, 96), (768, 768))
    assert profile.family.freeu == (1.1, 1.2, 0.9, 0.2)


def test_real_sdxl_layers_are_the_papers(real_unets):
    profile = detect_profile(real_unets["sdxl"], 8)
    assert sorted(s.name for s in profile.layers) == sorted(SDXL_LAYERS)
    assert (profile.family.name, profile.native_size) == ("sdxl", (1024, 1024))
    assert profile.family.freeu == (1.1, 1.2, 0.6, 0.4) and profile.family.mask_floor == 0.6
    assert profile.family.detail_dilation_divisor == 1.5


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_stages_attentions_and_skip_tensors_follow_the_forward(family, real_unets):
    profile = detect_profile(real_unets[family], 8)
    unet = real_unets[family]
    n_down, n_up = len(unet.down_blocks), len(unet.up_blocks)
    assert profile.stages == (
        "conv_in",
        *[f"down_blocks.{i}" for i in range(n_down)],
        "mid_block",
        *[f"up_blocks.{i}" for i in range(n_up)],
        "conv_out",
    )
    # Every patched layer knows its stage: the first patched conv of both families is in down_blocks.2.
    assert profile.stages[profile.layers[0].stage] == "down_blocks.2"
    assert all(
        profile.stages[s.stage]
        == s.name.rsplit(".resnets", 1)[0].rsplit(".downsamplers", 1)[0].rsplit(".upsamplers", 1)[0]
        for s in profile.layers
    )
    # Self-attentions in forward order; the last one is in the last up block with attention.
    names = [a.name for a in profile.attentions]
    real = [n for n, m in unet.named_modules() if n.endswith("attn1")]
    assert sorted(names) == sorted(real) and all(n.endswith("attn1") for n in names)
    assert [a.stage for a in profile.attentions] == sorted(a.stage for a in profile.attentions)
    last_up_with_attention = max(i for i, b in enumerate(unet.up_blocks) if getattr(b, "attentions", None))
    assert profile.stages[profile.attentions[-1].stage] == f"up_blocks.{last_up_with_attention}"
    # One skip tensor per conv_in, down-block resnet and downsampler: what ControlNet residuals are matched to.
    expected = 1 + sum(len(b.resnets) + (1 if b.downsamplers else 0) for b in unet.down_blocks)
    assert len(profile.res_sample_stages) == expected
    assert profile.intrablock_stages[-1] == profile.stages.index("mid_block")


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_attention_levels_are_the_feature_maps_they_see(family, real_unets):
    """Each self-attention's level is its feature map's: ``ceil(latent / 2**level)`` per side (a meta forward)."""
    unet = real_unets[family]
    profile = detect_profile(unet, 8)
    tokens = {}

    def record(name):
        return lambda m, args, kw: tokens.__setitem__(name, (args[0] if args else kw["hidden_states"]).shape[1])

    handles = [
        unet.get_submodule(a.name).register_forward_pre_hook(record(a.name), with_kwargs=True)
        for a in profile.attentions
    ]
    h, w = 40, 72
    kwargs = {}
    if family == "sdxl":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(1, pooled, device="meta"),
            "time_ids": torch.zeros(1, 6, device="meta"),
        }
    try:
        with torch.no_grad():
            unet(
                torch.zeros(1, 4, h, w, device="meta"),
                1,
                torch.zeros(1, 77, unet.config.cross_attention_dim, device="meta"),
                **kwargs,
            )
    finally:
        for handle in handles:
            handle.remove()
    side = lambda n, level: -(-n // 2**level)  # noqa: E731
    assert {a.name: side(h, a.level) * side(w, a.level) for a in profile.attentions} == tokens
    assert {a.level for a in profile.attentions} == ({0, 1, 2, 3} if family == "sd1" else {1, 2})


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_models_get_the_same_names_as_real_ones(family, real_unets):
    tiny = detect_profile(_meta_unet(tiny_unet_config(family)), 2)
    real = detect_profile(real_unets[family], 8)
    assert tiny.family is real.family
    assert [s.name for s in tiny.layers] == [s.name for s in real.layers]
    assert [s.name for s in tiny.freeu_sites] == [s.name for s in real.freeu_sites]
    # Fewer transformer layers per block in the tiny SDXL, but self-attention in the same stages.
    assert {a.stage for a in tiny.attentions} == {a.stage for a in real.attentions}
    assert tiny.res_sample_stages == real.res_sample_stages and tiny.stages == real.stages


def test_family_table_is_the_only_spelling():
    from fouriscale import FAMILIES, PAPER_PRESETS
    from fouriscale.profiles import family

    assert set(FAMILIES) == {"sd1", "sd2", "sdxl"}
    assert all(name == fam.name for name, fam in FAMILIES.items())
    assert {p.family for p in PAPER_PRESETS.values()} == set(FAMILIES)
    assert all(p.name.startswith(p.family + "-") for p in PAPER_PRESETS.values())
    with pytest.raises(ValueError, match="sd1, sd2, sdxl"):
        family("sd15")


def test_paper_freeu_gates_by_incoming_channels_on_sd15(real_unets):
    profile = detect_profile(real_unets["sd1"], 8)
    stages = {s.name: freeu_stage(s.backbone_channels, profile.deepest_channels) for s in profile.freeu_sites}
    b1 = sorted(n for n, st in stages.items() if st == 1)
    b2 = sorted(n for n, st in stages.items() if st == 2)
    assert b1 == sorted([f"up_blocks.{b}.resnets.{r}" for b in (0, 1) for r in (0, 1, 2)] + ["up_blocks.2.resnets.0"])
    assert b2 == ["up_blocks.2.resnets.1", "up_blocks.2.resnets.2", "up_blocks.3.resnets.0"]


def test_paper_freeu_on_sdxl(real_unets):
    profile = detect_profile(real_unets["sdxl"], 8)
    stages = {s.name: freeu_stage(s.backbone_channels, profile.deepest_channels) for s in profile.freeu_sites}
    assert sorted(n for n, st in stages.items() if st == 1) == sorted(
        [f"up_blocks.0.resnets.{r}" for r in (0, 1, 2)] + ["up_blocks.1.resnets.0"]
    )
    assert sorted(n for n, st in stages.items() if st == 2) == [
        "up_blocks.1.resnets.1",
        "up_blocks.1.resnets.2",
        "up_blocks.2.resnets.0",
    ]


def test_user_layers_by_name_and_pattern(real_unets):
    unet = real_unets["sd1"]
    profile = detect_profile(unet, 8, ("mid_block.resnets.0.conv1", "up_blocks.3.resnets.*.conv2"))
    assert [s.name for s in profile.layers] == ["mid_block.resnets.0.conv1"] + [
        f"up_blocks.3.resnets.{r}.conv2" for r in range(3)
    ]
    assert profile.layer("up_blocks.3.resnets.0.conv2").level == 0
    with pytest.raises(ValueError, match="matches no spatial convolution"):
        detect_profile(unet, 8, ("down_blocks.9.resnets.0.conv1",))
    with pytest.raises(ValueError, match="matches no spatial convolution"):
        detect_profile(unet, 8, ("down_blocks.2.resnets.0.conv_shortcut",))


def test_unknown_layouts_are_rejected():
    with torch.device("meta"):
        plain = UNet2DModel(
            sample_size=16,
            block_out_channels=(32, 32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D",) * 3,
            up_block_types=("UpBlock2D",) * 3,
        )
    with pytest.raises(ValueError, match="unknown UNet layout"):
        detect_profile(plain, 8)
    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        detect_profile(torch.nn.Linear(2, 2), 8)
