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

__all__ = [
    "FAMILIES",
    "real_unet_config",
    "tiny_unet_config",
    "tiny_pipeline",
    "save_tiny_pipeline",
    "tiny_tokenizer",
]

FAMILIES = ("sd15", "sd21", "sdxl")

_SD_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_SD_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
_XL_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
_XL_UP = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")


def real_unet_config(family: str) -> dict:
    """``UNet2DConditionModel`` config of the real SD 1.5, SD 2.1 (768) or SDXL base architecture."""
    if family == "sd15":
        return dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), down_block_types=_SD_DOWN,
                    up_block_types=_SD_UP, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2)  # fmt: skip
    if family == "sd21":
        return dict(sample_size=96, block_out_channels=(320, 640, 1280, 1280), down_block_types=_SD_DOWN,
                    up_block_types=_SD_UP, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                    use_linear_projection=True, layers_per_block=2)  # fmt: skip
    if family == "sdxl":
        return dict(sample_size=128, block_out_channels=(320, 640, 1280), down_block_types=_XL_DOWN,
                    up_block_types=_XL_UP, cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                    transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                    addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=2816, layers_per_block=2)  # fmt: skip
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")


def tiny_unet_config(family: str, sample_size: int = 16, width: int = 32) -> dict:
    """A slim UNet config with the real block layout of ``family`` (same module names)."""
    w = width
    if family in ("sd15", "sd21"):
        return dict(sample_size=sample_size, block_out_channels=(w, w, 2 * w, 2 * w), down_block_types=_SD_DOWN,
                    up_block_types=_SD_UP, cross_attention_dim=32 if family == "sd15" else 1024,
                    attention_head_dim=(2, 2, 4, 4) if family == "sd21" else 4,
                    use_linear_projection=family == "sd21", layers_per_block=2, norm_num_groups=8)  # fmt: skip
    if family == "sdxl":
        return dict(sample_size=sample_size, block_out_channels=(w, 2 * w, 2 * w), down_block_types=_XL_DOWN,
                    up_block_types=_XL_UP, cross_attention_dim=64, attention_head_dim=(2, 4, 4),
                    transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
                    addition_embed_type="text_time", addition_time_embed_dim=8,
                    projection_class_embeddings_input_dim=6 * 8 + 32, layers_per_block=2,
                    norm_num_groups=8)  # fmt: skip
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")


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
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, projection_dim=32, bos_token_id=0, eos_token_id=1,
        pad_token_id=1, hidden_act="gelu",
    )  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def tiny_pipeline(family: str = "sd15", seed: int = 0, sample_size: int = 16):
    """A tiny random diffusers pipeline (``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``).

    Native latent ``sample_size`` x ``sample_size``; the VAE downsamples by 2, so the native image is
    ``2 * sample_size`` pixels square. Deterministic for a given ``seed``.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config(family, sample_size)).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, layers_per_block=1,
        sample_size=2 * sample_size,
    ).eval()  # fmt: skip
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    tokenizer = tiny_tokenizer()
    vocab_size = len(tokenizer.get_vocab())
    torch.manual_seed(seed + 2)
    if family == "sdxl":
        text_encoder = _text_encoder(32, False, vocab_size)
        text_encoder_2 = _text_encoder(32, True, vocab_size)
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tiny_tokenizer(), unet=unet, scheduler=scheduler, add_watermarker=False,
        )  # fmt: skip
    hidden = 32 if family == "sd15" else 1024
    text_encoder = _text_encoder(hidden, False, vocab_size)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def save_tiny_pipeline(path: str, family: str = "sd15", seed: int = 0, sample_size: int = 16) -> str:
    """Save :func:`tiny_pipeline` as a diffusers folder (safetensors) at ``path``; returns ``path``."""
    pipe = tiny_pipeline(family, seed, sample_size)
    pipe.save_pretrained(path, safe_serialization=True)
    return path
