"""A deliberately plain re-statement of the FouriScale algorithm, used only to cross-check the package.

It follows the issue's description of the official implementation step by step and shares no code
with ``fouriscale``: its own denoising loop with a 3-branch batch, a complex FFT on fftshifted masks
built element by element, per-step forward replacement of the listed convs, Q/K replacement inside
full attention, and FreeU written into the up blocks' loop. Slow and simple on purpose.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

SD_LAYERS = (
    [f"down_blocks.{b}.resnets.{r}.conv{c}" for b in (2, 3) for r in (0, 1) for c in (1, 2)]
    + ["down_blocks.2.downsamplers.0.conv"]
    + [f"mid_block.resnets.{r}.conv{c}" for r in (0, 1) for c in (1, 2)]
    + [f"up_blocks.{b}.resnets.{r}.conv{c}" for b in (0, 1, 2) for r in (0, 1, 2) for c in (1, 2)]
    + [f"up_blocks.{b}.upsamplers.0.conv" for b in (0, 1, 2)]
)
SDXL_LAYERS = (
    [f"down_blocks.2.resnets.{r}.conv{c}" for r in (0, 1) for c in (1, 2)]
    + [f"mid_block.resnets.{r}.conv{c}" for r in (0, 1) for c in (1, 2)]
    + [f"up_blocks.{b}.resnets.{r}.conv{c}" for b in (0, 1) for r in (0, 1, 2) for c in (1, 2)]
    + ["up_blocks.0.upsamplers.0.conv"]
)


def ref_axis(P: int, s: float, v: float, weak: bool) -> torch.Tensor:
    """The mask along one axis in fftshifted order: g(k) on both sides of the centre, odd P extended."""
    half = P // 2
    R = math.floor((s - 1) * P / (2 * s)) if weak else max(P // 8, 1)
    if R == 0:
        return torch.ones(P)
    k = torch.arange(P - half, dtype=torch.float64)
    g = torch.clamp(1 + (1 - v) / R * (half / s + 1 - k), min=v, max=1)
    return torch.cat([g[:half].flip(0), g]).float()


def ref_mask(P_h, P_w, s_h, s_w, v, weak) -> torch.Tensor:
    return torch.outer(ref_axis(P_h, s_h, v, weak), ref_axis(P_w, s_w, v, weak))


def ref_lowpass(
    x: torch.Tensor, hb: float, wb: float, s_h: float, s_w: float, v: float, n_branches: int
) -> torch.Tensor:
    """Pad to the base ratio, complex FFT, per-branch masks (strong..., weak last), real part, crop."""
    dtype = x.dtype
    x = x.float()
    H, W = x.shape[-2:]
    r = max(math.ceil(H / hb), math.ceil(W / wb))
    ph, pw = int(hb * r), int(wb * r)
    x = F.pad(x, (0, pw - W, 0, ph - H))
    spec = torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1)), dim=(-2, -1))
    # Built on the CPU at full size for every call and moved to the data, as the official code does.
    rows, channels = x.shape[0] // n_branches, x.shape[1]
    strong = ref_mask(ph, pw, s_h, s_w, v, weak=False).repeat(rows * (n_branches - 1), channels, 1, 1)
    weak = ref_mask(ph, pw, s_h, s_w, v, weak=True).repeat(rows, channels, 1, 1)
    masks = torch.cat([strong, weak]).to(x.device)
    y = torch.fft.ifftn(torch.fft.ifftshift(spec * masks, dim=(-2, -1)), dim=(-2, -1)).real
    return y[..., :H, :W].to(dtype)


def ref_freeu_filter(x: torch.Tensor, s: float) -> torch.Tensor:
    dtype = x.dtype
    spec = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    H, W = x.shape[-2:]
    mask = torch.ones(H, W)
    mask[H // 2 - 1 : H // 2 + 1, W // 2 - 1 : W // 2 + 1] = s
    return torch.fft.ifftn(torch.fft.ifftshift(spec * mask, dim=(-2, -1)), dim=(-2, -1)).real.to(dtype)


class RefSelfAttention:
    """Full Q/K/V for all three branches, then the detail branch's Q and K := the structure branch's."""

    def __init__(self, n_branches: int):
        self.n = n_branches

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        assert encoder_hidden_states is None
        residual = hidden_states
        b, c, h, w = hidden_states.shape if hidden_states.ndim == 4 else (None,) * 4
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        B = hidden_states.shape[0]
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        d = k.shape[-1] // attn.heads
        q, k, v = (t.view(B, -1, attn.heads, d).transpose(1, 2) for t in (q, k, v))
        rows = B // self.n
        q = q.clone()
        k = k.clone()
        q[-rows:] = q[-2 * rows : -rows]
        k[-rows:] = k[-2 * rows : -rows]
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(B, -1, attn.heads * d)
        out = attn.to_out[1](attn.to_out[0](out))
        if b is not None:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _ref_up_forward(block, b_s, deepest):
    """An up block's forward with FreeU decided by the incoming hidden state's channel count."""
    b1, b2, s1, s2 = b_s

    def forward(
        hidden_states,
        res_hidden_states_tuple,
        temb=None,
        encoder_hidden_states=None,
        cross_attention_kwargs=None,
        upsample_size=None,
        attention_mask=None,
        encoder_attention_mask=None,
        *args,
        **kwargs,
    ):
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for resnet, attn in zip(block.resnets, attentions):
            res = res_hidden_states_tuple[-1]
            res_hidden_states_tuple = res_hidden_states_tuple[:-1]
            if hidden_states.shape[1] == deepest:
                hidden_states = hidden_states.clone()
                hidden_states[:, : deepest // 2] = hidden_states[:, : deepest // 2] * b1
                res = ref_freeu_filter(res, s1)
            if hidden_states.shape[1] == deepest // 2:
                hidden_states = hidden_states.clone()
                hidden_states[:, : deepest // 4] = hidden_states[:, : deepest // 4] * b2
                res = ref_freeu_filter(res, s2)
            hidden_states = resnet(torch.cat([hidden_states, res], dim=1), temb)
            if attn is not None:
                hidden_states = attn(
                    hidden_states,
                    encoder_hidden_states=encoder_hidden_states,
                    cross_attention_kwargs=cross_attention_kwargs,
                    return_dict=False,
                )[0]
        if block.upsamplers is not None:
            for up in block.upsamplers:
                hidden_states = up(hidden_states, upsample_size)
        return hidden_states

    return forward


@contextmanager
def _replaced_forwards(replacements):
    saved = [(m, m.__dict__.get("forward")) for m, _ in replacements]
    for m, f in replacements:
        m.forward = f
    try:
        yield
    finally:
        for m, old in saved:
            if old is None:
                del m.forward
            else:
                m.forward = old


def _conv_forward(conv, name, d_i, family, base_of, height, v, n_branches):
    upsampler = "upsamplers" in name

    def forward(x):
        k = math.ceil(d_i)
        pad = k * (conv.weight.shape[-1] - 1) // 2
        if not upsampler:
            if family == "sdxl":
                hb, wb = base_of(name)
                ratio = height / x.shape[-2]
                hb, wb = hb / ratio, wb / ratio
            else:
                hb, wb = base_of(name)
            s_h, s_w = max(d_i / conv.stride[0], 1), max(d_i / conv.stride[1], 1)
            x = ref_lowpass(x, hb, wb, s_h, s_w, v, n_branches)
        if family == "sdxl":
            rows = x.shape[0] // n_branches
            kd = math.ceil(max(d_i / 1.5, 1))
            a = F.conv2d(x[:-rows], conv.weight, conv.bias, conv.stride, pad, k)
            b = F.conv2d(x[-rows:], conv.weight, conv.bias, conv.stride, kd * (conv.weight.shape[-1] - 1) // 2, kd)
            return torch.cat([a, b])
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, pad, k)

    return forward


@torch.no_grad()
def reference_latents(
    pipe,
    prompt,
    negative_prompt,
    height,
    width,
    steps,
    guidance,
    latents,
    *,
    d,
    base,
    start,
    stop,
    amp=False,
    freeu=None,
    embeds=None,
    callback=None,
):
    """Final latents of the algorithm for an SD (SD 1.5 block layout) or SDXL pipeline.

    ``base``: SD -> callable name -> (hb, wb) native feature size; SDXL -> the bucket (bh, bw) in pixels.
    ``embeds``: precomputed ``(pos, neg)`` (SDXL: ``(pos, neg, pooled, neg_pooled)``) instead of prompts.
    ``callback(i)`` runs after every step (the benchmark times steps with it).
    """
    unet, scheduler = pipe.unet, pipe.scheduler
    family = "sdxl" if unet.config.addition_embed_type == "text_time" else "sd"
    v = 0.6 if family == "sdxl" else 0.0
    layers = SDXL_LAYERS if family == "sdxl" else SD_LAYERS
    n = 3
    device = latents.device
    if family == "sdxl":
        if embeds is None:
            embeds = pipe.encode_prompt(
                prompt,
                negative_prompt=negative_prompt,
                device="cpu",
                num_images_per_prompt=1,
                do_classifier_free_guidance=True,
            )
        pos, neg, pooled, neg_pooled = embeds
        time_ids = pipe._get_add_time_ids(
            tuple(base), (0, 0), tuple(base), dtype=pos.dtype, text_encoder_projection_dim=pooled.shape[-1]
        ).to(device)
        embeds = torch.cat([neg, pos, pos])
        added = {"text_embeds": torch.cat([neg_pooled, pooled, pooled]), "time_ids": time_ids.repeat(3, 1)}
        bucket = base

        def base_of(name):
            return bucket
    else:
        pos, neg = embeds if embeds is not None else pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt)
        embeds = torch.cat([neg, pos, pos])
        added = None
        base_of = base

    attn_procs = unet.attn_processors
    ref_procs = {k: (RefSelfAttention(n) if k.endswith("attn1.processor") else p) for k, p in attn_procs.items()}
    unet.set_attn_processor(ref_procs)
    up_replacements = []
    if freeu is not None:
        deepest = unet.config.block_out_channels[-1]
        up_replacements = [(blk, _ref_up_forward(blk, freeu, deepest)) for blk in unet.up_blocks]
    try:
        scheduler.set_timesteps(steps, device=device)
        x = latents * scheduler.init_noise_sigma
        for i, t in enumerate(scheduler.timesteps):
            if i < start:
                d_i = float(d)
            elif i < stop:
                d_i = max((d - 1.0) * ((stop - i) / (stop - start)) + 1.0, 1.0)
            else:
                d_i = None
            convs = []
            if d_i is not None and d_i != 1:
                for name in layers:
                    conv = unet.get_submodule(name)
                    convs.append((conv, _conv_forward(conv, name, d_i, family, base_of, height, v, n)))
            inp = scheduler.scale_model_input(torch.cat([x] * 3), t)
            with _replaced_forwards(convs + up_replacements):
                out = unet(inp, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)[0]
            u, _, c = out.chunk(3)
            w = guidance * 2.4 if (amp and i < start) else guidance
            x = scheduler.step(u + w * (c - u), t, x, eta=0.0).prev_sample
            if callback is not None:
                callback(i)
    finally:
        unet.set_attn_processor(attn_procs)
    return x
