"""Smoothness and timing statistics of an executed action sequence.

- **jump** ``|a_t - a_{t-1}|`` (Euclidean norm over action dimensions) and **jerk** ``|a_t - 3 a_{t-1} + 3 a_{t-2} -
  a_{t-3}|`` (third difference), per step, reported separately at chunk boundaries (the first step executed from a
  new chunk) and inside chunks, so a smoothing method's effect at the switch is visible.
- latency percentiles from a fixed-size ring buffer, so a long-running controller never grows its memory.
"""

from __future__ import annotations

import numpy as np


def jumps(actions: np.ndarray) -> np.ndarray:
    """``(N, Da)`` -> ``(N,)``: ``|a_t - a_{t-1}|``, NaN for ``t = 0``."""
    a = _check(actions)
    out = np.full(len(a), np.nan)
    out[1:] = np.linalg.norm(np.diff(a, axis=0), axis=1)
    return out


def jerks(actions: np.ndarray) -> np.ndarray:
    """``(N, Da)`` -> ``(N,)``: norm of the third backward difference, NaN for ``t < 3``."""
    a = _check(actions)
    out = np.full(len(a), np.nan)
    if len(a) > 3:
        out[3:] = np.linalg.norm(np.diff(a, n=3, axis=0), axis=1)
    return out


def boundary_stats(actions: np.ndarray, boundaries: np.ndarray) -> dict[str, float]:
    """Mean/max jump and jerk at chunk boundaries vs inside chunks.

    ``actions`` ``(N, Da)`` executed actions; ``boundaries`` ``(N,)`` bool, true where the step's action came from a
    chunk other than the previous step's (see :attr:`Controller.last_info`).
    """
    j, k = jumps(actions), jerks(actions)
    b = np.asarray(boundaries, dtype=bool)
    if b.shape != (len(j),):
        raise ValueError(f"boundaries: expected shape ({len(j)},) to match actions, got {b.shape}")
    out = {}
    for name, v in (("jump", j), ("jerk", k)):
        for where, sel in (("boundary", b), ("inside", ~b)):
            x = v[sel & np.isfinite(v)]
            out[f"{name}_{where}_mean"] = float(x.mean()) if len(x) else float("nan")
            out[f"{name}_{where}_max"] = float(x.max()) if len(x) else float("nan")
    out["n_boundaries"] = int(b[1:].sum())
    return out


def _check(actions) -> np.ndarray:
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"actions: expected (N, Da), got shape {a.shape}")
    return a


class RingStats:
    """The last ``capacity`` values of a scalar stream (preallocated), with percentiles; ``count`` counts all."""

    def __init__(self, capacity: int = 4096):
        self.buf = np.zeros(int(capacity))
        self.count = 0

    def add(self, value: float) -> None:
        self.buf[self.count % len(self.buf)] = value
        self.count += 1

    def values(self) -> np.ndarray:
        return self.buf[: min(self.count, len(self.buf))]

    def clear(self) -> None:
        self.count = 0

    def summary(self, scale: float = 1.0) -> dict[str, float]:
        """``{n, mean, p50, p90, p99, max}`` of the retained values times ``scale`` (e.g. 1e3 for ms)."""
        v = self.values() * scale
        if not len(v):
            return {"n": 0}
        p50, p90, p99 = np.percentile(v, [50, 90, 99])
        return {"n": self.count, "mean": float(v.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
                "max": float(v.max())}
