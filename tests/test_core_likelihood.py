"""Likelihoods where the answer is known: Gaussian data under its exact denoiser.

For ``x0 ~ N(mu, S)`` and ``x = alpha x0 + sigma noise``, ``E[x0 | x] = mu + alpha S (alpha^2 S + sigma^2 I)^-1
(x - alpha mu)``: the ideal model of every objective, whose probability-flow ODE carries the data distribution
exactly, so its log-likelihood is the analytic Gaussian one. The variational bound of a fine chain approaches it
from above.
"""

import math

import pytest
import torch

from diffpolicy.core.likelihood import (
    bits_per_dim, decoder_nll, dequantize, ode_log_likelihood, quantize, vlb,
)
from diffpolicy.core.objectives import DDPM, FlowMatching

MU = torch.tensor([0.3, -0.5, 0.1], dtype=torch.float64)
L = torch.tensor([[2.0, 0.0, 0.0], [1.5, 3.0, 0.0], [-0.5, 1.0, 1.2]], dtype=torch.float64)
COV = L @ L.T  # correlated, so the divergence is not the trace of a diagonal (Hutchinson is not exact by accident)
OBJECTIVES = {"ddpm": DDPM(1000, "squaredcos_cap_v2", clip_x0=None), "flow": FlowMatching()}


def exact_denoiser(x, model_time, alpha, sigma):
    a = torch.as_tensor(alpha, dtype=torch.float64)
    s = torch.as_tensor(sigma, dtype=torch.float64)
    r = torch.linalg.solve(a**2 * COV + s**2 * torch.eye(3, dtype=torch.float64), (x - a * MU).T).T
    return MU + a * r @ COV, s * r


def data(n, seed=0):
    return MU + torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) @ L.T


def analytic_nll(x):
    return -torch.distributions.MultivariateNormal(MU, COV).log_prob(x)


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_ode_likelihood_matches_the_gaussian(objective, trace):
    x = data(1000)
    log_p = ode_log_likelihood(OBJECTIVES[objective], exact_denoiser, x, steps=24, trace=trace, probes=2,
                               generator=torch.Generator().manual_seed(1))
    nll = analytic_nll(x)
    assert abs(float((-log_p).mean() / nll.mean()) - 1) < 0.01
    if trace == "exact":  # per sample too (the ODE stops at SNR e^-12 (flow) or 1e-4 (DDPM), not at pure noise)
        assert float((-log_p - nll).abs().max()) < (0.02 if objective == "flow" else 0.1)


def test_hutchinson_is_unbiased_but_noisy_per_sample():
    x = data(400)
    kw = dict(steps=8, generator=torch.Generator().manual_seed(3))
    exact = ode_log_likelihood(OBJECTIVES["flow"], exact_denoiser, x, trace="exact", **kw)
    est = ode_log_likelihood(OBJECTIVES["flow"], exact_denoiser, x, trace="hutchinson", probes=1, **kw)
    diff = est - exact
    assert float(diff.abs().max()) > 1e-3  # a real estimate, not the exact trace
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(diff))


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_fine_chain_bound_is_within_one_percent_and_not_below(objective):
    x = data(2000, seed=4)
    obj = OBJECTIVES[objective]
    sched = obj.likelihood_schedule(3000, (-10.0, 6.0))
    terms = vlb(exact_denoiser, x, sched, generator=torch.Generator().manual_seed(5))
    nll = analytic_nll(x)
    gap = terms.total - nll
    stderr = float(gap.std()) / math.sqrt(len(gap))
    assert abs(float(terms.total.mean() / nll.mean()) - 1) < 0.01
    assert float(gap.mean()) > -3 * stderr


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_default_chain_bound_is_above_the_exact_likelihood(objective):
    """The model's own chain (a DDPM's 1000 training timesteps; flow's default grid) bounds the ODE's exact value."""
    x = data(1000, seed=6)
    obj = OBJECTIVES[objective]
    terms = vlb(exact_denoiser, x, obj.likelihood_schedule(), generator=torch.Generator().manual_seed(7))
    exact = -ode_log_likelihood(obj, exact_denoiser, x, steps=16, trace="exact")
    gap = terms.total - exact
    assert float(gap.mean()) > 3 * float(gap.std()) / math.sqrt(len(gap))
    assert float(terms.prior.abs().max()) < 1e-3  # the grid starts at (almost) pure noise


def test_discretised_decoder_is_a_distribution_over_the_bins():
    levels = 256
    bins = quantize(torch.linspace(-1, 1, levels, dtype=torch.float64), levels)
    width = 2 / (levels - 1)
    for mean, std in ((0.3, 0.01), (-0.999, 0.05), (0.7, 2.0), (1.0, 1e-4)):
        nll = decoder_nll(bins, torch.full_like(bins, mean), torch.full_like(bins, std), bin_width=width)
        assert abs(float((-nll).exp().sum()) - 1) < 1e-9, (mean, std)
    # a narrow decoder on a bin centre puts all its mass there; the density version is the Gaussian's
    x = torch.tensor([0.2], dtype=torch.float64)
    assert float(decoder_nll(x, x, torch.tensor([1e-4], dtype=torch.float64), bin_width=width)) < 1e-9
    dens = decoder_nll(x, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    assert float(dens) == pytest.approx(0.5 * (0.04 + math.log(2 * math.pi)))


def test_quantize_dequantize_and_bits_per_dim():
    x = torch.tensor([-1.2, -0.3, 0.0, 0.9999, 3.0])
    q = quantize(x)
    assert q.min() == -1 and q.max() == 1 and torch.allclose(quantize(q), q)
    d = dequantize(q, 2 / 255, torch.Generator().manual_seed(0))
    assert float((d - q).abs().max()) <= 1 / 255
    nll = torch.tensor([10.0 * math.log(2)])
    assert float(bits_per_dim(nll, 10)) == pytest.approx(1.0)
    assert float(bits_per_dim(nll, 10, bin_width=0.5)) == pytest.approx(2.0)  # + log2(1 / 0.5) per dimension


def test_bad_arguments_are_named():
    x = data(4)
    with pytest.raises(ValueError, match="unknown trace 'exactly'"):
        ode_log_likelihood(OBJECTIVES["flow"], exact_denoiser, x, trace="exactly")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        ode_log_likelihood(OBJECTIVES["flow"], exact_denoiser, x, steps=0)
    with pytest.raises(ValueError, match="steps >= 2"):
        OBJECTIVES["flow"].likelihood_schedule(1)
