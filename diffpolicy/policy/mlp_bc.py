"""Behaviour-cloning baseline: the same encoders, an MLP regressing the whole normalised chunk (MSE)."""

from __future__ import annotations

from typing import Sequence

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

    def sample_chunk(self, cond, plan=None, noise=None, generator=None, mask=None, known=None):
        """Deterministic regression: no plan, noise or generator applies; holding entries fixed is refused."""
        if mask is not None:
            raise ValueError("MLPBCPolicy cannot hold chunk entries fixed (no inpainting sampler); real-time "
                             "chunking needs a diffusion/flow policy")
        return self.mlp(cond).reshape(cond.shape[0], self.horizon, self.action_dim)
