"""diffpolicy-collect on a tiny fake task (registered below, importable by spawned workers) and on TwoPath."""

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from diffpolicy.data.collect import collect_dataset
from diffpolicy.data.errors import DatasetError
from diffpolicy.data.replay_buffer import ReplayBuffer

FAKE_ID = "diffpolicy_test/FakeReach-v0"


class FakeReachEnv(gym.Env):
    """A point on a line walks to a target; the state is (x, target). 8x8 image whose column x/10 is lit."""

    control_hz = 7

    def __init__(self, obs_type="dict", img_size=8):
        self.obs_type, self.img_size = obs_type, img_size
        low = np.array([-10, -10], np.float32)
        parts = {"state": spaces.Box(low, -low, dtype=np.float32)}
        if obs_type == "pixels":
            parts["img"] = spaces.Box(0, 255, (img_size, img_size, 3), np.uint8)
        self.observation_space = spaces.Dict(parts)
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)

    def _obs(self):
        obs = {"state": np.array([self.x, self.target], np.float32)}
        if self.obs_type == "pixels":
            img = np.zeros((self.img_size, self.img_size, 3), np.uint8)
            img[:, int(np.clip(self.x + 4, 0, 7))] = 255
            obs["img"] = img
        return obs

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.target = 0.0, float(self.np_random.uniform(2, 4))
        return self._obs(), {"is_success": False}

    def step(self, action):
        self.x += float(np.clip(action[0], -1, 1))
        success = abs(self.x - self.target) < 0.3
        return self._obs(), float(success), success, False, {"is_success": success, "side": "right"}


class FakeExpert:
    """Walks to the target with seeded noise; episodes whose seed is a multiple of 3 walk away (failures)."""

    def __init__(self, env, seed):
        self.env, self.rng, self.away = env.unwrapped, np.random.default_rng(seed), seed % 3 == 0

    def reset(self):
        self.noise = self.rng.uniform(0.0, 0.05)

    def act(self, obs):
        x, target = obs["state"]
        step = -1.0 if self.away else np.clip(target - x, -0.5, 0.5) + self.noise
        return np.array([step], np.float32)


def make_fake_expert(env_id, env, seed):
    return FakeExpert(env, seed)


def make_crashing_expert(env_id, env, seed):
    if seed == 4:
        raise RuntimeError("expert crashed on purpose")
    return FakeExpert(env, seed)


if FAKE_ID not in gym.registry:
    gym.register(FAKE_ID, entry_point=FakeReachEnv, max_episode_steps=12)

TASK = {"name": "fake", "env_id": FAKE_ID, "env_kwargs": {"obs_type": "pixels"}, "imports": [__name__],
        "expert": f"{__name__}:make_fake_expert", "record_info": ["side"]}


def test_collects_successful_episodes_with_obs_before_action(tmp_path, capsys):
    out = tmp_path / "fake.zarr"
    summary = collect_dataset(TASK, n_episodes=5, out=str(out), seed=0, workers=1, progress=False)
    assert f"wrote {out}" in capsys.readouterr().out
    rb = ReplayBuffer.open(out)
    assert rb.keys == ["action", "img", "state"] and rb.n_episodes == 5
    assert rb.dtypes["img"] == np.uint8 and rb.dtypes["action"] == np.float32
    # seeds 0, 3, 6 fail (expert walks away until the 12-step limit) and are dropped
    assert rb.attrs["episode_seeds"] == [1, 2, 4, 5, 7]
    assert (summary["n_attempted"], summary["n_kept"]) == (8, 5) and summary["yield"] == pytest.approx(5 / 8)
    a = rb.attrs
    assert (a["env_id"], a["control_hz"], a["obs_type"], a["seed"], a["task"]) == (FAKE_ID, 7.0, "pixels", 0, "fake")
    assert a["expert"].endswith("make_fake_expert") and a["episode_info"][0] == {"side": "right"}
    for i in range(rb.n_episodes):
        ep = rb.get_episode(i)
        x, act = ep["state"][:, 0], ep["action"][:, 0]
        assert x[0] == 0.0  # first row is the reset observation
        np.testing.assert_allclose(x[1:], x[:-1] + act[:-1], rtol=1e-5, atol=1e-5)  # obs t, then action t
        assert abs(x[-1] + act[-1] - ep["state"][0, 1]) < 0.3  # the last action reaches the target
        np.testing.assert_array_equal(ep["img"][:, 0, :, 0].argmax(1), np.clip(x + 4, 0, 7).astype(int))


def test_worker_count_does_not_change_the_dataset(tmp_path):
    one = collect_dataset(TASK, n_episodes=6, out=str(tmp_path / "one.zarr"), seed=10, workers=1, progress=False)
    two = collect_dataset(TASK, n_episodes=6, out=str(tmp_path / "two.zarr"), seed=10, workers=2, progress=False)
    a, b = ReplayBuffer.open(one["path"]), ReplayBuffer.open(two["path"])
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    for key in a.keys:
        np.testing.assert_array_equal(a.array(key)[:], b.array(key)[:])
    assert a.attrs["episode_seeds"] == b.attrs["episode_seeds"]


def test_action_noise_perturbs_execution_and_records_the_clean_action(tmp_path):
    noisy = {**TASK, "expert_action_noise": 0.1}
    a = collect_dataset(noisy, n_episodes=4, out=str(tmp_path / "a.zarr"), seed=1, workers=1, progress=False)
    b = collect_dataset(noisy, n_episodes=4, out=str(tmp_path / "b.zarr"), seed=1, workers=2, progress=False)
    ra, rb = ReplayBuffer.open(a["path"]), ReplayBuffer.open(b["path"])
    np.testing.assert_array_equal(ra.array("state")[:], rb.array("state")[:])  # seeded: same demos
    assert ra.attrs["action_noise"] == 0.1
    executed_minus_recorded = []
    for i in range(ra.n_episodes):
        ep = ra.get_episode(i)
        x, act = ep["state"][:, 0], ep["action"][:, 0]
        # labels are the expert's clean actions for the states it saw (its clipped step + its per-episode offset)
        offset = act - np.clip(ep["state"][:, 1] - x, -0.5, 0.5)
        assert np.ptp(offset) < 1e-5
        executed_minus_recorded.append(np.diff(x) - act[:-1])
    d = np.concatenate(executed_minus_recorded)
    assert 0.03 < d.std() < 0.3 and abs(d.mean()) < 0.1


def test_keep_failed_and_overwrite(tmp_path):
    out = tmp_path / "all.zarr.zip"
    s = collect_dataset(TASK, n_episodes=4, out=str(out), keep_failed=True, workers=1, progress=False)
    rb = ReplayBuffer.open(out)
    assert rb.attrs["episode_success"] == [False, True, True, False] and s["n_attempted"] == 4
    with pytest.raises(DatasetError, match="already exists"):
        collect_dataset(TASK, n_episodes=2, out=str(out), workers=1, progress=False)
    assert ReplayBuffer.open(out).n_episodes == 4
    collect_dataset(TASK, n_episodes=2, out=str(out), workers=1, overwrite=True, progress=False)
    assert ReplayBuffer.open(out).n_episodes == 2


def test_parallel_collection_stops_cleanly_with_large_episodes_in_flight(tmp_path):
    """Enough episodes kept while workers still hold ~9 MB pixel episodes (512x512 frames): the collection ends, the
    in-flight episodes finishing and the queued ones cancelled (a subprocess, so a hang fails by its timeout)."""
    code = (f"from {__name__} import TASK\n"
            "from diffpolicy.data.collect import collect_dataset\n"
            "task = {**TASK, 'env_kwargs': {'obs_type': 'pixels', 'img_size': 512}}\n"
            f"collect_dataset(task, n_episodes=2, out={str(tmp_path / 'big.zarr')!r}, workers=2, max_attempts=40, "
            "progress=False)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ReplayBuffer.open(tmp_path / "big.zarr").n_episodes == 2


def test_interrupted_collection_leaves_nothing(tmp_path):
    task = {**TASK, "expert": f"{__name__}:make_crashing_expert"}
    with pytest.raises(RuntimeError, match="crashed on purpose"):
        collect_dataset(task, n_episodes=5, out=str(tmp_path / "x.zarr"), workers=2, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a temporary store remains


def test_cli_with_hydra_overrides(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "diffpolicy.cli.collect", "task=two_path", f"task.env_id={FAKE_ID}",
           "task.env_kwargs.obs_type=dict", f"+task.imports=[{__name__}]", f"+task.expert={__name__}:make_fake_expert",
           "task.record_info=[]", "n_episodes=3", "out=demo.zarr", "workers=1", "seed=1"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'demo.zarr'}" in done.stdout and "kept 3 of 4" in done.stdout  # seed 3 fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.zarr"]  # no hydra outputs/ or logs
    assert ReplayBuffer.open(tmp_path / "demo.zarr").attrs["task"] == "two_path"
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "already exists" in again.stderr


def test_real_two_path_task(tmp_path):
    pytest.importorskip("diffpolicy.envs.two_path")
    import yaml
    from importlib import resources

    task = yaml.safe_load(resources.files("diffpolicy.configs").joinpath("task", "two_path.yaml").read_text())
    s = collect_dataset(task, n_episodes=2, out=str(tmp_path / "tp.zarr"), workers=1, progress=False)
    rb = ReplayBuffer.open(s["path"])
    assert {"state", "action"} <= set(rb.keys) and rb.attrs["control_hz"] == 10.0
    assert {i["solution"] for i in rb.attrs["episode_info"]} <= {"left", "right"}


def test_pusht_tasks_collect_with_the_same_expert():
    # The image task's demos were once collected without the state task's DART noise (a much weaker dataset).
    import yaml
    from importlib.resources import files

    tasks = {name: yaml.safe_load((files("diffpolicy.configs") / "task" / f"{name}.yaml").read_text())
             for name in ("pusht", "pusht_image")}
    assert tasks["pusht"]["expert_action_noise"] > 0
    assert tasks["pusht_image"].get("expert_action_noise") == tasks["pusht"]["expert_action_noise"]
