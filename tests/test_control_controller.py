"""Controller on a real (tiny, untrained) diffusion checkpoint: history, chunk order, sampler switch, safety, reset."""

import math

import numpy as np
import pytest
import torch

from diffpolicy.control import controller as controller_module
from diffpolicy.control.controller import Controller
from diffpolicy.control.safety import NonFiniteError
from diffpolicy.control.sampling import ChunkSampler
from diffpolicy.core.schedules import flow_sampling_schedule
from diffpolicy.policy.factory import load_policy


@pytest.fixture(scope="module", params=["unet", "transformer"])
def denoiser(request):
    """Every controller test runs on both denoisers."""
    return request.param


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_checkpoint, denoiser):
    return tiny_checkpoint(tmp_path_factory.mktemp("ctrl") / "ckpt", denoiser=denoiser)


@pytest.fixture(scope="module")
def flow_ckpt(tmp_path_factory, tiny_checkpoint, denoiser):
    return tiny_checkpoint(tmp_path_factory.mktemp("ctrl_flow") / "ckpt", objective="flow", denoiser=denoiser)


def states(n, seed=0):
    return [{"state": s, "agent_pos": s[:2]} for s in np.random.default_rng(seed).uniform(-1, 1, (n, 4))
            .astype(np.float32)]


@pytest.mark.parametrize("objective,sampler,steps", [("ddpm", "ddim", 4), ("ddpm", "euler", 3),
                                                     ("flow", "heun", 2), ("flow", "dpmpp_2m", 3)])
def test_sync_executes_predict_action_chunks_in_order_with_padded_history(ckpt, flow_ckpt, objective, sampler,
                                                                          steps):
    """The controller (accelerated net, plan with a cached time table) reproduces the plain ``predict_action``
    chunk by chunk."""
    ckpt = ckpt if objective == "ddpm" else flow_ckpt
    obs = states(20)
    ctrl = Controller.from_checkpoint(ckpt, device="cpu", sampler=sampler, steps=steps, action_space=None, seed=7)
    got = np.stack([ctrl.act(o) for o in obs])
    policy, _ = load_policy(ckpt)
    gen = torch.Generator().manual_seed(7)  # the controller draws each chunk's noise from its seed, in order
    expected = []
    for start in (0, 8, 16):
        hist = [obs[max(0, start - 1)], obs[start]]  # the first observation is repeated at the episode start
        x = {"state": torch.as_tensor(np.stack([h["state"] for h in hist]))[None]}
        expected.append(policy.predict_action(x, generator=gen, sampler=sampler, steps=steps)["action"][0].numpy())
    np.testing.assert_allclose(got, np.concatenate(expected)[:20], rtol=1e-5, atol=1e-6)
    assert ctrl.stats()["chunks"] == 3 and ctrl.stats()["delay_steps"] == {0: 3}
    assert [ctrl.last_info["step"], ctrl.last_info["chunk"]] == [19, 2]


@pytest.mark.parametrize("objective,sampler", [("ddpm", "ddim"), ("ddpm", "ddpm"), ("flow", "euler"),
                                               ("flow", "dpmpp_2m")])
def test_fast_path_inpainting_ends_exactly_on_the_fixed_prefix(ckpt, flow_ckpt, objective, sampler):
    policy, _ = load_policy(ckpt if objective == "ddpm" else flow_ckpt)
    fast = ChunkSampler(policy)
    gen = torch.Generator().manual_seed(0)
    cond = policy.encode({"state": torch.randn(1, 2, 4, generator=gen)})
    noise = torch.randn(1, 16, 2, generator=gen)
    known = torch.randn(1, 16, 2, generator=gen)
    mask = torch.zeros(1, 16, 2, dtype=torch.bool)
    mask[:, 1:4] = True  # chunk indices To-1 .. To+1: the steps executed while this chunk is computed
    out = fast(cond, noise, policy.sampling_plan(sampler, 3, time_table=True), mask=mask, known=known, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out[mask], known[mask], rtol=0, atol=0)
    assert not torch.allclose(out[~mask], known[~mask]) and torch.isfinite(out).all()


def test_reset_leaves_no_state_and_sampler_changes_at_run_time(ckpt):
    obs = states(12, seed=1)
    ctrl = Controller.from_checkpoint(ckpt, device="cpu", sampler="ddim", steps=2, seed=3, action_space=None)
    first = np.stack([ctrl.act(o) for o in obs])
    ctrl.reset()
    assert ctrl.step == 0 and ctrl.history is None and not ctrl.buffer.chunks and ctrl.stats()["chunks"] == 0
    again = np.stack([ctrl.act(o) for o in obs])
    np.testing.assert_array_equal(first, again)
    fresh = Controller.from_checkpoint(ckpt, device="cpu", sampler="ddim", steps=2, seed=3, action_space=None)
    np.testing.assert_array_equal(first, np.stack([fresh.act(o) for o in obs]))

    ctrl.reset()
    ctrl.set_sampling("dpmpp_2m", 5)
    switched = np.stack([ctrl.act(o) for o in obs])
    assert (ctrl.sampler, ctrl.steps) == ("dpmpp_2m", 5) and not np.allclose(switched, first)
    with pytest.raises(ValueError, match="unknown sampler 'fast'"):
        ctrl.set_sampling("fast")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        ctrl.set_sampling("ddim", 0)
    with pytest.raises(ValueError, match="sets a flow-matching policy's time grid; this is a DDPM policy"):
        ctrl.set_sampling(shift=0.5)
    ctrl.reset()
    ctrl.set_sampling("ddim", 5)
    trailing = np.stack([ctrl.act(o) for o in obs])
    ctrl.reset()
    ctrl.set_sampling(spacing="leading")
    assert not np.allclose(np.stack([ctrl.act(o) for o in obs]), trailing)
    with pytest.raises(ValueError, match="unknown timestep spacing 'even'"):
        ctrl.set_sampling(spacing="even")


def test_flow_time_grid_shift_changes_at_run_time(flow_ckpt):
    obs = states(6, seed=4)
    ctrl = Controller.from_checkpoint(flow_ckpt, device="cpu", sampler="euler", steps=3, seed=3, action_space=None,
                                      execute_steps=1)
    plain = np.stack([ctrl.act(o) for o in obs])
    ctrl.reset()
    ctrl.set_sampling(shift=0.25)  # a new plan: schedule and time table of the new grid
    shifted = np.stack([ctrl.act(o) for o in obs])
    assert not np.allclose(plain, shifted)
    assert (ctrl.plan.sampler, ctrl.plan.steps, ctrl.plan.shift) == ("euler", 3, 0.25)
    torch.testing.assert_close(ctrl.plan.schedule.sigma.double(), flow_sampling_schedule(3, 0.25).sigma)
    with pytest.raises(ValueError, match="sets a DDPM policy's timesteps; this is a flow-matching policy"):
        ctrl.set_sampling(spacing="leading")


def test_actions_are_clipped_to_the_action_space(ckpt):
    obs = states(8, seed=2)
    raw = Controller.from_checkpoint(ckpt, device="cpu", action_space=None)
    ref = np.stack([raw.act(o) for o in obs])
    lo, hi = np.quantile(ref, 0.3, axis=0), np.quantile(ref, 0.7, axis=0)
    ctrl = Controller.from_checkpoint(ckpt, device="cpu", action_space=(lo, hi))
    got = np.stack([ctrl.act(o) for o in obs])
    np.testing.assert_allclose(got, np.clip(ref, lo, hi), rtol=1e-6)
    assert ctrl.stats()["clipped"] == int(np.any((ref < lo) | (ref > hi), axis=1).sum()) > 0
    task = Controller.from_checkpoint(ckpt, device="cpu", action_space="task")  # the task env's (TwoPath: +-ARENA)
    assert task.bounds is not None and np.all(task.bounds.high > 0) and np.all(task.bounds.low == -task.bounds.high)
    data = Controller.from_checkpoint(ckpt, device="cpu")  # the default: the training data's action range
    assert np.all(data.bounds.high < task.bounds.high) and np.all(data.bounds.low > task.bounds.low)


def test_nonfinite_observation_or_action_never_reaches_the_robot(ckpt, caplog):
    obs = states(10, seed=4)
    ctrl = Controller.from_checkpoint(ckpt, device="cpu", action_space=None)
    a0, a1 = ctrl.act(obs[0]), ctrl.act(obs[1])
    bad = {**obs[2], "state": np.array([0.1, np.nan, 0.2, np.inf], np.float32)}
    held = ctrl.act(bad)
    np.testing.assert_array_equal(held, a1)
    event = ctrl.faults[-1]
    assert (event.kind, event.key, event.entries, event.step) == ("obs", "state", (1, 3), 2)
    assert "non-finite observation key 'state' at flat entries [1, 3]" in caplog.text
    assert all(torch.isfinite(h["state"]).all() for h in ctrl.history)  # NaN never enters the network's input
    # A non-finite planned action (e.g. a diverged network) is replaced by the last safe one.
    chunk = ctrl.buffer.latest
    chunk.actions[4 - chunk.start, 0] = np.nan
    a3 = ctrl.act(obs[3])
    np.testing.assert_array_equal(ctrl.act(obs[4]), a3)
    assert ctrl.faults[-1].kind == "action" and ctrl.faults[-1].entries == (0,)
    assert ctrl.stats()["nonfinite_obs"] == 1 and ctrl.stats()["nonfinite_action"] == 1
    ctrl.reset()
    assert not ctrl.faults and ctrl.stats()["nonfinite_obs"] == 0
    with pytest.raises(NonFiniteError, match="first observation"):
        ctrl.act(bad)
    with pytest.raises(KeyError, match=r"the observation of the robot has no \['state'\] \(it has \['agent_pos'\]\)"):
        ctrl.act({"agent_pos": np.zeros(2, np.float32)})


def test_deadline_misses_are_counted(ckpt, fake_clock):
    fake_clock(controller_module, per_read=1e-3)  # the controller's clock advances 1 ms at each read
    obs = states(9, seed=5)
    ctrl = Controller.from_checkpoint(ckpt, device="cpu", control_hz=1e6)  # a 1 us period: every act misses
    for o in obs:
        ctrl.act(o)
    s = ctrl.stats()
    assert s["chunks"] == 2 and s["deadline_misses"] >= 2 and s["act_ms"]["n"] == 9
    relaxed = Controller.from_checkpoint(ckpt, device="cpu", control_hz=0.01)
    for o in obs:
        relaxed.act(o)
    assert relaxed.stats()["deadline_misses"] == 0
    assert math.isfinite(relaxed.warmup_seconds) and relaxed.warmup_seconds < 1.0


def test_set_sampling_during_a_background_inference_is_atomic(flow_ckpt):
    # The worker holds the plan it was launched with; set_sampling builds a new plan and swaps it in, so the chunk in
    # flight finishes with the old plan and the next launch takes the new one.
    import threading

    ctrl = Controller.from_checkpoint(flow_ckpt, device="cpu", sampler="euler", steps=3, action_space=None,
                                      mode="async", execute_steps=1)
    inner, entered, gate, plans = ctrl.chunk_sampler.policy.sample_chunk, threading.Event(), threading.Event(), []

    def gated(cond, plan, **kw):
        plans.append((plan.sampler, plan.steps, plan.shift))
        entered.set()
        assert gate.wait(10.0)
        return inner(cond, plan, **kw)

    ctrl.policy.sample_chunk = gated
    try:
        obs = states(3, seed=5)
        gate.set()
        ctrl.act(obs[0])  # the first chunk: act waits for it
        gate.clear()
        entered.clear()
        ctrl.act(obs[1])  # launches the next chunk in the background, which blocks on the gate
        assert entered.wait(10.0) and ctrl.worker.busy
        ctrl.set_sampling("heun", 2, shift=0.5, warm_up=False)  # while the worker samples with the old plan
        gate.set()
        ctrl.worker.wait()
        entered.clear()
        ctrl.act(obs[2])  # the next launch
        assert entered.wait(10.0)
    finally:
        gate.set()
        ctrl.close()
    assert plans[:2] == [("euler", 3, 1.0), ("euler", 3, 1.0)] and plans[2] == ("heun", 2, 0.5)


def test_controller_leaves_torch_threads_alone_unless_asked(ckpt):
    threads = torch.get_num_threads()
    Controller.from_checkpoint(ckpt, device="cpu", action_space=None)
    assert torch.get_num_threads() == threads
    try:
        Controller.from_checkpoint(ckpt, device="cpu", action_space=None, num_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
