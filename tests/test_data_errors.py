"""Every bad input of issue 4 section 5 gives a DatasetError naming the store path, the key and the problem."""

import hashlib
import os
import zipfile

import numpy as np
import pytest
import zarr

from diffpolicy.data.dataset import WindowDataset
from diffpolicy.data.errors import DatasetError
from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.data.stats import compute_stats
from diffpolicy.data.validate import validate_store


def make_store(path, lengths=(4, 6), state=None, action=None, ends=None, zarr_format=3):
    n = sum(lengths)
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    data = root.create_group("data")
    state = np.arange(n * 3, dtype=np.float32).reshape(n, 3) if state is None else state
    action = np.ones((n, 2), np.float32) if action is None else action
    data.create_array("state", data=state)
    data.create_array("action", data=action)
    meta = root.create_group("meta")
    meta.create_array("episode_ends", data=np.cumsum(lengths).astype(np.int64) if ends is None else ends)
    return path


def raises(path, key, match, fn=ReplayBuffer.open):
    with pytest.raises(DatasetError, match=match) as info:
        fn(path)
    assert str(path) in str(info.value), info.value
    if key:
        assert key in str(info.value), info.value
    return info.value


def test_missing_episode_ends(tmp_path):
    p = make_store(tmp_path / "a.zarr")
    zarr.open_group(str(p), mode="r+")["meta"].__delitem__("episode_ends")
    raises(p, "meta/episode_ends", "missing")


def test_episode_ends_not_increasing(tmp_path):
    p = make_store(tmp_path / "a.zarr", ends=np.array([6, 4, 10]))
    err = raises(p, "meta/episode_ends", "strictly increasing")
    assert "entry 1" in str(err)
    raises(make_store(tmp_path / "b.zarr", ends=np.array([0, 10])), "meta/episode_ends", "strictly increasing")


def test_episode_ends_not_matching_data_length(tmp_path):
    p = make_store(tmp_path / "a.zarr", ends=np.array([4, 9]))
    raises(p, "data/action", "has 10 rows but meta/episode_ends ends at 9")


def test_arrays_of_different_lengths(tmp_path):
    p = make_store(tmp_path / "a.zarr", action=np.ones((7, 2), np.float32))
    raises(p, "data/action", "different lengths")


def test_nan_and_inf(tmp_path):
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


def test_float_images_out_of_range(tmp_path):
    p = make_store(tmp_path / "a.zarr")
    img = np.zeros((10, 4, 4, 3), np.float32)
    img[6, 0, 0, 0] = 300.0  # float images are read as 0..255 (Diffusion Policy's convention)
    zarr.open_group(str(p), mode="r+")["data"].create_array("img", data=img)
    problems = validate_store(p)
    assert len(problems) == 1 and "data/img" in problems[0] and "outside [0, 255] (first at row 6)" in problems[0]


def test_unexpected_dtypes(tmp_path):
    raises(make_store(tmp_path / "a.zarr", ends=np.array([4.0, 10.0])), "meta/episode_ends", "unexpected dtype float64")
    raises(make_store(tmp_path / "b.zarr", action=np.ones((10, 2), np.complex64)), "data/action",
           "unexpected dtype complex64")
    p = make_store(tmp_path / "c.zarr")
    zarr.open_group(str(p), mode="r+")["data"].create_array("img", data=np.zeros((10, 4, 4, 3), np.int16))
    raises(p, "data/img", "unexpected dtype int16 for an image")
    q = make_store(tmp_path / "d.zarr", action=np.ones((10, 2), np.int32))
    raises(q, "data/action", "actions must be float", lambda s: WindowDataset(s, ["state"]))


def test_requested_key_absent(tmp_path):
    p = make_store(tmp_path / "a.zarr")
    err = raises(p, "data/img", "not in the store", lambda s: WindowDataset(s, ["img", "state"]))
    assert "data/state" in str(err)  # lists what the store has
    raises(p, "data/action_ee", "not in the store", lambda s: WindowDataset(s, ["state"], action_key="action_ee"))
    assert "required but not in the store" in validate_store(p, ["keypoint"])[0]


def test_empty_store(tmp_path):
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
    raises(tmp_path / "broken.zarr", None, "cannot open as a zarr group")
    raises(tmp_path / "plain", None, "not a zarr store", lambda s: WindowDataset(s, ["state"]))
    assert "not a zarr store" in validate_store(tmp_path / "plain")[0]


def tree_digest(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        for name in sorted(files):
            f = os.path.join(root, name)
            h.update(f.encode())
            h.update(open(f, "rb").read())
    return h.hexdigest()


def test_reading_never_modifies_the_source(tmp_path):
    p = make_store(tmp_path / "a.zarr", zarr_format=2)
    before = tree_digest(p)
    ds = WindowDataset(p, ["state"], horizon=4, n_obs_steps=2, n_action_steps=2, val_ratio=0.5)
    ds.sample_batch(np.arange(len(ds)))
    ds.normalizer({"state": "gaussian", "action": "minmax"})
    validate_store(p)
    assert tree_digest(p) == before
