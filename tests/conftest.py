"""Shared fixtures: tiny random pipelines saved to a temp dir and loaded back with ``from_pretrained``."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# One thread: the tiny models gain nothing from more, and spinning threads only add CPU time (the CLI
# subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from support.pipelines import load_pipeline  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Diffusers folders of the tiny SD 1.5-layout and SDXL-layout pipelines (native 32 px, latent 8)."""
    from fouriscale.testing import save_tiny_pipeline

    root = tmp_path_factory.mktemp("models")
    return {family: save_tiny_pipeline(str(root / family), family) for family in ("sd1", "sdxl")}


@pytest.fixture(scope="session")
def fine_dirs(tmp_path_factory):
    """The same native 32 px with a VAE factor of 2 (latent 16): feature maps twice as fine, for the tests
    whose power rests on what the low-pass filter keeps at 2x-3x (the reference cross-check)."""
    from fouriscale.testing import save_tiny_pipeline

    root = tmp_path_factory.mktemp("fine-models")
    sizes = dict(sample_size=16, vae_scale_factor=2)
    return {family: save_tiny_pipeline(str(root / family), family, **sizes) for family in ("sd1", "sdxl")}


@pytest.fixture(scope="module")
def sd_pipe(tiny_dirs):
    return load_pipeline(tiny_dirs["sd1"], "sd1")


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_dirs):
    return load_pipeline(tiny_dirs["sdxl"], "sdxl")


@pytest.fixture(scope="module")
def fine_pipes(fine_dirs):
    """The pipelines of :func:`fine_dirs` by family: ``fine_pipes["sd1"]``, ``fine_pipes["sdxl"]``."""
    return {family: load_pipeline(path, family) for family, path in fine_dirs.items()}


@pytest.fixture
def clean(request):
    """Remove FouriScale from the given pipelines after the test, whatever happened."""
    pipes = []
    yield pipes.append
    import fouriscale

    for pipe in pipes:
        fouriscale.remove_fouriscale(pipe)


# ---------------------------------------------------------------------------------------------- image quality


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Folders of seeded images for the quality metrics: ``real``, an exact ``copy``, ``blur1``/``blur2``/``blur4``,
    ``shift`` (16 px to the right) and ``other`` (more images like the real ones)."""
    import shutil

    from PIL import ImageFilter

    from support.evaluation import N_IMAGES, SIZE, derive, shift_right, smooth_images, write_png

    root = tmp_path_factory.mktemp("eval-images")
    real = root / "real"
    real.mkdir()
    for i, array in enumerate(smooth_images(N_IMAGES, SIZE, seed=0)):
        write_png(real / f"{i:03d}.png", array)
    out = {"real": real, "copy": root / "copy"}
    shutil.copytree(real, out["copy"])
    for radius in (1, 2, 4):
        out[f"blur{radius}"] = derive(
            real, root / f"blur{radius}", lambda im, r=radius: im.filter(ImageFilter.GaussianBlur(r))
        )
    out["shift"] = derive(real, root / "shift", shift_right)
    other = root / "other"
    other.mkdir()
    for i, array in enumerate(smooth_images(N_IMAGES, SIZE, seed=1)):
        write_png(other / f"{i:03d}.png", array)
    out["other"] = other
    return out


@pytest.fixture(scope="module")
def one_thread():
    """The networks of the quality metrics are tiny: one thread is faster than two, and much faster on a busy machine.
    Used by every module of tests/evaluation/ (its conftest) and by tests/frontend/test_quality.py."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP (32 px images, character tokenizer) saved like a hub folder. Image and text share the
    projection and a common bias so that the similarities are positive (CLIPScore clamps at 0)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from fouriscale.testing import tiny_tokenizer

    root = tmp_path_factory.mktemp("clip")
    tokenizer = tiny_tokenizer(str(root / "tok"))
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "max_position_embeddings": 77,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIPModel(config).eval()
    with torch.no_grad():
        model.visual_projection.weight.copy_(model.text_projection.weight)
        model.text_model.final_layer_norm.bias.fill_(1.0)
        model.vision_model.post_layernorm.bias.fill_(1.0)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    path = root / "tiny-clip"
    model.save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return str(path)
