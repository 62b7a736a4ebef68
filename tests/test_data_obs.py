"""The observation spec: one implementation for dataset arrays, evaluation and the controller."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from diffpolicy.data.dataset import WindowDataset
from diffpolicy.data.errors import DatasetError
from diffpolicy.data.obs import ObsAdapter, ObsSpec
from diffpolicy.data.replay_buffer import ReplayBuffer

SPEC = {"pos": {"key": "state", "slice": [0, 2], "scale": 2.0, "offset": 1.0},
        "angle": [{"key": "state", "index": 2, "angle": True}, {"key": "goal", "index": [1, 0]}],
        "cam": "pixels"}


def raw_record(n=None, seed=0):
    rng = np.random.default_rng(seed)
    lead = () if n is None else (n,)
    return {"state": rng.uniform(-3, 3, (*lead, 3)).astype(np.float32),
            "goal": rng.uniform(-1, 1, (*lead, 2)).astype(np.float32),
            "pixels": rng.integers(0, 255, (*lead, 8, 8, 3), dtype=np.uint8)}


def expected(raw):
    s, g = raw["state"], raw["goal"]
    return {"pos": s[..., :2] * 2 + 1,
            "angle": np.concatenate([np.sin(s[..., 2:3]), np.cos(s[..., 2:3]), g[..., [1, 0]]], axis=-1),
            "cam": raw["pixels"]}


def test_spec_applies_the_same_to_a_step_and_to_arrays():
    spec = ObsSpec(["pos", "angle", "cam", "goal"], SPEC)
    assert spec.raw_keys == ["state", "goal", "pixels"] and spec.renamed("cam") == "pixels"
    assert spec.renamed("goal") == "goal" and spec.renamed("pos") is None
    assert spec.shapes({"state": (3,), "goal": (2,), "pixels": (8, 8, 3)}, "x") == \
        {"pos": (2,), "angle": (4,), "cam": (8, 8, 3), "goal": (2,)}
    arrays, step = raw_record(5), {k: v[3] for k, v in raw_record(5).items()}
    for raw in (arrays, step):
        out = spec.apply(raw)
        for k, v in expected(raw).items():
            np.testing.assert_allclose(out[k], v, rtol=1e-6)
    assert spec.apply(arrays)["cam"] is arrays["pixels"]  # renames pass arrays through, no copy


@pytest.mark.parametrize("spec,shapes,match", [
    ({"a": {"key": "state", "index": 3}}, {"state": (3,)}, r"'a': 'state' of env Foo-v0: index \[3\] out of range"),
    ({"a": {"key": "missing"}}, {"state": (3,)}, r"'a' needs \['missing'\], which env Foo-v0 does not have"),
    ({"a": {"key": "pixels", "scale": 2}}, {"pixels": (8, 8, 3)}, "an image can only be renamed"),
    ({"a": [{"key": "state"}, {"key": "pixels"}]}, {"state": (3,), "pixels": (8, 8, 3)}, "apply to vectors"),
    ({"a": {"key": "state", "slice": [5, 9]}}, {"state": (3,)}, r"slice \[5, 9\] selects nothing"),
])
def test_spec_mismatches_name_the_key_and_the_source(spec, shapes, match):
    with pytest.raises(ValueError, match=match):
        ObsSpec(["a"], spec).shapes(shapes, "env Foo-v0")


def test_malformed_spec_entries_are_refused():
    with pytest.raises(ValueError, match=r"entries \['b'\] that are not in obs_keys \['a'\]"):
        ObsSpec(["a"], {"b": "x"})
    with pytest.raises(ValueError, match="obs_spec.a: each part is a raw key name or a mapping with 'key'"):
        ObsSpec(["a"], {"a": {"key": "x", "indices": [0]}})
    with pytest.raises(ValueError, match="has both index and slice"):
        ObsSpec(["a"], {"a": {"key": "x", "index": 0, "slice": [0, 1]}})


def test_adapter_flattens_box_and_nested_dict_observations():
    spec = ObsSpec(["pos", "grip"], {"pos": {"key": "state", "slice": [0, 2]}, "grip": "robot/gripper"})
    adapter = ObsAdapter(spec, [], None, source="env Foo-v0")
    out = adapter.step_obs({"state": np.arange(4.0), "robot": {"gripper": np.array([0.5])}})
    assert out["pos"].tolist() == [0.0, 1.0] and out["grip"].dtype == torch.float32
    box = ObsAdapter(ObsSpec(["state"]), [], None).step_obs(np.arange(3.0))  # a Box observation is "state"
    assert box["state"].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(KeyError, match=r"the observation of env Foo-v0 has no \['robot/gripper'\]"):
        adapter.step_obs({"state": np.arange(4.0)})


def test_dataset_with_raw_angles_trains_on_sin_cos(tmp_path):
    # a store recorded with the raw angle; the spec turns it into (sin, cos) for the windows and the statistics
    rng = np.random.default_rng(0)
    buf = ReplayBuffer.create(tmp_path / "angles.zarr")
    for length in (12, 9):
        buf.append_episode({"state": rng.uniform(-3, 3, (length, 3)).astype(np.float32),
                            "action": rng.normal(size=(length, 2)).astype(np.float32)})
    spec = {"pose": [{"key": "state", "slice": [0, 2]}, {"key": "state", "index": 2, "angle": True}]}
    data = WindowDataset(tmp_path / "angles.zarr", ["pose"], horizon=4, n_obs_steps=2, n_action_steps=2,
                         obs_spec=spec)
    raw = buf.get_episode(0)["state"]
    want = np.concatenate([raw[:, :2], np.sin(raw[:, 2:]), np.cos(raw[:, 2:])], axis=1)
    batch = data.sample_batch([1])  # window 1 of episode 0: observations at steps 0, 1
    np.testing.assert_allclose(batch["obs"]["pose"][0].numpy(), want[0:2], rtol=1e-6)
    stats = data.compute_stats()
    assert stats["pose"]["max"][2:].max() <= 1 and stats["pose"]["min"][2:].min() >= -1
    with pytest.raises(DatasetError, match=r"angles.zarr: data/goal: not in the store; it has \['data/action'"):
        WindowDataset(tmp_path / "angles.zarr", ["pose"], horizon=4, obs_spec={"pose": "goal"})


def test_box_env_policy_from_checkpoint_needs_nothing_else(tmp_path, train_config):
    # Train on TwoPath's dict observations through a spec (two renamed/sliced keys), then run the controller and the
    # evaluation on the env's *Box* observation ("state" of obs_type=state), with only the checkpoint.
    from diffpolicy.cli import eval as eval_cli
    from diffpolicy.control.controller import Controller
    from diffpolicy.training import run as train_run

    cfg = train_config(tmp_path / "run", "unet_flow")
    cfg["task"].update(obs_keys=["pos", "rest"], obs_spec={"pos": {"key": "state", "slice": [0, 2]},
                                                           "rest": {"key": "state", "slice": [2, 4], "scale": 0.5}})
    cfg["training"]["steps"] = 4
    cfg["training"]["eval"] = {"n_episodes": 1, "n_envs": 1, "video_episodes": 0}
    train_run.run(cfg)
    ctrl = Controller.from_checkpoint(tmp_path / "run", device="cpu")
    env = gym.make("diffpolicy/TwoPath-v0", obs_type="state")
    obs, _ = env.reset(seed=0)
    assert ctrl.act(obs).shape == (2,)
    summary = eval_cli.run({"checkpoint": str(tmp_path / "run"), "n_episodes": 2, "n_envs": 2, "seed": 5,
                            "video_episodes": 0, "out": str(tmp_path / "ev")})
    assert summary["n_episodes"] == 2 and summary["success_signal"] == "info['is_success']"


def test_env_observations_are_checked_against_the_policy_before_the_first_episode():
    from types import SimpleNamespace

    from gymnasium import spaces

    from diffpolicy.eval.rollout import check_env_obs

    policy = SimpleNamespace(encoder=SimpleNamespace(shapes={"pos": (2,), "cam": (3, 6, 6)}, image_keys=["cam"]))
    task = {"env_id": "Foo-v0", "dataset": "data/foo.zarr", "crop_shape": [6, 6]}
    spec = ObsSpec(["pos", "cam"], {"pos": {"key": "state", "slice": [0, 2]}, "cam": "pixels"})

    def env(state=(4,), pixels=(8, 8, 3)):
        return SimpleNamespace(observation_space=spaces.Dict({
            "state": spaces.Box(-1, 1, state), "pixels": spaces.Box(0, 255, pixels, np.uint8)}))

    check_env_obs(spec, env(), task, policy)  # 8x8 frames cropped to 6x6: fine
    with pytest.raises(ValueError, match=r"'cam': env Foo-v0 gives shape \(8, 8, 1\), the policy was trained on "
                                         r"\(3, 6, 6\) \(dataset data/foo.zarr\)"):
        check_env_obs(spec, env(pixels=(8, 8, 1)), task, policy)
    with pytest.raises(ValueError, match=r"'pos': 'state' of env Foo-v0: slice \[0, 2\] selects nothing"):
        check_env_obs(spec, env(state=(0,)), task, policy)
    discrete = SimpleNamespace(observation_space=spaces.Dict({"state": spaces.Discrete(3)}))
    with pytest.raises(TypeError, match="Discrete"):
        check_env_obs(spec, discrete, task, policy)
