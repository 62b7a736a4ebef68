"""``diffpolicy-collect``: scripted-expert demonstrations of a task into a zarr dataset.

    diffpolicy-collect task=pusht n_episodes=200 out=data/pusht.zarr workers=2
    diffpolicy-collect task=two_path overwrite=true

Config: ``configs/collect.yaml`` + ``configs/task/<task>.yaml`` (read from the installed package). Keeps successful
episodes only unless ``keep_failed=true``; prints the yield and where it wrote.
"""

from __future__ import annotations

from typing import Any, Mapping

import hydra
from omegaconf import DictConfig, OmegaConf

from diffpolicy.data.collect import DEFAULT_EXPERT, DEFAULT_IMPORTS, RolloutSpec, collect


def spec_from_task(task: Mapping[str, Any]) -> RolloutSpec:
    """The rollout spec of a task config (``env_id``, ``env_kwargs``, optional ``expert``/``imports``/``record_info``/
    ``expert_action_noise``)."""
    return RolloutSpec(env_id=task["env_id"], env_kwargs=dict(task.get("env_kwargs") or {}),
                       expert=task.get("expert") or DEFAULT_EXPERT,
                       imports=tuple(task.get("imports") or DEFAULT_IMPORTS),
                       record_info=tuple(task.get("record_info") or ()),
                       action_noise=float(task.get("expert_action_noise") or 0.0))


def collect_dataset(task: Mapping[str, Any], n_episodes: int, out: str, seed: int = 0, workers: int = 2,
                    keep_failed: bool = False, max_attempts: int | None = None, overwrite: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Collect ``n_episodes`` demos of ``task`` into ``out``; prints and returns the summary."""
    if isinstance(task, DictConfig):
        task = OmegaConf.to_container(task, resolve=True)
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


@hydra.main(config_path="pkg://diffpolicy.configs", config_name="collect", version_base=None)
def _main(cfg: DictConfig) -> None:
    collect_dataset(cfg.task, n_episodes=cfg.n_episodes, out=cfg.out, seed=cfg.seed, workers=cfg.workers,
                    keep_failed=cfg.keep_failed, max_attempts=cfg.max_attempts, overwrite=cfg.overwrite)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
