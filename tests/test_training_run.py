"""diffpolicy-train fails fast: config and dataset are checked before a run directory is made or demos collected."""

import numpy as np
import pytest

from diffpolicy.data.errors import DatasetError
from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.training import run as train_run


def test_a_missing_dataset_that_is_not_the_default_is_an_error(tmp_path, train_config, monkeypatch):
    collected = []
    monkeypatch.setattr(train_run, "collect_dataset", lambda *a, **k: collected.append(a))
    cfg = train_config(tmp_path / "run", "unet_flow")
    cfg["task"].update(dataset=str(tmp_path / "data/two_pth.zarr"), default_dataset=str(tmp_path / "data/two_path.zarr"))
    with pytest.raises(FileNotFoundError, match=r"two_pth.zarr of task 'two_path' does not exist \(only the task's "
                                                r"own default dataset .*two_path.zarr\) is collected when missing\)"):
        train_run.run(cfg)
    assert not collected and not (tmp_path / "run").exists()
    cfg["task"]["dataset"] = cfg["task"]["default_dataset"]  # the built-in default: collected
    with pytest.raises(Exception):  # the monkeypatched collection wrote nothing, so opening it fails next
        train_run.run(cfg)
    assert len(collected) == 1 and not (tmp_path / "run").exists()


def test_config_errors_come_before_the_data(tmp_path, train_config):
    cfg = train_config(tmp_path / "run", "unet_flow")
    cfg["task"]["dataset"] = str(tmp_path / "nowhere.zarr")  # would fail later: the config error must come first
    cfg["policy"]["sampler"] = "eulr"
    with pytest.raises(ValueError, match="unknown sampler 'eulr'"):
        train_run.run(cfg)
    cfg["policy"]["sampler"] = "euler"
    cfg["task"]["success"] = {"info_key": "done", "termination": True}
    with pytest.raises(Exception, match="success must be exactly one of"):
        train_run.run(cfg)
    assert not (tmp_path / "run").exists()


def test_episodes_shorter_than_a_window_are_named_before_training(tmp_path, train_config):
    rng = np.random.default_rng(0)
    buf = ReplayBuffer.create(tmp_path / "short.zarr")
    for length in (30, 3, 25, 2):
        buf.append_episode({"state": rng.normal(size=(length, 4)).astype(np.float32),
                            "action": rng.normal(size=(length, 2)).astype(np.float32)})
    cfg = train_config(tmp_path / "run", "unet_flow")  # horizon 16, 2 observations, 8 actions: 16 - 1 - 7 = 8 steps
    cfg["task"]["dataset"] = str(tmp_path / "short.zarr")
    with pytest.raises(DatasetError, match=r"2 of 4 episodes are shorter than the 8 steps a training window needs "
                                           r"\(horizon 16, n_obs_steps 2, n_action_steps 8.*episodes 1 \(3 steps\), "
                                           r"3 \(2 steps\)"):
        train_run.run(cfg)
    assert not (tmp_path / "run").exists()


def test_resume_takes_the_runs_own_config(tmp_path, train_config):
    cfg = train_config(tmp_path / "run", "unet_flow")
    cfg["training"].update(steps=6, checkpoint_every=3)
    cfg["training"]["eval"] = {"n_episodes": 1, "n_envs": 1, "video_episodes": 0}
    train_run.run(cfg)
    with pytest.raises(FileExistsError, match="is not empty: continue that run with resume=true"):
        train_run.run(cfg)
    other = train_config(tmp_path / "run", "mlp_bc")  # the composed defaults of another command line
    other["resume"] = True
    with pytest.raises(ValueError, match=r"the override 'policy.horizon=8' would change that run"):
        train_run.run(other, overrides=["resume=true", f"run_dir={tmp_path / 'run'}", "policy.horizon=8"])
    train_run.run(other, overrides=["resume=true", f"run_dir={tmp_path / 'run'}", "training.steps=9"])
    saved = __import__("yaml").safe_load((tmp_path / "run/config.yaml").read_text())
    assert saved["policy"]["name"] == "unet_flow" and saved["training"]["steps"] == 9
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "step_00000009"
    with pytest.raises(FileNotFoundError, match=r"resume=true: run directory .*nowhere does not exist"):
        train_run.run({"resume": True, "run_dir": str(tmp_path / "nowhere")})


def test_a_dataset_over_the_memory_budget_trains_from_chunk_local_batches(tmp_path, train_config, capsys):
    cfg = train_config(tmp_path / "run", "unet_flow")
    cfg["training"].update(steps=4, checkpoint_every=4, memory_budget_mib=0, cache_mib=1)
    cfg["training"]["eval"] = {"n_episodes": 1, "n_envs": 1, "video_episodes": 0}
    train_run.run(cfg)
    out = capsys.readouterr().out
    assert "read through a chunk cache (over training.memory_budget_mib); each batch is drawn from" in out
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "step_00000004"
    bad = train_config(tmp_path / "bad", "unet_flow")
    bad["training"]["chunk_local"] = "sometimes"
    with pytest.raises(ValueError, match="training.chunk_local must be auto, true or false; got 'sometimes'"):
        train_run.run(bad)
