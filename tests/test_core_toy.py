"""A tiny MLP learns a 2-D mixture of 8 Gaussians under each objective and recovers every mode."""

import pytest
import torch

from diffpolicy.core.objectives import DDPM, FlowMatching
from diffpolicy.core.samplers import sample


@pytest.mark.parametrize("objective,sampler", [(DDPM(100, prediction="epsilon"), "ddim"),
                                               (DDPM(100, prediction="v_prediction"), "dpmpp_2m"),
                                               (FlowMatching(time_sampling="logit_normal"), "euler")])
def test_every_mode_is_recovered(toy_mixture, objective, sampler):
    centers, ToyNet, draw = toy_mixture
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = ToyNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3000)
    for _ in range(3000):
        loss = objective.loss(net, draw(256, g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        x = sample(objective, net, torch.randn(4000, 2, generator=g), sampler=sampler, steps=20)
    dist, mode = torch.cdist(x, centers).min(1)
    share = torch.bincount(mode[dist < 0.25], minlength=8).float() / len(x)
    assert (dist < 0.25).float().mean() > 0.8, f"only {(dist < 0.25).float().mean():.2f} of samples near a mode"
    assert share.min() > 0.07, f"mode shares {share.tolist()} (expected ~0.125 each)"
