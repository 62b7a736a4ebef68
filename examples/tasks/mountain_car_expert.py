"""Scripted expert for gymnasium's ``MountainCarContinuous-v0``, and a wrapper that shrinks its rendered frames.

Used by ``examples/tasks/mountain_car.yaml`` (``expert: "mountain_car_expert:make_expert"``, wrapper
``mountain_car_expert:PoolPixels``); importable when ``examples/tasks`` is on ``sys.path``
(``PYTHONPATH=examples/tasks``).

The car is too weak to drive up the right hill directly: it has to swing back and forth to build up energy. The
expert pumps energy: it pushes in the direction the car moves (``a = +1`` when the velocity is >= 0, else ``-1``),
so every push adds kinetic energy, and the swing grows until the car crests the right hill (position >= 0.45 ends
the episode by termination, which the task counts as success). From rest it first pushes in a direction drawn per
episode. Variety between demos, from the expert's own generator: that first direction, the push strength (0.85 to
1.0 of full force) and a small Gaussian noise on each action. The expert reads the car's state from
``env.unwrapped.state`` (position, velocity), the same numbers as the ``state`` observation.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class MountainCarExpert:
    """Call ``reset()`` after ``env.reset()``, then ``act(obs)`` each step (``obs`` is unused)."""

    def __init__(self, env, seed: int | None = None):
        self.env = env.unwrapped
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        rng = self.rng
        self.first_push = float(rng.choice([-1.0, 1.0]))
        self.strength = rng.uniform(0.85, 1.0)
        self.noise_sigma = rng.uniform(0.02, 0.1)

    def act(self, obs=None) -> np.ndarray:
        velocity = float(self.env.state[1])
        direction = self.first_push if abs(velocity) < 1e-4 else np.sign(velocity)
        action = direction * self.strength + self.rng.normal(0.0, self.noise_sigma)
        return np.clip(np.array([action]), -1.0, 1.0).astype(np.float32)


def make_expert(env_id: str, env, seed: int | None = None) -> MountainCarExpert:
    """The expert factory of the task config (``expert: "mountain_car_expert:make_expert"``)."""
    return MountainCarExpert(env, seed=seed)


class PoolPixels(gym.ObservationWrapper):
    """Average-pool the ``key`` image of a ``Dict`` observation by ``factor`` in height and width (uint8 kept).

    ``MountainCarContinuous-v0`` renders 400 x 600 x 3 frames (720 kB a step); ``factor: 4`` stores 100 x 150 x 3.
    """

    def __init__(self, env: gym.Env, key: str = "pixels", factor: int = 4):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict) or key not in space.spaces:
            raise ValueError(f"PoolPixels needs a Dict observation with key {key!r}, got {space}")
        h, w, c = space[key].shape
        if not 1 <= factor <= 16 or h % factor or w % factor:
            raise ValueError(f"factor {factor} must be in 1..16 and divide the image size {(h, w)}")
        self.key, self.factor = key, int(factor)
        self.observation_space = gym.spaces.Dict(
            {**space.spaces, key: gym.spaces.Box(0, 255, (h // factor, w // factor, c), np.uint8)})

    def observation(self, observation):
        f = self.factor
        img = np.asarray(observation[self.key]).astype(np.uint16)  # 255 * f * f fits for f <= 16
        img = sum(img[:, i::f] for i in range(f))  # columns, then rows: cheaper than a (h/f, f, w/f, f) mean
        img = sum(img[i::f] for i in range(f))
        return {**observation, self.key: ((img + f * f // 2) // (f * f)).astype(np.uint8)}
