"""The example workflows of the node pack, as ComfyUI's workflow files (the graph format its page opens).

Written from the graphs below, so that the files in the repository's ``example_workflows/`` (the folder ComfyUI
serves a node pack's templates from) and those ``fouriscale comfyui install`` writes are one thing:

* ``fouriscale_sdxl_2048``: SDXL text-to-image at 2048x2048 (the paper's 50 DDIM steps), with the plan shown;
* ``fouriscale_two_pass``: SDXL at its native 1024x1024, upscaled to 2048x2048, then 30 steps at denoise 0.6 with
  the FouriScale model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .nodes import FouriScale

__all__ = ["example_workflows", "workflow_json"]

CHECKPOINT = "sd_xl_base_1.0.safetensors"
PROMPT = "a photo of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"


@dataclass
class _Node:
    id: int
    type: str
    widgets: list
    inputs: dict[str, tuple[int, int]] = field(default_factory=dict)  # input name -> (source node id, output slot)


# Output slots of the node types used: (name, type).
_OUTPUTS = {
    "CheckpointLoaderSimple": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "EmptyLatentImage": [("LATENT", "LATENT")],
    "KSampler": [("LATENT", "LATENT")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "VAEDecodeTiled": [("IMAGE", "IMAGE")],
    "VAEEncode": [("LATENT", "LATENT")],
    "ImageScale": [("IMAGE", "IMAGE")],
    "SaveImage": [],
    "FouriScale": [("MODEL", "MODEL")],
    "FouriScalePlan": [("plan", "STRING")],
}
# Linked inputs of the node types used, in order: (name, type).
_INPUTS = {
    "CLIPTextEncode": [("clip", "CLIP")],
    "KSampler": [
        ("model", "MODEL"),
        ("positive", "CONDITIONING"),
        ("negative", "CONDITIONING"),
        ("latent_image", "LATENT"),
    ],
    "VAEDecode": [("samples", "LATENT"), ("vae", "VAE")],
    "VAEDecodeTiled": [("samples", "LATENT"), ("vae", "VAE")],
    "VAEEncode": [("pixels", "IMAGE"), ("vae", "VAE")],
    "ImageScale": [("image", "IMAGE")],
    "SaveImage": [("images", "IMAGE")],
    "FouriScale": [("model", "MODEL")],
    "FouriScalePlan": [("model", "MODEL")],
}


def _fouriscale_widgets() -> list:
    """The FouriScale node's widget values at their defaults, in its input order."""
    inputs = FouriScale.INPUT_TYPES()["required"]
    return [options[1]["default"] for name, options in inputs.items() if name != "model"]


def _ksampler(id: int, steps: int, denoise: float, model: int, texts: tuple[int, int], latent: int) -> _Node:
    """A KSampler with the paper's sampler (DDIM), seed 23, CFG 5 (SDXL's); inputs from the nodes given."""
    links = {"model": (model, 0), "positive": (texts[0], 0), "negative": (texts[1], 0), "latent_image": (latent, 0)}
    return _Node(id, "KSampler", [23, "fixed", steps, 5.0, "ddim", "ddim_uniform", denoise], links)


def _text_to_image() -> list[_Node]:
    return [
        _Node(1, "CheckpointLoaderSimple", [CHECKPOINT]),
        _Node(2, "FouriScale", _fouriscale_widgets(), {"model": (1, 0)}),
        _Node(3, "CLIPTextEncode", [PROMPT], {"clip": (1, 1)}),
        _Node(4, "CLIPTextEncode", [NEGATIVE], {"clip": (1, 1)}),
        _Node(5, "EmptyLatentImage", [2048, 2048, 1]),
        _ksampler(6, steps=50, denoise=1.0, model=2, texts=(3, 4), latent=5),
        _Node(7, "VAEDecodeTiled", [512, 64, 64, 8], {"samples": (6, 0), "vae": (1, 2)}),
        _Node(8, "SaveImage", ["FouriScale"], {"images": (7, 0)}),
        _Node(9, "FouriScalePlan", [2048, 2048, 50], {"model": (2, 0)}),
    ]


def _two_pass() -> list[_Node]:
    return [
        _Node(1, "CheckpointLoaderSimple", [CHECKPOINT]),
        _Node(2, "CLIPTextEncode", [PROMPT], {"clip": (1, 1)}),
        _Node(3, "CLIPTextEncode", [NEGATIVE], {"clip": (1, 1)}),
        _Node(4, "EmptyLatentImage", [1024, 1024, 1]),
        _ksampler(5, steps=30, denoise=1.0, model=1, texts=(2, 3), latent=4),
        _Node(6, "VAEDecode", [], {"samples": (5, 0), "vae": (1, 2)}),
        _Node(7, "ImageScale", ["lanczos", 2048, 2048, "disabled"], {"image": (6, 0)}),
        _Node(8, "VAEEncode", [], {"pixels": (7, 0), "vae": (1, 2)}),
        _Node(9, "FouriScale", _fouriscale_widgets(), {"model": (1, 0)}),
        _ksampler(10, steps=30, denoise=0.6, model=9, texts=(2, 3), latent=8),
        _Node(11, "VAEDecodeTiled", [512, 64, 64, 8], {"samples": (10, 0), "vae": (1, 2)}),
        _Node(12, "SaveImage", ["FouriScale_two_pass"], {"images": (11, 0)}),
    ]


def _graph(nodes: list[_Node]) -> dict:
    """ComfyUI's workflow format: nodes with their slots and widget values, links ``[id, from, slot, to, slot,
    type]``; nodes laid out in columns by depth."""
    links, outgoing = [], {}
    for node in nodes:
        for slot, (name, kind) in enumerate(_INPUTS.get(node.type, [])):
            if name in node.inputs:
                source, out_slot = node.inputs[name]
                links.append([len(links) + 1, source, out_slot, node.id, slot, kind])
                outgoing.setdefault((source, out_slot), []).append(len(links))
    depth = {}
    for node in nodes:  # nodes are listed after their inputs
        depth[node.id] = 1 + max((depth[s] for s, _ in node.inputs.values()), default=-1)
    rows: dict[int, int] = {}
    out = []
    for order, node in enumerate(nodes):
        row = rows[depth[node.id]] = rows.get(depth[node.id], -1) + 1
        inputs = [
            {
                "name": name,
                "type": kind,
                "link": next(link[0] for link in links if link[3] == node.id and link[4] == slot),
            }
            for slot, (name, kind) in enumerate(_INPUTS.get(node.type, []))
            if name in node.inputs
        ]
        outputs = [
            {"name": name, "type": kind, "links": outgoing.get((node.id, slot), []), "slot_index": slot}
            for slot, (name, kind) in enumerate(_OUTPUTS[node.type])
        ]
        out.append(
            {
                "id": node.id,
                "type": node.type,
                "pos": [40 + 360 * depth[node.id], 40 + 260 * row],
                "size": [320, 200],
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": inputs,
                "outputs": outputs,
                "properties": {"Node name for S&R": node.type},
                "widgets_values": node.widgets,
            }
        )
    return {
        "last_node_id": max(n.id for n in nodes),
        "last_link_id": len(links),
        "nodes": out,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def example_workflows() -> dict[str, dict]:
    """``{file stem: workflow}`` of the example workflows."""
    return {"fouriscale_sdxl_2048": _graph(_text_to_image()), "fouriscale_two_pass": _graph(_two_pass())}


def workflow_json(workflow: dict) -> str:
    """The text of a workflow file."""
    return json.dumps(workflow, indent=2) + "\n"
