"""Training windows over episodes, with the Diffusion Policy padding convention, as vectorised index tables.

A window is ``horizon`` consecutive steps of one episode. Its relative start ``s`` runs over
``-pad_before .. L - horizon + pad_after`` for an episode of length ``L``; steps outside ``[0, L)`` repeat the
episode's first / last step. With ``pad_before = n_obs_steps - 1`` and ``pad_after = n_action_steps - 1`` every
step of an episode is the current observation of some window, and the executed actions (steps
``n_obs_steps - 1 .. n_obs_steps + n_action_steps - 2``) are always real. Paddings are clamped to
``[0, horizon - 1]``; an episode too short to hold one window contributes none.

Edge repetition is the same as clamping the step index into the episode, so the rows of every window are
``clip(start + arange(horizon), first, last)``. That table ``(N, horizon)`` is computed once; a batch of windows
is then one ``np.take`` of table rows and one ``np.take`` per key, with no Python per window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowSpec:
    """Window geometry: ``horizon`` steps, the first ``n_obs_steps`` are observations, actions cover all."""

    horizon: int
    n_obs_steps: int
    n_action_steps: int

    def __post_init__(self):
        if self.horizon < 1 or self.n_obs_steps < 1 or self.n_action_steps < 1:
            raise ValueError(f"window sizes must be >= 1; got {self}")
        if self.n_obs_steps > self.horizon:
            raise ValueError(f"n_obs_steps={self.n_obs_steps} exceeds horizon={self.horizon}")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(f"n_obs_steps - 1 + n_action_steps = {self.n_obs_steps - 1 + self.n_action_steps} "
                             f"exceeds horizon={self.horizon}: executed actions would fall outside the window")

    @property
    def pad_before(self) -> int:
        return min(self.n_obs_steps - 1, self.horizon - 1)

    @property
    def pad_after(self) -> int:
        return min(self.n_action_steps - 1, self.horizon - 1)


class WindowIndex:
    """Every window start over the episodes selected by ``episode_mask``.

    Attributes (all ``(N,)`` int64, N = number of windows): ``start`` the global row of window step 0 (before its
    episode's first row when padded), ``first``/``last`` the global rows of its episode's first/last step,
    ``episode`` the episode index.
    """

    def __init__(self, episode_ends: np.ndarray, horizon: int, pad_before: int = 0, pad_after: int = 0,
                 episode_mask: np.ndarray | None = None):
        ends = np.asarray(episode_ends, dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        lengths = ends - starts
        mask = np.ones(len(ends), bool) if episode_mask is None else np.asarray(episode_mask, bool)
        if mask.shape != ends.shape:
            raise ValueError(f"episode_mask has shape {mask.shape}; expected {ends.shape}")
        pad_before = int(np.clip(pad_before, 0, horizon - 1))
        pad_after = int(np.clip(pad_after, 0, horizon - 1))
        counts = np.where(mask, np.maximum(lengths - horizon + pad_before + pad_after + 1, 0), 0)
        self.horizon = horizon
        self.episode = np.repeat(np.arange(len(ends), dtype=np.int64), counts)
        # Offset of each window inside its episode's run of windows, then shifted by -pad_before.
        run_start = np.repeat(np.cumsum(counts) - counts, counts)
        relative = np.arange(counts.sum(), dtype=np.int64) - run_start - pad_before
        self.start = starts[self.episode] + relative
        self.first = starts[self.episode]
        self.last = ends[self.episode] - 1
        self.table = np.clip(self.start[:, None] + np.arange(horizon), self.first[:, None], self.last[:, None])

    def __len__(self) -> int:
        return len(self.start)

    def rows(self, windows: np.ndarray, length: int | None = None) -> np.ndarray:
        """Global rows ``(B, length)`` of the first ``length`` (default ``horizon``) steps of ``windows`` ``(B,)``,
        edge-padded by clamping into each window's episode. Out-of-range window ids raise ``IndexError``."""
        rows = self.table.take(np.asarray(windows, dtype=np.int64), axis=0)
        return rows if length is None else rows[:, :length]


def split_episodes(n_episodes: int, val_ratio: float, seed: int,
                   max_train_episodes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``(train_mask, val_mask)`` over episodes, fixed by ``seed``.

    ``round(n * val_ratio)`` episodes (at least 1 when ``val_ratio > 0``, and always leaving >= 1 for training)
    go to validation; ``max_train_episodes`` then keeps a seeded random subset of the training episodes.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1); got {val_ratio}")
    if n_episodes < 1:
        raise ValueError(f"cannot split {n_episodes} episodes")
    rng = np.random.default_rng(seed)
    val = np.zeros(n_episodes, bool)
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
        val[rng.choice(n_episodes, size=n_val, replace=False)] = True
    train = ~val
    if max_train_episodes is not None:
        if max_train_episodes < 1:
            raise ValueError(f"max_train_episodes must be >= 1; got {max_train_episodes}")
        idx = np.flatnonzero(train)
        if len(idx) > max_train_episodes:
            train = np.zeros(n_episodes, bool)
            train[rng.choice(idx, size=max_train_episodes, replace=False)] = True
    return train, val
