"""TwoPath: reach a goal past a central obstacle, on the left or on the right (two equally good solutions).

A disc agent (radius 2 cm) moves in a walled square arena (interior [-0.25, 0.25]^2 m) driven by two position servos
on slide joints. A fixed box obstacle sits at the centre; the start is drawn below it and the goal above it, both
near x = 0, so the straight line is always blocked and the agent must go around it on one side. Which side an
episode took is reported in ``info["solution"]`` ("left" = x < 0, "right" = x > 0, ``None`` until the agent first
crosses the obstacle's centre line y = 0).

Action: target (x, y) of the agent in metres, ``Box([-0.25, -0.25], [0.25, 0.25])``, applied for one control period
(10 Hz; 20 physics steps of 5 ms) — the same absolute-position convention as PushT (whose units are its original
512-unit workspace; policies normalise actions, so the convention, not the unit, is what configs share).

Observations (``obs_type``):
  - ``"state"``: ``(4,)`` float32 ``[agent_x, agent_y, goal_x, goal_y]``, every entry in [-0.25, 0.25];
  - ``"dict"``: ``state`` ``(4,)``, ``agent_pos`` ``(2,)``, ``goal_pos`` ``(2,)``;
  - ``"pixels"``: the ``"dict"`` keys plus ``img`` ``(96, 96, 3)`` uint8, an orthographic top-down view.

``reset(options={"reset_to_state": [agent_x, agent_y, goal_x, goal_y]})`` starts from a given state (e.g. the
first state of a demo) instead of a random one.

Reward: 1.0 on the step the agent is within 2 cm of the goal (success, the episode terminates), else 0.0.
``info`` on every reset and step: ``is_success`` (bool), ``solution`` ("left" / "right" / None), ``goal_distance`` (m).
"""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from diffpolicy.envs.mujoco_utils import CameraSet, load_model

OBS_TYPES = ("state", "dict", "pixels")
ARENA = 0.25  # half-size of the arena interior (m); bounds actions and observations
GOAL_TOLERANCE = 0.02  # success radius around the goal centre (m)
START_X, START_Y = (-0.06, 0.06), (-0.20, -0.14)  # start sampling ranges (m)
GOAL_X, GOAL_Y = (-0.06, 0.06), (0.14, 0.20)  # goal sampling ranges (m)


class TwoPathEnv(gym.Env):
    """Gymnasium env of the two-solution task; see the module docstring for spaces and layout."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    control_hz = 10

    def __init__(self, obs_type: str = "state", render_mode: str | None = None, image_size: int = 96,
                 render_size: int = 256):
        if obs_type not in OBS_TYPES:
            raise ValueError(f"TwoPathEnv: unknown obs_type {obs_type!r}; expected one of {OBS_TYPES}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"TwoPathEnv: unknown render_mode {render_mode!r}; expected None or 'rgb_array'")
        self.obs_type, self.render_mode = obs_type, render_mode
        self.image_size, self.render_size = image_size, render_size
        self.model = load_model("two_path.xml")
        self.data = mujoco.MjData(self.model)
        self.n_substeps = round(1.0 / (self.control_hz * self.model.opt.timestep))
        self._goal_mocap = self.model.body("goal").mocapid[0]
        self._obstacle_y = float(self.model.geom("obstacle").pos[1])
        self._cameras = CameraSet(self.model)

        self.action_space = spaces.Box(-ARENA, ARENA, shape=(2,), dtype=np.float32)
        box = lambda n: spaces.Box(-ARENA, ARENA, shape=(n,), dtype=np.float32)  # noqa: E731
        if obs_type == "state":
            self.observation_space = box(4)
        else:
            parts = {"state": box(4), "agent_pos": box(2), "goal_pos": box(2)}
            if obs_type == "pixels":
                parts["img"] = spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
            self.observation_space = spaces.Dict(parts)
        self.goal = np.zeros(2)
        self.solution: str | None = None

    # ---- simulation -------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        rng = self.np_random
        start = np.array([rng.uniform(*START_X), rng.uniform(*START_Y)])
        self.goal = np.array([rng.uniform(*GOAL_X), rng.uniform(*GOAL_Y)])
        if options and options.get("reset_to_state") is not None:
            state = np.asarray(options["reset_to_state"], dtype=np.float64)
            if state.shape != (4,) or not np.all(np.abs(state) <= ARENA):
                raise ValueError("TwoPathEnv.reset: options['reset_to_state'] must be [agent_x, agent_y, goal_x, "
                                 f"goal_y] within [-{ARENA}, {ARENA}], got {state.tolist()}")
            start, self.goal = state[:2], state[2:]
        self.data.qpos[:] = start
        self.data.ctrl[:] = start  # servos start holding the initial position
        self.data.mocap_pos[self._goal_mocap, :2] = self.goal
        mujoco.mj_forward(self.model, self.data)
        self.solution = None
        return self._obs(), self._info()

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (2,):
            raise ValueError(f"TwoPathEnv.step: action must have shape (2,) (target x, y), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"TwoPathEnv.step: action must be finite, got {action}")
        # Out-of-range targets are clipped to the arena, like a real position controller would saturate.
        self.data.ctrl[:] = np.clip(action, -ARENA, ARENA)
        y_before = float(self.data.qpos[1])
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self._update_solution(y_before)
        info = self._info()
        success = info["is_success"]
        return self._obs(), float(success), success, False, info

    def _update_solution(self, y_before: float) -> None:
        # The side is fixed the first time the agent crosses the obstacle's centre line: there the obstacle spans
        # x in [-0.08, 0.08], so the sign of x tells which way round it went.
        if self.solution is None and y_before < self._obstacle_y <= self.data.qpos[1]:
            self.solution = "left" if self.data.qpos[0] < 0 else "right"

    # ---- observations -----------------------------------------------------------------------------------------
    @property
    def agent_pos(self) -> np.ndarray:
        """Agent centre (x, y) in metres, ``(2,)`` float64 (a copy)."""
        return self.data.qpos[:2].copy()

    def _info(self) -> dict:
        distance = float(np.linalg.norm(self.data.qpos[:2] - self.goal))
        return {"is_success": distance <= GOAL_TOLERANCE, "solution": self.solution, "goal_distance": distance}

    def _obs(self):
        # Soft joint limits let the disc exceed the range by a fraction of a millimetre; clip keeps obs in-space.
        agent = np.clip(self.data.qpos[:2], -ARENA, ARENA).astype(np.float32)
        goal = self.goal.astype(np.float32)
        state = np.concatenate([agent, goal])
        if self.obs_type == "state":
            return state
        obs = {"state": state, "agent_pos": agent, "goal_pos": goal}
        if self.obs_type == "pixels":
            obs["img"] = self._cameras.render(self.data, "top", self.image_size)
        return obs

    def render(self):
        if self.render_mode == "rgb_array":
            return self._cameras.render(self.data, "top", self.render_size)
        return None

    def close(self):
        self._cameras.close()
