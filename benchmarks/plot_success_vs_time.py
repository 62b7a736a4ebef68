"""Plot success rate against training wall time, from runs' periodic evaluations or from given points.

    python benchmarks/plot_success_vs_time.py --out benchmarks/results/success_vs_time_pusht.png \
        "DDPM h8=/work/exp/pdsbf" "flow h8=6.5:0.22,12.1:0.46,17.6:0.72,23.4:0.74" \
        "Diffusion Policy recipe (brief)=15:0:0,30:0.08:0,45:0.36:0"

A ``label=run_dir`` curve reads ``run_dir/eval_history.jsonl`` (``train_seconds``, ``success_rate``; evaluation time
excluded); ``label=file.jsonl`` reads such rows from a file (``eval_checkpoints.py`` writes one per run, with each
row's episode count); a ``label=min:rate[:episodes],...`` curve gives its points directly, for runs evaluated from saved
checkpoints or measured elsewhere. Error bars: the 95% Wilson interval for the point's episodes (``--episodes`` by
default; 0 draws none).
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffpolicy.eval.rollout import wilson_interval  # noqa: E402
from plot_success_vs_steps import draw, save  # noqa: E402  (this folder)


def points(source: str, episodes: int) -> list[tuple[float, float, int]]:
    """``[(minutes, success, episodes)]`` from a run directory or a ``min:rate[:episodes],...`` list."""
    path = Path(source)
    if path.is_dir() or path.suffix == ".jsonl":
        path = path / "eval_history.jsonl" if path.is_dir() else path
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [(r["train_seconds"] / 60, r["success_rate"], r.get("n_episodes", episodes)) for r in rows]
    return [(float(f[0]), float(f[1]), int(f[2]) if len(f) > 2 else episodes)
            for f in (p.split(":") for p in source.split(","))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("curves", nargs="+", help="LABEL=run_dir or LABEL=min:rate[:episodes],...")
    ap.add_argument("--episodes", type=int, default=50, help="episodes per evaluation (for the intervals)")
    ap.add_argument("--title", default="Push-T (state), 2-core CPU")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(6, 4))
    for spec in args.curves:
        label, source = spec.split("=", 1)
        minutes, rate, n = zip(*points(source, args.episodes))
        lo, hi = zip(*(wilson_interval(round(r * k), k) if k else (r, r) for r, k in zip(rate, n)))
        draw(ax, minutes, rate, lo, hi, label)
    ax.axhline(0.7, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="training wall time (min)", ylabel="success (95% CI)", ylim=(0, 1.05), title=args.title)
    ax.legend(fontsize=8)
    save(fig, args.out)


if __name__ == "__main__":
    main()
