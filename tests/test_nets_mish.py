import pytest
import torch
import torch.nn.functional as F

from diffpolicy.nets.mish import MIN_ELEMENTS, Mish, MishFunction


def test_mish_function_matches_torch_values_and_gradients():
    x = torch.cat([torch.linspace(-60, 60, 2001), torch.randn(500) * 3]).double().requires_grad_()
    assert torch.autograd.gradcheck(MishFunction.apply, (x[:50].detach().clone().requires_grad_(),))
    xf = x.detach().float().requires_grad_()
    out, ref = MishFunction.apply(xf), F.mish(xf)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, xf, g)[0], torch.autograd.grad(ref, xf, g)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_mish_module_takes_the_formula_only_for_large_training_tensors(channels_last):
    x = torch.randn(64, 64, 1, MIN_ELEMENTS // 4096 + 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out = Mish()(x)
    assert type(out.grad_fn).__name__ == "MishFunctionBackward"
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out, F.mish(x), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        assert Mish()(x).grad_fn is None
    small = torch.randn(4, 16, requires_grad=True)
    assert type(Mish()(small).grad_fn).__name__ != "MishFunctionBackward"
