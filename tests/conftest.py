"""Shared test fixtures. Test modules never import each other: whatever several of them need is defined here and
reached through a fixture.

- Controller: a tiny real checkpoint, a fake policy with controlled inference, helpers to drive a ``Controller``.
- Clock: a virtual clock for code that measures durations, so no assertion depends on how long something took.
- Toy mixture: the 2-D mixture of 8 Gaussians and its MLP denoiser.
- Zarr stores: store writers, a reference window transcription and a digest of a directory tree.
- TwoPath training run: a small expert dataset and a smoke-budget training config.
"""

import hashlib
import math
import os
import threading
import time
from typing import Callable, NamedTuple

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from diffpolicy.control.controller import Controller
from diffpolicy.core.normalize import Normalizer
from diffpolicy.nets.embeddings import SinusoidalEmbedding
from diffpolicy.policy.base import Policy
from diffpolicy.policy.checkpoint import save_checkpoint
from diffpolicy.policy.factory import build_policy

# Headless MuJoCo rendering (EGL on Mesa's llvmpipe on CPU machines) unless the caller chose a backend.
os.environ.setdefault("MUJOCO_GL", "egl")

TWO_PATH = "diffpolicy/TwoPath-v0"


# ------------------------------------------------------------------------------------------------------ controller


def _wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` until it holds; fail after ``timeout`` seconds (a guard against hangs, not a measurement)."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


@pytest.fixture(scope="session")
def wait_until():
    """``wait_until(cond, timeout=10.0)``: poll a condition another thread will make true."""
    return _wait_until


TINY_DENOISERS = {"unet": {"unet": {"down_dims": [16, 32], "kernel_size": 5, "n_groups": 8, "time_embed_dim": 32}},
                  "transformer": {"denoiser": "transformer", "transformer": {"d_model": 32, "n_layers": 2,
                                                                             "n_heads": 4, "time_embed_dim": 32}}}


def _tiny_checkpoint(root, objective: str = "ddpm", seed: int = 0, denoiser: str = "unet"):
    """A (16, 32) U-Net (or a 2-block transformer) diffusion policy for TwoPath (state (4,) -> action (2,)) saved
    as ``load_policy`` expects."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = {"state": rng.uniform(-1, 1, (256, 4)).astype(np.float32),
            "action": rng.uniform(-0.2, 0.2, (256, 2)).astype(np.float32)}
    normalizer = Normalizer.fit(data, {"state": "minmax", "action": "minmax"})
    obj = {"type": "ddpm", "num_train_timesteps": 100, "prediction": "epsilon", "clip_x0": 1.0} \
        if objective == "ddpm" else {"type": "flow"}
    pcfg = {"name": f"{denoiser}_{objective}", "type": "diffusion", "horizon": 16, "n_obs_steps": 2,
            "n_action_steps": 8, "objective": obj, **TINY_DENOISERS[denoiser], "sampler": "ddim", "steps": 4}
    shapes = {"obs": {"state": [4]}, "action_dim": 2}
    policy = build_policy(pcfg, normalizer, {"state": (4,)}, [], 2)
    if denoiser == "transformer":  # its zero-initialised gates and output would make every chunk 0
        with torch.no_grad():
            for p in policy.net.parameters():
                p.normal_(0.0, 0.1)
    config = {"policy": pcfg, "shapes": shapes,
              "task": {"name": "two_path", "env_id": TWO_PATH, "env_kwargs": {"obs_type": "dict"},
                       "obs_keys": ["state"], "image_keys": [], "action_key": "action"}}
    state = policy.state_dict()
    save_checkpoint(root, 0, {"model": state, "ema": state}, config)
    return root


class _Identity(torch.nn.Module):
    """The FakePolicy's observation encoder: none (``encode`` reads the step index itself)."""
    keys, image_keys = ("t",), ()


class FakePolicy(Policy):
    """Observation ``{"t": (1,)}`` = the step index; the chunk's entry ``j`` is ``(t_obs - (To - 1) + j, t_obs)``:
    action dim 0 equals the step it is meant for, dim 1 tells which observation the chunk came from. ``sample_chunk``
    waits until ``gate`` (a ``threading.Event``) is set, or else calls ``sleep(delay)`` (``time.sleep``, unless a test
    swaps in a virtual clock's ``advance``), so tests control the inference time. Mask/known are honoured
    (inpainting)."""

    def __init__(self, horizon=16, n_obs_steps=2, n_action_steps=8, delay=0.0, action_scale=1.0):
        normalizer = Normalizer({"action": (torch.full((2,), action_scale), torch.zeros(2))})
        super().__init__(normalizer, _Identity(), 2, horizon, n_obs_steps, n_action_steps)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.delay, self.gate, self.calls, self.fail = delay, None, [], False
        self.sleep = time.sleep

    def encode(self, obs):
        return obs["t"][:, -1]  # (B, 1): the newest step index

    supports_inpainting = True

    def sample_chunk(self, cond, plan=None, noise=None, generator=None, mask=None, known=None):
        self.calls.append({"t": float(cond[0, 0]), "mask": mask, "known": known})
        if self.fail:
            raise FloatingPointError("fake failure")
        if self.gate is not None:
            assert self.gate.wait(10.0), "test gate never opened"
        elif self.delay:
            self.sleep(self.delay)
        j = torch.arange(self.horizon, dtype=torch.float32)
        t = cond[:, :1, None]
        chunk = torch.cat([(t - (self.n_obs_steps - 1) + j[None, :, None]), t.expand(-1, self.horizon, 1)], dim=2)
        chunk = self.normalizer.normalize("action", chunk)
        if mask is not None:
            chunk = torch.where(mask, known, chunk)
        return chunk


def _fake_controller(policy, **kwargs):
    """A ``Controller`` over a FakePolicy (observation key ``"t"``), its warm-up samples forgotten."""
    ctrl = Controller(policy, ["t"], obs_shapes={"t": (1,)}, **kwargs)
    policy.calls.clear()  # forget the warm-up samples
    return ctrl


class SteppedInference:
    """Makes each inference of an async ``Controller`` over a FakePolicy last exactly ``steps`` control steps,
    whatever the machine's speed: the policy's gate holds a chunk in flight until ``tick()`` -- called between two
    control steps (a test's loop, or a virtual clock's ``on_sleep``) -- sees it launched ``steps`` steps ago; it then
    finishes before the next ``act``, which measures a delay of ``steps``. When ``act`` has nothing to execute and
    waits for the chunk in flight, the gate opens for that wait: ``waited`` lists the steps whose ``act`` blocked.
    An ``act`` that blocked otherwise would hang until the gate's timeout and fail."""

    def __init__(self, ctrl, policy, steps: int):
        self.ctrl, self.policy, self.steps, self.waited = ctrl, policy, steps, []
        policy.gate = threading.Event()
        worker_wait = ctrl.worker.wait

        def wait(timeout=None):
            self.waited.append(ctrl.step)
            policy.gate.set()
            try:
                return worker_wait(timeout)
            finally:
                policy.gate.clear()

        ctrl.worker.wait = wait

    def tick(self) -> None:
        """Between two control steps: finish the chunk in flight if it was launched ``steps`` steps ago."""
        ctrl = self.ctrl
        if ctrl.worker.busy and ctrl.step - ctrl.last_launch >= self.steps:
            self.policy.gate.set()
            _wait_until(lambda: ctrl.worker._result is not None)
            self.policy.gate.clear()

    def release(self) -> None:
        """Let a chunk still in flight finish (``Controller.close`` joins the worker thread)."""
        self.policy.gate.set()


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """``tiny_checkpoint(root, objective="ddpm" | "flow", seed=0, denoiser="unet" | "transformer") -> root``: an
    untrained TwoPath checkpoint."""
    return _tiny_checkpoint


@pytest.fixture(scope="session")
def fake_policy():
    """The ``FakePolicy`` class: ``fake_policy(delay=0.1)``, ``fake_policy(action_scale=0.5)``, ..."""
    return FakePolicy


@pytest.fixture(scope="session")
def fake_controller():
    """``fake_controller(policy, **controller_kwargs)``: a Controller over a FakePolicy."""
    return _fake_controller


@pytest.fixture(scope="session")
def fake_obs():
    """``fake_obs(t)``: the FakePolicy's observation at step ``t``."""
    return lambda t: {"t": np.array([t], np.float32)}


@pytest.fixture(scope="session")
def stepped_inference():
    """``stepped_inference(ctrl, policy, steps)``: see :class:`SteppedInference`."""
    return SteppedInference


# ----------------------------------------------------------------------------------------------------------- clock


class FakeClock:
    """Stands in for the ``time`` module of the code under test. ``perf_counter``/``monotonic`` read a virtual time
    that advances by ``per_read`` at each read, by ``advance(seconds)`` and by ``sleep(seconds)``; after each
    ``sleep`` the ``on_sleep`` callbacks run (a fixed-rate loop sleeps once per period)."""

    def __init__(self, per_read: float = 0.0):
        self.now, self.per_read, self.on_sleep = 0.0, per_read, []
        self._lock = threading.Lock()

    def perf_counter(self) -> float:
        with self._lock:
            self.now += self.per_read
            return self.now

    monotonic = perf_counter

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        for fn in self.on_sleep:
            fn()


@pytest.fixture
def fake_clock(monkeypatch):
    """``fake_clock(*modules, per_read=0.0) -> FakeClock``: one virtual clock replacing ``time`` in each given
    module (for this test only)."""

    def install(*modules, per_read: float = 0.0) -> FakeClock:
        clock = FakeClock(per_read)
        for module in modules:
            monkeypatch.setattr(module, "time", clock)
        return clock

    return install


# ----------------------------------------------------------------------------------------------------- toy mixture


class ToyMixture(NamedTuple):
    """The mixture's 8 mode centres on the unit circle ``(8, 2)``, the MLP denoiser class and ``draw(n, g)``."""
    centers: torch.Tensor
    ToyNet: type
    draw: Callable


_CENTERS = torch.tensor([[math.cos(a), math.sin(a)] for a in torch.arange(8) * 2 * math.pi / 8])


class _ToyNet(nn.Module):
    def __init__(self, width=128):
        super().__init__()
        self.emb = SinusoidalEmbedding(32)
        self.mlp = nn.Sequential(nn.Linear(2 + 32, width), nn.Mish(), nn.Linear(width, width), nn.Mish(),
                                 nn.Linear(width, width), nn.Mish(), nn.Linear(width, 2))

    def forward(self, x, t, cond=None):
        return self.mlp(torch.cat([x, self.emb(t)], dim=-1))


def _draw(n, g):
    return _CENTERS[torch.randint(0, 8, (n,), generator=g)] + 0.05 * torch.randn(n, 2, generator=g)


@pytest.fixture(scope="session")
def toy_mixture():
    """A 2-D mixture of 8 Gaussians (std 0.05) on the unit circle: ``centers, ToyNet, draw = toy_mixture``."""
    return ToyMixture(_CENTERS, _ToyNet, _draw)


# ------------------------------------------------------------------------------------------------------ zarr stores


def _make_store(path, lengths=(4, 6), state=None, action=None, ends=None, zarr_format=3, rows=None):
    """A small store written with zarr directly; ``rows``: rows per chunk of the data arrays (default: one chunk)."""
    n = sum(lengths)
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    data = root.create_group("data")
    state = np.arange(n * 3, dtype=np.float32).reshape(n, 3) if state is None else state
    action = np.ones((n, 2), np.float32) if action is None else action
    data.create_array("state", data=state, chunks=(rows, 3) if rows else "auto")
    data.create_array("action", data=action, chunks=(rows, 2) if rows else "auto")
    meta = root.create_group("meta")
    meta.create_array("episode_ends", data=np.cumsum(lengths).astype(np.int64) if ends is None else ends)
    return path


def _write_dp_v2_store(path, lengths=(4, 6, 5), seed=0):
    """A store laid out like Diffusion Policy's pusht_cchi_v7_replay.zarr (zarr v2, float32 images 0..255)."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = root.create_group("data")
    arrays = {
        "img": rng.integers(0, 256, (n, 16, 16, 3)).astype(np.float32),
        "state": rng.uniform(0, 512, (n, 5)).astype(np.float32),
        "action": rng.uniform(0, 512, (n, 2)).astype(np.float32),
        "keypoint": rng.uniform(0, 512, (n, 9, 2)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, (n, 1)).astype(np.float32),
    }
    for k, v in arrays.items():
        data.create_array(k, shape=v.shape, chunks=(7, *v.shape[1:]), dtype=v.dtype)[:] = v
    root.create_group("meta").create_array("episode_ends", data=np.cumsum(lengths).astype(np.int64))
    return arrays


def _reference_windows(data, ends, horizon, pad_before, pad_after):
    """Slow reference: for each episode and start s in [-pad_before, L - horizon + pad_after], copy the in-episode
    part of the window and fill the rest with the first/last copied row."""
    out = []
    start = 0
    for end in ends:
        length = end - start
        for s in range(-pad_before, length - horizon + pad_after + 1):
            lo, hi = max(s, 0), min(s + horizon, length)
            piece = data[start + lo:start + hi]
            before, after = lo - s, (s + horizon) - hi
            out.append(np.concatenate([np.repeat(piece[:1], before, 0), piece, np.repeat(piece[-1:], after, 0)]))
        start = end
    return np.stack(out) if out else np.zeros((0, horizon) + data.shape[1:])


def _tree_digest(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        for name in sorted(files):
            f = os.path.join(root, name)
            h.update(f.encode())
            h.update(open(f, "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="session")
def make_store():
    """``make_store(path, lengths=(4, 6), state=None, action=None, ends=None, zarr_format=3, rows=None) -> path``:
    a small store (state ``(n, 3)``, action ``(n, 2)``) written with zarr directly, so it can be made invalid."""
    return _make_store


@pytest.fixture(scope="session")
def write_dp_v2_store():
    """``write_dp_v2_store(path, lengths=(4, 6, 5), seed=0) -> arrays``: a Diffusion Policy v2 (PushT) store."""
    return _write_dp_v2_store


@pytest.fixture(scope="session")
def reference_windows():
    """``reference_windows(data, ends, horizon, pad_before, pad_after)``: windows by the Diffusion Policy padding
    convention, transcribed per window."""
    return _reference_windows


@pytest.fixture(scope="session")
def tree_digest():
    """``tree_digest(path)``: sha256 over the paths and bytes of every file under ``path``."""
    return _tree_digest


# ---------------------------------------------------------------------------------------------- TwoPath training run


@pytest.fixture(scope="module")
def two_path_dataset(tmp_path_factory):
    """Six TwoPath expert episodes (state, agent_pos, action) in a replay buffer; one per test module."""
    import gymnasium as gym

    import diffpolicy.envs  # noqa: F401  (registers the tasks)
    from diffpolicy.data.replay_buffer import ReplayBuffer
    from diffpolicy.envs.experts import make_expert

    path = tmp_path_factory.mktemp("data") / "two_path.zarr"
    buf = ReplayBuffer.create(path, attrs={"env_id": TWO_PATH})
    env = gym.make(TWO_PATH, obs_type="dict")
    for ep in range(6):
        obs, _ = env.reset(seed=ep)
        expert = make_expert(TWO_PATH, env, seed=ep)
        expert.reset()
        rows = {"state": [], "agent_pos": [], "action": []}
        done = False
        while not done:
            a = expert.act(obs)
            rows["state"].append(obs["state"]), rows["agent_pos"].append(obs["agent_pos"]), rows["action"].append(a)
            obs, _, term, trunc, _ = env.step(a)
            done = term or trunc
        buf.append_episode({k: np.asarray(v, dtype=np.float32) for k, v in rows.items()})
    return path


def _train_config(dataset, run_dir, policy):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("diffpolicy.configs", version_base=None):
        cfg = compose("train", overrides=["~task", f"policy={policy}", "training=smoke", f"run_dir={run_dir}"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg["task"] = {"name": "two_path", "env_id": TWO_PATH, "env_kwargs": {"obs_type": "dict"},
                   "dataset": str(dataset), "obs_keys": ["state"], "action_key": "action", "n_demos": 6}
    if policy.startswith("unet"):
        cfg["policy"]["unet"]["down_dims"] = [16, 32]
    if policy.startswith("transformer"):
        cfg["policy"]["transformer"].update(d_model=32, n_layers=2)
        cfg["policy"].update(horizon=16, n_action_steps=8)  # the other policies' chunk geometry
    if policy == "mlp_bc":
        cfg["training"]["eval_every"] = 15  # periodic rollouts: success against wall time
    if policy != "unet_ddpm":
        cfg["training"]["eval"]["video_episodes"] = 0  # rendering is slow on llvmpipe: one policy covers videos
    return cfg


@pytest.fixture(scope="module")
def train_config(two_path_dataset):
    """``train_config(run_dir, policy) -> dict``: the ``train`` config at the smoke budget on ``two_path_dataset``,
    with a small U-Net (``policy``: a name of ``configs/policy``)."""
    return lambda run_dir, policy: _train_config(two_path_dataset, run_dir, policy)
