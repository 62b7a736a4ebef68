"""Sampler options: event shapes, dtypes, generators, guidance, inpainting, and errors."""

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from diffpolicy.core.objectives import DDPM, FlowMatching, split_prediction
from diffpolicy.core.samplers import SAMPLERS, sample
from diffpolicy.core.schedules import SamplingSchedule

OBJECTIVES = [DDPM(100), DDPM(100, prediction="v_prediction"), FlowMatching()]
NAMES = sorted(SAMPLERS)


def smooth_net(x, t, cond=None):
    """A stand-in network that depends on x, t and (if given) the condition."""
    c = 0.0 if cond is None else cond.reshape(cond.shape[0], *[1] * (x.ndim - 1))
    mix = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)  # couples entries, as a real network does
    return torch.tanh(0.5 * x + 0.3 * mix + 0.01 * t.reshape(-1, *[1] * (x.ndim - 1)) + c)


@pytest.mark.parametrize("objective", OBJECTIVES, ids=["ddpm_eps", "ddpm_v", "flow"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(3, 16, 2), (2, 3, 8, 8)], ids=["chunk", "image"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_reproducibility(objective, name, shape, dtype):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(shape, generator=g, dtype=dtype)
        return sample(objective, smooth_net, noise, sampler=name, steps=5, generator=g)

    a, b, c = run(0), run(0), run(1)
    assert a.shape == shape and a.dtype == dtype and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("objective", OBJECTIVES, ids=["ddpm_eps", "ddpm_v", "flow"])
@pytest.mark.parametrize("name", NAMES)
def test_inpainted_entries_equal_known_values_exactly(objective, name):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 16, 2, generator=g)
    known = torch.randn(4, 16, 2, generator=g)
    mask = torch.zeros(4, 16, 2, dtype=torch.bool)
    mask[:, :5] = True  # e.g. the committed prefix of an action chunk
    x = sample(objective, smooth_net, noise, sampler=name, steps=4, mask=mask, known=known, generator=g)
    assert torch.equal(x[mask], known[mask])
    free = sample(objective, smooth_net, noise, sampler=name, steps=4, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(x[~mask], free[~mask]), "the constraint should influence the free entries"


def test_guidance_combines_conditional_and_null_outputs():
    obj = FlowMatching()
    x, t = torch.randn(5, 3), torch.tensor(400.0)
    cond, null = torch.full((5,), 0.7), torch.zeros(1)
    alpha, sigma = torch.tensor(0.6), torch.tensor(0.4)
    for w in (0.0, 1.0, 3.0):
        x0, eps = obj.denoiser(smooth_net, cond, null_cond=null, guidance=w)(x, t, alpha, sigma)
        tt = t.expand(5)
        out_c, out_u = smooth_net(x, tt, cond), smooth_net(x, tt, null.expand(5))
        ref = split_prediction(out_c + w * (out_c - out_u), x, alpha, sigma, "velocity")
        torch.testing.assert_close((x0, eps), ref)


def test_guidance_changes_samples_and_needs_a_null_condition():
    obj = DDPM(100)
    noise = torch.randn(4, 8, 2, generator=torch.Generator().manual_seed(0))
    cond = torch.ones(4)
    plain = sample(obj, smooth_net, noise, cond, steps=5)
    guided = sample(obj, smooth_net, noise, cond, steps=5, guidance=2.0, null_cond=torch.zeros(1))
    assert not torch.allclose(plain, guided)
    with pytest.raises(ValueError, match="null condition"):
        sample(obj, smooth_net, noise, cond, steps=5, guidance=2.0)


def test_bad_arguments_have_clear_errors():
    obj = DDPM(100)
    noise = torch.randn(2, 8, 2)
    with pytest.raises(ValueError, match="unknown sampler 'rk4'"):
        sample(obj, smooth_net, noise, sampler="rk4")
    with pytest.raises(ValueError, match="steps=101 is out of range.*1..100"):
        sample(obj, smooth_net, noise, steps=101)
    with pytest.raises(ValueError, match="mask without known"):
        sample(obj, smooth_net, noise, mask=torch.ones(2, 8, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown timestep spacing 'middle'"):
        obj.sampling_schedule(4, spacing="middle")


def _trace(sampler, net):
    """Trace a full sample with fake tensors: data-dependent branching raises, ``.item()`` leaves a node."""
    obj = DDPM(100)
    sch = obj.sampling_schedule(3)
    run = lambda n, a, s, t: SAMPLERS[sampler](obj.denoiser(net), n, SamplingSchedule(a, s, t))  # noqa: E731
    gm = make_fx(run, tracing_mode="fake")(torch.randn(2, 8, 2), sch.alpha, sch.sigma, sch.model_time)
    return [str(n.target) for n in gm.graph.nodes]


@pytest.mark.parametrize("name", NAMES)
def test_sampling_loop_has_no_host_sync(name):
    targets = _trace(name, smooth_net)
    assert not any("_local_scalar_dense" in t for t in targets), "a .item() in the loop syncs host and device"


def test_sync_detector_catches_item_and_branching():
    assert any("_local_scalar_dense" in t for t in _trace("ddim", lambda x, t, c: x * t[0].item()))
    with pytest.raises(Exception, match="data-dependent"):
        _trace("ddim", lambda x, t, c: x if x.sum() > 0 else -x)
