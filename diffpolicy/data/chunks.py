"""Chunk-level integrity of zarr arrays: chunk files that are missing, and chunks that cannot be decoded.

zarr reads a chunk that is absent from the store as the array's fill value (zeros), so a store that lost chunk
files (an interrupted copy or download) would open and train on zeros without a word; and a chunk holding garbage
bytes fails deep inside a codec with a traceback that names neither the store nor the chunk. This module finds both:

* :func:`missing_chunks` compares the chunk keys present in the store with the chunk grid the array's metadata
  implies. It looks at names only and reads no chunk data: one directory listing for flat keys (v2 ``0.0``), one
  ``stat`` per expected key for nested keys (v3 ``c/0/0``: a walk would open one directory per level per chunk and
  costs ~10x more), the name list of a zip store. Opening a store can afford it: +2 ms for the 348 chunks of a
  200-episode Push-T-sized store as written here, +0.05 s (v2) to +0.17 s (v3) with 25k one-row image chunks.
* :func:`undecodable_chunks` decodes every chunk of a row range and returns the ones that fail.
* :class:`CheckedArray` wraps a zarr array so that a read which fails on a corrupt chunk raises a
  :class:`~diffpolicy.data.errors.ChunkError` naming the store, the key and the chunk, instead of the codec's error.
  The localisation (re-reading the range chunk by chunk) runs only after a read has failed, so reads cost nothing
  extra.

A *chunk* here is the unit of storage: a chunk, or a whole shard for sharded (v3) arrays, whose inner chunks may
legitimately be absent (the shard index records them as empty). Chunk keys are the array's own encoding: v3
``c/0/0`` (or ``0.0`` with the v2 key encoding), v2 ``0.0`` (or ``0/0`` with ``dimension_separator="/"``).

zarr 3 omits chunks equal to the fill value by default (``write_empty_chunks=False``); stores written by
:class:`~diffpolicy.data.replay_buffer.ReplayBuffer` write every chunk, so a missing chunk there is lost data. A store
that was written elsewhere with that default may lack all-zero chunks on purpose: open it with
``ReplayBuffer.open(path, check_chunks=False)`` if that is known to be the case.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import zarr
from zarr.core.sync import sync

from diffpolicy.data.errors import ChunkError

# How many chunk names an error message lists before it says "and N more".
LIST_IN_MESSAGE = 5


def storage_shape(arr: zarr.Array) -> tuple[int, ...]:
    """Shape of one stored object of ``arr``: its shard shape when sharded, else its chunk shape."""
    return tuple(int(s) for s in (arr.shards or arr.chunks))


def chunk_grid(arr: zarr.Array) -> tuple[int, ...]:
    """Number of stored chunks (shards) along each dimension."""
    return tuple(-(-int(n) // s) for n, s in zip(arr.shape, storage_shape(arr)))


def iter_chunks(arr: zarr.Array, row_lo: int = 0, row_hi: int | None = None) -> Iterator[tuple[int, ...]]:
    """Grid coordinates of every stored chunk that holds rows in ``[row_lo, row_hi)`` (default: all rows)."""
    grid = chunk_grid(arr)
    if not grid:  # 0-d array: a single chunk
        yield ()
        return
    rows = storage_shape(arr)[0]
    hi = int(arr.shape[0]) if row_hi is None else min(int(row_hi), int(arr.shape[0]))
    first, last = max(0, int(row_lo)) // rows, -(-hi // rows)
    for coords in itertools.product(range(first, last), *(range(g) for g in grid[1:])):
        yield coords


def chunk_region(arr: zarr.Array, coords: tuple[int, ...]) -> tuple[slice, ...]:
    """The selection of ``arr`` covered by the stored chunk at ``coords``."""
    return tuple(slice(c * s, min((c + 1) * s, int(n))) for c, s, n in zip(coords, storage_shape(arr), arr.shape))


def chunk_key(arr: zarr.Array, coords: tuple[int, ...]) -> str:
    """Store key of the chunk at ``coords``, relative to the array (``c/1/0``, ``1.0``, ...)."""
    return arr.metadata.encode_chunk_key(tuple(coords))


def chunk_label(arr: zarr.Array, coords: tuple[int, ...]) -> str:
    """``"chunk c/1/0 (rows 100-199)"``: the key and the rows it holds, for messages."""
    what = "shard" if arr.shards else "chunk"
    if not coords:
        return f"{what} {chunk_key(arr, coords)}"
    rows = chunk_region(arr, coords)[0]
    return f"{what} {chunk_key(arr, coords)} (rows {rows.start}-{rows.stop - 1})"


async def _collect(keys: Any) -> list[str]:
    return [k async for k in keys]


def list_dir(store: Any, prefix: str) -> list[str]:
    """Names directly under ``prefix`` in a zarr store (children and metadata files)."""
    return sync(_collect(store.list_dir(prefix)))


def stored_keys(arr: zarr.Array) -> set[str]:
    """Every key stored under ``arr``'s prefix, relative to it (chunk keys and metadata files); no data is read."""
    store, prefix = arr.store_path.store, arr.store_path.path.strip("/")
    prefix = f"{prefix}/" if prefix else ""
    return {k[len(prefix):] for k in sync(_collect(store.list_prefix(prefix)))}


def missing_chunks(arr: zarr.Array) -> list[tuple[int, ...]]:
    """Grid coordinates of the chunks the array's shape implies but the store does not hold (names only)."""
    coords = list(iter_chunks(arr)) if 0 not in tuple(arr.shape) else []
    if not coords:
        return []
    keys = [chunk_key(arr, c) for c in coords]
    store = arr.store_path.store
    if isinstance(store, zarr.storage.LocalStore):
        base = Path(store.root) / arr.store_path.path.strip("/")
        if "/" in keys[0]:  # nested keys: one stat per chunk
            return [c for c, k in zip(coords, keys) if not os.path.isfile(f"{base}/{k}")]
        have = set(os.listdir(base)) if base.is_dir() else set()  # flat keys: one listing
    else:
        have = stored_keys(arr)
    return [c for c, k in zip(coords, keys) if k not in have]


def undecodable_chunks(arr: zarr.Array, row_lo: int = 0,
                       row_hi: int | None = None) -> list[tuple[tuple[int, ...], BaseException]]:
    """``[(coords, error)]`` of the stored chunks in rows ``[row_lo, row_hi)`` whose read fails (each is decoded)."""
    bad = []
    for coords in iter_chunks(arr, row_lo, row_hi):
        try:
            arr[chunk_region(arr, coords)]
        except Exception as exc:  # codecs raise RuntimeError, ValueError, ... for garbage bytes
            bad.append((coords, exc))
    return bad


def _listing(labels: Sequence[str]) -> str:
    more = len(labels) - LIST_IN_MESSAGE
    return ", ".join(labels[:LIST_IN_MESSAGE]) + (f" and {more} more" if more > 0 else "")


def missing_error(store: object, key: str, arr: zarr.Array, missing: Sequence[tuple[int, ...]],
                  others: Sequence[str] = ()) -> ChunkError:
    """The error for chunks absent from the store (``others``: further keys that miss chunks too)."""
    total = int(np.prod(chunk_grid(arr), dtype=np.int64))
    also = f"; {', '.join(others)} miss chunks too" if others else ""
    return ChunkError(store, key, [chunk_key(arr, c) for c in missing],
                      f"{len(missing)} of {total} chunks are missing from the store: "
                      f"{_listing([chunk_label(arr, c) for c in missing])}{also}. zarr would read them as the fill "
                      f"value ({arr.fill_value}); an interrupted copy or download? Copy the store again (a store "
                      f"written with zarr's write_empty_chunks=False omits chunks equal to the fill value: if that "
                      f"is the case here, open it with ReplayBuffer.open(path, check_chunks=False))")


def corrupt_error(store: object, key: str, arr: zarr.Array,
                  bad: Sequence[tuple[tuple[int, ...], BaseException]]) -> ChunkError:
    """The error for chunks whose bytes cannot be decoded."""
    first = bad[0][1]
    return ChunkError(store, key, [chunk_key(arr, c) for c, _ in bad],
                      f"{_listing([chunk_label(arr, c) for c, _ in bad])} cannot be decoded "
                      f"({type(first).__name__}: {first}); the store is corrupt: copy or write it again")


def _row_span(selection: Any, shape: tuple[int, ...]) -> tuple[int, int]:
    """Rows a selection touches (a superset is fine: it only bounds the search for the failing chunk)."""
    n = int(shape[0]) if shape else 0
    first = selection[0] if isinstance(selection, tuple) and selection else selection
    if isinstance(first, slice):
        start, stop, step = first.indices(n)
        return (start, max(start, stop)) if step > 0 else (max(stop + 1, 0), start + 1)
    if isinstance(first, (int, np.integer)) and n:
        i = int(first) % n
        return i, i + 1
    return 0, n


class CheckedArray:
    """A read-only view of a zarr array whose failing reads name the store, key and chunk.

    Indexing (``arr[...]``) reads like the zarr array; if the read fails, the touched rows are re-read chunk by chunk
    and a corrupt chunk raises :class:`~diffpolicy.data.errors.ChunkError` (other failures propagate unchanged).
    Every other attribute (``shape``, ``dtype``, ``chunks``, ...) is the zarr array's; ``.zarr`` is the array itself.
    """

    def __init__(self, array: zarr.Array, store: object, key: str):
        self.zarr, self.store, self.key = array, str(store), key

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("zarr", "store", "key"):
            raise AttributeError(name)
        return getattr(self.zarr, name)

    def __getitem__(self, selection: Any) -> Any:
        try:
            return self.zarr[selection]
        except (IndexError, MemoryError):  # a bad selection or a too large read, not a chunk's bytes
            raise
        except Exception as exc:
            bad = undecodable_chunks(self.zarr, *_row_span(selection, tuple(self.zarr.shape)))
            if not bad:
                raise
            raise corrupt_error(self.store, self.key, self.zarr, bad) from exc

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)

    def __len__(self) -> int:
        return int(self.zarr.shape[0])

    def __repr__(self) -> str:
        return f"CheckedArray({self.store}: {self.key}, shape={tuple(self.zarr.shape)}, dtype={self.zarr.dtype})"
