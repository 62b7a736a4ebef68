"""Streamed statistics agree with a one-shot computation, across many blocks, constant dims and episode masks."""

import numpy as np
import torch

from diffpolicy.core.normalize import Normalizer, stats_of
from diffpolicy.data import stats as stats_mod
from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.data.stats import compute_stats


def build(tmp_path, rng):
    rb = ReplayBuffer.create(tmp_path / "s.zarr")
    eps = []
    for n in (50, 13, 77, 31):
        state = rng.normal(loc=1e4, scale=1e-2, size=(n, 4))  # big offset + tiny spread: naive sums lose it
        state[:, 2] = 3.25  # a constant dimension
        ep = {"state": state, "action": rng.uniform(-2, 5, (n, 2)).astype(np.float32),
              "img": rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8)}
        rb.append_episode(ep, chunks={"state": 16, "img": 8})
        eps.append(ep)
    return ReplayBuffer.open(tmp_path / "s.zarr"), eps


def test_streamed_stats_match_one_shot(tmp_path, monkeypatch):
    monkeypatch.setattr(stats_mod, "BLOCK_BYTES", 200)  # force dozens of blocks per key
    rb, eps = build(tmp_path, np.random.default_rng(0))
    got = compute_stats(rb, ["state", "action", "img"])
    for key in ("state", "action", "img"):
        ref = stats_of(np.concatenate([e[key] for e in eps]))
        for name in ("min", "max", "mean", "std"):
            assert got[key][name].shape == ref[name].shape
            torch.testing.assert_close(got[key][name], ref[name], rtol=1e-9, atol=1e-9)
    assert got["state"]["std"][2] < 1e-12 and got["state"]["min"][2] == got["state"]["max"][2] == 3.25
    assert 5e-3 < float(got["state"]["std"][0]) < 2e-2  # the tiny spread survives the 1e4 offset
    norm = Normalizer.from_stats(got, {"state": "gaussian", "action": "minmax"})
    x = torch.from_numpy(np.concatenate([e["state"] for e in eps])).float()
    assert torch.all(norm.normalize("state", x)[:, 2] == 0)  # constant dims are shifted, never blown up
    torch.testing.assert_close(norm.unnormalize("state", norm.normalize("state", x))[:, 2], x[:, 2])


def test_episode_mask_and_in_memory_arrays(tmp_path):
    rb, eps = build(tmp_path, np.random.default_rng(1))
    mask = np.array([False, True, False, True])
    got = compute_stats(rb, ["action"], episode_mask=mask)
    ref = stats_of(np.concatenate([eps[1]["action"], eps[3]["action"]]))
    torch.testing.assert_close(got["action"]["mean"], ref["mean"])
    torch.testing.assert_close(got["action"]["max"], ref["max"])
    arrays = {"action": np.concatenate([e["action"] for e in eps])}
    mem = compute_stats(arrays, ["action"], episode_mask=mask, episode_ends=rb.episode_ends)
    torch.testing.assert_close(mem["action"]["std"], ref["std"])
