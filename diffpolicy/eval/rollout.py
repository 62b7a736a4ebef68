"""Closed-loop evaluation: run a policy in a gymnasium task over seeded episodes, batched across environments.

Each environment keeps its own observation history (padded by repeating the first observation) and action queue;
all environments whose queue ran out are replanned together in one batched ``predict_action`` call.
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.obs import ObsAdapter, ObsSpec
from ..data.tasks import SuccessSignal, flat_obs_shapes, make_env


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def check_env_obs(spec: ObsSpec, env, task: Mapping[str, Any], policy) -> None:
    """The env's observation space gives every key the policy was trained on, in its shape; else a ``ValueError``
    naming the key, the env and the dataset the policy was trained on (a space that is not a Box or a Dict of
    them is a ``TypeError`` naming it)."""
    source, dataset = f"env {task['env_id']}", task.get("dataset")
    raw = flat_obs_shapes(env.observation_space)  # Box and (nested) Dict spaces of numbers; others are refused
    got = spec.shapes({k: shape for k, (shape, _) in raw.items()}, source)
    crop = task.get("crop_shape")
    for k, shape in got.items():
        want = policy.encoder.shapes.get(k)
        if want is None:
            continue
        if k in policy.encoder.image_keys:  # trained as (C, h, w), after the crop if any; the env gives (H, W, C)
            c, h, w = want
            ok_shape = len(shape) == 3 and shape[-1] == c and (
                tuple(shape[:2]) == (h, w) if crop is None else shape[0] >= h and shape[1] >= w)
        else:
            ok_shape = tuple(want) == tuple(shape)
        if not ok_shape:
            raise ValueError(f"observation key {k!r}: {source} gives shape {tuple(shape)}, the policy was trained on "
                             f"{tuple(want)} (dataset {dataset})")


def evaluate(policy, task: Mapping[str, Any], n_episodes: int = 50, seed: int = 100_000, n_envs: int = 8,
             video_episodes: int = 0, video_dir: str | Path | None = None, device="cpu", progress: bool = True,
             plan=None, **plan_kwargs) -> dict:
    """Success rate (95% CI), rewards and per-episode records of ``policy`` over ``n_episodes`` seeded episodes of
    ``task`` (a task config: env id and kwargs, observation keys and spec, image keys and crop, success signal).

    ``plan`` (or the keywords of ``policy.sampling_plan``: ``sampler``, ``steps``, ``shift``, ``spacing``) chooses
    the sampling; it is built, and so checked, before any env is made, and the env's observations are checked
    against the policy's keys before the first episode. Success comes from the task's ``success`` signal
    (:class:`~diffpolicy.data.tasks.SuccessSignal`), named in the summary.
    Episode ``i`` resets with seed ``seed + i``; the policy's sampling noise comes from one generator seeded with
    ``seed``, so a run is reproducible for a given ``n_envs`` (which sets the batching). The first
    ``video_episodes`` episodes are saved as mp4.
    """
    if plan is None:
        plan = policy.sampling_plan(**plan_kwargs)
    success = SuccessSignal.from_task(task)
    spec = ObsSpec.from_task(task)
    adapter = ObsAdapter(spec, task.get("image_keys", []), task.get("crop_shape"), source=f"env {task['env_id']}")
    To = policy.n_obs_steps
    n_envs = max(1, min(n_envs, n_episodes))
    envs = [make_env(task, render_mode="rgb_array" if video_episodes else None) for _ in range(n_envs)]
    check_env_obs(spec, envs[0], task, policy)
    fps = getattr(envs[0].unwrapped, "control_hz", envs[0].metadata.get("render_fps", 10))
    results: list[dict | None] = [None] * n_episodes
    next_ep = 0
    slots: list[dict | None] = [None] * n_envs
    gen = torch.Generator(device=device).manual_seed(seed)
    bar = tqdm(total=n_episodes, desc=f"eval {task['env_id']}", disable=not progress, dynamic_ncols=True)

    def start(i: int) -> None:
        nonlocal next_ep
        if next_ep >= n_episodes:
            slots[i] = None
            return
        ep, next_ep = next_ep, next_ep + 1
        obs, _ = envs[i].reset(seed=seed + ep)
        first = adapter.step_obs(obs)
        slots[i] = {"ep": ep, "hist": deque([first] * To, maxlen=To), "queue": deque(), "rewards": [],
                    "success": False, "info": {}, "chunks": 0,
                    "frames": [envs[i].render()] if ep < video_episodes else None}

    for i in range(n_envs):
        start(i)
    while any(s is not None for s in slots):
        need = [i for i, s in enumerate(slots) if s is not None and not s["queue"]]
        if need:
            obs = {k: v.to(device) for k, v in adapter.stack([slots[i]["hist"] for i in need]).items()}
            actions = policy.predict_action(obs, generator=gen, plan=plan)["action"]
            for row, i in enumerate(need):
                slots[i]["queue"].extend(actions[row].float().cpu().numpy())
                slots[i]["chunks"] += 1
        for i, s in enumerate(slots):
            if s is None:
                continue
            obs, reward, terminated, truncated, info = envs[i].step(s["queue"].popleft())
            s["hist"].append(adapter.step_obs(obs))
            s["rewards"].append(float(reward))
            s["success"] |= success.step(reward, terminated, truncated, info)
            s["info"] = info
            if s["frames"] is not None:
                s["frames"].append(envs[i].render())
            if terminated or truncated:
                results[s["ep"]] = _record(s, seed)
                if s["frames"] is not None and video_dir is not None:
                    _write_video(Path(video_dir) / f"episode_{s['ep']:03d}.mp4", s["frames"], fps)
                bar.update(1)
                start(i)
    bar.close()
    for e in envs:
        e.close()
    return {**summarize(results), "success_signal": success.describe()}


def _record(slot: dict, seed: int) -> dict:
    rec = {"episode": slot["ep"], "seed": seed + slot["ep"], "success": slot["success"],
           "max_reward": max(slot["rewards"]), "final_reward": slot["rewards"][-1], "length": len(slot["rewards"]),
           "chunks": slot["chunks"]}
    if "solution" in slot["info"]:
        rec["solution"] = slot["info"]["solution"]
    return rec


def summarize(episodes: list[dict]) -> dict:
    n = len(episodes)
    k = sum(e["success"] for e in episodes)
    lo, hi = wilson_interval(k, n)
    out = {"n_episodes": n, "success_rate": k / n, "success_ci95": [lo, hi],
           "mean_max_reward": float(np.mean([e["max_reward"] for e in episodes])),
           "mean_final_reward": float(np.mean([e["final_reward"] for e in episodes])), "episodes": episodes}
    sols = [e.get("solution") for e in episodes if e["success"] and e.get("solution") is not None]
    if sols:
        out["solution_split"] = {s: sols.count(s) / len(sols) for s in sorted(set(map(str, sols)))}
    return out


def _write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)


def save_summary(summary: dict, out: str | Path, title: str) -> None:
    """Write ``summary.json`` and ``summary.png`` to ``out`` and print the headline numbers."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_summary(summary, out / "summary.png", title)
    lo, hi = summary["success_ci95"]
    signal = f", by {summary['success_signal']}" if "success_signal" in summary else ""
    print(f"success {summary['success_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}{signal}); mean max reward "
          f"{summary['mean_max_reward']:.3f}; mean final reward {summary['mean_final_reward']:.3f} "
          f"over {summary['n_episodes']} episodes")
    if "solution_split" in summary:
        print(f"solutions taken (successful episodes): {summary['solution_split']}")
    print(f"wrote {out.resolve()}/summary.json and summary.png")


def plot_summary(summary: dict, path: str | Path, title: str = "") -> None:
    """PNG with the success rate (and CI) and the per-episode max reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = summary["episodes"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5), gridspec_kw={"width_ratios": [1, 4]})
    lo, hi = summary["success_ci95"]
    rate = summary["success_rate"]
    err = [[max(0.0, rate - lo)], [max(0.0, hi - rate)]]  # the Wilson bounds can round past the rate at 0 or 1
    ax[0].bar([0], [rate], yerr=err, color="tab:green", capsize=6)
    ax[0].set(xticks=[], ylim=(0, 1), title=f"success {summary['success_rate']:.2f}")
    colors = ["tab:green" if e["success"] else "tab:red" for e in eps]
    ax[1].bar([e["episode"] for e in eps], [e["max_reward"] for e in eps], color=colors)
    ax[1].set(xlabel="episode", ylabel="max reward", ylim=(0, 1.05),
              title=f"mean max reward {summary['mean_max_reward']:.3f} (green: success)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
