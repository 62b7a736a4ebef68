"""Step-indexed training batches: the batch of step ``k`` is a pure function of ``(seed, k, rank)``.

That is what makes a resumed run repeat an uninterrupted one; with ``num_workers > 0`` DataLoader workers gather
the coming steps' batches in the background, in order, with the same content as ``num_workers = 0``.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np
import torch

from ..data.dataset import WindowDataset
from ..data.loader import BatchRequest, ChunkLocalWindows, _BatchView


class StepBatches:
    """``batch_fn(step, generator)`` for :func:`~diffpolicy.training.loop.train` over a :class:`WindowDataset`.

    Windows are uniform over the dataset, or, when an array is chunk-cached (larger than the memory budget) and
    ``chunk_local`` is not False, uniform over a rotating pool of its chunks (:class:`ChunkLocalWindows`).
    """

    def __init__(self, dataset: WindowDataset, batch_size: int, seed: int = 0, num_workers: int = 0,
                 device: torch.device | str = "cpu", rank: int = 0, chunk_local: bool | None = None):
        self.dataset, self.batch_size, self.seed, self.rank = dataset, batch_size, seed, rank
        self.num_workers, self.device = num_workers, torch.device(device)
        groups = dataset.chunk_groups() if chunk_local is not False else None
        self.local = ChunkLocalWindows(*groups, batch_size, seed, rank) if groups is not None else None
        self._it: Iterator | None = None
        self._next = -1

    def request(self, step: int) -> BatchRequest:
        rng = np.random.default_rng([self.seed, step, self.rank])
        if self.local is None:
            windows = rng.integers(0, len(self.dataset), self.batch_size)
        else:
            windows = self.local.sample(step, rng, self.batch_size)
        return BatchRequest(windows, int(rng.integers(0, 2**62)))

    def _requests(self, start: int) -> Iterator[BatchRequest]:
        return map(self.request, itertools.count(start))

    def __call__(self, step: int, generator: torch.Generator | None = None) -> dict:
        if self.num_workers == 0:
            batch = self.dataset.sample_batch(*self.request(step))
        else:
            if self._it is None or step != self._next:  # first call, or a jump (resume): restart the prefetch
                loader = torch.utils.data.DataLoader(
                    _BatchView(self.dataset), batch_size=None, sampler=_Infinite(self, step),
                    num_workers=self.num_workers, collate_fn=lambda b: b, pin_memory=self.device.type == "cuda")
                self._it = iter(loader)
            batch = next(self._it)
            self._next = step + 1
        nb = self.device.type == "cuda"
        return {"obs": {k: v.to(self.device, non_blocking=nb) for k, v in batch["obs"].items()},
                "action": batch["action"].to(self.device, non_blocking=nb)}


class _Infinite(torch.utils.data.Sampler):
    def __init__(self, source: StepBatches, start: int):
        self.source, self.start = source, start

    def __iter__(self):
        return self.source._requests(self.start)
