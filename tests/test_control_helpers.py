"""Tiny policies for the controller tests: a real diffusion checkpoint and a fake policy with a controlled delay."""

from __future__ import annotations

import time

import numpy as np
import torch

from diffpolicy.core.normalize import Normalizer
from diffpolicy.policy.base import Policy
from diffpolicy.policy.factory import build_policy
from diffpolicy.training.checkpoint import save_checkpoint

ENV = "diffpolicy/TwoPath-v0"


def tiny_checkpoint(root, objective: str = "ddpm", seed: int = 0):
    """A (16, 32) U-Net diffusion policy for TwoPath (state (4,) -> action (2,)) saved as ``load_policy`` expects."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = {"state": rng.uniform(-1, 1, (256, 4)).astype(np.float32),
            "action": rng.uniform(-0.2, 0.2, (256, 2)).astype(np.float32)}
    normalizer = Normalizer.fit(data, {"state": "minmax", "action": "minmax"})
    obj = {"type": "ddpm", "num_train_timesteps": 100, "prediction": "epsilon", "clip_x0": 1.0} \
        if objective == "ddpm" else {"type": "flow"}
    pcfg = {"name": f"unet_{objective}", "type": "diffusion", "horizon": 16, "n_obs_steps": 2, "n_action_steps": 8,
            "objective": obj, "unet": {"down_dims": [16, 32], "kernel_size": 5, "n_groups": 8, "time_embed_dim": 32},
            "sampler": "ddim", "steps": 4}
    shapes = {"obs": {"state": [4]}, "action_dim": 2}
    policy = build_policy(pcfg, normalizer, {"state": (4,)}, [], 2)
    config = {"policy": pcfg, "shapes": shapes,
              "task": {"name": "two_path", "env_id": ENV, "env_kwargs": {"obs_type": "dict"}, "obs_keys": ["state"],
                       "image_keys": [], "action_key": "action"}}
    state = policy.state_dict()
    save_checkpoint(root, 0, {"model": state, "ema": state}, config)
    return root


class _Identity(torch.nn.Module):
    keys, image_keys = ("t",), ()


class FakePolicy(Policy):
    """Observation ``{"t": (1,)}`` = the step index; the chunk's entry ``j`` is ``(t_obs - (To - 1) + j, t_obs)``:
    action dim 0 equals the step it is meant for, dim 1 tells which observation the chunk came from. ``predict_chunk`` sleeps ``delay`` seconds
    (or until ``gate`` is set), so tests control the inference time. Mask/known are honoured (inpainting)."""

    def __init__(self, horizon=16, n_obs_steps=2, n_action_steps=8, delay=0.0, action_scale=1.0):
        normalizer = Normalizer({"action": (torch.full((2,), action_scale), torch.zeros(2))})
        super().__init__(normalizer, _Identity(), 2, horizon, n_obs_steps, n_action_steps)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.delay, self.gate, self.calls, self.fail = delay, None, [], False

    def encode(self, obs):
        return obs["t"][:, -1]  # (B, 1): the newest step index

    def predict_chunk(self, cond, generator=None, sampler=None, steps=None, mask=None, known=None, **_):
        self.calls.append({"t": float(cond[0, 0]), "mask": mask, "known": known})
        if self.fail:
            raise FloatingPointError("fake failure")
        if self.gate is not None:
            assert self.gate.wait(10.0), "test gate never opened"
        elif self.delay:
            time.sleep(self.delay)
        j = torch.arange(self.horizon, dtype=torch.float32)
        t = cond[:, :1, None]
        chunk = torch.cat([(t - (self.n_obs_steps - 1) + j[None, :, None]), t.expand(-1, self.horizon, 1)], dim=2)
        chunk = self.normalizer.normalize("action", chunk)
        if mask is not None:
            chunk = torch.where(mask, known, chunk)
        return chunk


def fake_controller(policy: FakePolicy, **kwargs):
    from diffpolicy.control.controller import Controller

    ctrl = Controller(policy, ["t"], obs_shapes={"t": (1,)}, **kwargs)
    policy.calls.clear()  # forget the warm-up samples
    return ctrl


def at(t: int) -> dict:
    return {"t": np.array([t], np.float32)}
