"""Twin models and the replay of ComfyUI model calls on the diffusers host.

A twin is one set of weights in two hosts: a tiny diffusers pipeline whose UNet has a ComfyUI-compatible layout
(``fouriscale.testing.comfy_twin_configs``) and the ComfyUI model built from its weights. :class:`Capture`, an
outermost diffusion-model wrapper, records every model call of a real ComfyUI sampling run (its stock inputs and
outputs); :func:`replay` runs the same call on the diffusers twin under ``fouriscale.denoising_step``.

The replay re-states the node's grouping of a call's conds on its own: the first unconditional chunk with the
first cond chunk as one ``[uncond, cond]`` batch, every other chunk alone (a lone unconditional chunk as the first
rows of ``[uncond, uncond]``, which FouriScale treats row by row).
"""

from __future__ import annotations

import math

import torch

import fouriscale
from fouriscale.schedule import step_of_sigma
from fouriscale.testing import comfy_model, comfy_twin_configs, tiny_pipeline

NATIVE = 8  # the twins' native latent size: 64 px at ComfyUI's (and the twin pipelines') factor of 8


class Twin:
    """``pipe`` (diffusers, VAE factor 8) and ``model`` (a ComfyUI ModelPatcher) with the same UNet weights."""

    def __init__(self, family: str, prediction: str = "eps", seed: int = 0):
        self.family = family
        _, config = comfy_twin_configs(family, sample_size=NATIVE)
        self.pipe = tiny_pipeline(family, seed, NATIVE, vae_scale_factor=8, unet_config=config)
        self.pipe.set_progress_bar_config(disable=True)
        self.model = comfy_model(family, self.pipe.unet, prediction)

    def conds(self, batch: int = 1, seed: int = 0, count: int = 1):
        """``count`` positive conds and one negative, as ComfyUI's conditioning lists."""
        g = torch.Generator().manual_seed(seed)
        width = self.pipe.unet.config.cross_attention_dim

        def cond():
            extra = {"pooled_output": torch.randn(batch, 1280, generator=g)} if self.family == "sdxl" else {}
            return [torch.randn(batch, 77, width, generator=g), extra]

        return [cond() for _ in range(count)], [cond()]


def sample(
    comfyui,
    model,
    latent: tuple[int, int],
    steps: int,
    positive,
    negative,
    cfg: float = 5.0,
    batch: int = 1,
    sampler: str = "euler",
    scheduler: str = "normal",
    seed: int = 0,
    denoise: float = 1.0,
):
    """A real ComfyUI sampling run from seeded noise; returns the final latents."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 4, *latent, generator=g)
    empty = torch.zeros(batch, 4, *latent)
    return comfyui.sample.sample(
        model,
        noise,
        steps,
        cfg,
        sampler,
        scheduler,
        positive,
        negative,
        empty,
        denoise=denoise,
        disable_pbar=True,
        seed=seed,
    )


def skip_shapes(unet, latent: tuple[int, int]) -> tuple[list[tuple[int, int, int]], tuple[int, int, int]]:
    """Shapes (channels, height, width) of the UNet's skip tensors and of the middle block's output."""
    config = unet.config
    h, w = latent
    shapes = [(config.block_out_channels[0], h, w)]
    for i, channels in enumerate(config.block_out_channels):
        shapes += [(channels, h, w)] * config.layers_per_block
        if i < len(config.block_out_channels) - 1:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
            shapes.append((channels, h, w))
    return shapes, (config.block_out_channels[-1], h, w)


class Capture:
    """Diffusion-model wrapper that records each call; with ``residuals`` (the twin's UNet), it hands every call
    a ControlNet-style ``control`` of seeded random residuals first (``output``: one per skip tensor; ``middle``)."""

    def __init__(self, residuals=None):
        self.calls = []
        self.residuals = residuals

    def __call__(self, executor, x, timesteps, context, y, control, options, **kwargs):
        if self.residuals is not None and control is None:
            g = torch.Generator().manual_seed(len(self.calls))
            skips, mid = skip_shapes(self.residuals, tuple(x.shape[-2:]))
            n = x.shape[0]
            control = {
                "output": [0.2 * torch.randn(n, *s, generator=g) for s in skips],
                "middle": [0.2 * torch.randn(n, *mid, generator=g)],
            }
        record = {
            "x": x.clone(),
            "timesteps": timesteps.clone(),
            "context": context.clone(),
            "y": None if y is None else y.clone(),
            "control": None if control is None else {k: [t.clone() for t in v] for k, v in control.items()},
            "kinds": list(options.get("cond_or_uncond", [0])),
            "sigma": float(options["sigmas"].flatten()[0]),
            "sample_sigmas": [float(s) for s in options["sample_sigmas"]],
        }
        out = executor(x, timesteps, context, y, control, options, **kwargs)
        record["out"] = out.clone()
        self.calls.append(record)
        return out


def capturing(model, capture: Capture):
    """A clone of ``model`` with ``capture`` as its outermost diffusion-model wrapper."""
    import comfy.patcher_extension

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test.capture", capture)
    return clone


def _unet_call(pipe, call: dict, rows: slice, guidance: bool, step: int, num_steps: int) -> torch.Tensor:
    unet = pipe.unet
    kwargs = {}
    if call["y"] is not None:
        h, w = (8 * s for s in call["x"].shape[-2:])
        n = rows.stop - rows.start
        ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32).repeat(n, 1)
        kwargs["added_cond_kwargs"] = {"text_embeds": call["y"][rows, :1280], "time_ids": ids}
    control = call["control"]
    if control is not None:
        kwargs["down_block_additional_residuals"] = tuple(t[rows] for t in control["output"])
        kwargs["mid_block_additional_residual"] = control["middle"][0][rows]
    with torch.no_grad(), fouriscale.denoising_step(pipe, step, num_steps, guidance):
        return unet(
            call["x"][rows], call["timesteps"][rows], encoder_hidden_states=call["context"][rows], **kwargs
        ).sample


def replay(pipe, call: dict) -> torch.Tensor:
    """The diffusers twin's output for a recorded ComfyUI call (FouriScale applied to ``pipe`` by the caller)."""
    kinds = call["kinds"]
    rows = call["x"].shape[0] // len(kinds)
    step, num_steps = step_of_sigma(call["sample_sigmas"], call["sigma"])
    chunk = [slice(k * rows, (k + 1) * rows) for k in range(len(kinds))]
    uncond = [k for k, kind in enumerate(kinds) if kind == 1]
    cond = [k for k, kind in enumerate(kinds) if kind != 1]
    out: list[torch.Tensor | None] = [None] * len(kinds)
    groups = [[uncond[0], cond[0]]] if uncond and cond else []
    groups += [[k] for k in range(len(kinds)) if not any(k in g for g in groups)]
    for group in groups:
        if len(group) == 2:
            both = _rows(call, [chunk[group[0]], chunk[group[1]]])
            result = _unet_call(pipe, both, slice(0, 2 * rows), True, step, num_steps)
            out[group[0]], out[group[1]] = result[:rows], result[rows:]
        elif kinds[group[0]] == 1:
            twice = _rows(call, [chunk[group[0]], chunk[group[0]]])
            out[group[0]] = _unet_call(pipe, twice, slice(0, 2 * rows), True, step, num_steps)[:rows]
        else:
            out[group[0]] = _unet_call(pipe, call, chunk[group[0]], False, step, num_steps)
    return torch.cat(out)


def _rows(call: dict, slices: list[slice]) -> dict:
    """``call`` with every batch-shaped tensor made of the rows ``slices``, in that order."""

    def take(t):
        return None if t is None else torch.cat([t[s] for s in slices])

    out = dict(call, x=take(call["x"]), timesteps=take(call["timesteps"]), context=take(call["context"]))
    out["y"] = take(call["y"])
    if call["control"] is not None:
        out["control"] = {k: [take(t) for t in v] for k, v in call["control"].items()}
    return out
