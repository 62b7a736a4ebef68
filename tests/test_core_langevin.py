"""Score-based sampling with the exact denoiser of Gaussian data: Langevin correction, predictor-corrector sampling
and annealed Langevin dynamics must produce the right mean and covariance."""

import pytest
import torch

from diffpolicy.core.objectives import DDPM, FlowMatching
from diffpolicy.core.samplers import SAMPLERS, Langevin, langevin, sample

D = 6
MU = torch.linspace(-0.5, 0.5, D, dtype=torch.float64)
_A = torch.randn(D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
COV = 0.1 * _A @ _A.T / D + 0.05 * torch.eye(D, dtype=torch.float64)  # correlated, entries ~0.1
OBJECTIVES = {"ddpm": DDPM(1000, "squaredcos_cap_v2", clip_x0=None), "flow": FlowMatching()}
N = 4000


def exact_denoiser(x, model_time, alpha, sigma):
    r = torch.linalg.solve(alpha**2 * COV + sigma**2 * torch.eye(D, dtype=torch.float64), (x - alpha * MU).T).T
    return MU + alpha * r @ COV, sigma * r


def moments_error(x, mean, cov):
    return float((x.mean(0) - mean).abs().max()), float((torch.cov(x.T) - cov).abs().max())


def noise(seed=0):
    return torch.randn(N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_corrector_alone_reaches_the_marginal_of_its_level():
    """Many Langevin steps at one level turn any start into that level's marginal N(alpha mu, alpha^2 S + sigma^2 I)."""
    alpha, sigma = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    x = 2.0 * noise() + 0.5  # too wide and off centre
    g = torch.Generator().manual_seed(1)
    y = Langevin(snr=0.2, steps=400)(exact_denoiser, x, torch.tensor(0.0), alpha, sigma, generator=g)
    target = alpha**2 * COV + sigma**2 * torch.eye(D, dtype=torch.float64)
    mean_err, cov_err = moments_error(y, alpha * MU, target)
    assert mean_err < 0.03 and cov_err < 0.04, (mean_err, cov_err)
    before = moments_error(x, alpha * MU, target)
    assert before[0] > 0.4 and before[1] > 1


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("predictor", ["ddim", "euler", "dpmpp_2m", "ddpm", "heun"])
def test_predictor_corrector_samples_the_data_distribution(objective, predictor):
    g = torch.Generator().manual_seed(2)
    x = SAMPLERS[predictor](exact_denoiser, noise(), OBJECTIVES[objective].sampling_schedule(20), generator=g,
                            corrector=Langevin(snr=0.1, steps=2))
    mean_err, cov_err = moments_error(x, MU, COV)  # sampling error of 4000 draws: ~0.015 in the mean
    assert mean_err < 0.03 and cov_err < 0.065, (mean_err, cov_err)  # 20 steps of DDPM's sampler alone: 0.058


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_annealed_langevin_samples_the_data_distribution(objective):
    g = torch.Generator().manual_seed(3)
    x = langevin(exact_denoiser, noise(), OBJECTIVES[objective].sampling_schedule(200), generator=g,
                 corrector=Langevin(snr=0.2, steps=5))
    mean_err, cov_err = moments_error(x, MU, COV)
    assert mean_err < 0.03 and cov_err < 0.03, (mean_err, cov_err)


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_corrector_makes_a_coarse_predictor_more_accurate(objective):
    """Five DDIM steps shrink the covariance (error ~0.1); a corrector at each level pulls the samples back toward
    the marginals (measured: 0.070 DDPM, 0.048 flow)."""
    sched = OBJECTIVES[objective].sampling_schedule(5)
    plain = SAMPLERS["ddim"](exact_denoiser, noise(), sched)
    corrected = SAMPLERS["ddim"](exact_denoiser, noise(), sched, generator=torch.Generator().manual_seed(4),
                                 corrector=Langevin(snr=0.2, steps=20))
    assert moments_error(corrected, MU, COV)[1] < 0.75 * moments_error(plain, MU, COV)[1]


def test_seeded_inpainting_and_errors():
    sched = OBJECTIVES["ddpm"].sampling_schedule(10)
    mask = torch.zeros(N, D, dtype=torch.bool)
    mask[:, :2] = True
    known = torch.full((N, D), 0.25, dtype=torch.float64)
    runs = [langevin(exact_denoiser, noise(), sched, generator=torch.Generator().manual_seed(5), mask=mask,
                     known=known) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0][:, :2], known[:, :2])
    with pytest.raises(ValueError, match="snr must be > 0"):
        Langevin(snr=0.0)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        Langevin(steps=0)


def test_sample_passes_the_corrector_to_any_sampler():
    net = lambda x, t, cond: torch.zeros_like(x)  # noqa: E731  epsilon = 0: x0 = x / alpha
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    a = sample(OBJECTIVES["ddpm"], net, x, sampler="ddim", steps=4)
    b = sample(OBJECTIVES["ddpm"], net, x, sampler="ddim", steps=4, corrector=Langevin(),
               generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a, b)
