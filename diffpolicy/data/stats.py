"""Per-key statistics over a dataset in one streamed pass, in the format of :mod:`diffpolicy.core.normalize`.

Each key is read once in blocks of whole chunks (never the full array as float64 at once: a 25k-step 96x96 image
store would need 5.5 GB), and block moments are merged with Chan et al.'s parallel update, which stays accurate in
float64 and gives exactly zero spread for constant dimensions. NaN/inf values are reported with the first bad row.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from diffpolicy.data.errors import DatasetError
from diffpolicy.data.replay_buffer import ReplayBuffer

BLOCK_BYTES = 64 << 20  # float64 bytes per block


class RunningMoments:
    """Streaming min / max / mean / population std of rows ``(n, *event)``."""

    def __init__(self):
        self.n = 0
        self.mean = self.m2 = self.min = self.max = None

    def update(self, block: np.ndarray) -> None:
        x = np.asarray(block, dtype=np.float64)
        if x.shape[0] == 0:
            return
        b_n, b_mean = x.shape[0], x.mean(0)
        b_m2 = ((x - b_mean) ** 2).sum(0)
        if self.n == 0:
            self.n, self.mean, self.m2, self.min, self.max = b_n, b_mean, b_m2, x.min(0), x.max(0)
            return
        total = self.n + b_n
        delta = b_mean - self.mean
        self.mean = self.mean + delta * (b_n / total)
        self.m2 = self.m2 + b_m2 + delta**2 * (self.n * b_n / total)
        self.min, self.max = np.minimum(self.min, x.min(0)), np.maximum(self.max, x.max(0))
        self.n = total

    def result(self) -> dict[str, torch.Tensor]:
        if self.n == 0:
            raise ValueError("no rows seen")
        std = np.sqrt(np.maximum(self.m2 / self.n, 0.0))
        return {name: torch.from_numpy(np.asarray(v, dtype=np.float64))
                for name, v in (("min", self.min), ("max", self.max), ("mean", self.mean), ("std", std))}


def _block_rows(arr, key_shape: tuple[int, ...]) -> int:
    row = int(np.prod(key_shape[1:], dtype=np.int64)) * 8
    rows = max(1, BLOCK_BYTES // max(row, 1))
    chunk = getattr(arr, "chunks", None)
    if chunk:  # whole chunks per block, so each chunk is decompressed once
        rows = max(chunk[0], rows // chunk[0] * chunk[0])
    return rows


def compute_stats(source: ReplayBuffer | Mapping[str, np.ndarray], keys: Iterable[str],
                  episode_mask: np.ndarray | None = None, store: str | None = None,
                  episode_ends: np.ndarray | None = None, progress: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """``{key: {"min", "max", "mean", "std"}}`` float64 tensors of each key's event shape.

    ``source`` is a replay buffer (read chunk-wise from zarr) or in-memory arrays ``{key: (N, *event)}``.
    ``episode_mask`` ``(E,)`` restricts the rows to some episodes (needs the buffer's or ``episode_ends``).
    """
    if isinstance(source, ReplayBuffer):
        store, episode_ends = source.path, source.episode_ends
        arrays = {k: source.array(k) for k in keys}
    else:
        arrays = {k: source[k] for k in keys}
    store = store or "<arrays>"
    row_mask = None
    if episode_mask is not None:
        if episode_ends is None:
            raise ValueError("compute_stats: episode_mask needs episode_ends")
        lengths = np.diff(np.asarray(episode_ends, np.int64), prepend=0)
        row_mask = np.repeat(np.asarray(episode_mask, bool), lengths)
    stats = {}
    for key, arr in arrays.items():
        shape = tuple(arr.shape)
        if len(shape) == 0 or shape[0] == 0:
            raise DatasetError(store, f"data/{key}", f"has shape {shape}; statistics need (N>0, ...) rows")
        moments = RunningMoments()
        step = _block_rows(arr, shape)
        for a in tqdm(range(0, shape[0], step), desc=f"stats {key}", disable=not progress, leave=False):
            block = np.asarray(arr[a:a + step])
            if row_mask is not None:
                block = block[row_mask[a:a + step]]
            finite = np.isfinite(block.reshape(len(block), -1)).all(1) if block.dtype.kind == "f" else None
            if finite is not None and not finite.all():
                bad = int(np.flatnonzero(~finite)[0])
                bad_row = a + (int(np.flatnonzero(row_mask[a:a + step])[bad]) if row_mask is not None else bad)
                raise DatasetError(store, f"data/{key}", f"contains NaN or inf (first at row {bad_row})")
            moments.update(block)
        if moments.n == 0:
            raise DatasetError(store, f"data/{key}", "no rows selected for statistics")
        stats[key] = moments.result()
    return stats
