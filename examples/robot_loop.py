"""Embed the controller in a robot's fixed-rate loop; a simulated task stands in for the robot.

    python examples/robot_loop.py --checkpoint runs/pusht/unet_flow_... --mode async --smoothing rtc --seconds 20

The loop is the one to write on hardware: read an observation, call ``act``, send the action, sleep to the next
period; at the end it prints latency statistics (act, inference, whole loop), deadline misses and the per-chunk
inference delay in control steps. Replace :class:`SimRobot` with your robot's driver (``read()`` returns the same
``Dict`` observation keys the policy was trained on, in the same units; ``send(action)`` applies a ``(Da,)`` action).
"""

from __future__ import annotations

import argparse
import json
import time

from diffpolicy.control import Controller
from diffpolicy.control.metrics import RingStats
from diffpolicy.data.tasks import SuccessSignal, make_env
from diffpolicy.policy.checkpoint import load_config, resolve_checkpoint


class SimRobot:
    """A task's gymnasium env (its imports and wrappers from the task config) behind a robot-like interface:
    ``read()`` and ``send(action)``; resets itself when done, counting successes by the task's success signal."""

    def __init__(self, task: dict, seed: int = 0):
        self.env, self.signal, self.seed = make_env(task), SuccessSignal.from_task(task), seed
        self.obs, _ = self.env.reset(seed=seed)
        self.episodes, self.successes, self._success = 0, 0, False

    def read(self) -> dict:
        return self.obs

    def send(self, action) -> bool:
        """Apply ``action`` for one period; returns True when an episode ended (the robot was reset)."""
        self.obs, reward, term, trunc, info = self.env.step(action)
        self._success |= self.signal.step(reward, term, trunc, info)
        if term or trunc:
            self.episodes += 1
            self.successes += self._success
            self._success = False
            self.obs, _ = self.env.reset(seed=self.seed + self.episodes)
            return True
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run directory, checkpoints root or checkpoint directory")
    p.add_argument("--hz", type=float, default=10.0, help="control rate of the loop")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to run")
    p.add_argument("--n-steps", type=int, default=None, help="run this many control periods instead of --seconds")
    p.add_argument("--mode", choices=["sync", "async"], default="async")
    p.add_argument("--smoothing", choices=["none", "ensemble", "rtc"], default="rtc")
    p.add_argument("--sampler", default=None, help="e.g. ddim, euler, dpmpp_2m (default: the checkpoint's)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps per chunk (default: the checkpoint's)")
    args = p.parse_args()

    task = load_config(resolve_checkpoint(args.checkpoint))["task"]
    # num_threads=1: a batch-1 chunk gains nothing from more intra-op threads, and on cores shared with the rest of
    # the robot stack spinning OpenMP threads would stall it (torch's thread count is process-wide: set it here,
    # in the program's entry point).
    ctrl = Controller.from_checkpoint(args.checkpoint, control_hz=args.hz, mode=args.mode, sampler=args.sampler,
                                      steps=args.steps, smoothing=None if args.smoothing == "none" else args.smoothing,
                                      num_threads=1)
    print(f"loaded {args.checkpoint} on {ctrl.device}; warm-up chunk {ctrl.warmup_seconds * 1e3:.1f} ms; "
          f"{ctrl.mode} mode, smoothing {ctrl.smoothing}, {ctrl.sampler} x {ctrl.steps} steps, {args.hz:g} Hz")
    robot = SimRobot(task)
    period = 1.0 / args.hz
    loop, act_ms, inference_ms, misses, delays = RingStats(), RingStats(), RingStats(), 0, {}

    def collect() -> None:  # episode statistics are reset with the controller
        s = ctrl.stats()
        for v in ctrl.act_latency.values():
            act_ms.add(v * 1e3)
        for v in ctrl.infer_latency.values():
            inference_ms.add(v * 1e3)
        for d, n in s["delay_steps"].items():
            delays[d] = delays.get(d, 0) + n

    ctrl.reset()
    start = next_tick = time.perf_counter()
    while (loop.count < args.n_steps) if args.n_steps else (time.perf_counter() - start < args.seconds):
        t0 = time.perf_counter()
        action = ctrl.act(robot.read())        # 1. observation -> action (numpy, env units, clipped, finite)
        if robot.send(action):                 # 2. send it; a new episode starts after a reset
            collect()
            ctrl.reset()
        loop.add(time.perf_counter() - t0)
        next_tick += period                    # 3. sleep to the next period; count a miss if we are late
        late = time.perf_counter() - next_tick
        if late > 0:
            misses += 1
            next_tick = time.perf_counter()    # do not try to catch up with a burst of steps
        else:
            time.sleep(-late)
    collect()
    ctrl.close()
    print(json.dumps({"steps": loop.count, "episodes": robot.episodes, "successes": robot.successes,
                      "loop_deadline_misses": misses, "loop_ms": loop.summary(1e3), "act_ms": act_ms.summary(),
                      "inference_ms": inference_ms.summary(), "inference_delay_steps": dict(sorted(delays.items()))},
                     indent=1))


if __name__ == "__main__":
    main()
