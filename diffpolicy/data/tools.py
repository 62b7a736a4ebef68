"""Whole-store operations: copy selected episodes of one or more stores into a new store (merge, subset, split).

Sources are only read; the result is written beside its target and published atomically
(:func:`~diffpolicy.data.store.atomic_store`), and a target that is one of the sources is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from diffpolicy.data.errors import DatasetError
from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.data.store import atomic_store


def parse_episodes(spec: str, n_episodes: int) -> list[int]:
    """``"0,3,5-9"`` (inclusive ranges, negative indices allowed) -> episode indices, checked against the store."""
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        lo, sep, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
        try:
            idx = list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
        except ValueError:
            raise ValueError(f"bad episode list {spec!r}: {part!r} is not an index or an a-b range") from None
        for i in idx:
            if not -n_episodes <= i < n_episodes:
                raise ValueError(f"episode {i} out of range: the store has {n_episodes} episodes")
            out.append(i % n_episodes)
    if not out:
        raise ValueError(f"episode list {spec!r} selects no episodes")
    return out


def write_episodes(target: str | os.PathLike, sources: Sequence[tuple[ReplayBuffer, Sequence[int]]],
                   overwrite: bool = False, attrs: Mapping[str, Any] | None = None, progress: bool = True) -> Path:
    """Write the listed episodes of each source (in order) to a new store ``target`` (directory, or ``.zip``)."""
    target = Path(target).absolute()
    for rb, _ in sources:
        if Path(rb.path).absolute() == target:
            raise DatasetError(target, None, "is also a source; write to a new path (sources are never modified)")
    first = sources[0][0]
    for rb, _ in sources[1:]:
        if rb.keys != first.keys:
            raise DatasetError(rb.path, None, f"keys {rb.keys} differ from {first.path}'s {first.keys}")
        for key in rb.keys:
            a, b = rb.array(key), first.array(key)
            if tuple(a.shape[1:]) != tuple(b.shape[1:]) or np.dtype(a.dtype) != np.dtype(b.dtype):
                raise DatasetError(rb.path, f"data/{key}", f"rows {np.dtype(a.dtype)} {tuple(a.shape[1:])} differ "
                                                           f"from {first.path}'s {np.dtype(b.dtype)} {tuple(b.shape[1:])}")
    total = sum(len(eps) for _, eps in sources)
    with atomic_store(target, overwrite) as tmp:
        out = ReplayBuffer.create(tmp, attrs=dict(attrs or {}))
        with tqdm(total=total, desc=f"writing {target.name}", disable=not progress) as bar:
            for rb, eps in sources:
                for i in eps:
                    out.append_episode(rb.get_episode(int(i)))
                    bar.update()
    return target
