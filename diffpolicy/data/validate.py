"""Full validation of a store: every chunk present and decodable, the structural checks of opening it, then a value
pass over every array.

:func:`validate_store` returns the problems as ``"<store>: <key>: <problem>"`` strings, one per missing or
undecodable chunk (named by its key and rows) and one per other problem. A store that cannot be read at all (the
path is missing, is not a zarr store, or its metadata cannot be parsed) is an
:class:`~diffpolicy.data.errors.UnreadableStoreError`, raised with ``raise_unreadable=True`` (``diffpolicy-dataset
validate`` exits 2 on it, 1 on problems, 0 when clean).
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import zarr
from tqdm.auto import tqdm

from diffpolicy.data.chunks import (chunk_label, chunk_region, corrupt_error, iter_chunks, missing_chunks,
                                    storage_shape, undecodable_chunks)
from diffpolicy.data.errors import DatasetError, UnreadableStoreError
from diffpolicy.data.replay_buffer import ENDS, ReplayBuffer, data_arrays, is_image_shape, read_metadata
from diffpolicy.data.stats import BLOCK_BYTES
from diffpolicy.data.store import open_group


def value_problem(block: np.ndarray, first_row: int, image: bool) -> str | None:
    """The first value problem of float rows ``block`` (NaN/inf; for images, outside [0, 255]), or None."""
    if block.dtype.kind != "f" or block.size == 0:
        return None
    flat = block.reshape(len(block), -1)
    bad = ~np.isfinite(flat).all(1)
    if bad.any():
        return f"contains NaN or inf (first at row {first_row + int(np.flatnonzero(bad)[0])})"
    if image:
        out = ((flat < 0) | (flat > 255)).any(1)
        if out.any():
            return f"float image values outside [0, 255] (first at row {first_row + int(np.flatnonzero(out)[0])})"
    return None


def scan_array(path: object, key: str, arr: zarr.Array, check_values: bool = True) -> list[str]:
    """Decode every chunk of ``arr`` (one problem per chunk that fails) and, for float arrays, report the first value
    problem. Reads blocks of whole chunks; only a block that fails is re-read chunk by chunk."""
    if arr.ndim == 0 or arr.shape[0] == 0:
        return [str(corrupt_error(path, key, arr, [bad])) for bad in undecodable_chunks(arr)]
    image = check_values and is_image_shape(arr.shape)
    rows = storage_shape(arr)[0]
    row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * 8  # as float64, like the statistics pass
    step = max(rows, BLOCK_BYTES // max(row_bytes, 1) // rows * rows)  # whole chunks (shards) per block
    problems, first = [], None
    for a in range(0, arr.shape[0], step):
        try:
            pieces = [(a, np.asarray(arr[a:a + step]))]
        except Exception:  # find which chunks of the block cannot be decoded; check the others
            pieces = []
            for coords in iter_chunks(arr, a, a + step):
                region = chunk_region(arr, coords)
                try:
                    pieces.append((region[0].start, np.asarray(arr[region])))
                except Exception as exc:
                    problems.append(str(corrupt_error(path, key, arr, [(coords, exc)])))
        if check_values and first is None:
            first = next((p for p in (value_problem(b, r, image) for r, b in pieces) if p), None)
    if first:
        problems.append(str(DatasetError(path, key, first)))
    return problems


def _arrays(path: object, root: zarr.Group) -> dict[str, zarr.Array]:
    """``meta/episode_ends`` and every ``data/<key>`` array that exists (unreadable metadata raises)."""
    out = {}
    meta = read_metadata(path, "meta", lambda: root.get("meta"))
    ends = read_metadata(path, ENDS, lambda: meta.get("episode_ends")) if isinstance(meta, zarr.Group) else None
    if isinstance(ends, zarr.Array):
        out[ENDS] = ends
    data = read_metadata(path, "data", lambda: root.get("data"))
    if isinstance(data, zarr.Group):
        out.update({f"data/{k}": a for k, a in data_arrays(path, data).items()})
    return out


def validate_store(path: str | os.PathLike, required_keys: Iterable[str] = (), progress: bool = False,
                   raise_unreadable: bool = False) -> list[str]:
    """Every problem found in the store at ``path`` as ``"<store>: <key>: <problem>"`` strings (empty = valid).

    In order: chunks missing from the store (every one, named by key and rows: a name listing), chunks of
    ``meta/episode_ends`` that cannot be decoded, the structural checks of opening the store (not a store, empty, bad
    ``meta/episode_ends``, lengths that disagree, dtypes: the first one stops the check), required keys, then a pass
    over every array that reports every chunk that cannot be decoded and the first value problem (NaN/inf) per key.
    A store that cannot be read at all is one problem, or raises :class:`UnreadableStoreError` with
    ``raise_unreadable=True``.
    """
    try:
        root = open_group(path)
        arrays = _arrays(path, root)
    except UnreadableStoreError as err:
        if raise_unreadable:
            raise
        return [str(err)]
    problems = []
    for key, arr in arrays.items():
        problems += [str(DatasetError(path, key, f"{chunk_label(arr, c)} is missing from the store (zarr would read "
                                                 f"it as the fill value {arr.fill_value})")) for c in missing_chunks(arr)]
    if ENDS in arrays:
        problems += [str(corrupt_error(path, ENDS, arrays[ENDS], [b])) for b in undecodable_chunks(arrays[ENDS])]
        if any(f": {ENDS}: " in p for p in problems):
            return problems  # the episode ends cannot be trusted: the structural checks would only mislead
    try:
        rb = ReplayBuffer(root, path, writable=False, allow_empty=False)  # missing chunks were reported above
    except UnreadableStoreError as err:
        if raise_unreadable:
            raise
        return problems + [str(err)]
    except DatasetError as err:
        return problems + [str(err)]
    for key in required_keys:
        if key not in rb.keys:
            problems.append(str(DatasetError(rb.path, f"data/{key}", f"required but not in the store; it has "
                                                                     f"{['data/' + k for k in rb.keys]}")))
    for key in tqdm(rb.keys, desc="validate", disable=not progress, leave=False):
        problems += scan_array(rb.path, f"data/{key}", arrays[f"data/{key}"])
    return problems
