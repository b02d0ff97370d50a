"""FouriScale with each VAE class people pair with SD/SDXL: the tiled decode is installed only on the classes whose own
decode it stands in for (AutoencoderKL, AsymmetricAutoencoderKL), takes every argument their ``decode`` takes, and every
pipeline runs with each class as it does stock."""

import inspect

import numpy as np
import pytest
import torch
from PIL import Image

import fouriscale
from fouriscale.diffusers import vae_tiling
from fouriscale.diffusers.vae_tiling import SyncTiledDecode, sync_tiled_decode, tiles_exactly
from fouriscale.testing import VAE_CLASSES, tiny_vae

TILED = ("AutoencoderKL", "AsymmetricAutoencoderKL")  # the classes the tiled decode stands in for
KINDS = ("text2img", "img2img", "inpaint")


def picture(height, width):
    g = np.random.default_rng(0)
    return Image.fromarray((g.random((4, 4, 3)) * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)


def mask(height, width):
    a = np.zeros((height, width), dtype=np.uint8)
    a[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    return Image.fromarray(a, "L")


def pipeline(base, kind: str, vae):
    """``base``'s components with ``vae`` in the SD or SDXL pipeline of ``kind``."""
    import diffusers

    xl = "XL" if hasattr(base, "text_encoder_2") else ""
    name = {"text2img": "Pipeline", "img2img": "Img2ImgPipeline", "inpaint": "InpaintPipeline"}[kind]
    pipe = getattr(diffusers, f"StableDiffusion{xl}{name}")(**dict(base.components, vae=vae))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe, kind: str, size: int) -> np.ndarray:
    torch.manual_seed(0)  # SDXL's pipelines give ConsistencyDecoderVAE's decode no generator: it draws from torch's
    kwargs = dict(num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    if kind != "img2img":
        kwargs.update(height=size, width=size)
    if kind != "text2img":
        kwargs.update(image=picture(size, size), strength=0.6 if kind == "img2img" else 1.0)
    if kind == "inpaint":
        kwargs.update(mask_image=mask(size, size))
    return pipe("a cat", **kwargs).images


@pytest.fixture(scope="module")
def vaes():
    return {name: tiny_vae(name, seed=3) for name in VAE_CLASSES}


@pytest.fixture
def spy(monkeypatch):
    """The calls of the tiled decode: the pictures each got (AsymmetricAutoencoderKL's image and mask)."""
    calls = []
    real = vae_tiling.sync_tiled_decode

    def counted(decoder, z, tile, margin, pictures=(), factor=1):
        calls.append(pictures)
        return real(decoder, z, tile, margin, pictures, factor)

    monkeypatch.setattr(vae_tiling, "sync_tiled_decode", counted)
    return calls


def test_only_the_classes_the_tiled_decode_stands_in_for_get_it(vaes):
    assert [name for name in VAE_CLASSES if tiles_exactly(vaes[name])] == list(TILED)
    assert [name for name in VAE_CLASSES if tiles_exactly(name)] == list(TILED)
    assert not tiles_exactly("NoSuchVAE")
    with pytest.raises(TypeError, match="AutoencoderTiny"):
        SyncTiledDecode(vaes["AutoencoderTiny"], None)


@pytest.mark.parametrize("name", VAE_CLASSES)
def test_every_pipeline_at_native_size_is_stock_with_tiling_on_and_off(sd_pipe, vaes, name, spy):
    vae = vaes[name]
    for kind in KINDS:
        pipe = pipeline(sd_pipe, kind, vae)
        stock = render(pipe, kind, 32)
        for tiling in (True, False):
            fouriscale.apply_fouriscale(pipe, vae_tiling=tiling)
            try:
                assert isinstance(vae.decode, SyncTiledDecode) == (tiling and name in TILED), (kind, tiling)
                assert np.array_equal(render(pipe, kind, 32), stock), (kind, tiling)
            finally:
                fouriscale.remove_fouriscale(pipe)
            assert "decode" not in vae.__dict__
    assert spy == []  # a 8x8 latent is one tile: the class's own decode ran, with every argument the pipeline gave


@pytest.mark.parametrize("name", VAE_CLASSES)
def test_sdxl_text2img_at_native_size_is_stock(sdxl_pipe, vaes, name):
    pipe = pipeline(sdxl_pipe, "text2img", vaes[name])
    stock = render(pipe, "text2img", 32)
    fouriscale.apply_fouriscale(pipe, vae_tiling=True)
    try:
        assert np.array_equal(render(pipe, "text2img", 32), stock)
    finally:
        fouriscale.remove_fouriscale(pipe)


@pytest.mark.parametrize("name", VAE_CLASSES)
def test_inpainting_at_twice_native_size_with_tiles(sd_pipe, vaes, name, spy):
    vae = vaes[name]
    pipe = pipeline(sd_pipe, "inpaint", vae)
    fouriscale.apply_fouriscale(pipe, vae_tiling=True)
    try:
        if name in TILED:
            vae.decode.tile, vae.decode.margin = 12, 2  # a 16x16 latent in 2 x 2 tiles
        else:
            assert vae.decode.__func__ is type(vae).decode
        image = render(pipe, "inpaint", 64)
    finally:
        fouriscale.remove_fouriscale(pipe)
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    if name == "AsymmetricAutoencoderKL":  # the decoder got the masked picture and the mask, at pixel size
        assert len(spy) == 1 and [tuple(p.shape[-2:]) for p in spy[0]] == [(64, 64), (64, 64)]
    else:
        assert spy == ([()] if name in TILED else [])


def _latent(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.randn(1, 4, 8, 12, generator=g), size=(32, 48), mode="bicubic")


def _extras(name: str) -> dict:
    """The arguments the pipelines give each class's ``decode`` besides the latent (fresh generators)."""
    extras = dict(generator=torch.Generator().manual_seed(1), return_dict=True)
    if name == "AsymmetricAutoencoderKL":
        g = torch.Generator().manual_seed(2)
        extras.update(image=torch.rand(1, 3, 128, 192, generator=g) * 2 - 1, mask=torch.zeros(1, 1, 128, 192))
        extras["mask"][..., 30:100, 40:150] = 1
    return extras


@torch.no_grad()
@pytest.mark.parametrize("name", VAE_CLASSES)
def test_direct_decode_equals_the_class_own(sd_pipe, name):
    """With FouriScale applied, ``vae.decode`` of a 32x48 latent with the class's own arguments: bit-identical where
    nothing is tiled; tiled (2 x 3 tiles of 32 latent pixels, margin 8, a decoder without mid-block attention),
    within the tiling tests' bound for border effects."""
    mid_attention = name not in TILED
    vae = tiny_vae(name, seed=4, mid_attention=mid_attention)
    own_decode = type(vae).decode
    pipe = pipeline(sd_pipe, "text2img", vae)
    z = _latent()
    own = own_decode(vae, z, **_extras(name)).sample
    if name == "AsymmetricAutoencoderKL":  # the picture and mask change the decode
        assert not torch.equal(own, own_decode(vae, z).sample)
    for tiling in (False, True):
        fouriscale.apply_fouriscale(pipe, vae_tiling=tiling, vae_tiling_threshold=32 * 32)
        try:
            tiled = tiling and name in TILED
            if tiled:
                assert inspect.signature(vae.decode) == inspect.signature(own_decode.__get__(vae))
                assert vae.decode.tile == 128
                # a 48-pixel latent side is within one 128-pixel tile: the class's own decode, every argument passed
                assert torch.equal(vae.decode(z, **_extras(name)).sample, own)
                vae.decode.tile, vae.decode.margin = 32, 8
            ours = vae.decode(z, **_extras(name)).sample
        finally:
            fouriscale.remove_fouriscale(pipe)
        if tiled:
            assert not torch.equal(ours, own) and ours.shape == own.shape
            assert (ours - own).abs().mean() / own.abs().mean() < 5e-3, (name, tiling)
        else:
            assert torch.equal(ours, own), (name, tiling)


@torch.no_grad()
def test_asymmetric_tiles_take_their_crop_of_the_picture_and_mask():
    vae = tiny_vae("AsymmetricAutoencoderKL", seed=5, mid_attention=False)
    extras = _extras("AsymmetricAutoencoderKL")
    z = vae.post_quant_conv(_latent(1))
    full = vae.decoder(z, extras["image"], extras["mask"])
    one_tile = sync_tiled_decode(vae.decoder, z, 64, 0, (extras["image"], extras["mask"]), 4)
    torch.testing.assert_close(one_tile, full, rtol=1e-4, atol=1e-4)  # several tiles: test_direct_decode_...
    with pytest.raises(ValueError, match="does not cover"):
        sync_tiled_decode(vae.decoder, z, 32, 8, (extras["image"][..., :100, :], None), 4)


@torch.no_grad()
@pytest.mark.parametrize("name", TILED)
def test_the_installed_decode_takes_what_the_class_takes(vaes, name):
    """Positional and keyword arguments as the class's ``decode`` orders them; unknown keywords are refused as the
    class refuses them, never dropped; a call the tiled path cannot honour goes to the class's own decode."""
    vae = vaes[name]
    z = _latent()[..., :16, :24]
    tiler = SyncTiledDecode(vae, threshold=None, tile=16, margin=2)  # 2 x 2 tiles
    try:
        if name == "AsymmetricAutoencoderKL":
            image, mask_ = torch.rand(1, 3, 64, 96) * 2 - 1, torch.ones(1, 1, 64, 96)
            mask_[..., :30, :] = 0
            by_name = vae.decode(z, image=image, mask=mask_, return_dict=False)
            by_position = vae.decode(z, None, image, mask_, False)  # (z, generator, image, mask, return_dict)
            assert isinstance(by_position, tuple) and torch.equal(by_position[0], by_name[0])
            # a picture of another size than the latent's: the class's own decode, which refuses it as it would
            with pytest.raises(KeyError):
                vae.decode(z, image=image[..., :32, :64], mask=mask_[..., :32, :64])
        else:
            by_name = vae.decode(z, return_dict=False, generator=None)
            by_position = vae.decode(z, False)  # (z, return_dict, generator)
            assert isinstance(by_position, tuple) and torch.equal(by_position[0], by_name[0])
        for call in (lambda: vae.decode(z, colour="blue"), lambda: vae.decode(z, True, None, None, None, None)):
            with pytest.raises(TypeError) as ours:
                call()
            tiler.remove()
            with pytest.raises(TypeError) as theirs:
                call()
            assert str(ours.value) == str(theirs.value)
            vae.decode = tiler
    finally:
        tiler.remove()
    assert "decode" not in vae.__dict__


@pytest.mark.parametrize("name", VAE_CLASSES)
def test_the_plan_says_how_the_vae_decodes(sd_pipe, vaes, name):
    pipe = pipeline(sd_pipe, "text2img", vaes[name])
    big = fouriscale.get_plan(pipe, 544, 544, 2, dilation=2, vae_tiling=True)  # latent 136: over one tile
    small = fouriscale.get_plan(pipe, 64, 64, 2)
    off = fouriscale.get_plan(pipe, 544, 544, 2, dilation=2, vae_tiling=False)
    assert big.vae_decode.vae == small.vae_decode.vae == name
    if name in TILED:
        assert big.vae_decode.tiled and big.vae_decode.patched and small.vae_decode.patched
        assert not small.vae_decode.tiled and not off.vae_decode.patched and not off.vae_decode.tiled
        assert f"VAE decode         tiled, tiles share GroupNorm statistics ({name}; " in str(big)
        assert f"VAE decode         {name}'s own at this size (tiled" in str(small)
        assert f"VAE decode         {name}'s own (vae_tiling=False)" in str(off)
    else:
        assert not any(p.vae_decode.patched or p.vae_decode.tiled for p in (big, small, off))
        assert f"VAE decode         {name}'s own, left alone (the tiled decode stands in for" in str(big)
    assert "VAE decode" in str(fouriscale.get_plan(pipe, 32, 32, 2))  # at native size too
    unet = fouriscale.get_plan(pipe.unet, 64, 64, 2, vae_scale_factor=4)
    assert unet.vae_decode is None and "VAE decode" not in str(unet)
    assert str(fouriscale.get_plan(pipe.unet, 64, 64, 2, vae_scale_factor=4, vae=name)) == str(small)
