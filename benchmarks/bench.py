"""Direct inference vs FouriScale (vs an official-style implementation), side by side in one process.

    python benchmarks/bench.py --layout sd15-small --size 512x512 --steps 50
    python benchmarks/bench.py --layout sdxl --size 2048x2048 --device cuda --dtype fp16 --official

Random-weight UNets with the real SD 1.5 / SDXL architectures (timing does not depend on the weights),
or a scaled-down SD 1.5 layout for CPUs. Prompt embeddings are random tensors, so no text encoder is
needed. Prints seconds per image, seconds per denoising step in each phase (before start, progressive,
after stop), the time ratio to direct inference, peak memory (CPU RSS sampled, or
``torch.cuda.max_memory_allocated``) and the low-pass filter's share of FouriScale's time.

``official`` runs ``tests/reference.py``: the algorithm as the official scripts execute it (three branches
at every step, per-step re-patching of convs, complex FFTs with masks rebuilt at full size on the CPU for
every call, full Q/K/V in attention).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

import fouriscale  # noqa: E402
from fouriscale.testing import real_unet_config  # noqa: E402

LAYOUTS = {
    "sd15": lambda: real_unet_config("sd15"),
    "sdxl": lambda: real_unet_config("sdxl"),
    # SD 1.5's blocks with a quarter of the widths and 64-dim heads, native 256 px: fits a CPU run.
    "sd15-small": lambda: dict(real_unet_config("sd15"), sample_size=32, block_out_channels=(64, 128, 256, 256),
                               attention_head_dim=(1, 2, 4, 4), cross_attention_dim=256),  # fmt: skip
}


class PeakMemory:
    """Peak device memory (CUDA) or peak resident set size sampled every 5 ms (CPU), in MiB."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak, self._stop = _rss(), threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())


def _rss() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_pipeline(layout: str, dtype, device: str):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers import UNet2DConditionModel

    config = LAYOUTS[layout]()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).to(device=device, dtype=dtype).eval()
    # A 4-level VAE gives the real scale factor 8; its width does not matter for the (latent) timing.
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8).to(device=device, dtype=dtype)  # fmt: skip
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    cross = config["cross_attention_dim"]
    pos, neg = (torch.randn(1, 77, cross, generator=g).to(device, dtype) for _ in range(2))
    if config.get("addition_embed_type") == "text_time":
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                         tokenizer_2=None, unet=unet, scheduler=scheduler)  # fmt: skip
        pooled, neg_pooled = (torch.randn(1, 1280, generator=g).to(device, dtype) for _ in range(2))
        embeds = dict(prompt_embeds=pos, negative_prompt_embeds=neg, pooled_prompt_embeds=pooled,
                      negative_pooled_prompt_embeds=neg_pooled)  # fmt: skip
        ref_embeds = (pos, neg, pooled, neg_pooled)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # fmt: skip
        embeds = dict(prompt_embeds=pos, negative_prompt_embeds=neg)
        ref_embeds = (pos, neg)
    pipe.set_progress_bar_config(disable=True)
    return pipe, embeds, ref_embeds


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(run, device):
    """Runs ``run(callback)``; returns (total seconds, per-step seconds, peak MiB)."""
    marks = []

    def callback(*_):
        _sync(device)
        marks.append(time.perf_counter())

    with PeakMemory(device) as mem:
        _sync(device)
        start = time.perf_counter()
        run(callback)
        _sync(device)
        total = time.perf_counter() - start
    steps = [b - a for a, b in zip([start] + marks[:-1], marks)]
    return total, steps, mem.peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layout", choices=list(LAYOUTS), default="sd15-small")
    p.add_argument("--size", default=None, help="WxH (default: 2x the native size)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="default: fp16 on GPU, fp32 on CPU")
    p.add_argument("--official", action="store_true", help="also time the official-style implementation")
    p.add_argument("--no-filter-share", action="store_true", help="skip the instrumented run for the filter's share")
    p.add_argument("--json", help="also write the results as JSON to this file")
    args = p.parse_args(argv)

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    ]
    pipe, embeds, ref_embeds = build_pipeline(args.layout, dtype, args.device)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    width, height = (int(v) for v in args.size.lower().split("x")) if args.size else (2 * native, 2 * native)
    f = pipe.vae_scale_factor
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, height // f, width // f, generator=g).to(args.device, dtype)
    call = dict(height=height, width=width, num_inference_steps=args.steps, guidance_scale=7.5, latents=latents,
                output_type="latent", **embeds)  # fmt: skip

    def stock(callback):
        pipe(**call, callback_on_step_end=lambda *a: (callback(), a[-1])[1])

    # warm-up (kernels, allocator), both paths
    pipe(**dict(call, num_inference_steps=2))
    fouriscale.apply_fouriscale(pipe)
    pipe(**dict(call, num_inference_steps=2))
    fouriscale.remove_fouriscale(pipe)

    results = {}
    results["direct"] = timed(stock, args.device)
    fouriscale.apply_fouriscale(pipe)
    plan = fouriscale.get_plan(pipe, height, width, args.steps)
    results["fouriscale"] = timed(stock, args.device)

    filter_share = None
    if not args.no_filter_share:
        import fouriscale.conv as conv_module

        spent = [0.0]
        original = conv_module.lowpass_filter

        def timed_filter(*a, **k):
            _sync(args.device)
            t0 = time.perf_counter()
            out = original(*a, **k)
            _sync(args.device)
            spent[0] += time.perf_counter() - t0
            return out

        conv_module.lowpass_filter = timed_filter
        try:
            total, _, _ = timed(stock, args.device)
        finally:
            conv_module.lowpass_filter = original
        filter_share = spent[0] / total
    fouriscale.remove_fouriscale(pipe)

    if args.official:
        from reference import reference_latents

        family = "sdxl" if pipe.unet.config.addition_embed_type == "text_time" else "sd"
        if family == "sdxl":
            base = plan.base_size
        else:
            nl = pipe.unet.config.sample_size

            def base(name):
                block, index = name.split(".")[:2]
                level = 3 if block == "mid_block" else int(index) if block == "down_blocks" else 3 - int(index)
                return (nl >> level,) * 2

        def official(callback):
            reference_latents(pipe, None, None, height, width, args.steps, 7.5, latents, d=plan.dilation, base=base,
                              start=plan.start, stop=plan.stop, freeu=plan.freeu_params, embeds=ref_embeds,
                              callback=callback)  # fmt: skip

        results["official"] = timed(official, args.device)

    direct_time = results["direct"][0]
    phases = {"<start": range(0, plan.start), "progressive": range(plan.start, plan.stop),
              ">=stop": range(plan.stop, args.steps)}  # fmt: skip
    threads = torch.get_num_threads()
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {threads} threads"
    print(f"{args.layout} at {width}x{height} (latent {width // f}x{height // f}), {args.steps} DDIM steps, "
          f"{str(dtype).replace('torch.', '')}, {gpu}; d={plan.dilation}, start {plan.start}, stop {plan.stop}")  # fmt: skip
    header = f"{'method':<11} {'s/image':>8} " + " ".join(f"{'s/step ' + k:>19}" for k in phases) + f" {'ratio':>6} {'peak MiB':>9}"
    print(header)
    table = {}
    for name, (total, steps, peak) in results.items():
        per_phase = {k: (sum(steps[i] for i in r) / len(r) if len(r) else float("nan")) for k, r in phases.items()}
        print(f"{name:<11} {total:>8.2f} " + " ".join(f"{v:>19.3f}" for v in per_phase.values())
              + f" {total / direct_time:>6.2f} {peak:>9.0f}")  # fmt: skip
        table[name] = {"seconds": total, "per_step": per_phase, "ratio": total / direct_time, "peak_mib": peak}
    if "official" in results:
        print(f"official / fouriscale time: {results['official'][0] / results['fouriscale'][0]:.2f}x")
    if filter_share is not None:
        print(f"low-pass filter share of FouriScale's time: {100 * filter_share:.1f}%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"layout": args.layout, "width": width, "height": height, "steps": args.steps,
                       "dtype": str(dtype), "device": gpu, "results": table, "filter_share": filter_share}, fh, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
