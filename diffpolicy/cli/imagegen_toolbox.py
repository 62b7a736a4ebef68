"""diffpolicy-imagegen's shared training preamble and its toolbox modes: a noise-conditional classifier for
guidance, and likelihoods.

    diffpolicy-imagegen classifier imagegen=flow run_dir=runs/imagegen/flow_classifier
    diffpolicy-imagegen sample run_dir=runs/imagegen/flow_... sample.classifier=runs/imagegen/flow_classifier \\
        sample.classifier_scale=2 sample.guidance=0
    diffpolicy-imagegen likelihood run_dir=runs/imagegen/flow_... likelihood.method=ode
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

import torch

from ..core.ema import EMA
from ..imagegen.classifier import build_classifier
from ..imagegen.data import DigitBatches, DigitsSplit, load_digits_splits
from ..imagegen.model import load_generator
from ..training.loop import TrainConfig, pick_device, train

# flow times at which the classifier's held-out accuracy is reported (0 = clean, 1 = pure noise)
REPORT_TAUS = (0.0, 0.25, 0.5, 0.75, 0.9)


@dataclasses.dataclass
class DigitsRun:
    """What a training mode of the image CLI has after :func:`train_on_digits`."""

    module: torch.nn.Module  # the trained module (its last weights)
    ema: EMA
    train: DigitsSplit
    held_out: DigitsSplit
    device: torch.device
    run_dir: Path
    config: TrainConfig


def train_on_digits(cfg: dict, build: Callable[[], torch.nn.Module], section: dict | None = None,
                    describe: Callable[[torch.nn.Module], str] = lambda m: type(m).__name__) -> DigitsRun:
    """The shared part of the image CLI's training modes: the run directory, the digits splits, the training config
    (``training``, overridden by ``section["training"]``; unknown keys named), the seed, ``build()`` and the shared
    loop (checkpoints under ``run_dir/checkpoints``; ``resume=true`` continues)."""
    run_dir = Path(cfg["run_dir"])
    device = pick_device(cfg.get("device", "auto"))
    print(f"run directory: {run_dir.resolve()}")
    data_cfg = cfg["data"]
    train_split, held = load_digits_splits(int(data_cfg["image_size"]), float(data_cfg["held_out"]),
                                           int(data_cfg["split_seed"]))
    tdict = {**cfg["training"], **((section or {}).get("training") or {})}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(tdict) - fields)
    if unknown:
        raise ValueError(f"training: unknown keys {unknown}; expected some of {sorted(fields)}")
    tcfg = TrainConfig(**tdict)
    torch.manual_seed(tcfg.seed)  # the network's initial weights
    module = build()
    print(f"{describe(module)}: {sum(p.numel() for p in module.parameters()) / 1e6:.2f}M parameters; "
          f"{len(train_split)} training images of {tuple(train_split.images.shape[1:])}")
    ema = train(module, DigitBatches(train_split, tcfg.batch_size, device), tcfg, run_dir, cfg,
                resume=bool(cfg.get("resume")), device=device)
    return DigitsRun(module, ema, train_split, held, device, run_dir, tcfg)


@torch.no_grad()
def noisy_accuracy(clf, images: torch.Tensor, labels: torch.Tensor, tau: float, seed: int = 0) -> float:
    """Accuracy of ``clf`` on ``images`` noised to flow time ``tau`` of its objective's path (seeded noise)."""
    alpha, sigma, model_time = clf.objective.level(torch.tensor(tau, dtype=torch.float64))
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(images)
    x = float(alpha) * images + float(sigma) * noise
    pred = clf.logits(x, model_time.to(images.dtype).reshape(1)).argmax(1)
    return float((pred == labels).float().mean())


def run_classifier(cfg: dict) -> Path:
    """Train a noise-conditional classifier on the objective's path (``classifier`` section), report its held-out
    accuracy at several noise levels, and return its run directory."""
    cfg["kind"] = "noisy_classifier"  # what load_classifier checks in the saved config
    run = train_on_digits(cfg, lambda: build_classifier(cfg), cfg["classifier"],
                          lambda m: f"noise-conditional classifier ({cfg['objective']['type']} path)")
    model, run_dir, held, device = run.ema.model.eval(), run.run_dir, run.held_out, run.device
    images, labels = held.images.to(device), held.labels.to(device)
    acc = {f"{tau:g}": noisy_accuracy(model, images, labels, tau) for tau in REPORT_TAUS}
    (run_dir / "accuracy.json").write_text(json.dumps({"held_out_accuracy_by_flow_time": acc}, indent=1))
    print("held-out accuracy by flow time (0 clean, 1 noise): " + ", ".join(f"{k}: {v:.3f}" for k, v in acc.items()))
    print(f"wrote the classifier's checkpoints to {(run_dir / 'checkpoints').resolve()} and its accuracies to "
          f"{(run_dir / 'accuracy.json').resolve()}")
    return run_dir


def run_likelihood(cfg: dict) -> Path:
    """Bits per dimension of the held-out digits under a trained generator (``likelihood`` section); writes a JSON
    beside the run and returns its path."""
    lcfg = cfg["likelihood"]
    device = pick_device(cfg.get("device", "auto"))
    gen, gen_cfg, ckpt = load_generator(lcfg.get("checkpoint") or cfg["run_dir"], device=device)
    data_cfg = gen_cfg["data"]
    _, held = load_digits_splits(int(data_cfg["image_size"]), float(data_cfg["held_out"]),
                                 int(data_cfg["split_seed"]))
    n = len(held) if lcfg.get("n") is None else min(int(lcfg["n"]), len(held))
    labels = held.labels[:n] if lcfg.get("conditional", True) else None
    method, steps = lcfg["method"], lcfg.get("steps")
    g = torch.Generator(device=device).manual_seed(int(lcfg.get("seed", 0)))
    print(f"{method} likelihood of {n} held-out digits under {ckpt.resolve()} "
          f"({'class-conditional' if labels is not None else 'unconditional'})")
    bpd = gen.bits_per_dim(held.images[:n], labels, method=method, steps=steps, trace=lcfg.get("trace", "hutchinson"),
                           probes=int(lcfg.get("probes", 1)), generator=g, batch_size=int(lcfg.get("batch_size", 200)))
    mean, stderr = float(bpd.mean()), float(bpd.std()) / math.sqrt(max(n - 1, 1))
    result = {"checkpoint": str(ckpt), "method": method, "steps": steps, "trace": lcfg.get("trace"),
              "probes": lcfg.get("probes"), "conditional": labels is not None, "n": n,
              "bits_per_dim": mean, "stderr": stderr}
    tag = f"{method}{'' if steps is None else f'_{steps}'}{'' if labels is not None else '_uncond'}"
    out = Path(lcfg.get("out") or Path(cfg["run_dir"]) / f"likelihood_{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"bits per dimension: {mean:.4f} +- {stderr:.4f} (stderr over images)")
    print(f"wrote {out.resolve()}")
    return out
