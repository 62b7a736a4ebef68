"""Wall-clock harness (late actions cost steps), smoothness metrics, and the controller in a MuJoCo task.

The harness tests run it on a virtual clock (``fake_clock``): inference durations are set, never measured."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from diffpolicy.control import realtime
from diffpolicy.control.controller import Controller
from diffpolicy.control.metrics import RingStats, boundary_stats, jerks, jumps
from diffpolicy.control.realtime import run_episode, run_harness


class StepEnv(gym.Env):
    """Observation ``{"t": step}``; records the actions it executes; ``n`` steps per episode."""

    def __init__(self, n=30):
        self.n = n
        self.observation_space = spaces.Dict({"t": spaces.Box(0, np.inf, (1,), np.float32)})
        self.action_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)

    def reset(self, seed=None, options=None):
        self.k, self.executed = 0, []
        return {"t": np.array([0], np.float32)}, {}

    def step(self, action):
        self.executed.append(np.array(action))
        self.k += 1
        return {"t": np.array([self.k], np.float32)}, 0.0, False, self.k >= self.n, {"is_success": self.k == 5}


def test_sync_inference_delay_costs_steps_with_the_held_action(fake_policy, fake_controller, fake_clock):
    policy = fake_policy(delay=0.05)
    env = StepEnv(50)
    ctrl = fake_controller(policy, mode="sync")
    policy.sleep = fake_clock(realtime).advance  # each replan takes 50 ms of the harness's (virtual) time
    res = run_episode(env, ctrl, rate_hz=100.0, seed=0)  # 10 ms periods, 50 ms per replan
    ex = np.stack(env.executed)
    assert res["length"] == 50 and res["success"] and res["late_steps"] >= 3
    repeat = np.r_[False, np.all(ex[1:] == ex[:-1], axis=1)]  # the robot re-executed the previous command
    assert repeat.sum() == res["late_steps"]  # (the fake never plans the same action twice)
    switches = np.flatnonzero(np.r_[False, ex[1:, 1] != ex[:-1, 1]])  # first step of each new chunk
    assert len(switches) >= 1
    for k in switches:
        # While the replan computed (~5 periods) the robot held the previous action; the chunk then starts at its
        # first action, planned for the step of its (by now stale) observation.
        assert repeat[k - 3: k].all(), (k, ex[k - 4: k + 1])
        np.testing.assert_array_equal(ex[k], [ex[k, 1], ex[k, 1]])


def test_async_harness_keeps_pace_and_skips_by_the_measured_delay(fake_policy, fake_controller, fake_clock,
                                                                   stepped_inference):
    policy = fake_policy(delay=0.03)
    env = StepEnv(40)
    ctrl = fake_controller(policy, mode="async", period=0.01)
    inference = stepped_inference(ctrl, policy, 3)  # 30 ms of inference at 10 ms per step
    fake_clock(realtime).on_sleep.append(inference.tick)  # the harness sleeps once per period
    res = run_episode(env, ctrl, rate_hz=100.0, seed=0)
    inference.release()
    ex = np.stack(env.executed)
    assert res["late_steps"] == 0  # act never waits for the chunk in flight: the async loop is never late
    assert max(res["delay_steps"]) >= 2  # 30 ms of inference at 10 ms per step
    fresh = ex[np.r_[True, np.any(ex[1:] != ex[:-1], axis=1)]]  # one row per act (late steps repeat one)
    if res["late_steps"] == 0:  # controller and env steps coincide: each action is the one planned for its step
        np.testing.assert_array_equal(fresh[:, 0], np.arange(len(fresh)))
    # Within a chunk, consecutive steps execute consecutive entries; a new chunk starts past the entries whose time
    # passed while it was computed (dim 0 - dim 1 = steps since its observation >= 1 once warm).
    same = fresh[1:, 1] == fresh[:-1, 1]
    np.testing.assert_array_equal(np.diff(fresh[:, 0])[same], 1)
    switch = np.flatnonzero(~same) + 1
    assert len(switch) >= 3 and np.all(fresh[switch, 0] - fresh[switch, 1] >= 1)
    ctrl.close()


def test_jump_jerk_and_boundary_stats():
    a = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [7, 0], [8, 0]], float)
    np.testing.assert_allclose(jumps(a)[1:], [1, 1, 1, 4, 1])
    third = np.diff(a[:, 0], 3)
    np.testing.assert_allclose(jerks(a)[3:], np.abs(third))
    s = boundary_stats(a, np.array([True, False, False, False, True, False]))
    assert s["jump_boundary_max"] == 4 and s["jump_inside_max"] == 1 and s["n_boundaries"] == 1
    with pytest.raises(ValueError, match=r"expected shape \(6,\)"):
        boundary_stats(a, np.ones(5, bool))
    r = RingStats(capacity=4)
    for v in range(10):
        r.add(v)
    assert r.count == 10 and sorted(r.values()) == [6, 7, 8, 9] and r.summary()["max"] == 9


def test_tiny_checkpoint_in_the_mujoco_task_in_wall_clock_time(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    ctrl = Controller.from_checkpoint(ckpt, device="cpu", mode="async", smoothing="rtc", control_hz=50)
    task = {"name": "two_path", "env_id": "diffpolicy/TwoPath-v0", "env_kwargs": {"obs_type": "dict"}}
    res = run_harness(ctrl, task, rate_hz=50, n_episodes=1, progress=False)
    assert res["success_signal"] == "info['is_success']"
    ep = res["episodes"][0]
    assert ep["length"] == ep["controller"]["steps"] + ep["late_steps"]
    assert ep["controller"]["chunks"] >= ep["controller"]["steps"] // 8
    assert sum(res["delay_steps"].values()) == ep["controller"]["chunks"] == len(ep["inference_s"])
    assert ep["controller"]["nonfinite_action"] == 0 and np.isfinite(res["smoothness"]["jump_boundary_mean"])
    ctrl.close()
