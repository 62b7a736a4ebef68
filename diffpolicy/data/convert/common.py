"""Shared pieces of the converters: lazy readers, key maps, dtype rules and the atomic store writer.

Every converter turns its source into episodes ``{key: (T, *event)}`` and hands them to :func:`write_store`, which
writes a new zarr replay buffer beside the target and publishes it atomically (``atomic_store``), so a source that
turns out malformed half-way leaves nothing at the output path. Stored dtypes: images ``(T, H, W, 3)`` uint8 as
decoded, floating arrays float32 (float64 is cast), ``action`` always float32, integer/bool arrays unchanged.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from diffpolicy.data.errors import DatasetError
from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.data.store import atomic_store
from diffpolicy.data.tools import check_output_paths

INSTALL_HINT = 'pip install "diffpolicy[convert]"'


def require(module: str, package: str, purpose: str) -> ModuleType:
    """Import an optional reader (``pyarrow.parquet``, ``h5py``, ``av``) or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{purpose} needs the optional package {package!r}, which is not installed; install the "
                          f"dataset converters' readers with: {INSTALL_HINT}") from exc


def parse_renames(items: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["old=new", ...]`` (or a mapping) -> ``{old: new}``; ``new`` must be a plain zarr array name."""
    if items is None:
        return {}
    pairs = items.items() if isinstance(items, Mapping) else (_split_rename(s) for s in items)
    out = {}
    for old, new in pairs:
        if not old or not new or "/" in new or new.startswith("."):
            raise ValueError(f"bad rename {old}={new}: expected SOURCE=KEY with a non-empty KEY without '/'")
        out[old] = new
    return out


def _split_rename(item: str) -> tuple[str, str]:
    old, sep, new = item.partition("=")
    if not sep:
        raise ValueError(f"bad rename {item!r}: expected SOURCE=KEY, e.g. observation.images.top=top")
    return old.strip(), new.strip()


def key_map(sources: Iterable[str], default: Mapping[str, str], renames: Mapping[str, str], skip: Iterable[str],
            where: object) -> dict[str, str]:
    """``{source name: zarr key}``: the defaults, overridden/extended by ``renames``, minus ``skip``.

    A rename or skip naming no source, or two sources landing on one key, is a ``ValueError``/``DatasetError``.
    """
    sources, skip = list(sources), set(skip)
    for name in [*renames, *skip]:
        if name not in sources:
            raise DatasetError(where, name, f"no such source feature to rename/skip; available: {sources}")
    mapping = {s: renames.get(s, default.get(s)) for s in sources if s not in skip}
    mapping = {s: k for s, k in mapping.items() if k}
    seen: dict[str, str] = {}
    for src, key in mapping.items():
        if key in seen:
            raise ValueError(f"{seen[key]!r} and {src!r} would both be stored as data/{key}; "
                             f"pass --rename {src}=OTHER or --skip one of them")
        seen[key] = src
    if not mapping:
        raise DatasetError(where, None, f"nothing to convert: no source feature maps to a zarr key (sources: "
                                        f"{sources}); name some with --rename SOURCE=KEY")
    return mapping


def stored(key: str, value: np.ndarray) -> np.ndarray:
    """The array as stored: floats as float32, ``action`` always float32, everything else as it is."""
    value = np.asarray(value)
    if key == "action" or (value.dtype.kind == "f" and value.dtype != np.float32):
        return value.astype(np.float32)
    return value


def check_target(target: str | os.PathLike, source: str | os.PathLike) -> Path:
    """The absolute target; refused when it is, contains or lies inside the source (sources are never modified)."""
    check_output_paths([target], [source])
    return Path(target).absolute()


def write_store(target: Path, episodes: Iterator[dict[str, np.ndarray]], total: int, attrs: Mapping[str, Any],
                overwrite: bool = False, progress: bool = True, desc: str = "convert") -> dict[str, Any]:
    """Write ``episodes`` (``{key: (T, *event)}`` each) to a new store at ``target`` atomically; return a summary.

    ``target`` is refused if it exists (unless ``overwrite``) before any episode is read; any error while reading
    leaves neither the target nor a temporary directory behind (an overwritten target stays as it was).
    """
    with atomic_store(target, overwrite) as tmp:
        rb = ReplayBuffer.create(tmp, attrs=dict(attrs))
        for episode in tqdm(episodes, total=total, desc=desc, unit="episode", disable=not progress):
            rb.append_episode({k: stored(k, v) for k, v in episode.items()})
        summary = {"path": str(target), "episodes": rb.n_episodes, "steps": rb.n_steps,
                   "arrays": {k: (tuple(rb.array(k).shape), str(np.dtype(rb.array(k).dtype))) for k in rb.keys}}
    return summary


def describe_summary(summary: Mapping[str, Any]) -> str:
    """Human-readable lines for the CLI: what was written where."""
    lines = [f"wrote {summary['path']} ({summary['episodes']} episodes, {summary['steps']} steps from "
             f"{summary['source']} [{summary['format']}])"]
    for key, (shape, dtype) in summary["arrays"].items():
        src = summary.get("keys", {}).get(key, "")
        lines.append(f"  data/{key:<14} {str(shape):<22} {dtype:<8} <- {src}")
    if summary.get("skipped"):
        lines.append(f"  not converted: {', '.join(summary['skipped'])}")
    return "\n".join(lines)
