"""Speed and expert quality of the TwoPath and ArmPick tasks.

Measures, per task: raw MuJoCo physics steps/s, env steps/s with state and with pixel observations (random actions,
reset on episode end), renders/s at 96x96 per camera, and the scripted expert's success rate over seeded episodes
(episode seed i, expert seed i), with the TwoPath left/right split and the seconds per expert episode.

    MUJOCO_GL=egl python benchmarks/bench_envs_other.py [--episodes 100] [--out benchmarks/results/envs_other.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import diffpolicy.envs  # noqa: E402,F401
from diffpolicy.envs.experts import make_expert  # noqa: E402

TASKS = {"diffpolicy/TwoPath-v0": ("top",), "diffpolicy/ArmPick-v0": ("scene", "wrist")}


def physics_steps_per_s(env_id: str, n: int) -> float:
    """Bare ``mj_step`` rate on the task's model after a seeded reset (servos holding the start pose)."""
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    start = time.perf_counter()
    mujoco.mj_step(env.model, env.data, nstep=n)
    return n / (time.perf_counter() - start)


def env_steps_per_s(env_id: str, obs_type: str, n: int) -> float:
    """``env.step`` rate with uniformly random actions, resetting (seeded) whenever an episode ends."""
    env = gym.make(env_id, obs_type=obs_type)
    env.action_space.seed(0)
    env.reset(seed=0)
    actions = [env.action_space.sample() for _ in range(n)]
    episode = 0
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            episode += 1
            env.reset(seed=episode)
    rate = n / (time.perf_counter() - start)
    env.close()
    return rate


def renders_per_s(env_id: str, camera: str, n: int, size: int = 96) -> float:
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    env._cameras.render(env.data, camera, size)  # create the renderer (GL context) outside the timing
    start = time.perf_counter()
    for _ in range(n):
        env._cameras.render(env.data, camera, size)
    rate = n / (time.perf_counter() - start)
    env.close()
    return rate


def expert_episodes(env_id: str, episodes: int, obs_type: str = "state", seeding: str = "fresh") -> dict:
    """Roll out the expert on env seeds 0..episodes-1; success rate, solutions, steps and seconds per episode.

    ``seeding``: "fresh" = a new expert with seed i for episode i; "reused" = one expert (seed 0) for all
    episodes; "random" = a new expert per episode with a random 32-bit seed (from ``SeedSequence(0)``).
    """
    env = gym.make(env_id, obs_type=obs_type)
    random_seeds = np.random.SeedSequence(0).generate_state(episodes)
    reused = make_expert(env_id, env, seed=0)
    successes, solutions, steps, seconds = [], [], [], []
    for seed in tqdm(range(episodes), desc=f"{env_id} expert ({obs_type}, {seeding})", leave=False):
        start = time.perf_counter()
        expert = {"fresh": lambda: make_expert(env_id, env, seed=seed), "reused": lambda: reused,
                  "random": lambda: make_expert(env_id, env, seed=int(random_seeds[seed]))}[seeding]()
        obs, info = env.reset(seed=seed)
        expert.reset()
        for t in range(1, 10_000):
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            if terminated or truncated:
                break
        seconds.append(time.perf_counter() - start)
        successes.append(bool(info["is_success"]))
        solutions.append(info.get("solution"))
        steps.append(t)
    env.close()
    return {"success": float(np.mean(successes)), "n": episodes, "solutions": solutions,
            "steps": float(np.mean(steps)), "max_steps": int(np.max(steps)), "seconds": float(np.mean(seconds))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=100, help="seeded expert episodes per task")
    parser.add_argument("--pixel-episodes", type=int, default=10, help="expert episodes timed with pixel obs")
    parser.add_argument("--physics-steps", type=int, default=100_000)
    parser.add_argument("--state-steps", type=int, default=5_000)
    parser.add_argument("--pixel-steps", type=int, default=500)
    parser.add_argument("--renders", type=int, default=500)
    parser.add_argument("--out", default="benchmarks/results/envs_other.md")
    args = parser.parse_args()

    rows, expert_rows = [], []
    for env_id, cameras in tqdm(TASKS.items(), desc="tasks"):
        phys = physics_steps_per_s(env_id, args.physics_steps)
        state = env_steps_per_s(env_id, "state", args.state_steps)
        pixels = env_steps_per_s(env_id, "pixels", args.pixel_steps)
        renders = ", ".join(f"{cam}: {renders_per_s(env_id, cam, args.renders):.0f}" for cam in cameras)
        rows.append(f"| {env_id} | {phys:,.0f} | {state:,.0f} | {pixels:,.0f} | {renders} |")
        res = expert_episodes(env_id, args.episodes)
        pix = expert_episodes(env_id, args.pixel_episodes, obs_type="pixels")
        pix_s = f"{pix['seconds']:.3f}"
        for seeding in ("fresh", "reused", "random") if env_id.endswith("TwoPath-v0") else ("fresh",):
            res = res if seeding == "fresh" else expert_episodes(env_id, args.episodes, seeding=seeding)
            split = "-"
            if env_id.endswith("TwoPath-v0"):
                split = f"{res['solutions'].count('left')} left / {res['solutions'].count('right')} right"
            expert_rows.append(
                f"| {env_id} | {seeding} | {res['success']:.2f} ({res['n']} eps) | {split} | {res['steps']:.1f} "
                f"(max {res['max_steps']}) | {res['seconds']:.3f} | {pix_s if seeding == 'fresh' else '-'} |")

    load = os.getloadavg()  # other processes on the machine slow every number above; record how busy it was
    command = "MUJOCO_GL=egl python " + " ".join(sys.argv)
    lines = [
        "# TwoPath and ArmPick: speed and expert quality",
        "",
        f"Command: `{command}`  ",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} CPU "
        f"cores, mujoco {mujoco.__version__}, MUJOCO_GL={os.environ['MUJOCO_GL']}, single process; load average at "
        f"the end {load[0]:.2f} / {load[1]:.2f} (1 / 5 min; above ~1 other jobs shared the cores).",
        "",
        "Env steps use uniformly random actions (one control step = 10 Hz; TwoPath 20 and ArmPick 50 physics steps).",
        "Pixel steps render every camera of the task at 96x96.",
        "",
        "| task | physics steps/s | env steps/s (state) | env steps/s (pixels) | renders/s at 96x96 per camera |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Expert: env seed i for i in 0..N-1. Expert seeding: fresh = new expert with seed i per episode; reused = "
        "one expert (seed 0) for all episodes; random = new expert per episode with a random 32-bit seed (TwoPath "
        "side then is an independent fair coin per episode). Seconds include expert planning and env steps.",
        "",
        "| task | expert seeding | expert success | solutions | steps per episode | s/episode (state) "
        "| s/episode (pixels) |",
        "|---|---|---|---|---|---|---|",
        *expert_rows,
        "",
    ]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
