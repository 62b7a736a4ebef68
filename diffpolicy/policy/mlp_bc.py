"""Behaviour-cloning baseline: the same encoders, an MLP regressing the whole normalised chunk (MSE)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import Policy


class MLPBCPolicy(Policy):
    def __init__(self, normalizer, encoder, action_dim: int, horizon: int = 16, n_obs_steps: int = 2,
                 n_action_steps: int = 8, hidden: Sequence[int] = (512, 512, 512), action_key: str = "action"):
        super().__init__(normalizer, encoder, action_dim, horizon, n_obs_steps, n_action_steps, action_key)
        layers, d = [], encoder.out_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.Mish()]
            d = h
        self.mlp = nn.Sequential(*layers, nn.Linear(d, horizon * action_dim))

    def loss(self, cond, action, generator):
        return (self.mlp(cond).reshape(action.shape) - action).pow(2).mean()

    def predict_chunk(self, cond, generator=None, **_ignored):
        """Deterministic regression; sampler options do not apply and are ignored."""
        return self.mlp(cond).reshape(cond.shape[0], self.horizon, self.action_dim)
