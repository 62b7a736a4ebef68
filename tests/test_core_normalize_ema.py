import pytest
import torch
from safetensors.torch import load_file, save_file

from diffpolicy.core.ema import EMA
from diffpolicy.core.normalize import Normalizer, stats_of


def test_minmax_and_gaussian_roundtrip_with_constant_dims(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=g) * torch.tensor([1.0, 10.0, 0.1, 1.0]) + 3
    x[:, 3] = 2.5  # a constant dimension must not blow up
    norm = Normalizer.fit({"state": x, "action": x}, {"state": "gaussian", "action": "minmax"})
    a = norm.normalize("action", x)
    assert torch.allclose(a[:, :3].min(0).values, -torch.ones(3)) and torch.allclose(a[:, :3].max(0).values, torch.ones(3))
    assert torch.all(a[:, 3] == 0)
    s = norm.normalize("state", x)
    assert torch.allclose(s[:, :3].mean(0), torch.zeros(3), atol=1e-4) and torch.all(s[:, 3].abs() < 1e-5)
    for k in ("state", "action"):
        torch.testing.assert_close(norm.unnormalize(k, norm.normalize(k, x)), x)
    save_file(norm.state_dict(), tmp_path / "normalizer.safetensors")
    again = Normalizer.from_state_dict(load_file(tmp_path / "normalizer.safetensors"))
    assert again.keys == ["action", "state"] or sorted(again.keys) == ["action", "state"]
    torch.testing.assert_close(again.normalize("state", x[:, None]), norm.normalize("state", x[:, None]))


def test_normalizer_errors():
    with pytest.raises(ValueError, match="NaN or inf"):
        stats_of(torch.tensor([[1.0], [float("nan")]]))
    with pytest.raises(KeyError, match=r"no statistics for keys \['img'\]"):
        Normalizer.from_stats({"state": stats_of(torch.randn(5, 2))}, {"img": "minmax"})
    with pytest.raises(KeyError, match="was fitted on"):
        Normalizer.fit({"a": torch.randn(5, 2)}, {"a": "minmax"}).normalize("b", torch.zeros(2))
    with pytest.raises(ValueError, match="unknown normaliser mode"):
        Normalizer.fit({"a": torch.randn(5, 2)}, {"a": "zscore"})


def test_ema_warmup_and_tracking():
    net = torch.nn.Linear(3, 1)
    ema = EMA(net, power=0.75, max_decay=0.999)
    assert ema.decay(1) == 0.0 and 0 < ema.decay(10) < ema.decay(1000) <= 0.999
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # decay 0: copies
    assert torch.equal(ema.model.weight, net.weight)
    with torch.no_grad():
        net.weight.fill_(3.0)
    ema.update(net)
    d = ema.decay(2)
    torch.testing.assert_close(ema.model.weight, torch.full_like(net.weight, d * 1.0 + (1 - d) * 3.0))
    state = ema.state_dict()
    other = EMA(torch.nn.Linear(3, 1))
    other.load_state_dict(state)
    assert other.step == 2 and torch.equal(other.model.weight, ema.model.weight)
