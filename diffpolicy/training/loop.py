"""The training loop shared by policies and image models.

A trainable module's ``forward(batch, generator) -> loss`` returns its scalar training loss (so DDP's gradient
hooks see the call); ``batch_fn(step, generator) -> batch`` produces the batch of a step. All randomness of a
step (which samples, augmentation, noise, diffusion times) comes from a generator seeded by ``(seed, step, rank)``,
so a resumed run repeats an uninterrupted one exactly, whatever the worker or process layout.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..core.ema import EMA
from ..nets.encoders import place_for_device
from ..policy.checkpoint import (
    load_tensors,
    load_train_state,
    remove_stale_temporaries,
    resolve_checkpoint,
    save_checkpoint,
)


@dataclass
class TrainConfig:
    steps: int = 5000
    batch_size: int = 256  # per process; the global batch is batch_size x world size
    lr: float = 1e-4  # for the global batch; not rescaled with the world size
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.95, 0.999)
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2  # newest checkpoints kept on disk; 0 keeps all (to evaluate a run at several budgets)
    log_every: int = 50
    eval_every: int = 0  # 0: evaluate only at the end (if an evaluate callback is given)
    seed: int = 0
    encoder_lr_scale: float = 1.0  # the observation encoder's lr as a multiple of ``lr`` (parameters under encoder.)
    bf16: bool = True  # bf16 autocast of the forward pass on CUDA
    bf16_cpu: bool | str = False  # the same on a CPU with native bf16 (AVX512-BF16 / AMX); "auto": where there is


def step_generator(seed: int, step: int, device: torch.device, rank: int = 0) -> torch.Generator:
    """The generator of one training step: a pure function of ``(seed, step, rank)``."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) * 1009 + rank)
    return g


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int):
    """Linear warm-up to the base lr over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """bf16 autocast of the forward pass per ``cfg.bf16`` (CUDA) / ``cfg.bf16_cpu`` (CPU; weights, optimizer and
    EMA stay float32). A CPU without native bf16 would emulate it, slower than float32: ``"auto"`` then trains in
    float32, ``True`` is an error."""
    if cfg.bf16_cpu not in (True, False, "auto"):
        raise ValueError(f"training.bf16_cpu must be true, false or auto, got {cfg.bf16_cpu!r}")
    native = device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if device.type == "cpu" and cfg.bf16_cpu is True and not native:
        raise ValueError("training.bf16_cpu=true, but this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 would "
                         "be emulated and slower than float32; set training.bf16_cpu=auto or false")
    enabled = cfg.bf16 if device.type == "cuda" else bool(cfg.bf16_cpu) and native
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def pick_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``"auto"``: CUDA when present, else the CPU. A CUDA device without an index is this process's GPU: the
    ``LOCAL_RANK`` that torchrun sets (``local_rank`` overrides it), so each rank of a node has its own."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank)
    return device


def distributed_context() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def train(model: nn.Module, batch_fn: Callable[[int, torch.Generator], Any], cfg: TrainConfig, run_dir: str | Path,
          config: Mapping[str, Any], resume: bool = False,
          evaluate: Callable[[nn.Module, int, float], Mapping[str, float]] | None = None,
          validate: Callable[[nn.Module], float] | None = None, device: torch.device | None = None) -> EMA:
    """Train ``model`` for ``cfg.steps`` steps, checkpointing under ``run_dir/checkpoints``; returns the EMA.

    ``evaluate(ema_model, step, train_seconds)`` (e.g. rollouts) and ``validate(ema_model)`` (validation loss) run on
    rank 0 every ``cfg.eval_every`` / ``cfg.log_every * 10`` steps and at the end; their numbers go to tensorboard.
    ``train_seconds`` is the run's training wall time so far (callbacks excluded, earlier processes of a resumed run
    included): the same clock the checkpoints record.
    """
    rank, world = distributed_context()
    device = device or pick_device()
    run_dir = Path(run_dir)
    place_for_device(model, device)  # on CUDA camera encoders go channels-last
    ema = EMA(model, power=cfg.ema_power, max_decay=cfg.ema_max_decay)
    # parameter groups: (weight decay, own encoder lr) -> parameters; the encoder has a group of its own only when
    # its lr differs, so a default run's optimizer state keeps the two groups (decay, no decay) in that order
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        decays = p.ndim >= 2 and "norm" not in name.lower()
        encoder = cfg.encoder_lr_scale != 1.0 and name.removeprefix("module.").startswith("encoder.")
        groups.setdefault((decays, encoder), []).append(p)
    order = [(True, False), (False, False), (True, True), (False, True)]
    # fused: one kernel for the whole update on CPU and CUDA (results/core.md run F: a 1.30x faster training step
    # than the default AdamW at the large width, equal at the small one)
    opt = torch.optim.AdamW([{"params": groups[key], "weight_decay": cfg.weight_decay if key[0] else 0.0,
                              "lr": cfg.lr * (cfg.encoder_lr_scale if key[1] else 1.0)}
                             for key in order if key in groups], lr=cfg.lr, betas=tuple(cfg.betas), fused=True)
    sched = cosine_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    start, seconds_before = 0, 0.0  # steps and training seconds (evaluation excluded) of earlier processes
    ckpt_root = run_dir / "checkpoints"
    if rank == 0 and ckpt_root.is_dir():
        for p in remove_stale_temporaries(ckpt_root):
            print(f"removed {p} (left by an interrupted checkpoint save)")
    if resume and (ckpt_root / "latest").is_file():
        ckpt = resolve_checkpoint(ckpt_root)
        model.load_state_dict(load_tensors(ckpt, "model", device))
        ema.model.load_state_dict(load_tensors(ckpt, "ema", device))
        state = load_train_state(ckpt)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        ema.step, start = int(state["ema_step"]), int(state["step"])
        seconds_before = float(state.get("train_seconds", 0.0))
        torch.set_rng_state(state["torch_rng"])
        if rank == 0:
            print(f"resumed from {ckpt} at step {start}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    net = model
    if world > 1:  # one GPU per rank (device_ids), or CPU processes (gloo)
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = make_autocast(cfg, device)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops the events a killed run logged after its last checkpoint (no duplicates)
        writer = SummaryWriter(run_dir / "tb", purge_step=start if start else None)

    report_seconds = 0.0  # spent in evaluation / validation callbacks, not training

    def train_seconds() -> float:
        return seconds_before + time.perf_counter() - t0 - report_seconds

    def checkpoint(step: int) -> Path:
        return save_checkpoint(
            ckpt_root, step, {"model": model.state_dict(), "ema": ema.model.state_dict()}, config,
            {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "ema_step": ema.step,
             "torch_rng": torch.get_rng_state(), "train": asdict(cfg), "train_seconds": train_seconds()},
            keep=cfg.keep_checkpoints)

    def report(step: int) -> None:
        nonlocal report_seconds
        t_report = time.perf_counter()
        report_callbacks(step)
        report_seconds += time.perf_counter() - t_report

    def report_callbacks(step: int) -> None:
        if validate is not None:
            writer.add_scalar("val/loss", validate(ema.model), step)
        if evaluate is not None:
            for k, v in evaluate(ema.model, step, train_seconds()).items():
                writer.add_scalar(f"eval/{k}", v, step)

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=rank != 0, desc="train",
               dynamic_ncols=True)
    model.train()
    t0 = time.perf_counter()
    for step in bar:
        g = step_generator(cfg.seed, step, device, rank)
        batch = batch_fn(step, g)
        with autocast:
            loss = net(batch, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        value = loss.item()
        if not math.isfinite(value):
            last = ckpt_root / "latest"
            where = last.read_text().strip() if last.is_file() else "none yet"
            raise FloatingPointError(f"training loss is {value} at step {step}; stopped. The last good checkpoint "
                                     f"is {ckpt_root}/{where}; lower the learning rate or check the data.")
        opt.step()
        sched.step()
        ema.update(model)
        done = step + 1
        if rank == 0:
            if done % cfg.log_every == 0 or done == cfg.steps:
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
                writer.add_scalar("train/loss", value, done)
                writer.add_scalar("train/lr", sched.get_last_lr()[0], done)
                writer.add_scalar("train/grad_norm", float(grad_norm), done)
                writer.add_scalar("train/steps_per_s", (done - start) / (time.perf_counter() - t0), done)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint(done)
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
                ema.model.eval()
                report(done)
    if writer is not None:
        writer.close()
    if world > 1:
        dist.barrier()
    return ema
