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
