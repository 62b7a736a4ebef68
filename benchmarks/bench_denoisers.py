"""Training steps per second of policy configs side by side (the denoiser's cost at a task's shapes), interleaved
in one process: the measured ratio sets equal-time step budgets (e.g. the transformer against the U-Net recipe).

    OMP_NUM_THREADS=1 python benchmarks/bench_denoisers.py --policies unet_flow_h8 transformer_flow \
        [--obs keypoint=9,2 agent_pos=2] [--action-dim 2] [--batch 128] [--rounds 5] [--steps 20]

Each policy is built from its config (configs/policy) with a normaliser of random statistics, the CPU paths of
diffpolicy.accel applied as diffpolicy-train does, and trained with fused AdamW on random batches.
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from diffpolicy.accel import accelerate
from diffpolicy.core.normalize import Normalizer
from diffpolicy.policy.factory import build_policy


def policy_config(name: str) -> dict:
    with initialize_config_module("diffpolicy.configs", version_base=None):
        return OmegaConf.to_container(compose("train", overrides=[f"policy={name}"]).policy, resolve=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", nargs="+", default=["unet_flow_h8", "transformer_flow"])
    ap.add_argument("--obs", nargs="+", default=["keypoint=9,2", "agent_pos=2"], help="key=shape (low-dim)")
    ap.add_argument("--action-dim", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per policy per round")
    args = ap.parse_args()
    shapes = {k: tuple(int(d) for d in v.split(",")) for k, v in (o.split("=") for o in args.obs)}
    g = torch.Generator().manual_seed(0)
    norm = Normalizer.fit({**{k: torch.randn(100, *s, generator=g) for k, s in shapes.items()},
                           "action": torch.randn(100, args.action_dim, generator=g)},
                          {**{k: "minmax" for k in shapes}, "action": "minmax"})
    runs = {}
    for name in args.policies:
        cfg = policy_config(name)
        policy = accelerate(build_policy(cfg, norm, shapes, [], args.action_dim))
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, fused=True)
        batch = {"obs": {k: torch.randn(args.batch, cfg["n_obs_steps"], *s, generator=g) for k, s in shapes.items()},
                 "action": torch.randn(args.batch, cfg["horizon"], args.action_dim, generator=g)}
        runs[name] = (policy, opt, batch, sum(p.numel() for p in policy.parameters()))

    def step(policy, opt, batch):
        loss = policy(batch, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rates = {k: [] for k in runs}
    for k, (policy, opt, batch, _) in runs.items():  # warm-up
        for _ in range(3):
            step(policy, opt, batch)
    for _ in range(args.rounds):
        for k, (policy, opt, batch, _) in runs.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(policy, opt, batch)
            rates[k].append(args.steps / (time.perf_counter() - t0))
    base = args.policies[0]
    base_rate = sorted(rates[base])[len(rates[base]) // 2]
    print(f"| policy | parameters | steps/s (batch {args.batch}, median of {args.rounds}) | per-step cost vs {base} |")
    print("|---|---|---|---|")
    for k, r in rates.items():
        med = sorted(r)[len(r) // 2]
        print(f"| {k} | {runs[k][3] / 1e6:.2f} M | {med:.2f} | {base_rate / med:.2f}x |")


if __name__ == "__main__":
    main()
