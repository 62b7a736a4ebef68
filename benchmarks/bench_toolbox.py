"""The diffusion toolbox on the digits models (issue 24): likelihoods, predictor-corrector sampling, classifier
guidance. Each subcommand writes ``benchmarks/results/toolbox_<part>_<run name>.json`` (printed) and, for ``plot``,
PNG figures.

    # bits/dim of the held-out digits: the probability-flow ODE at several step counts, and the variational bound
    python benchmarks/bench_toolbox.py likelihood runs/imagegen/ddpm --ode-steps 8 16 32 --vlb
    # FID and class accuracy against network evaluations, with and without a Langevin corrector
    python benchmarks/bench_toolbox.py pc runs/imagegen/flow
    # classifier guidance (conditional and unconditional model) against classifier-free guidance
    python benchmarks/bench_toolbox.py guidance runs/imagegen/flow runs/imagegen/flow_classifier
    python benchmarks/bench_toolbox.py plot

FID and class accuracy use the reference classifier of ``bench_imagegen.py real`` (``--classifier``), never the
guiding classifier: 50 images per class (500) against the 359 held-out images, as in ``results/imagegen.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from bench_imagegen import load_classifier as load_reference
from diffpolicy.core.samplers import Langevin
from diffpolicy.imagegen.classifier import load_classifier
from diffpolicy.imagegen.data import load_digits_splits
from diffpolicy.imagegen.grid import save_grid
from diffpolicy.imagegen.metrics import balanced_labels, frechet_distance, predict_features
from diffpolicy.imagegen.model import load_generator

RESULTS = Path(__file__).parent / "results"


def write(args, part: str, run: Path, result) -> Path:
    out = args.out / f"toolbox_{part}_{run.name}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out.resolve()}")
    return out


def score(gen, ref, held_feats, labels, seed, **kw) -> dict:
    """Generate for ``labels`` and return class accuracy, FID and seconds (generation only)."""
    t0 = time.perf_counter()
    images = gen.generate(labels, generator=torch.Generator().manual_seed(seed), **kw)
    seconds = time.perf_counter() - t0
    pred, feats = predict_features(ref, images)
    return {"class_accuracy": float((pred == labels).float().mean()), "fid": frechet_distance(feats, held_feats),
            "seconds": round(seconds, 2)}, images


def cmd_likelihood(args) -> None:
    gen, cfg, ckpt = load_generator(args.run)
    _, held = load_digits_splits(int(cfg["data"]["image_size"]))
    x, y = held.images[: args.n], held.labels[: args.n]
    rows = []

    def run(method, steps, trace=None, probes=None):
        t0 = time.perf_counter()
        kw = {} if method == "vlb" else {"trace": trace, "probes": probes}
        bpd = gen.bits_per_dim(x, y, method=method, steps=steps, generator=torch.Generator().manual_seed(args.seed),
                               batch_size=args.batch, **kw)
        row = {"method": method, "steps": steps, **kw, "bits_per_dim": float(bpd.mean()),
               "stderr": float(bpd.std()) / math.sqrt(len(bpd) - 1), "seconds": round(time.perf_counter() - t0, 1)}
        print(row, flush=True)
        rows.append(row)

    for steps in args.ode_steps:
        run("ode", steps, "hutchinson", args.probes)
    if args.vlb:
        run("vlb", None)
    write(args, "likelihood", args.run, {"checkpoint": str(ckpt), "objective": cfg["objective"], "n": len(y),
                                         "conditional": True, "rows": rows})


def cmd_pc(args) -> None:
    gen, cfg, ckpt = load_generator(args.run)
    ref = load_reference(args.classifier, int(cfg["data"]["image_size"]))
    _, held = load_digits_splits(int(cfg["data"]["image_size"]))
    held_feats = predict_features(ref, held.images)[1]
    labels = balanced_labels(args.per_class)
    rows = []
    for nfe in args.nfe:
        settings = [(s, nfe, None) for s in args.predictors]  # predictor alone: nfe steps
        settings += [(s, nfe // (1 + c), Langevin(args.snr, c)) for s in args.predictors for c in args.corrector_steps
                     if nfe // (1 + c) >= 1]
        for sampler, steps, corr in settings:
            kw = {"corrector": corr} if corr else {}
            m, _ = score(gen, ref, held_feats, labels, args.seed, sampler=sampler, steps=steps, **kw)
            row = {"sampler": sampler, "steps": steps, "corrector_steps": corr.steps if corr else 0,
                   "snr": corr.snr if corr else None, "nfe": steps * (1 + (corr.steps if corr else 0)), **m}
            print(row, flush=True)
            rows.append(row)
    for levels, c in args.langevin:
        m, _ = score(gen, ref, held_feats, labels, args.seed, sampler="langevin", steps=int(levels),
                     corrector=Langevin(args.snr, int(c)))
        row = {"sampler": "langevin", "steps": int(levels), "corrector_steps": int(c), "snr": args.snr,
               "nfe": int(levels) * int(c) + 1, **m}
        print(row, flush=True)
        rows.append(row)
    write(args, "pc", args.run, {"checkpoint": str(ckpt), "objective": cfg["objective"], "n": len(labels),
                                 "guidance": 0.0, "rows": rows})


def cmd_guidance(args) -> None:
    gen, cfg, ckpt = load_generator(args.run)
    clf = load_classifier(args.guide)
    ref = load_reference(args.classifier, int(cfg["data"]["image_size"]))
    _, held = load_digits_splits(int(cfg["data"]["image_size"]))
    held_feats = predict_features(ref, held.images)[1]
    labels = balanced_labels(args.per_class)
    base = {"sampler": args.sampler, "steps": args.steps}
    rows, grids = [], {}

    def run(kind, cfg_w, cls_s, conditional=True):
        kw = {**base, "guidance": cfg_w, "conditional": conditional}
        if cls_s:
            kw.update(classifier=clf, classifier_scale=cls_s)
        m, images = score(gen, ref, held_feats, labels, args.seed, **kw)
        row = {"kind": kind, "guidance": cfg_w, "classifier_scale": cls_s, "conditional": conditional, **m}
        print(row, flush=True)
        rows.append(row)
        grids[(kind, cfg_w, cls_s)] = images

    run("unconditional", 0.0, 0.0, conditional=False)
    for s in args.scales:
        run("classifier (unconditional model)", 0.0, s, conditional=False)
    run("conditional", 0.0, 0.0)
    for s in args.scales:
        run("classifier (conditional model)", 0.0, s)
    for w in args.guidances:
        run("classifier-free", w, 0.0)
    for w, s in args.both:
        run("classifier-free + classifier", w, s)
    write(args, "guidance", args.run, {"checkpoint": str(ckpt), "classifier": str(args.guide),
                                       "objective": cfg["objective"], "n": len(labels), **base, "rows": rows})
    # sample grids: the first 10 images of each class (rows = classes) for the unconditional model guided by the
    # classifier at the largest scale, and for classifier-free guidance at the largest w
    pick = torch.cat([torch.arange(10) + c * args.per_class for c in range(10)])
    for key, name in ((("classifier (unconditional model)", 0.0, args.scales[-1]), "classifier_uncond"),
                      (("classifier-free", args.guidances[-1], 0.0), "cfg")):
        if key in grids:
            path = save_grid(grids[key][pick], 10, args.out / f"toolbox_guidance_{name}_{args.run.name}.png")
            print(f"wrote {path.resolve()}")


def markdown_tables(out: Path) -> None:
    """Print every toolbox JSON of ``out`` as a markdown table (the tables of results/toolbox.md)."""
    for path in sorted(out.glob("toolbox_*.json")):
        data = json.loads(path.read_text())
        rows = data.get("rows")
        if not rows:
            continue
        keys = [k for k in rows[0] if k not in ("snr",)]
        print(f"\n{path.name}\n\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in rows:
            cells = [f"{r.get(k):.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
            print("| " + " | ".join(cells) + " |")


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path.resolve()}")


def cmd_plot(args) -> None:
    markdown_tables(args.out)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pcs = sorted(args.out.glob("toolbox_pc_*.json"))
    if pcs:
        fig, axes = plt.subplots(1, len(pcs), figsize=(5 * len(pcs), 4), squeeze=False)
        for ax, path in zip(axes[0], pcs):
            data = json.loads(path.read_text())
            series = {}
            for r in data["rows"]:
                if r["sampler"] != "langevin":  # annealed Langevin sits far above (FID in the hundreds): tables only
                    series.setdefault((r["sampler"], r["corrector_steps"]), []).append((r["nfe"], r["fid"]))
            for i, sampler in enumerate(sorted({k[0] for k in series})):
                for (name, corr), pts in sorted(series.items()):
                    if name == sampler:
                        pts.sort()
                        ax.plot(*zip(*pts), marker="o", color=f"C{i}", ls="--" if corr else "-",
                                label=f"{name}" + (f" + {corr} Langevin step per level" if corr else ""))
            ax.set_xscale("log")
            ax.set_xlabel("network evaluations per image")
            ax.set_ylabel("FID (reference classifier features)")
            ax.set_title(f"{path.stem.removeprefix('toolbox_pc_')} ({data['objective']['type']})")
            ax.legend(fontsize=7)
        save_figure(fig, args.out / "toolbox_pc_fid_vs_nfe.png")
    liks = sorted(args.out.glob("toolbox_likelihood_*.json"))
    if liks:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for i, path in enumerate(liks):
            data = json.loads(path.read_text())
            name, color = path.stem.removeprefix("toolbox_likelihood_"), f"C{i}"
            ode = sorted((r["steps"], r["bits_per_dim"], r["stderr"]) for r in data["rows"] if r["method"] == "ode")
            if ode:
                steps, bpd, err = zip(*ode)
                ax.errorbar(steps, bpd, yerr=err, marker="o", color=color, label=f"{name}: probability-flow ODE")
            for r in data["rows"]:
                if r["method"] == "vlb":
                    ax.axhline(r["bits_per_dim"], color=color, ls="--", label=f"{name}: variational bound")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("RK4 steps of the ODE")
        ax.set_ylabel("bits per dimension (held-out digits)")
        ax.legend(fontsize=7)
        save_figure(fig, args.out / "toolbox_likelihood_bits_per_dim.png")
    guid = sorted(args.out.glob("toolbox_guidance_*.json"))
    if guid:
        fig, axes = plt.subplots(1, len(guid), figsize=(5 * len(guid), 4), squeeze=False)
        for ax, path in zip(axes[0], guid):
            data = json.loads(path.read_text())
            series = {}
            for r in data["rows"]:
                series.setdefault(r["kind"], []).append((r["class_accuracy"], r["fid"]))
            for label, pts in series.items():
                ax.plot(*zip(*pts), marker="o", label=label)
            ax.set_xlabel("class accuracy (reference classifier)")
            ax.set_ylabel("FID")
            ax.set_title(f"{path.stem.removeprefix('toolbox_guidance_')} ({data['objective']['type']})")
            ax.legend(fontsize=7)
        save_figure(fig, args.out / "toolbox_guidance_accuracy_vs_fid.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--classifier", type=Path, default=Path("runs/imagegen/classifier.safetensors"),
                   help="the reference classifier of bench_imagegen.py real")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    sub = p.add_subparsers(dest="cmd", required=True)
    lk = sub.add_parser("likelihood")
    lk.add_argument("run", type=Path)
    lk.add_argument("--ode-steps", type=int, nargs="*", default=[8, 16, 32])
    lk.add_argument("--probes", type=int, default=1)
    lk.add_argument("--vlb", action="store_true")
    lk.add_argument("--n", type=int, default=359)
    lk.add_argument("--batch", type=int, default=359)
    pc = sub.add_parser("pc")
    pc.add_argument("run", type=Path)
    pc.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 40])
    pc.add_argument("--predictors", nargs="+", default=["euler", "dpmpp_2m", "ddpm"])
    pc.add_argument("--corrector-steps", type=int, nargs="+", default=[1])
    pc.add_argument("--snr", type=float, default=0.16)
    pc.add_argument("--langevin", type=int, nargs=2, action="append", default=[],
                    metavar=("LEVELS", "STEPS"), help="annealed Langevin with LEVELS levels and STEPS per level")
    gd = sub.add_parser("guidance")
    gd.add_argument("run", type=Path)
    gd.add_argument("guide", type=Path, help="a noise-conditional classifier run (diffpolicy-imagegen classifier)")
    gd.add_argument("--sampler", default="dpmpp_2m")
    gd.add_argument("--steps", type=int, default=20)
    gd.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    gd.add_argument("--guidances", type=float, nargs="+", default=[-0.75, -0.5, -0.25, 0.25, 0.5, 1.0, 2.0],
                    help="classifier-free w; w in [-1, 0) mixes in the unconditional model (-1: unconditional)")
    gd.add_argument("--both", type=float, nargs=2, action="append", default=[], metavar=("W", "S"))
    sub.add_parser("plot")
    args = p.parse_args()
    torch.set_num_threads(1)
    {"likelihood": cmd_likelihood, "pc": cmd_pc, "guidance": cmd_guidance, "plot": cmd_plot}[args.cmd](args)


if __name__ == "__main__":
    main()
