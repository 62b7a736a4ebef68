"""DataLoader over whole batches: the sampler draws window ids and a crop seed per batch, a worker gathers the
batch with one :meth:`WindowDataset.sample_batch` call.

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
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        crop_seeds = rng.integers(0, 2**63 - 1, len(self))
        for b in range(len(self)):
            yield BatchRequest(order[b * self.batch_size:(b + 1) * self.batch_size], int(crop_seeds[b]))


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


def make_dataloader(dataset: WindowDataset, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                    seed: int = 0, drop_last: bool = True, pin_memory: bool = False,
                    persistent_workers: bool | None = None, prefetch_factor: int | None = None
                    ) -> torch.utils.data.DataLoader:
    """Reproducible DataLoader of ``{"obs": {key: (B, To, ...)}, "action": (B, T, Da)}`` batches."""
    sampler = SeededBatchSampler(len(dataset), batch_size, shuffle, drop_last, seed)
    extra = {}
    if num_workers > 0:
        extra["persistent_workers"] = True if persistent_workers is None else persistent_workers
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    return torch.utils.data.DataLoader(_BatchView(dataset), batch_size=None, sampler=sampler, num_workers=num_workers,
                                       collate_fn=_keep, pin_memory=pin_memory, **extra)
