"""ComfyUI's (LDM) UNet is read as the same description as the diffusers UNet of the same architecture."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from fouriscale.comfyui.describe import describe_model
from fouriscale.diffusers.describe import describe_unet
from fouriscale.testing import comfy_twin_configs, real_unet_config

# The published models' LDM configs, as ComfyUI's model detection writes them (facts of SD 1.5, SD 2.1, SDXL).
_COMMON = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False)
_COMMON.update(in_channels=4, model_channels=320, use_temporal_attention=False, use_temporal_resblock=False)
_SD = dict(_COMMON, adm_in_channels=None, num_res_blocks=[2] * 4, channel_mult=[1, 2, 4, 4], transformer_depth_middle=1)
_SD.update(transformer_depth=[1] * 6 + [0] * 2, transformer_depth_output=[1] * 9 + [0] * 3)
REAL = {
    "sd1": dict(_SD, use_linear_in_transformer=False, context_dim=768),
    "sd2": dict(_SD, use_linear_in_transformer=True, context_dim=1024),
    "sdxl": dict(
        _COMMON,
        num_classes="sequential",
        adm_in_channels=2816,
        num_res_blocks=[2, 2, 2],
        transformer_depth=[0, 0, 2, 2, 10, 10],
        channel_mult=[1, 2, 4],
        transformer_depth_middle=10,
        use_linear_in_transformer=True,
        context_dim=2048,
        transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
    ),
}


def comfy_meta_model(family: str, v_prediction: bool = False, config_class: str | None = None):
    """A ComfyUI model of a published architecture on the meta device (no memory, no weights)."""
    import comfy.model_base
    import comfy.supported_models as sm

    cls = getattr(sm, config_class or {"sd1": "SD15", "sd2": "SD20", "sdxl": "SDXL"}[family])
    model_config = cls(REAL[family])
    if v_prediction:
        model_config.model_type = lambda state_dict, prefix="": comfy.model_base.ModelType.V_PREDICTION
    return model_config.get_model({}, device="meta")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_the_published_architectures_read_alike_in_both_hosts(comfyui, family):
    ours, view = describe_model(comfy_meta_model(family, v_prediction=family == "sd2"))
    with torch.device("meta"):
        unet = UNet2DConditionModel(**real_unet_config(family))
    assert ours == describe_unet(unet)  # family, native size (SD 2.x v: 768 px), stages, units, convs, attentions
    # Every conv's and self-attention's path is the one ComfyUI's own key mapping gives.
    import comfy.utils

    mapping = comfy.utils.unet_to_diffusers(REAL[family])
    leaf = {name: ".to_q.weight" if name.endswith("attn1") else ".weight" for name in view.paths}
    checked = [name for name in view.paths if name + leaf[name] in mapping]
    assert len(checked) == sum(len(u.convs) + len(u.self_attentions) for s in ours.stages for u in s.units)
    assert all(mapping[name + leaf[name]] == view[name] + leaf[name] for name in checked)
    up_resnets = [u.name for i, u in ours.units("resnet") if ours.stages[i].name.startswith("up_blocks.")]
    assert list(view.output_units) == up_resnets


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_twins_read_alike(comfyui, family):
    from fouriscale.testing import comfy_model

    _, config = comfy_twin_configs(family)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config)
    model = comfy_model(family, unet)
    assert describe_model(model.model, native_latent=(8, 8))[0] == describe_unet(unet)


def test_native_sizes_by_family_and_prediction(comfyui):
    sizes = {
        ("sd1", False): 64,
        ("sd2", False): 64,  # SD 2.x base, 512 px
        ("sd2", True): 96,  # SD 2.x 768-v
        ("sdxl", False): 128,
    }
    for (family, v), latent in sizes.items():
        description, _ = describe_model(comfy_meta_model(family, v_prediction=v))
        assert description.native_latent == (latent, latent) and description.family.name == family


@pytest.mark.parametrize("config_class", ["SDXLRefiner", "SD_X4Upscaler", "SVD_img2vid"])
def test_other_models_are_refused_by_name(comfyui, config_class):
    import comfy.supported_models as sm

    model = type("Model", (), {"model_config": object.__new__(getattr(sm, config_class))})()
    with pytest.raises(ValueError, match=f"FouriScale supports Stable Diffusion 1.x, 2.x and SDXL.*{config_class}"):
        describe_model(model)
