import pytest
import torch
import torch.nn.functional as F

from diffpolicy.accel.conv1d import FastConv1d, FastConvTranspose1d


def float64_conv_inputs(length, kernel, channels_last, bias=True):
    """``x`` ``(3, 4, T)`` or channels-last ``(3, 4, 1, T)``, weight ``(5, 4, K)``, bias ``(5,)`` or None."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, length, dtype=torch.float64)
    if channels_last:
        x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(5, 4, kernel, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    return x.requires_grad_(), w.requires_grad_(), b.requires_grad_() if bias else None


def torch_conv(x, w, b, padding):
    """torch's convolution of ``(B, C, T)`` or ``(B, C, 1, T)``."""
    if x.ndim == 4:
        return F.conv2d(x, w.unsqueeze(2), b, padding=(0, padding))
    return F.conv1d(x, w, b, padding=padding)


def assert_same_values_and_grads(out, ref, inputs):
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 1), (5, 1), (3, 2)])
@pytest.mark.parametrize("batch", [1, 3, 64])  # 64 x 16 rows takes torch's own convolution path
def test_matrix_product_conv_equals_torch_conv(kernel, stride, batch):
    torch.manual_seed(0)
    conv = FastConv1d(12, 20, kernel, stride, padding=kernel // 2)
    x = torch.randn(batch, 12, 16, requires_grad=True)
    ref = torch.nn.functional.conv1d(x, conv.weight, conv.bias, stride, padding=kernel // 2)
    assert_same_values_and_grads(conv(x), ref, (x, conv.weight, conv.bias))


@pytest.mark.parametrize("length", [1, 2, 4, 7])  # 1, 2: some taps never meet the input
@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])  # (B, C, T) or the trunk's (B, C, 1, T)
def test_tap_weight_grad_conv_matches_torch_gradients(length, kernel, bias, channels_last):
    from diffpolicy.accel.conv1d import TapWeightGradConv1d

    x, w, b = float64_conv_inputs(length, kernel, channels_last, bias)
    inputs = (x, w, b) if bias else (x, w)
    assert torch.autograd.gradcheck(lambda *a: TapWeightGradConv1d.apply(a[0], a[1], a[2] if bias else None,
                                                                         kernel // 2), inputs)
    # the weight gradient alone (an input without grad, as in the U-Net's first layer), against torch's conv
    xd = x.detach()
    out = TapWeightGradConv1d.apply(xd, w, b, kernel // 2)
    ref = torch_conv(xd, w, b, kernel // 2)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    params = (w, b) if bias else (w,)
    for a, r in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("channels_last", [False, True])
def test_large_training_inputs_take_the_tap_weight_gradient_where_it_pays(channels_last):
    from diffpolicy.accel.conv1d import GEMM_CONV_MAX_ROWS, tap_weight_grad_pays

    torch.manual_seed(0)
    conv = FastConv1d(256, 20, 5, padding=2)
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
    narrow = FastConv1d(128, 20, 5, padding=2)  # taps in bf16 only
    assert type(narrow(x[:, :128]).grad_fn).__name__ != "TapWeightGradConv1dBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(narrow(x[:, :128]).grad_fn).__name__ == "TapWeightGradConv1dBackward"


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_matrix_product_transposed_conv_equals_torch(batch):
    torch.manual_seed(0)
    up = FastConvTranspose1d(12, 20, 4, 2, 1)  # the U-Net's upsampling: length T -> 2 T
    x = torch.randn(batch, 12, 8, requires_grad=True)
    ref = torch.nn.functional.conv_transpose1d(x, up.weight, up.bias, 2, 1)
    out = up(x)
    assert out.shape == (batch, 20, 16)
    assert_same_values_and_grads(out, ref, (x, up.weight, up.bias))


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("length", [1, 3, 4, 13])  # 3, 13: a last tile past the end; 1: most taps in padding
@pytest.mark.parametrize("channels_last", [False, True])
def test_winograd_conv_matches_torch_conv_and_gradients(kernel, length, channels_last):
    from diffpolicy.accel.conv1d import WinogradConv1d

    x, w, b = float64_conv_inputs(length, kernel, channels_last)
    assert torch.autograd.gradcheck(WinogradConv1d.apply, (x, w, b))
    out, ref = WinogradConv1d.apply(x, w, None), torch_conv(x, w, None, kernel // 2)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, (x, w), g), torch.autograd.grad(ref, (x, w), g)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_winograd_float32_error_stays_near_a_direct_convolution():
    # The transforms scale by up to 2^4 and 1/2^4: float32 rounding grows, but must stay a few times torch's own.
    from diffpolicy.accel.conv1d import WinogradConv1d

    torch.manual_seed(0)
    x = torch.randn(16, 256, 8, requires_grad=True)
    w = (torch.randn(256, 256, 5) / 36).requires_grad_()
    g = torch.randn(16, 256, 8)
    exact = [t.detach().double().requires_grad_() for t in (x, w)]
    ref = F.conv1d(*exact, padding=2)
    ref_grads = torch.autograd.grad(ref, exact, g.double())

    def rel_errors(out):
        grads = torch.autograd.grad(out, (x, w), g)
        return [((a.double() - r).norm() / r.norm()).item() for a, r in zip((out, *grads), (ref, *ref_grads))]

    ours, torchs = rel_errors(WinogradConv1d.apply(x, w, None)), rel_errors(F.conv1d(x, w, padding=2))
    for a, t in zip(ours, torchs):
        assert a < max(8 * t, 2e-6), (ours, torchs)


def test_large_float32_inputs_take_winograd_where_it_pays():
    from diffpolicy.accel.conv1d import winograd_pays

    f32 = torch.float32
    assert winograd_pays(256, 256, 5, 4, f32, 256) and winograd_pays(1024, 1024, 5, 16, torch.float64, 16)
    assert not winograd_pays(64, 64, 5, 16, f32, 256)  # even with oneDNN there
    assert not winograd_pays(1024, 1024, 5, 2, f32, 256)  # 8 products for 4 taps that meet the input
    assert not winograd_pays(256, 256, 5, 8, torch.bfloat16, 256) and not winograd_pays(256, 256, 9, 8, f32, 256)
    # the kernel's transform at every call needs enough rows: batched evaluation with 10 environments keeps oneDNN
    assert not winograd_pays(256, 256, 5, 4, f32, 10) and not winograd_pays(128, 128, 5, 8, f32, 64)
    torch.manual_seed(0)
    conv = FastConv1d(128, 128, 5, padding=2)
    x = torch.randn(128, 128, 8, requires_grad=True)
    out = conv(x)
    assert type(out.grad_fn).__name__ == "WinogradConv1dBackward"
    ref, params = F.conv1d(x, conv.weight, conv.bias, padding=2), (x, conv.weight, conv.bias)
    g = torch.randn_like(ref)
    for a, r in zip((out, *torch.autograd.grad(out, params, g)), (ref, *torch.autograd.grad(ref, params, g))):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5 * r.abs().max().item())  # weight grads reach 130
    with torch.no_grad():  # batched evaluation takes it too
        torch.testing.assert_close(conv(x), F.conv1d(x, conv.weight, conv.bias, padding=2), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # not in bf16: the transforms would lose its few digits
        out = conv(x)
    assert out.dtype == torch.bfloat16 and type(out.grad_fn).__name__ != "WinogradConv1dBackward"
    assert type(conv(x[:2]).grad_fn).__name__ != "WinogradConv1dBackward"  # 16 positions: the batch-1 path
    assert type(FastConv1d(128, 128, 5, padding=1)(x).grad_fn).__name__ != "WinogradConv1dBackward"  # not 'same'
