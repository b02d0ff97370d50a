"""FouriScale in ComfyUI vs the diffusers plug-in: the FouriScale/direct time ratio of each host, side by side.

    python benchmarks/comfyui.py --layout sd1-small --steps 50 --rounds 3
    python benchmarks/comfyui.py --layout sdxl --size 2048x2048 --device cuda --dtype fp16 --comfyui PATH

One set of random weights runs in both hosts: the UNet of ``bench.py``'s layout as a diffusers pipeline and, moved
to the LDM layout with ComfyUI's own key mapping, as a ComfyUI model (upstream ComfyUI from ``--comfyui``, default
``../shared/comfyui`` beside the project, imported in this process). Each round runs four generations of the same
latents and prompt embeddings, one after the other: diffusers direct and with FouriScale (DDIM, guidance 7.5),
ComfyUI direct and with the FouriScale node's patch (sampler ``ddim``, scheduler ``ddim_uniform``, CFG 7.5). Each
method's fastest round is reported (the JSON keeps every round), and the two hosts' ratios are compared, from
the fastest rounds and as the median of the rounds' own ratios, in wall-clock time and in the process's CPU time
(``time.process_time``: all threads; time a virtual machine's host takes away is not in it, so it is the steadier
measure on a shared machine). Odd rounds run the methods in reverse order, so a slow spell of a shared machine
falls on both sides of each pair.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import fouriscale
import fouriscale.comfyui
from bench import LAYOUTS, build_pipeline
from fouriscale.testing import boot_comfyui, comfy_model

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("diffusers direct", "diffusers fouriscale", "comfyui direct", "comfyui fouriscale")


def ldm_config(layout: str) -> tuple[str, dict]:
    """``(family, ComfyUI's UNetModel config)`` of a ``bench.py`` layout (the same architecture)."""
    config = LAYOUTS[layout]()
    widths = list(config["block_out_channels"])
    heads = config["attention_head_dim"]
    if isinstance(heads, int):  # diffusers' SD configs: the number of heads at every level
        head_options = dict(num_heads=heads, num_head_channels=-1)
    else:  # a head width common to every level
        (head_channels,) = {w // h for w, h in zip(widths, heads)}
        head_options = dict(num_heads=-1, num_head_channels=head_channels)
    common = dict(
        use_checkpoint=False,
        image_size=32,
        in_channels=4,
        out_channels=4,
        use_spatial_transformer=True,
        legacy=False,
        model_channels=widths[0],
        channel_mult=[w // widths[0] for w in widths],
        context_dim=config["cross_attention_dim"],
        use_temporal_attention=False,
        use_temporal_resblock=False,
        **head_options,
    )
    if config.get("addition_embed_type") == "text_time":
        depths = config["transformer_layers_per_block"]
        return "sdxl", dict(
            common,
            num_classes="sequential",
            adm_in_channels=config["projection_class_embeddings_input_dim"],
            num_res_blocks=[2] * len(widths),
            transformer_depth=[0, 0] + [d for d in depths[1:] for _ in range(2)],
            transformer_depth_middle=depths[-1],
            transformer_depth_output=[0, 0, 0] + [d for d in depths[1:] for _ in range(3)],
            use_linear_in_transformer=True,
        )
    return "sd1", dict(
        common,
        adm_in_channels=None,
        num_res_blocks=[2] * 4,
        transformer_depth=[1] * 6 + [0] * 2,
        transformer_depth_middle=1,
        transformer_depth_output=[1] * 9 + [0] * 3,
        use_linear_in_transformer=bool(config.get("use_linear_projection", False)),
    )


class Hosts:
    """The two hosts with the same UNet weights, latents and prompt embeddings; ``run(method)`` generates once."""

    def __init__(self, args):
        self.args = args
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
        self.pipe, self.embeds, _ = build_pipeline(args.layout, dtype, args.device)
        family, config = ldm_config(args.layout)
        self.model = comfy_model(family, self.pipe.unet, ldm_config=config)
        native = self.pipe.unet.config.sample_size * 8
        self.width, self.height = (int(v) for v in args.size.lower().split("x")) if args.size else (2 * native,) * 2
        self.patched = fouriscale.comfyui.apply_fouriscale(self.model, native_size=native)
        g = torch.Generator().manual_seed(0)
        self.latents = torch.randn(1, 4, self.height // 8, self.width // 8, generator=g)
        cpu = {k: v.float().cpu() for k, v in self.embeds.items()}
        pooled = family == "sdxl"
        self.positive = [[cpu["prompt_embeds"], {"pooled_output": cpu["pooled_prompt_embeds"]} if pooled else {}]]
        self.negative = [
            [cpu["negative_prompt_embeds"], {"pooled_output": cpu["negative_pooled_prompt_embeds"]} if pooled else {}]
        ]

    def run(self, method: str, steps: int):
        host, kind = method.split()
        if host == "diffusers":
            if kind == "direct":
                fouriscale.remove_fouriscale(self.pipe)
            else:
                fouriscale.apply_fouriscale(self.pipe)
            latents = self.latents.to(self.args.device, self.pipe.unet.dtype)
            return self.pipe(
                height=self.height,
                width=self.width,
                num_inference_steps=steps,
                guidance_scale=7.5,
                latents=latents,
                output_type="latent",
                **self.embeds,
            ).images
        import comfy.sample

        model = self.model if kind == "direct" else self.patched
        empty = torch.zeros_like(self.latents)
        return comfy.sample.sample(
            model, self.latents, steps, 7.5, "ddim", "ddim_uniform", self.positive, self.negative, empty,
            denoise=1.0, disable_pbar=True, seed=0,
        )  # fmt: skip


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layout", choices=list(LAYOUTS), default="sd1-small")
    p.add_argument("--size", default=None, help="WxH (default: 2x the native size)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each method's fastest is reported")
    p.add_argument("--device", default="cpu", help="diffusers' device (ComfyUI boots on the CPU here)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--comfyui", default=str(ROOT.parent / "shared" / "comfyui"), help="ComfyUI's source folder")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    boot_comfyui(Path(args.comfyui))
    hosts = Hosts(args)
    print(
        f"{args.layout} at {hosts.width}x{hosts.height}, {args.steps} steps, {args.rounds} rounds, {args.device}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    times = {method: [] for method in METHODS}
    cpu = {method: [] for method in METHODS}
    with torch.no_grad():
        for method in METHODS:  # warm-up: first calls pay for lazy set-up (plans, masks, ComfyUI's model loading)
            hosts.run(method, 2)
        for r in range(args.rounds):
            for method in METHODS if r % 2 == 0 else METHODS[::-1]:
                start, start_cpu = time.perf_counter(), time.process_time()
                hosts.run(method, args.steps)
                times[method].append(time.perf_counter() - start)
                cpu[method].append(time.process_time() - start_cpu)
            line = ", ".join(f"{m} {times[m][-1]:.1f} s ({cpu[m][-1]:.1f} s CPU)" for m in METHODS)
            print(f"round {r + 1}: {line}", flush=True)
    best, ratio, rounds, median = _ratios(times)
    best_cpu, ratio_cpu, rounds_cpu, median_cpu = _ratios(cpu)
    for m in METHODS:
        print(f"  {m:<22} {best[m]:8.1f} s  {best_cpu[m]:8.1f} s CPU")
    for name, value in (
        ("fastest rounds", ratio),
        ("median of rounds", median),
        ("CPU time, fastest rounds", ratio_cpu),
        ("CPU time, median of rounds", median_cpu),
    ):
        d, c = value["diffusers"], value["comfyui"]
        print(f"FouriScale/direct, {name}: diffusers {d:.3f}x, ComfyUI {c:.3f}x ({c / d - 1:+.1%})")
    if args.json:
        result = dict(vars(args), width=hosts.width, height=hosts.height, seconds=times, best=best, ratio=ratio)
        result.update(round_ratios=rounds, median_ratio=median)
        result.update(cpu_seconds=cpu, cpu_best=best_cpu, cpu_ratio=ratio_cpu, cpu_median_ratio=median_cpu)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def _ratios(times: dict) -> tuple[dict, dict, dict, dict]:
    """Each method's fastest round; each host's FouriScale/direct ratio of those, its rounds' ratios and their
    median."""
    best = {m: min(t) for m, t in times.items()}
    hosts = ("diffusers", "comfyui")
    ratio = {h: best[f"{h} fouriscale"] / best[f"{h} direct"] for h in hosts}
    rounds = {h: [f / d for f, d in zip(times[f"{h} fouriscale"], times[f"{h} direct"])] for h in hosts}
    median = {h: sorted(r)[len(r) // 2] for h, r in rounds.items()}
    return best, ratio, rounds, median


if __name__ == "__main__":
    main()
