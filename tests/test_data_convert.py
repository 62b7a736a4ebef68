"""Dataset converters: LeRobotDataset v2.1 / v3.0 and robomimic hdf5 -> zarr replay buffer.

Small sources are built in tmp_path following the published layouts (LeRobot's meta/info.json, episodes metadata,
parquet data and mp4 videos; robomimic's data/demo_<i>/obs|actions and mask/<filter>); every converted value and
episode boundary is checked. Videos are encoded losslessly (libx264rgb, crf 0) so decoded frames compare exactly.
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

av = pytest.importorskip("av")
h5py = pytest.importorskip("h5py")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from diffpolicy.data.convert import convert_lerobot, convert_robomimic  # noqa: E402
from diffpolicy.data.errors import DatasetError  # noqa: E402
from diffpolicy.data.replay_buffer import ReplayBuffer  # noqa: E402

FPS = 10
CAMS = {"observation.images.top": (24, 32), "observation.images.wrist": (16, 16)}


# ---------------------------------------------------------------------------------------------------- builders
def encode_mp4(path, frames, fps=FPS):
    """``(T, H, W, 3)`` uint8 -> lossless H.264 (RGB) mp4, frame i shown at i / fps seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=fps, options={"crf": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def fake_episodes(lengths, seed=0):
    rng = np.random.default_rng(seed)
    eps = []
    for n in lengths:
        ep = {"observation.state": rng.normal(size=(n, 3)),  # float64 in the parquet: stored as float32
              "action": rng.normal(size=(n, 2)).astype(np.float32),
              "next.reward": rng.random(n).astype(np.float32)}
        for cam, (h, w) in CAMS.items():
            ep[cam] = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
        eps.append(ep)
    return eps


def info_json(version, lengths):
    v3 = version == "v3.0"
    features = {
        "observation.state": {"dtype": "float64", "shape": [3], "names": ["x", "y", "z"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["vx", "vy"]},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    for cam, (h, w) in CAMS.items():
        features[cam] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                         "info": {"video.fps": FPS, "video.height": h, "video.width": w, "video.codec": "h264",
                                  "video.pix_fmt": "rgb24", "video.is_depth_map": False, "has_audio": False}}
    info = {"codebase_version": version, "robot_type": "fake", "total_episodes": len(lengths),
            "total_frames": sum(lengths), "total_tasks": 1, "chunks_size": 2, "fps": FPS,
            "splits": {"train": f"0:{len(lengths)}"}, "features": features}
    if v3:
        info.update(data_files_size_in_mb=100, video_files_size_in_mb=500,
                    data_path="data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                    video_path="videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
    else:
        info.update(total_chunks=2, total_videos=len(lengths) * len(CAMS),
                    data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                    video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")
    return info


def frame_table(eps, first_episode=0, first_index=0):
    """Parquet rows of consecutive episodes: list columns for vectors, scalars for shape-[1] features."""
    cols = {k: [] for k in ("observation.state", "action", "next.reward", "timestamp", "frame_index",
                            "episode_index", "index", "task_index")}
    index = first_index
    for e, ep in enumerate(eps):
        n = len(ep["action"])
        cols["observation.state"] += list(ep["observation.state"])
        cols["action"] += list(ep["action"])
        cols["next.reward"] += list(ep["next.reward"])
        cols["timestamp"] += list((np.arange(n) / FPS).astype(np.float32))
        cols["frame_index"] += list(range(n))
        cols["episode_index"] += [first_episode + e] * n
        cols["index"] += list(range(index, index + n))
        cols["task_index"] += [0] * n
        index += n
    return pa.table({
        "observation.state": pa.array([list(r) for r in cols["observation.state"]], pa.list_(pa.float64())),
        "action": pa.array([list(r) for r in cols["action"]], pa.list_(pa.float32())),
        "next.reward": pa.array(cols["next.reward"], pa.float32()),
        "timestamp": pa.array(cols["timestamp"], pa.float32()),
        **{k: pa.array(cols[k], pa.int64()) for k in ("frame_index", "episode_index", "index", "task_index")}})


def make_v21(root, lengths, seed=0):
    """v2.1: chunks_size 2, so episode 2 lives in chunk-001; one parquet and one mp4 per camera per episode."""
    eps = fake_episodes(lengths, seed)
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info_json("v2.1", lengths), indent=2))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": i, "tasks": [f"task {i}"], "length": n}) + "\n" for i, n in enumerate(lengths)))
    (root / "meta" / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "task 0"}) + "\n")
    for i, ep in enumerate(eps):
        chunk = root / "data" / f"chunk-{i // 2:03d}"
        chunk.mkdir(parents=True, exist_ok=True)
        pq.write_table(frame_table([ep], i, sum(lengths[:i])), chunk / f"episode_{i:06d}.parquet")
        for cam in CAMS:
            encode_mp4(root / "videos" / f"chunk-{i // 2:03d}" / cam / f"episode_{i:06d}.mp4", ep[cam])
    return eps


def make_v30(root, lengths, files=((0, 1), (2,)), seed=0):
    """v3.0: episodes grouped into data/video files (``files``: episode indices per file, all in chunk-000);
    videos of a file are the episodes' frames one after the other, located by from/to_timestamp."""
    eps = fake_episodes(lengths, seed)
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info_json("v3.0", lengths), indent=2))
    pq.write_table(pa.table({"task_index": [0]}), root / "meta" / "tasks.parquet")
    rows = []
    for file_index, members in enumerate(files):
        start = sum(lengths[:members[0]])
        (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(frame_table([eps[i] for i in members], members[0], start),
                       root / "data" / "chunk-000" / f"file-{file_index:03d}.parquet")
        for cam in CAMS:
            encode_mp4(root / "videos" / cam / "chunk-000" / f"file-{file_index:03d}.mp4",
                       np.concatenate([eps[i][cam] for i in members]))
        t = 0.0
        for i in members:
            row = {"episode_index": i, "tasks": [f"task {i}"], "length": lengths[i], "data/chunk_index": 0,
                   "data/file_index": file_index, "dataset_from_index": sum(lengths[:i]),
                   "dataset_to_index": sum(lengths[:i + 1]), "meta/episodes/chunk_index": 0,
                   "meta/episodes/file_index": 0}
            for cam in CAMS:
                row.update({f"videos/{cam}/chunk_index": 0, f"videos/{cam}/file_index": file_index,
                            f"videos/{cam}/from_timestamp": t, f"videos/{cam}/to_timestamp": t + lengths[i] / FPS})
            t += lengths[i] / FPS
            rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    return eps


def make_robomimic(path, lengths=None, seed=0):
    """Demos named out of order (demo_10 before demo_2 by name); mask/train and mask/valid filters."""
    lengths = lengths or {"demo_0": 4, "demo_1": 3, "demo_2": 5, "demo_10": 2}
    rng = np.random.default_rng(seed)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = sum(lengths.values())
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "env_type": 1, "env_kwargs": {"horizon": 400}})
        for name in sorted(lengths):  # creation order by name: demo_0, demo_1, demo_10, demo_2
            n = lengths[name]
            d = {"actions": rng.uniform(-1, 1, (n, 7)), "obs/robot0_eef_pos": rng.normal(size=(n, 3)),
                 "obs/agentview_image": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
                 "rewards": rng.random(n), "dones": np.zeros(n, np.int64), "states": rng.normal(size=(n, 9)),
                 "next_obs/robot0_eef_pos": rng.normal(size=(n, 3))}
            g = data.create_group(name)
            g.attrs["num_samples"] = n
            for key, value in d.items():
                g.create_dataset(key, data=value)
            demos[name] = d
        f.create_dataset("mask/train", data=np.array([b"demo_10", b"demo_0", b"demo_2"]))
        f.create_dataset("mask/valid", data=np.array([b"demo_1"]))
    return demos


def digest(path):
    """Hash of every file under ``path`` (or of the file): the source must not change."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path.parent)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def assert_nothing_written(out):
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def check_lerobot(rb, eps, keys=None):
    keys = keys or {"state": "observation.state", "action": "action", "top": "observation.images.top",
                    "wrist": "observation.images.wrist"}
    assert rb.keys == sorted(keys)
    np.testing.assert_array_equal(rb.episode_ends, np.cumsum([len(e["action"]) for e in eps]))
    for key, feature in keys.items():
        want = np.concatenate([e[feature] for e in eps])
        got = rb.array(key)[:]
        if want.dtype.kind == "f":
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want.astype(np.float32).reshape(got.shape))
        else:
            assert got.dtype == np.uint8 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------------------------------- LeRobot
@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_lerobot_roundtrip(tmp_path, version):
    src, out = tmp_path / "src", tmp_path / "out.zarr"
    eps = (make_v21 if version == "v2.1" else make_v30)(src, [5, 3, 4])
    before = digest(src)
    summary = convert_lerobot(src, out, progress=False)
    rb = ReplayBuffer.open(out)
    check_lerobot(rb, eps)
    assert rb.shapes["top"] == (12, 24, 32, 3) and rb.shapes["wrist"] == (12, 16, 16, 3)
    assert rb.attrs["fps"] == FPS and rb.attrs["codebase_version"] == version
    assert rb.attrs["source_episodes"] == [0, 1, 2] and rb.attrs["episode_tasks"] == [["task 0"], ["task 1"],
                                                                                      ["task 2"]]
    assert summary["episodes"] == 3 and summary["steps"] == 12 and "next.reward" in summary["skipped"]
    assert digest(src) == before


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_lerobot_subset_rename_skip(tmp_path, version):
    """v3.0 here keeps all episodes in one data file and one mp4 per camera: episode 2 starts 0.8 s into it."""
    src, out = tmp_path / "src", tmp_path / "out.zarr"
    eps = make_v21(src, [5, 3, 4]) if version == "v2.1" else make_v30(src, [5, 3, 4], files=((0, 1, 2),))
    convert_lerobot(src, out, renames=["observation.images.top=agentview", "next.reward=reward"],
                    skip=["observation.images.wrist"], episodes="2,0", progress=False)
    rb = ReplayBuffer.open(out)
    check_lerobot(rb, [eps[2], eps[0]], {"state": "observation.state", "action": "action",
                                         "agentview": "observation.images.top", "reward": "next.reward"})
    assert rb.shapes["reward"] == (9, 1) and rb.attrs["source_episodes"] == [2, 0]


def test_lerobot_parquet_images(tmp_path):
    """A feature of dtype "image" is stored in the parquet as a struct of PNG bytes (and path)."""
    import imageio.v3 as iio

    src, out = tmp_path / "src", tmp_path / "out.zarr"
    eps = make_v21(src, [2, 3])
    info = json.loads((src / "meta" / "info.json").read_text())
    info["features"]["observation.images.front"] = {"dtype": "image", "shape": [3, 6, 5],
                                                     "names": ["channels", "height", "width"]}
    (src / "meta" / "info.json").write_text(json.dumps(info))
    rng = np.random.default_rng(1)
    for i, ep in enumerate(eps):
        ep["observation.images.front"] = rng.integers(0, 256, (len(ep["action"]), 6, 5, 3), dtype=np.uint8)
        path = src / "data" / "chunk-000" / f"episode_{i:06d}.parquet"
        cells = [{"bytes": iio.imwrite("<bytes>", im, extension=".png"), "path": f"frame_{j}.png"}
                 for j, im in enumerate(ep["observation.images.front"])]
        pq.write_table(pq.read_table(path).append_column("observation.images.front", pa.array(cells)), path)
    convert_lerobot(src, out, skip=["observation.images.top", "observation.images.wrist"], progress=False)
    check_lerobot(ReplayBuffer.open(out), eps, {"state": "observation.state", "action": "action",
                                                "front": "observation.images.front"})


def test_lerobot_refuses_existing_output_and_overlap(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out.zarr"
    eps = make_v21(src, [2, 3])
    convert_lerobot(src, out, progress=False)
    with pytest.raises(DatasetError, match="already exists"):
        convert_lerobot(src, out, progress=False)
    convert_lerobot(src, out, episodes="1", overwrite=True, progress=False)
    check_lerobot(ReplayBuffer.open(out), [eps[1]])
    with pytest.raises(DatasetError, match="lies inside the source"):
        convert_lerobot(src, src / "inside.zarr", progress=False)
    assert not (src / "inside.zarr").exists()


def test_lerobot_missing_info(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out.zarr"
    make_v21(src, [2])
    (src / "meta" / "info.json").unlink()
    with pytest.raises(DatasetError, match="missing") as err:
        convert_lerobot(src, out, progress=False)
    assert str(src / "meta" / "info.json") in str(err.value)
    assert_nothing_written(out)


def test_lerobot_missing_parquet(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out.zarr"
    make_v21(src, [2, 3, 2])
    missing = src / "data" / "chunk-001" / "episode_000002.parquet"
    missing.unlink()
    with pytest.raises(DatasetError, match="missing parquet file") as err:
        convert_lerobot(src, out, progress=False)
    assert str(missing) in str(err.value)
    assert_nothing_written(out)


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_lerobot_feature_missing_from_parquet(tmp_path, version):
    src, out = tmp_path / "src", tmp_path / "out.zarr"
    (make_v21 if version == "v2.1" else make_v30)(src, [2, 3, 2])
    info = json.loads((src / "meta" / "info.json").read_text())
    info["features"]["observation.environment_state"] = {"dtype": "float32", "shape": [4], "names": None}
    (src / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="observation.environment_state: missing column") as err:
        convert_lerobot(src, out, progress=False)
    assert str(src / "data" / "chunk-000") in str(err.value) and ".parquet" in str(err.value)
    assert_nothing_written(out)


def test_lerobot_wrong_feature_shape(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out.zarr"
    make_v21(src, [2])
    info = json.loads((src / "meta" / "info.json").read_text())
    info["features"]["action"]["shape"] = [3]
    (src / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"action: has 4 values in 2 rows; info.json gives shape \[3\]"):
        convert_lerobot(src, out, progress=False)
    assert_nothing_written(out)


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_lerobot_short_video(tmp_path, version):
    """The wrist mp4 holding the last episode lacks its final two frames."""
    src, out = tmp_path / "src", tmp_path / "out.zarr"
    eps = (make_v21 if version == "v2.1" else make_v30)(src, [3, 2, 4])
    cam = "observation.images.wrist"
    if version == "v2.1":
        short = src / "videos" / "chunk-001" / cam / "episode_000002.mp4"
        encode_mp4(short, eps[2][cam][:2])
    else:
        short = src / "videos" / cam / "chunk-000" / "file-001.mp4"
        encode_mp4(short, eps[2][cam][:2])
    with pytest.raises(DatasetError, match="episode 2 needs 4 frames") as err:
        convert_lerobot(src, out, progress=False)
    assert str(short) in str(err.value) and cam in str(err.value) and "has 2 there" in str(err.value)
    assert_nothing_written(out)


def test_lerobot_missing_video_and_bad_version(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out.zarr"
    make_v21(src, [2])
    video = src / "videos" / "chunk-000" / "observation.images.top" / "episode_000000.mp4"
    video.unlink()
    with pytest.raises(DatasetError, match="missing video file") as err:
        convert_lerobot(src, out, progress=False)
    assert str(video) in str(err.value)
    info = json.loads((src / "meta" / "info.json").read_text())
    info["codebase_version"] = "v1.6"
    (src / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="codebase_version: is 'v1.6'"):
        convert_lerobot(src, out, progress=False)
    assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------------- robomimic
def test_robomimic_roundtrip_order_and_filter(tmp_path):
    src = tmp_path / "demo.hdf5"
    demos = make_robomimic(src)
    before = digest(src)
    out = tmp_path / "all.zarr"
    summary = convert_robomimic(src, out, progress=False)
    rb = ReplayBuffer.open(out)
    order = ["demo_0", "demo_1", "demo_2", "demo_10"]
    assert rb.keys == ["action", "agentview_image", "robot0_eef_pos"] and rb.attrs["demos"] == order
    np.testing.assert_array_equal(rb.episode_ends, np.cumsum([4, 3, 5, 2]))
    for key, name in (("action", "actions"), ("robot0_eef_pos", "obs/robot0_eef_pos"),
                      ("agentview_image", "obs/agentview_image")):
        want = np.concatenate([demos[d][name] for d in order])
        got = rb.array(key)[:]
        assert got.dtype == (np.uint8 if key == "agentview_image" else np.float32)
        np.testing.assert_array_equal(got, want.astype(got.dtype))
    assert rb.attrs["env_args"] == {"env_name": "Lift", "env_type": 1, "env_kwargs": {"horizon": 400}}
    assert "rewards" in summary["skipped"] and "next_obs/robot0_eef_pos" in summary["skipped"]

    out = tmp_path / "train.zarr"
    convert_robomimic(src, out, filter_key="train", renames=["obs/agentview_image=agentview", "rewards=reward"],
                      skip=["obs/robot0_eef_pos"], progress=False)
    rb = ReplayBuffer.open(out)
    assert rb.keys == ["action", "agentview", "reward"] and rb.attrs["demos"] == ["demo_0", "demo_2", "demo_10"]
    assert rb.attrs["filter_key"] == "train"
    np.testing.assert_array_equal(rb.episode_ends, [4, 9, 11])
    np.testing.assert_array_equal(rb.array("reward")[:], np.concatenate(
        [demos[d]["rewards"] for d in ("demo_0", "demo_2", "demo_10")]).astype(np.float32))
    np.testing.assert_array_equal(rb.array("agentview")[4:9], demos["demo_2"]["obs/agentview_image"])
    assert digest(src) == before


def test_robomimic_errors(tmp_path):
    src, out = tmp_path / "demo.hdf5", tmp_path / "out.zarr"
    make_robomimic(src)
    with pytest.raises(DatasetError, match=r"mask/test: missing filter key; the file has \['train', 'valid'\]"):
        convert_robomimic(src, out, filter_key="test", progress=False)
    with h5py.File(src, "r+") as f:
        del f["data/demo_2/obs/robot0_eef_pos"]
        f["data/demo_2/obs/robot0_eef_pos"] = np.zeros((4, 3))  # demo_2 has 5 actions
    with pytest.raises(DatasetError, match=r"data/demo_2/obs/robot0_eef_pos: has shape \(4, 3\); expected 5 rows") \
            as err:
        convert_robomimic(src, out, progress=False)
    assert str(src) in str(err.value)
    assert_nothing_written(out)
    with h5py.File(src, "r+") as f:
        del f["data/demo_10/actions"]
    with pytest.raises(DatasetError, match="data/demo_10/actions: missing"):
        convert_robomimic(src, out, filter_key="train", skip=["obs/robot0_eef_pos"], progress=False)
    assert_nothing_written(out)
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match="cannot open as hdf5"):
        convert_robomimic(tmp_path / "junk.hdf5", out, progress=False)
    with pytest.raises(DatasetError, match="no such source feature"):
        convert_robomimic(src, out, filter_key="valid", renames=["obs/nothing=x"], progress=False)
    assert_nothing_written(out)


def test_missing_reader_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r'pip install "diffpolicy\[convert\]"'):
        convert_robomimic(tmp_path / "x.hdf5", tmp_path / "out.zarr", progress=False)


def test_import_needs_no_reader():
    """``import diffpolicy.data.convert`` (and so the CLI, which imports it lazily) loads none of the readers."""
    code = ("import sys, diffpolicy.data.convert; "
            "print(sorted(m for m in ('pyarrow', 'h5py', 'av') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------------------- CLI
def test_cli_convert(tmp_path, capsys):
    pytest.importorskip("torch")
    from diffpolicy.cli.dataset import main

    src = tmp_path / "src"
    eps = make_v30(src, [3, 2, 2])
    out = tmp_path / "lr.zarr"
    assert main(["convert", "lerobot", str(src), str(out), "--rename", "observation.images.top=cam",
                 "--skip", "observation.images.wrist", "--episodes", "1-2"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "2 episodes, 4 steps" in text and "data/cam" in text
    check_lerobot(ReplayBuffer.open(out), eps[1:], {"state": "observation.state", "action": "action",
                                                    "cam": "observation.images.top"})
    assert main(["convert", "lerobot", str(src), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", "lerobot", str(src), str(out), "--overwrite"]) == 0
    assert ReplayBuffer.open(out).n_episodes == 3

    h5 = tmp_path / "demo.hdf5"
    make_robomimic(h5)
    assert main(["convert", "robomimic", str(h5), str(tmp_path / "rm.zarr"), "--filter", "valid"]) == 0
    assert "1 episodes, 3 steps" in capsys.readouterr().out
    assert main(["convert", "robomimic", str(h5), str(tmp_path / "x.zarr"), "--filter", "nope"]) == 2
    assert "mask/nope: missing filter key" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "x.zarr")
