"""Decoding the mp4 frames of one episode with PyAV (``av``), matched to the episode's rows by timestamp."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffpolicy.data.convert.common import require
from diffpolicy.data.errors import DatasetError


def decode_episode_frames(path: Path, key: str, times: np.ndarray, fps: float, hw: tuple[int, int] | None,
                          what: str) -> np.ndarray:
    """The frames shown at ``times`` (``(T,)`` seconds into the mp4) as ``(T, H, W, 3)`` uint8 RGB.

    Each time must have a decoded frame within half a frame period (``0.5 / fps``); a video that ends early or
    skips frames is a :class:`DatasetError` naming the file, the feature and the first unmatched row. ``hw`` is the
    frame size info.json promises (checked when given). Only the stretch ``[times[0], times[-1]]`` is decoded,
    after a seek to the keyframe before it (v3.0 files hold many episodes one after the other).
    """
    av = require("av", "av", "decoding LeRobot mp4 videos")
    if not path.is_file():
        raise DatasetError(path, key, f"missing video file for {what}; expected an mp4 of {len(times)} frames")
    tol = 0.5 / fps
    first, last = float(times[0]) - tol, float(times[-1]) + tol
    frames, stamps = [], []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if first > 0 and stream.time_base:
                container.seek(int(first / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                t = frame.time
                if t is None or t < first:
                    continue
                if t > last:
                    break
                frames.append(frame.to_ndarray(format="rgb24"))
                stamps.append(t)
    except (av.error.FFmpegError, IndexError) as exc:
        raise DatasetError(path, key, f"cannot decode as a video ({type(exc).__name__}: {exc})") from exc
    stamps_arr = np.asarray(stamps, dtype=np.float64)
    picks = np.empty(len(times), dtype=np.int64)
    for row, t in enumerate(times):
        j = int(np.searchsorted(stamps_arr, t)) if len(stamps_arr) else 0
        near = [i for i in (j - 1, j) if 0 <= i < len(stamps_arr)]
        best = min(near, key=lambda i: abs(stamps_arr[i] - t)) if near else None
        if best is None or abs(stamps_arr[best] - t) > tol:
            raise DatasetError(path, key, f"{what} needs {len(times)} frames at t = {times[0]:.3f}..{times[-1]:.3f} s, "
                                          f"but the video has {len(stamps)} there; no frame near t = {t:.3f} s "
                                          f"(row {row})")
        picks[row] = best
    out = np.stack([frames[i] for i in picks])
    if hw is not None and tuple(out.shape[1:3]) != tuple(hw):
        raise DatasetError(path, key, f"frames are {out.shape[1]}x{out.shape[2]} (HxW); info.json says "
                                      f"{hw[0]}x{hw[1]}")
    return out
