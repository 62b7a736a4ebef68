"""Scripted demonstrator of ArmPick: approach, descend, close, lift, with per-episode random style.

A small state machine produces a Cartesian target for the end-effector and a gripper command; the action is a
proportional step toward the target, speed-limited, low-pass filtered (smooth like teleoperation) and perturbed
by smooth jitter. Per episode the expert's own ``np.random.Generator`` draws: hover height, grasp height and
horizontal offset, the final lift height and drift, the speed limit, the filter constant, the jitter amplitude and
how fast the gripper is squeezed. If the cube slips out during the lift, the expert opens and starts over (a
recovery that also appears in the demos).
"""

from __future__ import annotations

import numpy as np

from diffpolicy.envs.arm_pick import CUBE_HALF, DELTA_SCALE, LIFT_HEIGHT, ArmPickEnv

APPROACH, DESCEND, CLOSE, LIFT = "approach", "descend", "close", "lift"


class ArmPickExpert:
    """Expert for ``ArmPickEnv``; call ``reset()`` after ``env.reset()``, then ``act(obs)`` every step."""

    def __init__(self, env: ArmPickEnv, seed: int | None = None):
        if not isinstance(env, ArmPickEnv):
            raise TypeError(f"ArmPickExpert needs the unwrapped ArmPickEnv, got {type(env).__name__}")
        self.env = env
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Draw this episode's style and restart the state machine."""
        rng = self.rng
        self.hover = rng.uniform(0.04, 0.09)  # approach height above the cube centre (m)
        self.grasp_dz = rng.uniform(-0.002, 0.006)  # grasp height relative to the cube centre (m)
        self.grasp_dxy = rng.uniform(-0.004, 0.004, size=2)  # small off-centre grasp, still inside the pads
        self.lift_z = CUBE_HALF + LIFT_HEIGHT + rng.uniform(0.02, 0.06)
        self.lift_drift = rng.uniform(-0.04, 0.04, size=2)  # where the lifted cube is carried (m)
        self.max_step = rng.uniform(0.55, 1.0)  # speed limit in action units (1 = DELTA_SCALE per step)
        self.smooth = rng.uniform(0.3, 0.6)  # low-pass weight of the previous action
        self.jitter_sigma = rng.uniform(0.02, 0.08)
        self.squeeze_rate = rng.uniform(0.4, 0.8)  # gripper command increase per step while closing
        self._start_phase(APPROACH)
        self.prev = np.zeros(3)
        self.jitter = np.zeros(3)

    def _start_phase(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0
        if phase in (APPROACH, DESCEND):
            self.grip = -1.0  # open; closing and lifting keep the current command

    def _target(self, eef: np.ndarray, cube: np.ndarray) -> np.ndarray:
        """Advance the state machine and return the end-effector target ``(3,)``."""
        grasp = np.r_[cube[:2] + self.grasp_dxy, cube[2] + self.grasp_dz]
        if self.phase == APPROACH:
            target = np.r_[grasp[:2], cube[2] + self.hover]
            # Start descending once roughly above the cube (the descent itself stays vertical and slow).
            if np.linalg.norm(eef[:2] - grasp[:2]) < 0.008 and eef[2] < target[2] + 0.03:
                self._start_phase(DESCEND)
        elif self.phase == DESCEND:
            target = grasp
            if np.linalg.norm(eef - grasp) < 0.005:
                self._start_phase(CLOSE)
        elif self.phase == CLOSE:
            target = grasp
            self.grip = min(1.0, self.grip + self.squeeze_rate)
            # Lift only once the command is fully closed and the fingers have settled on the cube.
            if self.grip >= 1.0 and self.phase_steps >= 2:
                self._start_phase(LIFT)
        else:
            target = np.r_[grasp[:2] + self.lift_drift, self.lift_z]
            cube_in_hand = np.linalg.norm(cube - eef) < 0.03 and self.env.gripper_opening > 0.02
            if not cube_in_hand:  # slipped or missed: open, go back up and retry
                self._start_phase(APPROACH)
        self.phase_steps += 1
        return target

    def act(self, obs=None) -> np.ndarray:
        """Next action ``(4,)`` float32 ``(dx, dy, dz, gripper)``; reads the simulator, ``obs`` is unused."""
        eef, cube = self.env.eef_pos, self.env.cube_pos
        target = self._target(eef, cube)
        step = (target - eef) / DELTA_SCALE
        # Horizontal and vertical moves at the grasp are slowed down so the pads do not shove the cube.
        limit = self.max_step * (0.5 if self.phase in (DESCEND, CLOSE) else 1.0)
        norm = np.linalg.norm(step)
        if norm > limit:
            step *= limit / norm
        self.jitter = 0.7 * self.jitter + self.rng.normal(0.0, self.jitter_sigma, size=3)
        if self.phase in (DESCEND, CLOSE):
            self.jitter *= 0.3  # steady hand near the cube
        move = self.smooth * self.prev + (1.0 - self.smooth) * step + self.jitter
        self.prev = move
        return np.clip(np.r_[move, self.grip], -1.0, 1.0).astype(np.float32)
