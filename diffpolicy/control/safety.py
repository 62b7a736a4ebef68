"""Checks between the policy and the robot: finite observations and actions, action bounds.

Nothing non-finite reaches the robot. A non-finite observation is replaced in the history by the last good one and
the step's action is the last safe action; a non-finite planned action is replaced by the last safe action. Each
such event is recorded as a :class:`SafetyEvent` naming the key and the flat indices of the offending entries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

log = logging.getLogger("diffpolicy.control")


class NonFiniteError(RuntimeError):
    """A non-finite observation or action with no earlier safe value to hold."""


class ControllerFault(RuntimeError):
    """Faults held for more steps than the fault policy allows (``fault_policy="raise"``)."""


@dataclass(frozen=True)
class SafetyEvent:
    step: int
    kind: str  # "obs" | "action" (non-finite values) | "timeout" | "error" (inference)
    key: str  # observation key, "action", or "inference"
    entries: tuple[int, ...] = ()  # flat indices of the non-finite entries (first 16)
    n_entries: int = 0
    detail: str = ""  # timeout / error: what happened

    def __str__(self) -> str:
        if self.kind == "timeout":
            return f"step {self.step}: no chunk in time ({self.detail}); holding the last safe action"
        if self.kind == "error":
            return f"step {self.step}: inference failed ({self.detail}); holding the last safe action"
        more = "" if self.n_entries <= len(self.entries) else f" (+{self.n_entries - len(self.entries)} more)"
        what = "observation key " + repr(self.key) if self.kind == "obs" else "planned action"
        return (f"step {self.step}: non-finite {what} at flat entries {list(self.entries)}{more}; "
                f"holding the last safe action")


def nonfinite_obs(obs: Mapping[str, np.ndarray], keys: Sequence[str], step: int) -> list[SafetyEvent]:
    """Events for every key of ``keys`` whose value in ``obs`` has a NaN or inf (integer arrays are always finite)."""
    events = []
    for k in keys:
        if k not in obs:
            continue  # the adapter reports missing keys with the list of expected ones
        a = np.asarray(obs[k])
        if a.dtype.kind in "fc":
            bad = np.flatnonzero(~np.isfinite(a))
            if len(bad):
                events.append(SafetyEvent(step, "obs", k, tuple(int(i) for i in bad[:16]), len(bad)))
    return events


def nonfinite_action(action: np.ndarray, step: int) -> SafetyEvent | None:
    bad = np.flatnonzero(~np.isfinite(action))
    if not len(bad):
        return None
    return SafetyEvent(step, "action", "action", tuple(int(i) for i in bad[:16]), len(bad))


class ActionBounds:
    """Clip actions ``(Da,)`` to ``[low, high]`` (a gymnasium ``Box`` or a ``(low, high)`` pair); counts clips."""

    def __init__(self, space, action_dim: int):
        low, high = (space.low, space.high) if hasattr(space, "low") else space
        self.low = np.broadcast_to(np.asarray(low, dtype=np.float32), (action_dim,)).copy()
        self.high = np.broadcast_to(np.asarray(high, dtype=np.float32), (action_dim,)).copy()
        if not (np.all(np.isfinite(self.low) | np.isneginf(self.low))
                and np.all(np.isfinite(self.high) | np.isposinf(self.high)) and np.all(self.low <= self.high)):
            raise ValueError(f"action bounds must satisfy low <= high with no NaN, got low={self.low}, "
                             f"high={self.high}")
        self.n_clipped = 0

    def __call__(self, action: np.ndarray) -> np.ndarray:
        out = np.clip(action, self.low, self.high)
        if np.any(out != action):
            self.n_clipped += 1
        return out
