"""WindowDataset and its DataLoader: window contents, image crops, splits, reproducible batches."""

import os

import numpy as np
import pytest
import torch

from diffpolicy.data.dataset import WindowDataset
from diffpolicy.data.loader import make_dataloader
from diffpolicy.data.replay_buffer import ReplayBuffer

LENGTHS = [9, 30, 17, 25, 12, 40]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "demo.zarr"
    rng = np.random.default_rng(0)
    rb = ReplayBuffer.create(path)
    for n in LENGTHS:
        rb.append_episode({"state": rng.normal(size=(n, 5)), "agent_pos": rng.normal(size=(n, 2)).astype(np.float32),
                           "action": rng.normal(size=(n, 2)).astype(np.float32),
                           "img": rng.integers(0, 256, (n, 20, 24, 3), dtype=np.uint8)}, chunks={"img": 16})
    return path


def full(store, key):
    rb = ReplayBuffer.open(store)
    return rb.array(key)[:], rb.episode_ends


def test_state_windows_match_reference(reference_windows, store):
    ds = WindowDataset(store, ["state", "agent_pos"], horizon=16, n_obs_steps=2, n_action_steps=8)
    state, ends = full(store, "state")
    action, _ = full(store, "action")
    ref_state = reference_windows(state, ends, 16, 1, 7)
    ref_action = reference_windows(action, ends, 16, 1, 7)
    assert len(ds) == len(ref_state)
    batch = ds.sample_batch(np.arange(len(ds)))
    assert batch["obs"]["state"].dtype == torch.float32 and batch["obs"]["state"].shape == (len(ds), 2, 5)
    np.testing.assert_allclose(batch["obs"]["state"].numpy(), ref_state[:, :2].astype(np.float32))
    np.testing.assert_array_equal(batch["action"].numpy(), ref_action)
    with pytest.raises(IndexError):
        ds.sample_batch([0, len(ds)])
    item = ds[7]
    assert item["obs"]["agent_pos"].shape == (2, 2) and item["action"].shape == (16, 2)
    np.testing.assert_array_equal(item["action"].numpy(), ref_action[7])


def test_image_windows_crop_and_scale(reference_windows, store):
    ds = WindowDataset(store, ["img", "state"], horizon=8, n_obs_steps=3, n_action_steps=4, crop_shape=(16, 18),
                       val_ratio=0.3, seed=1)
    img, ends = full(store, "img")
    ref = reference_windows(img, ends, 8, 2, 3)[:, :3]  # (N, To, H, W, C) restricted below to train episodes
    train_ref = ref[np.repeat(ds.train_mask, np.maximum(np.array(LENGTHS) - 8 + 2 + 3 + 1, 0))]
    batch = ds.sample_batch(np.arange(len(ds)), seed=5)
    x = batch["obs"]["img"]
    assert x.shape == (len(ds), 3, 3, 16, 18) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    chw = torch.from_numpy(train_ref).permute(0, 1, 4, 2, 3).float() / 255
    offsets = set()
    for i in range(len(ds)):  # each window is a crop of its reference frames, one offset for all To frames
        found = [(r, c) for r in range(5) for c in range(7) if torch.equal(x[i], chw[i, :, :, r:r + 16, c:c + 18])]
        assert found, f"window {i} is not a crop of its frames"
        offsets.add(found[0])
    assert len(offsets) > 5  # random offsets at train time
    assert torch.equal(ds.sample_batch(np.arange(len(ds)), seed=5)["obs"]["img"], x)  # seeded crops repeat
    assert not torch.equal(ds.sample_batch(np.arange(len(ds)), seed=6)["obs"]["img"], x)
    val = ds.validation()
    val_ref = ref[np.repeat(ds.val_mask, np.maximum(np.array(LENGTHS) - 8 + 2 + 3 + 1, 0))]
    vx = val.sample_batch(np.arange(len(val)))["obs"]["img"]
    expected = torch.from_numpy(val_ref).permute(0, 1, 4, 2, 3).float()[..., 2:18, 3:21] / 255
    assert torch.equal(vx, expected)  # centre crop at eval


def test_split_and_cap(store):
    ds = WindowDataset(store, ["state"], horizon=4, n_obs_steps=1, n_action_steps=2, val_ratio=0.34, seed=2,
                       max_train_episodes=2)
    val = ds.validation()
    assert ds.train_mask.sum() == 2 and ds.val_mask.sum() == 2
    assert set(ds.index.episode.tolist()) == set(np.flatnonzero(ds.train_mask).tolist())
    assert set(val.index.episode.tolist()) == set(np.flatnonzero(ds.val_mask).tolist())
    assert val.arrays["state"] is ds.arrays["state"]  # shared, not reloaded


def test_chunk_cached_dataset_equals_in_memory(store):
    kw = dict(obs_keys=["img", "state"], horizon=6, n_obs_steps=2, n_action_steps=3, crop_shape=(16, 16))
    mem = WindowDataset(store, **kw)
    cached = WindowDataset(store, memory_budget=10_000, cache_bytes=200_000, **kw)
    assert not isinstance(cached.arrays["img"], np.ndarray)
    w = np.random.default_rng(0).permutation(len(mem))[:64]
    a, b = mem.sample_batch(w, seed=9), cached.sample_batch(w, seed=9)
    assert torch.equal(a["obs"]["img"], b["obs"]["img"]) and torch.equal(a["action"], b["action"])


def test_chunk_cached_zip_store_in_worker_processes(store, tmp_path):
    """Each worker reopens the zip store itself (a shared zip file handle would interleave reads across forks)."""
    from diffpolicy.data.store import pack_zip

    pack_zip(store, tmp_path / "demo.zarr.zip")
    kw = dict(obs_keys=["img", "state"], horizon=6, n_obs_steps=2, n_action_steps=3, crop_shape=(16, 16))
    mem = WindowDataset(store, **kw)
    cached = WindowDataset(tmp_path / "demo.zarr.zip", memory_budget=10_000, cache_bytes=100_000, **kw)
    cached.sample_batch(np.arange(8), seed=0)  # the parent now holds an open zip handle that workers inherit
    assert cached.arrays["img"]._pid == os.getpid()
    ref = batches(make_dataloader(mem, 32, seed=1), 4)
    got = batches(make_dataloader(cached, 32, num_workers=2, seed=1), 4)
    for a, b in zip(ref, got):
        assert torch.equal(a["obs"]["img"], b["obs"]["img"]) and torch.equal(a["obs"]["state"], b["obs"]["state"])


def batches(loader, n):
    out = []
    for i, b in enumerate(loader):
        if i == n:
            break
        out.append(b)
    return out


def test_dataloader_reproducible_across_worker_counts(store):
    ds = WindowDataset(store, ["img", "state"], horizon=8, n_obs_steps=2, n_action_steps=4, crop_shape=(16, 16))
    ref = batches(make_dataloader(ds, 16, num_workers=0, seed=4), 3)
    two = batches(make_dataloader(ds, 16, num_workers=2, seed=4), 3)
    torch_zero = batches(make_dataloader(ds, 16, num_workers=0, seed=4, torch_loader=True), 3)
    assert isinstance(make_dataloader(ds, 16, num_workers=1), torch.utils.data.DataLoader)
    for a, b, c in zip(ref, two, torch_zero):
        for other in (b, c):
            assert torch.equal(a["obs"]["img"], other["obs"]["img"]) and torch.equal(a["action"], other["action"])
    other = batches(make_dataloader(ds, 16, num_workers=0, seed=5), 1)[0]
    assert not torch.equal(other["action"], ref[0]["action"])


def test_dataloader_epochs_cover_every_window_once(store):
    ds = WindowDataset(store, ["state"], horizon=8, n_obs_steps=2, n_action_steps=4)
    loader = make_dataloader(ds, 10, drop_last=False, seed=0)
    assert len(loader) == -(-len(ds) // 10)
    all_rows = ds.sample_batch(np.arange(len(ds)))["action"].reshape(len(ds), -1)
    epochs = []
    for _ in range(2):
        got = torch.cat([b["action"].reshape(len(b["action"]), -1) for b in loader])
        assert got.shape == all_rows.shape
        # same multiset of windows as the dataset, in a shuffled order
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, all_rows.tolist()))
        epochs.append(got)
    assert not torch.equal(epochs[0], epochs[1])  # a new permutation each epoch


def test_diffusion_policy_store_and_normalizer(write_dp_v2_store, tmp_path):
    arrays = write_dp_v2_store(tmp_path / "dp.zarr")
    ds = WindowDataset(tmp_path / "dp.zarr", ["img", "state"], horizon=4, n_obs_steps=2, n_action_steps=2)
    b = ds.sample_batch(np.arange(len(ds)))
    assert b["obs"]["img"].shape[2:] == (3, 16, 16) and 0 <= b["obs"]["img"].min() and b["obs"]["img"].max() <= 1
    norm = ds.normalizer({"action": "minmax", "state": "gaussian"})
    a = norm.normalize("action", b["action"])
    assert a.min() >= -1 - 1e-5 and a.max() <= 1 + 1e-5
    full_action = torch.from_numpy(arrays["action"])
    n = norm.normalize("action", full_action)
    assert torch.isclose(n.min(), torch.tensor(-1.0)) and torch.isclose(n.max(), torch.tensor(1.0))
    s = norm.normalize("state", torch.from_numpy(arrays["state"]))
    assert torch.allclose(s.mean(0), torch.zeros(5), atol=1e-4) and torch.allclose(s.std(0, unbiased=False),
                                                                                  torch.ones(5), atol=1e-4)
