"""``diffpolicy-dataset``: inspect, check and reshape zarr demonstration datasets.

Subcommands (``diffpolicy-dataset <cmd> -h`` for options)::

    info PATH [--json OUT]                       episodes, steps, keys/shapes/dtypes/chunks, episode-length histogram
    validate PATH [--keys K ...]                 every chunk, structural and value check (exit status below)
    merge OUT IN [IN ...]                        episodes of several stores, in order, into one new store
    subset IN OUT --episodes 0,3,5-9             the listed episodes into a new store
    split IN --train-out A --val-out B           seeded episode-level train/val split into two new stores
    video IN OUT.mp4 [--episode I] [--key img]   one episode's images as an mp4
    convert lerobot SRC_DIR OUT [--rename F=K]   LeRobotDataset v2.1/v3.0 (parquet + mp4) or robomimic hdf5 demos
    convert robomimic SRC.hdf5 OUT [--filter F]  into a new store (readers: pip install "diffpolicy[convert]")

Sources are never modified; outputs are written atomically and refused if they exist (``--overwrite``). Every
output path is resolved (symlinks, ``..``) and refused if it is, lies inside, or contains a source, whatever
``--overwrite`` says. Every command prints what it wrote.

Exit status: 0 on success; for ``validate``, 0 when the store is clean, 1 when problems were found (each printed as
``ERROR <store>: <key>: <problem>``: missing or undecodable chunks named by key and rows, structure, values), and 2
when the store is unreadable (path missing, not a zarr store, metadata that cannot be parsed). Any other command
exits 2 on an error (a bad or unreadable store, a refused output path, bad arguments), with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from diffpolicy.data.errors import DatasetError, UnreadableStoreError
from diffpolicy.data.replay_buffer import ReplayBuffer, is_image_shape
from diffpolicy.data.tools import check_output_paths, parse_episodes, write_episodes
from diffpolicy.data.validate import validate_store
from diffpolicy.data.windows import split_episodes


def describe(rb: ReplayBuffer, bins: int = 10) -> dict:
    """Summary of a store as plain JSON-able values."""
    lengths = rb.episode_lengths
    counts, edges = np.histogram(lengths, bins=min(bins, max(1, len(np.unique(lengths)))))
    arrays = {}
    for key in rb.keys:
        arr = rb.array(key)
        arrays[key] = {"shape": list(arr.shape), "dtype": str(np.dtype(arr.dtype)), "chunks": list(arr.chunks),
                       "compressors": [str(c) for c in arr.compressors]}
    return {"path": rb.path, "zarr_format": rb.zarr_format, "episodes": rb.n_episodes, "steps": rb.n_steps,
            "episode_length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max()),
                               "histogram": {"counts": counts.tolist(), "edges": edges.tolist()}},
            "arrays": arrays, "attrs": rb.attrs}


def cmd_info(args) -> int:
    if args.json:
        check_output_paths([args.json], [args.path])
    rb = ReplayBuffer.open(args.path)
    d = describe(rb)
    print(f"{d['path']}  (zarr v{d['zarr_format']})")
    print(f"  episodes {d['episodes']}   steps {d['steps']}")
    for key, a in d["arrays"].items():
        print(f"  data/{key:<14} {str(tuple(a['shape'])):<22} {a['dtype']:<8} chunks {tuple(a['chunks'])}")
    el = d["episode_length"]
    print(f"  episode length: min {el['min']}  mean {el['mean']:.1f}  max {el['max']}")
    counts, edges = el["histogram"]["counts"], el["histogram"]["edges"]
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        print(f"    [{lo:7.1f}, {hi:7.1f}] {c:5d} {'#' * round(40 * c / max(counts))}")
    for k, v in d["attrs"].items():
        text = json.dumps(v)
        print(f"  attr {k}: {text if len(text) < 100 else text[:97] + '...'}")
    if args.json:
        Path(args.json).write_text(json.dumps(d, indent=2))
        print(f"wrote {Path(args.json).absolute()}")
    else:
        print("wrote nothing (read-only command; --json OUT saves this summary)")
    return 0


def cmd_validate(args) -> int:
    try:
        problems = validate_store(args.path, args.keys or (), progress=True, raise_unreadable=True)
    except UnreadableStoreError as err:
        print(f"diffpolicy-dataset validate: error: {err}", file=sys.stderr)
        print(f"{args.path}: UNREADABLE (exit status 2)")
        return 2
    for p in problems:
        print(f"ERROR {p}")
    print(f"{args.path}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    print("wrote nothing (read-only command)")
    return 1 if problems else 0


def cmd_merge(args) -> int:
    check_output_paths([args.out], args.inputs)
    sources = [ReplayBuffer.open(p) for p in args.inputs]
    # Attributes every source agrees on (task id, control rate, ...) still describe the merged store.
    common = {k: v for k, v in sources[0].attrs.items() if all(rb.attrs.get(k, object()) == v for rb in sources)}
    out = write_episodes(args.out, [(rb, range(rb.n_episodes)) for rb in sources], args.overwrite,
                         attrs={**common, "merged_from": [rb.path for rb in sources],
                                "episodes_per_source": [rb.n_episodes for rb in sources]})
    print(f"wrote {out} ({sum(rb.n_episodes for rb in sources)} episodes from {len(sources)} stores)")
    return 0


def cmd_subset(args) -> int:
    check_output_paths([args.out], [args.input])
    rb = ReplayBuffer.open(args.input)
    eps = parse_episodes(args.episodes, rb.n_episodes)
    out = write_episodes(args.out, [(rb, eps)], args.overwrite,
                         attrs={**rb.attrs, "subset_of": rb.path, "source_episodes": eps})
    print(f"wrote {out} ({len(eps)} episodes)")
    return 0


def cmd_split(args) -> int:
    check_output_paths([args.train_out, args.val_out], [args.input])
    rb = ReplayBuffer.open(args.input)
    train, val = split_episodes(rb.n_episodes, args.val_ratio, args.seed, args.max_train_episodes)
    for name, mask, dest in (("train", train, args.train_out), ("val", val, args.val_out)):
        eps = np.flatnonzero(mask).tolist()
        if not eps:
            print(f"{name}: no episodes (val_ratio={args.val_ratio}); not written")
            continue
        out = write_episodes(dest, [(rb, eps)], args.overwrite,
                             attrs={**rb.attrs, "subset_of": rb.path, "source_episodes": eps, "split": name,
                                    "split_seed": args.seed, "val_ratio": args.val_ratio})
        print(f"wrote {out} ({name}: {len(eps)} episodes)")
    return 0


def cmd_video(args) -> int:
    import imageio.v2 as imageio

    check_output_paths([args.out], [args.input])
    rb = ReplayBuffer.open(args.input)
    arr = rb.array(args.key)
    if not is_image_shape(arr.shape):
        raise DatasetError(rb.path, f"data/{args.key}", f"is {tuple(arr.shape)}, not images (N, H, W, C)")
    frames = rb.get_episode(args.episode, [args.key])[args.key]
    if frames.dtype != np.uint8:
        frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    out = Path(args.out).absolute()
    if out.exists() and not args.overwrite:
        raise DatasetError(out, None, "already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fps = args.fps or rb.attrs.get("control_hz", 10)
    with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=8) as writer:
        for frame in frames:
            writer.append_data(frame)
    tmp.replace(out)
    print(f"wrote {out} (episode {args.episode}, {len(frames)} frames of data/{args.key} at {fps} fps)")
    return 0


def cmd_convert(args) -> int:
    # The converters (and their optional readers pyarrow / h5py / av) load only when a conversion runs.
    from diffpolicy.data.convert.common import describe_summary

    try:
        if args.format == "lerobot":
            from diffpolicy.data.convert.lerobot import convert_lerobot

            summary = convert_lerobot(args.src, args.out, args.rename or (), args.skip or (), args.episodes,
                                      args.overwrite)
        else:
            from diffpolicy.data.convert.robomimic import convert_robomimic

            summary = convert_robomimic(args.src, args.out, args.filter, args.rename or (), args.skip or (),
                                        args.overwrite)
    except ImportError as err:  # a missing optional reader: say which extra to install
        print(f"diffpolicy-dataset convert: error: {err}", file=sys.stderr)
        return 2
    print(describe_summary(summary))
    return 0


EXIT_STATUS = __doc__[__doc__.index("Exit status:"):].strip().replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffpolicy-dataset", description=__doc__.split("\n")[0],
                                     epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="summarise a store")
    p.add_argument("path")
    p.add_argument("--json", help="also write the summary as JSON here")
    p.set_defaults(fn=cmd_info)
    p = sub.add_parser("validate", help="check a store: exit 0 clean, 1 problems found, 2 unreadable",
                       description="Check every chunk (present and decodable), the structure and the values of a "
                                   "store; print each problem.", epilog=EXIT_STATUS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path")
    p.add_argument("--keys", nargs="*", help="data keys that must be present")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("merge", help="concatenate the episodes of several stores")
    p.add_argument("out")
    p.add_argument("inputs", nargs="+")
    p.set_defaults(fn=cmd_merge)
    p = sub.add_parser("subset", help="copy selected episodes")
    p.add_argument("input")
    p.add_argument("out")
    p.add_argument("--episodes", required=True, help="e.g. 0,3,5-9 (inclusive ranges)")
    p.set_defaults(fn=cmd_subset)
    p = sub.add_parser("split", help="seeded episode-level train/val split into two stores")
    p.add_argument("input")
    p.add_argument("--train-out", required=True)
    p.add_argument("--val-out", required=True)
    p.add_argument("--val-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train-episodes", type=int)
    p.set_defaults(fn=cmd_split)
    p = sub.add_parser("video", help="write one episode's images as mp4")
    p.add_argument("input")
    p.add_argument("out")
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--key", default="img")
    p.add_argument("--fps", type=float)
    p.set_defaults(fn=cmd_video)
    for name in ("merge", "subset", "split", "video"):
        sub.choices[name].add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p = sub.add_parser("convert", help="convert LeRobot or robomimic demonstrations into a new store")
    formats = p.add_subparsers(dest="format", required=True)
    c = formats.add_parser("lerobot", help="LeRobotDataset v2.x/v3.0 directory (meta/info.json, parquet, mp4)")
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("--episodes", help="positions in the episode list, e.g. 0,3,5-9 (default: all)")
    c = formats.add_parser("robomimic", help="robomimic hdf5 file (data/demo_<i>/obs, actions)")
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("--filter", help="only the demos listed in mask/<FILTER>, e.g. train")
    for c in formats.choices.values():
        c.add_argument("--rename", action="append", metavar="SOURCE=KEY",
                       help="store a source feature (LeRobot feature or robomimic dataset, e.g. obs/agentview_image) "
                            "as data/KEY; repeatable")
        c.add_argument("--skip", action="append", metavar="SOURCE", help="leave a source feature out; repeatable")
        c.add_argument("--overwrite", action="store_true", help="replace an existing output")
        c.set_defaults(fn=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (DatasetError, ValueError, IndexError) as err:
        print(f"diffpolicy-dataset {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
