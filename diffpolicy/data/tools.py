"""Whole-store operations: copy selected episodes of one or more stores into a new store (merge, subset, split).

Sources are only read; the result is written beside its target and published atomically
(:func:`~diffpolicy.data.store.atomic_store`). Every output path of the dataset tools goes through
:func:`check_output_paths` first, which refuses an output that is, lies inside, or contains a source (after resolving
symlinks and ``..``), so no ``--overwrite`` can replace or delete a source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from diffpolicy.data.errors import DatasetError
from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.data.store import atomic_store


def check_output_paths(outputs: Iterable[str | os.PathLike], sources: Iterable[str | os.PathLike]) -> None:
    """Refuse (:class:`DatasetError`) any output path that could overwrite a source, before anything is written.

    Paths are compared after :meth:`Path.resolve` (symlinks, ``..``): an output equal to a source, inside one (a
    source directory store), or containing one (replacing it would delete the source) is refused, and so are two
    outputs that are equal or nested (the second would replace the first). ``"<memory>"`` sources are skipped.
    """
    outs = [(str(o), Path(o).resolve()) for o in outputs]
    srcs = [(str(s), Path(s).resolve()) for s in sources if str(s) != "<memory>"]
    for out, ro in outs:
        for src, rs in srcs:
            same = ro == rs or (ro.exists() and rs.exists() and os.path.samefile(ro, rs))
            how = ("is the source" if same else "lies inside the source" if rs in ro.parents
                   else "contains the source" if ro in rs.parents else None)
            if how:
                raise DatasetError(out, None, f"output path {how} {src} (resolved: {ro} vs {rs}); sources are never "
                                              f"modified, so write to a path outside every source")
    for i, (out, ro) in enumerate(outs):
        for other, r2 in outs[i + 1:]:
            if ro == r2 or ro in r2.parents or r2 in ro.parents:
                raise DatasetError(out, None, f"output path overlaps the other output {other} (resolved: {ro} vs "
                                              f"{r2}); give each output its own path")


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
    check_output_paths([target], [rb.path for rb, _ in sources])
    target = Path(target).absolute()
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
