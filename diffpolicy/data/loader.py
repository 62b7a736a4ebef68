"""Loaders over whole batches: the sampler draws window ids and a crop seed per batch, and one
:meth:`WindowDataset.sample_batch` call gathers the batch (in a DataLoader worker, or in process without workers).

Batches depend only on ``seed`` and the epoch (the sampler counts its own epochs), not on the number of workers:
the randomness travels with each batch request instead of living in per-worker RNG state.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import torch

from diffpolicy.data.dataset import WindowDataset


class BatchRequest(NamedTuple):
    windows: np.ndarray  # (B,) window ids
    seed: int  # crop seed of this batch


class SeededBatchSampler:
    """Yields :class:`BatchRequest` s; each pass over it is the next epoch with a fresh, seeded permutation."""

    def __init__(self, n: int, batch_size: int, shuffle: bool = True, drop_last: bool = True, seed: int = 0):
        if n < 1 or batch_size < 1:
            raise ValueError(f"need n >= 1 windows and batch_size >= 1; got n={n}, batch_size={batch_size}")
        self.n, self.batch_size, self.shuffle, self.drop_last, self.seed = n, batch_size, shuffle, drop_last, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[BatchRequest]:
        # A generator on purpose: DataLoader calls iter() on its sampler more than once per epoch, and only the
        # iterator it actually consumes may advance the epoch counter.
        seeds = np.random.SeedSequence([self.seed, self.epoch]).generate_state(2, np.uint64)
        self.epoch += 1
        # torch.randperm is ~3x faster than numpy's permutation; at ~100 batches per epoch it is a visible share
        # of a state batch's ~10 us gather.
        gen = torch.Generator().manual_seed(int(seeds[0] >> np.uint64(1)))
        order = torch.randperm(self.n, generator=gen).numpy() if self.shuffle else np.arange(self.n)
        crop_seeds = np.random.default_rng(int(seeds[1])).integers(0, 2**63 - 1, len(self)).tolist()
        full = self.n // self.batch_size
        batches = list(order[:full * self.batch_size].reshape(full, self.batch_size))  # row views, no copies
        if len(self) > full:
            batches.append(order[full * self.batch_size:])
        yield from map(BatchRequest, batches, crop_seeds)


class ChunkLocalWindows:
    """Step-indexed window ids drawn from a rotating pool of chunks: random access to a store larger than its chunk
    cache, without re-reading a chunk for nearly every window.

    An epoch is ``E = round(N / batch_size)`` steps. It visits the ``G`` chunk groups (``group`` (N,): the chunk of
    each window) in a seeded random order, cut into ``P = ceil(G / pool)`` consecutive pools of about ``pool``
    groups, and gives each pool a share of the epoch's steps proportional to its windows; those steps draw windows
    uniformly (with replacement, like the in-memory path) from the pool. So every window is drawn about once per
    epoch, as from the whole set, and a pool's chunks stay cached while it is used; only the batch composition
    changes (a batch mixes ``pool / G`` of the data). ``sample(step, rng, n)`` depends only on ``(seed, rank, step)``
    and ``rng``, so a resumed run repeats.
    """

    def __init__(self, group: np.ndarray, pool: int, batch_size: int, seed: int = 0, rank: int = 0):
        group = np.asarray(group, dtype=np.int64)
        if group.ndim != 1 or len(group) == 0 or pool < 1 or batch_size < 1:
            raise ValueError(f"need a non-empty (N,) group array, pool >= 1 and batch_size >= 1; got shape "
                             f"{group.shape}, pool={pool}, batch_size={batch_size}")
        self.by_group = np.argsort(group, kind="stable")  # window ids, grouped
        _, self.first, self.count = np.unique(group[self.by_group], return_index=True, return_counts=True)
        self.n_groups = len(self.count)
        self.n_pools = -(-self.n_groups // pool)
        self.epoch_steps = max(self.n_pools, round(len(group) / batch_size))
        self.seed, self.rank = seed, rank
        self._epoch, self._plan = -1, None

    def pool(self, step: int) -> np.ndarray:
        """Group indices (into the sorted groups) that step ``step`` draws from."""
        epoch, s = divmod(step, self.epoch_steps)
        if epoch != self._epoch:
            perm = np.random.default_rng([self.seed, self.rank, epoch, 0x10CA1]).permutation(self.n_groups)
            cuts = np.arange(self.n_pools + 1) * self.n_groups // self.n_pools
            windows = np.add.reduceat(self.count[perm], cuts[:-1])
            last_step = np.rint(np.cumsum(windows) / windows.sum() * self.epoch_steps).astype(np.int64)
            self._epoch, self._plan = epoch, (perm, cuts, last_step)
        perm, cuts, last_step = self._plan
        j = int(np.searchsorted(last_step, s, side="right"))  # pools given no step this epoch are skipped
        return perm[cuts[j]:cuts[j + 1]]

    def sample(self, step: int, rng: np.random.Generator, n: int) -> np.ndarray:
        """``(n,)`` window ids, uniform over the windows of step ``step``'s pool."""
        groups = self.pool(step)
        counts = self.count[groups]
        ends = np.cumsum(counts)
        u = rng.integers(0, ends[-1], n)
        k = np.searchsorted(ends, u, side="right")  # which group of the pool each draw falls in
        return self.by_group[self.first[groups[k]] + u - (ends[k] - counts[k])]


class _BatchView(torch.utils.data.Dataset):
    """Adapts :class:`WindowDataset` to the DataLoader's ``batch_size=None`` mode: one item = one batch."""

    def __init__(self, dataset: WindowDataset):
        self.dataset = dataset

    def __getitem__(self, request: BatchRequest) -> dict:
        return self.dataset.sample_batch(request.windows, request.seed)

    def __len__(self) -> int:
        return len(self.dataset)


def _keep(batch: dict) -> dict:
    """Batches are already tensors; skip the default conversion walk."""
    return batch


class InProcessLoader:
    """The ``num_workers=0`` loader: the same seeded batches as the DataLoader, gathered in the calling process.

    torch's DataLoader adds ~10-15 us per batch in-process (a profiler context around every ``next``), as much as
    gathering a 256-window state batch itself, and nothing else when there are no workers.
    """

    def __init__(self, dataset: WindowDataset, sampler: SeededBatchSampler, pin_memory: bool = False):
        self.dataset, self.sampler, self.pin_memory = dataset, sampler, pin_memory

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict]:
        for request in self.sampler:
            batch = self.dataset.sample_batch(request.windows, request.seed)
            yield _pin(batch) if self.pin_memory else batch


def _pin(batch: dict) -> dict:
    return {"obs": {k: v.pin_memory() for k, v in batch["obs"].items()}, "action": batch["action"].pin_memory()}


def make_dataloader(dataset: WindowDataset, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                    seed: int = 0, drop_last: bool = True, pin_memory: bool = False,
                    persistent_workers: bool | None = None, prefetch_factor: int | None = None,
                    torch_loader: bool | None = None) -> torch.utils.data.DataLoader | InProcessLoader:
    """Reproducible loader of ``{"obs": {key: (B, To, ...)}, "action": (B, T, Da)}`` batches.

    With workers it is a torch ``DataLoader`` (one item = one batch); with ``num_workers=0`` an
    :class:`InProcessLoader` yielding the identical batches, unless ``torch_loader=True``.
    """
    sampler = SeededBatchSampler(len(dataset), batch_size, shuffle, drop_last, seed)
    if num_workers == 0 and not torch_loader:
        return InProcessLoader(dataset, sampler, pin_memory)
    extra = {}
    if num_workers > 0:
        extra["persistent_workers"] = True if persistent_workers is None else persistent_workers
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    return torch.utils.data.DataLoader(_BatchView(dataset), batch_size=None, sampler=sampler, num_workers=num_workers,
                                       collate_fn=_keep, pin_memory=pin_memory, **extra)
