import pytest
import torch

from diffpolicy.core.compile import compile_unet
from diffpolicy.core.objectives import DDPM
from diffpolicy.core.samplers import ddim
from diffpolicy.nets.unet1d import ConditionalUnet1D


def test_compiled_unet_matches_eager_in_forward_sampling_and_gradients():
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=2, global_cond_dim=4, down_dims=(8, 16), n_groups=4, time_embed_dim=16)
    compiled = compile_unet(net)
    x, t, g = torch.randn(2, 8, 2), torch.tensor([3.0, 70.0]), torch.randn(2, 4)
    torch.testing.assert_close(compiled(x, t, g), net(x, t, g), rtol=1e-4, atol=1e-5)

    obj = DDPM(100)
    sched = obj.sampling_schedule(4, "leading")
    with torch.inference_mode():
        eager = ddim(obj.denoiser(net.conditioned(g, times=sched.model_time[:-1])), x, sched)
        fast = ddim(obj.denoiser(compiled.conditioned(g, times=sched.model_time[:-1])), x, sched)
    torch.testing.assert_close(fast, eager, rtol=1e-4, atol=1e-5)

    # Training through the compiled forward reaches the wrapped network's parameters.
    grads = []
    for model in (net, compiled):
        net.zero_grad()
        obj.loss(model, x, g, generator=torch.Generator().manual_seed(1)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)


def test_compile_rejects_bad_arguments():
    net = ConditionalUnet1D(action_dim=2, down_dims=(8, 16), n_groups=4)
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        compile_unet(net, mode="fast")
    with pytest.raises(ValueError, match="freeze=True .* mode='max-autotune-no-cudagraphs'"):
        compile_unet(net, mode="max-autotune-no-cudagraphs", freeze=True)
    with pytest.raises(TypeError, match="expects a ConditionalUnet1D"):
        compile_unet(torch.nn.Linear(2, 2))
