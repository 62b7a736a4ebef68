"""Scripted expert for gymnasium's MuJoCo ``Reacher-v5`` (a planar 2-link arm brings its fingertip to a target).

Used by ``examples/tasks/reacher.yaml`` as ``expert: "reacher_expert:make_expert"``; importable when
``examples/tasks`` is on ``sys.path`` (``PYTHONPATH=examples/tasks``).

The expert reads the simulator (``env.unwrapped.data``): the joint angles and velocities and the target position.
Per episode it solves the arm's inverse kinematics for the target (links 0.10 m and 0.11 m from the base at the
origin), choosing the elbow-left or elbow-right solution with probability 1/2 each (two equally good ways to reach,
so the demos are bimodal), and tracks those joint angles with a saturated PD controller. Variety between demos, all
from the expert's own generator: the elbow side, the PD gains (+-20 %), and a smooth (low-pass) action noise that
fades out as the fingertip nears the target, so the arm still settles on it.

Actuation: each motor has gear 200 on a joint of armature 1 and damping 1, so an action ``a`` in [-1, 1] gives an
angular acceleration of about ``200 a`` rad/s^2; the gains below make the joints close to critically damped at
about 15 rad/s (dt = 0.02 s per env step). The target can sit closer to the base than the elbow's +-3.0 rad limit
allows the fingertip to come (1.8 cm): the elbow target is clipped to that limit, which leaves at most 1.8 cm.
"""

from __future__ import annotations

import numpy as np

L1, L2 = 0.10, 0.11  # link lengths (reacher.xml): base -> elbow, elbow -> fingertip
ELBOW_LIMIT = 3.0  # joint1 range (rad)
KP, KD = 1.2, 0.15  # action per rad and per rad/s


def inverse_kinematics(target_xy: np.ndarray, elbow: int) -> np.ndarray:
    """Joint angles ``(q0, q1)`` putting the fingertip at ``target_xy`` (or as near as the elbow limit allows);
    ``elbow`` +1 or -1 picks the sign of ``q1``."""
    x, y = float(target_xy[0]), float(target_xy[1])
    r2 = x * x + y * y
    c1 = np.clip((r2 - L1 * L1 - L2 * L2) / (2 * L1 * L2), -1.0, 1.0)
    q1 = elbow * min(float(np.arccos(c1)), ELBOW_LIMIT)
    q0 = np.arctan2(y, x) - np.arctan2(L2 * np.sin(q1), L1 + L2 * np.cos(q1))
    return np.array([q0, q1])


def wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


class ReacherExpert:
    """Call ``reset()`` after ``env.reset()``, then ``act(obs)`` each step (``obs`` is unused)."""

    def __init__(self, env, seed: int | None = None):
        self.env = env.unwrapped
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        rng = self.rng
        self.elbow = int(rng.choice([-1, 1]))
        self.kp = KP * rng.uniform(0.8, 1.2)
        self.kd = KD * rng.uniform(0.8, 1.2)
        self.noise_sigma = rng.uniform(0.05, 0.15)
        self.noise = np.zeros(2)

    def act(self, obs=None) -> np.ndarray:
        data = self.env.data
        q, qd = data.qpos[:2].copy(), data.qvel[:2].copy()
        target = data.body("target").xpos[:2]
        q_des = inverse_kinematics(target, self.elbow)
        err = q_des - q
        err[0] = wrap(err[0])  # the shoulder turns freely: go the short way round
        action = self.kp * err - self.kd * qd
        dist = float(np.linalg.norm(data.body("fingertip").xpos[:2] - target))
        self.noise = 0.7 * self.noise + self.rng.normal(0.0, self.noise_sigma, size=2)
        fade = min(1.0, dist / 0.05)
        return np.clip(action + fade * self.noise, -1.0, 1.0).astype(np.float32)


def make_expert(env_id: str, env, seed: int | None = None) -> ReacherExpert:
    """The expert factory of the task config (``expert: "reacher_expert:make_expert"``)."""
    return ReacherExpert(env, seed=seed)
