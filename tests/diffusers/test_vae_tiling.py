"""Tiled decoding with shared GroupNorm statistics agrees with the untiled decode."""

import pytest
import torch
from diffusers import AutoencoderKL

import fouriscale
from fouriscale.diffusers.vae_tiling import SyncTiledDecode, sync_tiled_decode, tile_grid
from fouriscale.testing import tiny_vae_config


def _vae(seed: int, **changes):
    """The tiny pipelines' three-level VAE (decoding upsamples by 4), seeded."""
    torch.manual_seed(seed)
    return AutoencoderKL(**dict(tiny_vae_config(), **changes)).eval()


@pytest.fixture(scope="module")
def vae():
    return _vae(0)


def _latent(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.randn(1, 4, 12, 16, generator=g), size=(48, 64), mode="bicubic")


def test_tile_grid_partitions_the_image():
    for size, tile, margin in [(48, 24, 4), (64, 24, 8), (10, 32, 4), (97, 40, 6)]:
        spans = tile_grid(size, tile, margin)
        cores = [(c0, c1) for _, _, c0, c1 in spans]
        assert cores[0][0] == 0 and cores[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(cores, cores[1:]))
        assert all(s0 <= c0 and c1 <= s1 and s1 - s0 <= tile for s0, s1, c0, c1 in spans)


@torch.no_grad()
def test_tiled_decode_agrees_with_untiled(vae):
    z = vae.post_quant_conv(_latent())
    full = vae.decoder(z)
    ours = sync_tiled_decode(vae.decoder, z, tile=24, margin=4)
    assert ours.shape == full.shape
    err_ours = (ours - full).abs().mean() / full.abs().mean()
    # diffusers' own tiling normalises each tile by itself
    vae.enable_tiling()
    vae.tile_latent_min_size, vae.tile_sample_min_size = 24, 24 * 4
    try:
        theirs = vae.decode(_latent()).sample
    finally:
        vae.disable_tiling()
    err_theirs = (theirs - full).abs().mean() / full.abs().mean()
    assert err_ours < 0.2 and err_ours < 0.5 * err_theirs, (err_ours, err_theirs)


@torch.no_grad()
def test_without_attention_tiles_are_exact_up_to_borders():
    vae = _vae(1, mid_block_add_attention=False)
    z = vae.post_quant_conv(_latent(1))
    full = vae.decoder(z)
    ours = sync_tiled_decode(vae.decoder, z, tile=32, margin=8)  # 3 x 4 tiles, margins of 8 latent pixels
    assert (ours - full).abs().mean() / full.abs().mean() < 5e-3
    one_tile = sync_tiled_decode(vae.decoder, z, tile=64, margin=0)
    torch.testing.assert_close(one_tile, full, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_installed_decode_tiles_only_large_images_and_is_removable(vae):
    z = _latent()
    plain = vae.decode(z).sample
    tiler = SyncTiledDecode(vae, threshold=100 * 100, tile=24, margin=4)
    try:
        assert vae.decode(z[..., :16, :16]).sample.shape == (1, 3, 64, 64)  # below the threshold: stock path
        torch.testing.assert_close(
            vae.decode(z[..., :16, :16]).sample, vae.__class__.decode(vae, z[..., :16, :16]).sample
        )
        tiled = vae.decode(z).sample
        assert not torch.equal(tiled, plain) and tiled.shape == plain.shape
    finally:
        tiler.remove()
    assert "decode" not in vae.__dict__ and torch.equal(vae.decode(z).sample, plain)


def test_apply_installs_tiling_for_large_images(sd_pipe, clean):
    clean(sd_pipe)
    before = sd_pipe.vae.decode
    fouriscale.apply_fouriscale(sd_pipe, vae_tiling_threshold=48 * 48)
    assert isinstance(sd_pipe.vae.decode, SyncTiledDecode)
    image = sd_pipe("a cat", height=64, width=64, num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
    fouriscale.remove_fouriscale(sd_pipe)
    assert "decode" not in sd_pipe.vae.__dict__ and sd_pipe.vae.decode == before
    fouriscale.apply_fouriscale(sd_pipe, vae_tiling=False)
    assert "decode" not in sd_pipe.vae.__dict__
