"""Evaluate every saved checkpoint of a run: success against training steps and training wall time.

    python benchmarks/eval_checkpoints.py RUN_DIR [--n-episodes 100] [--steps 2000 4000] [--sampler euler --n-steps 8]

A run trained with ``training.keep_checkpoints=0`` keeps a checkpoint every ``training.checkpoint_every`` steps, each
with the training seconds spent to reach it (``train_state.pt``, evaluation excluded). Each checkpoint's EMA weights
are evaluated by :func:`diffpolicy.cli.eval.run` (same seeds for every checkpoint) into
``RUN_DIR/eval_checkpoints/step_<N>``, and one row per checkpoint is appended to ``RUN_DIR/eval_checkpoints.jsonl``
(``step``, ``train_seconds``, ``success_rate``, its 95% interval, ``mean_max_reward``, ``n_episodes``), which
``plot_success_vs_time.py LABEL=RUN_DIR/eval_checkpoints.jsonl`` draws.
"""

import argparse
import json
from pathlib import Path

from diffpolicy.accel import tune_process
from diffpolicy.cli import eval as eval_cli
from diffpolicy.policy.checkpoint import load_train_state


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--n-episodes", type=int, default=100)
    ap.add_argument("--n-envs", type=int, default=10)
    ap.add_argument("--steps", type=int, nargs="*", help="only these checkpoint steps (default: all)")
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--n-steps", type=int, default=None, help="sampler steps (default: the policy's)")
    args = ap.parse_args()
    tune_process()
    out_file = args.run_dir / "eval_checkpoints.jsonl"
    for ckpt in sorted((args.run_dir / "checkpoints").glob("step_*")):
        step = int(ckpt.name.removeprefix("step_"))
        if args.steps and step not in args.steps:
            continue
        summary = eval_cli.run({"checkpoint": str(ckpt), "n_episodes": args.n_episodes, "n_envs": args.n_envs,
                                "seed": 100_000, "sampler": args.sampler, "steps": args.n_steps,
                                "video_episodes": 0, "out": str(args.run_dir / "eval_checkpoints" / ckpt.name)})
        row = {"step": step, "train_seconds": round(float(load_train_state(ckpt)["train_seconds"]), 1),
               "success_rate": summary["success_rate"], "ci95": summary.get("success_ci95"),
               "mean_max_reward": summary["mean_max_reward"], "n_episodes": args.n_episodes,
               "sampler": summary.get("sampler"), "sampler_steps": summary.get("steps")}
        print(json.dumps(row), flush=True)
        with open(out_file, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
