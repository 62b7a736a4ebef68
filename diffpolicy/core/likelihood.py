"""Log-likelihoods of trained models: the variational bound and the probability-flow ODE.

Both read a model through its denoiser view ``denoise(x, model_time, alpha, sigma) -> (x0_hat, noise_hat)``
(:meth:`~diffpolicy.core.objectives.Objective.denoiser`, built with ``clip=False``: the likelihood is the network's,
not that of a clipped sampler) and return negative log-likelihoods in **nats per sample** ``(B,)``;
:func:`bits_per_dim` converts.

- :func:`vlb`: the variational bound of the discrete chain on a grid of levels (Ho et al. 2020, eq. 5),
  ``L_T + sum_t L_{t-1} + L_0``, for any Gaussian path ``x = alpha x0 + sigma noise``. The reverse step
  ``p(x_s | x_t)`` is the forward posterior ``q(x_s | x_t, x0_hat)`` (Ho's "fixed small" variance), so each
  ``L_{t-1}`` is ``0.5 (SNR_s - SNR_t) |x0 - x0_hat|^2`` (Kingma et al. 2021, eq. 13). The decoder ``p(x0 | x_1)`` is
  Gaussian with mean ``x0_hat(x_1)`` and variance ``sigma_1^2 / alpha_1^2``: a density (``bin_width=None``, for
  continuous data such as actions) or discretised onto bins of ``bin_width`` whose outermost bins reach infinity
  (Ho et al.'s decoder for 8-bit images in [-1, 1]: ``bin_width = 2 / 255``). A DDPM's bound walks all its training
  timesteps (:meth:`Objective.likelihood_schedule`); a coarser grid gives a looser but still valid bound.
- :func:`ode_log_likelihood`: the exact likelihood of the probability-flow ODE (Song et al. 2021). In flow time
  ``tau = sigma / (alpha + sigma)`` the rescaled state ``y = x / (alpha + sigma)`` follows
  ``dy/dtau = noise_hat - x0_hat`` (the Euler sampler's ODE); ``log p(x0) = log N(y_1; 0, tau_1^2) +
  int div_y v dtau - D log(alpha_0 + sigma_0)``. Integrated with classical RK4 on the objective's grid
  (:meth:`~diffpolicy.core.objectives.Objective.ode_times`: evenly spaced in log-SNR); the divergence exactly (one
  backward pass per dimension: small events such as action chunks) or by Hutchinson's
  estimator with Rademacher probes held fixed along the path (Grathwohl et al. 2019).

The bound and the ODE describe different models built from one network (a discrete Gaussian chain; a continuous
flow); for an exact denoiser both reach the data's likelihood, the bound from above as its levels get closer (tests
check both against the analytic likelihood of Gaussian data under its exact denoiser).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .schedules import SamplingSchedule

if TYPE_CHECKING:  # pragma: no cover
    from .objectives import Denoiser, Objective

TRACES = ("hutchinson", "exact")
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class VLBTerms:
    """The bound's terms per sample, each ``(B,)`` in nats: ``prior`` (L_T), ``diffusion`` (the sum of L_{t-1})
    and ``decoder`` (L_0); ``total`` is their sum, an upper bound on the negative log-likelihood."""

    prior: torch.Tensor
    diffusion: torch.Tensor
    decoder: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.prior + self.diffusion + self.decoder


def bits_per_dim(nll: torch.Tensor, dims: int, bin_width: float | None = None) -> torch.Tensor:
    """Nats per sample ``(B,)`` to bits per dimension. With ``bin_width`` the NLL is a continuous density's (e.g.
    from the ODE on dequantised data) and becomes a discrete one by ``- dims * log(bin_width)`` first."""
    if bin_width is not None:
        nll = nll - dims * math.log(bin_width)
    return nll / (dims * math.log(2))


def quantize(x: torch.Tensor, levels: int = 256, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """``x`` rounded to ``levels`` evenly spaced values in [low, high] (bin width ``(high - low) / (levels - 1)``)."""
    step = (high - low) / (levels - 1)
    return ((x.clamp(low, high) - low) / step).round() * step + low


def dequantize(x: torch.Tensor, bin_width: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation: ``x + bin_width * (u - 1/2)``, ``u ~ U[0, 1)`` (for the ODE's density on 8-bit
    data; its bits per dimension are then an upper bound on the discrete model's, Theis et al. 2016)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + bin_width * (u - 0.5)


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


def _log_normal_mass(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``log(Phi(hi) - Phi(lo))`` for standardised edges ``lo < hi``, accurate in both tails (mirrored to the lower
    one, where ``log_ndtr`` keeps its precision)."""
    upper = lo > 0
    lo, hi = torch.where(upper, -hi, lo), torch.where(upper, -lo, hi)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1((log_lo - log_hi).clamp_max(-1e-12)))


def decoder_nll(x0: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, bin_width: float | None = None,
                low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """``-log p(x0)`` per element under ``N(mean, std^2)``: a density, or with ``bin_width`` the mass of the bin
    around ``x0`` (bins of data on the grid of :func:`quantize`; the bins at ``low`` and ``high`` reach infinity)."""
    if bin_width is None:
        z = (x0 - mean) / std
        return 0.5 * (z.square() + LOG_2PI) + std.log()
    half = 0.5 * bin_width
    lo = torch.where(x0 <= low + half, torch.full_like(x0, -math.inf), (x0 - half - mean) / std)
    hi = torch.where(x0 >= high - half, torch.full_like(x0, math.inf), (x0 + half - mean) / std)
    return -_log_normal_mass(lo, hi)


def vlb(denoise: "Denoiser", x0: torch.Tensor, schedule: SamplingSchedule, bin_width: float | None = None,
        generator: torch.Generator | None = None) -> VLBTerms:
    """The variational bound of ``x0`` ``(B, *event)`` on the noisy levels of ``schedule`` (noise to data, its last
    point clean and unused), one fresh noise draw per level: ``N`` network evaluations of the batch."""
    s = schedule.to(device=x0.device, dtype=torch.float64)
    a, sg, t, n = s.alpha[:-1], s.sigma[:-1], s.model_time[:-1], s.num_steps
    if n < 1 or bool((sg <= 0).any()):
        raise ValueError("the bound needs at least one noisy level (sigma > 0) before the schedule's clean point")
    snr = (a / sg).square()
    x = x0.double()
    prior = 0.5 * _per_sample(a[0].square() * x.square() + sg[0].square() - 1 - 2 * sg[0].log())
    diffusion = torch.zeros_like(prior)

    def x0_hat(i):
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        xt = (a[i] * x + sg[i] * noise.double()).to(x0.dtype)
        return denoise(xt, t[i].to(x0.dtype), a[i].to(x0.dtype), sg[i].to(x0.dtype))[0].double()

    for i in range(n - 1):  # L_{t-1}: level i (noisier) to level i + 1
        diffusion = diffusion + 0.5 * (snr[i + 1] - snr[i]) * _per_sample((x - x0_hat(i)).square())
    std = (sg[-1] / a[-1]).expand_as(x)
    decoder = _per_sample(decoder_nll(x, x0_hat(n - 1), std, bin_width))
    return VLBTerms(prior, diffusion, decoder)


def _divergence(v: torch.Tensor, y: torch.Tensor, probes: torch.Tensor | None) -> torch.Tensor:
    """``div_y v`` per sample ``(B,)``: exact (``probes`` None) or Hutchinson's mean over ``probes``
    ``(P, B, *event)``."""
    if probes is None:
        flat = v.flatten(1)
        cols = [torch.autograd.grad(flat[:, d].sum(), y, retain_graph=True)[0].flatten(1)[:, d]
                for d in range(flat.shape[1])]
        return torch.stack(cols, 1).sum(1)
    est = [_per_sample(torch.autograd.grad((v * z).sum(), y, retain_graph=True)[0] * z) for z in probes]
    return torch.stack(est).mean(0)


def ode_log_likelihood(objective: "Objective", denoise: "Denoiser", x0: torch.Tensor, steps: int = 64,
                       trace: str = "hutchinson", probes: int = 1,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``log p(x0)`` ``(B,)`` in nats under the probability-flow ODE of ``denoise`` (a model of ``objective``),
    ``x0`` ``(B, *event)``; ``steps`` RK4 steps (4 network evaluations each, plus the trace's backward passes)."""
    if trace not in TRACES:
        raise ValueError(f"unknown trace {trace!r}; expected one of {TRACES}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if trace == "hutchinson" and probes < 1:
        raise ValueError(f"hutchinson's estimator needs probes >= 1, got {probes}")
    taus = objective.ode_times(steps).tolist()
    tau0, tau1 = taus[0], taus[-1]
    probe_noise = None
    if trace == "hutchinson":
        z = torch.randint(0, 2, (probes,) + tuple(x0.shape), generator=generator, device=x0.device)
        probe_noise = (2 * z - 1).to(x0.dtype)

    def field(tau: float, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, sigma, model_time = objective.level(torch.tensor(tau, dtype=torch.float64))
        k = float(alpha + sigma)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            x0_hat, noise_hat = denoise(y * k, model_time.to(y), alpha.to(y), sigma.to(y))
            v = noise_hat - x0_hat
            div = _divergence(v, y, probe_noise)
        return v.detach(), div.detach()

    alpha0, sigma0, _ = objective.level(torch.tensor(tau0, dtype=torch.float64))
    k0 = float(alpha0 + sigma0)
    y, delta = x0 / k0, torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    for tau, tau_next in zip(taus[:-1], taus[1:]):
        h = tau_next - tau
        v1, d1 = field(tau, y)
        v2, d2 = field(tau + h / 2, y + h / 2 * v1)
        v3, d3 = field(tau + h / 2, y + h / 2 * v2)
        v4, d4 = field(tau + h, y + h * v3)
        y = y + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
        delta = delta + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4).double()
    dims = x0[0].numel()
    yd = y.double()
    prior = -0.5 * _per_sample(yd.square()) / tau1**2 - dims * (0.5 * LOG_2PI + math.log(tau1))
    return prior + delta - dims * math.log(k0)
