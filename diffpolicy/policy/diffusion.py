"""Diffusion / flow-matching policy: observation encoder + denoiser (1D U-Net or transformer) + objective.

The sampler, its step count and time grid are chosen at prediction time, as a sampling plan
(``policy.sampling_plan("euler", 4)``, :mod:`~diffpolicy.policy.sampling`); the config's ``sampler``/``steps`` and
the objective's grid settings are the defaults. :meth:`DiffusionPolicy.sample_chunk` is the one sampling entry.
"""

from __future__ import annotations

import torch

from ..core.likelihood import ode_log_likelihood
from ..core.objectives import Objective
from ..nets.transformer1d import TransformerDenoiser
from ..nets.unet1d import ConditionalUnet1D
from .base import Policy
from .sampling import SamplingPlan, TimeTable, make_plan


class DiffusionPolicy(Policy):
    supports_inpainting = True

    def __init__(self, normalizer, encoder, objective: Objective, net: ConditionalUnet1D | TransformerDenoiser,
                 action_dim: int, horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 8,
                 sampler: str = "ddim", steps: int = 16, action_key: str = "action", noise_draws: int = 1):
        super().__init__(normalizer, encoder, action_dim, horizon, n_obs_steps, n_action_steps, action_key)
        net.check_horizon(horizon)
        if int(noise_draws) < 1:
            raise ValueError(f"noise_draws must be >= 1, got {noise_draws}")
        self.objective, self.net = objective, net
        self.sampler, self.steps = sampler, steps
        self.noise_draws = int(noise_draws)

    def loss(self, cond, action, generator, noise=None):
        """Objective loss of chunks ``(B, T, Da)`` given conditions ``(B, C)``. With ``noise_draws = K > 1`` each
        window is noised at K independent (time, noise) draws: the denoiser sees K x B samples for one encoder pass,
        which pays when the observation encoder (cameras) costs more than the denoiser."""
        if self.noise_draws > 1:
            cond, action = cond.repeat_interleave(self.noise_draws, 0), action.repeat_interleave(self.noise_draws, 0)
            if noise is not None:
                noise = noise.repeat_interleave(self.noise_draws, 0)
        return self.objective.loss(self.net, action, cond, generator=generator, noise=noise)

    def sampling_plan(self, sampler: str | None = None, steps: int | None = None, shift: float | None = None,
                      spacing: str | None = None, time_table: bool = False) -> SamplingPlan:
        """The validated plan for ``sampler``/``steps`` (defaults: the config's) on the objective's time grid, moved
        by ``shift`` (flow) or ``spacing`` (DDPM) if given. ``time_table=True`` precomputes the FiLM time parts of
        the grid with the current weights (for a controller whose weights no longer change)."""
        return make_plan(self.objective, self.net, sampler or self.sampler, self.steps if steps is None else steps,
                         shift, spacing, time_table)

    def sample_chunk(self, cond: torch.Tensor, plan: SamplingPlan | None = None, noise: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, mask: torch.Tensor | None = None,
                     known: torch.Tensor | None = None) -> torch.Tensor:
        """A normalised chunk ``(B, T, Da)`` for a condition ``(B, C)``, from ``noise`` ``(B, T, Da)`` (drawn from
        ``generator`` if None); ``mask``/``known`` ``(B, T, Da)`` (normalised units) hold entries fixed."""
        plan = plan or self.sampling_plan()
        if noise is None:
            noise = torch.randn((cond.shape[0], self.horizon, self.action_dim), generator=generator,
                                device=cond.device, dtype=cond.dtype)
        # The condition's part once per chunk (U-Net: FiLM; transformer: cross-attention keys/values); the time parts
        # of all steps in one batched call (or cached).
        table = plan.time_table or TimeTable(self.net, plan.schedule.model_time[:-1])
        denoise = self.objective.denoiser(self.net.conditioned(cond, time_film=table))
        return plan.fn(denoise, noise, plan.schedule, generator=generator, mask=mask, known=known)

    @torch.no_grad()  # the ODE enables gradients with respect to the chunk only
    def log_likelihood(self, obs, actions: torch.Tensor, steps: int = 32, trace: str = "exact", probes: int = 1,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """``log p(actions | obs)`` ``(B,)`` in nats per chunk, in dataset units, under the probability-flow ODE
        (:func:`~diffpolicy.core.likelihood.ode_log_likelihood`): ``obs`` ``{key: (B, To, ...)}``, ``actions``
        ``(B, T, Da)``. A chunk has few dimensions, so the divergence is exact by default (``T * Da`` backward
        passes per evaluation); ``trace="hutchinson"`` estimates it. Useful for ranking candidate chunks and for
        flagging observations whose demonstrated actions the policy finds unlikely (out of distribution)."""
        expected = (self.horizon, self.action_dim)
        if actions.ndim != 3 or tuple(actions.shape[1:]) != expected:
            raise ValueError(f"actions have shape {tuple(actions.shape)}; expected (B, {expected[0]}, {expected[1]})")
        cond = self.encode({k: v[:, : self.n_obs_steps] for k, v in obs.items()})
        if cond.shape[0] != actions.shape[0]:
            raise ValueError(f"obs has batch {cond.shape[0]} but actions have batch {actions.shape[0]}")
        scale, _ = self.normalizer.params(self.action_key)
        x = self.normalizer.normalize(self.action_key, actions)
        denoise = self.objective.denoiser(self.net.conditioned(cond), clip=False)
        log_p = ode_log_likelihood(self.objective, denoise, x, steps, trace, probes, generator)
        # change of variables: normalised = scale * action + offset, per action dimension, at each of T steps
        return log_p + self.horizon * scale.abs().log().sum().double()
