"""Diffusion / flow-matching policy: observation encoder + conditional 1D U-Net + objective.

The sampler and its step count are chosen at prediction time (``predict_action(obs, sampler="ddim", steps=4)``),
not stored in the weights.
"""

from __future__ import annotations

import torch

from ..core.objectives import Objective
from ..core.samplers import sample
from ..core.schedules import SPACINGS
from ..nets.unet1d import ConditionalUnet1D
from .base import Policy


class DiffusionPolicy(Policy):
    def __init__(self, normalizer, encoder, objective: Objective, net: ConditionalUnet1D, action_dim: int,
                 horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 8, sampler: str = "ddim",
                 steps: int = 16, action_key: str = "action"):
        super().__init__(normalizer, encoder, action_dim, horizon, n_obs_steps, n_action_steps, action_key)
        net.check_horizon(horizon)
        self.objective, self.net = objective, net
        self.sampler, self.steps = sampler, steps

    def set_sampling_shift(self, shift: float) -> None:
        """Shift a flow policy's sampling time grid (``< 1``: more steps near the data end); DDPM has none."""
        if not hasattr(self.objective, "sampling_shift"):
            raise ValueError(f"shift={shift} sets a flow-matching policy's time grid; this policy's objective is "
                             f"{type(self.objective).__name__}")
        if shift <= 0:
            raise ValueError(f"flow sampling shift must be > 0, got {shift}")
        self.objective.sampling_shift = float(shift)

    def set_sampling_spacing(self, spacing: str) -> None:
        """Choose a DDPM policy's timestep spacing (``leading``, ``trailing``, ``linspace``); flow has none."""
        if not hasattr(self.objective, "spacing"):
            raise ValueError(f"spacing={spacing} sets a DDPM policy's timesteps; this policy's objective is "
                             f"{type(self.objective).__name__}")
        if spacing not in SPACINGS:
            raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
        self.objective.spacing = spacing

    def loss(self, cond, action, generator, noise=None):
        return self.objective.loss(self.net, action, cond, generator=generator, noise=noise)

    def predict_chunk(self, cond, generator=None, sampler: str | None = None, steps: int | None = None,
                      mask: torch.Tensor | None = None, known: torch.Tensor | None = None,
                      noise: torch.Tensor | None = None, **sampler_kwargs):
        """Sample a normalised chunk ``(B, T, Da)`` from ``noise`` (drawn from ``generator`` if None);
        ``mask``/``known`` (normalised units) hold entries fixed."""
        if noise is None:
            noise = torch.randn((cond.shape[0], self.horizon, self.action_dim), generator=generator,
                                device=cond.device, dtype=cond.dtype)
        schedule = self.objective.sampling_schedule(steps or self.steps)
        # The condition's FiLM part once per chunk, the time parts of all steps in one batched call.
        net = self.net.conditioned(cond, times=schedule.model_time[:-1])
        return sample(self.objective, net, noise, None, sampler=sampler or self.sampler, schedule=schedule,
                      mask=mask, known=known, generator=generator, **sampler_kwargs)
