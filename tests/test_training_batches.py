import numpy as np
import torch

from diffpolicy.data.dataset import WindowDataset
from diffpolicy.data.loader import ChunkLocalWindows
from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.training.batches import StepBatches


def test_step_batches_are_the_same_with_workers_and_after_a_jump(tmp_path):
    buf = ReplayBuffer.create(tmp_path / "d.zarr")
    rng = np.random.default_rng(0)
    for n in (30, 41, 25):
        buf.append_episode({"state": rng.normal(size=(n, 3)).astype(np.float32),
                            "action": rng.normal(size=(n, 2)).astype(np.float32)})
    ds = WindowDataset(tmp_path / "d.zarr", ["state"])
    plain = StepBatches(ds, 16, seed=3)
    workers = StepBatches(ds, 16, seed=3, num_workers=2)
    for step in (0, 1, 2, 7, 8):  # 7 after 2: a resume-style jump restarts the prefetch
        a, b = plain(step), workers(step)
        assert torch.equal(a["action"], b["action"]) and torch.equal(a["obs"]["state"], b["obs"]["state"])
    assert not torch.equal(plain(0)["action"], plain(1)["action"])
    assert not torch.equal(plain(0)["action"], StepBatches(ds, 16, seed=4)(0)["action"])


def _image_store(path, lengths=(60, 45, 80, 52, 70, 38), chunk=8):
    buf = ReplayBuffer.create(path)
    rng = np.random.default_rng(1)
    for n in lengths:
        buf.append_episode({"img": rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8),
                            "action": rng.normal(size=(n, 2)).astype(np.float32)}, chunks={"img": chunk})
    return path


def test_chunk_local_pools_partition_the_chunks_and_draw_every_window_about_once_per_epoch():
    group = np.repeat(np.arange(40), np.random.default_rng(0).integers(5, 15, 40))  # windows per chunk vary
    local = ChunkLocalWindows(group, pool=6, batch_size=8, seed=2)
    assert local.n_pools == 7 and local.epoch_steps == round(len(group) / 8)
    pools = {tuple(local.pool(s)) for s in range(local.epoch_steps)}
    assert len(pools) == 7 and sorted(sum(pools, ())) == list(range(40))  # each chunk in one pool per epoch
    assert local.pool(local.epoch_steps).tolist() != local.pool(0).tolist()  # a fresh chunk order each epoch
    n_epochs = 40
    drawn = np.zeros(len(group))
    for step in range(n_epochs * local.epoch_steps):
        windows = local.sample(step, np.random.default_rng([5, step]), 8)
        assert set(group[windows]) <= set(local.pool(step).tolist())  # a step draws only from its pool's chunks
        np.add.at(drawn, windows, 1)
    # about once per window per epoch: per chunk (~400 draws each) the rate is within sampling noise of 1
    per_chunk = np.bincount(group, drawn) / np.bincount(group) / (n_epochs * local.epoch_steps * 8 / len(group))
    assert np.abs(per_chunk - 1).max() < 0.25, per_chunk
    again = ChunkLocalWindows(group, pool=6, batch_size=8, seed=2)  # a resumed run: same windows at the same step
    step = 3 * local.epoch_steps + 1
    assert np.array_equal(again.sample(step, np.random.default_rng(0), 8), local.sample(step, np.random.default_rng(0), 8))


def test_step_batches_draw_chunk_locally_from_a_chunk_cached_store(tmp_path, monkeypatch):
    """Over the memory budget, batches come from a pool of cached chunks: a fraction of the chunk reads of uniform
    windows, and the same pixels as the in-memory path for the same window ids."""
    from diffpolicy.data.cache import ChunkCachedArray

    path = _image_store(tmp_path / "img.zarr")
    kw = dict(obs_keys=["img"], horizon=4, n_obs_steps=1, n_action_steps=2, crop_shape=(10, 10))
    row = 12 * 12 * 3
    cached = WindowDataset(path, memory_budget=0, cache_bytes=8 * 8 * row, **kw)  # 8 of 44 chunks fit
    assert cached.chunk_groups()[1] == 4 and WindowDataset(path, **kw).chunk_groups() is None
    reads = []
    real = ChunkCachedArray._chunk

    def counting(self, c):
        if c not in self._cache:
            reads.append(c)
        return real(self, c)

    monkeypatch.setattr(ChunkCachedArray, "_chunk", counting)
    local, uniform = StepBatches(cached, 16, seed=0), StepBatches(cached, 16, seed=0, chunk_local=False)
    assert local.local is not None and uniform.local is None
    for step in range(60):
        uniform(step)
    n_uniform = len(reads)
    reads.clear()
    for step in range(60):
        local(step)
    assert len(reads) < n_uniform / 4, (len(reads), n_uniform)
    mem = WindowDataset(path, **kw)
    request = local.request(5)
    assert torch.equal(mem.sample_batch(*request)["obs"]["img"], cached.sample_batch(*request)["obs"]["img"])
