"""Demonstration collection: roll out a scripted expert in a gymnasium env, in parallel, into a replay buffer.

Episode ``i`` resets the env with ``seed + i`` and seeds its expert with the same number, so an episode's content
depends only on ``(seed, i)``. Results are consumed in episode order and collection stops at the first
``n_episodes`` kept episodes, so the dataset is identical for any number of worker processes. Workers are spawned
(not forked: MuJoCo GL contexts and threads do not survive a fork) and build their env once.

The store is written beside its target and renamed into place at the end (:func:`~diffpolicy.data.store.atomic_store`):
an interrupted collection leaves no dataset under the final name. This module does not import torch.
"""

from __future__ import annotations

import importlib
import itertools
import multiprocessing as mp
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.data.store import atomic_store
from diffpolicy.data.tasks import DEFAULT_IMPORTS, SuccessSignal, flatten_obs, make_env

DEFAULT_EXPERT = "diffpolicy.envs.experts:make_expert"


@dataclass(frozen=True)
class RolloutSpec:
    """What a worker needs to build its env and expert (plain, picklable values)."""

    env_id: str
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    expert: str = DEFAULT_EXPERT  # "module:function" with signature (env_id, env, seed) -> expert
    imports: Sequence[str] = DEFAULT_IMPORTS  # modules whose import registers env_id with gymnasium
    record_info: Sequence[str] = ()  # final-step info keys kept per episode (e.g. TwoPath's "solution")
    # DART-style noise: the env executes expert action + N(0, action_noise^2) (action units), the store records the
    # expert's clean action, so the demos also visit states just off the expert's path and show how it recovers.
    action_noise: float = 0.0
    wrappers: Sequence[Mapping[str, Any]] = ()  # gymnasium wrappers applied to the env (diffpolicy.data.tasks)
    success: Mapping[str, Any] | None = None  # the task's success signal (None: info["is_success"])
    name: str = ""

    def task(self) -> dict[str, Any]:
        """The task-config form of the env part, for :func:`~diffpolicy.data.tasks.make_env`."""
        return {"name": self.name, "env_id": self.env_id, "env_kwargs": dict(self.env_kwargs),
                "imports": list(self.imports), "wrappers": list(self.wrappers), "success": self.success}


@dataclass
class Episode:
    index: int
    seed: int
    success: bool
    data: dict[str, np.ndarray]  # {key: (T, *event)}: observations before each action, and "action"
    info: dict[str, Any]
    control_hz: float | None


def load_object(path: str):
    """``"package.module:attr"`` -> the attribute."""
    module, _, name = path.partition(":")
    if not name:
        raise ValueError(f"expected 'module:attribute', got {path!r}")
    return getattr(importlib.import_module(module), name)


class Roller:
    """One env + expert factory; :meth:`run` plays one seeded episode."""

    def __init__(self, spec: RolloutSpec):
        self.spec = spec
        self.env = make_env(spec.task())
        self.success = SuccessSignal.from_task(spec.task())
        self.make_expert = load_object(spec.expert)

    def run(self, index: int, seed: int) -> Episode:
        obs, info = self.env.reset(seed=seed)
        expert = self.make_expert(self.spec.env_id, self.env, seed)
        expert.reset()
        noise = np.random.default_rng([seed, 1])  # its own stream: the expert's draws do not depend on it
        steps: dict[str, list] = {}
        success = False
        while True:
            action = np.asarray(expert.act(obs), dtype=np.float32)
            for key, value in flatten_obs(obs).items():  # a Box obs is stored as "state", nested keys as "a/b"
                steps.setdefault(key, []).append(np.asarray(value))
            steps.setdefault("action", []).append(action)
            executed = action
            if self.spec.action_noise > 0:
                executed = (action + noise.normal(0.0, self.spec.action_noise, action.shape)).astype(np.float32)
            obs, reward, terminated, truncated, info = self.env.step(executed)
            success |= self.success.step(reward, terminated, truncated, info)
            if terminated or truncated:
                break
        kept_info = {k: _plain(info.get(k)) for k in self.spec.record_info}
        hz = getattr(self.env.unwrapped, "control_hz", None)
        return Episode(index, seed, success,
                       {k: np.stack(v) for k, v in steps.items()}, kept_info, None if hz is None else float(hz))

    def close(self) -> None:
        self.env.close()


def _plain(value: Any) -> Any:
    """JSON-able form of an info value (numpy scalars to Python)."""
    return value.item() if isinstance(value, np.generic) else value


_ROLLER: Roller | None = None


def _init_worker(spec: RolloutSpec) -> None:
    global _ROLLER
    _ROLLER = Roller(spec)


def _run_in_worker(job: tuple[int, int]) -> Episode:
    return _ROLLER.run(*job)


def rollouts(spec: RolloutSpec, seed: int, max_attempts: int, workers: int) -> Iterator[Episode]:
    """Episodes ``0 .. max_attempts-1`` in order; ``workers > 1`` runs them in spawned worker processes.

    At most ``2 * workers`` episodes are in flight. When the caller stops early (enough episodes kept, or an error),
    the queued ones are cancelled and the running ones finish before the workers exit: killing workers mid-episode
    (``Pool.terminate``) could hang on a worker blocked writing a large pixel episode to the result pipe."""
    jobs = ((i, seed + i) for i in range(max_attempts))
    if workers <= 1:
        roller = Roller(spec)
        try:
            for job in jobs:
                yield roller.run(*job)
        finally:
            roller.close()
        return
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(spec,))
    pending = deque(pool.submit(_run_in_worker, job) for job in itertools.islice(jobs, 2 * workers))
    try:
        while pending:
            episode = pending.popleft().result()
            pending.extend(pool.submit(_run_in_worker, job) for job in itertools.islice(jobs, 1))
            yield episode
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def collect(spec: RolloutSpec, n_episodes: int, out: str | os.PathLike, seed: int = 0, workers: int = 2,
            keep_failed: bool = False, max_attempts: int | None = None, overwrite: bool = False,
            attrs: Mapping[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Collect ``n_episodes`` episodes (successful ones unless ``keep_failed``) into a new store at ``out``.

    Tries at most ``max_attempts`` (default ``2 * n_episodes + 20``) episodes. Returns a summary with the store
    path, attempts, kept episodes, yield and wall time; the same numbers are stored as attributes.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    max_attempts = max_attempts or 2 * n_episodes + 20
    kept: list[Episode] = []
    attempted = 0
    t0 = time.perf_counter()
    with atomic_store(out, overwrite) as tmp:  # refuses an existing `out` before any work
        rb = None
        bar = tqdm(total=n_episodes, desc=f"collect {spec.env_id}", unit="demo", disable=not progress)
        for ep in rollouts(spec, seed, max_attempts, workers):
            attempted += 1
            if ep.success or keep_failed:
                if rb is None:
                    rb = ReplayBuffer.create(tmp)
                rb.append_episode(ep.data)
                ep.data = {}  # written; keep only the metadata (image demos would otherwise pile up in memory)
                kept.append(ep)
                bar.update()
            bar.set_postfix(attempted=attempted, yield_=f"{len(kept) / attempted:.0%}")
            if len(kept) == n_episodes:
                break
        bar.close()
        if not kept:
            raise RuntimeError(f"collect {spec.env_id}: no episode kept out of {attempted} attempts "
                               f"(none succeeded); nothing written to {out}")
        seconds = time.perf_counter() - t0
        summary = {
            "env_id": spec.env_id, "env_kwargs": dict(spec.env_kwargs), "obs_type": spec.env_kwargs.get("obs_type"),
            "expert": spec.expert, "action_noise": spec.action_noise, "seed": seed, "control_hz": kept[0].control_hz, "n_requested": n_episodes,
            "n_attempted": attempted, "n_kept": len(kept), "n_successful": sum(e.success for e in kept),
            "keep_failed": keep_failed, "yield": len(kept) / attempted,
            "episode_seeds": [e.seed for e in kept], "episode_success": [e.success for e in kept],
            "episode_info": [e.info for e in kept] if spec.record_info else [],
            "collect_seconds": seconds, "workers": workers, "created_by": "diffpolicy-collect",
        }
        rb.update_attrs(**summary, **dict(attrs or {}))
    summary["path"] = str(Path(out).absolute())
    return summary


def spec_from_task(task: Mapping[str, Any]) -> RolloutSpec:
    """The rollout spec of a task config (``env_id``, ``env_kwargs``, optional ``expert``/``imports``/``record_info``/
    ``expert_action_noise``)."""
    return RolloutSpec(env_id=task["env_id"], env_kwargs=dict(task.get("env_kwargs") or {}),
                       expert=task.get("expert") or DEFAULT_EXPERT,
                       imports=tuple(task.get("imports") or DEFAULT_IMPORTS),
                       record_info=tuple(task.get("record_info") or ()),
                       action_noise=float(task.get("expert_action_noise") or 0.0),
                       wrappers=tuple(task.get("wrappers") or ()), success=task.get("success"),
                       name=str(task.get("name") or ""))


def collect_dataset(task: Mapping[str, Any], n_episodes: int, out: str, seed: int = 0, workers: int = 2,
                    keep_failed: bool = False, max_attempts: int | None = None, overwrite: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Collect ``n_episodes`` demos of ``task`` into ``out``; prints and returns the summary."""
    summary = collect(spec_from_task(task), n_episodes, out, seed=seed, workers=workers, keep_failed=keep_failed,
                      max_attempts=max_attempts, overwrite=overwrite, attrs={"task": task.get("name")},
                      progress=progress)
    print(f"kept {summary['n_kept']} of {summary['n_attempted']} episodes of {summary['env_id']} "
          f"(yield {summary['yield']:.1%}) in {summary['collect_seconds']:.1f} s "
          f"({60 * summary['n_kept'] / summary['collect_seconds']:.1f} demos/min, {workers} worker process(es))")
    if summary["n_kept"] < n_episodes:
        print(f"WARNING: only {summary['n_kept']} of the {n_episodes} requested episodes succeeded within "
              f"{summary['n_attempted']} attempts")
    print(f"wrote {summary['path']}")
    return summary
