"""Offline stand-ins for real models: tiny random pipelines with the real block layouts, and the real
UNet architectures (for benchmarks). Nothing here downloads anything.

The tiny models keep the module names of SD 1.5 and SDXL (``down_blocks.2.resnets.0.conv1``, ...) and
their block types, with few channels and a small native size so that a whole generation takes a
second on a CPU.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

# diffusers' model and pipeline classes (and transformers' models) are imported where they are used: each adds
# 1-2 s and 300-500 modules to `import fouriscale` (docs/architecture.md, "Imports").
__all__ = [
    "TINY_FAMILIES",
    "real_unet_config",
    "tiny_unet_config",
    "tiny_vae_config",
    "VAE_CLASSES",
    "tiny_vae",
    "sd_ddim_scheduler",
    "tiny_pipeline",
    "save_tiny_pipeline",
    "tiny_tokenizer",
    "save_single_file",
    "save_tiny_lora",
    "comfy_twin_configs",
    "comfy_model",
    "boot_comfyui",
]

#: The families the tiny models come in (every family of :data:`fouriscale.FAMILIES`).
TINY_FAMILIES = ("sd1", "sd2", "sdxl")

_SD_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_SD_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
_XL_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
_XL_UP = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")


def real_unet_config(family: str) -> dict:
    """``UNet2DConditionModel`` config of the real SD 1.5, SD 2.1 (768) or SDXL base architecture."""
    sd = dict(
        block_out_channels=(320, 640, 1280, 1280), down_block_types=_SD_DOWN, up_block_types=_SD_UP, layers_per_block=2
    )
    if family == "sd1":
        return dict(sd, sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    if family == "sd2":
        return dict(
            sd, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True
        )
    if family == "sdxl":
        return dict(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            down_block_types=_XL_DOWN,
            up_block_types=_XL_UP,
            cross_attention_dim=2048,
            attention_head_dim=(5, 10, 20),
            transformer_layers_per_block=(1, 2, 10),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            layers_per_block=2,
        )
    raise ValueError(f"unknown family {family!r}; choose one of {TINY_FAMILIES}")


def tiny_unet_config(family: str, sample_size: int = 8, width: int = 8) -> dict:
    """A slim UNet config with the real block layout of ``family`` (same module names)."""
    w = width
    if family in ("sd1", "sd2"):
        return dict(
            sample_size=sample_size,
            block_out_channels=(w, w, 2 * w, 2 * w),
            down_block_types=_SD_DOWN,
            up_block_types=_SD_UP,
            cross_attention_dim=32 if family == "sd1" else 1024,
            # One head where the tokens are most (self-attention over the whole latent dominates a tiny
            # model's time); SD 2.x keeps several heads in its lower blocks, SDXL in all of its own.
            attention_head_dim=(1, 1, 2, 2) if family == "sd2" else 1,
            use_linear_projection=family == "sd2",
            layers_per_block=2,
            norm_num_groups=8,
        )
    if family == "sdxl":
        return dict(
            sample_size=sample_size,
            block_out_channels=(w, 2 * w, 2 * w),
            down_block_types=_XL_DOWN,
            up_block_types=_XL_UP,
            cross_attention_dim=32 + 64,
            attention_head_dim=(2, 4, 4),
            transformer_layers_per_block=(1, 1, 2),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
            layers_per_block=2,
            norm_num_groups=8,
        )
    raise ValueError(f"unknown family {family!r}; choose one of {TINY_FAMILIES}")


def tiny_vae_config(sample_size: int = 8, scale_factor: int = 4) -> dict:
    """The tiny pipelines' ``AutoencoderKL`` config, downsampling by ``scale_factor`` (2, 4 or 8, as SD's VAE).

    The default factor of 4 gives a test's picture a quarter of the latent tokens a factor of 2 gives, and
    the UNet's self-attention over them is most of a tiny model's time.
    """
    levels = {2: 2, 4: 3, 8: 4}.get(scale_factor)
    if levels is None:
        raise ValueError(f"scale_factor {scale_factor}: the tiny VAE downsamples by 2, 4 or 8")
    return dict(
        block_out_channels=(16, 32, 32, 32)[:levels],
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=scale_factor * sample_size,
    )


#: The VAE classes people pair with SD/SDXL, which :func:`tiny_vae` builds.
VAE_CLASSES = ("AutoencoderKL", "AsymmetricAutoencoderKL", "AutoencoderTiny", "ConsistencyDecoderVAE")


def tiny_vae(kind: str = "AutoencoderKL", seed: int = 0, mid_attention: bool = True):
    """A tiny random VAE of class ``kind`` (one of :data:`VAE_CLASSES`) that downsamples by 4, as the tiny
    pipelines' ``AutoencoderKL`` does (4 latent channels, 3 levels, 8 groups per GroupNorm), in eval mode.

    ``mid_attention=False`` leaves the attention out of the decoder's mid-block (then tiles that share GroupNorm
    statistics decode exactly up to their borders): ``AutoencoderKL`` through its config, ``AsymmetricAutoencoderKL``
    (no such option) by emptying the attention slot as ``UNetMidBlock2D(add_attention=False)`` leaves it; the other
    classes have no GroupNorm decoder to tile. ``ConsistencyDecoderVAE``'s decoder is a two-level ``UNet2DModel``
    run at pixel size, the cheapest that class takes.
    """
    import diffusers

    levels, groups = 3, 8
    if kind == "AutoencoderKL":
        config = dict(tiny_vae_config(), mid_block_add_attention=mid_attention)
    elif kind == "AsymmetricAutoencoderKL":
        config = dict(
            down_block_types=("DownEncoderBlock2D",) * levels,
            down_block_out_channels=(16, 32, 32),
            up_block_types=("UpDecoderBlock2D",) * levels,
            up_block_out_channels=(16, 32, 32),
            layers_per_down_block=1,
            layers_per_up_block=1,
            norm_num_groups=groups,
            sample_size=32,
        )
    elif kind == "AutoencoderTiny":
        config = dict(
            encoder_block_out_channels=(8,) * levels,
            decoder_block_out_channels=(8,) * levels,
            num_encoder_blocks=(1,) * levels,
            num_decoder_blocks=(1,) * levels,
        )
    elif kind == "ConsistencyDecoderVAE":
        config = dict(
            sample_size=32,
            encoder_block_out_channels=(16, 32, 32),
            encoder_down_block_types=("DownEncoderBlock2D",) * levels,
            encoder_layers_per_block=1,
            encoder_norm_num_groups=groups,
            decoder_block_out_channels=(16, 32),
            decoder_down_block_types=("ResnetDownsampleBlock2D",) * 2,
            decoder_up_block_types=("ResnetUpsampleBlock2D",) * 2,
            decoder_layers_per_block=1,
            decoder_norm_num_groups=groups,
        )
    else:
        raise ValueError(f"unknown VAE class {kind!r}; choose one of {VAE_CLASSES}")
    if not mid_attention and kind not in ("AutoencoderKL", "AsymmetricAutoencoderKL"):
        raise ValueError(f"mid_attention=False: {kind}'s decoder has no mid-block attention to leave out")
    torch.manual_seed(seed)
    vae = getattr(diffusers, kind)(**config).eval()
    if not mid_attention and kind == "AsymmetricAutoencoderKL":
        vae.decoder.mid_block.attentions[0] = None
    return vae


def tiny_tokenizer(directory: str | None = None):
    """A CLIP tokenizer over single characters (no merges), built offline."""
    from transformers import CLIPTokenizer

    directory = directory or tempfile.mkdtemp(prefix="fouriscale-tok-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789!,.-'":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w") as fh:
        json.dump(vocab, fh)
    with open(os.path.join(directory, "merges.txt"), "w") as fh:
        fh.write("#version: 0.2\n")
    return CLIPTokenizer(
        os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"), model_max_length=77
    )


def _text_encoder(hidden: int, projection: bool, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def sd_ddim_scheduler():
    """The DDIM scheduler of the published SD 1.5 / 2.1 / SDXL configs (scaled-linear betas 0.00085-0.012)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_pipeline(
    family: str = "sd1", seed: int = 0, sample_size: int = 8, vae_scale_factor: int = 4, unet_config: dict | None = None
):
    """A tiny random diffusers pipeline (``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``).

    Native latent ``sample_size`` x ``sample_size``; the VAE downsamples by ``vae_scale_factor``, so the
    native image is ``vae_scale_factor * sample_size`` pixels square (32 by default). Deterministic for a
    given ``seed``. ``sample_size=16, vae_scale_factor=2`` has the same native image size with twice the
    latent resolution (finer feature maps for the filter, at about twice the cost). ``unet_config`` replaces
    the UNet's config (:func:`comfy_twin_configs` gives one that ComfyUI can run too).
    """
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**(unet_config or tiny_unet_config(family, sample_size))).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**tiny_vae_config(sample_size, vae_scale_factor)).eval()
    scheduler = sd_ddim_scheduler()
    tokenizer = tiny_tokenizer()
    vocab_size = len(tokenizer.get_vocab())
    torch.manual_seed(seed + 2)
    if family == "sdxl":
        # Different widths for the two encoders, as in SDXL (768 and 1280), so single-file loading tells them apart.
        text_encoder = _text_encoder(32, False, vocab_size)
        text_encoder_2 = _text_encoder(64, True, vocab_size)
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tiny_tokenizer(),
            unet=unet,
            scheduler=scheduler,
            add_watermarker=False,
        )
    hidden = 32 if family == "sd1" else 1024
    text_encoder = _text_encoder(hidden, False, vocab_size)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(path: str, family: str = "sd1", seed: int = 0, **sizes) -> str:
    """Save :func:`tiny_pipeline` (``sizes``: its ``sample_size``, ``vae_scale_factor``) as a diffusers folder
    (safetensors) at ``path``; returns ``path``."""
    pipe = tiny_pipeline(family, seed, **sizes)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def _unet_to_ldm(state: dict, config) -> dict:
    """Diffusers UNet keys -> the original (LDM / A1111) layout, prefix ``model.diffusion_model.``."""
    L = config.layers_per_block
    resnet = {
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "time_emb_proj": "emb_layers.1",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
        "conv_shortcut": "skip_connection",
    }
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    has_attn = {i: t.startswith("CrossAttn") for i, t in enumerate(config.up_block_types)}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        head = ".".join(parts[:2]) if ".".join(parts[:2]) in fixed else parts[0]
        if head in fixed:
            new = f"{fixed[head]}.{parts[-1]}"
        elif parts[0] in ("down_blocks", "up_blocks", "mid_block"):
            if parts[0] == "mid_block":
                kind, j, rest = parts[1], int(parts[2]), parts[3:]
                block = f"middle_block.{ {('resnets', 0): 0, ('attentions', 0): 1, ('resnets', 1): 2}[(kind, j)] }"
            else:
                i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
                if parts[0] == "down_blocks":
                    if kind == "downsamplers":
                        block, rest = f"input_blocks.{(i + 1) * (L + 1)}.0.op", rest[1:]
                    else:
                        block = f"input_blocks.{1 + i * (L + 1) + j}.{0 if kind == 'resnets' else 1}"
                else:
                    if kind == "upsamplers":
                        block = f"output_blocks.{i * (L + 1) + L}.{2 if has_attn[i] else 1}"
                    else:
                        block = f"output_blocks.{i * (L + 1) + j}.{0 if kind == 'resnets' else 1}"
            if kind == "resnets":
                rest = [resnet.get(rest[0], rest[0])] + rest[1:]
            new = ".".join([block] + rest)
        else:
            new = key
        out["model.diffusion_model." + new] = value
    return out


def _vae_to_ldm(state: dict, config) -> dict:
    """Diffusers VAE keys -> the original layout, prefix ``first_stage_model.``."""
    n = len(config.block_out_channels)
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state.items():
        new = key
        for side in ("encoder", "decoder"):
            new = new.replace(f"{side}.conv_norm_out", f"{side}.norm_out")
            new = new.replace(f"{side}.mid_block.resnets.0", f"{side}.mid.block_1")
            new = new.replace(f"{side}.mid_block.resnets.1", f"{side}.mid.block_2")
            if f"{side}.mid_block.attentions.0." in new:
                rest = new.split(f"{side}.mid_block.attentions.0.", 1)[1]
                name, leaf = rest.rsplit(".", 1)
                new = f"{side}.mid.attn_1.{attn[name]}.{leaf}"
                if leaf == "weight" and value.dim() == 2:
                    value = value[:, :, None, None]
        parts = new.split(".")
        if parts[1] in ("down_blocks", "up_blocks"):
            i = int(parts[2])
            level = i if parts[1] == "down_blocks" else n - 1 - i
            group = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] == "resnets":
                leaf = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{parts[0]}.{group}.{level}.block.{parts[4]}.{leaf}"
            else:
                sampler = "downsample" if group == "down" else "upsample"
                new = f"{parts[0]}.{group}.{level}.{sampler}.{'.'.join(parts[5:])}"
        out["first_stage_model." + new] = value
    return out


def _open_clip(state: dict, prefix: str) -> dict:
    """``CLIPTextModelWithProjection`` keys -> OpenCLIP's layout (SDXL's second text encoder)."""
    out = {}
    layers = {}
    for key, value in state.items():
        k = key.removeprefix("text_model.")
        if k == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif k == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif k.startswith("final_layer_norm."):
            out["ln_final." + k.split(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif k.startswith("encoder.layers."):
            _, _, i, rest = k.split(".", 3)
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                layers.setdefault((i, rest.rsplit(".", 1)[1]), {})[rest.split(".")[1]] = value
                continue
            rest = (
                rest.replace("layer_norm1", "ln_1")
                .replace("layer_norm2", "ln_2")
                .replace("mlp.fc1", "mlp.c_fc")
                .replace("mlp.fc2", "mlp.c_proj")
                .replace("self_attn.out_proj", "attn.out_proj")
            )
            out[f"transformer.resblocks.{i}.{rest}"] = value
    for (i, leaf), qkv in layers.items():
        out[f"transformer.resblocks.{i}.attn.in_proj_{leaf}"] = torch.cat([qkv["q_proj"], qkv["k_proj"], qkv["v_proj"]])
    return {prefix + k: v for k, v in out.items()}


def save_single_file(pipe, path: str) -> str:
    """Write ``pipe``'s weights as one original-layout ``.safetensors`` checkpoint (the A1111/civitai format)."""
    from safetensors.torch import save_file

    state = {}
    state.update(_unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    state.update(_vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))

    def text_model_keys(model):
        return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in model.state_dict().items()}

    if getattr(pipe, "text_encoder_2", None) is not None:
        state.update(
            {"conditioner.embedders.0.transformer." + k: v for k, v in text_model_keys(pipe.text_encoder).items()}
        )
        state.update(_open_clip(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    else:
        state.update({"cond_stage_model.transformer." + k: v for k, v in text_model_keys(pipe.text_encoder).items()})
    save_file({k: v.detach().contiguous() for k, v in state.items()}, path)
    return path


def save_tiny_lora(path: str, pipe, rank: int = 4, seed: int = 0, conv: bool = False) -> str:
    """Save a random LoRA for ``pipe``'s UNet attention projections (and, with ``conv=True``, its resnet convs) in
    diffusers' format; returns the file path."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = pipe.unet
    targets = ["to_q", "to_k", "to_v", "to_out.0"] + (["conv1", "conv2"] if conv else [])
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=targets), adapter_name="tiny"
    )
    try:
        layers = get_peft_model_state_dict(unet, adapter_name="tiny")
    finally:
        unet.delete_adapters("tiny")
    type(pipe).save_lora_weights(path, unet_lora_layers=layers, weight_name="lora.safetensors", safe_serialization=True)
    return os.path.join(path, "lora.safetensors")


# -- ComfyUI twins -----------------------------------------------------------------------------------------------
# ComfyUI runs SD/SDXL with the original (LDM) UNet and GroupNorms of 32 groups; a twin is that UNet and a diffusers
# UNet with the same architecture (widths of 32 and 64), so one set of weights runs in both hosts.

_LDM_COMMON = dict(
    use_checkpoint=False,
    image_size=32,
    in_channels=4,
    out_channels=4,
    use_spatial_transformer=True,
    legacy=False,
    model_channels=32,
    use_temporal_attention=False,
    use_temporal_resblock=False,
)


def comfy_twin_configs(family: str, sample_size: int = 8) -> tuple[dict, dict]:
    """``(ldm_config, diffusers_config)``: a tiny UNet with the block layout of ``family`` as ComfyUI's
    ``UNetModel`` config (keys as ComfyUI's model detection writes them) and as a ``UNet2DConditionModel`` config.

    SD 1.x: widths 32-32-64-64, one head, 32-wide text. SD 2.x: the same with linear projections, 32-channel heads
    and 1024-wide text. SDXL: widths 32-64-64, 16-channel heads, transformer depths 1 and 2, 64-wide text and
    SDXL's 2816-wide ``y`` (1280-wide pooled text and six 256-wide size embeddings).
    """
    if family in ("sd1", "sd2"):
        sd2 = family == "sd2"
        ldm = dict(
            _LDM_COMMON,
            adm_in_channels=None,
            num_res_blocks=[2, 2, 2, 2],
            channel_mult=[1, 1, 2, 2],
            transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
            transformer_depth_middle=1,
            transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            use_linear_in_transformer=sd2,
            context_dim=1024 if sd2 else 32,
            num_heads=-1 if sd2 else 1,
            num_head_channels=32 if sd2 else -1,
        )
        config = dict(tiny_unet_config(family, sample_size, width=32), norm_num_groups=32)
        config.update(cross_attention_dim=ldm["context_dim"], attention_head_dim=(1, 1, 2, 2) if sd2 else 1)
        return ldm, config
    if family == "sdxl":
        ldm = dict(
            _LDM_COMMON,
            num_classes="sequential",
            adm_in_channels=2816,
            num_res_blocks=[2, 2, 2],
            channel_mult=[1, 2, 2],
            transformer_depth=[0, 0, 1, 1, 2, 2],
            transformer_depth_middle=2,
            transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2],
            use_linear_in_transformer=True,
            context_dim=64,
            num_heads=-1,
            num_head_channels=16,
        )
        config = dict(
            tiny_unet_config("sdxl", sample_size, width=32),
            norm_num_groups=32,
            cross_attention_dim=64,
            attention_head_dim=(2, 4, 4),
            transformer_layers_per_block=(1, 1, 2),
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        return ldm, config
    raise ValueError(f"unknown family {family!r}; choose one of {TINY_FAMILIES}")


def boot_comfyui(source):
    """Import upstream ComfyUI from its source folder ``source`` in this process, on the CPU (ComfyUI is not a
    package; ``../shared/NOTES.md`` says how it boots here); returns its ``nodes`` module.

    ``args.cpu`` is set before ``comfy.model_management`` is imported, attention is PyTorch's SDPA, and a stand-in
    for torchvision (whose registry wheel does not match the CPU torch) exists only while ComfyUI imports:
    ``comfy.model_base`` imports modules of models FouriScale never runs that import it. diffusers and transformers
    are imported (and transformers' torchvision check made) before, so they never see the stand-in.
    """
    import importlib.machinery
    import sys
    import types

    import diffusers  # noqa: F401
    import transformers.utils

    transformers.utils.is_torchvision_available()

    def module(name):
        stand_in = types.ModuleType(name)
        stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None)
        return stand_in

    names = ("torchvision", "torchvision.transforms", "torchvision.models")
    stand_in = {name: module(name) for name in names if name not in sys.modules}
    sys.modules.update(stand_in)
    if str(source) not in sys.path:
        sys.path.append(str(source))
    threads = torch.get_num_threads()
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        comfy.cli_args.args.use_pytorch_cross_attention = True
        import comfy.model_management
        import comfy.sample
        import comfy.samplers  # noqa: F401
        import nodes
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    torch.set_num_threads(threads)
    return nodes


def comfy_model(family: str, unet, prediction: str = "eps", ldm_config: dict | None = None):
    """A ComfyUI ``ModelPatcher`` (on the CPU, float32) running ``unet``'s weights: ``unet`` is a diffusers UNet
    built from :func:`comfy_twin_configs` ``(family)[1]`` (or of the architecture of ``ldm_config``, ComfyUI's
    config of it); its weights are moved to the LDM layout with ComfyUI's own key mapping
    (``comfy.utils.unet_to_diffusers``). ``prediction``: ``"eps"`` or ``"v"``. ComfyUI must be importable."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models as sm
    import comfy.utils

    ldm = ldm_config or comfy_twin_configs(family)[0]
    heads = {k: ldm[k] for k in ("num_heads", "num_head_channels")}
    cls = {"sd1": sm.SD15, "sd2": sm.SD20, "sdxl": sm.SDXL}[family]
    model_config = cls({k: v for k, v in ldm.items() if k not in heads})
    model_config.unet_config.update(heads)  # after the class's own head settings, which suit 320-wide models
    model_config.set_inference_dtype(torch.float32, None)
    if prediction == "v":
        model_config.model_type = lambda state_dict, prefix="": comfy.model_base.ModelType.V_PREDICTION
    model = model_config.get_model({})
    mapping = comfy.utils.unet_to_diffusers(model_config.unet_config)
    weights = {k: v.to("cpu", torch.float32) for k, v in unet.state_dict().items()}
    unmapped = sorted(set(weights) - set(mapping))
    if unmapped:
        raise ValueError(f"no LDM key for {unmapped[:3]}: the UNet is not built from comfy_twin_configs({family!r})")
    model.diffusion_model.load_state_dict({mapping[k]: v for k, v in weights.items()}, strict=True)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
