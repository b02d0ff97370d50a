"""``fouriscale comfyui install PATH``: the node pack for a ComfyUI folder, after a plain ``pip install``.

It writes ``PATH/custom_nodes/fouriscale/``: an ``__init__.py`` that loads the nodes from the installed package, and
the example workflows. Written in a temporary folder beside it and moved into place, so ComfyUI never finds half a
pack; a folder of that name that this command did not write (a clone of the repository, say) is left alone.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .workflows import example_workflows, workflow_json

__all__ = ["install_node_pack", "PACK_NAME"]

PACK_NAME = "fouriscale"
_MARK = "Written by `fouriscale comfyui install`"
_INIT = f'''"""FouriScale nodes for ComfyUI. {_MARK}: the nodes come from the fouriscale package of the Python that
runs ComfyUI (installed there with pip); to update them, update that package."""

try:
    from fouriscale.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ModuleNotFoundError as error:
    if (error.name or "").partition(".")[0] != "fouriscale":
        raise
    import sys

    raise ImportError(
        f"the FouriScale nodes need the fouriscale package in the Python that runs ComfyUI ({{sys.executable}}): "
        "install it there with pip"
    ) from None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
'''


def install_node_pack(comfyui: str | Path) -> Path:
    """Write the node pack into ``comfyui``'s ``custom_nodes`` folder (replacing one this command wrote); returns its
    folder. Raises ``ValueError`` when ``comfyui`` is not a ComfyUI folder or the pack's folder holds something
    else."""
    root = Path(comfyui).expanduser()
    nodes = root / "custom_nodes"
    if not root.is_dir() or not nodes.is_dir() or not (root / "comfy").is_dir():
        raise ValueError(
            f"{comfyui} is not a ComfyUI folder (one with comfy/ and custom_nodes/ in it); give the folder that holds "
            "ComfyUI's main.py"
        )
    target = nodes / PACK_NAME
    if target.exists() and _MARK not in _read(target / "__init__.py"):
        raise ValueError(
            f"{target} already holds a FouriScale node pack this command did not write (a clone of the repository?); "
            "keep that one, or remove it and run this again"
        )
    try:
        return _write(nodes, target)
    except OSError as error:
        raise ValueError(f"cannot write the node pack into {nodes}: {error.strerror or error}") from None


def _write(nodes: Path, target: Path) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=".fouriscale-", dir=nodes))
    try:
        (staging / "__init__.py").write_text(_INIT, encoding="utf-8")
        examples = staging / "example_workflows"
        examples.mkdir()
        for name, workflow in example_workflows().items():
            (examples / f"{name}.json").write_text(workflow_json(workflow), encoding="utf-8")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=".fouriscale-old-", dir=nodes))
            target.rename(old / PACK_NAME)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""
