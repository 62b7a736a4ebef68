"""Training objectives and the denoiser view that samplers use.

Both objectives share one training call, ``objective.loss(net, x0, cond) -> scalar``, and one sampling view,
``objective.denoiser(net, cond, ...)``: a function ``(x, model_time, alpha, sigma) -> (x0_hat, noise_hat)``.
Any sampler in :mod:`diffpolicy.core.samplers` runs any objective's denoiser, since both are Gaussian paths
``x = alpha * x0 + sigma * noise`` (see :mod:`diffpolicy.core.schedules` for the time conventions).

A network is any callable ``net(x, t, cond) -> out`` with ``x`` ``(B, *event)``, ``t`` ``(B,)`` float model time,
and ``out`` of ``x``'s shape; what ``out`` means is the objective's ``prediction``:
``epsilon`` (the noise), ``sample`` (x0), ``v_prediction`` (``alpha * noise - sigma * x0``, for DDPM) or
``velocity`` (``noise - x0``, flow matching).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .schedules import (
    BETA_SCHEDULES,
    SPACINGS,
    SamplingSchedule,
    ddpm_sampling_schedule,
    ddpm_timesteps,
    flow_sampling_schedule,
    make_betas,
    shift_time,
)

Net = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# grad_x log p(c | x) at a level: (x, model_time, alpha, sigma) -> x's shape (classifier guidance)
ClassifierGrad = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
PREDICTIONS = ("epsilon", "sample", "v_prediction", "velocity")


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` or scalar ``v`` reshaped to broadcast against ``x`` ``(B, *event)``."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else v


def split_prediction(out, x, alpha, sigma, prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a network output into ``(x0_hat, noise_hat)`` at a point ``x = alpha x0 + sigma noise``."""
    if prediction == "epsilon":
        return (x - sigma * out) / alpha, out
    if prediction == "sample":
        return out, (x - alpha * out) / sigma
    if prediction == "v_prediction":  # variance preserving: alpha^2 + sigma^2 = 1
        return alpha * x - sigma * out, sigma * x + alpha * out
    if prediction == "velocity":  # rectified flow: alpha + sigma = 1
        return x - sigma * out, x + alpha * out
    raise ValueError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")


class Objective:
    """What DDPM and flow matching share: the loss on sampled times, and the denoiser view."""

    prediction: str
    clip_x0: float | None = None
    clip_keeps_noise: bool = False

    def sample_training_times(self, batch: int, device, generator=None):
        """``(alpha, sigma, model_time, weight)``, each ``(B,)``: the path point and loss weight per sample."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, noise: torch.Tensor, alpha, sigma) -> torch.Tensor:
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "sample":
            return x0
        if self.prediction == "v_prediction":
            return alpha * noise - sigma * x0
        return noise - x0  # velocity

    def loss(self, net: Net, x0: torch.Tensor, cond: Any = None, generator: torch.Generator | None = None,
             reduce: bool = True, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted MSE between ``net``'s output on a noised ``x0`` ``(B, *event)`` and the objective's target.

        ``noise`` (``x0``'s shape) pairs each sample with given noise instead of fresh Gaussian noise: the coupled
        pairs of reflow (:mod:`diffpolicy.training.reflow`). Returns the batch mean, or the per-sample losses
        ``(B,)`` with ``reduce=False``.
        """
        B = x0.shape[0]
        alpha, sigma, model_time, weight = self.sample_training_times(B, x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        a, s = _bcast(alpha.to(x0.dtype), x0), _bcast(sigma.to(x0.dtype), x0)
        out = net(a * x0 + s * noise, model_time.to(x0.dtype), cond)
        per_sample = (out.float() - self.target(x0, noise, a, s).float()).pow(2).flatten(1).mean(1)
        per_sample = per_sample * weight.to(per_sample.dtype)
        return per_sample.mean() if reduce else per_sample

    def sampling_schedule(self, steps: int, **kwargs) -> SamplingSchedule:
        raise NotImplementedError

    def likelihood_schedule(self, steps: int | None = None, log_snr_range: tuple[float, float] | None = None
                            ) -> SamplingSchedule:
        """The grid of the variational bound (:func:`~diffpolicy.core.likelihood.vlb`): ``steps`` levels evenly spaced
        in log-SNR ``log(alpha^2 / sigma^2)`` over ``log_snr_range`` (default: the objective's), noise to data, then
        the clean point. The chain's bound tightens as levels get closer (its excess over the continuous-time bound
        is ~ (step in log-SNR)^2 / 4 nats per dimension and step where the SNR is high)."""
        n = 1000 if steps is None else steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"the bound's grid needs steps >= 2, got {steps!r}")
        lo, hi = log_snr_range or self.log_snr_range()
        tau = torch.sigmoid(-0.5 * torch.linspace(lo, hi, n, dtype=torch.float64))  # flow time of each level
        alpha, sigma, model_time = self.level(tau)
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        return SamplingSchedule(torch.cat([alpha, one]), torch.cat([sigma, zero]), torch.cat([model_time, zero]))

    def log_snr_range(self) -> tuple[float, float]:
        """``(noisiest, cleanest)`` log-SNR of the default likelihood grid."""
        raise NotImplementedError

    def flow_time_range(self) -> tuple[float, float]:
        """``(tau_data, tau_noise)``: the flow times ``sigma / (alpha + sigma)`` between which the probability-flow
        ODE of :func:`~diffpolicy.core.likelihood.ode_log_likelihood` runs."""
        raise NotImplementedError

    def ode_times(self, steps: int) -> torch.Tensor:
        """``(steps + 1,)`` ascending flow times, data to noise, at which the likelihood ODE's RK4 steps start and
        end: evenly spaced in log-SNR over :meth:`flow_time_range` (DPM-Solver's grid). In flow time the ODE is stiff
        at both ends: near the data the field contracts directions off the data manifold at a rate ~1 / tau, near
        the noise an epsilon network's x0 estimate ``(x - sigma eps) / alpha`` adds a rate ~1 / (1 - tau); in
        log-SNR both rates stay near 1/2, so equal steps suffice."""
        lo, hi = self.flow_time_range()
        lam = lambda tau: 2 * (math.log1p(-tau) - math.log(tau))  # noqa: E731  log(alpha^2 / sigma^2) at tau
        return torch.sigmoid(-0.5 * torch.linspace(lam(lo), lam(hi), steps + 1, dtype=torch.float64))

    def level(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(alpha, sigma, model_time)`` at flow time ``tau`` (a float64 tensor): the path at any continuous level."""
        raise NotImplementedError

    def denoiser(self, net: Net, cond: Any = None, null_cond: Any = None, guidance: float = 0.0,
                 clip: bool = True, classifier_grad: ClassifierGrad | None = None,
                 classifier_scale: float = 0.0) -> Denoiser:
        """The sampling view of ``net``: ``(x, model_time, alpha, sigma) -> (x0_hat, noise_hat)``.

        Classifier-free guidance with ``guidance = w`` combines ``out = out_c + w (out_c - out_null)`` (Ho &
        Salimans' w: 0 is the plain conditional model); conditional and null passes run as one batch.
        ``clip_x0`` (if set) clamps the x0 estimate and re-derives the noise from it, so x0 and noise stay one
        consistent point estimate for every sampler (diffusers' DDPMScheduler; DDIMScheduler with
        ``use_clipped_model_output=True``). ``clip_keeps_noise`` keeps the network's own noise estimate instead:
        DDIMScheduler's default, which Diffusion Policy's DDIM inference uses. ``clip=False`` gives the network's own
        estimates (likelihoods, :mod:`~diffpolicy.core.likelihood`).

        Classifier guidance (Dhariwal & Nichol 2021) with ``classifier_scale = s`` adds ``s grad_x log p(c | x)``
        (``classifier_grad(x, model_time, alpha, sigma)``, a noise-conditional classifier's gradient for the wanted
        classes) to the score ``-noise / sigma``: ``noise -= s sigma grad`` and, to stay on ``x = alpha x0 + sigma
        noise``, ``x0 += s sigma^2 / alpha grad`` (skipped at alpha = 0, pure noise, where the classifier knows
        nothing). It applies after classifier-free guidance and before clipping, so the two combine.
        """
        prediction, clip, keep_noise = self.prediction, self.clip_x0 if clip else None, self.clip_keeps_noise
        if guidance != 0.0 and null_cond is None:
            raise ValueError(f"guidance={guidance} needs a null condition (null_cond) for the unconditional pass")
        if classifier_scale != 0.0 and classifier_grad is None:
            raise ValueError(f"classifier_scale={classifier_scale} needs a classifier gradient (classifier_grad)")
        use_classifier = classifier_scale != 0.0

        def denoise(x, model_time, alpha, sigma):
            t = model_time.to(x.dtype).expand(x.shape[0])
            if guidance == 0.0:
                out = net(x, t, cond)
            else:
                out_c, out_u = net(torch.cat([x, x]), torch.cat([t, t]), _cat_cond(cond, null_cond)).chunk(2)
                out = out_c + guidance * (out_c - out_u)
            x0, eps = split_prediction(out, x, alpha, sigma, prediction)
            if use_classifier:
                grad = classifier_grad(x, model_time, alpha, sigma) * classifier_scale
                eps = eps - sigma * grad
                x0 = torch.where(alpha > 0, x0 + sigma.square() / alpha * grad, x0)
            if clip is not None:
                x0 = x0.clamp(-clip, clip)
                if not keep_noise:
                    eps = (x - alpha * x0) / sigma
            return x0, eps

        return denoise


def _cat_cond(cond, null_cond):
    """Stack a condition and its null along the batch axis (tensors, or dicts of tensors)."""
    if isinstance(cond, dict):
        return {k: torch.cat([cond[k], null_cond[k].expand_as(cond[k])]) for k in cond}
    return torch.cat([cond, null_cond.expand_as(cond)])


class DDPM(Objective):
    """Denoising diffusion (Ho et al. 2020) with discrete timesteps ``0..K-1``.

    ``loss_weighting="min_snr"`` applies Hang et al.'s min-SNR-gamma weights, expressed for the chosen prediction.
    """

    def __init__(self, num_train_timesteps: int = 100, beta_schedule: str = "squaredcos_cap_v2",
                 beta_start: float = 1e-4, beta_end: float = 2e-2, prediction: str = "epsilon",
                 clip_x0: float | None = 1.0, clip_keeps_noise: bool = False, loss_weighting: str | None = None,
                 snr_gamma: float = 5.0, spacing: str = "trailing"):
        if prediction not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"DDPM prediction must be epsilon, sample or v_prediction, not {prediction!r}")
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta schedule {beta_schedule!r}; expected one of {BETA_SCHEDULES}")
        if spacing not in SPACINGS:
            raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
        if loss_weighting not in (None, "min_snr"):
            raise ValueError(f"unknown loss weighting {loss_weighting!r}; expected None or 'min_snr'")
        self.num_train_timesteps, self.spacing = num_train_timesteps, spacing
        self.prediction, self.clip_x0, self.clip_keeps_noise = prediction, clip_x0, clip_keeps_noise
        self.loss_weighting, self.snr_gamma = loss_weighting, snr_gamma
        self.betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)
        acp = self.alphas_cumprod
        snr = acp / (1 - acp)
        if loss_weighting == "min_snr":
            clipped = snr.clamp(max=snr_gamma)
            w = {"epsilon": clipped / snr, "sample": clipped, "v_prediction": clipped / (snr + 1)}[prediction]
        else:
            w = torch.ones_like(snr)
        # Per-timestep tables, float32 for training (indexed by the sampled timestep).
        self._train_tables = torch.stack([acp.sqrt(), (1 - acp).sqrt(), w]).float()

    def sample_training_times(self, batch, device, generator=None):
        k = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=device)
        if self._train_tables.device != k.device:
            self._train_tables = self._train_tables.to(k.device)
        alpha, sigma, weight = self._train_tables[:, k]
        return alpha, sigma, k.float(), weight

    def sampling_schedule(self, steps: int, spacing: str | None = None, steps_offset: int = 0) -> SamplingSchedule:
        """Grid of ``steps`` timesteps, spaced per ``spacing`` (default: the objective's ``spacing``).
        ``trailing`` starts at the last training timestep, i.e. at pure noise (Lin et al. 2024); ``leading``
        (diffusers' DDIM default, Diffusion Policy's) ends at timestep 0, one fine step nearer the data."""
        ts = ddpm_timesteps(self.num_train_timesteps, steps, spacing or self.spacing, steps_offset)
        return ddpm_sampling_schedule(self.alphas_cumprod, ts)

    def likelihood_schedule(self, steps: int | None = None, log_snr_range: tuple[float, float] | None = None
                            ) -> SamplingSchedule:
        """Without ``steps``: the DDPM's own chain, every training timestep ``K - 1`` down to 0 (Ho et al.'s bound).
        With ``steps``: levels evenly spaced in log-SNR (fractional model times; see
        :meth:`Objective.likelihood_schedule`)."""
        if steps is None and log_snr_range is None:
            return self.sampling_schedule(self.num_train_timesteps, spacing="linspace")
        return super().likelihood_schedule(steps, log_snr_range)

    def log_snr_range(self):
        lam = self._log_snr()
        return float(lam[-1]), float(lam[0])

    # The ODE stops where alpha / sigma falls to 1e-2 (SNR 1e-4): beyond it an epsilon network's x0 estimate
    # (x - sigma eps) / alpha amplifies its errors by 1 / alpha, while x_t is already standard normal to ~1e-4.
    ODE_MIN_SNR = 1e-4

    def _log_snr(self) -> torch.Tensor:
        acp = self.alphas_cumprod
        return acp.log() - (1 - acp).log()  # (K,), decreasing in the timestep

    def flow_time_range(self) -> tuple[float, float]:
        lam = self._log_snr()
        last = int((lam >= math.log(self.ODE_MIN_SNR)).nonzero().max())
        tau = lambda log_snr: float(torch.sigmoid(-0.5 * log_snr))  # noqa: E731  sigma / (alpha + sigma)
        return tau(lam[0]), tau(lam[last])

    def level(self, tau):
        """VP path at flow time ``tau``; the model time is the training timestep at that log-SNR, interpolated
        linearly between integer timesteps (sinusoidal embeddings take fractional times)."""
        tau = tau.double()
        lam = 2 * (torch.log1p(-tau) - torch.log(tau))  # log(alpha^2 / sigma^2) with alpha / sigma = (1 - tau) / tau
        table = self._log_snr().flip(0)  # increasing: timesteps K-1 .. 0
        K = table.shape[0]
        j = torch.searchsorted(table, lam.reshape(-1)).clamp(1, K - 1).reshape(lam.shape)
        w = ((lam - table[j - 1]) / (table[j] - table[j - 1])).clamp(0, 1)
        model_time = (K - j) - w + 0.0  # index j - 1 is timestep K - j, index j is K - 1 - j
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt(), model_time.double()


class FlowMatching(Objective):
    """Conditional flow matching on the rectified-flow path ``x_t = (1 - t) x0 + t noise`` (t = 1 is noise).

    Training times: ``uniform`` on [0, 1]; ``logit_normal`` (``sigmoid(N(m, s^2))``, SD3); or ``beta``
    (pi0: ``t = 1 - s + s u`` with ``u ~ Beta(1.5, 1)``, ``s = 0.999``, which favours the noisy end); then
    ``time_shift`` (:func:`~diffpolicy.core.schedules.shift_time`; below 1 it moves training times toward the data
    end, where the velocity loss weighs x0 errors less than DDPM's epsilon loss does).
    The network sees ``model_time = time_scale * t`` so its sinusoidal embedding spans the same range as DDPM's.
    ``sampling_shift`` is the default time-grid shift of :meth:`sampling_schedule` (a sampling choice, kept with the
    objective so a checkpoint's config carries it): below 1 it spends more of a few steps near the data end.
    """

    prediction = "velocity"

    def __init__(self, time_sampling: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0,
                 beta_alpha: float = 1.5, beta_beta: float = 1.0, beta_s: float = 0.999, time_scale: float = 1000.0,
                 sampling_shift: float = 1.0, time_shift: float = 1.0):
        if time_sampling not in ("uniform", "logit_normal", "beta"):
            raise ValueError(f"unknown flow time sampling {time_sampling!r}; expected uniform, logit_normal or beta")
        for name, value in (("sampling_shift", sampling_shift), ("time_shift", time_shift)):
            if value <= 0:
                raise ValueError(f"flow {name} must be > 0, got {value}")
        self.time_sampling, self.time_scale, self.time_shift = time_sampling, time_scale, time_shift
        self.sampling_shift = sampling_shift
        self.logit_mean, self.logit_std = logit_mean, logit_std
        self.beta_alpha, self.beta_beta, self.beta_s = beta_alpha, beta_beta, beta_s

    def sample_training_times(self, batch, device, generator=None):
        if self.time_sampling == "uniform":
            t = torch.rand(batch, generator=generator, device=device)
        elif self.time_sampling == "logit_normal":
            n = torch.randn(batch, generator=generator, device=device)
            t = torch.sigmoid(self.logit_mean + self.logit_std * n)
        else:
            # Beta(a, b) from two Gammas would need a generator-aware sampler; inverse-CDF is exact for b = 1 and
            # falls back to torch.distributions otherwise (not generator-seeded, seeded via the global RNG).
            if self.beta_beta == 1.0:
                u = torch.rand(batch, generator=generator, device=device) ** (1.0 / self.beta_alpha)
            else:
                dist = torch.distributions.Beta(torch.tensor(self.beta_alpha, device=device),
                                                torch.tensor(self.beta_beta, device=device))
                u = dist.sample((batch,))
            t = 1 - self.beta_s + self.beta_s * u
        t = shift_time(t, self.time_shift)
        return 1 - t, t, t * self.time_scale, torch.ones_like(t)

    def sampling_schedule(self, steps: int, shift: float | None = None) -> SamplingSchedule:
        return flow_sampling_schedule(steps, self.sampling_shift if shift is None else shift, self.time_scale)

    # The bound's default grid spans SNR e^-12 (alpha / sigma = 0.0025: x_t is standard normal to ~1e-5 nats per
    # dimension) to e^10 (sigma / alpha = 0.0067, a cosine DDPM's first timestep): its decoder is then about as
    # sharp as the 8-bit bins of images (2 / 255), and the chain does not sum the errors of a network at noise
    # levels it was hardly trained on. The ODE runs on to e^18.4 (tau = 1e-4), where the velocity field stays smooth.
    LOG_SNR_RANGE = (-12.0, 10.0)
    ODE_LOG_SNR_RANGE = (-12.0, 2 * math.log((1 - 1e-4) / 1e-4))

    def log_snr_range(self):
        return self.LOG_SNR_RANGE

    def flow_time_range(self) -> tuple[float, float]:
        lo, hi = self.ODE_LOG_SNR_RANGE
        return tuple(float(torch.sigmoid(torch.tensor(-0.5 * v, dtype=torch.float64))) for v in (hi, lo))

    def level(self, tau):
        tau = tau.double()
        return 1 - tau, tau, tau * self.time_scale


def _take(cond, index):
    """The rows ``index`` of a condition (a tensor ``(B, ...)`` or None)."""
    return None if cond is None else cond[index]


class Distilled(Objective):
    """An objective that trains a student of ``base``: sampling, levels and likelihoods are the base objective's, so
    every sampler runs the student exactly as it runs the teacher (one Euler / DDIM step is one network evaluation)."""

    def __init__(self, base: Objective):
        self.base = base
        self.prediction, self.clip_x0, self.clip_keeps_noise = base.prediction, base.clip_x0, base.clip_keeps_noise

    def _x0(self, net, x, model_time, alpha, sigma, cond):
        """The student's one-step map: the base objective's x0 estimate at per-sample times."""
        return self.base.denoiser(net, cond)(x, model_time, alpha, sigma)[0]

    def sampling_schedule(self, steps: int, **kwargs) -> SamplingSchedule:
        return self.base.sampling_schedule(steps, **kwargs)

    def likelihood_schedule(self, steps=None, log_snr_range=None):
        return self.base.likelihood_schedule(steps, log_snr_range)

    def log_snr_range(self):
        return self.base.log_snr_range()

    def flow_time_range(self):
        return self.base.flow_time_range()

    def level(self, tau):
        return self.base.level(tau)

    def ode_times(self, steps):
        return self.base.ode_times(steps)

    def denoiser(self, net, cond=None, null_cond=None, guidance=0.0, clip=True, classifier_grad=None,
                 classifier_scale=0.0):
        return self.base.denoiser(net, cond, null_cond, guidance, clip, classifier_grad, classifier_scale)


class OneStepRegression(Distilled):
    """Knowledge distillation (Luhman & Luhman 2021): the student's one-step map regresses onto the teacher's sampler.

    Trained on coupled pairs ``(noise, x0)`` where ``x0`` is the teacher's many-step sample from ``noise`` (reflow's
    couplings, :func:`~diffpolicy.training.reflow.make_couplings`, computed once before training): the student's x0
    estimate at the noise end of ``schedule`` (its first level), from ``noise`` itself as the samplers start, is
    pulled onto ``x0``. That estimate is exactly what one Euler / DDIM step over ``schedule`` returns, so every
    training sample trains the one-step sampler, and no teacher runs during training (consistency distillation
    spends a teacher evaluation per sample and trains every level of the grid).
    """

    def __init__(self, base: Objective, schedule: SamplingSchedule):
        if schedule.num_steps < 1:
            raise ValueError("one-step regression needs a grid of at least one step (its first level is the start)")
        super().__init__(base)
        self.schedule = schedule

    def loss(self, net, x0, cond=None, generator=None, reduce=True, noise=None):
        """Mean squared distance between the student's one-step sample from ``noise`` ``(B, *event)`` and the
        teacher's sample ``x0`` from the same noise, per sample."""
        if noise is None:
            raise ValueError("one-step regression trains on coupled (noise, teacher sample) pairs: pass noise")
        s = self.schedule.to(device=x0.device, dtype=x0.dtype)  # the denoiser expands the start time to the batch
        pred = self._x0(net, noise, s.model_time[0], s.alpha[0], s.sigma[0], cond)
        per_sample = (pred.float() - x0.float()).pow(2).flatten(1).mean(1)
        return per_sample.mean() if reduce else per_sample


class ConsistencyDistillation(Distilled):
    """Consistency distillation (Song et al. 2023) of a teacher into a student that samples in one step.

    The consistency function of a network is its x0 estimate, ``f(x, t) = x0_hat`` of the denoiser view: at the
    clean end it is the identity (the boundary condition holds by construction), and from pure noise it is exactly
    what one DDIM / Euler step returns. Distillation makes ``f`` constant along the teacher's probability-flow ODE:
    for a point ``x_n = alpha_n x0 + sigma_n noise`` on the teacher's grid (``schedule``, noise to data), one
    teacher step gives ``x_{n+1}``, and the student's ``f(x_n, t_n)`` regresses onto its own stop-gradient
    ``f(x_{n+1}, t_{n+1})`` (the target network of improved consistency training: no EMA copy). At ``n + 1 = N``
    the target is ``x_{n+1}`` itself, which anchors the chain at the data.

    ``teacher_steps = k`` takes ``k`` teacher steps per target, ``x_n -> x_{min(n + k, N)}`` (multistep targets, as
    in consistency trajectory models): ``k = 1`` is the bootstrapped chain above, cheapest per step; ``k >= N``
    makes every target the teacher's own ODE solution at the data end (no student estimate in the target, no errors
    compounding along the chain) for ``(N + 1) / 2`` teacher evaluations per sample on average.

    Sampling is the base objective's (``denoiser`` and ``sampling_schedule`` delegate to it): ``euler`` or ``ddim``
    with 1 step is the one-step consistency sample, more steps are multistep consistency sampling. ``teacher`` is a
    network of the same objective and condition (a frozen copy of the student's starting point).
    """

    def __init__(self, base: Objective, teacher: Net, schedule: SamplingSchedule, teacher_steps: int = 1):
        if schedule.num_steps < 1:
            raise ValueError("consistency distillation needs a teacher grid of at least one step")
        if int(teacher_steps) != teacher_steps or teacher_steps < 1:
            raise ValueError(f"consistency distillation teacher_steps must be an integer >= 1, got {teacher_steps!r}")
        super().__init__(base)
        self.teacher, self.schedule, self.teacher_steps = teacher, schedule, int(teacher_steps)

    def loss(self, net, x0, cond=None, generator=None, reduce=True, noise=None):
        """Mean squared distance between the student's x0 estimates at ``x_n`` and (stop-gradient) at ``x_m``,
        ``m = min(n + teacher_steps, N)``, ``n`` uniform over the grid's steps, per sample."""
        s = self.schedule.to(device=x0.device, dtype=x0.dtype)
        n = torch.randint(0, s.num_steps, (x0.shape[0],), generator=generator, device=x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = _bcast(s.alpha[n], x0) * x0 + _bcast(s.sigma[n], x0) * noise
        m = (n + self.teacher_steps).clamp(max=s.num_steps)
        with torch.no_grad():
            target = self._teacher_steps(x, n, m, s, cond)
            inner = (s.sigma[m] > 0).nonzero().squeeze(1)  # at the data end (sigma = 0) f is the identity
            if len(inner):
                i = m[inner]
                target[inner] = self._x0(net, target[inner], s.model_time[i], _bcast(s.alpha[i], x0[inner]),
                                         _bcast(s.sigma[i], x0[inner]), _take(cond, inner))
        pred = self._x0(net, x, s.model_time[n], _bcast(s.alpha[n], x0), _bcast(s.sigma[n], x0), cond)
        per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        return per_sample.mean() if reduce else per_sample

    def _teacher_steps(self, x, n, m, s, cond):
        """Deterministic teacher steps (DDIM = Euler on flow paths) from grid index ``n`` to ``m``, per sample;
        each network call takes only the samples still moving."""
        x = x.clone()
        for j in range(int((m - n).max())):
            moving = (n + j < m).nonzero().squeeze(1)
            k = n[moving] + j
            a, sg, a1, sg1 = (_bcast(v, x[moving]) for v in (s.alpha[k], s.sigma[k], s.alpha[k + 1], s.sigma[k + 1]))
            x0_t, eps_t = self.base.denoiser(self.teacher, _take(cond, moving))(x[moving], s.model_time[k], a, sg)
            x[moving] = a1 * x0_t + sg1 * eps_t
        return x


def make_objective(cfg: dict[str, Any]) -> Objective:
    """``{"type": "ddpm" | "flow", ...constructor keywords}`` -> objective (the ``objective`` section of a config)."""
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind == "ddpm":
        return DDPM(**cfg)
    if kind == "flow":
        return FlowMatching(**cfg)
    raise ValueError(f"objective type must be 'ddpm' or 'flow', got {kind!r}")
