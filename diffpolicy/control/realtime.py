"""Wall-clock harness: a simulated task advances at a fixed control rate while the policy computes.

The loop is that of a robot: at each period boundary it reads the observation, calls ``controller.act``, sends the
action and sleeps to the next boundary. The simulated robot does not wait for the policy: if ``act`` (plus the env
step) overruns, the periods that passed are simulated with the previously sent action held -- a late action costs
steps, as on hardware. The episode clock starts when the first action is sent (a robot idles before that).

``rate_hz`` is the wall-clock rate. Our tasks integrate ``1 / env.control_hz`` seconds of simulated time per step
(0.1 s for the 10 Hz tasks), so at ``rate_hz = 50`` a task runs 5x faster than real time: the policy gets 20 ms per
step, which is how a 50 Hz robot would stress the controller (the task itself was trained at 10 Hz).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from ..data.tasks import SuccessSignal, make_env
from .controller import Controller
from .metrics import RingStats, boundary_stats


def run_episode(env, controller: Controller, rate_hz: float, seed: int, max_steps: int | None = None,
                success_signal: SuccessSignal | None = None) -> dict:
    """One seeded episode in wall-clock time; returns success (per ``success_signal``, default
    ``info['is_success']``), rewards, timing and the executed actions."""
    signal = success_signal or SuccessSignal.from_config(None)
    period = 1.0 / rate_hz
    obs, _ = env.reset(seed=seed)
    controller.reset(seed)
    held, executed, boundaries, rewards = None, [], [], []
    late_steps, overruns = 0, 0
    loop = RingStats()
    success, info, done, next_deadline = False, {}, False, None
    while not done and (max_steps is None or len(rewards) < max_steps):
        t_obs = time.perf_counter()
        action = controller.act(obs)
        info_c = controller.last_info
        now = time.perf_counter()
        if next_deadline is None:  # first action of the episode: the clock starts now
            next_deadline = now
        # Whole periods that ended while we computed: the robot executed the held action during them.
        missed = int(max(0.0, now - next_deadline) // period) if held is not None else 0
        overruns += now - t_obs > period
        for _ in range(missed):
            obs, reward, term, trunc, info = env.step(held)
            rewards.append(float(reward))
            executed.append(held)
            boundaries.append(False)
            success |= signal.step(reward, term, trunc, info)
            late_steps += 1
            if term or trunc:
                done = True
                break
        if done:
            break
        obs, reward, term, trunc, info = env.step(action)
        held = action
        rewards.append(float(reward))
        executed.append(action)
        boundaries.append(bool(info_c.get("boundary", False)))
        success |= signal.step(reward, term, trunc, info)
        done = term or trunc
        next_deadline += (missed + 1) * period
        loop.add(time.perf_counter() - t_obs)
        sleep = next_deadline - time.perf_counter()
        if sleep > 0:
            time.sleep(sleep)
    actions = np.asarray(executed, dtype=np.float64)
    stats = controller.stats()
    return {"seed": seed, "success": success, "max_reward": max(rewards), "length": len(rewards),
            "late_steps": late_steps, "act_overruns": int(overruns), "controller": stats,
            "loop_ms": loop.summary(1e3), "smoothness": boundary_stats(actions, np.asarray(boundaries)),
            "delay_steps": stats["delay_steps"], "inference_s": controller.infer_latency.values().tolist()}


def run_harness(controller: Controller, task: Mapping[str, Any], rate_hz: float, n_episodes: int,
                seed: int = 100_000, progress: bool = True) -> dict:
    """``n_episodes`` seeded episodes of ``task`` (a task config; episode ``i`` uses ``seed + i``); aggregate success
    (the task's success signal) and timing."""
    env, signal = make_env(task), SuccessSignal.from_task(task)
    episodes = []
    for i in tqdm(range(n_episodes), desc=f"realtime {task['env_id']} @ {rate_hz:g} Hz", disable=not progress):
        episodes.append(run_episode(env, controller, rate_hz, seed + i, success_signal=signal))
    env.close()
    delays: dict[int, int] = {}
    for e in episodes:
        for d, n in e["delay_steps"].items():
            delays[d] = delays.get(d, 0) + n
    inference = np.concatenate([e["inference_s"] for e in episodes]) * 1e3
    smooth = {k: float(np.nanmean([e["smoothness"][k] for e in episodes])) for k in episodes[0]["smoothness"]}
    return {"n_episodes": n_episodes, "success_signal": signal.describe(), "success_rate": float(np.mean([e["success"] for e in episodes])),
            "mean_max_reward": float(np.mean([e["max_reward"] for e in episodes])),
            "late_steps_per_episode": float(np.mean([e["late_steps"] for e in episodes])),
            "late_step_fraction": sum(e["late_steps"] for e in episodes) / sum(e["length"] for e in episodes),
            "delay_steps": dict(sorted(delays.items())),
            "inference_ms": {"p50": float(np.percentile(inference, 50)), "p90": float(np.percentile(inference, 90)),
                             "p99": float(np.percentile(inference, 99)), "max": float(inference.max())},
            "smoothness": smooth, "episodes": episodes}
