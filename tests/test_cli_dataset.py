"""diffpolicy-dataset subcommands, driven through main(argv)."""

import json
import os

import imageio.v2 as imageio
import numpy as np
import pytest

from diffpolicy.cli.dataset import main
from diffpolicy.data.replay_buffer import ReplayBuffer


def store(path, lengths, seed):
    rng = np.random.default_rng(seed)
    rb = ReplayBuffer.create(path, attrs={"env_id": "fake", "control_hz": 5})
    for n in lengths:
        rb.append_episode({"state": rng.normal(size=(n, 3)).astype(np.float32),
                           "action": rng.normal(size=(n, 2)).astype(np.float32),
                           "img": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)})
    return path


def test_info_and_json(tmp_path, capsys):
    p = store(tmp_path / "a.zarr", [3, 5, 9], 0)
    assert main(["info", str(p), "--json", str(tmp_path / "info.json")]) == 0
    out = capsys.readouterr().out
    assert "episodes 3" in out and "steps 17" in out and "data/img" in out and "(17, 32, 32, 3)" in out
    assert f"wrote {tmp_path / 'info.json'}" in out
    d = json.loads((tmp_path / "info.json").read_text())
    assert d["episode_length"]["min"] == 3 and d["episode_length"]["max"] == 9
    assert sum(d["episode_length"]["histogram"]["counts"]) == 3 and d["attrs"]["env_id"] == "fake"


def test_info_on_diffusion_policy_v2_store(write_dp_v2_store, tmp_path, capsys):
    write_dp_v2_store(tmp_path / "dp.zarr")
    assert main(["info", str(tmp_path / "dp.zarr")]) == 0
    out = capsys.readouterr().out
    assert "(zarr v2)" in out and "data/keypoint" in out and "(15, 9, 2)" in out and "episodes 3" in out


def test_validate_exit_codes(make_store, tmp_path, capsys):
    assert main(["validate", str(store(tmp_path / "a.zarr", [4], 0)), "--keys", "img", "state"]) == 0
    state = np.zeros((10, 3), np.float32)
    state[4] = np.inf
    bad = make_store(tmp_path / "b.zarr", state=state)
    assert main(["validate", str(bad), "--keys", "img"]) == 1
    out = capsys.readouterr().out
    assert "data/state: contains NaN or inf (first at row 4)" in out and "data/img: required" in out

    # unreadable stores exit 2: a missing path, a directory that is not a store, metadata that cannot be parsed
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text("{not json")
    for path, why in ((tmp_path / "missing.zarr", "no such file"), (tmp_path, "not a zarr store"),
                      (tmp_path / "broken.zarr", "cannot open as a zarr group")):
        assert main(["validate", str(path)]) == 2
        out, err = capsys.readouterr()
        assert why in err and "UNREADABLE" in out and "Traceback" not in out + err


def test_validate_missing_and_corrupt_chunks(make_store, tmp_path, capsys):
    p = make_store(tmp_path / "a.zarr", rows=4)
    (p / "data" / "state" / "c" / "1" / "0").unlink()
    (p / "data" / "action" / "c" / "2" / "0").write_bytes(b"garbage!" * 4)
    assert main(["validate", str(p)]) == 1
    out, err = capsys.readouterr()
    assert f"ERROR {p}: data/state: chunk c/1/0 (rows 4-7) is missing from the store" in out
    assert f"ERROR {p}: data/action: chunk c/2/0 (rows 8-9) cannot be decoded" in out
    assert "2 problem(s)" in out and "Traceback" not in out + err
    assert main(["info", str(p)]) == 2  # every other command refuses the store with a one-line message
    assert "data/state: 1 of 3 chunks are missing" in capsys.readouterr().err
    (p / "data" / "state" / "c" / "1" / "0").write_bytes(b"garbage!" * 4)
    assert main(["subset", str(p), str(tmp_path / "s.zarr"), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "data/action: chunk c/2/0 (rows 8-9) cannot be decoded" in err or "data/state: chunk c/1/0" in err
    assert "Traceback" not in err and not (tmp_path / "s.zarr").exists()


def test_merge_subset_split(tree_digest, tmp_path, capsys):
    a, b = store(tmp_path / "a.zarr", [3, 4], 0), store(tmp_path / "b.zarr", [5], 1)
    digests = tree_digest(a), tree_digest(b)
    assert main(["merge", str(tmp_path / "m.zarr"), str(a), str(b)]) == 0
    assert f"wrote {tmp_path / 'm.zarr'}" in capsys.readouterr().out
    m = ReplayBuffer.open(tmp_path / "m.zarr")
    np.testing.assert_array_equal(m.episode_ends, [3, 7, 12])
    np.testing.assert_array_equal(m.get_episode(2)["img"], ReplayBuffer.open(b).get_episode(0)["img"])
    assert main(["merge", str(tmp_path / "m.zarr"), str(a)]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", str(a), str(a), str(b)]) == 2  # never written over a source
    assert (tree_digest(a), tree_digest(b)) == digests

    assert main(["subset", str(tmp_path / "m.zarr"), str(tmp_path / "s.zarr.zip"), "--episodes", "2,0"]) == 0
    s = ReplayBuffer.open(tmp_path / "s.zarr.zip")
    np.testing.assert_array_equal(s.episode_lengths, [5, 3])
    assert s.attrs["source_episodes"] == [2, 0] and s.attrs["env_id"] == "fake"
    assert main(["subset", str(a), str(tmp_path / "x.zarr"), "--episodes", "7"]) == 2
    assert "out of range" in capsys.readouterr().err

    big = store(tmp_path / "big.zarr", [2] * 10, 3)
    args = ["split", str(big), "--train-out", str(tmp_path / "tr.zarr"), "--val-out", str(tmp_path / "va.zarr"),
            "--val-ratio", "0.3", "--seed", "1"]
    assert main(args) == 0
    tr, va = ReplayBuffer.open(tmp_path / "tr.zarr"), ReplayBuffer.open(tmp_path / "va.zarr")
    assert (tr.n_episodes, va.n_episodes) == (7, 3)
    assert not set(tr.attrs["source_episodes"]) & set(va.attrs["source_episodes"])
    assert main(args) == 2
    assert main(args + ["--overwrite"]) == 0


def test_video(tmp_path, capsys):
    p = store(tmp_path / "a.zarr", [3, 6], 0)
    out = tmp_path / "ep1.mp4"
    assert main(["video", str(p), str(out), "--episode", "1"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    frames = imageio.mimread(out)
    assert len(frames) == 6 and frames[0].shape == (32, 32, 3)
    src = ReplayBuffer.open(p).get_episode(1)["img"].astype(float)
    assert np.abs(np.asarray(frames[0], float) - src[0]).mean() < 60  # lossy, but the same picture
    assert main(["video", str(p), str(out)]) == 2
    assert main(["video", str(p), str(tmp_path / "s.mp4"), "--key", "state"]) == 2
    assert "not images" in capsys.readouterr().err


def test_bad_command_line():
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_outputs_never_overwrite_a_source(tree_digest, tmp_path, capsys):
    src = store(tmp_path / "src.zarr", [3, 4], 0)
    other = store(tmp_path / "other.zarr", [2], 1)
    digest = tree_digest(src), tree_digest(other)
    (tmp_path / "link.zarr").symlink_to(src)
    (tmp_path / "sub").mkdir()
    refused = [
        (["subset", str(src), str(tmp_path / "sub" / ".." / "src.zarr"), "--episodes", "0", "--overwrite"],
         "is the source"),
        (["subset", str(src), str(tmp_path / "nope" / ".." / "src.zarr"), "--episodes", "0", "--overwrite"],
         "is the source"),
        (["subset", str(src), str(tmp_path / "link.zarr"), "--episodes", "0", "--overwrite"], "is the source"),
        (["subset", str(tmp_path / "link.zarr"), str(src), "--episodes", "0", "--overwrite"], "is the source"),
        (["subset", str(src), str(tmp_path), "--episodes", "0", "--overwrite"], "contains the source"),
        (["subset", str(src), str(src / "data" / "x.zarr"), "--episodes", "0"], "lies inside the source"),
        (["merge", str(tmp_path / "link.zarr"), str(other), str(src), "--overwrite"], "is the source"),
        (["split", str(src), "--train-out", str(tmp_path / "t.zarr"), "--val-out", str(tmp_path / "link.zarr"),
          "--overwrite"], "is the source"),
        (["split", str(src), "--train-out", str(tmp_path / "t.zarr"), "--val-out", str(tmp_path / "t.zarr")],
         "overlaps the other output"),
        (["video", str(src), str(tmp_path / "link.zarr" / "ep.mp4"), "--overwrite"], "lies inside the source"),
        (["info", str(src), "--json", str(tmp_path / "sub" / ".." / "link.zarr")], "is the source"),
    ]
    for argv, why in refused:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err, (argv, err)
    assert (tree_digest(src), tree_digest(other)) == digest  # sources intact
    assert (tmp_path / "link.zarr").is_symlink() and not (tmp_path / "t.zarr").exists()
    assert sorted(os.listdir(tmp_path)) == ["link.zarr", "other.zarr", "src.zarr", "sub"]  # nothing else written
    # a legitimate --overwrite of an earlier output still works
    out = tmp_path / "sub" / "s.zarr"
    assert main(["subset", str(src), str(out), "--episodes", "0"]) == 0
    assert main(["subset", str(src), str(tmp_path / "sub" / ".." / "sub" / "s.zarr"), "--episodes", "1",
                 "--overwrite"]) == 0
    assert ReplayBuffer.open(out).episode_lengths.tolist() == [4]
