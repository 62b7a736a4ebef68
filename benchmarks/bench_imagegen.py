"""Quality of the image generators (issue 7, section 4), in three steps:

    # 1. the reference classifier, its held-out accuracy and the FID floor (real train vs held-out)
    python benchmarks/bench_imagegen.py real
    # 2. per trained run: class accuracy at guidance 0, 1, 2, 4 and FID vs steps for every core sampler
    python benchmarks/bench_imagegen.py eval runs/imagegen/ddpm
    python benchmarks/bench_imagegen.py eval runs/imagegen/flow
    # 3. the FID-vs-steps plot from the JSON files of steps 1-2
    python benchmarks/bench_imagegen.py plot
    # pixel vs latent space (same samplers and steps): FID, class accuracy, samples/s, training step time
    python benchmarks/bench_imagegen.py latent runs/imagegen/flow runs/imagegen/latent_flow

Results go to ``benchmarks/results/imagegen_*.json`` and ``imagegen_fid_vs_steps.png`` (printed). The classifier is
saved as safetensors (``--classifier``) so every ``eval`` scores with the same network. FID depends on the set
sizes, so generated sets have ``per_class * 10`` images and the floor uses real training subsets of the same size
(mean over ``--floor-repeats`` random subsets), both against the whole held-out split.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffpolicy.core.samplers import SAMPLERS
from diffpolicy.imagegen.data import DigitBatches, load_digits_splits
from diffpolicy.imagegen.grid import save_grid
from diffpolicy.imagegen.metrics import (
    DigitClassifier, accuracy, balanced_labels, evaluate_samples, frechet_distance, predict_features, train_classifier,
)
from diffpolicy.imagegen.model import load_generator
from diffpolicy.policy.checkpoint import load_train_state

RESULTS = Path(__file__).parent / "results"


def load_classifier(path: Path, image_size: int) -> DigitClassifier:
    if not path.is_file():
        raise FileNotFoundError(f"classifier {path} not found; run `python benchmarks/bench_imagegen.py real` first")
    clf = DigitClassifier(image_size)
    clf.load_state_dict(load_file(path))
    return clf.eval().requires_grad_(False)


def cmd_real(args) -> None:
    train, held = load_digits_splits(args.image_size)
    t0 = time.perf_counter()
    clf = train_classifier(train, epochs=args.epochs, seed=args.seed)
    train_seconds = time.perf_counter() - t0
    args.classifier.parent.mkdir(parents=True, exist_ok=True)
    save_file(clf.state_dict(), args.classifier)
    n = args.per_class * 10
    held_feats = predict_features(clf, held.images)[1]
    train_feats = predict_features(clf, train.images)[1]
    g = torch.Generator().manual_seed(args.seed)
    floors = [frechet_distance(train_feats[torch.randperm(len(train), generator=g)[:n]], held_feats)
              for _ in range(args.floor_repeats)]
    floor = torch.tensor(floors)
    result = {"image_size": args.image_size, "n_train": len(train), "n_held_out": len(held),
              "classifier_epochs": args.epochs, "classifier_train_seconds": round(train_seconds, 1),
              "classifier_held_out_accuracy": accuracy(clf, held.images, held.labels),
              "classifier_train_accuracy": accuracy(clf, train.images, train.labels),
              "fid_floor_n": n, "fid_floor_mean": float(floor.mean()), "fid_floor_std": float(floor.std()),
              "fid_floor_all": floors, "fid_train_all_vs_held_out": frechet_distance(train_feats, held_feats)}
    out = args.out / "imagegen_real.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "fid_floor_all"}, indent=1))
    print(f"wrote the classifier to {args.classifier.resolve()} and results to {out.resolve()}")


def cmd_eval(args) -> None:
    gen, cfg, ckpt = load_generator(args.run, use_ema=True)
    size = int(cfg["data"]["image_size"])
    clf = load_classifier(args.classifier, size)
    _, held = load_digits_splits(size, float(cfg["data"]["held_out"]), int(cfg["data"]["split_seed"]))
    rows = []

    def measure(sampler: str, steps: int, guidance: float, kind: str) -> None:
        t0 = time.perf_counter()
        r = evaluate_samples(gen, clf, held.images, args.per_class, sampler, steps, guidance, seed=args.seed)
        r.update(kind=kind, seconds=round(time.perf_counter() - t0, 1),
                 nfe=(2 * steps - 1 if sampler == "heun" else steps) * (2 if guidance else 1))
        rows.append(r)
        print(f"{kind:9s} {sampler:9s} steps={steps:3d} guidance={guidance:g}: class accuracy "
              f"{r['class_accuracy']:.3f}, FID {r['fid']:.2f} ({r['seconds']} s)", flush=True)

    for w in args.guidances:
        measure(args.guidance_sampler, args.guidance_steps, w, "guidance")
    for sampler in args.samplers:
        for steps in args.steps:
            measure(sampler, steps, args.sweep_guidance, "steps")
    name = cfg.get("name", cfg["objective"]["type"])
    result = {"run": str(args.run), "checkpoint": str(ckpt), "objective": cfg["objective"],
              "train_steps": int(load_train_state(ckpt)["step"]), "per_class": args.per_class, "seed": args.seed,
              "rows": rows}
    out = args.out / f"imagegen_{name}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out.resolve()}")


def train_step_seconds(gen, batch: dict, steps: int) -> float:
    """Median wall time of ``steps`` AdamW training steps (forward, backward, update) of a copy of ``gen`` on
    ``batch``, after one warm-up step; the latent generator's includes encoding the batch."""
    model = copy.deepcopy(gen).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    times = []
    for k in range(steps + 1):
        t0 = time.perf_counter()
        loss = model(batch, torch.Generator().manual_seed(k))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def interleave(a: torch.Tensor, b: torch.Tensor, rows: int) -> torch.Tensor:
    """Row ``r`` of ``a`` then row ``r`` of ``b``, for ``rows`` rows each: ``(2 * N, 1, H, W)`` for a grid."""
    return torch.stack([a.view(rows, -1, *a.shape[1:]), b.view(rows, -1, *b.shape[1:])], 1).flatten(0, 2)


def cmd_latent(args) -> None:
    gens = {kind: load_generator(path, use_ema=True) for kind, path in (("pixel", args.pixel_run),
                                                                          ("latent", args.latent_run))}
    pixel, latent = gens["pixel"][0], gens["latent"][0]
    if pixel.autoencoder is not None or latent.autoencoder is None:
        raise ValueError(f"expected a pixel-space run then a latent run; got {args.pixel_run} "
                         f"({'latent' if pixel.autoencoder is not None else 'pixel'}) and {args.latent_run} "
                         f"({'latent' if latent.autoencoder is not None else 'pixel'})")
    data = gens["pixel"][1]["data"]
    if gens["latent"][1]["data"] != data:
        raise ValueError(f"the runs' data sections differ: {data} vs {gens['latent'][1]['data']}")
    size = int(data["image_size"])
    clf = load_classifier(args.classifier, size)
    train, held = load_digits_splits(size, float(data["held_out"]), int(data["split_seed"]))
    ref_feats = predict_features(clf, held.images)[1]
    labels = balanced_labels(args.per_class)
    ae = latent.autoencoder

    # The autoencoder alone: held-out reconstruction error, and the FID floor's subsets reconstructed (its floor).
    with torch.no_grad():
        recon = ae.reconstruct(held.images)
        g = torch.Generator().manual_seed(args.seed)
        subsets = [torch.randperm(len(train), generator=g)[: len(labels)] for _ in range(args.floor_repeats)]
        fid_real = [frechet_distance(predict_features(clf, train.images[i])[1], ref_feats) for i in subsets]
        fid_recon = [frechet_distance(predict_features(clf, ae.reconstruct(train.images[i]))[1], ref_feats)
                     for i in subsets]
    autoencoder = {"held_out_l1": float((recon - held.images).abs().mean()),
                   "held_out_mse": float((recon - held.images).square().mean()),
                   "held_out_recon_accuracy": accuracy(clf, recon, held.labels),
                   "scaling_factor": float(ae.scaling_factor), "parameters": sum(p.numel() for p in ae.parameters()),
                   "latent_shape": list(ae.latent_shape), "fid_real_subsets_mean": statistics.mean(fid_real),
                   "fid_reconstructed_subsets_mean": statistics.mean(fid_recon), "fid_reconstructed_all": fid_recon}
    print(f"autoencoder: held-out L1 {autoencoder['held_out_l1']:.4f}, MSE {autoencoder['held_out_mse']:.4f}, "
          f"classifier accuracy on reconstructions {autoencoder['held_out_recon_accuracy']:.3f}; FID of "
          f"{len(labels)} train images vs held-out {autoencoder['fid_real_subsets_mean']:.2f}, of their "
          f"reconstructions {autoencoder['fid_reconstructed_subsets_mean']:.2f}", flush=True)
    per = min(8, int(torch.bincount(held.labels).min()))
    idx = torch.cat([torch.nonzero(held.labels == c)[:per, 0] for c in range(10)])
    save_grid(interleave(held.images[idx], recon[idx], 10), 20, args.out / "latent_reconstructions.png")

    batch = DigitBatches(train, args.train_batch)(0, torch.Generator().manual_seed(args.seed))
    train_steps = {kind: train_step_seconds(gens[kind][0], batch, args.train_steps) for kind in gens}
    print(f"training step, batch {args.train_batch}: pixel {train_steps['pixel']:.3f} s, latent "
          f"{train_steps['latent']:.3f} s (encoding included)", flush=True)

    rows = []
    for sampler in args.samplers:
        for steps in args.steps:
            for w in args.guidances:
                for kind in ("pixel", "latent"):  # interleaved: both see the same machine load
                    times = []
                    for _ in range(args.repeats):
                        g = torch.Generator().manual_seed(args.seed)
                        t0 = time.perf_counter()
                        images = gens[kind][0].generate(labels, sampler, steps, w, generator=g,
                                                        batch_size=len(labels))
                        times.append(time.perf_counter() - t0)
                    pred, feats = predict_features(clf, images)
                    r = {"space": kind, "sampler": sampler, "steps": steps, "guidance": w, "n": len(labels),
                         "class_accuracy": float((pred == labels).float().mean()),
                         "fid": frechet_distance(feats, ref_feats), "seconds": times,
                         "samples_per_s": len(labels) / statistics.median(times)}
                    rows.append(r)
                    print(f"{kind:6s} {sampler:9s} steps={steps:3d} guidance={w:g}: class accuracy "
                          f"{r['class_accuracy']:.3f}, FID {r['fid']:.2f}, {r['samples_per_s']:.0f} samples/s "
                          f"(median of {args.repeats})", flush=True)

    grid_labels = balanced_labels(10)
    grids = [gens[k][0].generate(grid_labels, "dpmpp_2m", 20, 2.0, generator=torch.Generator().manual_seed(args.seed))
             for k in ("pixel", "latent")]
    save_grid(interleave(*grids, 10), 20, args.out / "latent_samples.png")

    def run_info(kind: str) -> dict:
        gen, cfg, ckpt = gens[kind]
        state = load_train_state(ckpt)
        return {"run": str(getattr(args, f"{kind}_run")), "checkpoint": str(ckpt), "objective": cfg["objective"],
                "model": cfg["model"], "train_steps": int(state["step"]),
                "train_seconds": state.get("train_seconds"), "train_batch": state["train"]["batch_size"],
                "net_parameters": sum(p.numel() for p in gen.net.parameters())}

    result = {"pixel": run_info("pixel"), "latent": {**run_info("latent"), "latent": gens["latent"][1]["latent"]},
              "autoencoder": autoencoder, "train_step_seconds": train_steps, "train_step_batch": args.train_batch,
              "per_class": args.per_class, "seed": args.seed, "repeats": args.repeats,
              "torch_threads": torch.get_num_threads(), "rows": rows}
    out = args.out / "latent_eval.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out.resolve()}, {(args.out / 'latent_samples.png').resolve()} (rows: pixel, latent per class; "
          f"dpmpp_2m 20 steps guidance 2) and {(args.out / 'latent_reconstructions.png').resolve()} (rows: "
          f"held-out originals, reconstructions per class)")


def cmd_plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = json.loads((args.out / "imagegen_real.json").read_text())
    paths = [p for p in sorted(args.out.glob("imagegen_*.json")) if p.name != "imagegen_real.json"]
    runs = [json.loads(p.read_text()) for p in paths]
    if not runs:
        raise FileNotFoundError(f"no imagegen_<run>.json in {args.out}; run the eval step first")
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.2), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs):
        rows = [r for r in run["rows"] if r["kind"] == "steps"]
        for sampler in dict.fromkeys(r["sampler"] for r in rows):
            pts = sorted((r["steps"], r["fid"]) for r in rows if r["sampler"] == sampler)
            ax.plot(*zip(*pts), marker="o", label=sampler)
        floor = real["fid_floor_mean"]
        ax.axhline(floor, color="k", ls="--", lw=1, label=f"floor (real train vs held-out) {floor:.1f}")
        ax.axhline(2 * floor, color="grey", ls=":", lw=1, label="2x floor")
        w = rows[0]["guidance"] if rows else 0
        ax.set(title=f"{run['objective']['type']} ({run['train_steps']} training steps), guidance {w:g}",
               xlabel="sampling steps", xscale="log", yscale="log")
        ax.set_xticks(sorted({r["steps"] for r in rows}), labels=[str(s) for s in sorted({r["steps"] for r in rows})])
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel(f"FID in classifier feature space (n={real['fid_floor_n']})")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    out = args.out / "imagegen_fid_vs_steps.png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out.resolve()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--classifier", type=Path, default=Path("runs/imagegen/classifier.safetensors"))
    p.add_argument("--per-class", type=int, default=50, help="generated images per class (FID set = 10x this)")
    p.add_argument("--seed", type=int, default=0)
    sub = p.add_subparsers(dest="cmd", required=True)
    real = sub.add_parser("real", help="train the classifier; held-out accuracy and FID floor")
    real.add_argument("--image-size", type=int, default=16)
    real.add_argument("--epochs", type=int, default=20)
    real.add_argument("--floor-repeats", type=int, default=5)
    ev = sub.add_parser("eval", help="score a trained run (its EMA weights)")
    ev.add_argument("run", type=Path)
    ev.add_argument("--guidances", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    ev.add_argument("--guidance-sampler", default="dpmpp_2m", choices=sorted(SAMPLERS))
    ev.add_argument("--guidance-steps", type=int, default=20)
    ev.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=sorted(SAMPLERS))
    ev.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20])
    ev.add_argument("--sweep-guidance", type=float, default=0.0)
    sub.add_parser("plot", help="FID vs steps PNG from the JSON results")
    lat = sub.add_parser("latent", help="pixel vs latent run: FID, class accuracy, samples/s (latent_*.json, PNGs)")
    lat.add_argument("pixel_run", type=Path)
    lat.add_argument("latent_run", type=Path)
    lat.add_argument("--samplers", nargs="+", default=["dpmpp_2m", "euler"], choices=sorted(SAMPLERS))
    lat.add_argument("--steps", type=int, nargs="+", default=[10, 20])
    lat.add_argument("--guidances", type=float, nargs="+", default=[0.0, 2.0])
    lat.add_argument("--repeats", type=int, default=3, help="timed generations per setting (median reported)")
    lat.add_argument("--floor-repeats", type=int, default=5)
    lat.add_argument("--train-steps", type=int, default=10, help="timed training steps per generator")
    lat.add_argument("--train-batch", type=int, default=128)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch threads: {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
    {"real": cmd_real, "eval": cmd_eval, "plot": cmd_plot, "latent": cmd_latent}[args.cmd](args)


if __name__ == "__main__":
    main()
