"""Step-by-step agreement of our samplers with diffusers' schedulers, given the same model outputs.

Both sides see the same deterministic "network" ``f(x, t)``; we record the sample each side feeds to it at every step
and compare the trajectories. DDPM and DDIM run both sides in float64 on the same alphas_cumprod table (diffusers
builds it in float32; we promote it) and agree to 1e-9. DPM-Solver and flow-Euler: diffusers casts samples to
float32 inside ``step``, so there the tolerance is 1e-5 absolute plus 1e-5 relative.
"""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from diffpolicy.core.objectives import DDPM, FlowMatching
from diffpolicy.core.samplers import ddim, ddpm, dpmpp_2m, euler
from diffpolicy.core.schedules import flow_schedule_from_times, make_betas

TOL = 1e-5
TOL64 = 1e-9
SHAPE = (3, 4, 2)


def fake_net(x, t):
    """A fixed smooth function of (x, t) standing in for a trained network."""
    return torch.tanh(0.7 * x + 0.3 * torch.sin(t.reshape(-1, *[1] * (x.ndim - 1)) / 97.0)) * 0.9


def recording_denoiser(objective, log):
    def net(x, t, cond):
        log.append(x.clone())
        return fake_net(x, t)

    return objective.denoiser(net)


def float64_tables(scheduler):
    """Promote a diffusers scheduler's tables to float64 so the comparison measures the math, not float32."""
    for name in ("betas", "alphas", "alphas_cumprod", "final_alpha_cumprod", "one"):
        if isinstance(getattr(scheduler, name, None), torch.Tensor):
            setattr(scheduler, name, getattr(scheduler, name).double())
    return scheduler


def run_diffusers(scheduler, x, steps, **step_kwargs):
    log = []
    for t in scheduler.timesteps:
        log.append(x.clone())
        out = fake_net(x, torch.full((x.shape[0],), float(t), dtype=x.dtype))
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return log, x


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_beta_tables_match_diffusers(beta_schedule):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule).betas.double()
    assert torch.allclose(make_betas(beta_schedule, 1000), ref, atol=1e-7)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 4, 10, 50])
def test_ddim_matches_diffusers(prediction, spacing, steps):
    K = 1000
    obj = DDPM(K, "squaredcos_cap_v2", prediction=prediction, clip_x0=None)
    obj.alphas_cumprod = float64_tables(DDPMScheduler(K, beta_schedule="squaredcos_cap_v2")).alphas_cumprod
    ref = DDIMScheduler(num_train_timesteps=K, beta_schedule="squaredcos_cap_v2", prediction_type=prediction,
                        clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing)
    float64_tables(ref)
    ref.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref_log, ref_x = run_diffusers(ref, x, steps, eta=0.0)
    log = []
    ours = ddim(recording_denoiser(obj, log), x, obj.sampling_schedule(steps, spacing))
    assert len(log) == len(ref_log) == steps
    for a, b in zip(log, ref_log):
        torch.testing.assert_close(a, b, atol=TOL64, rtol=TOL64)
    torch.testing.assert_close(ours, ref_x, atol=TOL64, rtol=TOL64)


@pytest.mark.parametrize("keep_noise", [False, True])
@pytest.mark.parametrize("steps", [1, 4, 10])
def test_clipped_ddim_matches_diffusers(keep_noise, steps):
    """x0 clipped to [-1, 1]; the noise re-derived from it (``use_clipped_model_output=True``) or kept as the network
    gave it (diffusers' default, Diffusion Policy's inference)."""
    K = 100
    obj = DDPM(K, "squaredcos_cap_v2", clip_x0=1.0, clip_keeps_noise=keep_noise)
    obj.alphas_cumprod = float64_tables(DDPMScheduler(K, beta_schedule="squaredcos_cap_v2")).alphas_cumprod
    ref = DDIMScheduler(num_train_timesteps=K, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                        set_alpha_to_one=True, timestep_spacing="leading")
    float64_tables(ref)
    ref.set_timesteps(steps)
    x = 3 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref_log, ref_x = run_diffusers(ref, x, steps, eta=0.0, use_clipped_model_output=not keep_noise)
    _, other_x = run_diffusers(ref, x, steps, eta=0.0, use_clipped_model_output=keep_noise)
    log = []
    ours = ddim(recording_denoiser(obj, log), x, obj.sampling_schedule(steps, "leading"))
    for a, b in zip(log, ref_log):
        torch.testing.assert_close(a, b, atol=TOL64, rtol=TOL64)
    torch.testing.assert_close(ours, ref_x, atol=TOL64, rtol=TOL64)
    if steps > 1:  # the two conventions differ once a clipped step is followed by another
        assert (ours - other_x).abs().max() > 1e-3


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("steps", [10, 100])
def test_ddpm_ancestral_matches_diffusers(clip, steps):
    K = 100
    obj = DDPM(K, "squaredcos_cap_v2", clip_x0=clip)
    obj.alphas_cumprod = float64_tables(DDPMScheduler(K, beta_schedule="squaredcos_cap_v2")).alphas_cumprod
    ref = DDPMScheduler(num_train_timesteps=K, beta_schedule="squaredcos_cap_v2", clip_sample=clip is not None,
                        clip_sample_range=clip or 1.0, variance_type="fixed_small")
    float64_tables(ref)
    ref.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref_log, ref_x = run_diffusers(ref, x, steps, generator=torch.Generator().manual_seed(7))
    log = []
    ours = ddpm(recording_denoiser(obj, log), x, obj.sampling_schedule(steps, "leading"),
                generator=torch.Generator().manual_seed(7))
    for a, b in zip(log, ref_log):
        torch.testing.assert_close(a, b, atol=TOL64, rtol=TOL64)
    torch.testing.assert_close(ours, ref_x, atol=TOL64, rtol=TOL64)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [2, 5, 10, 20])
def test_dpmpp_2m_matches_diffusers(prediction, steps):
    K = 1000
    obj = DDPM(K, "squaredcos_cap_v2", prediction=prediction, clip_x0=None)
    ref = DPMSolverMultistepScheduler(num_train_timesteps=K, beta_schedule="squaredcos_cap_v2",
                                      prediction_type=prediction, algorithm_type="dpmsolver++", solver_order=2,
                                      timestep_spacing="linspace", final_sigmas_type="zero")
    ref.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref_log, ref_x = run_diffusers(ref, x, steps)
    log = []
    ours = dpmpp_2m(recording_denoiser(obj, log), x, obj.sampling_schedule(steps, "linspace"))
    for a, b in zip(log, ref_log):
        torch.testing.assert_close(a, b.double(), atol=TOL, rtol=TOL)
    torch.testing.assert_close(ours, ref_x.double(), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("steps", [1, 4, 10, 25])
@pytest.mark.parametrize("shift", [1.0, 3.0, 1 / 3])
def test_flow_euler_matches_diffusers(steps, shift):
    obj = FlowMatching(sampling_shift=shift)
    sched = obj.sampling_schedule(steps)  # the objective's configured shift
    ref_sigmas = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref_sigmas.set_timesteps(sigmas=torch.linspace(1, 0, steps + 1)[:-1].tolist())
    # diffusers applies the same SD3 shift to a uniform grid
    torch.testing.assert_close(sched.sigma, ref_sigmas.sigmas.double(), atol=1e-6, rtol=1e-6)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    ref.set_timesteps(sigmas=sched.sigma[:-1].tolist())
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref_log, ref_x = run_diffusers(ref, x, steps)
    log = []
    ours = euler(recording_denoiser(obj, log), x, flow_schedule_from_times(sched.sigma))
    for a, b in zip(log, ref_log):
        torch.testing.assert_close(a, b.double(), atol=TOL, rtol=TOL)
    torch.testing.assert_close(ours, ref_x.double(), atol=TOL, rtol=TOL)
