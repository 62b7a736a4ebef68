"""Classifier guidance through the denoiser view, with exact models of a finite labelled data set.

Data: points ``x_j`` with probabilities ``p_j`` and classes ``c_j``. The unconditional exact denoiser is the
posterior-weighted mean of the points; the exact noise-conditional classifier is ``p(c | x_t) = sum of the
posterior weights of class c``. Bayes: ``grad log p(x_t | c) = grad log p(x_t) + grad log p(c | x_t)``, so guidance
at scale 1 turns the unconditional model into the class-conditional one: samples land on class c's points only, with
their relative probabilities.
"""

import pytest
import torch

from diffpolicy.core.objectives import DDPM, FlowMatching
from diffpolicy.core.samplers import SAMPLERS, sample

POINTS = torch.tensor([[-0.8, -0.6], [0.9, 0.2], [0.0, 0.9], [0.5, -0.7]], dtype=torch.float64)
PROBS = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
CLASSES = torch.tensor([0, 1, 1, 0])
N = 6000
OBJECTIVES = {"ddpm": DDPM(1000, "squaredcos_cap_v2", clip_x0=None), "flow": FlowMatching()}


def weights(x, alpha, sigma):
    d2 = (x[:, None, :] - alpha * POINTS[None]).pow(2).sum(-1)
    return torch.softmax(PROBS.log()[None] - d2 / (2 * sigma**2), dim=1)  # (B, J)


class ExactNet:
    """``net(x, t, cond)`` with the exact output of the objective's prediction (epsilon or velocity); the grid's
    alpha/sigma are looked up by model time."""

    def __init__(self, schedule, prediction):
        self.prediction = prediction
        self.by_time = {round(float(t), 6): (a, s) for a, s, t in zip(schedule.alpha, schedule.sigma,
                                                                       schedule.model_time)}

    def __call__(self, x, t, cond=None):
        a, s = self.by_time[round(float(t[0]), 6)]
        x0 = weights(x, a, s) @ POINTS
        eps = (x - a * x0) / s
        return eps if self.prediction == "epsilon" else eps - x0


def class_grad(labels):
    def grad(x, model_time, alpha, sigma):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            w = weights(x, alpha, sigma)
            p_c = (w * (CLASSES[None] == labels[:, None])).sum(1)
            return torch.autograd.grad(p_c.clamp_min(1e-300).log().sum(), x)[0]
    return grad


def run(objective, sampler, scale, labels, steps=48, seed=0):
    obj = OBJECTIVES[objective]
    sched = obj.sampling_schedule(steps)
    denoise = obj.denoiser(ExactNet(sched, obj.prediction), classifier_grad=class_grad(labels), classifier_scale=scale)
    noise = torch.randn(N, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return SAMPLERS[sampler](denoise, noise, sched, generator=torch.Generator().manual_seed(seed + 1))


def nearest(x):
    return torch.cdist(x, POINTS).min(1)


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler", "dpmpp_2m"])
def test_guidance_at_scale_one_samples_the_class_conditional(objective, sampler):
    labels = torch.randint(0, 2, (N,), generator=torch.Generator().manual_seed(7))
    x = run(objective, sampler, 1.0, labels)
    dist, idx = nearest(x)
    assert float(dist.quantile(0.99)) < 0.02
    on_class = (CLASSES[idx] == labels).double().mean()
    assert on_class > 0.99, f"{float(on_class):.3f} of the samples land on a point of their class"
    # within class 0: points 0 and 3 in the ratio 0.4 : 0.1
    zero = idx[labels == 0]
    share = float((zero == 0).double().mean())
    assert abs(share - 0.8) < 0.04, share


def test_scale_zero_is_the_unconditional_model_and_larger_scales_sharpen():
    labels = torch.zeros(N, dtype=torch.long)
    free = nearest(run("flow", "ddim", 0.0, labels))[1]
    assert abs(float((CLASSES[free] == 0).double().mean()) - 0.5) < 0.03  # p(class 0) = 0.4 + 0.1
    strong = nearest(run("flow", "ddim", 4.0, labels))[1]
    assert float((CLASSES[strong] == 0).double().mean()) > 0.995


def test_combines_with_classifier_free_guidance():
    """With both, the noise estimate is CFG's combination minus scale * sigma * grad, in one denoiser."""
    obj = OBJECTIVES["ddpm"]
    net = lambda x, t, cond: x * cond[:, None]  # noqa: E731  (a condition-dependent toy network)
    x = torch.randn(5, 2, dtype=torch.float64)
    alpha, sigma = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    cond, null = torch.full((5,), 2.0, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    g = lambda x, t, a, s: torch.ones_like(x)  # noqa: E731
    _, eps_cfg = obj.denoiser(net, cond, null, guidance=1.5)(x, torch.tensor(3.0), alpha, sigma)
    x0, eps = obj.denoiser(net, cond, null, guidance=1.5, classifier_grad=g, classifier_scale=0.5)(
        x, torch.tensor(3.0), alpha, sigma)
    assert torch.allclose(eps, eps_cfg - 0.5 * sigma)
    assert torch.allclose(alpha * x0 + sigma * eps, x)  # still a point of the path


def test_sample_takes_classifier_guidance_and_names_a_missing_gradient():
    obj = OBJECTIVES["flow"]
    net = lambda x, t, cond: torch.zeros_like(x)  # noqa: E731
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    plain = sample(obj, net, noise, sampler="euler", steps=4)
    pushed = sample(obj, net, noise, sampler="euler", steps=4, classifier_scale=1.0,
                    classifier_grad=lambda x, t, a, s: torch.ones_like(x))
    assert float((pushed - plain).mean()) > 0.1
    with pytest.raises(ValueError, match="classifier_scale=2.0 needs a classifier gradient"):
        obj.denoiser(net, classifier_scale=2.0)
