"""Action-chunk likelihoods of a trained policy as an out-of-distribution check (issue 24).

For ``--n`` demonstration windows of the policy's dataset: ``policy.log_likelihood(obs, chunk)`` of the demonstrated
chunk, of a chunk from another window (mismatched with its observations), and of the demonstrated chunk with
Gaussian noise of ``--noise`` times each action dimension's range. The AUROC says how well the likelihood tells the
demonstrated chunk from each alternative (1 = always higher).

    python benchmarks/bench_policy_likelihood.py RUN DATASET --n 200 --steps 16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffpolicy.data.dataset import WindowDataset
from diffpolicy.policy.factory import load_policy

RESULTS = Path(__file__).parent / "results"


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a positive scores above a negative), ties counted half."""
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("dataset", type=Path)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--trace", default="exact", choices=["exact", "hutchinson"])
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "toolbox_policy_likelihood.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    policy, cfg = load_policy(args.run)
    task, pcfg = cfg["task"], cfg["policy"]
    data = WindowDataset(args.dataset, task["obs_keys"], task.get("action_key", "action"), horizon=pcfg["horizon"],
                         n_obs_steps=pcfg["n_obs_steps"], n_action_steps=pcfg["n_action_steps"],
                         crop_shape=task.get("crop_shape"), obs_spec=task.get("obs_spec"))
    rng = np.random.default_rng(args.seed)
    batch = data.sample_batch(rng.choice(len(data), args.n, replace=False), seed=args.seed)
    obs, actions = batch["obs"], batch["action"]
    g = torch.Generator().manual_seed(args.seed)
    span = actions.flatten(0, 1).amax(0) - actions.flatten(0, 1).amin(0)
    variants = {"demonstrated": actions, "another window's chunk": actions.roll(1, dims=0),
                f"demonstrated + noise {args.noise:g} x range": actions + args.noise * span * torch.randn(
                    actions.shape, generator=g)}
    scores, seconds = {}, {}
    for name, chunk in variants.items():
        t0 = time.perf_counter()
        scores[name] = policy.log_likelihood(obs, chunk, steps=args.steps, trace=args.trace, generator=g)
        seconds[name] = time.perf_counter() - t0
        print(f"{name}: mean log-likelihood {float(scores[name].mean()):.2f} nats per chunk "
              f"({seconds[name] / args.n * 1000:.0f} ms per chunk)", flush=True)
    demo = scores["demonstrated"]
    result = {"run": str(args.run), "dataset": str(args.dataset), "n": args.n, "steps": args.steps,
              "trace": args.trace, "chunk_dims": int(actions[0].numel()),
              "mean_log_likelihood": {k: float(v.mean()) for k, v in scores.items()},
              "auroc_demonstrated_vs": {k: auroc(demo, v) for k, v in scores.items() if k != "demonstrated"},
              "ms_per_chunk": {k: round(v / args.n * 1000, 1) for k, v in seconds.items()}}
    print(json.dumps(result["auroc_demonstrated_vs"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out.resolve()}")


if __name__ == "__main__":
    main()
