"""Zarr replay buffer in the layout of the public Diffusion Policy code.

Layout (zarr v3 written here; v2 stores written by the Diffusion Policy code are read as they are)::

    <store>/data/<key>          (N, *event)  every key concatenated over episodes, same N for all keys
    <store>/meta/episode_ends   (E,) int64   exclusive end row of each episode, strictly increasing, last == N

Opening a store checks this structure (cheaply: metadata, ``episode_ends`` and a listing of the chunk names, no
other data) and raises a :class:`DatasetError` naming the store, the key and the problem -- including chunk files
missing from the store, which zarr would otherwise read as zeros (:mod:`diffpolicy.data.chunks`). Reads through
:meth:`ReplayBuffer.array` name the store, key and chunk when a chunk cannot be decoded. Value checks (NaN/inf) and
decoding every chunk need a full pass and live in :mod:`diffpolicy.data.validate`. A store opened read-only is never
written; writing happens only to a store created (or explicitly opened for appending) by the caller.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import zarr

from diffpolicy.data.chunks import CheckedArray, list_dir, missing_chunks, missing_error
from diffpolicy.data.errors import DatasetError, UnreadableStoreError
from diffpolicy.data.store import chunk_rows, default_compressors, open_group

ENDS = "meta/episode_ends"
# Every chunk is written, even one equal to the fill value (zarr 3 skips those by default), so that a chunk missing
# from a store written here always means lost data (see diffpolicy.data.chunks).
WRITE_CONFIG = {"write_empty_chunks": True}


def is_image_shape(shape: tuple[int, ...]) -> bool:
    """``(N, H, W, C)`` with C in {1, 3, 4}: stored channel-last images."""
    return len(shape) == 4 and shape[-1] in (1, 3, 4)


def check_dtype(path: object, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Data arrays must be real numbers; images ``uint8`` (or float in [0, 255], as Diffusion Policy's Push-T)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise DatasetError(path, f"data/{key}", f"unexpected dtype {dtype}; expected a real numeric dtype "
                                                f"(float, int, uint or bool)")
    if is_image_shape(shape) and dtype.kind not in "uf":
        raise DatasetError(path, f"data/{key}", f"unexpected dtype {dtype} for an image array {shape}; "
                                                f"expected uint8 (or float in [0, 255])")


def read_metadata(path: object, key: str, read: Callable[[], Any]) -> Any:
    """``read()``, with a failure to parse zarr metadata reported as the store being unreadable at ``key``."""
    try:
        return read()
    except DatasetError:
        raise
    except Exception as exc:  # JSONDecodeError, ValueError, ... from a corrupt zarr.json / .zarray
        raise UnreadableStoreError(path, key, f"metadata cannot be read ({type(exc).__name__}: {exc})") from exc


def data_arrays(path: object, data: zarr.Group) -> dict[str, zarr.Array]:
    """``{key: array}`` of the group ``data``, sorted; unreadable metadata names the member when it can."""
    try:
        return {k: data[k] for k in sorted(data.array_keys())}
    except Exception as exc:
        try:
            names = sorted(list_dir(data.store_path.store, data.store_path.path))
        except Exception:
            names = []
        for name in names:
            if name not in ("zarr.json", ".zgroup", ".zattrs"):
                read_metadata(path, f"data/{name}", lambda: data.get(name))
        raise UnreadableStoreError(path, "data", f"metadata cannot be read ({type(exc).__name__}: {exc})") from exc


class ReplayBuffer:
    """Episodes of named arrays stored in one zarr group (see the module docstring for the layout)."""

    def __init__(self, root: zarr.Group, path: str | os.PathLike | None, writable: bool, allow_empty: bool,
                 check_chunks: bool = False):
        self.root = root
        self.path = str(path) if path is not None else "<memory>"
        self.writable = writable
        self._ends = self._check_structure(allow_empty, check_chunks)

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", check_chunks: bool = True) -> "ReplayBuffer":
        """Open an existing store; ``mode="r"`` (read-only, must hold >= 1 episode) or ``"r+"`` (append).

        ``check_chunks`` (default) lists the chunk names of every array and raises a
        :class:`~diffpolicy.data.errors.ChunkError` for chunks missing from the store; turn it off only for a store
        known to omit fill-value chunks on purpose (zarr's ``write_empty_chunks=False``).
        """
        if mode not in ("r", "r+"):
            raise ValueError(f"ReplayBuffer.open: mode must be 'r' or 'r+', got {mode!r}")
        return cls(open_group(path, mode), path, writable=(mode == "r+"), allow_empty=(mode == "r+"),
                   check_chunks=check_chunks)

    @classmethod
    def create(cls, path: str | os.PathLike | None = None, attrs: Mapping[str, Any] | None = None) -> "ReplayBuffer":
        """A new, empty v3 store: a directory at ``path`` (which must not exist) or in memory when ``path`` is None."""
        if path is None:
            store = zarr.storage.MemoryStore()
        else:
            if Path(path).exists():
                raise DatasetError(path, None, "already exists; refusing to create a replay buffer over it")
            store = zarr.storage.LocalStore(path)
        root = zarr.open_group(store, mode="w", zarr_format=3)
        root.require_group("data")
        root.require_group("meta").create_array("episode_ends", shape=(0,), chunks=(1 << 16,), dtype="int64")
        root.attrs.update(dict(attrs or {}))
        return cls(root, path, writable=True, allow_empty=True)

    def _check_structure(self, allow_empty: bool, check_chunks: bool = False) -> np.ndarray:
        root, path = self.root, self.path
        if not read_metadata(path, "meta", lambda: "meta" in root and "episode_ends" in root["meta"]):
            raise DatasetError(path, ENDS, "missing: a replay buffer needs meta/episode_ends (int64 episode ends)")
        ends_arr = read_metadata(path, ENDS, lambda: root[ENDS])
        if not isinstance(ends_arr, zarr.Array) or ends_arr.ndim != 1:
            raise DatasetError(path, ENDS, "must be a 1-D array of episode end rows")
        if np.dtype(ends_arr.dtype).kind not in "iu":
            raise DatasetError(path, ENDS, f"unexpected dtype {ends_arr.dtype}; expected an integer dtype (int64)")
        if check_chunks and (missing := missing_chunks(ends_arr)):
            raise missing_error(path, ENDS, ends_arr, missing)
        ends = np.asarray(CheckedArray(ends_arr, path, ENDS)[:], dtype=np.int64)
        data = read_metadata(path, "data", lambda: root["data"] if "data" in root else None)
        if data is not None and not isinstance(data, zarr.Group):
            raise DatasetError(path, "data", "must be a group of arrays")
        arrays = data_arrays(path, data) if data is not None else {}
        if not allow_empty and (len(ends) == 0 or not arrays):
            what = "no episodes (meta/episode_ends is empty)" if len(ends) == 0 else "no arrays under data/"
            raise DatasetError(path, None, f"empty store: {what}")
        if len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
            bad = 0 if ends[0] <= 0 else int(np.argmax(np.diff(ends) <= 0)) + 1
            raise DatasetError(path, ENDS, f"episode ends must be strictly increasing and > 0; entry {bad} is "
                                           f"{ends[bad]} after {ends[bad - 1] if bad else 'the start (0)'}")
        n = int(ends[-1]) if len(ends) else 0
        for key, arr in arrays.items():
            if arr.ndim == 0:
                raise DatasetError(path, f"data/{key}", "is a scalar; expected (N, ...) rows over time")
            check_dtype(path, key, arr.shape, arr.dtype)
            if arr.shape[0] != n:
                raise DatasetError(path, f"data/{key}", f"has {arr.shape[0]} rows but meta/episode_ends ends at {n} "
                                                        f"(arrays of different lengths or episode ends not matching)")
        if check_chunks:
            missing = {key: m for key, arr in arrays.items() if (m := missing_chunks(arr))}
            if missing:
                key, *others = missing
                raise missing_error(path, f"data/{key}", arrays[key], missing[key], [f"data/{k}" for k in others])
        return ends

    # ------------------------------------------------------------------------------------------------------ reading
    @property
    def keys(self) -> list[str]:
        """Data keys, sorted."""
        return sorted(self.root["data"].array_keys()) if "data" in self.root else []

    def array(self, key: str) -> CheckedArray:
        """The zarr array ``data/<key>`` (read-only view; ``.zarr`` is the array itself) whose reads raise a
        :class:`~diffpolicy.data.errors.ChunkError` naming the chunk when one cannot be decoded; a missing key is a
        :class:`DatasetError` listing the available keys."""
        if key not in self.keys:
            raise DatasetError(self.path, f"data/{key}", f"not in the store; it has {['data/' + k for k in self.keys]}")
        return CheckedArray(self.root["data"][key], self.path, f"data/{key}")

    def require(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.array(key)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(self.array(k).shape) for k in self.keys}

    @property
    def dtypes(self) -> dict[str, np.dtype]:
        return {k: np.dtype(self.array(k).dtype) for k in self.keys}

    @property
    def episode_ends(self) -> np.ndarray:
        """``(E,)`` int64 exclusive end rows (a copy)."""
        return self._ends.copy()

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self._ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.root.attrs)

    @property
    def zarr_format(self) -> int:
        return int(self.root.metadata.zarr_format)

    def episode_slice(self, i: int) -> slice:
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"{self.path}: episode {i} out of range; the store has {self.n_episodes} episodes")
        i %= self.n_episodes
        return slice(int(self.episode_starts[i]), int(self._ends[i]))

    def get_episode(self, i: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as ``{key: (T_i, *event)}`` arrays."""
        sl = self.episode_slice(i)
        return {k: self.array(k)[sl] for k in (self.keys if keys is None else keys)}

    def get_window(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of ``data/<key>`` (no padding; see :mod:`diffpolicy.data.windows` for that)."""
        if not 0 <= start <= stop <= self.n_steps:
            raise IndexError(f"{self.path}: data/{key} window [{start}, {stop}) outside [0, {self.n_steps})")
        return self.array(key)[start:stop]

    # ------------------------------------------------------------------------------------------------------ writing
    def append_episode(self, episode: Mapping[str, np.ndarray], chunks: Mapping[str, int] | None = None) -> None:
        """Append one episode ``{key: (T, *event)}``; every key the buffer has (and only those) with the same T.

        The first episode fixes the keys, event shapes and dtypes; chunk rows default to ~2 MiB per chunk
        (:func:`~diffpolicy.data.store.chunk_rows`), compression to Blosc-LZ4.
        """
        if not self.writable:
            raise DatasetError(self.path, None, "opened read-only; source datasets are never modified in place")
        episode = {k: np.asarray(v) for k, v in episode.items()}
        lengths = {k: v.shape[0] if v.ndim else None for k, v in episode.items()}
        t = next(iter(lengths.values()), None)
        if not episode or t is None or t == 0 or any(n != t for n in lengths.values()):
            raise DatasetError(self.path, None, f"an episode needs >= 1 step and equal lengths for all keys; got "
                                                f"{lengths}")
        data = self.root["data"]
        if self.keys and set(episode) != set(self.keys):
            raise DatasetError(self.path, None, f"episode keys {sorted(episode)} != store keys {self.keys}")
        for key, value in episode.items():
            check_dtype(self.path, key, value.shape, value.dtype)
            if key in data and tuple(data[key].shape[1:]) != value.shape[1:]:
                raise DatasetError(self.path, f"data/{key}", f"episode rows have shape {value.shape[1:]}, the store "
                                                              f"has {tuple(data[key].shape[1:])}")
        for key, value in episode.items():
            if key not in data:
                rows = (chunks or {}).get(key) or chunk_rows(value.shape, value.dtype)
                data.create_array(key, shape=(0, *value.shape[1:]), chunks=(rows, *value.shape[1:]),
                                  dtype=value.dtype, compressors=default_compressors(value.dtype))
        n = self.n_steps
        for key, value in episode.items():
            arr = data[key].with_config(WRITE_CONFIG)
            arr.resize((n + t, *arr.shape[1:]))
            arr[n:n + t] = value.astype(arr.dtype, copy=False)
        ends = self.root[ENDS].with_config(WRITE_CONFIG)
        ends.resize((len(self._ends) + 1,))
        ends[len(self._ends)] = n + t
        self._ends = np.append(self._ends, n + t)

    def update_attrs(self, **attrs: Any) -> None:
        if not self.writable:
            raise DatasetError(self.path, None, "opened read-only; source datasets are never modified in place")
        self.root.attrs.update(attrs)

    def __repr__(self) -> str:
        return f"ReplayBuffer({self.path!r}, episodes={self.n_episodes}, steps={self.n_steps}, shapes={self.shapes})"
