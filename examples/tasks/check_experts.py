"""Success rate and episode length of each example task's scripted expert, and of a uniform-random policy.

    python examples/tasks/check_experts.py                          # every examples/tasks/*.yaml, 100 episodes each
    python examples/tasks/check_experts.py examples/tasks/reacher.yaml --episodes 20

Each task is built as collection and evaluation build it: :func:`diffpolicy.data.tasks.make_env` (the config's
imports, env_kwargs and wrappers) and :class:`diffpolicy.data.tasks.SuccessSignal` (its ``success`` section); an
episode succeeds if the signal fires at any step. Episode ``i`` resets with ``seed + i``; the expert is built per
episode with that seed (as ``diffpolicy.data.collect`` does, including ``expert_action_noise``), the random policy
draws ``env.action_space.sample()`` from the action space seeded with it. Episodes run until ``terminated`` or
``truncated``. This folder is put on ``sys.path`` (Python does it for the script's own folder), so the expert
modules import without ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import time
from pathlib import Path

import numpy as np
import yaml

from diffpolicy.data.tasks import SuccessSignal, make_env

HERE = Path(__file__).resolve().parent


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of ``k`` successes in ``n``."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def load_object(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def run(task: dict, policy: str, episodes: int, seed: int) -> dict:
    """``policy`` "expert" or "random" over ``episodes`` seeded episodes of ``task``."""
    env = make_env(task)
    signal = SuccessSignal.from_task(task)
    make_expert = load_object(task["expert"])
    noise_std = float(task.get("expert_action_noise") or 0.0)
    successes, lengths, first_success = [], [], []
    t0 = time.perf_counter()
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        if policy == "expert":
            expert = make_expert(task["env_id"], env, seed + i)
            expert.reset()
            noise = np.random.default_rng([seed + i, 1])
        else:
            env.action_space.seed(seed + i)
        success, first, steps = False, None, 0
        while True:
            if policy == "expert":
                action = np.asarray(expert.act(obs), dtype=np.float32)
                if noise_std > 0:
                    action = (action + noise.normal(0.0, noise_std, action.shape)).astype(np.float32)
            else:
                action = env.action_space.sample()
            obs, reward, terminated, truncated, info = env.step(action)
            steps += 1
            if signal.step(reward, terminated, truncated, info) and not success:
                success, first = True, steps
            if terminated or truncated:
                break
        successes.append(success)
        lengths.append(steps)
        if first is not None:
            first_success.append(first)
    env.close()
    k, n = sum(successes), len(successes)
    return {"task": task["name"], "policy": policy, "success": signal.describe(), "episodes": n, "successes": k,
            "success_rate": k / n, "success_ci95": wilson(k, n), "mean_length": float(np.mean(lengths)),
            "min_length": int(np.min(lengths)), "max_length": int(np.max(lengths)),
            "mean_steps_to_success": float(np.mean(first_success)) if first_success else None,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tasks", nargs="*", help="task yaml files (default: every *.yaml beside this script)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="episode i resets with seed + i")
    parser.add_argument("--policies", nargs="+", default=["expert", "random"], choices=["expert", "random"])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    paths = [Path(p) for p in args.tasks] or sorted(HERE.glob("*.yaml"))
    results = []
    for path in paths:
        task = yaml.safe_load(path.read_text())
        for policy in args.policies:
            r = run(task, policy, args.episodes, args.seed)
            results.append(r)
            lo, hi = r["success_ci95"]
            reach = "" if r["mean_steps_to_success"] is None else \
                f", first success at step {r['mean_steps_to_success']:.1f} on average"
            print(f"{r['task']:>14} {policy:>6}: success ({r['success']}) {r['successes']}/{r['episodes']} = "
                  f"{r['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f}); episode length mean {r['mean_length']:.1f} "
                  f"(min {r['min_length']}, max {r['max_length']}){reach}  [{r['seconds']:.0f} s]", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
