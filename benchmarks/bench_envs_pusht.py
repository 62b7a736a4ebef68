"""Benchmark the MuJoCo Push-T: physics/env/render throughput, gym-pusht for comparison, expert success.

Usage (from the repository root; writes the markdown report and prints it):

    MUJOCO_GL=egl python benchmarks/bench_envs_pusht.py --episodes 100 --workers 2 \
        --out benchmarks/results/envs_pusht.md

Measured:
  - physics steps/s: ``mj_step`` of the Push-T model while the agent pushes the block (one 10 ms step each);
  - env steps/s via ``gymnasium.make`` (wrappers included) with uniformly random actions, for ``obs_type="state"``
    and ``"pixels"`` (96x96 render every step), and the same for gym-pusht's ``obs_type="state"`` if installed;
  - renders/s of the 96x96 top camera;
  - expert success over seeded episodes (seeds first..first+N-1, expert seeded with the same seed), steps to success, and
    seconds per episode (per worker) / demos per minute (all workers), with a progress bar.
"""

import argparse
import os
import platform
import time
from multiprocessing import Pool

import gymnasium as gym
import mujoco
import numpy as np
from tqdm import tqdm

import diffpolicy.envs  # noqa: F401  (registers the ids)
from diffpolicy.envs.experts.pusht import PushTExpert
from diffpolicy.envs.pusht import PushTEnv

ENV_ID = "diffpolicy/PushT-v0"


def physics_steps_per_s(seconds: float) -> float:
    env = PushTEnv()
    env.reset(options={"reset_to_state": [256.0, 100.0, 256.0, 200.0, 0.3]})
    env.data.ctrl[:] = (256.0, 400.0)  # push the block towards the far wall: contacts all along
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            mujoco.mj_step(env.model, env.data)
        n += 1000
    return n / (time.perf_counter() - t0)


def env_steps_per_s(make, seconds: float) -> float:
    env = make()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(0, 512, size=(4096, 2)).astype(np.float32)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for k in range(200):
            _, _, terminated, truncated, _ = env.step(actions[(n + k) % len(actions)])
            if terminated or truncated:
                env.reset()
        n += 200
    rate = n / (time.perf_counter() - t0)
    env.close()
    return rate


def renders_per_s(seconds: float) -> float:
    env = PushTEnv(obs_type="pixels")
    env.reset(seed=0)
    env._render(96)  # create the renderer outside the timing
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        env._render(96)
        n += 1
    env.close()
    return n / (time.perf_counter() - t0)


def expert_episode(seed: int) -> tuple[int, bool, int, float, float]:
    """One seeded expert episode under the registered 300-step limit: seed, success, steps, coverage, seconds."""
    env = gym.make(ENV_ID)
    obs, _ = env.reset(seed=seed)
    expert = PushTExpert(env.unwrapped, seed=seed)
    t0 = time.perf_counter()
    steps, info = 0, {}
    while True:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        steps += 1
        if terminated or truncated:
            break
    return seed, bool(info["is_success"]), steps, float(info["coverage"]), time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=0, help="expert episodes use seeds first..first+episodes-1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput measurement")
    parser.add_argument("--out", default=None, help="markdown file to write")
    args = parser.parse_args()

    rows = [("physics steps/s (mj_step, pushing contact)", f"{physics_steps_per_s(args.seconds):,.0f}")]
    ours_state = env_steps_per_s(lambda: gym.make(ENV_ID, obs_type="state"), args.seconds)
    rows.append(("env steps/s, obs_type=state (gym.make)", f"{ours_state:,.0f}"))
    pixels = env_steps_per_s(lambda: gym.make(ENV_ID, obs_type="pixels"), args.seconds)
    rows.append(("env steps/s, obs_type=pixels 96x96 (gym.make)", f"{pixels:,.0f}"))
    rows.append(("renders/s, 96x96 top camera", f"{renders_per_s(args.seconds):,.0f}"))
    try:
        import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)

        theirs = env_steps_per_s(lambda: gym.make("gym_pusht/PushT-v0", obs_type="state"), args.seconds)
        rows.append(("gym-pusht env steps/s, obs_type=state (gym.make)", f"{theirs:,.0f}"))
        rows.append(("ratio ours / gym-pusht (state)", f"{ours_state / theirs:.2f}x"))
    except ImportError as err:
        rows.append(("gym-pusht env steps/s", f"not installed ({err})"))

    t0 = time.perf_counter()
    with Pool(args.workers) as pool:
        seeds = range(args.first_seed, args.first_seed + args.episodes)
        results = list(tqdm(pool.imap(expert_episode, seeds), total=args.episodes, desc="expert"))
    wall = time.perf_counter() - t0
    ok = np.array([r[1] for r in results])
    steps = np.array([r[2] for r in results])
    secs = np.array([r[4] for r in results])
    rows += [
        (f"expert success, seeds {seeds[0]}..{seeds[-1]}", f"{ok.mean():.0%} ({ok.sum()}/{len(ok)})"),
        ("expert steps to success (mean / median / max)",
         f"{steps[ok].mean():.0f} / {np.median(steps[ok]):.0f} / {steps[ok].max()}" if ok.any() else "-"),
        ("expert seconds per episode (one worker, mean)", f"{secs.mean():.2f}"),
        (f"expert demos/minute ({args.workers} workers, all episodes)", f"{60 * len(results) / wall:.1f}"),
    ]
    failed = [f"seed {r[0]}: coverage {r[3]:.3f} after {r[2]} steps" for r in results if not r[1]]

    cpu = platform.processor() or platform.machine()
    lines = [
        "# Push-T (MuJoCo) environment benchmarks",
        "",
        "Command:",
        "",
        "```",
        f"MUJOCO_GL={os.environ.get('MUJOCO_GL', '')} python benchmarks/bench_envs_pusht.py --episodes "
        f"{args.episodes} --first-seed {args.first_seed} --workers {args.workers} --seconds {args.seconds:g}"
        + (f" --out {args.out}" if args.out else ""),
        "```",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({cpu}), mujoco {mujoco.__version__}, gymnasium {gym.__version__}; "
        "throughputs are single-process.",
        "",
        "| measurement | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        "Failed expert episodes: " + ("; ".join(failed) if failed else "none"),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
