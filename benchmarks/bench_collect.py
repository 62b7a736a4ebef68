"""Demonstration collection speed: demos/minute and yield of ``diffpolicy-collect`` on the real tasks.

    MUJOCO_GL=egl python benchmarks/bench_collect.py [--tasks pusht two_path arm_pick pusht_image] [--n 20] [--workers 2]

For each task config (``configs/task/<task>.yaml``) collects ``--n`` successful demos with the scripted expert into a
temporary store and prints kept/attempted, demos/minute (wall clock, including worker start-up and writing) and
the mean episode length. Start-up of spawned workers (imports, env construction) is included, so small ``--n``
underestimates the steady-state rate.
"""

from __future__ import annotations

import argparse
import tempfile
from importlib import resources
from pathlib import Path

import yaml

from diffpolicy.data.collect import collect_dataset
from diffpolicy.data.replay_buffer import ReplayBuffer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["pusht", "two_path", "arm_pick", "pusht_image"])
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks:
            task = yaml.safe_load(resources.files("diffpolicy.configs").joinpath("task", f"{name}.yaml").read_text())
            out = Path(tmp) / f"{name}.zarr"
            s = collect_dataset(task, n_episodes=args.n, out=str(out), seed=args.seed, workers=args.workers,
                                progress=False)
            rb = ReplayBuffer.open(out)
            rate = 60 * s["n_kept"] / s["collect_seconds"]
            rows.append((name, s["n_kept"], s["n_attempted"], s["yield"], rate, rb.episode_lengths.mean(),
                         rb.n_steps / s["collect_seconds"]))
    print(f"\n| task | kept / attempted | yield | demos/min ({args.workers} workers) | mean episode length | "
          f"recorded steps/s |")
    print("|---|---|---|---|---|---|")
    for name, kept, att, y, rate, length, sps in rows:
        print(f"| {name} | {kept} / {att} | {y:.0%} | {rate:.1f} | {length:.0f} | {sps:.0f} |")


if __name__ == "__main__":
    main()
