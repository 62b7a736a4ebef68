"""Plot success rate (95% CI) against sampling steps from the summaries diffpolicy-eval wrote.

    python benchmarks/plot_success_vs_steps.py --out benchmarks/results/success_vs_steps.png \
        TwoPath=/work/exp/tp_ddpm,/work/exp/tp_flow ArmPick=/work/exp/arm_ddpm,/work/exp/arm_flow

Each run directory's ``eval/<sampler>_<steps>[_exec<K>][_shift<S>][_<spacing>]/summary.json`` becomes one point of
its sampler's curve (one curve per executed-actions and time-grid setting). ``NAME@run_dir`` names a run's curves;
``--merge-grids`` draws one curve per sampler and executed-actions setting, each point labelled with its time grid
(for runs evaluated on the grid that suits each step count).
"""

import argparse
import json
import re
from pathlib import Path

import matplotlib

from diffpolicy.core.samplers import SAMPLERS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


# diffpolicy-eval's <sampler>_<steps>[_exec<n_action_steps>][_shift<shift>][_<spacing>]
LABEL = re.compile(r"^(.+?)_(\d+)(?:_exec(\d+))?(?:_shift([\d.]+))?(?:_(leading|trailing|linspace))?$")


def curves(run_specs, merge_grids=False):
    """``{label: [(steps, rate, lo, hi, grid)]}`` for every ``eval/<sampler>_<steps>`` of the runs."""
    out = {}
    for spec in run_specs:
        name, run = spec.split("@", 1) if "@" in spec else (Path(spec).name, spec)
        for summary in sorted(Path(run).glob("eval/*_*/summary.json")):
            m = LABEL.match(summary.parent.name)
            if m is None or m.group(1) not in SAMPLERS:  # evaluations written to a custom out= directory
                continue
            sampler, steps, executed, shift, spacing = m.groups()
            s = json.loads(summary.read_text())
            grid = (f"shift {shift}" if shift else "") + (spacing or "")
            label = f"{name} {sampler}" + (f", executing {executed}" if executed else "")
            if not merge_grids and grid:
                label += f", {grid}"
            out.setdefault(label, []).append((int(steps), s["success_rate"], *s["success_ci95"], grid))
    return {k: sorted(v) for k, v in out.items()}


def draw(ax, x, rate, lo, hi, label: str) -> None:
    """One curve of success rates with their interval as error bars."""
    err = [[max(0, r - a) for r, a in zip(rate, lo)], [max(0, b - r) for r, b in zip(rate, hi)]]
    ax.errorbar(x, rate, yerr=err, marker="o", capsize=3, label=label)


def save(fig, out: str) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {Path(out).resolve()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tasks", nargs="+", help="TITLE=[NAME@]run_dir[,[NAME@]run_dir...]")
    ap.add_argument("--merge-grids", action="store_true", help="one curve per sampler; points labelled by grid")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    fig, axes = plt.subplots(1, len(args.tasks), figsize=(7 * len(args.tasks), 4.5), squeeze=False)
    for ax, spec in zip(axes[0], args.tasks):
        title, runs = spec.split("=", 1)
        for label, pts in curves(runs.split(","), args.merge_grids).items():
            steps, rate, lo, hi, grids = zip(*pts)
            draw(ax, steps, rate, lo, hi, label)
            for x, y, grid in zip(steps, rate, grids):
                if args.merge_grids and grid:
                    ax.annotate(grid, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=6)
        ax.set(xscale="log", xlabel="sampling steps", ylabel="success (95% CI)", ylim=(0, 1.05), title=title)
        ax.set_xticks([1, 2, 4, 8, 16], labels=["1", "2", "4", "8", "16"])
        ax.legend(fontsize=8)
    save(fig, args.out)


if __name__ == "__main__":
    main()
