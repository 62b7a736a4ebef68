"""The transformer denoiser: shapes, conditioning paths, causality, errors, and that it learns."""

import pytest
import torch

from diffpolicy.core.objectives import FlowMatching
from diffpolicy.nets.transformer1d import TransformerDenoiser


def random_net(causal=True, horizon=8, cond_dim=6, tokens=2, seed=0):
    """A small transformer with random gates and output (zero-initialised ones make it the constant 0)."""
    torch.manual_seed(seed)
    net = TransformerDenoiser(3, cond_dim, tokens, horizon, d_model=32, n_layers=2, n_heads=4, time_embed_dim=32,
                              dropout=0.0, causal=causal)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    return net.eval()


def test_starts_as_zero_and_keeps_shapes():
    net = TransformerDenoiser(3, 6, 2, 8, d_model=32, n_layers=2, n_heads=4, time_embed_dim=32)
    out = net(torch.randn(5, 8, 3), torch.rand(5), torch.randn(5, 6))
    assert out.shape == (5, 8, 3) and not out.any()  # adaLN-Zero: every block the identity, output layer zero


def test_conditioned_view_equals_the_plain_forward_and_broadcasts_one_condition():
    net = random_net()
    x, t, cond = torch.randn(4, 8, 3), torch.rand(4), torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(net.conditioned(cond)(x, t), net(x, t, cond), rtol=1e-5, atol=1e-6)
        one = net.conditioned(cond[:1])(x, t)  # one observation, four noise draws
        torch.testing.assert_close(one, net(x, t, cond[:1].expand(4, -1)), rtol=1e-5, atol=1e-6)


def test_causal_attention_hides_later_actions_and_every_output_sees_the_observation():
    x, t, cond = torch.randn(2, 8, 3), torch.rand(2), torch.randn(2, 6)
    later = x.clone()
    later[:, 5:] += 1.0
    with torch.no_grad():
        causal, full = random_net(causal=True), random_net(causal=False)
        a, b = causal(x, t, cond), causal(later, t, cond)
        torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=0)
        assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3
        assert (full(x, t, cond)[:, :5] - full(later, t, cond)[:, :5]).abs().max() > 1e-3
        moved = cond.clone()
        moved[:, :3] += 1.0  # the first observation token only
        assert ((causal(x, t, moved) - a).abs().amax(dim=-1) > 1e-4).all()  # every action token attends to it


def test_shorter_chunks_use_the_first_positions_and_bad_inputs_are_named():
    net = random_net(horizon=8)
    with torch.no_grad():
        assert net(torch.randn(2, 5, 3), torch.rand(2), torch.randn(2, 6)).shape == (2, 5, 3)
    with pytest.raises(ValueError, match="horizon 9 does not fit a transformer built for chunks of up to 8 steps"):
        net(torch.randn(2, 9, 3), torch.rand(2), torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"global_cond: expected shape \(B, 6\), got \(2, 4\)"):
        net(torch.randn(2, 8, 3), torch.rand(2), torch.randn(2, 4))
    with pytest.raises(ValueError, match="global_cond: expected shape"):
        net(torch.randn(2, 8, 3), torch.rand(2))
    with pytest.raises(ValueError, match="observation embedding \\(7\\) must split into 2 equal tokens"):
        TransformerDenoiser(3, 7, 2)
    with pytest.raises(ValueError, match="d_model 30 is not divisible into 4 heads"):
        TransformerDenoiser(3, 6, 2, d_model=30, n_heads=4)


def test_learns_a_conditional_chunk_from_zero_init():
    """Flow matching on a fixed set of chunks that depend on the condition: the loss falls well below its start
    and every parameter (the zero-initialised gates and output included) has moved."""
    torch.manual_seed(0)
    net = TransformerDenoiser(3, 6, 2, 8, d_model=32, n_layers=2, n_heads=4, time_embed_dim=32, dropout=0.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cond = torch.randn(64, 6)
    chunks = torch.tanh(cond[:, :3, None] * torch.linspace(-1, 1, 8)).transpose(1, 2)  # (64, 8, 3)
    objective, opt = FlowMatching(), torch.optim.AdamW(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(150):
        loss = objective.loss(net, chunks, cond, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10, losses[::15]
    assert all(not torch.equal(before[k], v) for k, v in net.state_dict().items()), "a parameter never trained"
