"""accelerate(net): the same U-Net with CPU convolution paths and trunk layout gives the plain net's outputs."""

from unittest import mock

import pytest
import torch

from diffpolicy.accel import accelerate, conv1d, is_accelerated
from diffpolicy.accel.unet1d import ChannelsLastUnet1D
from diffpolicy.nets.unet1d import ConditionalUnet1D


def plain_and_accelerated(channels_last=None, **kwargs):
    torch.manual_seed(0)
    plain = ConditionalUnet1D(**kwargs)
    fast = ConditionalUnet1D(**kwargs)
    fast.load_state_dict(plain.state_dict())
    return plain, accelerate(fast, channels_last=channels_last)


def values_and_grads(net, *inputs):
    out = net(*inputs)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    return out.detach(), torch.autograd.grad((out * weights).sum(), list(net.parameters()))


def test_accelerate_swaps_classes_and_keeps_the_state_dict():
    plain, fast = plain_and_accelerated(action_dim=2, global_cond_dim=6, down_dims=(16, 32), n_groups=4)
    assert is_accelerated(fast) and not is_accelerated(plain)
    assert isinstance(fast, ChannelsLastUnet1D)  # narrow nets take the channels-last trunk
    assert {type(m) for m in fast.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)} == \
        {conv1d.FastConv1d, conv1d.FastConvTranspose1d}
    assert list(fast.state_dict()) == list(plain.state_dict())
    wide = accelerate(ConditionalUnet1D(2, down_dims=(256, 512, 1024)))
    assert is_accelerated(wide) and not isinstance(wide, ChannelsLastUnet1D)  # measured slower above 256 channels


@pytest.mark.parametrize("batch", [1, 20])  # 1 x 16 rows: matrix-product paths; 20 x 16: the channels-last trunk
def test_accelerated_net_equals_the_plain_one(batch):
    # 256 channels at length 4: the channels-last trunk takes the tap weight gradient there (in bf16, and for
    # C_in K >= 2560 in float32)
    kwargs = dict(action_dim=2, global_cond_dim=6, local_cond_dim=3, down_dims=(16, 32, 256), n_groups=4)
    plain, fast = plain_and_accelerated(**kwargs)
    x, t = torch.randn(batch, 16, 2), torch.rand(batch) * 100
    g, loc = torch.randn(batch, 6), torch.randn(batch, 16, 3)
    (a, ga), (b, gb) = values_and_grads(fast, x, t, g, loc), values_and_grads(plain, x, t, g, loc)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_winograd_trunk_equals_torch_convolutions(channels_last):
    # A training batch at widths from 128 takes WinogradConv1d; values and gradients as with torch's convolutions.
    kwargs = dict(action_dim=2, global_cond_dim=6, down_dims=(128, 256), n_groups=8)
    plain, fast = plain_and_accelerated(channels_last, **kwargs)
    x, t, g = torch.randn(128, 8, 2), torch.rand(128) * 100, torch.randn(128, 6)
    apply, calls = conv1d.WinogradConv1d.apply, []
    with mock.patch.object(conv1d.WinogradConv1d, "apply", lambda *a: calls.append(1) or apply(*a)):
        a, ga = values_and_grads(fast, x, t, g)
    assert calls
    b, gb = values_and_grads(plain, x, t, g)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4 * v.abs().max().item() + 1e-6)


def test_accelerate_leaves_other_modules_alone():
    seq = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Conv2d(1, 1, 3))
    accelerate(seq)
    assert [type(m) for m in seq] == [torch.nn.Linear, torch.nn.Conv2d]
