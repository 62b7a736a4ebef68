"""diffpolicy-train: from a zarr demo dataset to a trained, evaluated policy (:mod:`diffpolicy.training.run`).

    diffpolicy-train task=pusht policy=unet_ddpm training=cpu
    diffpolicy-train resume=true run_dir=runs/pusht/unet_ddpm_...   # continue an interrupted run
    diffpolicy-train training=reflow reflow.teacher=runs/pusht/unet_flow_h8_...  # straighten a flow policy
    diffpolicy-train task=path/to/my_task.yaml task.env_kwargs.frame_skip=2     # a task file of yours

Config and dataset are checked first; a built-in task's own default dataset is collected with its scripted expert
when missing (any other missing dataset is an error). Outputs (checkpoints,
tensorboard logs, evaluation JSON, videos, summary PNG) go to ``run_dir``, printed at start and end. The process
opts in to :func:`diffpolicy.accel.tune_process`; ``accel=false`` trains the plain modules.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from ..accel import tune_process
from ..training.run import run
from .task_args import task_args


@hydra.main(config_path="pkg://diffpolicy.configs", config_name="train", version_base=None)
def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run(OmegaConf.to_container(cfg, resolve=True), overrides=list(HydraConfig.get().overrides.task))


def main() -> None:
    sys.argv[1:] = task_args(sys.argv[1:])  # task=/path/to/my_task.yaml, task.env_kwargs.<new key>=...
    tune_process()  # before any tensor work: MKL reads its mode at its first call
    _main()


if __name__ == "__main__":
    main()
