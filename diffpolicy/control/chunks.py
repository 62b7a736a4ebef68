"""Planned chunks indexed by control step, and how the action of a step is chosen from them.

A chunk sampled from the observation history ending at control step ``s`` holds the actions for steps
``s - (To - 1) ... s - (To - 1) + T - 1``; the executable part starts at index ``To - 1`` (the step of the newest
observation), so :class:`Chunk` keeps ``actions[i]`` = action for step ``start + i``, ``i < T - To + 1``. Indexing
by step is what makes asynchronous switching exact: a chunk that arrives ``d`` steps after its observation is
simply read from index ``d``, skipping the actions whose time has passed.

Selection:
- ``latest`` (sync, async, RTC): the most recently sampled chunk that covers the step.
- ``ensemble`` (ACT, Zhao et al. 2023): the weighted mean over every chunk that covers the step, weights
  ``exp(-k * i)`` with ``i = 0`` for the oldest covering chunk, so older predictions dominate and a new chunk
  blends in gradually.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Chunk:
    """``actions`` ``(H, Da)`` env units for steps ``start .. start + H - 1``; ``normed`` ``(T, Da)`` the full
    normalised chunk as sampled (used to fix the next chunk's prefix in real-time chunking)."""

    index: int
    start: int
    actions: np.ndarray
    normed: torch.Tensor

    def covers(self, step: int) -> bool:
        return self.start <= step < self.start + len(self.actions)


class ChunkBuffer:
    """The chunks that may still contribute an action; older ones are dropped as time passes (bounded memory)."""

    def __init__(self, selection: str = "latest", decay: float = 0.01):
        if selection not in ("latest", "ensemble"):
            raise ValueError(f"selection must be 'latest' or 'ensemble', got {selection!r}")
        if decay < 0:
            raise ValueError(f"ensemble decay must be >= 0, got {decay}")
        self.selection, self.decay = selection, decay
        self.chunks: list[Chunk] = []

    def clear(self) -> None:
        self.chunks.clear()

    def add(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.chunks.sort(key=lambda c: c.start)  # results arrive in launch order; keep the invariant explicit

    @property
    def latest(self) -> Chunk | None:
        return self.chunks[-1] if self.chunks else None

    def action(self, step: int) -> tuple[np.ndarray, int] | None:
        """``(action (Da,), index of the newest contributing chunk)`` for ``step``, or None if no chunk covers it."""
        self.chunks = [c for c in self.chunks if c.start + len(c.actions) > step]
        covering = [c for c in self.chunks if c.covers(step)]
        if not covering:
            return None
        if self.selection == "latest":
            c = covering[-1]
            return c.actions[step - c.start], c.index
        w = ensemble_weights(len(covering), self.decay)
        stacked = np.stack([c.actions[step - c.start] for c in covering])
        return (w[:, None] * stacked).sum(0) / w.sum(), covering[-1].index


def ensemble_weights(n: int, decay: float) -> np.ndarray:
    """ACT's temporal-ensembling weights ``exp(-decay * i)``, ``i = 0`` the oldest of ``n`` chunks (unnormalised)."""
    return np.exp(-decay * np.arange(n))
