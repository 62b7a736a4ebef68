"""Dataset-layer throughput: training windows/s through the DataLoader vs plain numpy gathers, and zarr load time.

    python benchmarks/bench_data.py [--steps 25000] [--batch-size 256] [--image-batch-size 64] [--workers 0 1 2]
    # image stores only, 96x96 and 64x64, plus chunking / codec variants and a collected store:
    python benchmarks/bench_data.py --only-images --image-sizes 96 64 --workers 0 \
        --variants default:lz4 16:lz4 default:none --source-store PATH.zarr

Builds a state store (state (5,), action (2,)) and image stores (img uint8, agent_pos (2,), action (2,); 96x96 and
64x64, ``--image-sizes``) of ``--steps`` steps each in a temporary directory (episodes of 150-250 steps), then
measures:
  - load: ``WindowDataset`` construction (open + whole-array zarr reads + index tables), best of 3;
  - baseline: windows/s of the same window ids gathered with plain numpy (``np.take`` of a precomputed
    (N, horizon) row table, then ``np.take`` per key; ~10x faster than ``arr[rows]``) from in-memory arrays
    (no crop, no float conversion, no torch, no DataLoader);
  - direct: windows/s of ``WindowDataset.sample_batch`` called in a loop (the training loop's 0-worker path);
  - loader: windows/s through ``make_dataloader`` for each worker count (workers=0: the in-process loader, and
    also torch's DataLoader with 0 workers; workers>0: torch DataLoader over batched ``sample_batch``); image
    windows get random crops (below) and float (C, H, W) conversion in every path;
  - per-item: the plain ``Dataset.__getitem__`` + default collate path with 0 workers, for comparison;
  - transport: windows/s of a torch DataLoader whose workers only return a ready batch of the image batch's
    shape (float32, and uint8 for comparison): the cost of moving batches between processes alone;
  - store (images): ``sample_batch`` through the chunk-cached zarr path (``WindowDataset(memory_budget=0,
    cache_bytes=--cache-mib)``, what training does with an image array larger than its memory budget; below the
    budget it loads the array whole and "direct" is its rate), first run (cache filling) and best run, against
    "direct" on the in-memory arrays (both with the random crop and float conversion), for uniformly random windows
    and for training's chunk-local windows (``ChunkLocalWindows``: batches from a rotating pool of half the cache).
Image crops are 84x84 for 96x96 images and 56x56 for 64x64 (side - side // 8). ``--variants ROWS:CODEC`` rewrites
each image store with ``ROWS`` rows per chunk (``default``: ~2 MiB chunks) and Blosc ``lz4`` / ``zstd`` or ``none``
(``default_compressors`` patched here only) and measures numpy / direct / store for each; ``--source-store`` adds
an existing store (read only; its episodes are copied into the variants).
Window geometry is Diffusion Policy's Push-T setting: horizon 16, 2 observation steps, 8 action steps.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from zarr.codecs import BloscCodec

import diffpolicy.data.replay_buffer as replay_buffer_module
from diffpolicy.data.dataset import WindowDataset
from diffpolicy.data.loader import ChunkLocalWindows, make_dataloader
from diffpolicy.data.replay_buffer import ReplayBuffer
from diffpolicy.data.windows import WindowIndex

HORIZON, N_OBS, N_ACT = 16, 2, 8


def build(path: Path, steps: int, image: bool, seed: int = 0, side: int = 96) -> None:
    rng = np.random.default_rng(seed)
    rb = ReplayBuffer.create(path)
    done = 0
    while done < steps:
        n = int(min(rng.integers(150, 251), steps - done))
        ep = {"action": rng.normal(size=(n, 2)).astype(np.float32)}
        if image:
            ep["agent_pos"] = rng.normal(size=(n, 2)).astype(np.float32)
            # smooth-ish content so compression behaves like rendered frames, not like noise
            base = rng.integers(0, 256, (1, side, side, 3), dtype=np.uint8)
            ep["img"] = np.repeat(base, n, axis=0) // 2 + rng.integers(0, 8, (n, side, side, 3), dtype=np.uint8)
        else:
            ep["state"] = rng.normal(size=(n, 5)).astype(np.float32)
        rb.append_episode(ep)
        done += n


def _blosc(cname: str):
    return lambda dt: [BloscCodec(cname=cname, clevel=3 if cname == "zstd" else 5,
                                  shuffle="noshuffle" if dt.itemsize == 1 else "shuffle")]


CODECS = {"lz4": _blosc("lz4"), "zstd": _blosc("zstd"), "none": lambda dt: []}


def rewrite(src: Path, dst: Path, keys: list[str], rows: str, codec: str) -> None:
    """Copy ``keys`` of store ``src`` episode by episode into ``dst`` with ``rows`` rows per image chunk
    (``default``: the package's ~2 MiB) and ``codec`` for every array."""
    rb_in, rb = ReplayBuffer.open(src), ReplayBuffer.create(dst)
    chunks = None if rows == "default" else {"img": int(rows)}
    with mock.patch.object(replay_buffer_module, "default_compressors", lambda dt: CODECS[codec](np.dtype(dt))):
        for i in range(rb_in.n_episodes):
            rb.append_episode(rb_in.get_episode(i, keys), chunks)


# Every rate is the best of this many runs: the machine is shared (2 cores), and contention only slows runs down.
REPEATS = 7


def loader_rate(ds: WindowDataset, batch_size: int, workers: int, n_batches: int, torch_loader: bool = False) -> float:
    loader = make_dataloader(ds, batch_size, num_workers=workers, seed=0, torch_loader=torch_loader)
    it = iter(loader)
    next(it)  # start workers / warm caches outside the timing
    best = 0.0
    for _ in range(REPEATS):
        t0, seen = time.perf_counter(), 0
        while seen < n_batches:
            try:
                next(it)
            except StopIteration:
                it = iter(loader)
                continue
            seen += 1
        best = max(best, seen * batch_size / (time.perf_counter() - t0))
    del it, loader
    return best


def direct_rates(ds: WindowDataset, batch_size: int, n_batches: int,
                 local: ChunkLocalWindows | None = None) -> list[float]:
    """Rates of ``REPEATS`` runs, in order (the first one fills a chunk cache); windows in the baseline's random
    order, or drawn by ``local`` (training's chunk-local sampling) for steps 0, 1, ..."""
    order = np.random.default_rng(0).permutation(len(ds))  # the baseline's window order
    nb = len(ds) // batch_size
    rates = []
    for r in range(REPEATS):
        t0 = time.perf_counter()
        for b in range(n_batches):
            # each run takes the next windows, so a chunk cache is never replayed in the same order
            i = (b + r * n_batches) % nb
            if local is None:
                windows = order[i * batch_size:(i + 1) * batch_size]
            else:
                windows = local.sample(b + r * n_batches, np.random.default_rng(b + r * n_batches), batch_size)
            ds.sample_batch(windows, b)
        rates.append(n_batches * batch_size / (time.perf_counter() - t0))
    return rates


def direct_rate(ds: WindowDataset, batch_size: int, n_batches: int) -> float:
    return max(direct_rates(ds, batch_size, n_batches))


def store_line(path: Path, obs_keys: list[str], crop: tuple[int, int], bs: int, nb: int, cache_mib: int,
               mem: float) -> None:
    """Rate of the chunk-cached store path (``memory_budget=0``) against ``mem``, the in-memory direct rate."""
    def cold() -> WindowDataset:  # a fresh chunk cache for each window order
        return WindowDataset(path, obs_keys, horizon=HORIZON, n_obs_steps=N_OBS, n_action_steps=N_ACT,
                             crop_shape=crop, memory_budget=0, cache_bytes=cache_mib << 20)

    group, pool = cold().chunk_groups()
    for name, local in (("uniform windows", None), ("chunk-local windows", ChunkLocalWindows(group, pool, bs))):
        rates = direct_rates(cold(), bs, nb, local)
        best, mean = max(rates), len(rates) / sum(1 / r for r in rates)  # mean: all windows over all time
        verdict = "within 2x" if mem / best <= 2 else "NOT within 2x"
        print(f"store (chunk-cached zarr, cache {cache_mib} MiB, {name}), batch {bs}: first run {rates[0]:,.0f}, "
              f"mean {mean:,.0f}, best {best:,.0f} windows/s  (in-memory direct/store = {mem / rates[0]:.2f}x first, "
              f"{mem / mean:.2f}x mean, {mem / best:.2f}x best: {verdict})")


def image_store_rows(path: Path, obs_keys: list[str], crop: tuple[int, int], bs: int, nb: int,
                     cache_mib: int) -> None:
    """numpy / in-memory direct / chunk-cached store rates of one image store (``--variants``, ``--source-store``)."""
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    load_s, ds = best_of(lambda: WindowDataset(path, obs_keys, horizon=HORIZON, n_obs_steps=N_OBS,
                                               n_action_steps=N_ACT, crop_shape=crop))
    img = ds.buffer.array("img")
    codecs = [c.to_dict().get("configuration", {}).get("cname", c.to_dict()["name"]) for c in img.compressors]
    print(f"{ds.buffer.n_steps} steps, store {size / 2**20:.1f} MiB, img chunks of {img.chunks[0]} rows, "
          f"compressors {codecs or 'none'}; load {load_s * 1e3:.0f} ms")
    arrays = {k: ds.arrays[k] for k in [*obs_keys, "action"]}
    base = numpy_rate(arrays, obs_keys, ds.buffer.episode_ends, bs, nb)
    mem = direct_rate(ds, bs, nb)
    print(f"plain numpy gather (no crop), batch {bs}: {base:,.0f} windows/s")
    print(f"direct sample_batch (in-memory arrays), batch {bs}: {mem:,.0f} windows/s  (numpy/direct = "
          f"{base / mem:.2f}x)")
    store_line(path, obs_keys, crop, bs, nb, cache_mib, mem)


def per_item_rate(ds: WindowDataset, batch_size: int, n_batches: int) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True)
    t0, seen = time.perf_counter(), 0
    for _ in loader:
        seen += 1
        if seen == n_batches:
            break
    return seen * batch_size / (time.perf_counter() - t0)


def numpy_rate(arrays: dict[str, np.ndarray], obs_keys: list[str], ends: np.ndarray, batch_size: int,
               n_batches: int) -> float:
    idx = WindowIndex(ends, HORIZON, N_OBS - 1, N_ACT - 1)
    table = np.clip(idx.start[:, None] + np.arange(HORIZON), idx.first[:, None], idx.last[:, None])
    order = np.random.default_rng(0).permutation(len(idx))
    nb = len(idx) // batch_size
    best = 0.0
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for b in range(n_batches):
            w = order[(b % nb) * batch_size:((b % nb) + 1) * batch_size]
            rows = table.take(w, axis=0)
            for k in obs_keys:
                arrays[k].take(rows[:, :N_OBS], axis=0)
            arrays["action"].take(rows, axis=0)
        best = max(best, n_batches * batch_size / (time.perf_counter() - t0))
    return best


class _ReadyBatch(torch.utils.data.Dataset):
    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype):
        self.x = torch.zeros(shape, dtype=dtype)

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x.clone()


def transport_rate(shape: tuple[int, ...], dtype: torch.dtype, workers: int, n_batches: int) -> float:
    loader = torch.utils.data.DataLoader(_ReadyBatch(shape, dtype), batch_size=None, num_workers=workers,
                                         persistent_workers=True)
    it = iter(loader)
    next(it)
    best = 0.0
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        best = max(best, n_batches * shape[0] / (time.perf_counter() - t0))
    del it, loader
    return best


def best_of(fn, n=3):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=25_000)
    p.add_argument("--batch-size", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--image-batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--image-sizes", type=int, nargs="+", default=[96, 64], help="image sides (crop: side - side//8)")
    p.add_argument("--only-images", action="store_true", help="skip the state store")
    p.add_argument("--cache-mib", type=int, default=512, help="chunk cache of the store path (package default 512)")
    p.add_argument("--variants", nargs="*", default=[],
                   help="ROWS:CODEC image store variants (ROWS an int or 'default'; CODEC lz4, zstd or none)")
    p.add_argument("--source-store", default=None, help="an existing image store (img, agent_pos, action) to add")
    p.add_argument("--state-batches", type=int, default=400, help="batches per timed run (state)")
    p.add_argument("--image-batches", type=int, default=60, help="batches per timed run (image)")
    args = p.parse_args()
    torch.set_num_threads(1)
    stores = ([] if args.only_images else [("state", False, 0)]) + [(f"image {s}x{s}", True, s)
                                                                    for s in args.image_sizes]
    with tempfile.TemporaryDirectory() as tmp:
        for name, image, side in stores:
            path = Path(tmp) / f"{name.split()[0]}{side or ''}.zarr"
            t0 = time.perf_counter()
            build(path, args.steps, image, side=side or 96)
            build_s = time.perf_counter() - t0
            obs_keys = ["img", "agent_pos"] if image else ["state"]
            crop = (side - side // 8,) * 2 if image else None
            sizes = [args.image_batch_size] if image else args.batch_size
            nb = args.image_batches if image else args.state_batches
            load_s, ds = best_of(lambda: WindowDataset(path, obs_keys, horizon=HORIZON, n_obs_steps=N_OBS,
                                                       n_action_steps=N_ACT, crop_shape=crop))
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            print(f"\n== {name}: {ds.buffer.n_steps} steps, {ds.buffer.n_episodes} episodes, {len(ds)} windows, "
                  f"store {size / 2**20:.1f} MiB (written in {build_s:.1f} s)")
            print(f"load (open + read arrays + index tables), best of 3: {load_s * 1e3:.0f} ms")
            arrays = {k: ds.arrays[k] for k in [*obs_keys, "action"]}
            for bs in sizes:
                base = numpy_rate(arrays, obs_keys, ds.buffer.episode_ends, bs, nb)
                print(f"plain numpy gather, batch {bs}: {base:,.0f} windows/s")
                rate = direct_rate(ds, bs, nb)
                print(f"direct sample_batch, batch {bs}: {rate:,.0f} windows/s  (numpy/direct = {base / rate:.2f}x)")
                if image:
                    store_line(path, obs_keys, crop, bs, nb, args.cache_mib, rate)
                for w in args.workers:
                    rate = loader_rate(ds, bs, w, nb)
                    kind = "InProcessLoader" if w == 0 else "torch DataLoader"
                    print(f"make_dataloader workers={w} ({kind}), batch {bs}: {rate:,.0f} windows/s  "
                          f"(numpy/loader = {base / rate:.2f}x)")
                    if w == 0:
                        rate = loader_rate(ds, bs, 0, nb, torch_loader=True)
                        print(f"make_dataloader workers=0 torch_loader=True, batch {bs}: {rate:,.0f} windows/s  "
                              f"(numpy/loader = {base / rate:.2f}x)")
            bs = sizes[0]
            rate = per_item_rate(ds, bs, max(5, nb // 10))
            print(f"per-item Dataset + default collate, workers=0, batch {bs}: {rate:,.0f} windows/s "
                  f"(numpy/loader = {base / rate:.1f}x)")
            if image:
                shape = (bs, N_OBS, 3, *crop)
                for dtype in (torch.float32, torch.uint8):
                    for w in [w for w in args.workers if w > 0]:
                        rate = transport_rate(shape, dtype, w, nb)
                        print(f"transport only, ready {str(dtype)[6:]} batch {shape}, workers={w}: "
                              f"{rate:,.0f} windows/s")
                for variant in args.variants:
                    rows, codec = variant.split(":")
                    vpath = Path(tmp) / f"{path.stem}_{rows}_{codec}.zarr"
                    rewrite(path, vpath, [*obs_keys, "action"], rows, codec)
                    print(f"-- {name}, variant {variant}:")
                    image_store_rows(vpath, obs_keys, crop, bs, nb, args.cache_mib)
                    shutil.rmtree(vpath)
            del ds, arrays
            shutil.rmtree(path)
        if args.source_store:
            src = Path(args.source_store)
            side = ReplayBuffer.open(src).shapes["img"][1]
            crop, obs_keys = (side - side // 8,) * 2, ["img", "agent_pos"]
            for variant in ["source", *args.variants]:
                print(f"\n== source store {src} ({side}x{side}), {variant}:")
                vpath = src
                if variant != "source":
                    rows, codec = variant.split(":")
                    vpath = Path(tmp) / f"source_{rows}_{codec}.zarr"
                    rewrite(src, vpath, [*obs_keys, "action"], rows, codec)
                image_store_rows(vpath, obs_keys, crop, args.image_batch_size, args.image_batches, args.cache_mib)


if __name__ == "__main__":
    main()
