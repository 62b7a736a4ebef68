"""Receding-horizon controller: call ``act(obs)`` once per control period, get the action to send.

    ctrl = Controller.from_checkpoint("runs/pusht/...", mode="async", smoothing="rtc", control_hz=10)
    ctrl.reset()
    while running:
        action = ctrl.act(read_observation())     # numpy (Da,), env units, clipped, finite
        send(action); sleep_to_next_period()

Time is counted in control steps (calls to ``act``). The controller keeps the last ``n_obs_steps`` observations
(the first one repeated at the start of an episode), samples a chunk every ``execute_steps`` steps and executes it
step by step (see :mod:`~diffpolicy.control.chunks` for the indexing).

Modes:
- ``sync``: the chunk is sampled inside ``act`` (that call blocks for one inference); with ``execute_steps =
  n_action_steps`` the executed sequence is exactly ``predict_action``'s.
- ``async``: sampling runs in a background thread while the previous chunk keeps executing; ``act`` returns at once
  unless no planned action is left (then it waits, and counts a starvation). A chunk arriving ``d`` steps after its
  observation is executed from index ``d`` on: the ``d`` actions already executed meanwhile are skipped. ``d`` is
  measured per chunk (``stats()["delay_steps"]``). The next chunk is launched after ``execute_steps`` steps, or
  earlier if it would otherwise arrive after the current chunk's ``H`` actions run out (``d`` estimated as for
  RTC below, plus one step of margin). With one inference at a time that works
  while ``2 d <= H``; beyond it ``act`` must block, and the controller logs a warning saying so.

Smoothing: ``None``; ``"ensemble"`` (ACT temporal ensembling; default ``execute_steps = 1``, i.e. a chunk per
step); ``"rtc"`` (real-time chunking, async only): when a chunk is launched at step ``s``, its entries for steps
``s .. s + d_est - 1`` -- the ones the robot will execute from the current chunk before the new one is ready -- are
fixed, in normalised units, to the current chunk's values through the sampler's inpainting constraint, so the new
chunk continues the executed trajectory. ``d_est`` is the largest delay of the last ``rtc_window`` chunks (at the
start, the warm-up latency in periods), at least 1.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..accel import accelerate, compile_trunk
from ..data.obs import ObsAdapter, ObsSpec
from ..data.tasks import make_env
from ..policy.base import Policy
from .chunks import Chunk, ChunkBuffer
from .metrics import RingStats
from .safety import (
    ActionBounds,
    ControllerFault,
    NonFiniteError,
    SafetyEvent,
    log,
    nonfinite_action,
    nonfinite_obs,
)

FAULT_POLICIES = ("hold", "safe_action", "raise")
from .sampling import ChunkSampler, policy_device
from .worker import InferenceWorker


class Controller:
    """See the module docstring. ``period`` (seconds) enables deadline-miss counting; ``action_space`` (a Box or
    ``(low, high)``, or ``"data"``: the policy's dataset action range, i.e. its normaliser's [-1, 1]) enables clipping.

    Liveness: a step that finds no planned action waits for the chunk in flight at most ``inference_timeout``
    seconds (default: one ``period``, or 1 s without one; the first step of an episode, which has nothing to hold,
    waits up to ``first_chunk_timeout``), then holds the last safe action and counts the fault; an inference that
    raises is held and counted the same way (on an episode's first step it is raised). After ``max_held_steps``
    consecutive held steps (any cause: timeout, failed inference, non-finite observation or action) the
    ``fault_policy`` applies: ``"hold"`` keeps holding, ``"safe_action"`` sends ``safe_action`` until a good step,
    ``"raise"`` raises :class:`~diffpolicy.control.safety.ControllerFault`.

    Sampling: a plan from ``policy.sampling_plan`` (sampler, steps, time grid, and the FiLM time table computed
    once), run through ``policy.sample_chunk``; :meth:`set_sampling` swaps in another plan. ``accel`` applies
    :func:`diffpolicy.accel.accelerate` to the policy (the CPU convolution paths; :meth:`from_checkpoint` does by
    default); ``compile`` runs the denoiser's trunk (U-Net or transformer) through ``torch.compile`` (compiled
    during the warm-up: minutes on a 2-core CPU); ``cuda_graph`` (default: on when the policy is on CUDA) captures
    the full chunk sample in a CUDA graph -- written without a GPU, so that path is untested. ``num_threads`` sets
    torch's intra-op threads for inference (process-wide in PyTorch, so only when given; 1 is right for batch-1
    chunks on a shared CPU).
    """

    def __init__(self, policy: Policy, obs_keys: Sequence[str], image_keys: Sequence[str] = (), crop_shape=None,
                 obs_shapes: Mapping[str, Sequence[int]] | None = None, sampler: str | None = None,
                 steps: int | None = None, mode: str = "sync", smoothing: str | None = None,
                 execute_steps: int | None = None, ensemble_decay: float = 0.01, rtc_window: int = 8,
                 action_space=None, period: float | None = None, seed: int = 0, accel: bool = False,
                 compile: bool = False, cuda_graph: bool | None = None, warm_up: bool = True,
                 num_threads: int | None = None, obs_spec: Mapping[str, Any] | None = None,
                 inference_timeout: float | None = None, first_chunk_timeout: float = 60.0,
                 fault_policy: str = "hold", max_held_steps: int = 10, safe_action=None):
        if mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
        if smoothing not in (None, "ensemble", "rtc"):
            raise ValueError(f"smoothing must be None, 'ensemble' or 'rtc', got {smoothing!r}")
        if fault_policy not in FAULT_POLICIES:
            raise ValueError(f"fault_policy must be one of {FAULT_POLICIES}, got {fault_policy!r}")
        if fault_policy == "safe_action" and safe_action is None:
            raise ValueError("fault_policy='safe_action' needs safe_action (the action to send, shape (Da,))")
        if smoothing == "rtc" and mode != "async":
            raise ValueError("smoothing='rtc' fixes the actions executed while a chunk is computed: it needs "
                             "mode='async' (in sync mode nothing executes during inference)")
        self.policy, self.mode, self.smoothing = policy, mode, smoothing
        self.To, self.horizon = policy.n_obs_steps, policy.horizon
        self.H = policy.executable_steps
        default_s = 1 if smoothing == "ensemble" else policy.n_action_steps
        self.execute_steps = int(execute_steps or default_s)
        if not 1 <= self.execute_steps <= self.H:
            raise ValueError(f"execute_steps must be in [1, {self.H}] (horizon - n_obs_steps + 1), "
                             f"got {self.execute_steps}")
        self.device = policy_device(policy)
        # Intra-op threads for inference, only when asked (a process-wide setting in PyTorch). A batch-1 chunk
        # gains nothing from splitting small ops across cores, and on a loaded CPU OpenMP's spinning barriers made
        # a DDIM-4 chunk of the test U-Net take 2.7 s with 2 threads vs 2 ms with 1 (load average 8 on 2 cores).
        self.num_threads = num_threads if self.device.type == "cpu" else None
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        if smoothing == "rtc" and not policy.supports_inpainting:
            raise ValueError(f"smoothing='rtc' needs a diffusion/flow policy, got {type(policy).__name__}")
        if accel:
            accelerate(policy)
        if compile:
            if not hasattr(policy, "net"):
                raise ValueError(f"compile=True compiles a diffusion policy's denoiser; {type(policy).__name__} "
                                 "has none")
            compile_trunk(policy.net)
        cuda_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        self.chunk_sampler = ChunkSampler(policy, cuda_graph=cuda_graph)
        # The sampling plan: replaced whole by set_sampling, read once per chunk launch (a reference swap, so the
        # background worker finishes an in-flight chunk with the plan it started with).
        self.plan = policy.sampling_plan(sampler, steps, time_table=True)
        self.adapter = ObsAdapter(ObsSpec(obs_keys, obs_spec), image_keys, crop_shape, source="the robot")
        self.obs_keys, self.obs_shapes = list(obs_keys), obs_shapes
        self.buffer = ChunkBuffer("ensemble" if smoothing == "ensemble" else "latest", ensemble_decay)
        if isinstance(action_space, str) and action_space == "data":
            action_space = data_action_bounds(policy)
        self.bounds = None if action_space is None else ActionBounds(action_space, policy.action_dim)
        self.inference_timeout = inference_timeout if inference_timeout is not None else (period or 1.0)
        self.first_chunk_timeout = first_chunk_timeout
        self.fault_policy, self.max_held_steps = fault_policy, int(max_held_steps)
        self.safe_action = None if safe_action is None else np.broadcast_to(
            np.asarray(safe_action, dtype=np.float32), (policy.action_dim,)).copy()
        self.period, self.seed, self.rtc_window = period, seed, rtc_window
        self.rng = torch.Generator()  # CPU, control thread only: initial noise and per-chunk seeds
        self.worker = InferenceWorker(self._infer) if mode == "async" else None
        self.act_latency, self.infer_latency = RingStats(), RingStats()
        self.warmup_seconds = float("nan")
        self._warned_slow = False  # once per controller, not per episode
        self.reset(seed)
        if warm_up:
            self.warm_up()

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto", use_ema: bool = True,
                        action_space: Any = "data", control_hz: float | None = None, **kwargs) -> "Controller":
        """Load a policy checkpoint (run dir, checkpoints root or step dir) and wrap it.

        ``device="auto"`` picks CUDA when present; ``accel=True`` (the default here) applies
        :func:`diffpolicy.accel.accelerate` to the loaded policy. ``action_space="data"`` (default) clips to the
        action range of the training data (from the checkpoint's normaliser); ``"task"`` reads the bounds from the
        checkpoint's task env; pass a Box/``(low, high)`` for a real robot's limits, or None to disable clipping.
        ``control_hz`` sets the deadline (``period = 1 / control_hz``); other keywords go to the constructor.
        """
        from ..policy.factory import load_policy

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        kwargs.setdefault("accel", True)
        policy, config = load_policy(path, use_ema=use_ema, device=device)
        return cls._for_task(policy, config["task"], config["shapes"]["obs"], action_space, control_hz, kwargs)

    @classmethod
    def from_artifact(cls, path: str | Path, trusted: bool = False, action_space: Any = "data",
                      control_hz: float | None = None, **kwargs) -> "Controller":
        """Run an exported chunk function (a ``diffpolicy-export`` directory) instead of the PyTorch policy.

        The artifact fixes the sampler and step count (:meth:`set_sampling` refuses others) and cannot inpaint
        (no ``smoothing="rtc"``). ONNX runs in onnxruntime on the CPU (``num_threads`` sets its intra-op threads);
        a ``torch_export`` artifact is read by ``torch.export.load``, which may unpickle: ``trusted=True`` only for
        files you exported yourself. ``action_space`` and ``control_hz`` as in :meth:`from_checkpoint`.
        """
        from ..export import load_artifact

        policy = load_artifact(path, trusted=trusted, num_threads=kwargs.pop("num_threads", None))
        return cls._for_task(policy, policy.meta["task"], policy.meta["shapes"]["obs"], action_space, control_hz,
                             kwargs)

    @classmethod
    def _for_task(cls, policy, task: Mapping[str, Any], obs_shapes, action_space, control_hz, kwargs) -> "Controller":
        """The controller of a loaded policy and its saved task section (keys, cameras, crop, obs spec)."""
        if isinstance(action_space, str) and action_space == "task":
            action_space = _task_action_space(task)
        period = kwargs.pop("period", None) if control_hz is None else 1.0 / control_hz
        return cls(policy, task["obs_keys"], task.get("image_keys") or [], task.get("crop_shape"),
                   obs_shapes=obs_shapes, action_space=action_space, period=period, obs_spec=task.get("obs_spec"),
                   **kwargs)

    def warm_up(self, repeats: int = 2) -> float:
        """Sample ``repeats`` chunks from a zero observation with the current sampler (and mask when RTC is on), so
        the first ``act`` does not pay for allocation, caches or compilation. Returns the last sample's seconds."""
        if self.obs_shapes is None:
            raise ValueError("warm_up needs obs_shapes (per-step shapes as the encoder sees them)")
        obs = {k: torch.zeros(1, self.To, *s, device=self.device) for k, s in self.obs_shapes.items()}
        with torch.inference_mode():
            cond = self.policy.encode(obs)
        plan = self.plan
        self.chunk_sampler.warm_up(cond, plan, repeats)
        t0 = time.perf_counter()
        self.chunk_sampler(cond, torch.zeros(1, self.horizon, self.policy.action_dim, device=self.device), plan)
        self.warmup_seconds = time.perf_counter() - t0
        return self.warmup_seconds

    @property
    def sampler(self) -> str | None:
        return None if self.plan is None else self.plan.sampler

    @property
    def steps(self) -> int | None:
        return None if self.plan is None else self.plan.steps

    def set_sampling(self, sampler: str | None = None, steps: int | None = None, warm_up: bool = True,
                     shift: float | None = None, spacing: str | None = None) -> None:
        """Change the sampler, step count and/or time grid (``shift`` for flow, ``spacing`` for DDPM policies);
        what is not given stays. The new plan is built and checked here, then swapped in whole: the next chunk
        launch uses it, a chunk in flight finishes with the old one. The warm-up samples one chunk in the calling
        thread (and captures a graph on CUDA): call it between periods you can spare, or pass ``warm_up=False``."""
        cur = self.plan
        if cur is None:
            self.policy.sampling_plan(sampler, steps, shift, spacing)  # refuses grid settings, as for any policy
            return
        self.plan = self.policy.sampling_plan(
            sampler or cur.sampler, cur.steps if steps is None else steps, cur.shift if shift is None else shift,
            cur.spacing if spacing is None else spacing, time_table=True)
        if warm_up and self.obs_shapes is not None:
            self.warm_up(repeats=1)

    # ---------------------------------------------------------------- episode state

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: empty history, chunks, queue of pending inference and counters; re-seed the sampler's
        noise (``seed`` or the constructor's), so an episode's actions depend only on its observations and seed."""
        if self.worker is not None:
            self.worker.cancel()
        self.rng.manual_seed(self.seed if seed is None else seed)
        if self.bounds is not None:
            self.bounds.n_clipped = 0
        self.history: deque | None = None
        self.buffer.clear()
        self.step = 0
        self.n_chunks = 0
        self.last_launch: int | None = None
        self.launch_step: int | None = None
        self.last_safe: np.ndarray | None = None
        self.held_run = 0  # consecutive held steps
        self.prev_chunk: int | None = None
        self.delays: deque = deque(maxlen=self.rtc_window)
        self.delay_hist: Counter = Counter()
        self.faults: deque[SafetyEvent] = deque(maxlen=256)
        self.counts = Counter()
        self.act_latency.clear()
        self.infer_latency.clear()
        self.last_info: dict = {}

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()

    # ---------------------------------------------------------------- the control step

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """One control step: ``obs`` (the env's Dict observation, env units) -> action ``(Da,)`` float32."""
        t_start = time.perf_counter()
        step = self.step
        events = self._push_obs(obs, step)
        if self.worker is not None:
            result = self.worker.poll()
            if result is not None:
                self._accept(result)
        picked = self._planned_action(step, events)
        chunk_index = None
        if picked is not None:
            action, chunk_index = picked
            action = np.asarray(action, dtype=np.float32)
            bad = nonfinite_action(action, step)
            if bad is not None:
                events.append(bad)
        if events:
            action = self._hold(events)
        else:
            self.held_run = 0
            if self.bounds is not None:
                action = self.bounds(action)
            self.last_safe = action.copy()
        self.last_info = {"step": step, "chunk": chunk_index, "boundary": chunk_index != self.prev_chunk,
                          "held": bool(events)}
        self.prev_chunk = chunk_index
        self.step += 1
        elapsed = time.perf_counter() - t_start
        self.act_latency.add(elapsed)
        if self.period is not None and elapsed > self.period:
            self.counts["deadline_misses"] += 1
        return action

    def _push_obs(self, obs: Mapping[str, np.ndarray], step: int) -> list[SafetyEvent]:
        raw = self.adapter.raw(obs)  # flat record of the keys the obs spec reads (missing ones are an error)
        events = nonfinite_obs(raw, self.adapter.spec.raw_keys, step)
        if events:
            if self.history is None:
                raise NonFiniteError(f"{events[0]}: but this is the episode's first observation, so there is no "
                                     "safe observation or action to hold")
            self.history.append(self.history[-1])  # keep the history aligned with time; never feed NaN to the net
            return events
        x = {k: v.to(self.device) for k, v in self.adapter.from_raw(raw).items()}
        if self.history is None:
            self.history = deque([x] * self.To, maxlen=self.To)
        else:
            self.history.append(x)
        return events

    def _planned_action(self, step: int, events: list[SafetyEvent]):
        """This step's planned ``(action, chunk index)``, waiting for inference when nothing is planned (first step,
        or inference slower than the chunk); None when the wait timed out or inference failed (a fault event)."""
        first = self.last_safe is None  # nothing to hold yet: wait longer, and let a failure raise
        try:
            if self._due(step):
                self._launch(step)
            picked = self.buffer.action(step)
            while picked is None:
                self.counts["starved"] += step > 0
                if self.worker is None or not self.worker.busy:
                    self._launch(step)
                if self.worker is not None:
                    timeout = self.first_chunk_timeout if first else self.inference_timeout
                    self._accept(self.worker.wait(timeout), blocked=True)
                picked = self.buffer.action(step)
        except TimeoutError as e:
            if first:
                raise TimeoutError(f"step {step}: the episode's first chunk did not arrive within "
                                   f"{self.first_chunk_timeout} s (first_chunk_timeout)") from e
            events.append(SafetyEvent(step, "timeout", "inference", detail=f"waited {self.inference_timeout} s"))
            return None
        except Exception as e:  # noqa: BLE001 - any failure of the policy is a fault to hold
            if first:
                raise
            events.append(SafetyEvent(step, "error", "inference", detail=repr(e.__cause__ or e)))
            return None
        return picked

    def _hold(self, events: list[SafetyEvent]) -> np.ndarray:
        """The action of a faulty step: the last safe one, or what the fault policy says after too many."""
        for e in events:
            self.faults.append(e)
            self.counts[{"obs": "nonfinite_obs", "action": "nonfinite_action", "timeout": "inference_timeouts",
                         "error": "inference_errors"}[e.kind]] += 1
            log.warning(str(e))
        if self.last_safe is None:
            raise NonFiniteError(f"{events[0]}: but no safe action has been sent yet in this episode")
        self.held_run += 1
        self.counts["held"] += 1
        if self.held_run > self.max_held_steps:
            if self.fault_policy == "raise":
                raise ControllerFault(f"{self.held_run} consecutive faulty steps (max_held_steps "
                                      f"{self.max_held_steps}); the last: {events[-1]}")
            if self.fault_policy == "safe_action":
                return self.safe_action.copy()
        return self.last_safe.copy()

    def _due(self, step: int) -> bool:
        if self.worker is not None and self.worker.busy:
            return False
        if self.last_launch is None:
            return True
        since = step - self.last_launch
        if since >= self.execute_steps:
            return True
        # Async: a chunk launched now arrives ~max(recent delays) steps later, and the current chunk runs out H steps
        # after its launch; launch early (one step of margin) rather than let the robot wait at the end of it.
        d = self._delay_estimate() if self.worker is not None else None
        return d is not None and since + d + 1 >= self.H

    def _delay_estimate(self) -> int | None:
        """Control steps a chunk takes to arrive: the largest of the last ``rtc_window`` measured delays, else the
        warm-up latency in periods; None when neither is known."""
        if self.delays:
            return max(self.delays)
        if self.period and math.isfinite(self.warmup_seconds):
            return math.ceil(self.warmup_seconds / self.period)
        return None

    # ---------------------------------------------------------------- inference

    def _launch(self, step: int) -> None:
        obs = {k: torch.stack([h[k] for h in self.history])[None] for k in self.history[0]}
        mask = known = None
        if self.smoothing == "rtc":
            mask, known = self._rtc_prefix(step)
        # Noise is drawn here, in the control thread, so a cancelled request of a previous episode cannot consume
        # this episode's random numbers; samplers that draw noise in their loop get their own seeded generator.
        plan = self.plan
        noise = torch.randn(1, self.horizon, self.policy.action_dim, generator=self.rng).to(self.device)
        gen = None
        if plan is not None and not plan.deterministic:
            gen = torch.Generator(device=self.device).manual_seed(
                int(torch.randint(0, 2**62, (1,), generator=self.rng)))
        request = {"obs": obs, "step": step, "plan": plan, "mask": mask, "known": known, "noise": noise,
                   "generator": gen}
        self.last_launch = step
        if self.worker is None:
            self._accept(self._infer(request))
        else:
            self.worker.submit(request)

    def _rtc_prefix(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """Mask/known ``(1, T, Da)``: the new chunk's entries for steps ``step .. step + d - 1`` fixed to the current
        chunk's normalised values (chunk index ``To - 1 + i`` is step ``step + i``)."""
        cur = self.buffer.latest
        if cur is None:
            return None, None
        # In async mode a chunk is collected at the next act at the earliest, so at least one step is executed
        # from the current chunk before the switch.
        d_est = max(self._delay_estimate() or 1, 1)
        d = min(d_est, cur.start + self.H - step, self.H)
        if d <= 0:
            return None, None
        src = self.To - 1 + step - cur.start
        mask = torch.zeros(1, self.horizon, self.policy.action_dim, dtype=torch.bool, device=self.device)
        known = torch.zeros(1, self.horizon, self.policy.action_dim, device=self.device)
        mask[:, self.To - 1: self.To - 1 + d] = True
        known[0, self.To - 1: self.To - 1 + d] = cur.normed[src: src + d]
        return mask, known

    def _infer(self, request: dict) -> dict:
        """Sample one chunk (runs in the worker thread in async mode)."""
        t0 = time.perf_counter()
        if self.num_threads is not None and torch.get_num_threads() != self.num_threads:
            torch.set_num_threads(self.num_threads)  # the worker thread's own OpenMP setting
        with torch.inference_mode():
            cond = self.policy.encode(request["obs"])
            normed = self.chunk_sampler(cond, request["noise"], request["plan"], request["mask"], request["known"],
                                        request["generator"])
            actions = self.policy.normalizer.unnormalize(self.policy.action_key, normed)[0, self.To - 1:]
            actions = actions.float().cpu().numpy()
        return {**request, "normed": normed[0], "actions": actions, "seconds": time.perf_counter() - t0}

    def _accept(self, result: dict, blocked: bool = False) -> None:
        delay = self.step - result["step"]
        if not blocked:  # a chunk the loop waited for says nothing about the delay while the robot moves
            self.delays.append(delay)
            if 2 * delay > self.H and not self._warned_slow:
                self._warned_slow = True
                log.warning(
                    f"async control cannot keep up: a chunk took {delay} control periods to arrive "
                    f"({result['seconds'] * 1e3:.0f} ms of inference), and with one inference at a time the next one "
                    f"arrives {2 * delay} periods after the current chunk started, past its {self.H} executable "
                    f"actions, so act will block (counted in stats()['starved']). Keep 2 x inference time <= "
                    f"{self.H} periods: fewer sampling steps, a faster device, or a lower control rate.")
        self.delay_hist[delay] += 1
        self.infer_latency.add(result["seconds"])
        self.buffer.add(Chunk(self.n_chunks, result["step"], result["actions"], result["normed"]))
        self.n_chunks += 1

    # ---------------------------------------------------------------- reporting

    def stats(self) -> dict:
        """Counters and latency summaries of the current episode (milliseconds)."""
        return {"steps": self.step, "chunks": self.n_chunks, "deadline_misses": self.counts["deadline_misses"],
                "starved": self.counts["starved"], "nonfinite_obs": self.counts["nonfinite_obs"],
                "nonfinite_action": self.counts["nonfinite_action"],
                "inference_timeouts": self.counts["inference_timeouts"],
                "inference_errors": self.counts["inference_errors"], "held": self.counts["held"],
                "clipped": self.bounds.n_clipped if self.bounds else 0,
                "delay_steps": dict(sorted(self.delay_hist.items())),
                "act_ms": self.act_latency.summary(1e3), "inference_ms": self.infer_latency.summary(1e3)}


def data_action_bounds(policy: Policy) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` ``(Da,)``: the training data's action range, the normaliser's image of [-1, 1]."""
    ends = torch.tensor([[-1.0], [1.0]]).expand(2, policy.action_dim)
    lo, hi = policy.normalizer.unnormalize(policy.action_key, ends.to(policy_device(policy))).cpu()
    return torch.minimum(lo, hi).numpy(), torch.maximum(lo, hi).numpy()


def _task_action_space(task: Mapping[str, Any]):
    try:
        env = make_env(task)
    except Exception as e:
        raise ValueError(f"cannot read the action bounds from the task env {task['env_id']!r} ({e}); pass "
                         "action_space=(low, high) or action_space=None") from e
    space = env.action_space
    env.close()
    return space
