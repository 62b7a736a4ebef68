"""Chunk latency of a checkpoint's chunk function: eager PyTorch, accelerated, torch.compile, and the exported
artifacts (onnxruntime, torch.export), batch 1, interleaved in one process.

    OMP_NUM_THREADS=1 python benchmarks/bench_export.py RUN_DIR [RUN_DIR ...] --plans euler:1 euler:8 ddim:16 \
        [--compile] [--reps 200] [--out results/export.md]

Each (checkpoint, plan) is exported to a temporary directory (ONNX and torch.export) and checked against eager;
then every runner is timed in rounds (one call of each per round, in turn) so drift hits them alike. The
observations are random tensors of the checkpoint's shapes: latency does not depend on their values.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diffpolicy.accel import accelerate, compile_trunk, tune_process
from diffpolicy.export import export_checkpoint, load_artifact
from diffpolicy.export.artifact import example_inputs
from diffpolicy.export.chunk import ChunkFunction
from diffpolicy.policy.factory import load_policy


def timed(fn, inputs, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(inputs)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--plans", nargs="+", default=["euler:1", "euler:8"], help="sampler:steps")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the trunk (minutes per net)")
    ap.add_argument("--out", default=None, help="append the table to this markdown file")
    args = ap.parse_args()
    tune_process()  # as the CLIs do (MKL's batch-1 mode); onnxruntime is unaffected
    rows = []
    for ckpt in args.checkpoints:
        for spec in args.plans:
            sampler, steps = spec.split(":")
            steps = int(steps)
            plain, config = load_policy(ckpt)
            fast, _ = load_policy(ckpt)
            accelerate(fast)
            fns = {}
            obs_shapes = {k: tuple(v) for k, v in config["shapes"]["obs"].items()}
            for name, policy in (("eager", plain), ("eager+accel", fast)):
                fn = ChunkFunction(policy, policy.sampling_plan(sampler, steps, time_table=True)).eval()
                fns[name] = lambda x, fn=fn: fn(*x)
            if args.compile:
                comp, _ = load_policy(ckpt)
                accelerate(comp)
                compile_trunk(comp.net)
                fn = ChunkFunction(comp, comp.sampling_plan(sampler, steps, time_table=True)).eval()
                fns["compiled"] = lambda x, fn=fn: fn(*x)
            tmp = Path(tempfile.mkdtemp(prefix="bench_export_"))
            diffs = {}
            for fmt in ("onnx", "torch_export"):
                meta = export_checkpoint(ckpt, tmp / fmt, sampler, steps, fmt)
                diffs[fmt] = meta["max_abs_diff_vs_eager"]
                art = load_artifact(tmp / fmt, trusted=True, num_threads=torch.get_num_threads())
                fns["onnxruntime" if fmt == "onnx" else "torch.export"] = art.run
            inputs = example_inputs(ChunkFunction(plain, plain.sampling_plan(sampler, steps)), obs_shapes, batch=1)
            times = {k: [] for k in fns}
            with torch.inference_mode():
                for fn in fns.values():  # warm-up (compilation included)
                    for _ in range(3):
                        fn(inputs)
                for _ in range(args.rounds):
                    for k, fn in fns.items():
                        times[k] += timed(fn, inputs, args.reps // args.rounds)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            name = f"{config['policy']['name']} ({Path(ckpt).name})"
            rows.append((name, spec, med, diffs))
            print(name, spec, {k: f"{v:.2f} ms" for k, v in med.items()}, "max |diff| vs eager", diffs, flush=True)
    runners = list(rows[0][2])
    lines = ["| policy | plan | " + " | ".join(f"{r} (ms)" for r in runners) + " | artifact - eager (max abs) |",
             "|---" * (len(runners) + 3) + "|"]
    for name, spec, med, diffs in rows:
        lines.append(f"| {name} | {spec} | " + " | ".join(f"{med.get(r, float('nan')):.2f}" for r in runners)
                     + f" | onnx {diffs['onnx']:.1e}, pt2 {diffs['torch_export']:.1e} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
