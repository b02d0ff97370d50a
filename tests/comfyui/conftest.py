"""ComfyUI booted in the test process (``fouriscale.testing.boot_comfyui``): upstream ComfyUI's source
(``../shared/comfyui`` beside the project, or the folder in ``FOURISCALE_COMFYUI``), copied to a temp folder once per
session so that ComfyUI's own writable folders stay out of the source tree. Where it is not found the tests skip,
except with ``FOURISCALE_REQUIRE_COMFYUI=1`` (CI), where they fail.
"""

import os
import shutil
import types
from pathlib import Path

import pytest

from fouriscale.testing import boot_comfyui

ROOT = Path(__file__).resolve().parents[2]


def comfyui_source() -> Path | None:
    """Where ComfyUI's source is: ``FOURISCALE_COMFYUI``, else ``../shared/comfyui`` beside the project."""
    path = Path(os.environ.get("FOURISCALE_COMFYUI") or ROOT.parent / "shared" / "comfyui")
    return path if (path / "comfy" / "model_patcher.py").is_file() else None


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory):
    """The booted ComfyUI: ``.root`` (the temp copy), ``.nodes``, ``.sample`` (``comfy.sample``)."""
    source = comfyui_source()
    if source is None:
        message = "ComfyUI's source not found (set FOURISCALE_COMFYUI, or put it at ../shared/comfyui)"
        if os.environ.get("FOURISCALE_REQUIRE_COMFYUI"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("comfy") / "ComfyUI"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("__pycache__", ".git"))
    nodes = boot_comfyui(root)
    import comfy.sample
    import comfy.samplers

    return types.SimpleNamespace(root=root, nodes=nodes, sample=comfy.sample, samplers=comfy.samplers)
