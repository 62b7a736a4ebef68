"""LeRobotDataset (codebase v2.0/v2.1 and v3.0) -> zarr replay buffer.

Source layout (a local dataset directory, as published by LeRobot)::

    meta/info.json      codebase_version, fps, chunks_size, data_path / video_path templates,
                        features {name: {dtype, shape, names}}; dtype "video" = mp4 stream, "image" = PNG in parquet
    v2.x  meta/episodes.jsonl                                   {"episode_index", "length", "tasks"} per line
          data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet           one file per episode
          videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4 one file per episode, t from 0
    v3.0  meta/episodes/chunk-XXX/file-XXX.parquet   episode_index, length, data/{chunk,file}_index,
                                                     videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}
          data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet          several episodes per file (episode_index)
          videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4   episodes concatenated in time

A parquet row is one frame: a feature of shape ``S`` is a (nested) list column, ``(T, *S)`` once read. The frame of
video feature ``k`` for a row is the one shown at ``from_timestamp + timestamp`` seconds of its mp4 (``from_timestamp``
is 0 in v2.x). Output keys: ``observation.state`` -> ``state``, ``action`` -> ``action``,
``observation.images.<cam>`` -> ``<cam>``, any other ``observation.<x>`` -> ``<x>``; other features (timestamp,
indices, rewards, ...) only when named in ``renames``. Images become ``(T, H, W, 3)`` uint8.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from diffpolicy.data.convert.common import check_target, key_map, parse_renames, require, write_store
from diffpolicy.data.convert.video import decode_episode_frames
from diffpolicy.data.errors import DatasetError
from diffpolicy.data.tools import parse_episodes

IMAGE_DTYPES = ("video", "image")


@dataclass
class EpisodeRef:
    """Where one source episode lives: its parquet file (and, in v3.0, its rows there) and its mp4 segments."""

    index: int
    length: int | None
    data_file: Path
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # feature -> (mp4, from_timestamp)
    tasks: list[str] = field(default_factory=list)


def default_key(feature: str) -> str | None:
    """The zarr key a LeRobot feature gets unless renamed (None: not converted by default)."""
    if feature == "action":
        return "action"
    for prefix in ("observation.images.", "observation."):
        if feature.startswith(prefix):
            return feature[len(prefix):].replace(".", "_")
    return None


def load_info(root: Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise DatasetError(path, None, "missing: a LeRobotDataset needs meta/info.json (codebase_version, fps, "
                                       "features, data_path)")
    try:
        info = json.loads(path.read_text())
    except ValueError as exc:
        raise DatasetError(path, None, f"not valid JSON ({exc})") from exc
    for key in ("codebase_version", "fps", "features", "data_path"):
        if key not in info:
            raise DatasetError(path, key, "missing; info.json needs codebase_version, fps, features and data_path")
    return info


def _read_parquet(path: Path, columns: Sequence[str], what: str, optional: Sequence[str] = ()):
    """The named (and those of the ``optional``) columns of a parquet file; a missing file or column is a
    DatasetError naming it."""
    pq = require("pyarrow.parquet", "pyarrow", "reading LeRobot parquet files")
    if not path.is_file():
        raise DatasetError(path, None, f"missing parquet file ({what})")
    names = pq.read_schema(path).names
    for col in columns:
        if col not in names:
            raise DatasetError(path, col, f"missing column; expected {what} to have it (columns: {names})")
    wanted = [*columns, *(c for c in optional if c in names)]
    return pq.read_table(path, columns=list(dict.fromkeys(wanted)))


def episodes_v2(root: Path, info: Mapping[str, Any], video_keys: Sequence[str]) -> list[EpisodeRef]:
    path = root / "meta" / "episodes.jsonl"
    if not path.is_file():
        raise DatasetError(path, None, "missing: a v2.x LeRobotDataset lists its episodes in meta/episodes.jsonl")
    chunks = int(info.get("chunks_size") or 1000)
    refs = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ep = int(row["episode_index"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(path, f"line {line_no}", f"expected a JSON object with episode_index ({exc})") from exc
        fmt = {"episode_chunk": ep // chunks, "episode_index": ep}
        videos = {k: (root / info["video_path"].format(video_key=k, **fmt), 0.0) for k in video_keys}
        refs.append(EpisodeRef(ep, row.get("length"), root / info["data_path"].format(**fmt), videos,
                               list(row.get("tasks") or [])))
    return sorted(refs, key=lambda r: r.index)


def episodes_v3(root: Path, info: Mapping[str, Any], video_keys: Sequence[str]) -> list[EpisodeRef]:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise DatasetError(root / "meta" / "episodes", None, "missing: a v3.0 LeRobotDataset lists its episodes in "
                                                             "meta/episodes/chunk-XXX/file-XXX.parquet")
    cols = ["episode_index", "data/chunk_index", "data/file_index"]
    for k in video_keys:
        cols += [f"videos/{k}/chunk_index", f"videos/{k}/file_index", f"videos/{k}/from_timestamp"]
    refs = []
    for path in files:
        rows = _read_parquet(path, cols, "the episodes metadata", optional=("length", "tasks")).to_pylist()
        for row in rows:
            data = root / info["data_path"].format(chunk_index=row["data/chunk_index"],
                                                   file_index=row["data/file_index"])
            videos = {k: (root / info["video_path"].format(video_key=k, chunk_index=row[f"videos/{k}/chunk_index"],
                                                           file_index=row[f"videos/{k}/file_index"]),
                          float(row[f"videos/{k}/from_timestamp"])) for k in video_keys}
            refs.append(EpisodeRef(int(row["episode_index"]), row.get("length"), data, videos,
                                   list(row.get("tasks") or [])))
    return sorted(refs, key=lambda r: r.index)


def column_array(column, shape: Sequence[int], path: Path, name: str) -> np.ndarray:
    """A parquet column of T rows -> ``(T, *shape)``; nested lists are flattened, scalars count as shape (1,)."""
    pa = require("pyarrow", "pyarrow", "reading LeRobot parquet files")
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    if arr.null_count:
        raise DatasetError(path, name, f"has {arr.null_count} missing (null) values; expected numbers in every row")
    values = arr.to_numpy(zero_copy_only=False)
    if values.dtype.kind not in "biuf":
        raise DatasetError(path, name, f"holds {arr.type} values; expected numbers (float, int or bool)")
    per_row = int(np.prod(shape, dtype=np.int64))
    if values.size != n * per_row:
        raise DatasetError(path, name, f"has {values.size} values in {n} rows; info.json gives shape {list(shape)} "
                                       f"({per_row} per row)")
    return values.reshape(n, *shape)


def image_column(column, path: Path, name: str) -> np.ndarray:
    """A parquet ``image`` feature (struct of PNG/JPEG ``bytes``) -> ``(T, H, W, 3)`` uint8."""
    import imageio.v3 as iio

    frames = []
    for i, cell in enumerate(column.to_pylist()):
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not data:
            raise DatasetError(path, name, f"row {i} has no embedded image bytes; expected a struct with 'bytes'")
        img = np.asarray(iio.imread(data))
        img = np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]
        frames.append(img.astype(np.uint8, copy=False))
    return np.stack(frames)


def frame_hw(spec: Mapping[str, Any]) -> tuple[int, int] | None:
    """(H, W) from an image feature's shape and names (HWC or CHW), or None when it cannot be told."""
    shape, names = list(spec.get("shape") or []), spec.get("names")
    if len(shape) != 3:
        return None
    if isinstance(names, list) and "height" in names and "width" in names:
        return int(shape[names.index("height")]), int(shape[names.index("width")])
    return (shape[0], shape[1]) if shape[-1] in (1, 3, 4) else (shape[1], shape[2])


class _TableCache:
    """The last parquet table read: a v3.0 data file holds many consecutive episodes."""

    def __init__(self):
        self.path, self.table = None, None

    def get(self, path: Path, columns: Sequence[str]):
        if path != self.path:
            self.path, self.table = path, _read_parquet(path, columns, "the episode data")
        return self.table


def read_episode(ref: EpisodeRef, info: Mapping[str, Any], mapping: Mapping[str, str], v3: bool,
                 cache: _TableCache) -> dict[str, np.ndarray]:
    """One episode as ``{zarr key: (T, *event)}``; images decoded to ``(T, H, W, 3)`` uint8."""
    pc = require("pyarrow.compute", "pyarrow", "reading LeRobot parquet files")
    features = info["features"]
    videos = [f for f in mapping if features[f].get("dtype") == "video"]
    columns = [f for f in mapping if f not in videos]
    needed = columns + (["episode_index"] if v3 else []) + (["timestamp"] if videos else [])
    table = cache.get(ref.data_file, needed)
    if v3:
        table = table.filter(pc.equal(table["episode_index"], ref.index))
    n = table.num_rows
    if n == 0 or (ref.length is not None and n != ref.length):
        raise DatasetError(ref.data_file, f"episode {ref.index}", f"has {n} rows; expected "
                                                                  f"{ref.length or '>= 1'} (the episode's length)")
    out = {}
    for f in columns:
        spec = features[f]
        out[mapping[f]] = (image_column(table[f], ref.data_file, f) if spec.get("dtype") == "image" else
                           column_array(table[f], spec.get("shape") or [1], ref.data_file, f))
    if videos:
        times = np.asarray(table["timestamp"].to_numpy(), dtype=np.float64)
        for f in videos:
            mp4, start = ref.videos[f]
            out[mapping[f]] = decode_episode_frames(mp4, f, start + times, float(info["fps"]),
                                                    frame_hw(features[f]), f"episode {ref.index}")
    return out


def convert_lerobot(src: str | os.PathLike, out: str | os.PathLike, renames: Sequence[str] | Mapping[str, str] = (),
                    skip: Sequence[str] = (), episodes: str | None = None, overwrite: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Convert the LeRobotDataset directory ``src`` into a new zarr store ``out``; return a summary dict.

    ``renames`` (``"feature=key"``) add or override output keys, ``skip`` drops features, ``episodes`` (``"0,3,5-9"``)
    selects positions in the episode list (= ``episode_index`` for a complete dataset).
    """
    root = Path(src).absolute()
    target = check_target(out, root)
    info = load_info(root)
    version = str(info["codebase_version"])
    if not (version.startswith("v2.") or version.startswith("v3.")):
        raise DatasetError(root / "meta" / "info.json", "codebase_version",
                           f"is {version!r}; this converter reads the v2.0/v2.1 and v3.0 layouts")
    v3 = version.startswith("v3.")
    features = info["features"]
    mapping = key_map(features, {f: default_key(f) for f in features}, parse_renames(renames), skip,
                      root / "meta" / "info.json")
    video_keys = [f for f in mapping if features[f].get("dtype") == "video"]
    require("pyarrow.parquet", "pyarrow", "reading LeRobot parquet files")  # fail before any work, not mid-way
    if video_keys:
        require("av", "av", "decoding LeRobot mp4 videos")
    if video_keys and not info.get("video_path"):
        raise DatasetError(root / "meta" / "info.json", "video_path",
                           f"missing; needed for the video features {video_keys}")
    refs = (episodes_v3 if v3 else episodes_v2)(root, info, video_keys)
    if not refs:
        raise DatasetError(root / "meta", None, "the episode list is empty")
    if episodes:
        refs = [refs[i] for i in parse_episodes(episodes, len(refs))]
    cache = _TableCache()
    attrs = {"created_by": "diffpolicy-dataset convert lerobot", "source": str(root), "source_format": "lerobot",
             "codebase_version": version, "fps": info["fps"], "control_hz": info["fps"],
             "robot_type": info.get("robot_type"), "keys": {k: f for f, k in mapping.items()},
             "source_episodes": [r.index for r in refs], "episode_tasks": [r.tasks for r in refs]}
    summary = write_store(target, (read_episode(r, info, mapping, v3, cache) for r in refs), len(refs), attrs,
                          overwrite, progress, desc=f"convert {root.name}")
    return {**summary, "source": str(root), "format": f"lerobot {version}", "keys": attrs["keys"],
            "skipped": [f for f in features if f not in mapping]}
