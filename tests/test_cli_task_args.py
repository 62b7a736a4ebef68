"""A task file outside the package and new env kwargs on the command line."""

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from diffpolicy.cli.task_args import task_args

MY_TASK = """name: my_task
env_id: MountainCarContinuous-v0
env_kwargs: {}
dataset: /data/my_demos.zarr
obs_keys: [state]
success: {termination: true}
"""


def compose_train(argv):
    with initialize_config_module("diffpolicy.configs", version_base=None):
        return OmegaConf.to_container(compose("train", overrides=task_args(argv)), resolve=True)


def test_task_file_by_path_and_new_env_kwargs(tmp_path):
    path = tmp_path / "my_task.yaml"
    path.write_text(MY_TASK)
    cfg = compose_train([f"task={path}", "task.env_kwargs.goal_velocity=0.1", "training=smoke"])
    assert cfg["task"]["name"] == "my_task" and cfg["task"]["success"] == {"termination": True}
    assert cfg["task"]["env_kwargs"] == {"goal_velocity": 0.1}
    built_in = compose_train(["task=two_path", "task.env_kwargs.max_steps=50"])  # a key two_path.yaml lacks
    assert built_in["task"]["env_kwargs"] == {"obs_type": "dict", "max_steps": 50}


def test_other_arguments_pass_unchanged():
    assert task_args(["task=pusht", "training.steps=10", "+x=1"]) == ["task=pusht", "training.steps=10", "+x=1"]
