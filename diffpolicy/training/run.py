"""A training run from its config (``diffpolicy-train``): dataset, policy, batches, the loop, evaluation.

``run(cfg)`` takes the composed config as a plain dict (``task``, ``policy``, ``training``, ``reflow``, ``distill``,
``run_dir``, ``resume``, ``device``, ``accel``) and wires the pieces: the task's dataset (collected with its scripted
expert when missing), the normaliser fitted on it, the policy (a reflow or distillation student copies its teacher,
unless ``distill.student`` gives a regression student networks of its own), step batches, periodic validation loss and
rollouts, the shared loop, and the final evaluation. Outputs (checkpoints, tensorboard logs, evaluation JSON, videos,
summary PNG) go to ``run_dir``, printed at start and end.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from ..accel import accelerate
from ..core.objectives import ConsistencyDistillation, OneStepRegression, make_objective
from ..core.samplers import check_steps, get_sampler
from ..data.cache import DEFAULT_CACHE_BYTES, DEFAULT_MEMORY_BUDGET, ChunkCachedArray
from ..data.collect import collect_dataset
from ..data.dataset import WindowDataset
from ..data.errors import DatasetError
from ..data.obs import ObsSpec
from ..data.tasks import SuccessSignal, import_task_modules
from ..eval.rollout import evaluate, save_summary
from ..policy.checkpoint import resolve_checkpoint
from ..policy.factory import architecture_differences, build_policy, load_policy, merge_config
from .batches import StepBatches
from .loop import TrainConfig, distributed_context, pick_device, train
from .onpolicy import onpolicy_rounds
from .reflow import CouplingBatches, make_couplings, merge_couplings


def check_config(task: dict, pcfg: dict) -> None:
    """The config's own checks, before any data is read or collected: observation spec, success signal, the env's
    modules, and the policy's objective and sampler."""
    ObsSpec.from_task(task)
    SuccessSignal.from_task(task)
    import_task_modules(task)
    if pcfg.get("type") == "diffusion":
        make_objective(pcfg["objective"])
        get_sampler(pcfg["sampler"])
        check_steps(pcfg["steps"])


# What a regression student may not change: the chunk geometry and objective its teacher's samples are made for.
STUDENT_FIXED = ("type", "horizon", "n_obs_steps", "n_action_steps", "objective")


def student_config(teacher: dict, overrides: dict | None, regression: bool) -> dict:
    """The student's policy config: the teacher's, with ``distill.student``'s ``overrides`` (e.g. ``{"unet":
    {"down_dims": [64, 128, 256]}}`` or another ``denoiser``) merged in. Only a regression student may differ from
    its teacher, and only in its networks: consistency distillation evaluates the teacher's net on the student's
    observation features and starts from the teacher's weights."""
    if not overrides:
        return teacher
    if not regression:
        raise ValueError("distill.student sets the student's networks, which only distill.method=regression allows: "
                         "a consistency student is the teacher's architecture (it starts from its weights and the "
                         "teacher's net reads its observation features)")
    if not isinstance(overrides, dict):
        raise ValueError(f"distill.student must be a mapping of policy-config overrides such as "
                         f"{{unet: {{down_dims: [64, 128, 256]}}}}, got {overrides!r}")
    fixed = sorted(k for k in overrides if k in STUDENT_FIXED)
    if fixed:
        raise ValueError(f"distill.student may not set {fixed}: the teacher's samples are chunks of its own geometry "
                         f"and objective ({', '.join(STUDENT_FIXED)} stay the teacher's)")
    return merge_config(teacher, overrides)


def ensure_dataset(task: dict) -> str:
    """The task's dataset path. A missing dataset is collected with the task's scripted expert only when it is the
    task's own default (``task.default_dataset``, set by the built-in tasks); any other missing path is an error, so
    a mistyped path never starts a collection."""
    path = Path(task["dataset"])
    if path.exists():
        return str(path)
    default = task.get("default_dataset")
    if default is None or Path(default) != path:
        why = (f"only the task's own default dataset ({default}) is collected when missing" if default else
               "the task has no default dataset to collect")
        raise FileNotFoundError(f"dataset {path} of task {task.get('name')!r} does not exist ({why}); check the path, "
                                f"or collect demos into it: diffpolicy-collect task=... out={path}")
    print(f"dataset {path} not found: collecting {task['n_demos']} demos of {task['env_id']} with its expert")
    collect_dataset(task, n_episodes=task["n_demos"], out=str(path))
    return str(path)


def check_episode_lengths(data: WindowDataset) -> None:
    """Every episode holds at least one training window. With Diffusion Policy's padding (the first observation
    repeated ``n_obs_steps - 1`` times before an episode, the last action ``n_action_steps - 1`` times after it) an
    episode needs ``horizon - (n_obs_steps - 1) - (n_action_steps - 1)`` steps; a shorter one would be skipped
    silently, so it is an error naming the episodes."""
    spec, lengths = data.spec, data.buffer.episode_lengths
    need = spec.horizon - spec.pad_before - spec.pad_after
    short = np.flatnonzero(lengths < need)
    if len(short):
        shown = ", ".join(f"{i} ({lengths[i]} steps)" for i in short[:5]) + (" ..." if len(short) > 5 else "")
        raise DatasetError(data.buffer.path, "meta/episode_ends",
                           f"{len(short)} of {len(lengths)} episodes are shorter than the {need} steps a training "
                           f"window needs (horizon {spec.horizon}, n_obs_steps {spec.n_obs_steps}, n_action_steps "
                           f"{spec.n_action_steps}, padded as Diffusion Policy pads): episodes {shown}. Drop them "
                           "(diffpolicy-dataset subset) or choose a shorter horizon.")


# What ``resume=true`` may change in a run's saved config: how long it trains and how it reports, not what it is.
RESUME_OVERRIDES = ("training.steps", "training.eval.", "training.log_every", "training.checkpoint_every",
                    "training.num_workers", "device", "accel", "resume", "run_dir")


def resume_config(run_dir: str | Path, overrides: list[str] = ()) -> dict:
    """The saved config of the run in ``run_dir`` (its ``config.yaml``, or its latest checkpoint's), with the
    command line's ``key=value`` ``overrides`` applied where :data:`RESUME_OVERRIDES` allows; any other override is
    refused, since it would silently change the run being continued."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        ckpts = run_dir / "checkpoints"
        saved = resolve_checkpoint(ckpts) / "config.yaml" if (ckpts / "latest").is_file() else saved
    if not saved.is_file():
        why = "does not exist" if not run_dir.exists() else "has no config.yaml and no checkpoint"
        raise FileNotFoundError(f"resume=true: run directory {run_dir} {why}; give the directory of an existing run "
                                "(the one diffpolicy-train printed)")
    cfg = yaml.safe_load(saved.read_text())
    for arg in overrides:
        key, _, value = arg.lstrip("+~").partition("=")
        if not key.startswith(RESUME_OVERRIDES):
            raise ValueError(f"resume=true continues {run_dir} with its saved config ({saved}); the override {arg!r} "
                             f"would change that run. Only {', '.join(RESUME_OVERRIDES)}... may be given on resume; "
                             "start a new run (another run_dir) to change anything else")
        node, *path = key.split(".")
        target = cfg
        for part in [node, *path][:-1]:
            target = target.setdefault(part, {})
        target[[node, *path][-1]] = yaml.safe_load(value)
    return {**cfg, "resume": True, "run_dir": str(run_dir)}


def run(cfg: dict, overrides: list[str] | None = None) -> dict:
    """Train, checkpoint and evaluate per ``cfg``. With ``cfg["resume"]`` the run in ``cfg["run_dir"]`` continues
    with its own saved config (``overrides``: the command line's, checked by :func:`resume_config`); otherwise
    ``run_dir`` must not exist or be empty."""
    if cfg.get("resume"):
        cfg = resume_config(cfg["run_dir"], overrides or [])
    elif Path(cfg["run_dir"]).is_dir() and any(Path(cfg["run_dir"]).iterdir()):
        raise FileExistsError(f"run directory {cfg['run_dir']} is not empty: continue that run with resume=true, or "
                              "give a new run_dir")
    rank, _ = distributed_context()
    task, pcfg, tcfg = cfg["task"], cfg["policy"], dict(cfg["training"])
    run_dir = Path(cfg["run_dir"])
    device = pick_device(cfg.get("device", "auto"))
    check_config(task, pcfg)
    dataset_path = ensure_dataset(task) if rank == 0 else task["dataset"]
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # other ranks wait for rank 0's collection
    reflow, distill = cfg.get("reflow") or {}, cfg.get("distill") or {}
    if reflow.get("teacher") and distill.get("teacher"):
        raise ValueError("reflow.teacher and distill.teacher are both set: a run either reflows or distils")
    teacher, mode = None, "reflow" if reflow.get("teacher") else "distill" if distill.get("teacher") else None
    method = distill.get("method", "consistency")
    if mode == "distill" and method not in ("consistency", "regression"):
        raise ValueError(f"distill.method must be consistency or regression, got {method!r}")
    regression = mode == "distill" and method == "regression"  # one-step regression onto the teacher's samples
    if mode:  # the student is a copy of the teacher: its normaliser, and its architecture unless distill.student
        source = (reflow if mode == "reflow" else distill)["teacher"]
        teacher, tconfig = load_policy(source, use_ema=True, device=device)
        if tconfig["task"]["env_id"] != task["env_id"]:
            raise ValueError(f"{mode} teacher {source} was trained on {tconfig['task']['env_id']!r}, "
                             f"not on this run's task {task['env_id']!r}")
        pcfg = tconfig["policy"]
        if mode == "distill":  # the student samples in distill.sample_steps (default one) Euler steps
            pcfg = {**student_config(pcfg, distill.get("student"), regression),
                    "sampler": "euler", "steps": int(distill.get("sample_steps", 1))}
    geometry = dict(horizon=pcfg["horizon"], n_obs_steps=pcfg["n_obs_steps"], n_action_steps=pcfg["n_action_steps"])
    data = WindowDataset(dataset_path, task["obs_keys"], task.get("action_key", "action"), split="train",
                         val_ratio=tcfg.pop("val_ratio", 0.0), seed=tcfg["seed"],
                         max_train_episodes=tcfg.pop("max_train_episodes", None),
                         crop_shape=task.get("crop_shape"), obs_spec=task.get("obs_spec"),
                         memory_budget=int(tcfg.pop("memory_budget_mib", DEFAULT_MEMORY_BUDGET >> 20)) << 20,
                         cache_bytes=int(tcfg.pop("cache_mib", DEFAULT_CACHE_BYTES >> 20)) << 20, **geometry)
    check_episode_lengths(data)
    lowdim = [k for k in task["obs_keys"] if k not in data.image_keys]
    normalizer = teacher.normalizer if teacher else data.normalizer({k: "minmax" for k in [*lowdim, data.action_key]})
    probe = data.sample_batch([0], seed=0)
    shapes = {"obs": {k: list(v.shape[2:]) for k, v in probe["obs"].items()}, "action_dim": probe["action"].shape[-1]}
    policy = build_policy(pcfg, normalizer, shapes["obs"], data.image_keys, shapes["action_dim"])
    if teacher:  # the student starts from the teacher (if it has its architecture), or from distill.init
        own = architecture_differences(pcfg, tconfig["policy"])  # set by distill.student
        start = None if own else teacher
        if mode == "distill" and distill.get("init"):
            start, icfg = load_policy(distill["init"], use_ema=True, device=device)
            differ = architecture_differences(icfg["policy"], pcfg)
            if differ:
                raise ValueError(f"distill.init {distill['init']} is not a policy of the student's architecture and "
                                 f"objective: its policy config differs from the student's in {differ}")
        if start is not None:
            policy.load_state_dict(start.state_dict())
        elif rank == 0:
            print(f"distill.student: the student ({pcfg['name']}) differs from the teacher in {own}; it starts from "
                  "fresh weights")
    if cfg.get("accel", True):  # CPU convolution paths and trunk layout: same outputs, faster steps (accel/)
        accelerate(policy)
        if teacher:
            accelerate(teacher)
    config = {**cfg, "policy": pcfg, "task": {**task, "image_keys": list(data.image_keys)}, "shapes": shapes}
    eval_cfg = tcfg.pop("eval", {})
    num_workers = tcfg.pop("num_workers", 0)
    chunk_local = tcfg.pop("chunk_local", "auto")
    if chunk_local not in ("auto", True, False):
        raise ValueError(f"training.chunk_local must be auto, true or false; got {chunk_local!r}")
    chunk_local = None if chunk_local == "auto" else chunk_local
    train_cfg = TrainConfig(**{k: v for k, v in tcfg.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    if rank == 0:  # everything is checked: the run directory is made now, with the run's resolved config
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"run directory: {run_dir.resolve()}")
        n_params = sum(p.numel() for p in policy.parameters())
        print(f"policy {pcfg['name']}: {n_params / 1e6:.2f}M parameters; {data.buffer.n_episodes} episodes, "
              f"{len(data)} training windows")

    if mode == "distill":  # the teacher's grid: its samples for regression, the consistency chain otherwise
        plan = teacher.sampling_plan(distill.get("sampler", "euler") if regression else "euler",
                                     distill.get("grid_steps", 16), shift=distill.get("shift"))
    if regression:  # the teacher's samples are drawn once (reflow's couplings)
        couplings = make_couplings(teacher, data, plan, distill.get("copies", 8), seed=train_cfg.seed, device=device)
        if distill.get("shifted_copies", 0):  # and pairs on states near the demonstrations'
            couplings = merge_couplings(couplings, make_couplings(
                teacher, data, plan, int(distill["shifted_copies"]), seed=train_cfg.seed + 1, device=device,
                state_noise=float(distill.get("state_noise", 0.05))))
        policy.objective = OneStepRegression(policy.objective, plan.schedule)
        batch_fn = CouplingBatches(couplings, train_cfg.batch_size, train_cfg.seed, device, rank)
    elif mode == "distill":
        policy.objective = ConsistencyDistillation(policy.objective, teacher.net.eval().requires_grad_(False),
                                                   plan.schedule, distill.get("teacher_steps", 1))
        # the teacher's net reads the student's observation features: they stay the teacher's (encoder frozen)
        policy.encoder.requires_grad_(False)
        batch_fn = StepBatches(data, train_cfg.batch_size, train_cfg.seed, num_workers, device, rank, chunk_local)
    elif teacher:
        plan = teacher.sampling_plan(reflow.get("sampler", "euler"), reflow.get("steps", 16), shift=reflow.get("shift"))
        couplings = make_couplings(teacher, data, plan, reflow.get("copies", 2), seed=train_cfg.seed, device=device)
        del teacher
        batch_fn = CouplingBatches(couplings, train_cfg.batch_size, train_cfg.seed, device, rank)
    else:
        batch_fn = StepBatches(data, train_cfg.batch_size, train_cfg.seed, num_workers, device, rank, chunk_local)
    local = getattr(batch_fn, "local", None)
    if rank == 0 and local is not None:
        cached = [k for k, a in data.arrays.items() if isinstance(a, ChunkCachedArray)]
        print(f"data: {', '.join(cached)} read through a chunk cache (over training.memory_budget_mib); each batch "
              f"is drawn from {len(local.pool(0))} of {local.n_groups} chunks at a time (training.chunk_local)")
    # one-step regression has targets (the teacher's samples) only for training windows: no validation loss
    val = data.validation() if data.val_mask.any() and not regression else None

    def validate(model) -> float:
        with torch.no_grad():
            losses = []
            for i in range(4):
                g = torch.Generator(device=device).manual_seed(10_000 + i)
                b = val.sample_batch(torch.randint(0, len(val), (64,), generator=g, device=device).cpu().numpy(), seed=i)
                b = {"obs": {k: v.to(device) for k, v in b["obs"].items()}, "action": b["action"].to(device)}
                losses.append(float(model(b, g)))
            return sum(losses) / len(losses)

    def rollouts(model, step: int, video_episodes: int = 0, out: Path | None = None) -> dict:
        return evaluate(model, config["task"], n_episodes=eval_cfg.get("n_episodes", 50),
                        n_envs=eval_cfg.get("n_envs", 10), video_episodes=video_episodes,
                        video_dir=out, device=device)

    def periodic_eval(model, step: int, train_seconds: float) -> dict:
        """Rollouts during training, appended to eval_history.jsonl with the loop's training wall time."""
        s = rollouts(model, step)
        row = {"step": step, "train_seconds": round(train_seconds, 3), "success_rate": s["success_rate"],
               "mean_max_reward": s["mean_max_reward"]}
        with open(run_dir / "eval_history.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        return {k: row[k] for k in ("success_rate", "mean_max_reward")}

    n_eval = eval_cfg.get("n_episodes", 50)
    ema = train(policy, batch_fn, train_cfg, run_dir, config, resume=bool(cfg.get("resume")),
                evaluate=periodic_eval if train_cfg.eval_every and n_eval > 0 else None,
                validate=validate if val else None, device=device)
    rounds = int(distill.get("onpolicy_rounds", 0)) if regression else 0
    round_steps = int(distill.get("onpolicy_steps", train_cfg.steps))
    if rounds > 0:  # DAgger: the teacher labels the states the student visits, the student trains on them too
        ema = onpolicy_rounds(policy, ema, teacher, couplings, config["task"], plan, rounds, round_steps,
                              int(distill.get("onpolicy_episodes", 100)), int(distill.get("copies", 8)), train_cfg,
                              run_dir, config, resume=bool(cfg.get("resume")), device=device)
    if rank != 0:
        return {}
    if n_eval <= 0:
        print(f"training.eval.n_episodes=0: no final evaluation; wrote checkpoints and tensorboard logs to "
              f"{run_dir.resolve()}")
        return {}
    out = run_dir / "eval"
    final_step = train_cfg.steps + rounds * round_steps
    summary = rollouts(ema.model.eval(), final_step, eval_cfg.get("video_episodes", 0), out / "videos")
    save_summary(summary, out, f"{task['env_id']} {pcfg['name']} (step {final_step})")
    print(f"wrote checkpoints, tensorboard logs and evaluation to {run_dir.resolve()}")
    return summary
