"""ArmPick: a 3-D gantry arm with a parallel gripper lifts a 4 cm cube off a table.

The arm is an overhead Cartesian gantry (slide joints x, y, z, gravity-compensated position servos) carrying a
two-finger parallel gripper that closes along world x (``envs/assets/arm_pick.xml``). The end-effector point (centre
between the finger pads) is exactly the joint position (x, y, z), so Cartesian control needs no IK.

Action ``(4,)`` float32 in [-1, 1]: ``(dx, dy, dz, gripper)``. The first three are end-effector position deltas
scaled by ``DELTA_SCALE`` = 2 cm per control step (10 Hz, 50 physics steps of 2 ms): the servo target is the
measured end-effector position plus the delta, clipped to the workspace. ``gripper`` sets the finger target
continuously: -1 fully open (10 cm between pads), +1 fully closed; the finger force limit sets the grip force.

Observations (``obs_type``):
  - ``"state"``: ``(11,)`` float32 ``[eef_pos (3), gripper (1), cube_pos (3), cube_quat (4)]``; ``gripper`` is the
    opening between the pads in metres (0..0.1), ``cube_quat`` is (w, x, y, z) with w >= 0;
  - ``"dict"``: ``state`` plus ``eef_pos`` ``(3,)``, ``gripper`` ``(1,)``, ``cube_pos`` ``(3,)``, ``cube_quat`` ``(4,)``;
  - ``"pixels"``: the ``"dict"`` keys plus ``img_scene`` (fixed front camera) and ``img_wrist`` (camera on the hand
    looking down between the fingers), each ``(96, 96, 3)`` uint8.

``reset(options={"reset_to_state": state})`` starts from a given ``(11,)`` state (velocities zero).

Success: the cube centre is at least ``LIFT_HEIGHT`` = 8 cm above its resting height; the episode then terminates
with reward 1.0 (0.0 on every other step). Reset draws the cube position (|x|, |y| <= 8 cm) and yaw (|yaw| <= 30
degrees) and the start of the end-effector from the seed. ``info`` on every reset and step: ``is_success`` (bool),
``cube_lift`` (height of the cube centre above its resting height, m).
"""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from diffpolicy.envs.mujoco_utils import CameraSet, load_model

OBS_TYPES = ("state", "dict", "pixels")
CAMERAS = ("scene", "wrist")  # observation keys img_scene, img_wrist
DELTA_SCALE = 0.02  # end-effector displacement (m) of a unit action per control step
CUBE_HALF = 0.02
LIFT_HEIGHT = 0.08
MAX_OPENING = 0.1  # distance between finger pads when fully open (m)
FINGER_TRAVEL = 0.048  # per-finger joint range (m)
CUBE_XY, CUBE_YAW = 0.08, np.pi / 6  # cube reset ranges: |x|, |y| <= CUBE_XY, |yaw| <= CUBE_YAW
EEF_START_XY, EEF_START_Z = 0.05, (0.14, 0.2)  # end-effector reset ranges
# Observation bounds of the cube centre: the rim and glass walls (inner faces at 0.215, ceiling at 0.32) keep it in.
CUBE_LOW, CUBE_HIGH = np.array([-0.2, -0.2, 0.0]), np.array([0.2, 0.2, 0.3])


class ArmPickEnv(gym.Env):
    """Gymnasium env of the 3-D lift task; see the module docstring for spaces and layout."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    control_hz = 10

    def __init__(self, obs_type: str = "state", render_mode: str | None = None, image_size: int = 96,
                 render_size: int = 256):
        if obs_type not in OBS_TYPES:
            raise ValueError(f"ArmPickEnv: unknown obs_type {obs_type!r}; expected one of {OBS_TYPES}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"ArmPickEnv: unknown render_mode {render_mode!r}; expected None or 'rgb_array'")
        self.obs_type, self.render_mode = obs_type, render_mode
        self.image_size, self.render_size = image_size, render_size
        self.model = load_model("arm_pick.xml")
        self.data = mujoco.MjData(self.model)
        self.n_substeps = round(1.0 / (self.control_hz * self.model.opt.timestep))
        m = self.model
        self._arm_q = np.array([m.joint(n).qposadr[0] for n in ("x", "y", "z")])
        self._finger_q = np.array([m.joint(n).qposadr[0] for n in ("finger_left", "finger_right")])
        self._cube_q = m.joint("cube").qposadr[0]
        self.eef_low = np.array([m.joint(n).range[0] for n in ("x", "y", "z")])
        self.eef_high = np.array([m.joint(n).range[1] for n in ("x", "y", "z")])
        self._cameras = CameraSet(m)

        self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        parts = {
            "eef_pos": spaces.Box(self.eef_low.astype(np.float32), self.eef_high.astype(np.float32), dtype=np.float32),
            "gripper": spaces.Box(0.0, MAX_OPENING, shape=(1,), dtype=np.float32),
            "cube_pos": spaces.Box(CUBE_LOW.astype(np.float32), CUBE_HIGH.astype(np.float32), dtype=np.float32),
            "cube_quat": spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32),
        }
        state = spaces.Box(np.concatenate([p.low for p in parts.values()]),
                           np.concatenate([p.high for p in parts.values()]), dtype=np.float32)
        if obs_type == "state":
            self.observation_space = state
        else:
            parts = {"state": state, **parts}
            if obs_type == "pixels":
                for cam in CAMERAS:
                    parts[f"img_{cam}"] = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
            self.observation_space = spaces.Dict(parts)

    # ---- simulation -------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        rng, q = self.np_random, self.data.qpos
        yaw = rng.uniform(-CUBE_YAW, CUBE_YAW)
        q[self._cube_q:self._cube_q + 3] = [*rng.uniform(-CUBE_XY, CUBE_XY, size=2), CUBE_HALF]
        q[self._cube_q + 3:self._cube_q + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        q[self._arm_q] = [*rng.uniform(-EEF_START_XY, EEF_START_XY, size=2), rng.uniform(*EEF_START_Z)]
        finger = 0.0  # fully open
        if options and options.get("reset_to_state") is not None:
            finger = self._set_state(options["reset_to_state"])
        self.data.ctrl[:3] = q[self._arm_q]  # servos start holding the initial pose
        self.data.ctrl[3:] = finger
        mujoco.mj_forward(self.model, self.data)
        return self._obs(), self._info()

    def _set_state(self, state) -> float:
        """Write an 11-D state vector (layout of the ``state`` observation) into the simulator.

        Returns the per-finger joint position that reproduces the gripper opening.
        """
        space = self.observation_space if self.obs_type == "state" else self.observation_space["state"]
        state = np.asarray(state, dtype=np.float64)
        if (state.shape != (11,) or not space.contains(state.astype(np.float32))
                or abs(np.linalg.norm(state[7:11]) - 1.0) > 1e-3):
            raise ValueError("ArmPickEnv.reset: options['reset_to_state'] must be an (11,) state [eef_pos, gripper, "
                             f"cube_pos, unit cube_quat] inside the state bounds, got {state.tolist()}")
        q = self.data.qpos
        q[self._arm_q] = state[0:3]
        finger = float(np.clip((MAX_OPENING - state[3]) / 2.0, 0.0, FINGER_TRAVEL))
        q[self._finger_q] = finger
        q[self._cube_q:self._cube_q + 3] = state[4:7]
        q[self._cube_q + 3:self._cube_q + 7] = state[7:11] / np.linalg.norm(state[7:11])
        return finger

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (4,):
            raise ValueError(f"ArmPickEnv.step: action must have shape (4,) (dx, dy, dz, gripper), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"ArmPickEnv.step: action must be finite, got {action}")
        action = np.clip(action, -1.0, 1.0)
        # Target from the measured pose (not an accumulated one) keeps the state fully observed; contact with the
        # table can then only press with kp * DELTA_SCALE, never wind up.
        target = self.data.qpos[self._arm_q] + DELTA_SCALE * action[:3]
        self.data.ctrl[:3] = np.clip(target, self.eef_low, self.eef_high)
        self.data.ctrl[3:] = FINGER_TRAVEL * (action[3] + 1.0) / 2.0
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        info = self._info()
        success = info["is_success"]
        return self._obs(), float(success), success, False, info

    # ---- observations -----------------------------------------------------------------------------------------
    @property
    def eef_pos(self) -> np.ndarray:
        """End-effector point (x, y, z) in metres, ``(3,)`` float64 (a copy)."""
        return self.data.qpos[self._arm_q].copy()

    @property
    def cube_pos(self) -> np.ndarray:
        """Cube centre (x, y, z) in metres, ``(3,)`` float64 (a copy)."""
        return self.data.qpos[self._cube_q:self._cube_q + 3].copy()

    @property
    def gripper_opening(self) -> float:
        """Distance between the finger pads in metres."""
        return float(MAX_OPENING - self.data.qpos[self._finger_q].sum())

    def _info(self) -> dict:
        lift = float(self.data.qpos[self._cube_q + 2] - CUBE_HALF)
        return {"is_success": lift >= LIFT_HEIGHT, "cube_lift": lift}

    def _obs(self):
        space = self.observation_space if self.obs_type == "state" else self.observation_space["state"]
        quat = self.data.qpos[self._cube_q + 3:self._cube_q + 7]
        quat = quat if quat[0] >= 0 else -quat  # q and -q are the same rotation: keep one hemisphere
        state = np.concatenate([self.data.qpos[self._arm_q], [self.gripper_opening], self.cube_pos, quat])
        # Soft constraints (joint limits, rim contacts) allow sub-millimetre excursions; clip keeps obs in-space.
        state = np.clip(state, space.low, space.high).astype(np.float32)
        if self.obs_type == "state":
            return state
        obs = {"state": state, "eef_pos": state[0:3].copy(), "gripper": state[3:4].copy(),
               "cube_pos": state[4:7].copy(), "cube_quat": state[7:11].copy()}
        if self.obs_type == "pixels":
            for cam in CAMERAS:
                obs[f"img_{cam}"] = self._cameras.render(self.data, cam, self.image_size)
        return obs

    def render(self):
        if self.render_mode == "rgb_array":
            return self._cameras.render(self.data, "scene", self.render_size)
        return None

    def close(self):
        self._cameras.close()
