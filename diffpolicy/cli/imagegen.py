"""diffpolicy-imagegen: train a class-conditional digit generator, or sample grids from one.

    diffpolicy-imagegen train imagegen=flow training.steps=400
    diffpolicy-imagegen train resume=true run_dir=runs/imagegen/flow_...        # continue an interrupted run
    diffpolicy-imagegen sample run_dir=runs/imagegen/flow_... sample.sampler=euler sample.steps=10 sample.guidance=2
    diffpolicy-imagegen autoencoder run_dir=runs/imagegen/autoencoder             # the latent space's autoencoder
    diffpolicy-imagegen train imagegen=latent_flow latent.autoencoder=runs/imagegen/autoencoder
    diffpolicy-imagegen classifier imagegen=flow run_dir=runs/imagegen/flow_classifier   # for classifier guidance
    diffpolicy-imagegen sample run_dir=runs/imagegen/flow_... sample.classifier=runs/imagegen/flow_classifier \
        sample.classifier_scale=2 sample.corrector_steps=1                    # guided, predictor-corrector
    diffpolicy-imagegen likelihood run_dir=runs/imagegen/flow_... likelihood.method=ode   # bits/dim, held-out

``train``/``sample`` may also be given as ``mode=train``/``mode=sample``. Training uses the shared loop (safetensors
checkpoints under ``run_dir/checkpoints``, tensorboard logs under ``run_dir/tb``) and ends with a sample grid;
sampling reads the model from ``run_dir`` (or ``sample.checkpoint``) and writes a PNG with one row per class.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ..accel import tune_process
from ..core.samplers import Langevin
from ..imagegen.autoencoder import build_autoencoder
from ..imagegen.classifier import load_classifier
from ..imagegen.grid import save_grid
from ..imagegen.model import ImageGenerator, build_generator, load_generator
from ..policy.checkpoint import load_train_state, resolve_checkpoint, save_checkpoint
from ..training.loop import pick_device
from .imagegen_toolbox import run_classifier, run_likelihood, train_on_digits

MODES = ("train", "sample", "autoencoder", "classifier", "likelihood")


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
    corrector_steps, scale = int(scfg.get("corrector_steps") or 0), float(scfg.get("classifier_scale") or 0.0)
    corrector = Langevin(float(scfg.get("snr", 0.16)), corrector_steps) if corrector_steps else None
    if scale and not scfg.get("classifier"):
        raise ValueError(f"sample.classifier_scale={scale} needs sample.classifier=<a run of "
                         f"`diffpolicy-imagegen classifier`>")
    classifier = load_classifier(scfg["classifier"], device) if scale else None
    extra = {} if corrector is None else {"corrector": corrector}
    images = gen.generate(labels, sampler=scfg["sampler"], steps=int(scfg["steps"]),
                          guidance=float(scfg["guidance"]), generator=g, classifier=classifier,
                          classifier_scale=scale, **extra)
    name = (f"{scfg['sampler']}_{int(scfg['steps'])}steps_g{float(scfg['guidance']):g}"
            f"{f'_c{corrector_steps}snr{corrector.snr:g}' if corrector else ''}{f'_cls{scale:g}' if scale else ''}.png")
    return save_grid(images, len(classes), scfg.get("out") or default_dir / "samples" / name)


def run_train(cfg: dict) -> Path:
    run = train_on_digits(cfg, lambda: build_generator(cfg), None,
                          lambda m: f"image generator ({cfg['objective']['type']})")
    gen, ema, run_dir, device = run.module, run.ema, run.run_dir, run.device
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


def run_autoencoder(cfg: dict) -> Path:
    """Train the autoencoder of the latent space (``autoencoder`` section) with the shared loop, fit its scaling
    factor on the training images (EMA weights), re-save the last checkpoint with it, and write a PNG of held-out
    originals (one row per class) above their reconstructions. Returns the PNG path."""
    data_cfg, acfg = cfg["data"], cfg["autoencoder"]
    size = int(data_cfg["image_size"])
    model_cfg = {"image_size": size, "channels": 1, **acfg["model"]}
    if int(model_cfg["image_size"]) != size:
        raise ValueError(f"autoencoder.model.image_size {model_cfg['image_size']} != data.image_size {size}")
    acfg["model"] = model_cfg  # saved with the checkpoint: load_autoencoder rebuilds from it alone
    run = train_on_digits(cfg, lambda: build_autoencoder(model_cfg), acfg,
                          lambda m: f"autoencoder (latents {m.latent_shape})")
    ae, ema, run_dir, device, train_split, held = run.module, run.ema, run.run_dir, run.device, run.train, run.held_out
    model = ema.model.eval()
    scale = model.fit_scaling_factor(train_split.images.to(device))
    ae.scaling_factor.copy_(model.scaling_factor)
    ckpt = resolve_checkpoint(run_dir)
    state = load_train_state(ckpt)
    ckpt = save_checkpoint(run_dir / "checkpoints", int(state["step"]),
                           {"model": ae.state_dict(), "ema": model.state_dict()}, cfg, state,
                           keep=run.config.keep_checkpoints)
    with torch.no_grad():
        images = held.images.to(device)
        recon = model.reconstruct(images)
        latents = model.encode(images)
    l1, mse = float((recon - images).abs().mean()), float((recon - images).square().mean())
    per_class = min(int(acfg.get("per_class", 8)), int(torch.bincount(held.labels).min()))
    idx = torch.cat([torch.nonzero(held.labels == c)[:per_class, 0] for c in range(int(data_cfg["num_classes"]))])
    rows = torch.stack([images[idx].view(-1, per_class, 1, size, size), recon[idx].view(-1, per_class, 1, size, size)],
                       1)  # (classes, 2, per_class, 1, H, W): each class's originals, then their reconstructions
    grid = save_grid(rows.flatten(0, 2), 2 * rows.shape[0], run_dir / "reconstructions.png")
    summary = {"checkpoint": str(ckpt), "scaling_factor": scale, "held_out_l1": l1, "held_out_mse": mse,
               "held_out_images": len(held), "held_out_latent_mean": float(latents.mean()),
               "held_out_latent_std": float(latents.std()), "train_seconds": float(state.get("train_seconds", 0.0))}
    (run_dir / "reconstruction.json").write_text(json.dumps(summary, indent=1))
    print(f"scaling factor {scale:.4f} (held-out latents: mean {float(latents.mean()):.3f}, "
          f"std {float(latents.std()):.3f}); held-out reconstruction error: L1 {l1:.4f}, MSE {mse:.4f} "
          f"(images in [-1, 1], {len(held)} images)")
    print(f"wrote the autoencoder checkpoint to {ckpt.resolve()}, tensorboard logs to {(run_dir / 'tb').resolve()}, "
          f"originals vs reconstructions to {grid.resolve()} and these numbers to "
          f"{(run_dir / 'reconstruction.json').resolve()}")
    return grid


def run(cfg: dict) -> Path:
    mode = cfg.get("mode")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    if mode == "autoencoder":
        return run_autoencoder(cfg)
    if mode == "classifier":
        return run_classifier(cfg)
    if mode == "likelihood":
        return run_likelihood(cfg)
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
