"""On-policy couplings (DAgger, Ross et al. 2011) for one-step distillation: the teacher labels the states the
student itself visits.

A student trained only on the demonstrations' observation windows is accurate there and less so where its own small
errors take it: in closed loop those errors compound, and the states it reaches drift from the data. One round rolls
the current student out in the task over seeded episodes, records the observation window of every chunk it planned,
and draws the teacher's samples for them (the same noise -> sample couplings as for the demonstrations); the student
then trains on the union, so its one-step map is fitted where it actually goes.

The pairs live in memory, as reflow's do: ``copies`` observation windows per visited window (small for state
observations; for cameras, ``copies x windows`` image stacks per round).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from ..eval.rollout import evaluate
from ..policy.checkpoint import load_train_state, resolve_checkpoint, save_checkpoint, write_atomically
from ..policy.diffusion import DiffusionPolicy
from ..policy.sampling import SamplingPlan
from .loop import TrainConfig, distributed_context, train
from .reflow import CouplingBatches, merge_couplings, teacher_pairs


class RecordingPolicy:
    """A policy that records the observation window ``{key: (B, To, ...)}`` of every ``predict_action`` call (on
    the CPU, in call order) and otherwise is the wrapped policy."""

    def __init__(self, policy):
        self.policy, self.windows = policy, []

    def __getattr__(self, name: str):
        return getattr(self.policy, name)

    def predict_action(self, obs: Mapping[str, torch.Tensor], **kwargs) -> dict:
        self.windows.append({k: v.detach().cpu().clone() for k, v in obs.items()})
        return self.policy.predict_action(obs, **kwargs)


@torch.inference_mode()
def visited_couplings(student, teacher: DiffusionPolicy, task: Mapping[str, Any], plan: SamplingPlan,
                      episodes: int, copies: int = 8, seed: int = 200_000, n_envs: int = 10, batch_size: int = 512,
                      device: torch.device | str = "cpu") -> tuple[dict, dict]:
    """Roll ``student`` out for ``episodes`` episodes of ``task`` (episode ``i`` seeded ``seed + i``; keep these
    seeds apart from the evaluation's), and couple each observation window it planned from, ``copies`` times, with
    the teacher's ``plan`` sample from fresh noise (seeded by ``seed``).

    Returns ``(couplings, summary)``: the couplings' layout of :func:`~diffpolicy.training.reflow.make_couplings`
    (``copies x windows`` pairs, on the CPU) and the rollouts' evaluation summary.
    """
    if copies < 1 or episodes < 1:
        raise ValueError(f"on-policy couplings need episodes >= 1 and copies >= 1, got {episodes} and {copies}")
    recorder = RecordingPolicy(student)
    summary = evaluate(recorder, task, n_episodes=episodes, seed=seed, n_envs=n_envs, device=device)
    windows = {k: torch.cat([w[k] for w in recorder.windows]) for k in recorder.windows[0]}
    windows = {k: v.repeat(copies, *(1,) * (v.ndim - 1)) for k, v in windows.items()}
    n = len(next(iter(windows.values())))
    g = torch.Generator().manual_seed(seed)
    pieces = [teacher_pairs(teacher, {k: v[i: i + batch_size] for k, v in windows.items()}, plan, g, device)
              for i in range(0, n, batch_size)]
    return merge_couplings(*pieces), summary


def _save_couplings(path: Path, couplings: Mapping) -> None:
    flat = {f"obs.{k}": v.contiguous() for k, v in couplings["obs"].items()}
    flat.update(action=couplings["action"].contiguous(), noise=couplings["noise"].contiguous())
    write_atomically(path, lambda tmp: save_file(flat, tmp))


def _load_couplings(path: Path) -> dict:
    flat = load_file(path)
    return {"obs": {k[4:]: v for k, v in flat.items() if k.startswith("obs.")}, "action": flat["action"],
            "noise": flat["noise"]}


def onpolicy_rounds(policy, ema, teacher: DiffusionPolicy, couplings: Mapping, task: Mapping[str, Any],
                    plan: SamplingPlan, rounds: int, steps: int, episodes: int, copies: int, cfg: TrainConfig,
                    run_dir: str | Path, config: Mapping[str, Any], resume: bool = False,
                    device: torch.device | str = "cpu"):
    """``rounds`` DAgger rounds after a first fit (``ema``: its EMA) on the demonstrations' ``couplings``.

    Round ``r`` rolls out the current EMA student (:func:`visited_couplings`, ``episodes`` episodes seeded
    ``200000 + 1000 r``, apart from the evaluation's), adds the teacher's ``copies`` samples per visited window to
    the pairs, and trains ``policy`` from the EMA weights for ``steps`` steps on all pairs so far (a fresh warm-up and
    cosine schedule) in ``run_dir/onpolicy/round_<r>``; its visited pairs are kept there (``visited.safetensors``),
    so a resumed run repeats no rollout. The final student is published as ``run_dir``'s latest checkpoint and each
    round's rollout success is appended to ``run_dir/onpolicy.jsonl``. Returns the final EMA.
    """
    if distributed_context()[1] > 1:
        raise ValueError("on-policy distillation rounds (distill.onpolicy_rounds) run in a single process")
    run_dir, pairs = Path(run_dir), couplings
    for r in range(1, rounds + 1):
        round_dir = run_dir / "onpolicy" / f"round_{r}"
        round_dir.mkdir(parents=True, exist_ok=True)
        stored = round_dir / "visited.safetensors"
        if stored.is_file():
            visited = _load_couplings(stored)
        else:
            visited, summary = visited_couplings(ema.model.eval(), teacher, task, plan, episodes, copies,
                                                 seed=200_000 + 1000 * r, device=device)
            _save_couplings(stored, visited)
            row = {"round": r, "rollout_success": summary["success_rate"], "episodes": episodes,
                   "visited_pairs": len(visited["action"]), "pairs": len(pairs["action"]) + len(visited["action"])}
            with open(run_dir / "onpolicy.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"on-policy round {r}: the student succeeded in {summary['success_rate']:.2f} of {episodes} "
                  f"rollouts; {row['visited_pairs']} teacher pairs on the states it visited")
        pairs = merge_couplings(pairs, visited)
        policy.load_state_dict(ema.model.state_dict())
        ema = train(policy, CouplingBatches(pairs, cfg.batch_size, cfg.seed + r, device), replace(cfg, steps=steps),
                    round_dir, config, resume=resume, device=torch.device(device))
    # the run's total step count in its train state: resuming the finished run trains nothing in the first fit
    total = cfg.steps + rounds * steps
    save_checkpoint(run_dir / "checkpoints", total, {"model": policy.state_dict(), "ema": ema.model.state_dict()},
                    config, {**load_train_state(resolve_checkpoint(round_dir)), "step": total},
                    keep=cfg.keep_checkpoints)
    return ema
