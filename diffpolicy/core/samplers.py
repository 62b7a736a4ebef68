"""Samplers: one short function each, ``(denoise, x, schedule, ...) -> sample``.

``denoise(x, model_time, alpha, sigma) -> (x0_hat, noise_hat)`` is an objective's sampling view
(:meth:`~diffpolicy.core.objectives.Objective.denoiser`); ``x`` ``(B, *event)`` is the initial standard-normal noise;
``schedule`` is a :class:`~diffpolicy.core.schedules.SamplingSchedule` from noise (index 0) to data (index N).
Because both DDPM and flow matching are Gaussian paths ``x = alpha x0 + sigma noise``, every sampler runs every
objective. Per-step coefficients are computed once, as tables, before the loop; the loop indexes them with Python
ints and never synchronises with the device (no ``.item()``, no branching on tensor values).

Common options:
- ``generator``: the ``torch.Generator`` of the sampler's own noise (ancestral samplers);
- ``mask``, ``known``: inpainting. Entries where ``mask`` is true are held on the path of ``known`` (the clean
  values noised to each step's level with the initial noise), so the returned sample equals ``known`` there exactly;
- ``corrector``: a :class:`Langevin` corrector run at each step's level before the step (predictor-corrector
  sampling, Song et al. 2021), so any sampler here is the predictor.

The score every Langevin step follows is the denoiser's: ``grad log p(x) = -noise_hat / sigma`` at level sigma.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .objectives import Denoiser, Net, Objective
from .schedules import SamplingSchedule


def _inpainter(x: torch.Tensor, mask: torch.Tensor | None, known: torch.Tensor | None) -> Callable:
    """``keep(x, alpha, sigma)`` re-imposing ``known`` where ``mask`` holds; identity without a mask."""
    if mask is None:
        return lambda x, alpha, sigma: x
    if known is None:
        raise ValueError("inpainting needs both mask and known values; got a mask without known")
    noise, mask, known = x.clone(), mask.to(device=x.device, dtype=torch.bool), known.to(x)
    return lambda x, alpha, sigma: torch.where(mask, alpha * known + sigma * noise, x)


class Langevin:
    """Langevin corrector: ``steps`` updates ``x + e score + sqrt(2 e) z`` at one level, with the step ``e`` set by a
    signal-to-noise ratio, ``e = 2 (snr |z| / |score|)^2`` (Song et al. 2021, Algorithm 5), the norms averaged over
    the batch as in their implementation: a per-sample ratio explodes for samples near a mode, where the score
    vanishes, in few dimensions. Each step is one network call."""

    def __init__(self, snr: float = 0.16, steps: int = 1):
        if not snr > 0:
            raise ValueError(f"Langevin snr must be > 0, got {snr}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"Langevin steps must be a positive int, got {steps!r}")
        self.snr, self.steps = snr, steps

    def __repr__(self) -> str:
        return f"Langevin(snr={self.snr}, steps={self.steps})"

    def __call__(self, denoise: Denoiser, x: torch.Tensor, model_time, alpha, sigma,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        for _ in range(self.steps):
            score = -denoise(x, model_time, alpha, sigma)[1] / sigma
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            ratio = z.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean().clamp_min(1e-12)
            step = 2 * (self.snr * ratio).square()
            x = x + step * score + (2 * step).sqrt() * z
        return x


def _correct(denoise: Denoiser, corrector: Langevin | None, generator, keep: Callable) -> Callable:
    """``correct(x, model_time, alpha, sigma)``: the corrector's steps at a level, then inpainting; identity without."""
    if corrector is None:
        return lambda x, t, alpha, sigma: x
    return lambda x, t, alpha, sigma: keep(corrector(denoise, x, t, alpha, sigma, generator), alpha, sigma)


def _tables(schedule: SamplingSchedule, x: torch.Tensor):
    s = schedule.to(device=x.device, dtype=x.dtype)
    return s.alpha, s.sigma, s.model_time, s.num_steps


def ddim(denoise: Denoiser, x: torch.Tensor, schedule: SamplingSchedule, eta: float = 0.0,
         generator: torch.Generator | None = None, mask=None, known=None, corrector=None) -> torch.Tensor:
    """DDIM (Song et al. 2021); ``eta = 0`` is deterministic, ``eta = 1`` is DDPM's ancestral sampler."""
    a, s, t, n = _tables(schedule, x)
    keep = _inpainter(x, mask, known)
    correct = _correct(denoise, corrector, generator, keep)
    # Posterior std of the step i -> i+1 for a general Gaussian path, scaled by eta.
    ratio = (a[:-1] * s[1:]) / (a[1:] * s[:-1])
    c = eta * s[1:] * (1 - ratio.square()).clamp_min(0).sqrt()
    d = (s[1:].square() - c.square()).clamp_min(0).sqrt()
    x = keep(x, a[0], s[0])
    for i in range(n):
        x = correct(x, t[i], a[i], s[i])
        x0, eps = denoise(x, t[i], a[i], s[i])
        x = a[i + 1] * x0 + d[i] * eps
        if eta > 0:
            x = x + c[i] * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = keep(x, a[i + 1], s[i + 1])
    return x


def ddpm(denoise: Denoiser, x: torch.Tensor, schedule: SamplingSchedule, generator=None, mask=None, known=None,
         corrector=None):
    """DDPM ancestral sampling (Ho et al. 2020): the posterior ``q(x_s | x_t, x0_hat)`` at each step."""
    return ddim(denoise, x, schedule, eta=1.0, generator=generator, mask=mask, known=known, corrector=corrector)


def euler(denoise: Denoiser, x: torch.Tensor, schedule: SamplingSchedule, generator=None, mask=None, known=None,
          corrector=None):
    """Euler on the probability-flow ODE, written in flow time.

    Rescaling ``x / (alpha + sigma)`` turns any Gaussian path into the rectified-flow path with time
    ``tau = sigma / (alpha + sigma)`` and velocity ``noise - x0``; for flow models this is the identity, so the
    update is ``x + (t_next - t) v`` exactly as in diffusers' ``FlowMatchEulerDiscreteScheduler``.
    """
    a, s, t, n = _tables(schedule, x)
    keep = _inpainter(x, mask, known)
    correct = _correct(denoise, corrector, generator, keep)
    k, tau = a + s, s / (a + s)
    x = keep(x, a[0], s[0])
    for i in range(n):
        x = correct(x, t[i], a[i], s[i])
        x0, eps = denoise(x, t[i], a[i], s[i])
        x = (x / k[i] + (tau[i + 1] - tau[i]) * (eps - x0)) * k[i + 1]
        x = keep(x, a[i + 1], s[i + 1])
    return x


def heun(denoise: Denoiser, x: torch.Tensor, schedule: SamplingSchedule, generator=None, mask=None, known=None,
         corrector=None):
    """Heun's second-order method in flow time (Karras et al. 2022); the last step, to sigma = 0, is Euler."""
    a, s, t, n = _tables(schedule, x)
    keep = _inpainter(x, mask, known)
    correct = _correct(denoise, corrector, generator, keep)
    k, tau = a + s, s / (a + s)
    x = keep(x, a[0], s[0])
    for i in range(n):
        x = correct(x, t[i], a[i], s[i])
        x0, eps = denoise(x, t[i], a[i], s[i])
        y, dt, v = x / k[i], tau[i + 1] - tau[i], eps - x0
        x = (y + dt * v) * k[i + 1]
        if i < n - 1:
            x0_next, eps_next = denoise(keep(x, a[i + 1], s[i + 1]), t[i + 1], a[i + 1], s[i + 1])
            x = (y + dt * 0.5 * (v + eps_next - x0_next)) * k[i + 1]
        x = keep(x, a[i + 1], s[i + 1])
    return x


def dpmpp_2m(denoise: Denoiser, x: torch.Tensor, schedule: SamplingSchedule, generator=None, mask=None, known=None,
             corrector=None):
    """DPM-Solver++(2M) (Lu et al. 2022), multistep in ``lambda = log(alpha / sigma)``.

    First order at the first step and at the last one (to sigma = 0), as diffusers' ``DPMSolverMultistepScheduler``
    does with ``final_sigmas_type="zero"``.
    """
    a, s, t, n = _tables(schedule, x)
    keep = _inpainter(x, mask, known)
    correct = _correct(denoise, corrector, generator, keep)
    lam = a.log() - s.log()  # -inf at pure noise, +inf at the clean end: both handled by expm1(-inf) = -1
    h = lam[1:] - lam[:-1]
    coef_x, coef_d = s[1:] / s[:-1], -a[1:] * torch.expm1(-h)
    half_inv_r = torch.cat([h.new_zeros(1), 0.5 * h[1:] / h[:-1]])  # 1 / (2 r_i), r_i = h_{i-1} / h_i
    x = keep(x, a[0], s[0])
    x0_prev = None
    for i in range(n):
        x = correct(x, t[i], a[i], s[i])
        x0, _ = denoise(x, t[i], a[i], s[i])
        d = x0 if (i == 0 or i == n - 1) else x0 + half_inv_r[i] * (x0 - x0_prev)
        x = keep(coef_x[i] * x + coef_d[i] * d, a[i + 1], s[i + 1])
        x0_prev = x0
    return x


def langevin(denoise: Denoiser, x: torch.Tensor, schedule: SamplingSchedule, generator=None, mask=None, known=None,
             corrector=None):
    """Annealed Langevin dynamics (Song & Ermon 2019): the corrector's steps at each noisy level of the grid, the
    state carried unchanged from level to level (the corrector-only sampler of Song et al. 2021), then the
    denoiser's x0 estimate at the last level (Jolicoeur-Martineau et al.'s final denoising). ``corrector`` defaults
    to ``Langevin()``; ``steps * corrector.steps + 1`` network calls. Without a predictor it needs many levels:
    each level's Langevin steps must absorb the change of marginal from the level before.
    """
    a, s, t, n = _tables(schedule, x)
    keep = _inpainter(x, mask, known)
    correct = _correct(denoise, corrector or Langevin(), generator, keep)
    x = keep(x, a[0], s[0])
    for i in range(n):
        x = correct(keep(x, a[i], s[i]), t[i], a[i], s[i])
    return keep(denoise(x, t[n - 1], a[n - 1], s[n - 1])[0], a[n], s[n])


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": ddpm, "ddim": ddim, "euler": euler, "heun": heun, "dpmpp_2m": dpmpp_2m, "langevin": langevin,
}


# Samplers whose loop draws no random numbers: deterministic given the initial noise (and CUDA-graph capturable).
DETERMINISTIC_SAMPLERS = frozenset({"ddim", "euler", "heun", "dpmpp_2m"})


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function called ``name``, or a ``ValueError`` listing the names."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def check_steps(steps: int) -> int:
    """``steps`` if it is a positive int, else a ``ValueError``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return steps


def sample(objective: Objective, net: Net, noise: torch.Tensor, cond: Any = None, sampler: str = "ddim",
           steps: int = 10, *, guidance: float = 0.0, null_cond: Any = None, mask=None, known=None,
           generator: torch.Generator | None = None, schedule: SamplingSchedule | None = None,
           classifier_grad=None, classifier_scale: float = 0.0, **sampler_kwargs) -> torch.Tensor:
    """Sample from ``net`` trained with ``objective``, starting at ``noise`` ``(B, *event)``.

    ``schedule`` defaults to ``objective.sampling_schedule(steps)``; ``guidance``/``null_cond`` enable
    classifier-free guidance, ``classifier_grad``/``classifier_scale`` classifier guidance (both in
    :meth:`Objective.denoiser`); ``mask``/``known`` inpaint; extra keywords go to the sampler (e.g. ``eta``,
    ``corrector``).
    """
    fn = get_sampler(sampler)
    schedule = schedule if schedule is not None else objective.sampling_schedule(check_steps(steps))
    denoise = objective.denoiser(net, cond, null_cond=null_cond, guidance=guidance, classifier_grad=classifier_grad,
                                 classifier_scale=classifier_scale)
    return fn(denoise, noise, schedule, generator=generator, mask=mask, known=known, **sampler_kwargs)
