"""Full validation of a store: the structural checks of opening it, then a value pass over every array."""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from diffpolicy.data.errors import DatasetError
from diffpolicy.data.replay_buffer import ReplayBuffer, is_image_shape
from diffpolicy.data.stats import _block_rows


def scan_values(rb: ReplayBuffer, key: str) -> str | None:
    """The first value problem of ``data/<key>`` (NaN/inf, float images outside [0, 255]), or None."""
    arr = rb.array(key)
    if np.dtype(arr.dtype).kind != "f":
        return None
    image = is_image_shape(arr.shape)
    step = _block_rows(arr, arr.shape)
    for a in range(0, arr.shape[0], step):
        block = np.asarray(arr[a:a + step])
        block = block.reshape(len(block), -1)
        bad = ~np.isfinite(block).all(1)
        if bad.any():
            return f"contains NaN or inf (first at row {a + int(np.flatnonzero(bad)[0])})"
        if image:
            out = ((block < 0) | (block > 255)).any(1)
            if out.any():
                return f"float image values outside [0, 255] (first at row {a + int(np.flatnonzero(out)[0])})"
    return None


def validate_store(path: str | os.PathLike, required_keys: Iterable[str] = (), progress: bool = False) -> list[str]:
    """Every problem found in the store at ``path`` as ``"<store>: <key>: <problem>"`` strings (empty = valid).

    Structural problems (not a store, empty, missing or bad ``meta/episode_ends``, lengths that disagree, dtypes)
    stop the check at the first one; value problems are collected for every key.
    """
    try:
        rb = ReplayBuffer.open(path)
    except DatasetError as err:
        return [str(err)]
    problems = []
    for key in required_keys:
        if key not in rb.keys:
            problems.append(str(DatasetError(rb.path, f"data/{key}", f"required but not in the store; it has "
                                                                     f"{['data/' + k for k in rb.keys]}")))
    for key in tqdm(rb.keys, desc="validate", disable=not progress, leave=False):
        problem = scan_values(rb, key)
        if problem:
            problems.append(str(DatasetError(rb.path, f"data/{key}", problem)))
    return problems
