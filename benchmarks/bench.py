"""Direct inference vs FouriScale (branch sharing on and off) vs an official-style implementation, side by side.

    python benchmarks/bench.py --layout sd1-small --size 512x512 --steps 50 --official
    python benchmarks/bench.py --layout sdxl-small --steps 50
    python benchmarks/bench.py --layout sdxl --size 2048x2048 --device cuda --dtype fp16 --official

Random-weight UNets with the real SD 1.5 / SDXL architectures (time and memory do not depend on the weights),
or scaled-down layouts with the same block types for CPUs (``sd1-small``, ``sdxl-small``). Prompt embeddings
are random tensors, so no text encoder is needed. All methods run in one process, one after the other, so
their time ratios are measured side by side. Printed per method: seconds per image, seconds per denoising
step in each phase (before start, progressive, after stop), the ratio to direct inference and peak memory.
With ``--repeats R`` the methods are timed in R interleaved rounds and each one's fastest round is reported
(the JSON keeps every round's time): a slow spell of a shared machine then cannot fall on one method only.
Peak memory comes from a fresh process per method, over ``--memory-steps`` steps (``--no-memory`` skips
it): on a GPU ``torch.cuda.max_memory_allocated``, on a CPU the resident set sampled during the run (with
glibc's mmap threshold fixed at 128 KiB, so freed tensors leave the resident set).
The low-pass filter's
share of FouriScale's time is read from ``torch.profiler`` (the conv hook marks it as ``fouriscale.lowpass``).

``official`` is ``tests/support/reference.py`` from the repository checkout (the plain re-statement of the official
algorithm that the test suite checks FouriScale against, loaded by file path): three branches at every
step, per-step re-patching of convs, complex FFTs with masks rebuilt at full size on the CPU for every call,
full Q/K/V in attention.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

import fouriscale
from fouriscale.testing import real_unet_config, sd_ddim_scheduler

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "support" / "reference.py"

LAYOUTS = {
    "sd1": lambda: real_unet_config("sd1"),
    "sdxl": lambda: real_unet_config("sdxl"),
    # SD 1.5's blocks with a quarter of the widths and 64-dim heads, native 256 px: fits a CPU run.
    "sd1-small": lambda: dict(
        real_unet_config("sd1"),
        sample_size=32,
        block_out_channels=(64, 128, 256, 256),
        attention_head_dim=(1, 2, 4, 4),
        cross_attention_dim=256,
    ),
    # SDXL's blocks (transformer depths 1/2/10, text-time conditioning) at a fifth of the widths, native 256 px.
    "sdxl-small": lambda: dict(
        real_unet_config("sdxl"),
        sample_size=32,
        block_out_channels=(64, 128, 256),
        attention_head_dim=(1, 2, 4),
        cross_attention_dim=256,
        projection_class_embeddings_input_dim=256 + 6 * 256,
    ),
}
METHODS = ("direct", "fouriscale", "unshared", "official")


def build_pipeline(layout: str, dtype, device: str):
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    config = LAYOUTS[layout]()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).to(device=device, dtype=dtype).eval()
    # A 4-level VAE gives the real scale factor 8; its width does not matter for the (latent) timing.
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8,
    ).to(device=device, dtype=dtype)
    scheduler = sd_ddim_scheduler()
    g = torch.Generator().manual_seed(1)
    cross = config["cross_attention_dim"]
    pos, neg = (torch.randn(1, 77, cross, generator=g).to(device, dtype) for _ in range(2))
    if config.get("addition_embed_type") == "text_time":
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=None,
            text_encoder_2=None,
            tokenizer=None,
            tokenizer_2=None,
            unet=unet,
            scheduler=scheduler,
        )
        pooled_dim = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        pooled, neg_pooled = (torch.randn(1, pooled_dim, generator=g).to(device, dtype) for _ in range(2))
        embeds = dict(
            prompt_embeds=pos,
            negative_prompt_embeds=neg,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=neg_pooled,
        )
        ref_embeds = (pos, neg, pooled, neg_pooled)
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        embeds = dict(prompt_embeds=pos, negative_prompt_embeds=neg)
        ref_embeds = (pos, neg)
    pipe.set_progress_bar_config(disable=True)
    return pipe, embeds, ref_embeds


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


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


class Bench:
    """One pipeline and the callables that run each method for ``steps`` steps."""

    def __init__(self, args):
        self.args = args
        self.device = args.device
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
            args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
        ]
        self.pipe, self.embeds, self.ref_embeds = build_pipeline(args.layout, self.dtype, self.device)
        native = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        if args.size:
            self.width, self.height = (int(v) for v in args.size.lower().split("x"))
        else:
            self.width, self.height = 2 * native, 2 * native
        f = self.pipe.vae_scale_factor
        g = torch.Generator().manual_seed(0)
        self.latents = torch.randn(1, 4, self.height // f, self.width // f, generator=g).to(self.device, self.dtype)
        config = fouriscale.FouriScaleConfig(sequential_uncond=SEQUENTIAL[args.sequential_uncond])
        self.plan = fouriscale.get_plan(self.pipe, self.height, self.width, args.steps, config)

    def call(self, steps: int, callback=None) -> dict:
        kwargs = dict(
            height=self.height,
            width=self.width,
            num_inference_steps=steps,
            guidance_scale=7.5,
            latents=self.latents,
            output_type="latent",
            **self.embeds,
        )
        if callback is not None:
            kwargs["callback_on_step_end"] = lambda pipe, i, t, tensors: (callback(), tensors)[1]
        return kwargs

    def run(self, method: str, steps: int, callback=None):
        pipe = self.pipe
        if method == "official":
            return self._official(steps, callback)
        if method == "direct":
            fouriscale.remove_fouriscale(pipe)
        else:
            fouriscale.apply_fouriscale(
                pipe, share_branches=method == "fouriscale", sequential_uncond=SEQUENTIAL[self.args.sequential_uncond]
            )
        return pipe(**self.call(steps, callback)).images

    def _official(self, steps: int, callback):
        reference = _load_reference()
        pipe = self.pipe
        fouriscale.remove_fouriscale(pipe)
        plan = fouriscale.get_plan(pipe, self.height, self.width, steps)
        if plan.profile.family.bucketed:
            base = plan.base_size
        else:
            nl = pipe.unet.config.sample_size

            def base(name):
                block, index = name.split(".")[:2]
                level = 3 if block == "mid_block" else int(index) if block == "down_blocks" else 3 - int(index)
                return (nl >> level,) * 2

        return reference.reference_latents(
            pipe,
            None,
            None,
            self.height,
            self.width,
            steps,
            7.5,
            self.latents,
            d=plan.dilation,
            base=base,
            start=plan.start,
            stop=plan.stop,
            freeu=plan.freeu_params,
            embeds=self.ref_embeds,
            callback=callback,
        )

    def timed(self, method: str) -> tuple[float, list[float]]:
        """``(seconds, seconds per step)`` of one run of ``method``."""
        marks = []

        def callback(*_):
            _sync(self.device)
            marks.append(time.perf_counter())

        _sync(self.device)
        start = time.perf_counter()
        self.run(method, self.args.steps, callback)
        _sync(self.device)
        total = time.perf_counter() - start
        return total, [b - a for a, b in zip([start] + marks[:-1], marks)]

    def filter_share(self, fouriscale_seconds: float) -> float:
        """Share of FouriScale's run time spent in the low-pass filter: ``torch.profiler`` times the filter (the
        conv hook marks it ``fouriscale.lowpass``) over a short run, per active step, scaled to this run's steps."""
        from torch.profiler import ProfilerActivity, profile

        cuda = self.device.startswith("cuda")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        steps = self.args.memory_steps
        short = fouriscale.get_plan(self.pipe, self.height, self.width, steps)
        with profile(activities=activities) as prof:
            self.run("fouriscale", steps)
            _sync(self.device)
        spent = sum(
            (e.device_time_total if cuda else e.cpu_time_total)
            for e in prof.key_averages()
            if e.key == "fouriscale.lowpass"
        )
        per_active_step = spent / 1e6 / max(sum(s.active for s in short.steps), 1)
        return per_active_step * sum(s.active for s in self.plan.steps) / fouriscale_seconds


def _load_reference():
    if not REFERENCE.exists():
        raise SystemExit(f"--official needs the repository checkout: {REFERENCE} is missing")
    spec = importlib.util.spec_from_file_location("fouriscale_reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: ``--sequential-uncond`` to ``FouriScaleConfig.sequential_uncond``.
SEQUENTIAL = {"auto": None, "on": True, "off": False}


def _peak_memory_in_fresh_process(args, method: str) -> float:
    """Peak memory (MiB) of ``method`` alone, in a new process: no allocator state carried over from other runs."""
    cmd = [
        sys.executable,
        __file__,
        "--layout",
        args.layout,
        "--steps",
        str(args.memory_steps),
        "--device",
        args.device,
        "--only",
        method,
    ]
    if args.size:
        cmd += ["--size", args.size]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    cmd += ["--sequential-uncond", args.sequential_uncond]
    # A fixed mmap threshold makes glibc hand large freed blocks back at once, so the resident set follows the live
    # tensors instead of what the allocator keeps around (the same for every method).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layout", choices=list(LAYOUTS), default="sd1-small")
    p.add_argument("--size", default=None, help="WxH (default: 2x the native size)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="default: fp16 on GPU, fp32 on CPU")
    p.add_argument("--methods", default="direct,fouriscale,unshared", help=f"from {', '.join(METHODS)}")
    p.add_argument("--official", action="store_true", help="also time the official-style implementation")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method peak memory runs")
    p.add_argument(
        "--memory-steps",
        type=int,
        default=3,
        help="steps of each memory run (default 3: the window "
        "scaled to 3 steps still has a full-dilation, a progressive and a plain step)",
    )
    p.add_argument(
        "--sequential-uncond",
        choices=list(SEQUENTIAL),
        default="auto",
        help="FouriScaleConfig.sequential_uncond (default auto: the plan's rule, on from 128x128 latents)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed rounds over all methods, interleaved; each method's fastest round is reported (default 1)",
    )
    p.add_argument("--no-filter-share", action="store_true", help="skip the profiled run for the filter's share")
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--only", choices=METHODS, help=argparse.SUPPRESS)  # internal: one method, print peak MiB
    args = p.parse_args(argv)

    bench = Bench(args)
    if args.only:
        bench.run(args.only, 2)  # warm-up
        with PeakMemory(args.device) as mem:
            bench.run(args.only, args.steps)
        print(f"{mem.peak:.1f}")
        return

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] + (["official"] if args.official else [])
    for method in methods:  # warm-up (kernels, allocator), every path
        bench.run(method, 2)
    rounds = {method: [] for method in methods}
    for _ in range(args.repeats):  # interleaved rounds: a slow spell of the machine hits every method alike
        for method in methods:
            rounds[method].append(bench.timed(method))
    results = {method: min(runs, key=lambda run: run[0]) for method, runs in rounds.items()}  # best of the rounds
    share = (
        None if args.no_filter_share or "fouriscale" not in results else bench.filter_share(results["fouriscale"][0])
    )
    peaks = {} if args.no_memory else {m: _peak_memory_in_fresh_process(args, m) for m in methods}

    plan, f = bench.plan, bench.pipe.vae_scale_factor
    phases = {
        "<start": range(0, plan.start),
        "progressive": range(plan.start, plan.stop),
        ">=stop": range(plan.stop, args.steps),
    }
    machine = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"{args.layout} at {bench.width}x{bench.height} (latent {bench.width // f}x{bench.height // f}), {args.steps} "
        f"DDIM steps, {str(bench.dtype).replace('torch.', '')}, {machine}; d={plan.dilation}, start {plan.start}, "
        f"stop {plan.stop}; sequential uncond {'on' if plan.sequential_uncond else 'off'}; "
        f"branches fork at {plan.profile.stages[plan.fork] if plan.fork is not None else '-'}"
    )
    print(
        f"{'method':<11} {'s/image':>8} "
        + " ".join(f"{'s/step ' + k:>19}" for k in phases)
        + f" {'ratio':>6} {'peak MiB':>9}"
    )
    direct = results.get("direct", next(iter(results.values())))[0]
    table = {}
    for name, (total, steps) in results.items():
        per_phase = {k: (sum(steps[i] for i in r) / len(r) if len(r) else float("nan")) for k, r in phases.items()}
        peak = peaks.get(name)
        print(
            f"{name:<11} {total:>8.2f} "
            + " ".join(f"{v:>19.3f}" for v in per_phase.values())
            + f" {total / direct:>6.3f} "
            + (f"{peak:>9.0f}" if peak is not None else f"{'-':>9}")
        )
        table[name] = {"seconds": total, "per_step": per_phase, "ratio": total / direct, "peak_mib": peak}
    if "official" in results and "fouriscale" in results:
        print(f"official / fouriscale time: {results['official'][0] / results['fouriscale'][0]:.2f}x")
    if share is not None:
        print(f"low-pass filter share of FouriScale's time: {100 * share:.1f}%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "layout": args.layout,
                    "width": bench.width,
                    "height": bench.height,
                    "steps": args.steps,
                    "repeats": args.repeats,
                    "all_seconds": {method: [run[0] for run in runs] for method, runs in rounds.items()},
                    "dtype": str(bench.dtype),
                    "device": machine,
                    "sequential_uncond": bench.plan.sequential_uncond,
                    "results": table,
                    "filter_share": share,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
