"""Policies from cameras: RGB, single-channel (depth / grayscale) and two-camera inputs build, learn, sample, save,
load, and run in ``diffpolicy-eval`` and the ``Controller``; a wrong channel count or image size names the key."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from diffpolicy.cli import eval as eval_cli
from diffpolicy.control.controller import Controller
from diffpolicy.core.normalize import Normalizer
from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.policy.factory import build_policy, load_policy
from diffpolicy.training import run as train_run

ENV_ID = "diffpolicy_tests/CameraDot-v0"
SIZE, CROP = 20, 16
VARIANTS = {"rgb": {"cameras": ["cam"], "channels": 3}, "gray": {"cameras": ["depth"], "channels": 1},
            "two_cams": {"cameras": ["front", "side"], "channels": 3}}


class CameraDotEnv(gym.Env):
    """A point in [-1, 1]^2 steered to the origin by velocity actions, seen by cameras as a bright square.

    Observations: ``pos`` (2,) and one ``(SIZE, SIZE, channels)`` uint8 image per camera (each camera maps the plane
    differently, so two cameras are two views). Success: within 0.15 of the origin."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, cameras=("cam",), channels=3, size=SIZE, render_mode=None):
        self.cameras, self.channels, self.size, self.render_mode = list(cameras), channels, size, render_mode
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = spaces.Dict({"pos": spaces.Box(-1.0, 1.0, (2,), np.float32), **{
            c: spaces.Box(0, 255, (size, size, channels), np.uint8) for c in self.cameras}})

    def _image(self, i):
        img = np.zeros((self.size, self.size, self.channels), np.uint8)
        p = self.pos * (1 if i == 0 else -0.8)  # the second camera looks from the other side, closer
        r, c = ((p + 1) / 2 * (self.size - 4)).astype(int)
        img[r:r + 4, c:c + 4] = 255 if self.channels == 1 else [255, 128 * i, 60][: self.channels]
        return img

    def _obs(self):
        return {"pos": self.pos.astype(np.float32), **{c: self._image(i) for i, c in enumerate(self.cameras)}}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = np.zeros(2)
        while np.linalg.norm(self.pos) < 0.6:  # at least ~7 steps from the goal
            self.pos = self.np_random.uniform(-0.9, 0.9, 2)
        return self._obs(), {"is_success": False}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.08 * np.clip(action, -1, 1), -1, 1)
        success = bool(np.linalg.norm(self.pos) < 0.15)
        return self._obs(), -float(np.linalg.norm(self.pos)), success, False, {"is_success": success}

    def render(self):
        return np.repeat(self._image(0), 3 // self.channels, axis=-1) if self.render_mode == "rgb_array" else None


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=CameraDotEnv, max_episode_steps=40)


def _expert(obs):
    return np.clip(-2.5 * obs["pos"], -1, 1).astype(np.float32)


def _episodes(variant, n=8):
    env = gym.make(ENV_ID, **VARIANTS[variant])
    episodes = []
    for ep in range(n):
        obs, _ = env.reset(seed=ep)
        rows, done = {k: [] for k in [*obs, "action"]}, False
        while not done:
            a = _expert(obs)
            for k, v in obs.items():
                rows[k].append(v)
            rows["action"].append(a)
            obs, _, term, trunc, _ = env.step(a)
            done = term or trunc
        episodes.append({k: np.stack(v) for k, v in rows.items()})
    return episodes


@pytest.fixture(scope="module")
def camera_datasets(tmp_path_factory):
    paths = {}
    for variant in VARIANTS:
        path = tmp_path_factory.mktemp("data") / f"{variant}.zarr"
        buf = ReplayBuffer.create(path, attrs={"env_id": ENV_ID})
        for ep in _episodes(variant):
            buf.append_episode(ep)
        paths[variant] = path
    return paths


def _config(variant, dataset, run_dir):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("diffpolicy.configs", version_base=None):
        cfg = compose("train", overrides=["~task", "policy=unet_flow_h8_conv", "training=smoke",
                                          f"run_dir={run_dir}"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    kw = VARIANTS[variant]
    cfg["task"] = {"name": f"camdot_{variant}", "env_id": ENV_ID, "env_kwargs": dict(kw), "dataset": str(dataset),
                   "obs_keys": ["pos", *kw["cameras"]], "action_key": "action", "crop_shape": [CROP, CROP],
                   "n_demos": 8}
    cfg["policy"]["unet"]["down_dims"] = [16, 32]
    cfg["policy"]["n_obs_steps"] = 2  # two frames through each camera's one backbone
    cfg["policy"]["encoder"].update(image_channels=[8, 16], image_strides=[2, 1], image_keypoints=8)
    cfg["training"]["eval"]["video_episodes"] = 0
    return cfg


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_image_policy_learns_from_its_cameras(variant):
    """A few optimiser steps on a fixed batch lower the loss, for every image layout (channel count, cameras)."""
    eps = _episodes(variant, n=4)
    kw = VARIANTS[variant]
    data = {k: np.concatenate([e[k] for e in eps]) for k in ("pos", "action")}
    norm = Normalizer.fit(data, {k: "minmax" for k in data})
    cfg = _config(variant, "unused", "unused")["policy"]
    shapes = {"pos": (2,), **{c: (kw["channels"], SIZE, SIZE) for c in kw["cameras"]}}
    torch.manual_seed(0)
    policy = build_policy(cfg, norm, shapes, kw["cameras"], 2)
    assert set(policy.encoder.cameras) == set(kw["cameras"])
    assert all(m.layers[0].in_channels == kw["channels"] for m in policy.encoder.cameras.values())
    rng = np.random.default_rng(0)
    ep = max(eps, key=lambda e: len(e["pos"]))
    idx = rng.integers(0, len(ep["pos"]) - policy.horizon, 16)
    obs = {k: torch.as_tensor(np.stack([ep[k][i:i + 2] for i in idx])) for k in shapes}
    for c in kw["cameras"]:
        obs[c] = obs[c].movedim(-1, -3).float() / 255
    batch = {"obs": obs, "action": torch.as_tensor(np.stack([ep["action"][i:i + policy.horizon] for i in idx]))}

    def loss():
        with torch.no_grad():
            return float(policy(batch, torch.Generator().manual_seed(1)))

    before = loss()
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for step in range(40):
        opt.zero_grad()
        policy(batch, torch.Generator().manual_seed(100 + step)).backward()
        opt.step()
    after = loss()
    assert after < 0.6 * before, (before, after)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_image_policy_trains_saves_loads_and_runs_in_eval_and_controller(camera_datasets, tmp_path, variant):
    kw = VARIANTS[variant]
    cfg = _config(variant, camera_datasets[variant], tmp_path / "run")
    summary = train_run.run(cfg)
    assert summary["n_episodes"] == 2
    policy, config = load_policy(tmp_path / "run")
    assert config["task"]["image_keys"] == sorted(kw["cameras"])
    assert {k: tuple(v) for k, v in config["shapes"]["obs"].items()} == {
        "pos": (2,), **{c: (kw["channels"], CROP, CROP) for c in kw["cameras"]}}
    obs = {"pos": torch.zeros(3, 2, 2), **{c: torch.rand(3, 2, kw["channels"], CROP, CROP) for c in kw["cameras"]}}
    out = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert out["action"].shape == (3, 2, 2) and torch.isfinite(out["action"]).all()

    res = eval_cli.run({"checkpoint": str(tmp_path / "run"), "n_episodes": 2, "n_envs": 2, "seed": 3,
                        "video_episodes": 0, "out": str(tmp_path / "ev")})
    assert res["n_episodes"] == 2 and all(e["length"] > 0 for e in res["episodes"])

    ctrl = Controller.from_checkpoint(tmp_path / "run", device="cpu")
    env = gym.make(ENV_ID, **kw)
    o, _ = env.reset(seed=0)
    ctrl.reset(seed=0)
    try:
        for _ in range(5):
            a = ctrl.act(o)
            assert a.shape == (2,) and np.isfinite(a).all()
            o, *_ = env.step(a)
        wrong = dict(o)
        cam = kw["cameras"][0]
        wrong[cam] = np.zeros((SIZE - 6, SIZE - 6, kw["channels"]), np.uint8)  # smaller than the crop
        with pytest.raises(ValueError, match=f"crop .* is larger than the image"):
            ctrl.act(wrong)
    finally:
        ctrl.close()


def test_wrong_channel_count_or_image_size_names_the_key(camera_datasets, tmp_path):
    cfg = _config("rgb", camera_datasets["rgb"], tmp_path / "run")
    cfg["training"]["steps"], cfg["training"]["eval"]["n_episodes"] = 2, 1
    train_run.run(cfg)
    # An env whose camera has one channel where the policy was trained on RGB, or smaller frames than the crop.
    for env_kwargs, shape in (({"channels": 1}, r"\(20, 20, 1\)"), ({"size": 12}, r"\(12, 12, 3\)")):
        with pytest.raises(ValueError, match=rf"observation key 'cam': env {ENV_ID} gives shape {shape}, the policy "
                                             rf"was trained on \(3, 16, 16\)"):
            eval_cli.run({"checkpoint": str(tmp_path / "run"), "n_episodes": 1, "n_envs": 1, "seed": 0, "video_episodes": 0,
                          "out": str(tmp_path / "ev"), "env_kwargs": env_kwargs})
    policy, _ = load_policy(tmp_path / "run")
    obs = {"pos": torch.zeros(1, 2, 2), "cam": torch.rand(1, 2, 1, CROP, CROP)}
    with pytest.raises(ValueError, match=r"observation 'cam': expected \(B, 2, \*\(3, 16, 16\)\) \(channels, height, "
                                         r"width\), got \(1, 2, 1, 16, 16\)"):
        policy.predict_action(obs)
