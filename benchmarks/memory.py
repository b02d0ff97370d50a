"""The memory estimate against measurements on this machine: the table of ``fouriscale.estimate_memory`` beside the
same live-byte count on real tensors and the process's resident memory.

    python benchmarks/memory.py                       # sd1-small and sdxl-small at 1x, 2x, 3x native, fp32 and bf16
    python benchmarks/memory.py --layouts sd1-small --scales 2 --dtypes fp32 --steps 4
    python benchmarks/memory.py --out benchmarks/results/cpu-memory.md
    python benchmarks/memory.py --presets 12GB 8GB      # the paper's presets on the published models (estimates only)

For each layout (``bench.py``'s stand-ins: the SD 1.5 and SDXL block layouts at a quarter and a fifth of their
widths, native 256 px; a VAE with SD's four levels at a quarter of its widths), size and dtype, a fresh process
(glibc's mmap threshold at 64 KiB, so freed tensors leave the resident set at once):

1. **estimate**: ``estimate_memory`` on the pipeline (weightless meta tensors; no arithmetic). The number compared is
   the activation peak, the largest of its phases (a stock step, a FouriScale step, the decode) without weights;
2. **phases, real**: ``measure_memory``: the same phases on the real weights and tensors, counted the same way,
   and each phase's resident-set growth (after an unmeasured run of the phase); the per-phase columns read
   "estimate / RSS (ratio)";
3. **run, live**: a whole generation (``pipe(...)``, FouriScale applied) with the same live-byte counter;
4. **run, RSS**: that generation's peak resident set size above the resident set just before it (Linux's exact
   high-water mark ``VmHWM``, reset through ``/proc/self/clear_refs``; weights and everything else already resident
   are the baseline), after a first, unmeasured generation of the same call (the libraries' one-time set-up:
   kernels, FFT plans, thread pools).

Weights are not in the comparison: they are counted exactly from the parameters. The estimate's prompt embeddings
are random tensors here too (no text encoder), as in ``bench.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build(layout: str, dtype):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    from bench import LAYOUTS
    from fouriscale.testing import sd_ddim_scheduler

    config = LAYOUTS[layout]()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).to(dtype=dtype).eval()
    vae = AutoencoderKL(
        block_out_channels=(32, 64, 128, 128),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32,
        layers_per_block=2,
    ).to(dtype=dtype)
    g = torch.Generator().manual_seed(1)
    cross = config["cross_attention_dim"]
    pos, neg = (torch.randn(1, 77, cross, generator=g).to(dtype=dtype) for _ in range(2))
    common = dict(vae=vae, unet=unet, scheduler=sd_ddim_scheduler())
    if config.get("addition_embed_type") == "text_time":
        pipe = StableDiffusionXLPipeline(
            text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, add_watermarker=False, **common
        )
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        p1, p2 = (torch.randn(1, pooled, generator=g).to(dtype=dtype) for _ in range(2))
        embeds = dict(
            prompt_embeds=pos, negative_prompt_embeds=neg, pooled_prompt_embeds=p1, negative_pooled_prompt_embeds=p2
        )
    else:
        pipe = StableDiffusionPipeline(
            text_encoder=None,
            tokenizer=None,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **common,
        )
        embeds = dict(prompt_embeds=pos, negative_prompt_embeds=neg)
    pipe.set_progress_bar_config(disable=True)
    return pipe, embeds


class PeakRSS:
    """The growth of the resident set size over a block, exactly: Linux's high-water mark (``VmHWM``) is reset when
    the block starts (``/proc/self/clear_refs``) and read when it ends; ``growth`` is in bytes."""

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/self/status")

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        self.baseline = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        self.growth = self._status("VmHWM") - self.baseline


def _phase_rss(memory_module) -> dict:
    """Wrap the library's phase runner so each phase run on real tensors also records its resident-set growth
    (after an unmeasured run of the same phase: one-time set-up of kernels and plans for its shapes); returns
    ``{phase: largest growth in bytes}``, filled as the phases run."""
    growth, current = {}, [None]
    run_phase, measure = memory_module._run_phase, memory_module._Estimator.measure

    def measured(ctx, body):
        if ctx.device == "meta":
            return run_phase(ctx, body)
        run_phase(ctx, body)
        with PeakRSS() as rss:
            result = run_phase(ctx, body)
        growth[current[0]] = max(growth.get(current[0], 0), rss.growth)
        return result

    def labelled(self, phase, config):
        current[0] = phase
        return measure(self, phase, config)

    memory_module._run_phase = measured
    memory_module._Estimator.measure = labelled
    return growth


def one(layout: str, scale: int, dtype_name: str, steps: int) -> dict:
    """Estimate and measurements of one configuration (run in a fresh process)."""
    import fouriscale
    from fouriscale.diffusers import memory as memory_module
    from fouriscale.diffusers.memory import LiveBytes, _modules, _names, measure_memory

    dtype = DTYPES[dtype_name]
    pipe, embeds = build(layout, dtype)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    size = scale * native
    fouriscale.apply_fouriscale(pipe)
    plan = fouriscale.get_plan(pipe, size, size, steps)
    started = time.perf_counter()
    estimate = fouriscale.estimate_memory(pipe, size, size, steps, device="cpu")
    estimate_seconds = time.perf_counter() - started
    growth = _phase_rss(memory_module)
    phases = measure_memory(pipe, size, size, steps)
    g = torch.Generator().manual_seed(0)
    f = pipe.vae_scale_factor
    latents = torch.randn(1, 4, size // f, size // f, generator=g).to(dtype=dtype)
    live = LiveBytes(_names(_modules(pipe)))
    call = dict(height=size, width=size, num_inference_steps=steps, latents=latents, output_type="pt", **embeds)
    pipe(**call)  # warm-up: the libraries' one-time set-up (kernels, plans, thread pools) is not the run's memory
    with torch.no_grad(), PeakRSS() as rss, live:
        pipe(**call)
    top = max(estimate.phases, key=lambda p: p.activations)
    return {
        "layout": layout,
        "scale": scale,
        "size": size,
        "dtype": dtype_name,
        "steps": steps,
        "dilation": plan.dilation,
        "estimate_mb": top.activations / 1e6,
        "estimate_phase": top.name,
        "estimate_where": top.where,
        "estimate_seconds": estimate_seconds,
        "phases_real_mb": max(p.activations for p in phases.phases) / 1e6,
        "run_live_mb": live.peak / 1e6,
        "run_rss_mb": rss.growth / 1e6,
        "weights_mb": estimate.weights / 1e6,
        "phases": {p.name: p.activations / 1e6 for p in estimate.phases},
        "phases_rss": {name: g / 1e6 for name, g in growth.items()},
    }


PHASES = ("stock step", "FouriScale step", "VAE decode")


def _ratio(est: float, x: float) -> str:
    return f"{est / x:.2f}" if x > 0 else "-"


def _row(r: dict) -> str:
    per_phase = []
    for name in PHASES:
        est, rss = r["phases"].get(name), r["phases_rss"].get(name, 0)
        per_phase.append("-" if est is None else f"{est:.1f} / {rss:.1f} ({_ratio(est, rss)})")
    est = r["estimate_mb"]
    return (
        f"| {r['layout']} | {r['size']}x{r['size']} ({r['scale']}x) | {r['dtype']} | "
        + " | ".join(per_phase)
        + f" | {est:.1f} | {r['phases_real_mb']:.1f} | {r['run_live_mb']:.1f} ({_ratio(est, r['run_live_mb'])}) | "
        + f"{r['run_rss_mb']:.1f} ({_ratio(est, r['run_rss_mb'])}) |"
    )


#: The model of each family the paper's presets are estimated with (configs shipped with the package).
PRESET_MODELS = {
    "sd1": "runwayml/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1-base",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
LEVER_CODES = {
    "sequential_uncond": "U",
    "sequential_uncond_all_steps": "P",
    "feed_forward_pieces": "F",
    "filter_pieces": "Fi",
    "resnet_pieces": "R",
}


def _codes(choice) -> str:
    overrides = choice.overrides
    codes = [LEVER_CODES[name] for name in LEVER_CODES if overrides.get(name)]
    if overrides.get("vae_tiling"):
        codes.append(f"T{overrides.get('vae_tile_size') or 128}")
    if choice.offload != "none":
        codes.append("O")
    return "+".join(codes) or "-"


def presets(budgets: list[str], dtype: str) -> None:
    """Estimates of the paper's 12 presets on the published models (meta pipelines from the shipped configs): direct
    inference, FouriScale's defaults, every lever without and with model offload, and each budget's choice."""
    import fouriscale
    from fouriscale.diffusers.memory import MemoryBudgetError, _Estimator, _fit, _phases
    from fouriscale.memory import format_bytes, parse_memory

    started = time.perf_counter()
    pipes = {}
    head = "| preset | model | direct | FouriScale | every lever | every lever + offload | " + " | ".join(
        f"budget {b}" for b in budgets
    )
    print(head + " |\n" + "|---" * (6 + len(budgets)) + "|", flush=True)
    for name, preset in fouriscale.PAPER_PRESETS.items():
        model = PRESET_MODELS[preset.family]
        if model not in pipes:
            pipes[model] = fouriscale.meta_pipeline(model, DTYPES[dtype])
        pipe, h, w = pipes[model], preset.height, preset.width
        try:
            direct = format_bytes(
                fouriscale.estimate_memory(pipe, h, w, 50, preset.config, direct=True, offload="none").peak
            )
        except MemoryBudgetError as exc:  # pragma: no cover - not raised without a budget
            direct = str(exc)
        est = _Estimator(pipe, h, w, 50, preset.config, None, "cuda", "sdpa", "none", 1, True)
        with est.running():
            default = est.estimate(_phases(est, est.config), "none", est.label(True))
            lowest = _fit(est, 1, ("none",))
            offloaded = _fit(est, 1, ("model",))
            cells = []
            for budget in budgets:
                choice = _fit(est, parse_memory(budget), ("none", "model"))
                cells.append(f"{format_bytes(choice.peak)} ({_codes(choice)})" if choice.fits else "refused")
        print(
            f"| {name} | {model} | {direct} | {format_bytes(default.peak)} | {format_bytes(lowest.peak)} "
            f"({_codes(lowest)}) | {format_bytes(offloaded.peak)} ({_codes(offloaded)}) | " + " | ".join(cells) + " |",
            flush=True,
        )
    print(
        f"\n{dtype}, 50 steps, batch 1, classifier-free guidance, SDPA (flash / memory-efficient) attention, "
        "the paper's settings per preset; GB = 10^9 bytes; CUDA context, allocator slack and convolution workspaces "
        "not included. "
        "Levers: U uncond pass alone (three-branch steps), P uncond pass alone (plain steps), F feed-forwards in "
        "pieces, Fi Fourier filters in pieces, R forked resnets one branch at a time, T<n> tiled decode with "
        "tiles of n latent px, O model CPU offload. "
        f"{time.perf_counter() - started:.0f} s on {os.cpu_count()} CPUs."
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layouts", nargs="+", default=["sd1-small", "sdxl-small"])
    p.add_argument("--scales", nargs="+", type=int, default=[1, 2, 3], help="sizes as multiples of the native size")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=4, help="steps of each run (4: two FouriScale steps, two plain ones)")
    p.add_argument("--out", help="write the table (Markdown) to this file, and its rows as JSON beside it")
    p.add_argument("--one", nargs=3, metavar=("LAYOUT", "SCALE", "DTYPE"), help=argparse.SUPPRESS)
    p.add_argument(
        "--presets",
        nargs="*",
        metavar="BUDGET",
        help="instead: estimates of the paper's 12 presets in fp16 on the published models, with each BUDGET's choice",
    )
    args = p.parse_args(argv)
    if args.presets is not None:
        presets(args.presets, "fp16")
        return
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.one[2], args.steps)))
        return

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    rows, started = [], time.perf_counter()
    header = (
        "| layout | size | dtype | stock step: est / RSS MB | FouriScale step: est / RSS MB | decode: est / RSS MB | "
        "estimate MB | phases, real MB | run, live MB | run, RSS MB |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    print(header, flush=True)
    for layout in args.layouts:
        for dtype in args.dtypes:
            for scale in args.scales:
                cmd = [sys.executable, __file__, "--steps", str(args.steps), "--one", layout, str(scale), dtype]
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode:
                    print(f"| {layout} | {scale}x | {dtype} | failed: {done.stderr.strip().splitlines()[-1]} |")
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(_row(row), flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    footer = (
        f"\n{len(rows)} configurations, {args.steps} DDIM steps each, {time.perf_counter() - started:.0f} s in all; "
        f"{machine}; {time.strftime('%Y-%m-%d', time.gmtime())}. MB = 10^6 bytes; activations only (weights: "
        f"exact by construction)."
    )
    print(footer)
    if args.out:
        Path(args.out).write_text(header + "\n" + "\n".join(_row(r) for r in rows) + "\n" + footer + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
