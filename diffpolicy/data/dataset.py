"""Torch dataset of training windows ``{"obs": {key: (To, ...)}, "action": (T, Da)}`` over a replay buffer.

Gathering is batched and vectorised: :meth:`WindowDataset.sample_batch` turns a batch of window ids into rows with
one numpy expression (:class:`~diffpolicy.data.windows.WindowIndex`) and gathers each key with one fancy index,
so a training loop (or :func:`~diffpolicy.data.loader.make_dataloader`) pays no Python per window.
``__getitem__`` serves single windows for code that wants the plain ``Dataset`` protocol.
"""

from __future__ import annotations

import copy
import os
from typing import Mapping, Sequence

import numpy as np
import torch

from diffpolicy.core.normalize import Normalizer
from diffpolicy.data.augment import crop_offsets, gather_cropped
from diffpolicy.data.obs import ObsSpec, to_float, to_float_chw
from diffpolicy.data.cache import DEFAULT_CACHE_BYTES, DEFAULT_MEMORY_BUDGET, ChunkCachedArray, load_arrays
from diffpolicy.data.errors import DatasetError
from diffpolicy.data.replay_buffer import ReplayBuffer, is_image_shape
from diffpolicy.data.stats import compute_stats
from diffpolicy.data.windows import WindowIndex, WindowSpec, split_episodes


class WindowDataset(torch.utils.data.Dataset):
    """Windows of ``horizon`` steps over the train or validation episodes of a replay buffer.

    Args:
        source: store path or an open :class:`ReplayBuffer` (read only; never modified).
        obs_keys: the policy's observation keys; image keys (``(N, H, W, C)``) come out as float
            ``(To, C, h, w)`` in [0, 1], other keys as float32 ``(To, *event)``.
        obs_spec: how each observation key is made from the store's arrays (:class:`~diffpolicy.data.obs.ObsSpec`:
            renames, components, angles as (sin, cos), scaling); keys without an entry are data keys of that name.
        action_key: data key of the actions ``(N, Da)``.
        horizon, n_obs_steps, n_action_steps: window geometry (padding per the Diffusion Policy convention).
        split: ``"train"`` (random crops) or ``"val"`` (centre crops).
        val_ratio, seed, max_train_episodes: the seeded episode-level split (:func:`split_episodes`).
        crop_shape: ``(h, w)`` crop of every image key, or None for full images.
        memory_budget, cache_bytes: arrays loaded whole up to ``memory_budget`` bytes, the rest chunk-cached.
    """

    def __init__(self, source: str | os.PathLike | ReplayBuffer, obs_keys: Sequence[str], action_key: str = "action",
                 horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 8, split: str = "train",
                 val_ratio: float = 0.0, seed: int = 0, max_train_episodes: int | None = None,
                 crop_shape: Sequence[int] | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, obs_spec: Mapping | None = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.buffer = source if isinstance(source, ReplayBuffer) else ReplayBuffer.open(source)
        self.obs_keys, self.action_key = list(obs_keys), action_key
        if not self.obs_keys:
            raise ValueError("obs_keys is empty: a policy needs at least one observation key")
        self.obs_spec = ObsSpec(self.obs_keys, obs_spec)
        raw_keys = self.obs_spec.raw_keys
        shapes, dtypes = self.buffer.shapes, self.buffer.dtypes
        self.buffer.require([*raw_keys, action_key])
        if len(shapes[action_key]) != 2 or dtypes[action_key].kind != "f":
            raise DatasetError(self.buffer.path, f"data/{action_key}", f"actions must be float (N, Da); got "
                                                                        f"{dtypes[action_key]} {shapes[action_key]}")
        try:
            obs_shapes = self.obs_spec.shapes({k: shapes[k][1:] for k in raw_keys}, f"dataset {self.buffer.path}")
        except ValueError as e:
            raise DatasetError(self.buffer.path, "obs_spec", str(e)) from None
        self.image_keys = [k for k in self.obs_keys if self.obs_spec.renamed(k) is not None
                           and is_image_shape((0, *obs_shapes[k]))]
        shapes = {**shapes, **{k: (shapes[action_key][0], *v) for k, v in obs_shapes.items()}}
        self.crop_shape = tuple(int(s) for s in crop_shape) if crop_shape is not None else None
        for k in self.image_keys:
            if self.crop_shape is not None and (self.crop_shape[0] > shapes[k][1] or self.crop_shape[1] > shapes[k][2]):
                raise DatasetError(self.buffer.path, f"data/{k}", f"crop_shape {self.crop_shape} is larger than the "
                                                                   f"images {shapes[k][1:3]}")
        self.spec = WindowSpec(horizon, n_obs_steps, n_action_steps)
        self.split, self.seed, self.val_ratio = split, seed, val_ratio
        self.train_mask, self.val_mask = split_episodes(self.buffer.n_episodes, val_ratio, seed, max_train_episodes)
        raw = load_arrays(self.buffer, [*raw_keys, action_key], memory_budget, cache_bytes)
        # Computed keys are made once, whole, from their raw (low-dim) arrays: those must be in memory.
        sources = {p.key for k in self.obs_keys if self.obs_spec.renamed(k) is None for p in self.obs_spec.parts[k]}
        raw.update({k: np.asarray(raw[k][:]) for k in sources if isinstance(raw[k], ChunkCachedArray)})
        arrays = {**self.obs_spec.apply(raw), action_key: raw[action_key]}
        # Low-dim arrays become float32 once here, so every gather already yields the training dtype.
        self.arrays = {k: (a if k in self.image_keys or isinstance(a, ChunkCachedArray)
                           else a.astype(np.float32, copy=False)) for k, a in arrays.items()}
        self._build_index()

    def _build_index(self) -> None:
        mask = self.train_mask if self.split == "train" else self.val_mask
        self.index = WindowIndex(self.buffer.episode_ends, self.spec.horizon, self.spec.pad_before,
                                 self.spec.pad_after, mask)

    def validation(self) -> "WindowDataset":
        """The validation split of the same store (same split seed, centre crops), sharing the loaded arrays."""
        val = copy.copy(self)
        val.split = "val"
        val._build_index()
        return val

    def __len__(self) -> int:
        return len(self.index)

    @property
    def episode_mask(self) -> np.ndarray:
        return (self.train_mask if self.split == "train" else self.val_mask).copy()

    def _gather(self, key: str, rows: np.ndarray) -> np.ndarray:
        arr = self.arrays[key]
        # ndarray.take on the leading axis is ~10x faster than arr[rows] for a 2-D index array.
        out = arr.take(rows) if isinstance(arr, ChunkCachedArray) else arr.take(rows, axis=0)
        return out.astype(np.float32, copy=False)

    def sample_batch(self, windows: np.ndarray | Sequence[int], seed: int | None = None) -> dict:
        """Batch of windows ``(B,)`` -> ``{"obs": {key: (B, To, ...)}, "action": (B, T, Da)}`` float32 tensors.

        Training crops are drawn from ``np.random.default_rng(seed)`` (reproducible), or from torch's global RNG
        when ``seed`` is None (seeded per DataLoader worker by torch). Ids outside ``[-len, len)`` raise IndexError.
        """
        rows = self.index.rows(windows)  # (B, T)
        obs_rows = rows[:, :self.spec.n_obs_steps]
        obs = {}
        for key in self.obs_keys:
            if key in self.image_keys:
                obs[key] = self._images(key, obs_rows, seed)
            else:
                obs[key] = torch.from_numpy(self._gather(key, obs_rows))
        return {"obs": obs, "action": torch.from_numpy(self._gather(self.action_key, rows))}

    def _images(self, key: str, rows: np.ndarray, seed: int | None) -> torch.Tensor:
        arr = self.arrays[key]
        if self.crop_shape is None:
            frames = arr.take(rows) if isinstance(arr, ChunkCachedArray) else np.take(arr, rows, axis=0)
            return to_float_chw(frames)
        rng = None
        if self.split == "train":
            rng = np.random.default_rng(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        offsets = crop_offsets(len(rows), arr.shape[1:3], self.crop_shape, rng)
        return to_float(gather_cropped(arr, rows, self.crop_shape, offsets))

    def chunk_groups(self) -> tuple[np.ndarray, int] | None:
        """``(group (N,), pool)`` for :class:`~diffpolicy.data.loader.ChunkLocalWindows`, or None when every array
        is in memory: the chunk holding each window's first observation row in the chunk-cached array with the
        largest rows, and how many of its chunks to draw batches from at a time (half its cache, so the spill of
        windows into the following chunk and the next pool's first batches fit too)."""
        cached = [a for a in self.arrays.values() if isinstance(a, ChunkCachedArray)]
        if not cached:
            return None
        arr = max(cached, key=lambda a: a.row_bytes)
        return self.index.table[:, 0] // arr.chunk_len, max(1, arr.max_chunks // 2)

    def __getitem__(self, i: int) -> dict:
        """Window ``i`` -> ``{"obs": {key: (To, ...)}, "action": (T, Da)}``."""
        batch = self.sample_batch(np.array([int(i)]))
        return {"obs": {k: v[0] for k, v in batch["obs"].items()}, "action": batch["action"][0]}

    def compute_stats(self, keys: Sequence[str] | None = None, progress: bool = False) -> dict:
        """Streamed statistics (all episodes of the store, as Diffusion Policy does) of ``keys`` (default: the
        low-dim obs keys and the action key)."""
        keys = list(keys) if keys is not None else [*[k for k in self.obs_keys if k not in self.image_keys],
                                                    self.action_key]
        stored = [k for k in keys if k == self.action_key or self.obs_spec.renamed(k) == k]
        stats = compute_stats(self.buffer, stored, progress=progress) if stored else {}
        derived = [k for k in keys if k not in stored]  # renamed or computed: from the arrays built above
        if derived:
            stats.update(compute_stats({k: self.arrays[k] for k in derived}, derived))
        return stats

    def normalizer(self, modes: Mapping[str, str], stats: Mapping | None = None) -> Normalizer:
        """A :class:`Normalizer` over ``modes`` (``{key: "minmax" | "gaussian" | "identity"}``)."""
        return Normalizer.from_stats(stats if stats is not None else self.compute_stats(list(modes)), modes)
