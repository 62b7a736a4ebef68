"""Push-T in MuJoCo: push a T-shaped block onto a goal pose with a round end-effector.

A port of the Push-T task of Diffusion Policy (Chi et al. 2023) / gym-pusht (the pymunk version used by LeRobot).
Kept from the original:
  - workspace 512 x 512 units (no rescaling: one Push-T unit = one MuJoCo length unit), walls at 5 and 506;
  - T block (bar 120 x 30, stem 30 x 90, mass 1, rotational inertia 2550 about its centre of mass (0, 45) in the
    body frame), round end-effector of radius 15, goal pose (256, 256, pi/4);
  - action = target (x, y) of the end-effector in [0, 512]^2, tracked by a PD law with k_p = 100, k_v = 20 (per unit
    mass), 10 Hz control over 10 physics steps of 10 ms;
  - state observation (agent x, y, block x, y, block angle mod 2 pi) with the block position being the T's body
    origin (middle of the top edge of the bar), as in ``PushTEnv.get_obs`` of the original;
  - initial state: agent x, y uniform integers in [50, 450), block x, y in [100, 400), angle uniform in [-pi, pi);
  - coverage = area(block ∩ goal) / area(goal), success when coverage >= 0.95, episode terminates on success.
Differences (and why):
  - physics: MuJoCo soft contacts instead of pymunk. The original's kinematic agent becomes a heavy (10x the
    block) sphere driven by a position actuator with the same per-unit-mass gains; the original's zero space
    damping (all velocity removed every step, i.e. quasi-static pushing) becomes joint damping of 100/s times the
    block's mass and inertia. The agent does not collide with the walls (kinematic in the original); the block does
    (frictionless, inner faces at 7 and 504 as in the original, but 50 units thick so nothing tunnels through).
    Shoved hard into a wall, the block can sink a few units into it (soft contacts).
  - reward = coverage in [0, 1] (the issue's definition); the original returns clip(coverage / 0.95, 0, 1).
  - actions are clipped to the action space (the original does not clip).
  - keypoints: 9 fixed points (the 8 rectangle corners in gym-pusht's order, then the centre of mass) instead of
    Diffusion Policy's 9 points sampled on the block by farthest-point sampling.
  - initial states in which the agent overlaps the block (clearance < 5) or the block already covers > 50 % of the
    goal are re-drawn from the same generator (the original allows both).
  - images: rendered by MuJoCo from a near-orthographic top camera, flipped vertically so that +y points down the
    image as in the original's pygame drawing (4x multisampled, where the original downscales a 512 x 512 drawing);
    the action marker of the original is not drawn.
  - observations are float32 and clipped to their (exact) Box bounds.

Observation modes (``obs_type``):
  - ``"state"``: Box (5,) float32 = [agent_x, agent_y, block_x, block_y, block_angle];
  - ``"keypoints"``: Box (20,) float32 = 9 block keypoints (x, y) flattened (18) + agent position (2);
  - ``"dict"``: Dict with ``state`` (5,), ``agent_pos`` (2,), ``keypoint`` (9, 2) (the Diffusion Policy zarr keys);
  - ``"pixels"``: the ``"dict"`` keys plus ``img`` uint8 (image_size, image_size, 3), top-down RGB (default 96, as
    Diffusion Policy's Push-T images).
``info`` has ``coverage`` (float) and ``is_success`` (bool) on every ``reset`` and ``step``.
``reset(options={"reset_to_state": [agent_x, agent_y, block_x, block_y, block_angle]})`` starts from a given state.
Privileged access (for experts and tests): ``get_state()``, ``set_state(state)``, ``block_pose()``, ``coverage()``,
``model`` / ``data`` (the MuJoCo model and data; qpos = agent x, y, block centre-of-mass x, y, angle).
``render()`` returns a ``render_size`` x ``render_size`` frame (default 256) from the same top camera.
"""

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from diffpolicy.envs import pusht_geometry as geom
from diffpolicy.envs.mujoco_utils import CameraSet, load_model

OBS_TYPES = ("state", "keypoints", "dict", "pixels")
WORKSPACE = 512.0
IMG_SIZE = 96


class PushTEnv(gym.Env):
    """MuJoCo Push-T; see the module docstring for spaces, reward and differences from the original."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, obs_type: str = "state", render_mode: str | None = None, render_size: int = 256,
                 image_size: int = IMG_SIZE):
        if obs_type not in OBS_TYPES:
            raise ValueError(f"PushTEnv: unknown obs_type {obs_type!r}; expected one of {OBS_TYPES}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"PushTEnv: unknown render_mode {render_mode!r}; expected None or 'rgb_array'")
        if not 16 <= int(render_size) <= 512:
            raise ValueError(f"PushTEnv: render_size must be in [16, 512], got {render_size}")
        if not 16 <= int(image_size) <= 512:
            raise ValueError(f"PushTEnv: image_size must be in [16, 512], got {image_size}")
        self.obs_type = obs_type
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.image_size = int(image_size)
        self.control_hz = 10
        self.model = load_model("pusht.xml")
        self.data = mujoco.MjData(self.model)
        self.n_substeps = int(round(1.0 / (self.control_hz * self.model.opt.timestep)))
        self.goal_pose = np.array(geom.GOAL_POSE)
        self.success_threshold = geom.SUCCESS_COVERAGE
        self._cameras = CameraSet(self.model)

        self.action_space = spaces.Box(0.0, WORKSPACE, shape=(2,), dtype=np.float32)
        state = spaces.Box(
            np.zeros(5, np.float32), np.array([WORKSPACE] * 4 + [2 * np.pi], np.float32), dtype=np.float32
        )
        low_dim = {
            "state": state,
            "agent_pos": spaces.Box(0.0, WORKSPACE, shape=(2,), dtype=np.float32),
            "keypoint": spaces.Box(0.0, WORKSPACE, shape=(9, 2), dtype=np.float32),
        }
        if obs_type == "state":
            self.observation_space = state
        elif obs_type == "keypoints":
            self.observation_space = spaces.Box(0.0, WORKSPACE, shape=(20,), dtype=np.float32)
        elif obs_type == "dict":
            self.observation_space = spaces.Dict(low_dim)
        else:
            img = spaces.Box(0, 255, shape=(self.image_size, self.image_size, 3), dtype=np.uint8)
            self.observation_space = spaces.Dict({**low_dim, "img": img})
        self._state_high = state.high

    # ----------------------------------------------------------------- state access (privileged, used by the expert)
    def get_state(self) -> np.ndarray:
        """Push-T state (5,) float64: agent x, y, block origin x, y, block angle (not wrapped)."""
        q = self.data.qpos
        bx, by = geom.pose_from_com(q[2], q[3], q[4])
        return np.array([q[0], q[1], bx, by, q[4]])

    def block_pose(self) -> tuple[float, float, float]:
        """Block pose (x, y, theta) in the Push-T convention (body origin, angle not wrapped)."""
        q = self.data.qpos
        bx, by = geom.pose_from_com(q[2], q[3], q[4])
        return bx, by, float(q[4])

    def set_state(self, state) -> None:
        """Place agent and block at a Push-T state (5,) = agent x, y, block x, y, angle; velocities zeroed."""
        s = np.asarray(state, dtype=np.float64)
        if s.shape != (5,) or not np.isfinite(s).all():
            raise ValueError(f"PushTEnv: state must be 5 finite numbers (agent x, y, block x, y, angle), got {state!r}")
        mujoco.mj_resetData(self.model, self.data)
        cx, cy = geom.com_from_pose(s[2], s[3], s[4])
        self.data.qpos[:] = (s[0], s[1], cx, cy, s[4])
        self.data.ctrl[:] = s[:2]
        mujoco.mj_forward(self.model, self.data)

    def coverage(self) -> float:
        """Fraction of the goal T covered by the block, in [0, 1]."""
        return geom.coverage(self.block_pose(), self.goal_pose)

    # ------------------------------------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options is not None and options.get("reset_to_state") is not None:
            self.set_state(options["reset_to_state"])
        else:
            self.set_state(self._sample_state())
        cov = self.coverage()
        return self._obs(), {"coverage": cov, "is_success": cov >= self.success_threshold}

    def _sample_state(self) -> np.ndarray:
        rng = self.np_random
        while True:
            state = np.array(
                [
                    rng.integers(50, 450),
                    rng.integers(50, 450),
                    rng.integers(100, 400),
                    rng.integers(100, 400),
                    rng.uniform(-np.pi, np.pi),
                ],
                dtype=np.float64,
            )
            pose = tuple(state[2:])
            clearance = geom.distance_to_outline(state[None, :2], *pose)[0] - 15.0
            if clearance >= 5.0 and geom.coverage(pose, self.goal_pose) <= 0.5:
                return state

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (2,) or not np.isfinite(a).all():
            raise ValueError(f"PushTEnv: action must be 2 finite numbers (target x, y), got {action!r}")
        self.data.ctrl[:] = np.clip(a, 0.0, WORKSPACE)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        cov = self.coverage()
        success = cov >= self.success_threshold
        return self._obs(), cov, success, False, {"coverage": cov, "is_success": success}

    def _obs(self):
        state = self.get_state()
        state[4] %= 2 * np.pi
        state = np.clip(state, 0.0, self._state_high).astype(np.float32)
        if self.obs_type == "state":
            return state
        kp = np.clip(geom.keypoints(*self.block_pose()), 0.0, WORKSPACE).astype(np.float32)
        if self.obs_type == "keypoints":
            return np.concatenate([kp.reshape(-1), state[:2]])
        obs = {"state": state, "agent_pos": state[:2].copy(), "keypoint": kp}
        if self.obs_type == "pixels":
            obs["img"] = self._render(self.image_size)
        return obs

    # ----------------------------------------------------------------------------------------------- rendering
    def _render(self, size: int) -> np.ndarray:
        # The camera looks down with +y up the image; flip so +y points down like the original's pygame frames.
        return np.ascontiguousarray(self._cameras.render(self.data, "top", size)[::-1])

    def render(self):
        """Top-down RGB frame (render_size, render_size, 3) uint8 when ``render_mode="rgb_array"``, else None."""
        if self.render_mode != "rgb_array":
            return None
        return self._render(self.render_size)

    def close(self):
        self._cameras.close()
