"""The policy's sampling plan and its one sampling entry, sample_chunk."""

import dataclasses

import pytest
import torch

from diffpolicy.core.normalize import Normalizer
from diffpolicy.core.objectives import DDPM, FlowMatching
from diffpolicy.core.samplers import SAMPLERS
from diffpolicy.nets.encoders import ObservationEncoder
from diffpolicy.nets.transformer1d import TransformerDenoiser
from diffpolicy.nets.unet1d import ConditionalUnet1D
from diffpolicy.policy.diffusion import DiffusionPolicy
from diffpolicy.policy.sampling import TimeTable


def tiny_net(denoiser: str, cond_dim: int):
    """A small U-Net, or a transformer with random (not zero-initialised) gates and output, so it is not constant."""
    if denoiser == "unet":
        return ConditionalUnet1D(2, cond_dim, 0, (16, 32), 5, 4, 32)
    net = TransformerDenoiser(2, cond_dim, 2, 8, d_model=32, n_layers=2, n_heads=4, time_embed_dim=32)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    return net


def tiny_policy(objective, denoiser="unet"):
    torch.manual_seed(0)
    norm = Normalizer.fit({"state": torch.randn(50, 4), "action": torch.randn(50, 2)},
                          {"state": "minmax", "action": "minmax"})
    enc = ObservationEncoder({"state": (4,)}, [], 2)
    net = tiny_net(denoiser, enc.out_dim)
    return DiffusionPolicy(norm, enc, objective, net, action_dim=2, horizon=8, n_obs_steps=2, n_action_steps=4,
                           sampler="euler", steps=4).eval()


OBJECTIVES = {"ddpm": lambda: DDPM(100, clip_x0=None), "flow": lambda: FlowMatching(sampling_shift=0.5)}


@pytest.mark.parametrize("denoiser", ["unet", "transformer"])
@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_samplers_call_the_network_only_at_the_plans_grid_times(objective, sampler, denoiser):
    # TimeTable looks rows up by exact time: every network call must be at one of the grid's model times.
    policy = tiny_policy(OBJECTIVES[objective](), denoiser)
    plan = policy.sampling_plan(sampler, 5)
    seen = []
    film = policy.net.time_film
    policy.net.time_film = lambda t: seen.append(t.clone()) or film(t)
    cond = torch.randn(3, policy.encoder.out_dim)
    mask = torch.zeros(3, 8, 2, dtype=torch.bool)
    mask[:, 1:3] = True
    with torch.no_grad():
        plain = policy.net.conditioned(cond)  # the per-step path, which records each step's times
        plan.fn(policy.objective.denoiser(plain), torch.randn(3, 8, 2), plan.schedule,
                generator=torch.Generator().manual_seed(0), mask=mask, known=torch.zeros(3, 8, 2))
    grid = set(plan.schedule.model_time[:-1].tolist())
    assert seen and all(set(t.tolist()) <= grid for t in seen)


@pytest.mark.parametrize("denoiser", ["unet", "transformer"])
@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_cached_time_table_gives_the_same_chunks(objective, denoiser):
    policy = tiny_policy(OBJECTIVES[objective](), denoiser)
    cond, noise = torch.randn(2, policy.encoder.out_dim), torch.randn(2, 8, 2)
    with torch.no_grad():
        a = policy.sample_chunk(cond, policy.sampling_plan("heun", 3), noise=noise)
        b = policy.sample_chunk(cond, policy.sampling_plan("heun", 3, time_table=True), noise=noise)
        c = policy.sample_chunk(cond, policy.sampling_plan("heun", 4, time_table=True), noise=noise)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("denoiser", ["unet", "transformer"])
def test_time_table_rows_match_the_per_step_time_film(denoiser):
    net = tiny_net(denoiser, 6)
    times = torch.tensor([90.0, 60.0, 30.0, 0.0, 60.0], dtype=torch.float64)  # model times, float64, one repeat
    table = TimeTable(net, times)
    with torch.no_grad():
        for t in (60.0, 0.0, 90.0):  # any order: rows are found by value
            tt = torch.full((3,), t)
            torch.testing.assert_close(table(tt), net.time_film(tt), rtol=1e-5, atol=1e-6)


def test_plan_settings_are_checked_and_default_to_the_config():
    ddpm, flow = tiny_policy(DDPM(100, spacing="trailing")), tiny_policy(FlowMatching(sampling_shift=0.5))
    plan = flow.sampling_plan()
    assert (plan.sampler, plan.steps, plan.shift, plan.spacing) == ("euler", 4, 0.5, None)
    assert ddpm.sampling_plan("ddim", 8).spacing == "trailing"
    assert flow.sampling_plan(shift=2.0).shift == 2.0
    with pytest.raises(ValueError, match=r"unknown sampler 'eulr'; expected one of \['ddim', 'ddpm'"):
        flow.sampling_plan("eulr")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps must be a positive int"):
            flow.sampling_plan("euler", bad)
    with pytest.raises(ValueError, match="shift=0.3 sets a flow-matching policy's time grid; this is a DDPM policy"):
        ddpm.sampling_plan(shift=0.3)
    with pytest.raises(ValueError, match="spacing=leading sets a DDPM policy's timesteps; this is a flow-matching"):
        flow.sampling_plan(spacing="leading")
    with pytest.raises(ValueError, match="unknown timestep spacing 'even'"):
        ddpm.sampling_plan(spacing="even")
    with pytest.raises(ValueError, match="flow sampling shift must be > 0"):
        flow.sampling_plan(shift=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):  # plans are replaced whole, never changed
        plan.steps = 8
    assert flow.objective.sampling_shift == 0.5  # a plan's grid never changes the objective


def test_predict_action_takes_a_plan_or_its_keywords():
    policy = tiny_policy(FlowMatching())
    obs = {"state": torch.randn(2, 2, 4)}
    a = policy.predict_action(obs, torch.Generator().manual_seed(0), sampler="heun", steps=2)["action_pred"]
    b = policy.predict_action(obs, torch.Generator().manual_seed(0), plan=policy.sampling_plan("heun", 2))
    torch.testing.assert_close(a, b["action_pred"])
    assert b["action"].shape == (2, 4, 2)
