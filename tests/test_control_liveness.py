"""Controller liveness: every wait for inference has a deadline; faults are held, counted and escalated."""

import threading

import numpy as np
import pytest

from diffpolicy.control.controller import Controller, data_action_bounds
from diffpolicy.control.safety import ControllerFault


def run_until_first_chunk(ctrl, policy, fake_obs):
    """Step 0 gets its chunk (gate open); then the gate closes, so the next chunk hangs in the background."""
    policy.gate = threading.Event()
    policy.gate.set()
    first = ctrl.act(fake_obs(0))
    policy.gate.clear()
    return first


def test_a_hanging_sampler_is_held_after_the_deadline_and_counted(fake_policy, fake_controller, fake_obs):
    policy = fake_policy(horizon=4, n_obs_steps=1, n_action_steps=2)  # 4 executable actions per chunk
    ctrl = fake_controller(policy, mode="async", inference_timeout=0.05, fault_policy="hold")
    try:
        run_until_first_chunk(ctrl, policy, fake_obs)
        actions = [ctrl.act(fake_obs(t)) for t in range(1, 8)]  # the second chunk never comes
        s = ctrl.stats()
        assert s["inference_timeouts"] >= 1 and s["held"] >= 1 and ctrl.last_info["held"]
        np.testing.assert_array_equal(actions[-1], actions[-2])  # the last safe action, held
        assert [e.kind for e in ctrl.faults][:1] == ["timeout"]
    finally:
        policy.gate.set()
        ctrl.close()


@pytest.mark.parametrize("policy_name", ["raise", "safe_action", "hold"])
def test_fault_policy_after_max_held_steps(fake_policy, fake_controller, fake_obs, policy_name):
    policy = fake_policy(horizon=4, n_obs_steps=1, n_action_steps=2)
    ctrl = fake_controller(policy, mode="async", inference_timeout=0.01, fault_policy=policy_name, max_held_steps=2,
                           safe_action=[-5.0, -5.0])
    try:
        run_until_first_chunk(ctrl, policy, fake_obs)
        out, t = [], 1
        if policy_name == "raise":
            with pytest.raises(ControllerFault, match="3 consecutive faulty steps \\(max_held_steps 2\\)"):
                for t in range(1, 12):
                    ctrl.act(fake_obs(t))
            return
        out = [ctrl.act(fake_obs(t)) for t in range(1, 12)]
        if policy_name == "safe_action":
            np.testing.assert_array_equal(out[-1], [-5.0, -5.0])
        else:
            assert not np.array_equal(out[-1], [-5.0, -5.0]) and np.isfinite(out[-1]).all()
    finally:
        policy.gate.set()
        ctrl.close()


def test_a_failing_sampler_is_held_then_recovers(fake_policy, fake_controller, fake_obs):
    policy = fake_policy(horizon=4, n_obs_steps=1, n_action_steps=4)
    ctrl = fake_controller(policy, mode="sync", fault_policy="raise", max_held_steps=5)
    ctrl.act(fake_obs(0))
    for t in (1, 2, 3):
        ctrl.act(fake_obs(t))
    policy.fail = True
    held = ctrl.act(fake_obs(4))  # the chunk for step 4 fails: held, counted
    assert ctrl.stats()["inference_errors"] == 1 and ctrl.last_info["held"]
    np.testing.assert_array_equal(held, [3, 0])  # step 3's action (of the chunk planned at step 0)
    policy.fail = False
    again = ctrl.act(fake_obs(5))  # the next step launches again and succeeds: the held run ends
    assert not ctrl.last_info["held"] and again[0] == 5 and ctrl.held_run == 0


def test_a_nan_sampler_never_reaches_the_robot(fake_policy, fake_controller, fake_obs, monkeypatch):
    policy = fake_policy(horizon=4, n_obs_steps=1, n_action_steps=4)
    ctrl = fake_controller(policy, mode="sync")
    first = ctrl.act(fake_obs(0))
    inner = policy.sample_chunk
    monkeypatch.setattr(policy, "sample_chunk", lambda *a, **k: inner(*a, **k) * float("nan"))
    for t in range(1, 4):
        ctrl.act(fake_obs(t))
    out = ctrl.act(fake_obs(4))  # a NaN chunk: the planned action is replaced by the last safe one
    assert np.isfinite(out).all() and ctrl.stats()["nonfinite_action"] >= 1
    assert first is not None


def test_fault_policy_settings_are_checked(fake_policy, fake_controller):
    with pytest.raises(ValueError, match="fault_policy must be one of"):
        fake_controller(fake_policy(), fault_policy="panic")
    with pytest.raises(ValueError, match="needs safe_action"):
        fake_controller(fake_policy(), fault_policy="safe_action")


def test_checkpoint_controller_clips_to_the_data_action_range(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")  # actions in the data: uniform in [-0.2, 0.2]
    ctrl = Controller.from_checkpoint(ckpt, device="cpu")
    low, high = data_action_bounds(ctrl.policy)
    assert np.all(low >= -0.2 - 1e-6) and np.all(high <= 0.2 + 1e-6) and np.all(high - low > 0.3)
    np.testing.assert_array_equal(ctrl.bounds.low, low)
    obs = {"state": np.zeros(4, np.float32)}
    for _ in range(5):
        a = ctrl.act(obs)
        assert np.all(a >= low) and np.all(a <= high)
