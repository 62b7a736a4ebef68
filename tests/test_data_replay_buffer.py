"""Replay buffer: layout, append/read round trips, zip stores, Diffusion Policy v2 stores, chunk-cached reads."""

import zipfile

import numpy as np
import pytest

from diffpolicy.data.cache import ChunkCachedArray, load_arrays
from diffpolicy.data.errors import DatasetError
from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.data.store import atomic_store, pack_zip


def episodes(lengths, seed=0, image=False):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ep = {"state": rng.normal(size=(n, 5)).astype(np.float32), "action": rng.normal(size=(n, 2)).astype(np.float32)}
        if image:
            ep["img"] = rng.integers(0, 256, (n, 12, 10, 3), dtype=np.uint8)
        out.append(ep)
    return out


def test_append_read_round_trip(tmp_path):
    eps = episodes([3, 7, 1, 4], image=True)
    rb = ReplayBuffer.create(tmp_path / "a.zarr", attrs={"task": "x"})
    for ep in eps:
        rb.append_episode(ep)
    back = ReplayBuffer.open(tmp_path / "a.zarr")
    assert back.zarr_format == 3 and back.attrs["task"] == "x"
    assert back.keys == ["action", "img", "state"]
    assert back.shapes == {"action": (15, 2), "img": (15, 12, 10, 3), "state": (15, 5)}
    assert back.dtypes["img"] == np.uint8
    np.testing.assert_array_equal(back.episode_ends, [3, 10, 11, 15])
    assert back.episode_ends.dtype == np.int64
    np.testing.assert_array_equal(back.episode_lengths, [3, 7, 1, 4])
    for i, ep in enumerate(eps):
        got = back.get_episode(i)
        for k in ep:
            np.testing.assert_array_equal(got[k], ep[k])
    np.testing.assert_array_equal(back.get_window("state", 2, 6), np.concatenate([eps[0]["state"][2:], eps[1]["state"][:3]]))
    with pytest.raises(IndexError):
        back.get_window("state", 10, 20)
    with pytest.raises(IndexError):
        back.episode_slice(4)


def test_read_only_store_is_never_written(tmp_path):
    rb = ReplayBuffer.create(tmp_path / "a.zarr")
    rb.append_episode(episodes([4])[0])
    ro = ReplayBuffer.open(tmp_path / "a.zarr")
    with pytest.raises(DatasetError, match="read-only"):
        ro.append_episode(episodes([2])[0])
    assert ReplayBuffer.open(tmp_path / "a.zarr").n_steps == 4
    appender = ReplayBuffer.open(tmp_path / "a.zarr", mode="r+")
    appender.append_episode(episodes([2], seed=1)[0])
    assert ReplayBuffer.open(tmp_path / "a.zarr").n_episodes == 2


def test_append_rejects_mismatched_episodes(tmp_path):
    rb = ReplayBuffer.create(None)
    rb.append_episode(episodes([3])[0])
    with pytest.raises(DatasetError, match="keys"):
        rb.append_episode({"state": np.zeros((2, 5), np.float32)})
    with pytest.raises(DatasetError, match="equal lengths"):
        rb.append_episode({"state": np.zeros((2, 5), np.float32), "action": np.zeros((3, 2), np.float32)})
    with pytest.raises(DatasetError, match="data/state.*shape"):
        rb.append_episode({"state": np.zeros((2, 4), np.float32), "action": np.zeros((2, 2), np.float32)})
    assert rb.n_episodes == 1 and rb.shapes["state"] == (3, 5)


def test_zip_store_reads_like_directory(tmp_path):
    eps = episodes([5, 6], image=True)
    with atomic_store(tmp_path / "a.zarr.zip") as tmp:
        rb = ReplayBuffer.create(tmp)
        for ep in eps:
            rb.append_episode(ep)
    assert zipfile.is_zipfile(tmp_path / "a.zarr.zip")
    assert [p.name for p in tmp_path.iterdir()] == ["a.zarr.zip"]  # temp dir and temp zip are gone
    z = ReplayBuffer.open(tmp_path / "a.zarr.zip")
    np.testing.assert_array_equal(z.get_episode(1)["img"], eps[1]["img"])
    with pytest.raises(DatasetError, match="read-only"):
        ReplayBuffer.open(tmp_path / "a.zarr.zip", mode="r+")


def test_reads_diffusion_policy_v2_store(write_dp_v2_store, tmp_path):
    arrays = write_dp_v2_store(tmp_path / "pusht_v2.zarr")
    rb = ReplayBuffer.open(tmp_path / "pusht_v2.zarr")
    assert rb.zarr_format == 2
    assert rb.keys == ["action", "img", "keypoint", "n_contacts", "state"]
    np.testing.assert_array_equal(rb.episode_ends, [4, 10, 15])
    np.testing.assert_array_equal(rb.get_episode(1)["keypoint"], arrays["keypoint"][4:10])
    # zipped v2 stores (the ``.zarr.zip`` of the real-robot data) read the same way
    pack_zip(tmp_path / "pusht_v2.zarr", tmp_path / "pusht_v2.zarr.zip")
    np.testing.assert_array_equal(ReplayBuffer.open(tmp_path / "pusht_v2.zarr.zip").get_episode(2)["img"],
                                  arrays["img"][10:15])


@pytest.mark.parametrize("zipped", [False, True])
def test_chunk_cached_reads_match_memory(tmp_path, zipped):
    eps = episodes([40, 33, 27], image=True)
    rb = ReplayBuffer.create(tmp_path / "a.zarr")
    for ep in eps:
        rb.append_episode(ep, chunks={"img": 8})
    path = tmp_path / "a.zarr"
    if zipped:
        pack_zip(path, tmp_path / "a.zip")
        path = tmp_path / "a.zip"
    rb = ReplayBuffer.open(path)
    full = np.concatenate([ep["img"] for ep in eps])
    arrays = load_arrays(rb, ["state", "img"], memory_budget=full.nbytes // 2, cache_bytes=3 * 8 * full[0].nbytes)
    assert isinstance(arrays["state"], np.ndarray) and isinstance(arrays["img"], ChunkCachedArray)
    cached = arrays["img"]
    rows = np.random.default_rng(0).integers(0, len(full), (9, 4))
    np.testing.assert_array_equal(cached.take(rows), full[rows])
    assert len(cached._cache) <= cached.max_chunks == 3  # the LRU bound holds
    reads = []
    original = cached._zarr

    def counting():
        reads.append(1)
        return original()

    cached._zarr = counting
    cached._cache.clear()
    cached.take(np.arange(16, 24))  # exactly one chunk: one zarr read, not one per row
    assert len(reads) == 1
    np.testing.assert_array_equal(cached[3:11], full[3:11])
