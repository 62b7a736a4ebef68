"""Every bad input of issue 4 section 5 gives a DatasetError naming the store path, the key and the problem."""

import os
import shutil
import zipfile

import numpy as np
import pytest
import zarr

from diffpolicy.data.cache import load_arrays
from diffpolicy.data.dataset import WindowDataset
from diffpolicy.data.errors import ChunkError, DatasetError, UnreadableStoreError
from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.data.stats import compute_stats
from diffpolicy.data.store import pack_zip
from diffpolicy.data.validate import validate_store


def raises(path, key, match, fn=ReplayBuffer.open):
    with pytest.raises(DatasetError, match=match) as info:
        fn(path)
    assert str(path) in str(info.value), info.value
    if key:
        assert key in str(info.value), info.value
    return info.value


def test_missing_episode_ends(make_store, tmp_path):
    p = make_store(tmp_path / "a.zarr")
    zarr.open_group(str(p), mode="r+")["meta"].__delitem__("episode_ends")
    raises(p, "meta/episode_ends", "missing")


def test_episode_ends_not_increasing(make_store, tmp_path):
    p = make_store(tmp_path / "a.zarr", ends=np.array([6, 4, 10]))
    err = raises(p, "meta/episode_ends", "strictly increasing")
    assert "entry 1" in str(err)
    raises(make_store(tmp_path / "b.zarr", ends=np.array([0, 10])), "meta/episode_ends", "strictly increasing")


def test_episode_ends_not_matching_data_length(make_store, tmp_path):
    p = make_store(tmp_path / "a.zarr", ends=np.array([4, 9]))
    raises(p, "data/action", "has 10 rows but meta/episode_ends ends at 9")


def test_arrays_of_different_lengths(make_store, tmp_path):
    p = make_store(tmp_path / "a.zarr", action=np.ones((7, 2), np.float32))
    raises(p, "data/action", "different lengths")


def test_nan_and_inf(make_store, tmp_path):
    state = np.zeros((10, 3), np.float32)
    state[7, 1] = np.nan
    p = make_store(tmp_path / "a.zarr", state=state)
    action = np.ones((10, 2), np.float32)
    action[2, 0] = np.inf
    q = make_store(tmp_path / "b.zarr", action=action)
    problems = validate_store(p)
    assert len(problems) == 1 and str(p) in problems[0] and "data/state" in problems[0] and "row 7" in problems[0]
    assert "row 2" in validate_store(q)[0] and "data/action" in validate_store(q)[0]
    raises(p, "data/state", "NaN or inf .first at row 7", lambda s: compute_stats(ReplayBuffer.open(s), ["state"]))
    ds = WindowDataset(q, ["state"], horizon=2, n_obs_steps=1, n_action_steps=1)
    raises(q, "data/action", "NaN or inf", lambda s: ds.normalizer({"action": "minmax"}))


def test_float_images_out_of_range(make_store, tmp_path):
    p = make_store(tmp_path / "a.zarr")
    img = np.zeros((10, 4, 4, 3), np.float32)
    img[6, 0, 0, 0] = 300.0  # float images are read as 0..255 (Diffusion Policy's convention)
    zarr.open_group(str(p), mode="r+")["data"].create_array("img", data=img)
    problems = validate_store(p)
    assert len(problems) == 1 and "data/img" in problems[0] and "outside [0, 255] (first at row 6)" in problems[0]


def test_unexpected_dtypes(make_store, tmp_path):
    raises(make_store(tmp_path / "a.zarr", ends=np.array([4.0, 10.0])), "meta/episode_ends", "unexpected dtype float64")
    raises(make_store(tmp_path / "b.zarr", action=np.ones((10, 2), np.complex64)), "data/action",
           "unexpected dtype complex64")
    p = make_store(tmp_path / "c.zarr")
    zarr.open_group(str(p), mode="r+")["data"].create_array("img", data=np.zeros((10, 4, 4, 3), np.int16))
    raises(p, "data/img", "unexpected dtype int16 for an image")
    q = make_store(tmp_path / "d.zarr", action=np.ones((10, 2), np.int32))
    raises(q, "data/action", "actions must be float", lambda s: WindowDataset(s, ["state"]))


def test_requested_key_absent(make_store, tmp_path):
    p = make_store(tmp_path / "a.zarr")
    err = raises(p, "data/img", "not in the store", lambda s: WindowDataset(s, ["img", "state"]))
    assert "data/state" in str(err)  # lists what the store has
    raises(p, "data/action_ee", "not in the store", lambda s: WindowDataset(s, ["state"], action_key="action_ee"))
    assert "required but not in the store" in validate_store(p, ["keypoint"])[0]


def test_empty_store(make_store, tmp_path):
    p = make_store(tmp_path / "a.zarr", lengths=(), state=np.zeros((0, 3), np.float32),
                   action=np.zeros((0, 2), np.float32), ends=np.zeros(0, np.int64))
    raises(p, None, "empty store: no episodes")
    q = tmp_path / "b.zarr"
    root = zarr.open_group(str(q), mode="w")
    root.create_group("data")
    root.create_group("meta").create_array("episode_ends", data=np.array([3]))
    raises(q, None, "empty store: no arrays")
    rb = ReplayBuffer.create(tmp_path / "c.zarr")  # created empty for writing: fine to open for appending only
    assert ReplayBuffer.open(rb.path, mode="r+").n_episodes == 0
    raises(rb.path, None, "empty store")


def test_not_a_zarr_store(tmp_path):
    raises(tmp_path / "missing.zarr", None, "no such file")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hi")
    raises(tmp_path / "plain", None, "not a zarr store")
    (tmp_path / "f.zarr").write_text("not zarr")
    raises(tmp_path / "f.zarr", None, "not a zarr store")
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.writestr("readme.txt", "hi")
    raises(tmp_path / "z.zip", None, "zip has no zarr.json")
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text("{not json")
    err = raises(tmp_path / "broken.zarr", None, "cannot open as a zarr group")
    assert isinstance(err, UnreadableStoreError)
    raises(tmp_path / "plain", None, "not a zarr store", lambda s: WindowDataset(s, ["state"]))
    assert "not a zarr store" in validate_store(tmp_path / "plain")[0]


def test_reading_never_modifies_the_source(make_store, tree_digest, tmp_path):
    p = make_store(tmp_path / "a.zarr", zarr_format=2)
    before = tree_digest(p)
    ds = WindowDataset(p, ["state"], horizon=4, n_obs_steps=2, n_action_steps=2, val_ratio=0.5)
    ds.sample_batch(np.arange(len(ds)))
    ds.normalizer({"state": "gaussian", "action": "minmax"})
    validate_store(p)
    assert tree_digest(p) == before


# ----------------------------------------------------------------------------------------- missing and corrupt chunks
CHUNK_KEY = {3: "c/1/0", 2: "1.0"}  # chunk 1 of a 2-D array: zarr v3 default key encoding, v2 dot-separated


@pytest.mark.parametrize("fmt", [3, 2])
def test_missing_chunk(make_store, tmp_path, fmt):
    p = make_store(tmp_path / "a.zarr", lengths=(4, 6), zarr_format=fmt, rows=4)  # 3 chunks of 4 rows per key
    (p / "data" / "state" / CHUNK_KEY[fmt]).unlink()  # an interrupted copy
    err = raises(p, "data/state", f"1 of 3 chunks are missing from the store: chunk {CHUNK_KEY[fmt]} .rows 4-7.")
    assert isinstance(err, ChunkError) and err.chunks == [CHUNK_KEY[fmt]] and err.key == "data/state"
    raises(p, "data/state", "missing", lambda s: WindowDataset(s, ["state"]))  # training opens the same way
    problems = validate_store(p)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{p}: data/state: chunk {CHUNK_KEY[fmt]} (rows 4-7) is missing"), problems
    assert ReplayBuffer.open(p, check_chunks=False).get_window("state", 4, 8).sum() == 0  # what zarr would train on


def test_missing_chunks_every_one_reported(make_store, tmp_path):
    p = make_store(tmp_path / "a.zarr", lengths=(4, 6), rows=2)  # 5 chunks per key
    for key, chunk in (("state", "c/0/0"), ("state", "c/3/0"), ("action", "c/4/0")):
        (p / "data" / key / chunk).unlink()
    err = raises(p, "data/action", "1 of 5 chunks are missing")  # keys in sorted order; the others are named
    assert "data/state miss chunks too" in str(err)
    problems = validate_store(p)
    assert [q.split(": ")[1:3] for q in problems] == [
        ["data/action", "chunk c/4/0 (rows 8-9) is missing from the store (zarr would read it as the fill value 0.0)"],
        ["data/state", "chunk c/0/0 (rows 0-1) is missing from the store (zarr would read it as the fill value 0.0)"],
        ["data/state", "chunk c/3/0 (rows 6-7) is missing from the store (zarr would read it as the fill value 0.0)"]]


def test_missing_episode_ends_chunk(make_store, tmp_path):
    p = make_store(tmp_path / "a.zarr")
    (p / "meta" / "episode_ends" / "c" / "0").unlink()
    raises(p, "meta/episode_ends", "1 of 1 chunks are missing from the store: chunk c/0 .rows 0-1.")
    problems = validate_store(p)  # reported as missing, not as "episode ends not increasing" (zeros)
    assert len(problems) == 1 and "meta/episode_ends: chunk c/0 (rows 0-1) is missing" in problems[0], problems


def test_missing_chunk_in_zip_and_sharded_stores(make_store, tmp_path):
    p = make_store(tmp_path / "a.zarr", rows=4)
    (p / "data" / "action" / "c" / "2" / "0").unlink()
    pack_zip(p, tmp_path / "a.zarr.zip")
    raises(tmp_path / "a.zarr.zip", "data/action", "chunk c/2/0 .rows 8-9.")
    q = make_store(tmp_path / "s.zarr")
    zarr.open_group(str(q), mode="r+")["data"].create_array("img", data=np.ones((10, 4, 4, 3), np.uint8),
                                                              chunks=(2, 4, 4, 3), shards=(4, 4, 4, 3))
    ReplayBuffer.open(q)  # complete
    (q / "data" / "img" / "c" / "1" / "0" / "0" / "0").unlink()
    raises(q, "data/img", "1 of 3 chunks are missing from the store: shard c/1/0/0/0 .rows 4-7.")


def test_all_zero_episodes_are_stored(tmp_path):
    # zarr 3 skips chunks equal to the fill value by default; the replay buffer writes them, so none looks missing.
    rb = ReplayBuffer.create(tmp_path / "a.zarr")
    rb.append_episode({"state": np.zeros((5, 3), np.float32), "action": np.zeros((5, 2), np.float32)}, {"state": 2})
    ReplayBuffer.open(tmp_path / "a.zarr", mode="r+").append_episode(
        {"state": np.zeros((3, 3), np.float32), "action": np.zeros((3, 2), np.float32)})
    assert ReplayBuffer.open(tmp_path / "a.zarr").n_steps == 8 and validate_store(tmp_path / "a.zarr") == []
    assert sorted(os.listdir(tmp_path / "a.zarr" / "data" / "state" / "c")) == ["0", "1", "2", "3"]


@pytest.mark.parametrize("fmt", [3, 2])
def test_corrupt_chunk(make_store, tmp_path, fmt):
    p = make_store(tmp_path / "a.zarr", zarr_format=fmt, rows=4)
    (p / "data" / "state" / CHUNK_KEY[fmt]).write_bytes(b"\x00garbage" * 7)
    rb = ReplayBuffer.open(p)  # opening reads no data chunk: the corruption shows when the chunk is read
    np.testing.assert_array_equal(rb.get_window("state", 0, 4), np.arange(12).reshape(4, 3))
    for read in (lambda s: ReplayBuffer.open(s).get_episode(1),
                 lambda s: ReplayBuffer.open(s).array("state")[:],
                 lambda s: WindowDataset(s, ["state"]),  # loads the arrays
                 lambda s: compute_stats(ReplayBuffer.open(s), ["state"])):
        err = raises(p, "data/state", f"chunk {CHUNK_KEY[fmt]} .rows 4-7. cannot be decoded", read)
        assert isinstance(err, ChunkError) and err.chunks == [CHUNK_KEY[fmt]]
    cached = load_arrays(ReplayBuffer.open(p), ["state"], memory_budget=0)["state"]  # chunk-cached reads
    np.testing.assert_array_equal(cached.take(np.array([0, 3])), [[0, 1, 2], [9, 10, 11]])
    raises(p, "data/state", f"chunk {CHUNK_KEY[fmt]} ", lambda s: cached.take(np.array([5])))
    problems = validate_store(p)
    assert len(problems) == 1 and f"{p}: data/state: chunk {CHUNK_KEY[fmt]} (rows 4-7) cannot be decoded" in \
        problems[0], problems


def test_corrupt_chunks_of_every_dtype_are_found_by_validate(make_store, tmp_path):
    p = make_store(tmp_path / "a.zarr", rows=4)
    group = zarr.open_group(str(p), mode="r+")
    group["data"].create_array("img", data=np.ones((10, 4, 4, 3), np.uint8), chunks=(4, 4, 4, 3))
    for f in (p / "data" / "img" / "c" / "0" / "0" / "0" / "0", p / "data" / "img" / "c" / "2" / "0" / "0" / "0",
              p / "meta" / "episode_ends" / "c" / "0"):
        f.write_bytes(b"garbage!" * 5)
    problems = validate_store(p)
    assert len(problems) == 1 and "meta/episode_ends: chunk c/0 (rows 0-1) cannot be decoded" in problems[0], problems
    raises(p, "meta/episode_ends", "chunk c/0 .rows 0-1. cannot be decoded")
    shutil.rmtree(p / "meta")
    group = zarr.open_group(str(p), mode="r+")
    group.require_group("meta").create_array("episode_ends", data=np.array([4, 10]))
    problems = validate_store(p)
    assert [q.split(": ")[1] for q in problems] == ["data/img", "data/img"], problems
    assert "chunk c/0/0/0/0 (rows 0-3) cannot be decoded" in problems[0] and "c/2/0/0/0 (rows 8-9)" in problems[1]


def test_corrupt_array_metadata_is_unreadable(make_store, tmp_path):
    p = make_store(tmp_path / "a.zarr")
    (p / "data" / "state" / "zarr.json").write_text("{garbage")
    err = raises(p, "data/state", "metadata cannot be read")
    assert isinstance(err, UnreadableStoreError)
    with pytest.raises(UnreadableStoreError, match="data/state: metadata cannot be read"):
        validate_store(p, raise_unreadable=True)
    assert "metadata cannot be read" in validate_store(p)[0]
