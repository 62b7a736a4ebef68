"""diffpolicy-imagegen: train a class-conditional digit generator, or sample grids from one.

    diffpolicy-imagegen train imagegen=flow training.steps=400
    diffpolicy-imagegen train resume=true run_dir=runs/imagegen/flow_...        # continue an interrupted run
    diffpolicy-imagegen sample run_dir=runs/imagegen/flow_... sample.sampler=euler sample.steps=10 sample.guidance=2

``train``/``sample`` may also be given as ``mode=train``/``mode=sample``. Training uses the shared loop (safetensors
checkpoints under ``run_dir/checkpoints``, tensorboard logs under ``run_dir/tb``) and ends with a sample grid;
sampling reads the model from ``run_dir`` (or ``sample.checkpoint``) and writes a PNG with one row per class.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ..accel import tune_process
from ..imagegen.data import DigitBatches, load_digits_splits
from ..imagegen.grid import save_grid
from ..imagegen.model import ImageGenerator, build_generator, load_generator
from ..training.loop import TrainConfig, pick_device, train

MODES = ("train", "sample")


def write_grid(gen: ImageGenerator, scfg: dict, default_dir: Path, device: torch.device) -> Path:
    """Sample ``per_class`` images of each class in ``scfg['classes']`` (all by default) and save them as a grid."""
    classes = scfg.get("classes")
    classes = list(range(gen.num_classes)) if classes is None else [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < gen.num_classes]
    if bad or not classes:
        raise ValueError(f"sample.classes {classes}: expected a non-empty list of class ids "
                         f"in 0..{gen.num_classes - 1}")
    per_class = int(scfg["per_class"])
    if per_class < 1:
        raise ValueError(f"sample.per_class must be >= 1, got {per_class}")
    labels = torch.tensor(classes, dtype=torch.int64).repeat_interleave(per_class)
    g = torch.Generator(device=device).manual_seed(int(scfg["seed"]))
    images = gen.generate(labels, sampler=scfg["sampler"], steps=int(scfg["steps"]),
                          guidance=float(scfg["guidance"]), generator=g)
    name = f"{scfg['sampler']}_{int(scfg['steps'])}steps_g{float(scfg['guidance']):g}.png"
    return save_grid(images, len(classes), scfg.get("out") or default_dir / "samples" / name)


def run_train(cfg: dict) -> Path:
    run_dir = Path(cfg["run_dir"])
    device = pick_device(cfg.get("device", "auto"))
    print(f"run directory: {run_dir.resolve()}")
    data_cfg = cfg["data"]
    train_split, _ = load_digits_splits(int(data_cfg["image_size"]), float(data_cfg["held_out"]),
                                        int(data_cfg["split_seed"]))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(cfg["training"]) - fields)
    if unknown:
        raise ValueError(f"training: unknown keys {unknown}; expected some of {sorted(fields)}")
    tcfg = TrainConfig(**cfg["training"])
    torch.manual_seed(tcfg.seed)  # the network's initial weights
    gen = build_generator(cfg)
    print(f"image generator ({cfg['objective']['type']}): {sum(p.numel() for p in gen.parameters()) / 1e6:.2f}M "
          f"parameters; {len(train_split)} training images of {tuple(train_split.images.shape[1:])}")
    ema = train(gen, DigitBatches(train_split, tcfg.batch_size, device), tcfg, run_dir, cfg,
                resume=bool(cfg.get("resume")), device=device)
    model = ema.model if cfg["sample"].get("use_ema", True) else gen
    grid = write_grid(model.eval(), cfg["sample"], run_dir, device)
    print(f"wrote checkpoints to {(run_dir / 'checkpoints').resolve()}, tensorboard logs to "
          f"{(run_dir / 'tb').resolve()} and a sample grid to {grid.resolve()}")
    return grid


def run_sample(cfg: dict) -> Path:
    scfg = cfg["sample"]
    source = scfg.get("checkpoint") or cfg["run_dir"]
    device = pick_device(cfg.get("device", "auto"))
    gen, _, ckpt = load_generator(source, use_ema=bool(scfg.get("use_ema", True)), device=device)
    print(f"loaded {'EMA ' if scfg.get('use_ema', True) else ''}weights from {ckpt.resolve()}")
    grid = write_grid(gen, scfg, Path(cfg["run_dir"]), device)
    print(f"wrote a sample grid to {grid.resolve()}")
    return grid


def run(cfg: dict) -> Path:
    mode = cfg.get("mode")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    return run_train(cfg) if mode == "train" else run_sample(cfg)


@hydra.main(config_path="pkg://diffpolicy.configs", config_name="imagegen", version_base=None)
def _main(cfg: DictConfig) -> None:
    run(OmegaConf.to_container(cfg, resolve=True))


def main() -> None:
    # Accept `diffpolicy-imagegen train ...` as well as hydra's `mode=train` (hydra rejects bare words).
    if len(sys.argv) > 1 and sys.argv[1] in MODES:
        sys.argv[1] = f"mode={sys.argv[1]}"
    tune_process()  # before any tensor work: MKL reads its mode at its first call
    _main()


if __name__ == "__main__":
    main()
