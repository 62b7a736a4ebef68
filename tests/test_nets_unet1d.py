import pytest
import torch

from diffpolicy.nets.unet1d import Conv1d, ConditionalUnet1D, ConvTranspose1d


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


def assert_same_values_and_grads(out, ref, inputs):
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 1), (5, 1), (3, 2)])
@pytest.mark.parametrize("batch", [1, 3, 64])  # 64 x 16 rows takes torch's own convolution path
def test_matrix_product_conv_equals_torch_conv(kernel, stride, batch):
    torch.manual_seed(0)
    conv = Conv1d(12, 20, kernel, stride, padding=kernel // 2)
    x = torch.randn(batch, 12, 16, requires_grad=True)
    ref = torch.nn.functional.conv1d(x, conv.weight, conv.bias, stride, padding=kernel // 2)
    assert_same_values_and_grads(conv(x), ref, (x, conv.weight, conv.bias))


@pytest.mark.parametrize("length", [1, 2, 4, 7])  # 1, 2: some taps never meet the input
@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])  # (B, C, T) or the trunk's (B, C, 1, T)
def test_tap_weight_grad_conv_matches_torch_gradients(length, kernel, bias, channels_last):
    from diffpolicy.nets.unet1d import TapWeightGradConv1d

    torch.manual_seed(0)
    x = torch.randn(3, 4, length, dtype=torch.float64)
    if channels_last:
        x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(5, 4, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True) if bias else None
    inputs = (x, w, b) if bias else (x, w)
    assert torch.autograd.gradcheck(lambda *a: TapWeightGradConv1d.apply(a[0], a[1], a[2] if bias else None,
                                                                         kernel // 2), inputs)
    # the weight gradient alone (an input without grad, as in the U-Net's first layer), against torch's conv
    xd = x.detach()
    out = TapWeightGradConv1d.apply(xd, w, b, kernel // 2)
    if channels_last:
        ref = torch.nn.functional.conv2d(xd, w.unsqueeze(2), b, padding=(0, kernel // 2))
    else:
        ref = torch.nn.functional.conv1d(xd, w, b, padding=kernel // 2)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    params = (w, b) if bias else (w,)
    for a, r in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("channels_last", [False, True])
def test_large_training_inputs_take_the_tap_weight_gradient_where_it_pays(channels_last):
    from diffpolicy.nets.unet1d import GEMM_CONV_MAX_ROWS, tap_weight_grad_pays

    torch.manual_seed(0)
    conv = Conv1d(256, 20, 5, padding=2)
    x = torch.randn(GEMM_CONV_MAX_ROWS, 256, 4)  # 4 x 128 positions: beyond the batch-1 path, length 4
    if channels_last:
        x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    f32, bf16 = torch.float32, torch.bfloat16
    assert tap_weight_grad_pays(256, 5, 4, f32) and not tap_weight_grad_pays(128, 5, 4, f32)
    assert tap_weight_grad_pays(128, 5, 4, bf16) and not tap_weight_grad_pays(64, 5, 8, bf16)
    assert not tap_weight_grad_pays(256, 5, 16, f32) and tap_weight_grad_pays(1024, 5, 16, f32)
    out = conv(x)
    assert type(out.grad_fn).__name__ == "TapWeightGradConv1dBackward"
    w4 = conv.weight.unsqueeze(2) if channels_last else conv.weight
    conv_ref = torch.nn.functional.conv2d if channels_last else torch.nn.functional.conv1d
    padding = (0, 2) if channels_last else 2
    ref = conv_ref(x, w4, conv.bias, padding=padding)
    assert_same_values_and_grads(out, ref, (x, conv.weight, conv.bias))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 training: same gradients as torch's conv in bf16
        out, ref = conv(x), conv_ref(x, w4, conv.bias, padding=padding)
    assert out.dtype == torch.bfloat16 and type(out.grad_fn).__name__ == "TapWeightGradConv1dBackward"
    g = torch.randn(out.shape)
    for a, r in zip(torch.autograd.grad(out, (x, conv.weight, conv.bias), g),
                    torch.autograd.grad(ref, (x, conv.weight, conv.bias), g)):
        assert a.dtype == r.dtype == torch.float32
        torch.testing.assert_close(a, r, rtol=0.02, atol=0.02 * r.abs().max().item())
    with torch.no_grad():  # inference keeps torch's own path
        assert conv(x).grad_fn is None
    narrow = Conv1d(128, 20, 5, padding=2)  # taps in bf16 only
    assert type(narrow(x[:, :128]).grad_fn).__name__ != "TapWeightGradConv1dBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(narrow(x[:, :128]).grad_fn).__name__ == "TapWeightGradConv1dBackward"


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_matrix_product_transposed_conv_equals_torch(batch):
    torch.manual_seed(0)
    up = ConvTranspose1d(12, 20, 4, 2, 1)  # the U-Net's upsampling: length T -> 2 T
    x = torch.randn(batch, 12, 8, requires_grad=True)
    ref = torch.nn.functional.conv_transpose1d(x, up.weight, up.bias, 2, 1)
    out = up(x)
    assert out.shape == (batch, 20, 16)
    assert_same_values_and_grads(out, ref, (x, up.weight, up.bias))


def test_channels_last_trunk_equals_the_plain_one():
    # 20 x 16 positions exceed GEMM_CONV_MAX_ROWS: with channels_last the trunk runs on (B, C, 1, T) tensors.
    from diffpolicy.nets.unet1d import GEMM_CONV_MAX_ROWS

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
