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


def test_the_plain_net_is_torch_modules():
    # what a reader compares with the paper: nn.Conv1d / nn.ConvTranspose1d, no CPU kernels
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=6, down_dims=(16, 32), n_groups=4)
    convs = [type(m) for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert set(convs) == {torch.nn.Conv1d, torch.nn.ConvTranspose1d}
