"""Scripted demonstrator of TwoPath: a noisy "carrot" that walks a smoothed path round a randomly chosen side.

Per episode (all randomness from the expert's own ``np.random.Generator``):
  - the side (left / right of the obstacle) with probability 0.5 each, drawn in antithetic pairs so that demos split
    evenly instead of only on average: episodes 2k and 2k+1 of one expert take opposite sides (a fair coin picks
    which), and experts seeded 2j and 2j+1 share that coin with opposite phase, so a collector that builds one expert
    per episode with consecutive seeds, or reuses one expert per worker, gets a split within one episode of 50/50;
  - two via-points beside the obstacle (lateral clearance and heights drawn at random), so paths differ even on
    the same side;
  - the walking speed of the carrot and the amplitude of a smooth (first-order low-pass) hand-jitter noise.
The path start -> via_below -> via_above -> goal is rounded by Chaikin corner cutting, then the carrot advances
along it at the drawn speed (pausing when the agent lags), and the action is the carrot plus jitter. Jitter fades
out near the goal so the agent settles inside the success radius. This looks like smooth teleoperation.
"""

from __future__ import annotations

import numpy as np

from diffpolicy.envs.two_path import ARENA, TwoPathEnv

AGENT_RADIUS = 0.02


def chaikin(points: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Round the corners of a polyline ``(N, 2)`` by Chaikin corner cutting; end points are kept."""
    for _ in range(iterations):
        a, b = points[:-1], points[1:]
        cut = np.stack([0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b], axis=1).reshape(-1, 2)
        points = np.concatenate([points[:1], cut, points[-1:]])
    return points


class TwoPathExpert:
    """Expert for ``TwoPathEnv``; call ``reset()`` after ``env.reset()``, then ``act(obs)`` every step."""

    def __init__(self, env: TwoPathEnv, seed: int | None = None):
        if not isinstance(env, TwoPathEnv):
            raise TypeError(f"TwoPathExpert needs the unwrapped TwoPathEnv, got {type(env).__name__}")
        self.env = env
        self.rng = np.random.default_rng(seed)
        # The side coin: shared by the seed pair (2j, 2j+1), whose members take opposite phases.
        paired = isinstance(seed, (int, np.integer))
        self._side_rng = np.random.default_rng(int(seed) // 2) if paired else self.rng
        self._phase = int(seed) % 2 if paired else 0
        self._episodes = 0
        self.side = 0

    def _draw_side(self) -> int:
        if self._episodes % 2 == 0:
            self._coin = int(self._side_rng.integers(2))
        bit = self._coin ^ (self._episodes + self._phase) % 2
        self._episodes += 1
        return 1 if bit else -1

    def reset(self) -> None:
        """Draw this episode's side, via-points, speed and noise, and build the path from the current state."""
        rng, env = self.rng, self.env
        self.side = self._draw_side()  # -1: left of the obstacle, +1: right
        half_w, half_h = env.model.geom("obstacle").size[:2]
        centre = env.model.geom("obstacle").pos[:2]
        x_via = centre[0] + self.side * (half_w + AGENT_RADIUS + rng.uniform(0.025, 0.07))
        below = [x_via + rng.uniform(-0.01, 0.01), centre[1] - half_h - rng.uniform(0.03, 0.06)]
        above = [x_via + rng.uniform(-0.01, 0.01), centre[1] + half_h + rng.uniform(0.03, 0.06)]
        polyline = np.array([env.agent_pos, below, above, env.goal])
        self.path = chaikin(polyline)
        seg = np.linalg.norm(np.diff(self.path, axis=0), axis=1)
        self.arc = np.concatenate([[0.0], np.cumsum(seg)])
        self.step_len = rng.uniform(0.09, 0.15) / env.control_hz  # carrot advance per control step (m)
        self.jitter_sigma = rng.uniform(0.001, 0.004)
        self.jitter = np.zeros(2)
        self.s = 0.0  # carrot arc-length position

    def _point_at(self, s: float) -> np.ndarray:
        return np.array([np.interp(s, self.arc, self.path[:, i]) for i in range(2)])

    def act(self, obs=None) -> np.ndarray:
        """Next target (x, y), ``(2,)`` float32; ``obs`` is unused (the expert reads the simulator directly)."""
        agent = self.env.agent_pos
        # Do not run away from an agent that is held back (e.g. grazing the obstacle): keep the carrot close.
        if np.linalg.norm(self._point_at(self.s) - agent) < 0.04:
            self.s = min(self.s + self.step_len, self.arc[-1])
        target = self._point_at(self.s)
        self.jitter = 0.8 * self.jitter + self.rng.normal(0.0, self.jitter_sigma, size=2)
        fade = min(1.0, float(np.linalg.norm(self.env.goal - agent)) / 0.06)
        return np.clip(target + fade * self.jitter, -ARENA, ARENA).astype(np.float32)
