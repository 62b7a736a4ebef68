"""Noise schedules as precomputed tables.

Every process in this package is a Gaussian path ``x_t = alpha_t * x0 + sigma_t * noise``:

- DDPM (variance preserving): discrete training timesteps ``k = 0..K-1`` with
  ``alpha_k = sqrt(alphas_cumprod[k])`` and ``sigma_k = sqrt(1 - alphas_cumprod[k])``.
- Flow matching (rectified flow): continuous ``t`` in [0, 1] with ``alpha_t = 1 - t`` and ``sigma_t = t``.
  **t = 1 is pure noise, t = 0 is data**; the velocity is ``dx_t/dt = noise - x0`` (the convention of diffusers'
  ``FlowMatchEulerDiscreteScheduler`` and pi0). This module is the one place that defines it.

A sampler never sees which process it runs: it walks a :class:`SamplingSchedule`, the tables ``(alpha, sigma,
model_time)`` at the ``N + 1`` grid points it visits, ending at the clean point ``alpha = 1, sigma = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")


def make_betas(kind: str, num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """DDPM betas ``(K,)`` in float64, with the definitions of diffusers' schedulers."""
    K = num_train_timesteps
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, K, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, K, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":
        # Nichol & Dhariwal's cosine schedule, betas capped at 0.999.
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return torch.tensor([min(1 - f((i + 1) / K) / f(i / K), 0.999) for i in range(K)], dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {kind!r}; expected one of {BETA_SCHEDULES}")


@dataclass(frozen=True)
class SamplingSchedule:
    """The grid a sampler walks, from noise (index 0) to data (index N).

    All tables have shape ``(N + 1,)``; entry ``N`` is the clean point (``alpha = 1, sigma = 0``) and its
    ``model_time`` is never fed to a network. ``model_time`` is what the network's time embedding receives.
    """

    alpha: torch.Tensor
    sigma: torch.Tensor
    model_time: torch.Tensor

    @property
    def num_steps(self) -> int:
        return self.alpha.shape[0] - 1

    def to(self, device=None, dtype=None) -> "SamplingSchedule":
        return SamplingSchedule(*(t.to(device=device, dtype=dtype) for t in (self.alpha, self.sigma, self.model_time)))


def ddpm_timesteps(num_train_timesteps: int, steps: int, spacing: str = "leading", steps_offset: int = 0) -> torch.Tensor:
    """Descending training timesteps ``(steps,)`` visited by a ``steps``-step sampler (diffusers' spacings)."""
    K = num_train_timesteps
    if not 1 <= steps <= K:
        raise ValueError(f"steps={steps} is out of range: a DDPM with {K} training timesteps samples with 1..{K} steps")
    if spacing == "leading":
        ts = torch.arange(steps, dtype=torch.float64) * (K // steps) + steps_offset
        ts = ts.flip(0)
    elif spacing == "trailing":
        ts = torch.round(torch.arange(K, 0, -K / steps, dtype=torch.float64)[:steps]) - 1
    elif spacing == "linspace":
        ts = torch.round(torch.linspace(0, K - 1, steps + 1, dtype=torch.float64)).flip(0)[:steps]
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
    return ts.long().clamp(0, K - 1)


def ddpm_sampling_schedule(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> SamplingSchedule:
    """Tables for descending DDPM ``timesteps`` ``(N,)``, with the clean point appended."""
    acp = torch.cat([alphas_cumprod[timesteps].double(), torch.ones(1, dtype=torch.float64)])
    model_time = torch.cat([timesteps.double(), torch.zeros(1, dtype=torch.float64)])
    return SamplingSchedule(alpha=acp.sqrt(), sigma=(1 - acp).clamp_min(0).sqrt(), model_time=model_time)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift ``t' = s t / (1 + (s - 1) t)`` of flow times in [0, 1] (0 and 1 stay fixed): ``s > 1``
    moves times toward the noise end, ``s < 1`` toward the data end."""
    return shift * t / (1 + (shift - 1) * t)


def flow_sampling_schedule(steps: int, shift: float = 1.0, time_scale: float = 1000.0) -> SamplingSchedule:
    """Tables for a flow-matching sampler: ``t`` uniform from 1 to 0 in ``steps`` steps, then :func:`shift_time`.

    ``shift > 1`` spends more steps near the noise end, ``shift < 1`` near the data end.
    ``model_time = time_scale * t`` matches the training call of :class:`~diffpolicy.core.objectives.FlowMatching`.
    """
    if steps < 1:
        raise ValueError(f"steps={steps}: a flow sampler needs at least 1 step")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return flow_schedule_from_times(shift_time(t, shift), time_scale)


def flow_schedule_from_times(t: torch.Tensor, time_scale: float = 1000.0) -> SamplingSchedule:
    """Tables for an explicit descending time grid ``t`` ``(N + 1,)`` ending at 0."""
    t = t.double()
    return SamplingSchedule(alpha=1 - t, sigma=t, model_time=t * time_scale)
