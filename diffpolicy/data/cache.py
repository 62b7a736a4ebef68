"""Getting arrays into memory within a budget, and chunk-wise cached reads for the ones that do not fit.

zarr costs ~0.5-0.9 ms per read request, so training never reads windows from zarr one by one: arrays that fit in
the memory budget are loaded whole once; the others are wrapped in :class:`ChunkCachedArray`, which serves row
gathers from whole decompressed chunks kept in a byte-bounded LRU cache. Uniformly random windows over an array
larger than that cache miss most chunks; training then draws its batches chunk-locally
(:class:`~diffpolicy.data.loader.ChunkLocalWindows`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Iterable

import numpy as np

from diffpolicy.data.chunks import CheckedArray
from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.data.store import open_group

DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes of arrays loaded whole
DEFAULT_CACHE_BYTES = 512 << 20  # bytes of decompressed chunks kept per chunk-cached array


class ChunkCachedArray:
    """Read-only row access to ``data/<key>`` ``(N, *event)`` of a store through an LRU cache of whole chunks.

    The store is opened lazily in each process (a zip store's file handle must not be shared across the fork of a
    DataLoader worker), so instances can be copied into workers freely.
    """

    def __init__(self, path: str, key: str, shape: tuple[int, ...], dtype: np.dtype, chunk_len: int,
                 cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.path, self.key = path, key
        self.shape, self.dtype, self.chunk_len = tuple(shape), np.dtype(dtype), int(chunk_len)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.max_chunks = max(1, cache_bytes // max(self.row_bytes * self.chunk_len, 1))
        self._array: CheckedArray | None = None
        self._pid = -1
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    @classmethod
    def from_buffer(cls, buffer: ReplayBuffer, key: str, cache_bytes: int = DEFAULT_CACHE_BYTES) -> "ChunkCachedArray":
        arr = buffer.array(key)
        return cls(buffer.path, key, arr.shape, arr.dtype, arr.chunks[0], cache_bytes)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _zarr(self) -> CheckedArray:
        if self._array is None or self._pid != os.getpid():
            self._array = CheckedArray(open_group(self.path, "r")["data"][self.key], self.path, f"data/{self.key}")
            self._pid = os.getpid()
            self._cache.clear()
        return self._array

    def _chunk(self, c: int) -> np.ndarray:
        block = self._cache.get(c)
        if block is None:
            block = self._zarr()[c * self.chunk_len:(c + 1) * self.chunk_len]
            self._cache[c] = block
            if len(self._cache) > self.max_chunks:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(c)
        return block

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at integer indices ``rows`` (any shape S) -> ``(*S, *event)``; one read per missing chunk."""
        rows = np.asarray(rows, dtype=np.int64)
        flat = rows.ravel()
        out = np.empty((flat.size, *self.shape[1:]), dtype=self.dtype)
        chunk_ids = flat // self.chunk_len
        order = np.argsort(chunk_ids, kind="stable")
        sorted_ids = chunk_ids[order]
        bounds = np.flatnonzero(np.diff(sorted_ids)) + 1
        for group in np.split(order, bounds):  # one group per distinct chunk, not per element
            if group.size:
                c = int(chunk_ids[group[0]])
                out[group] = self._chunk(c)[flat[group] - c * self.chunk_len]
        return out.reshape(*rows.shape, *self.shape[1:])

    def __getitem__(self, item) -> np.ndarray:
        if isinstance(item, slice):
            return self.take(np.arange(self.shape[0])[item])
        return self.take(item)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_array=None, _pid=-1, _cache=OrderedDict())
        return state


def load_arrays(buffer: ReplayBuffer, keys: Iterable[str], memory_budget: int = DEFAULT_MEMORY_BUDGET,
                cache_bytes: int = DEFAULT_CACHE_BYTES) -> dict[str, np.ndarray | ChunkCachedArray]:
    """``{key: array}`` with the smallest arrays loaded whole while their total stays within ``memory_budget``
    bytes, and the rest as :class:`ChunkCachedArray` (each with ``cache_bytes`` of chunk cache)."""
    keys = list(dict.fromkeys(keys))
    buffer.require(keys)
    nbytes = {k: int(np.prod(buffer.array(k).shape, dtype=np.int64)) * np.dtype(buffer.array(k).dtype).itemsize
              for k in keys}
    out: dict[str, np.ndarray | ChunkCachedArray] = {}
    used = 0
    for key in sorted(keys, key=nbytes.__getitem__):
        # An in-memory buffer has no path to reopen in workers; its arrays are loaded whole regardless.
        if used + nbytes[key] <= memory_budget or buffer.path == "<memory>":
            out[key] = buffer.array(key)[:]
            used += nbytes[key]
        else:
            out[key] = ChunkCachedArray.from_buffer(buffer, key, cache_bytes)
    return {k: out[k] for k in keys}
