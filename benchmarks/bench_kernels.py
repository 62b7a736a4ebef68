"""Convolution weight gradients on CPU, shape by shape: oneDNN's (``convolution_backward`` asked for the weight
only) against :class:`~diffpolicy.nets.unet1d.TapWeightGradConv1d`'s per-tap products, in the ``(B, C, T)`` layout
and the trunk's channels-last ``(B, C, 1, T)``, float32 and bf16; with the forward pass for scale and whether
``tap_weight_grad_pays`` picks the taps.

    python benchmarks/bench_kernels.py

Median of 30 calls after 5 warm-up calls, 2 threads. Results: ``benchmarks/results/core.md``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from diffpolicy.nets.unet1d import TapWeightGradConv1d, tap_weight_grad_pays

# (batch, C_in, C_out, length, kernel): the U-Nets' convolutions at horizon 16 (widths up to 1024) and 8
CONV_SHAPES = [(128, 64, 64, 2, 5), (128, 128, 128, 2, 5), (256, 128, 128, 4, 5), (256, 256, 256, 4, 5),
               (256, 64, 64, 4, 5), (256, 128, 128, 8, 5), (256, 64, 64, 16, 5), (256, 512, 512, 8, 5),
               (256, 1024, 1024, 4, 5), (256, 2048, 512, 4, 5), (256, 1024, 256, 8, 5), (256, 2048, 512, 4, 1)]
MISH_SHAPES = [(256, 256, 1, 4), (256, 64, 1, 16), (256, 1024, 4)]


def median_ms(fn, reps: int = 30) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[reps // 2] * 1e3


def conv_row(shape, channels_last: bool, dtype) -> str:
    B, c_in, c_out, T, k = shape
    x = torch.randn(B, c_in, T, dtype=dtype)
    if channels_last:
        x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(c_out, c_in, k) * 0.02).to(dtype).requires_grad_()
    out = TapWeightGradConv1d.apply(x, w, None, k // 2)
    g = torch.randn_like(out)
    w_nd = w.view(c_out, c_in, *(1,) * (x.ndim - 3), k)
    nd, pad = x.ndim - 2, [0] * (x.ndim - 3) + [k // 2]
    onednn = lambda: torch.ops.aten.convolution_backward(  # noqa: E731
        g, x, w_nd.detach(), None, [1] * nd, pad, [1] * nd, False, [0] * nd, 1, [False, True, False])
    taps = lambda: torch.autograd.grad(TapWeightGradConv1d.apply(x, w, None, k // 2), w, g)  # noqa: E731
    fwd = median_ms(lambda: TapWeightGradConv1d.apply(x, w.detach(), None, k // 2))
    a, b = median_ms(onednn), median_ms(taps) - fwd  # taps: forward + weight gradient, minus the forward
    layout = "(B, C, 1, T)" if channels_last else "(B, C, T)"
    dt = str(dtype).removeprefix("torch.")
    return (f"| {layout} | {dt} | {B} | {c_in} | {c_out} | {T} | {k} | {fwd:.2f} | {a:.2f} | {b:.2f} | {b / a:.2f} | "
            f"{'yes' if tap_weight_grad_pays(c_in, k, T, dtype) else 'no'} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"# bench_kernels: torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| layout | dtype | B | C_in | C_out | T | K | forward ms | oneDNN weight grad ms | tap weight grad ms "
          "| taps / oneDNN | tap_weight_grad_pays |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for channels_last in (False, True):
        for dtype in (torch.float32, torch.bfloat16):
            for shape in CONV_SHAPES:
                if channels_last and shape[1] > 512:
                    continue  # the channels-last trunk is for nets up to 256 channels
                print(conv_row(shape, channels_last, dtype), flush=True)


if __name__ == "__main__":
    main()
