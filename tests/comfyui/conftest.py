"""ComfyUI booted in the test process: upstream ComfyUI's source (``../shared/comfyui`` beside the project, or the
folder in ``FOURISCALE_COMFYUI``), copied to a temp folder once per session so that ComfyUI's own writable folders
stay out of the source tree.

Booting on this CPU (see ``../shared/NOTES.md``): ``args.cpu`` before ``comfy.model_management`` is imported, SDPA
attention, and a stand-in for torchvision (not installable here) while ComfyUI imports: ``comfy.model_base`` imports
modules of models FouriScale never touches that import it. transformers' torchvision check is made before the
stand-in exists and the stand-in is taken out again once ComfyUI is imported, so the rest of the suite never sees it.
"""

import importlib.machinery
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def comfyui_source() -> Path | None:
    """Where ComfyUI's source is: ``FOURISCALE_COMFYUI``, else ``../shared/comfyui`` beside the project."""
    path = Path(os.environ.get("FOURISCALE_COMFYUI") or ROOT.parent / "shared" / "comfyui")
    return path if (path / "comfy" / "model_patcher.py").is_file() else None


def _torchvision_stand_in() -> dict:
    def module(name):
        stand_in = types.ModuleType(name)
        stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None)
        return stand_in

    tv = module("torchvision")
    tv.transforms, tv.models = module("torchvision.transforms"), module("torchvision.models")
    return {"torchvision": tv, "torchvision.transforms": tv.transforms, "torchvision.models": tv.models}


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
    import diffusers  # noqa: F401  (imported, and their torchvision checks made, before the stand-in exists)
    import transformers.utils

    transformers.utils.is_torchvision_available()
    stand_in = {k: v for k, v in _torchvision_stand_in().items() if k not in sys.modules}
    sys.modules.update(stand_in)
    sys.path.append(str(root))
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        comfy.cli_args.args.use_pytorch_cross_attention = True
        import comfy.model_management
        import comfy.sample
        import comfy.samplers
        import nodes
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return types.SimpleNamespace(root=root, nodes=nodes, sample=comfy.sample, samplers=comfy.samplers)
