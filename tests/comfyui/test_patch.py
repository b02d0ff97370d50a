"""The FouriScale node's model patch in a real ComfyUI sampling run equals the diffusers plug-in, call by call."""

import pytest
import torch

import fouriscale
import fouriscale.comfyui as fc

from .twins import NATIVE, Capture, Twin, capturing, replay, sample

STEPS = 6  # Euler: one call per step; full dilation (step 0), the progressive phase (1-3), plain convs (4-5)


@pytest.fixture(scope="module")
def twins(comfyui):
    return {family: Twin(family, "v" if family == "sd2" else "eps") for family in ("sd1", "sd2", "sdxl")}


def _close(a, b, tol=2e-5):
    scale = b.abs().max().clamp_min(1e-6)
    assert ((a - b).abs().max() / scale).item() < tol


def _replayed(twin, capture):
    """``(call, the diffusers plug-in's output)`` per recorded call; checks that FouriScale acts at the first one."""
    fouriscale.apply_fouriscale(twin.pipe)
    try:
        with fouriscale.disabled(twin.pipe):
            stock = replay(twin.pipe, capture.calls[0])
        assert (stock - capture.calls[0]["out"]).abs().max() > 1e-2 * stock.abs().max()
        return [(call, replay(twin.pipe, call)) for call in capture.calls]
    finally:
        fouriscale.remove_fouriscale(twin.pipe)


@pytest.mark.parametrize(
    "family, latent, cfg, batch",
    [
        ("sd1", (16, 16), 5.0, 1),
        ("sd1", (16, 24), 1.0, 1),  # non-square, no CFG
        ("sd2", (16, 16), 5.0, 1),  # v-prediction
        ("sdxl", (16, 16), 5.0, 2),
        ("sdxl", (24, 16), 5.0, 1),  # non-square: bucket 1216x832 scaled, d = 3
    ],
)
def test_every_model_call_equals_the_diffusers_plugin(comfyui, twins, family, latent, cfg, batch):
    twin = twins[family]
    capture = Capture()
    model = fc.apply_fouriscale(capturing(twin.model, capture), native_size=8 * NATIVE)
    positive, negative = twin.conds(batch)
    out = sample(comfyui, model, latent, STEPS, positive, negative, cfg=cfg, batch=batch)
    assert torch.isfinite(out).all()
    assert len(capture.calls) == STEPS
    assert all(
        call["kinds"] == ([1, 0] if cfg != 1.0 else [0]) or sorted(call["kinds"]) == [0, 1] for call in capture.calls
    )
    for call, expected in _replayed(twin, capture):
        _close(call["out"], expected)
