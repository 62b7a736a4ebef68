"""Controller benchmarks (issue 6): chunk latency, real-time harness (success, delays, smoothness), soak.

    nice -n 10 python benchmarks/bench_controller.py latency  --checkpoint RUN [--compile]
    nice -n 10 python benchmarks/bench_controller.py harness  --checkpoint RUN --rate 10 --episodes 20
    nice -n 10 python benchmarks/bench_controller.py soak     --checkpoint RUN --n-steps 10000 --rate 100

Every run prints a JSON line with its results and the load average (``/proc/loadavg``) before and after, since the
2 cores are shared. ``latency`` compares, for batch-1 chunks through ``policy.sample_chunk``, the plain policy with a
plan per chunk (as ``predict_action`` runs it) with the controller's path (accelerated net, plan and FiLM time table
built once per sampler and step count) and, with ``--compile``, ``torch.compile`` of the U-Net trunk.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from tqdm.auto import tqdm

from diffpolicy.accel import accelerate, compile_trunk
from diffpolicy.control.controller import Controller
from diffpolicy.control.metrics import RingStats
from diffpolicy.control.realtime import run_harness
from diffpolicy.control.sampling import ChunkSampler
from diffpolicy.policy.factory import load_policy

GRID = [("ddim", s) for s in (1, 2, 4, 8, 16)] + [("euler", s) for s in (1, 2, 4, 10)] + \
       [("dpmpp_2m", s) for s in (4, 10)]
MODES = {"sync": dict(mode="sync"), "async": dict(mode="async"),
         "sync+ensemble": dict(mode="sync", smoothing="ensemble"),
         "async+ensemble": dict(mode="async", smoothing="ensemble"),
         "async+rtc": dict(mode="async", smoothing="rtc")}


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def chunk_path(policy, cached: bool = True):
    """``fn(cond, noise, sampler, steps)``: a chunk through ``policy.sample_chunk``; ``cached``: with the plan and
    its time table built once per (sampler, steps), as the controller runs it, else a plan per call as
    ``predict_action`` does."""
    sampler_fn, plans = ChunkSampler(policy), {}

    def fn(cond, noise, sampler, steps):
        if not cached:
            return sampler_fn(cond, noise, policy.sampling_plan(sampler, steps))
        if (sampler, steps) not in plans:
            plans[sampler, steps] = policy.sampling_plan(sampler, steps, time_table=True)
        return sampler_fn(cond, noise, plans[sampler, steps])
    return fn


def latency(args) -> dict:
    torch.set_num_threads(args.threads)
    policy, config = load_policy(args.checkpoint)
    shapes = config["shapes"]["obs"]
    obs = {k: torch.zeros(1, policy.n_obs_steps, *s) for k, s in shapes.items()}
    with torch.inference_mode():
        cond = policy.encode(obs)
    noise = torch.randn(1, policy.horizon, policy.action_dim, generator=torch.Generator().manual_seed(0))
    paths = {"plain": chunk_path(policy, cached=False),
             "accel": chunk_path(accelerate(load_policy(args.checkpoint)[0]))}
    if args.compile:
        fast = accelerate(load_policy(args.checkpoint)[0])
        compile_trunk(fast.net)
        paths["compiled"] = chunk_path(fast)
    rows = []
    for name, fn in paths.items():
        t0 = time.perf_counter()
        fn(cond, noise, "ddim", 2)  # compiles (once per process for the body) / allocates
        first = time.perf_counter() - t0
        for sampler, steps in tqdm(GRID, desc=f"latency {name}"):
            for _ in range(3):
                fn(cond, noise, sampler, steps)
            ring = RingStats()
            for _ in range(args.reps):
                t0 = time.perf_counter()
                fn(cond, noise, sampler, steps)
                ring.add(time.perf_counter() - t0)
            s = ring.summary(1e3)
            rows.append({"path": name, "sampler": sampler, "steps": steps, "p50_ms": s["p50"], "p99_ms": s["p99"],
                         "first_call_s": first})
    return {"rows": rows}


def harness(args) -> dict:
    out = {}
    for mode in args.modes:
        ctrl = Controller.from_checkpoint(args.checkpoint, device="cpu", sampler=args.sampler, steps=args.steps,
                                          control_hz=args.rate, seed=args.seed, execute_steps=args.execute_steps,
                                          num_threads=1, **MODES[mode])
        if args.shift is not None or args.spacing is not None:
            ctrl.set_sampling(shift=args.shift, spacing=args.spacing)
        res = run_harness(ctrl, ctrl_task(args.checkpoint), args.rate, args.episodes, seed=args.seed)
        ctrl.close()
        res.pop("episodes")
        res["warmup_ms"] = ctrl.warmup_seconds * 1e3
        out[mode] = res
        print(mode, json.dumps(res), flush=True)
    return out


def ctrl_task(path) -> dict:
    from diffpolicy.policy.checkpoint import load_config, resolve_checkpoint

    return load_config(resolve_checkpoint(path))["task"]


def soak(args) -> dict:
    """``--n-steps`` control steps of async+RTC in the task (episodes back to back) at ``--rate`` Hz wall clock;
    resident memory and act latency per block of 1000 steps."""
    import gymnasium as gym

    import diffpolicy.envs  # noqa: F401

    task = ctrl_task(args.checkpoint)
    ctrl = Controller.from_checkpoint(args.checkpoint, device="cpu", sampler=args.sampler, steps=args.steps,
                                      control_hz=args.rate, mode="async", smoothing="rtc", num_threads=1)
    env = gym.make(task["env_id"], **task["env_kwargs"])
    period, blocks, block = 1.0 / args.rate, [], RingStats(1000)
    obs, _ = env.reset(seed=0)
    ctrl.reset(0)
    episode, deadline = 0, time.perf_counter()
    for i in tqdm(range(args.n_steps), desc="soak"):
        t0 = time.perf_counter()
        action = ctrl.act(obs)
        block.add(time.perf_counter() - t0)
        obs, _, term, trunc, _ = env.step(action)
        if term or trunc:
            episode += 1
            obs, _ = env.reset(seed=episode)
            ctrl.reset(episode)
        if (i + 1) % 1000 == 0:
            s = block.summary(1e3)
            blocks.append({"steps": i + 1, "rss_mb": rss_mb(), "act_p50_ms": s["p50"], "act_p99_ms": s["p99"],
                           "act_max_ms": s["max"], "episodes": episode})
            block.clear()
        deadline += period
        time.sleep(max(0.0, deadline - time.perf_counter()))
        deadline = max(deadline, time.perf_counter() - period)  # after an overrun, do not try to catch up
    ctrl.close()
    return {"blocks": blocks}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["latency", "harness", "soak"])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=int, default=None, help="sampler steps per chunk (harness, soak)")
    p.add_argument("--shift", type=float, default=None, help="flow policies: time-grid shift (harness)")
    p.add_argument("--spacing", default=None, help="DDPM policies: timestep spacing (harness)")
    p.add_argument("--execute-steps", type=int, default=None,
                   help="actions executed per chunk (harness); default: the policy's n_action_steps (1 if ensembling)")
    p.add_argument("--n-steps", type=int, default=10_000, help="control steps of the soak")
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    before = loadavg()
    res = {"latency": latency, "harness": harness, "soak": soak}[args.what](args)
    res.update({"what": args.what, "checkpoint": args.checkpoint, "loadavg_before": before, "loadavg_after": loadavg(),
                "torch_threads": torch.get_num_threads()})
    line = json.dumps(res)
    print(line)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
