"""robomimic hdf5 -> zarr replay buffer.

Source layout (robomimic's documented dataset structure)::

    data                    group; attrs total (int), env_args (JSON string: env_name, env_type, env_kwargs)
    data/demo_<i>/actions   (N_i, A)
    data/demo_<i>/obs/<k>   (N_i, ...)   low-dim (N_i, D) or images (N_i, H, W, C) uint8
    data/demo_<i>/{states, rewards, dones, next_obs/<k>}   not converted unless named in ``renames``
    mask/<filter>           (M,) demo names (bytes), e.g. mask/train, mask/valid

Demos are written in the order of their integer index (``demo_2`` before ``demo_10``). Output keys:
``obs/<k>`` -> ``<k>``, ``actions`` -> ``action``; ``renames`` (``"obs/agentview_image=agentview"``,
``"rewards=reward"``) override or add. Low-dim arrays are stored float32, images as stored.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from diffpolicy.data.convert.common import check_target, key_map, parse_renames, require, write_store
from diffpolicy.data.errors import DatasetError

DEMO = re.compile(r"demo_(\d+)$")


def demo_order(name: str) -> tuple[int, float, str]:
    """Sort key: ``demo_<int>`` by its integer, anything else after them by name."""
    m = DEMO.match(name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def _name(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def select_demos(f, path: Path, filter_key: str | None) -> list[str]:
    """Demo group names under ``data`` (all, or those listed in ``mask/<filter_key>``), in integer order."""
    if "data" not in f:
        raise DatasetError(path, "data", "missing; a robomimic file keeps its demos in data/demo_<i>")
    demos = [k for k in f["data"].keys() if k.startswith("demo")]
    if filter_key:
        if "mask" not in f or filter_key not in f["mask"]:
            have = list(f["mask"].keys()) if "mask" in f else []
            raise DatasetError(path, f"mask/{filter_key}", f"missing filter key; the file has {have or 'no'} filters")
        listed = [_name(x) for x in np.asarray(f["mask"][filter_key][()]).ravel()]
        for name in listed:
            if name not in demos:
                raise DatasetError(path, f"mask/{filter_key}", f"lists {name!r}, which is not a group under data/")
        demos = listed
    if not demos:
        raise DatasetError(path, f"mask/{filter_key}" if filter_key else "data", "no demos to convert")
    return sorted(dict.fromkeys(demos), key=demo_order)


def source_names(demo) -> list[str]:
    """Every convertible dataset of a demo group, relative to it: ``actions``, ``obs/<k>``, ``rewards``, ..."""
    names = []
    for key, item in demo.items():
        if hasattr(item, "keys"):  # a group: obs / next_obs
            names += [f"{key}/{k}" for k, v in item.items() if not hasattr(v, "keys")]
        else:
            names.append(key)
    return sorted(names)


def default_key(name: str) -> str | None:
    if name == "actions":
        return "action"
    return name[len("obs/"):] if name.startswith("obs/") else None


def read_demo(f, path: Path, demo: str, mapping: Mapping[str, str]) -> dict[str, np.ndarray]:
    """One demo as ``{zarr key: (N, ...)}``; every array must have as many rows as ``actions``."""
    group = f["data"][demo]
    if "actions" not in group:
        raise DatasetError(path, f"data/{demo}/actions", "missing; every demo needs its actions (N, A)")
    n = group["actions"].shape[0] if group["actions"].ndim else 0
    if n == 0:
        raise DatasetError(path, f"data/{demo}/actions", "is empty; expected (N, A) with N >= 1")
    out = {}
    for name, key in mapping.items():
        if name not in group:
            raise DatasetError(path, f"data/{demo}/{name}", "missing; the first demo has it, so every demo needs it")
        value = np.asarray(group[name][()])
        if value.ndim == 0 or value.shape[0] != n:
            raise DatasetError(path, f"data/{demo}/{name}", f"has shape {value.shape}; expected {n} rows, one per "
                                                            f"action (data/{demo}/actions is {group['actions'].shape})")
        out[key] = value
    return out


def convert_robomimic(src: str | os.PathLike, out: str | os.PathLike, filter_key: str | None = None,
                      renames: Sequence[str] | Mapping[str, str] = (), skip: Sequence[str] = (),
                      overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Convert the robomimic hdf5 file ``src`` into a new zarr store ``out``; return a summary dict.

    ``filter_key`` converts only the demos listed in ``mask/<filter_key>``; ``renames``/``skip`` name datasets
    relative to a demo group (``obs/<k>``, ``actions``, ``rewards``, ...). The source is opened read-only.
    """
    h5py = require("h5py", "h5py", "reading robomimic hdf5 files")
    path = Path(src).absolute()
    target = check_target(out, path)
    if not path.is_file():
        raise DatasetError(path, None, "no such file; expected a robomimic .hdf5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(path, None, f"cannot open as hdf5 ({exc})") from exc
    with f:
        demos = select_demos(f, path, filter_key)
        first = f["data"][demos[0]]
        names = source_names(first)
        mapping = key_map(names, {n: default_key(n) for n in names}, parse_renames(renames), skip,
                          f"{path}: data/{demos[0]}")
        env_args = f["data"].attrs.get("env_args")
        env_args = _name(env_args) if env_args is not None else None
        try:
            env_args = json.loads(env_args) if env_args else None
        except ValueError:
            pass  # not JSON: keep the string as it is
        attrs = {"created_by": "diffpolicy-dataset convert robomimic", "source": str(path),
                 "source_format": "robomimic", "env_args": env_args, "filter_key": filter_key, "demos": demos,
                 "keys": {k: n for n, k in mapping.items()}}
        summary = write_store(target, (read_demo(f, path, d, mapping) for d in demos), len(demos), attrs,
                              overwrite, progress, desc=f"convert {path.name}")
    return {**summary, "source": str(path), "format": "robomimic hdf5", "keys": attrs["keys"],
            "skipped": [n for n in names if n not in mapping]}
