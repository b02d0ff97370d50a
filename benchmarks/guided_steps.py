"""Seconds per guided (three-branch) denoising step: direct inference vs FouriScale with the unconditional branch
batched or as a pass of its own, in interleaved rounds.

    python benchmarks/guided_steps.py --layout sd1-small --size 1024x1024 --rounds 5
    python benchmarks/guided_steps.py --layout sdxl-small --size 512x512 --rounds 4 --ff-pieces-from 0,1024

Each round runs the first ``--steps-per-round`` steps of a 50-step run (all guided at the paper's settings) of
every method, one after the other, and stops the pipeline there (``pipe._interrupt``); the first step of a run
is left out (warm-up). Printed: the median and fastest step per method, the ratio of medians to direct
inference, and the median of minor page faults per step (``resource.getrusage``). A quick A/B of the
``sequential_uncond`` default and, with ``--ff-pieces-from``, of the map size from which the forked feed-forward
layers run in pieces (``fouriscale.plan.FEED_FORWARD_PIECES_MIN_TOKENS``); ``bench.py`` times whole runs.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

import fouriscale
import fouriscale.plan
from bench import LAYOUTS, Bench

PIECES_DEFAULT = fouriscale.plan.FEED_FORWARD_PIECES_MIN_TOKENS

# method -> (``Bench.run`` method, ``--sequential-uncond``, feed-forward pieces from this many tokens)
METHODS = {
    "direct": ("direct", "auto", PIECES_DEFAULT),
    "split": ("fouriscale", "on", PIECES_DEFAULT),
    "batched": ("fouriscale", "off", PIECES_DEFAULT),
}


def run_steps(bench: Bench, methods: dict, method: str, n: int) -> tuple[list[float], list[int]]:
    """Seconds and minor page faults of steps 2..n of one run of ``method``."""
    name, bench.args.sequential_uncond, pieces = methods[method]
    if pieces != fouriscale.plan.FEED_FORWARD_PIECES_MIN_TOKENS:
        fouriscale.plan.FEED_FORWARD_PIECES_MIN_TOKENS = pieces
        fouriscale.remove_fouriscale(bench.pipe)  # the next apply plans afresh
    marks = [(time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt)]

    def on_step_end():
        marks.append((time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt))
        if len(marks) > n:
            bench.pipe._interrupt = True  # the pipeline skips the remaining steps

    bench.run(name, bench.args.steps, on_step_end)
    pairs = list(zip(marks[:-1], marks[1:]))[1:]
    return [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", choices=list(LAYOUTS), default="sd1-small")
    p.add_argument("--size", default="1024x1024", help="WxH")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="default: fp16 on GPU, fp32 on CPU")
    p.add_argument(
        "--ff-pieces-from",
        default="",
        help="comma-separated token counts: also time FouriScale (unconditional branch as by default) with the "
        f"forked feed-forward layers in pieces from each map size on (the plan's default: {PIECES_DEFAULT})",
    )
    args = p.parse_args()
    args.steps, args.sequential_uncond = 50, "auto"
    bench = Bench(args)
    if not all(bench.plan.three_branch(s) for s in bench.plan.steps[: args.steps_per_round]):
        raise SystemExit("the first steps of this size are not all guided: FouriScale leaves them to the stock batch")
    methods = dict(METHODS)
    for tokens in filter(None, args.ff_pieces_from.split(",")):
        methods[f"pieces>={int(tokens)}"] = ("fouriscale", "auto", int(tokens))
    seconds = {m: [] for m in methods}
    faults = {m: [] for m in methods}
    for r in range(args.rounds):
        for method in methods:
            s, f = run_steps(bench, methods, method, args.steps_per_round)
            seconds[method] += s
            faults[method] += f
        medians = ", ".join(f"{m} {statistics.median(v):.3f} s" for m, v in seconds.items())
        print(f"after round {r + 1}, medians so far: {medians}")
    direct = statistics.median(seconds["direct"])
    print(f"{args.layout} at {args.size}, {args.rounds} rounds of {args.steps_per_round - 1} timed guided steps")
    print(f"{'method':<13} {'median s':>9} {'fastest s':>10} {'vs direct':>10} {'faults/step':>12}")
    for method in methods:
        med = statistics.median(seconds[method])
        print(
            f"{method:<13} {med:>9.3f} {min(seconds[method]):>10.3f} {med / direct:>10.3f} "
            f"{int(statistics.median(faults[method])):>12}"
        )


if __name__ == "__main__":
    main()
