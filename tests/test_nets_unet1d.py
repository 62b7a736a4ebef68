import pytest
import torch

from diffpolicy.nets.unet1d import ConditionalUnet1D


def test_shapes_and_time_sensitivity():
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=10, down_dims=(16, 32, 64), n_groups=4)
    x, g = torch.randn(3, 16, 2), torch.randn(3, 10)
    y = net(x, torch.tensor([1.0, 50.0, 99.0]), g)
    assert y.shape == (3, 16, 2)
    assert not torch.allclose(y, net(x, torch.tensor([2.0, 50.0, 99.0]), g))
    assert not torch.allclose(y, net(x, torch.tensor([1.0, 50.0, 99.0]), g + 1))


@pytest.mark.parametrize("horizon", [4, 8, 12, 16, 32])
def test_every_multiple_of_the_downsampling_works(horizon):
    net = ConditionalUnet1D(action_dim=3, global_cond_dim=0, down_dims=(8, 16, 32), n_groups=4)
    assert net(torch.randn(2, horizon, 3), torch.zeros(2)).shape == (2, horizon, 3)


@pytest.mark.parametrize("horizon", [6, 10, 15])
def test_bad_horizon_names_the_allowed_values(horizon):
    net = ConditionalUnet1D(action_dim=2, down_dims=(8, 16, 32), n_groups=4)
    with pytest.raises(ValueError, match=f"horizon {horizon} .* multiple of 4"):
        net(torch.randn(1, horizon, 2), torch.zeros(1))


def test_conditioned_fast_path_equals_forward():
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=6, down_dims=(16, 32), n_groups=4)
    x, g, t = torch.randn(4, 8, 2), torch.randn(4, 6), torch.full((4,), 7.0)
    torch.testing.assert_close(net.conditioned(g)(x, t), net(x, t, g), rtol=1e-6, atol=1e-6)


def test_conditioned_view_refuses_a_per_call_condition():
    # Classifier-free guidance passes (cond, null_cond) as one doubled batch; the view would drop it silently.
    from diffpolicy.core.objectives import FlowMatching
    from diffpolicy.core.samplers import sample

    net = ConditionalUnet1D(action_dim=2, global_cond_dim=6, down_dims=(16, 32), n_groups=4)
    g = torch.randn(2, 6)
    with pytest.raises(ValueError, match="for classifier-free guidance .* sample with the network itself"):
        sample(FlowMatching(), net.conditioned(g), torch.randn(2, 8, 2), g, sampler="euler", steps=2,
               guidance=1.0, null_cond=torch.zeros(2, 6))


def test_local_condition_is_used_and_required():
    net = ConditionalUnet1D(action_dim=2, local_cond_dim=3, down_dims=(16, 32), n_groups=4)
    x, loc = torch.randn(2, 8, 2), torch.randn(2, 8, 3)
    assert not torch.allclose(net(x, torch.zeros(2), local_cond=loc), net(x, torch.zeros(2), local_cond=loc + 1))
    with pytest.raises(ValueError, match="expects local_cond"):
        net(x, torch.zeros(2))


def test_wrong_global_condition_shape():
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=6, down_dims=(16, 32), n_groups=4)
    with pytest.raises(ValueError, match=r"global_cond: expected shape \(B, 6\), got \(2, 5\)"):
        net(torch.randn(2, 8, 2), torch.zeros(2), torch.randn(2, 5))
    with pytest.raises(ValueError, match="not divisible into 5 groups"):
        ConditionalUnet1D(action_dim=2, down_dims=(16, 32), n_groups=5)


def test_precomputed_time_table_matches_per_step_and_rejects_other_times():
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=6, down_dims=(16, 32), n_groups=4)
    x, g = torch.randn(3, 8, 2), torch.randn(3, 6)
    times = torch.tensor([90.0, 60.0, 30.0, 0.0, 60.0], dtype=torch.float64)  # model times, float64, one repeat
    fast = net.conditioned(g, times=times)
    for t in (60.0, 0.0, 90.0):  # any order: rows are found by value
        tt = torch.full((3,), t)
        torch.testing.assert_close(fast(x, tt), net(x, tt, g), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="not in times"):
        fast(x, torch.full((3,), 45.0))
    with pytest.raises(ValueError, match=r"times: expected the \(N,\) model times"):
        net.conditioned(g, times=times[None])


def test_channels_last_trunk_equals_the_plain_one():
    # 20 x 16 positions exceed GEMM_CONV_MAX_ROWS: with channels_last the trunk runs on (B, C, 1, T) tensors.
    from diffpolicy.nets.conv1d import GEMM_CONV_MAX_ROWS

    torch.manual_seed(0)
    # 256 channels at length 4: the channels-last trunk takes the tap weight gradient there
    kwargs = dict(action_dim=2, global_cond_dim=6, local_cond_dim=3, down_dims=(16, 32, 256), n_groups=4)
    nets = [ConditionalUnet1D(**kwargs, channels_last=flag) for flag in (True, False)]
    nets[1].load_state_dict(nets[0].state_dict())
    x, t = torch.randn(20, 16, 2), torch.rand(20) * 100
    g, loc = torch.randn(20, 6), torch.randn(20, 16, 3)
    assert x.shape[0] * x.shape[1] > GEMM_CONV_MAX_ROWS
    outs, grads = [], []
    for net in nets:
        out = net(x, t, g, loc)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([p.grad for p in net.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # the default: channels_last up to CHANNELS_LAST_MAX_WIDTH channels (where it was measured faster)
    assert ConditionalUnet1D(2, down_dims=(64, 128, 256)).channels_last
    assert not ConditionalUnet1D(2, down_dims=(256, 512, 1024)).channels_last


@pytest.mark.parametrize("channels_last", [False, True])
def test_winograd_trunk_equals_torch_convolutions(channels_last):
    # A training batch at widths from 128 takes WinogradConv1d; values and gradients as with torch's convolutions.
    from unittest import mock

    from diffpolicy.nets import conv1d

    torch.manual_seed(0)
    net = ConditionalUnet1D(2, global_cond_dim=6, down_dims=(128, 256), n_groups=8, channels_last=channels_last)
    x, t, g = torch.randn(128, 8, 2), torch.rand(128) * 100, torch.randn(128, 6)
    apply, results = conv1d.WinogradConv1d.apply, []
    for pays in (conv1d.winograd_pays, lambda *shape: False):
        calls = []
        with mock.patch.object(conv1d, "winograd_pays", pays), \
                mock.patch.object(conv1d.WinogradConv1d, "apply", lambda *a: calls.append(1) or apply(*a)):
            out = net(x, t, g)
            grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                        list(net.parameters()))
        results.append((out, grads, len(calls)))
    assert results[0][2] > 0 and results[1][2] == 0
    (a, ga, _), (b, gb, _) = results
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4 * v.abs().max().item() + 1e-6)
