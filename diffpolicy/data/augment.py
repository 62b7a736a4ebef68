"""Image windows: crop (random at train time, centred at eval) fused into the gather; :mod:`~diffpolicy.data.obs`
then makes them float ``(C, H, W)`` in [0, 1].

Stored images are channel-last ``(N, H, W, C)``, ``uint8`` (or float in [0, 255], as in Diffusion Policy's Push-T
store). Cropping while gathering reads only the kept pixels, and one crop offset is shared by the ``To`` frames
of a window so the observation history stays spatially consistent (run-time observations get
:func:`~diffpolicy.data.obs.center_crop`, matching eval).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from diffpolicy.data.cache import ChunkCachedArray


def crop_offsets(n: int, in_hw: tuple[int, int], out_hw: tuple[int, int],
                 rng: np.random.Generator | None) -> np.ndarray:
    """``(n, 2)`` int64 top-left corners: uniform over all valid positions when ``rng`` is given, else centred."""
    (h, w), (ch, cw) = in_hw, out_hw
    if ch > h or cw > w:
        raise ValueError(f"crop {out_hw} is larger than the image {in_hw}")
    if rng is None:
        return np.tile(np.array([(h - ch) // 2, (w - cw) // 2], dtype=np.int64), (n, 1))
    return np.stack([rng.integers(0, h - ch + 1, n), rng.integers(0, w - cw + 1, n)], axis=1).astype(np.int64)


def gather_cropped(images: np.ndarray | ChunkCachedArray, rows: np.ndarray, out_hw: tuple[int, int],
                   offsets: np.ndarray) -> np.ndarray:
    """Crops of ``images`` ``(N, H, W, C)`` at ``rows`` ``(B, To)`` with per-window ``offsets`` ``(B, 2)``
    -> channel-first ``(B, To, C, h, w)`` in the stored dtype.

    A sliding-window view exposes every crop as one element of a ``(..., H-h+1, W-w+1, C, h, w)`` view, so the
    gather is a single advanced index copying whole ``(C, h, w)`` blocks (per-pixel index arrays are ~100x slower).
    """
    ch, cw = out_hw
    top, left = offsets[:, 0, None], offsets[:, 1, None]  # (B, 1): broadcast over the To frames of a window
    if isinstance(images, np.ndarray):
        return sliding_window_view(images, (ch, cw), axis=(1, 2))[rows, top, left]
    frames = images.take(rows)  # (B, To, H, W, C): whole frames from cached chunks, then crop
    view = sliding_window_view(frames, (ch, cw), axis=(2, 3))
    return view[np.arange(len(rows))[:, None], np.arange(rows.shape[1])[None, :], top, left]
