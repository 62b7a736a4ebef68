"""Samplers driven by the exact denoiser of a finite data set.

For data points ``x_j`` with probabilities ``p_j`` the ideal denoiser is analytic: ``E[x0 | x]`` is the
posterior-weighted mean of the points under ``x = alpha x0 + sigma noise``. With it, every sampler must land its
samples on the data points, land closer as steps grow, and hit each point with its probability.
"""

import pytest
import torch

from diffpolicy.core.objectives import DDPM, FlowMatching
from diffpolicy.core.samplers import SAMPLERS

POINTS = torch.tensor([[-0.8, -0.6], [0.9, 0.2], [0.0, 0.9]], dtype=torch.float64)
PROBS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
N = 20000


def exact_denoiser(x, model_time, alpha, sigma):
    d2 = (x[:, None, :] - alpha * POINTS[None]).pow(2).sum(-1)  # (B, J)
    w = torch.softmax(PROBS.log()[None] - d2 / (2 * sigma**2), dim=1)
    x0 = w @ POINTS
    return x0, (x - alpha * x0) / sigma


def nearest(x):
    d = torch.cdist(x, POINTS)
    return d.min(1)


OBJECTIVES = {"ddpm": DDPM(1000, "squaredcos_cap_v2", clip_x0=None), "flow": FlowMatching()}
CASES = [(o, s) for o in OBJECTIVES for s in ["ddpm", "ddim", "euler", "heun", "dpmpp_2m"]]


def run(objective, sampler, steps, seed=0):
    noise = torch.randn(N, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sched = OBJECTIVES[objective].sampling_schedule(steps)
    return SAMPLERS[sampler](exact_denoiser, noise, sched, generator=torch.Generator().manual_seed(seed + 1))


@pytest.mark.parametrize("objective,sampler", CASES)
def test_samples_land_on_data_points_with_their_frequencies(objective, sampler):
    x = run(objective, sampler, 32)
    dist, idx = nearest(x)
    assert dist.max() < 1e-3, f"farthest sample is {dist.max():.2e} from any data point"
    counts = torch.bincount(idx, minlength=3).double()
    expected = PROBS * N
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 13.8, f"counts {counts.tolist()} vs expected {expected.tolist()} (chi2={chi2:.1f}, p<0.001)"


@pytest.mark.parametrize("objective,sampler", CASES)
def test_error_shrinks_as_steps_grow(objective, sampler):
    errors = [nearest(run(objective, sampler, steps))[0].mean().item() for steps in (2, 8, 32)]
    assert errors[0] > errors[1] > errors[2], f"mean distance to the data at 2, 8, 32 steps: {errors}"


@pytest.mark.parametrize("sampler", ["ddim", "euler", "heun", "dpmpp_2m"])
def test_deterministic_samplers_agree_on_the_flow_of_each_noise(sampler):
    """Deterministic samplers follow the same probability-flow ODE: with many steps they map each noise to the
    same data point as a fine Euler solve."""
    ref = nearest(run("flow", "euler", 256))[1]
    got = nearest(run("flow", sampler, 64))[1]
    assert (ref == got).double().mean() > 0.99
