"""policy.log_likelihood: the action-chunk density of the probability-flow ODE, in dataset units."""

import pytest
import torch

from diffpolicy.core.normalize import Normalizer
from diffpolicy.core.objectives import DDPM, FlowMatching
from diffpolicy.nets.encoders import ObservationEncoder
from diffpolicy.nets.transformer1d import TransformerDenoiser
from diffpolicy.policy.diffusion import DiffusionPolicy

OBJECTIVES = {"flow": lambda: FlowMatching(), "ddpm_v": lambda: DDPM(100, prediction="v_prediction", clip_x0=None)}


def small_policy(objective, horizon=2, action_dim=1):
    """A transformer policy with random weights: an arbitrary smooth flow, whose density must still normalise."""
    torch.manual_seed(0)
    norm = Normalizer.fit({"state": torch.randn(50, 4), "action": 3 * torch.randn(50, action_dim) + 1},
                          {"state": "minmax", "action": "minmax"})
    enc = ObservationEncoder({"state": (4,)}, [], 2)
    net = TransformerDenoiser(action_dim, enc.out_dim, 2, horizon, d_model=32, n_layers=2, n_heads=4,
                              time_embed_dim=32)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    return DiffusionPolicy(norm, enc, objective, net, action_dim=action_dim, horizon=horizon, n_obs_steps=2,
                           n_action_steps=1, sampler="euler", steps=4).eval()


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_chunk_density_integrates_to_one_in_dataset_units(objective):
    """Two-dimensional chunks (horizon 2, one action dimension): a Riemann sum over a grid covering normalised
    [-5, 5]^2, in dataset units (the normaliser's Jacobian included)."""
    policy = small_policy(OBJECTIVES[objective]())
    scale, offset = (float(v) for v in policy.normalizer.params("action"))
    g = torch.linspace((-5 - offset) / scale, (5 - offset) / scale, 50)
    a, b = torch.meshgrid(g, g, indexing="ij")
    actions = torch.stack([a.flatten(), b.flatten()], 1)[:, :, None]
    obs = {"state": torch.randn(1, 2, 4, generator=torch.Generator().manual_seed(1)).expand(len(actions), 2, 4)}
    log_p = policy.log_likelihood(obs, actions, steps=4)
    mass = float(log_p.exp().sum()) * float(g[1] - g[0]) ** 2
    assert abs(mass - 1) < 0.02, mass


def test_hutchinson_estimate_is_unbiased_for_a_unet_policy():
    from test_policy_sampling import tiny_policy
    policy = tiny_policy(FlowMatching())
    obs = {"state": torch.randn(64, 2, 4, generator=torch.Generator().manual_seed(2))}
    actions = torch.randn(64, 8, 2, generator=torch.Generator().manual_seed(3))
    exact = policy.log_likelihood(obs, actions, steps=2)
    est = policy.log_likelihood(obs, actions, steps=2, trace="hutchinson", probes=4,
                                generator=torch.Generator().manual_seed(4))
    diff = est - exact
    assert float(diff.abs().max()) > 0
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / 8 + 1e-6


def test_bad_inputs_are_named():
    policy = small_policy(FlowMatching())
    obs = {"state": torch.randn(3, 2, 4)}
    with pytest.raises(ValueError, match=r"actions have shape \(3, 4, 1\); expected \(B, 2, 1\)"):
        policy.log_likelihood(obs, torch.randn(3, 4, 1))
    with pytest.raises(ValueError, match="obs has batch 3 but actions have batch 5"):
        policy.log_likelihood(obs, torch.randn(5, 2, 1))
