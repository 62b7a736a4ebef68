"""Asynchronous inference, real-time chunking and temporal ensembling, with a fake policy of controlled delay."""

import threading

import numpy as np
import pytest

from diffpolicy.control.chunks import ensemble_weights


def test_async_switch_skips_the_actions_executed_during_inference(fake_policy, fake_controller, fake_obs, wait_until):
    policy = fake_policy()
    ctrl = fake_controller(policy, mode="async")
    policy.gate = threading.Event()
    policy.gate.set()
    out = [ctrl.act(fake_obs(t)) for t in range(8)]  # step 0 waits for the first chunk (nothing to execute yet)
    policy.gate.clear()
    out += [ctrl.act(fake_obs(t)) for t in range(8, 11)]  # chunk launched at step 8 is still computing
    wait_until(lambda: len(policy.calls) == 2)
    assert ctrl.worker.busy and len(policy.calls) == 2 and policy.calls[1]["t"] == 8
    policy.gate.set()
    wait_until(lambda: ctrl.worker._result is not None)
    out += [ctrl.act(fake_obs(t)) for t in range(11, 14)]
    out = np.stack(out)
    # dim 0: every executed action is the one planned for its step; dim 1: the observation step of its chunk.
    np.testing.assert_array_equal(out[:, 0], np.arange(14))
    np.testing.assert_array_equal(out[:, 1], [0] * 11 + [8] * 3)
    s = ctrl.stats()
    assert s["delay_steps"] == {0: 1, 3: 1} and s["starved"] == 0 and s["chunks"] == 2
    assert ctrl.last_info["chunk"] == 1 and list(ctrl.delays) == [3]  # the blocking first chunk is not an estimate
    ctrl.close()


def run_loop(ctrl, policy, fake_obs, stepped_inference, steps, inference_steps):
    """``steps`` control steps in which every inference lasts ``inference_steps`` steps; returns the executed actions
    and the steps whose ``act`` waited for a chunk (see ``SteppedInference``)."""
    inference = stepped_inference(ctrl, policy, inference_steps)
    out = []
    for t in range(steps):
        inference.tick()
        out.append(ctrl.act(fake_obs(t)))
    inference.release()
    return np.stack(out), inference.waited


def test_async_act_does_not_block_once_warm(fake_policy, fake_controller, fake_obs, stepped_inference):
    policy = fake_policy()
    ctrl = fake_controller(policy, mode="async")
    out, waited = run_loop(ctrl, policy, fake_obs, stepped_inference, 40, inference_steps=4)
    np.testing.assert_array_equal(out[:, 0], np.arange(40))
    # Each inference takes 4 steps, yet act returns from the queue: only the first act waits (nothing is planned yet);
    # every other act returned while its chunk was held back by the gate.
    assert waited == [0]
    s = ctrl.stats()
    assert s["starved"] == 0
    assert max(s["delay_steps"]) >= 3  # 4 control steps of inference
    ctrl.close()


def test_async_launches_early_when_execute_steps_would_starve_the_queue(fake_policy, fake_controller, fake_obs,
                                                                          stepped_inference):
    # H = 15 executable actions; executing all 15 before replanning would leave nothing to run during the 2 steps
    # of inference. The controller launches the next chunk ~d + 1 steps before the current one runs out.
    policy = fake_policy(delay=0.1)  # the warm-up takes 0.1 s: >= 2 periods, the estimate before any is measured
    ctrl = fake_controller(policy, mode="async", period=0.05, execute_steps=15)
    out, _ = run_loop(ctrl, policy, fake_obs, stepped_inference, 60, inference_steps=2)
    np.testing.assert_array_equal(out[:, 0], np.arange(60))
    s = ctrl.stats()
    assert s["starved"] == 0, s  # before any delay is measured, the warm-up latency is the estimate
    launches = [int(c["t"]) for c in policy.calls]
    assert all(b - a < 15 for a, b in zip(launches[1:], launches[2:])), launches  # early, not every 15 steps
    ctrl.close()


def test_async_warns_when_inference_is_too_slow_for_the_chunk(fake_policy, fake_controller, fake_obs,
                                                              stepped_inference, caplog):
    policy = fake_policy(delay=0.1)  # warm-up: ~10 periods of 10 ms
    ctrl = fake_controller(policy, mode="async", period=0.01)
    with caplog.at_level("WARNING", logger="diffpolicy.control"):
        run_loop(ctrl, policy, fake_obs, stepped_inference, 45, inference_steps=10)  # 2 x 10 > H = 15
    msgs = [r.getMessage() for r in caplog.records if "cannot keep up" in r.getMessage()]
    assert len(msgs) == 1 and "15 executable actions" in msgs[0], caplog.text  # once, naming the limit
    assert ctrl.stats()["starved"] >= 1
    ctrl.close()


def test_rtc_fixes_the_prefix_to_the_queued_actions_in_normalised_units(fake_policy, fake_controller, fake_obs,
                                                                         wait_until):
    policy = fake_policy(action_scale=0.5)
    ctrl = fake_controller(policy, mode="async", smoothing="rtc", period=1.0)
    policy.gate = threading.Event()
    policy.gate.set()
    for t in range(8):
        ctrl.act(fake_obs(t))
    assert policy.calls[0]["mask"] is None  # nothing is queued at the episode start
    first = ctrl.buffer.latest
    policy.gate.clear()
    for t in range(8, 11):
        ctrl.act(fake_obs(t))
    wait_until(lambda: len(policy.calls) == 2)
    call = policy.calls[1]
    # No delay measured yet and the warm-up was fast: one step is fixed, chunk index To-1 = 1 <-> step 8.
    assert call["mask"][0, :, 0].tolist() == [False, True] + [False] * 14
    np.testing.assert_array_equal(call["known"][0, 1].numpy(), first.normed[1 + 8].numpy())
    np.testing.assert_array_equal(call["known"][0, 1].numpy(), 0.5 * np.array([8.0, 0.0]))  # normalised
    policy.gate.set()
    wait_until(lambda: ctrl.worker._result is not None)
    for t in range(11, 16):
        ctrl.act(fake_obs(t))
    second = ctrl.buffer.latest
    policy.gate.clear()
    queued = [ctrl.buffer.action(s)[0] for s in (16, 17, 18)]  # what will execute while the next chunk computes
    ctrl.act(fake_obs(16))
    wait_until(lambda: len(policy.calls) == 3)
    call = policy.calls[2]
    assert call["mask"][0, :, 0].nonzero().flatten().tolist() == [1, 2, 3]  # the measured delay was 3 steps
    np.testing.assert_array_equal(call["known"][0, 1:4].numpy(), second.normed[1 + 8: 1 + 11].numpy())
    np.testing.assert_array_equal(call["known"][0, 1:4].numpy(), 0.5 * np.stack(queued))
    policy.gate.set()
    ctrl.close()


def test_rtc_needs_async_and_an_inpainting_policy(fake_policy, fake_controller):
    with pytest.raises(ValueError, match="needs mode='async'"):
        fake_controller(fake_policy(), mode="sync", smoothing="rtc")


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_temporal_ensembling_weights(fake_policy, fake_controller, fake_obs, decay):
    policy = fake_policy()
    ctrl = fake_controller(policy, smoothing="ensemble", ensemble_decay=decay)
    assert ctrl.execute_steps == 1
    out = np.stack([ctrl.act(fake_obs(t)) for t in range(25)])
    np.testing.assert_array_equal(out[:, 0], np.arange(25))
    H = 15  # horizon 16 - n_obs_steps 2 + 1 executable actions per chunk
    for t in range(25):
        sources = np.arange(max(0, t - H + 1), t + 1)  # launch steps of the chunks covering step t, oldest first
        w = np.exp(-decay * np.arange(len(sources)))
        np.testing.assert_allclose(out[t, 1], (w * sources).sum() / w.sum(), rtol=1e-6)
    assert len(ctrl.buffer.chunks) == H  # older chunks are dropped: memory stays bounded
    np.testing.assert_allclose(ensemble_weights(3, 0.5), np.exp([0.0, -0.5, -1.0]))


def test_reset_drops_an_in_flight_chunk_and_errors_reach_the_caller(fake_policy, fake_controller, fake_obs):
    policy = fake_policy()
    ctrl = fake_controller(policy, mode="async")
    policy.gate = threading.Event()
    policy.gate.set()
    for t in range(9):
        ctrl.act(fake_obs(t))
    policy.gate.clear()
    assert ctrl.worker.busy
    ctrl.reset()
    threading.Timer(0.1, policy.gate.set).start()
    a = ctrl.act(fake_obs(100))  # the new episode's first step waits for its own chunk, never the old one
    np.testing.assert_array_equal(a, [100, 100])
    assert ctrl.stats()["chunks"] == 1 and ctrl.stats()["delay_steps"] == {0: 1}
    policy.fail = True
    ctrl.reset()
    with pytest.raises(RuntimeError, match="inference failed in the background thread.*fake failure"):
        ctrl.act(fake_obs(0))
    ctrl.close()
