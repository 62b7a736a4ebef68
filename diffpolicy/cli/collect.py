"""``diffpolicy-collect``: scripted-expert demonstrations of a task into a zarr dataset.

    diffpolicy-collect task=pusht n_episodes=200 out=data/pusht.zarr workers=2
    diffpolicy-collect task=two_path overwrite=true

Config: ``configs/collect.yaml`` + ``configs/task/<task>.yaml`` (read from the installed package). Keeps successful
episodes only unless ``keep_failed=true``; prints the yield and where it wrote.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from diffpolicy.accel import tune_process
from diffpolicy.cli.task_args import task_args
from diffpolicy.data.collect import collect_dataset


@hydra.main(config_path="pkg://diffpolicy.configs", config_name="collect", version_base=None)
def _main(cfg: DictConfig) -> None:
    collect_dataset(OmegaConf.to_container(cfg.task, resolve=True), n_episodes=cfg.n_episodes, out=cfg.out,
                    seed=cfg.seed, workers=cfg.workers, keep_failed=cfg.keep_failed, max_attempts=cfg.max_attempts,
                    overwrite=cfg.overwrite)


def main() -> None:
    sys.argv[1:] = task_args(sys.argv[1:])  # task=/path/to/my_task.yaml, task.env_kwargs.<new key>=...
    tune_process()  # before any tensor work: MKL reads its mode at its first call
    _main()


if __name__ == "__main__":
    main()
