"""The U-Net's convolutions on CPU, shape by shape, in the ``(B, C, T)`` layout and the trunk's channels-last
``(B, C, 1, T)``:

1. weight gradients, float32 and bf16: oneDNN's (``convolution_backward`` asked for the weight only) against
   :class:`~diffpolicy.accel.conv1d.TapWeightGradConv1d`'s per-tap products, with the forward pass for scale and
   whether ``tap_weight_grad_pays`` picks the taps;
2. forward and forward + backward in float32: torch's convolution (oneDNN) against
   :class:`~diffpolicy.accel.conv1d.WinogradConv1d`, and whether ``winograd_pays`` picks Winograd.

    python benchmarks/bench_kernels.py

Median of 30 calls after 5 warm-up calls, 2 threads. Results: ``benchmarks/results/core.md``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from diffpolicy.accel.conv1d import TapWeightGradConv1d, WinogradConv1d, tap_weight_grad_pays, winograd_pays

# (batch, C_in, C_out, length, kernel): the U-Nets' convolutions at horizon 16 (widths up to 1024) and 8
CONV_SHAPES = [(128, 64, 64, 2, 5), (128, 128, 128, 2, 5), (256, 128, 128, 4, 5), (256, 256, 256, 4, 5),
               (256, 64, 64, 4, 5), (256, 128, 128, 8, 5), (256, 64, 64, 16, 5), (256, 512, 512, 8, 5),
               (256, 1024, 1024, 4, 5), (256, 2048, 512, 4, 5), (256, 1024, 256, 8, 5), (256, 2048, 512, 4, 1),
               (256, 256, 256, 16, 5), (256, 512, 128, 4, 5)]
# smaller batches, for the rows (batch x tiles) below which Winograd's per-call kernel transform does not pay
WINOGRAD_BATCH_SHAPES = [(b, c, c, t, 5) for c, t in ((1024, 4), (512, 8), (256, 4), (256, 16), (128, 8))
                         for b in (16, 32, 64, 128)]


def median_ms(fn, reps: int = 30) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[reps // 2] * 1e3


def trunk_input(B: int, c_in: int, T: int, channels_last: bool, dtype=torch.float32) -> tuple[torch.Tensor, str]:
    """A random ``(B, C, T)`` input, or the trunk's channels-last ``(B, C, 1, T)``, and its layout's name."""
    x = torch.randn(B, c_in, T, dtype=dtype)
    if channels_last:
        return x.unsqueeze(2).contiguous(memory_format=torch.channels_last), "(B, C, 1, T)"
    return x, "(B, C, T)"


def conv_row(shape, channels_last: bool, dtype) -> str:
    B, c_in, c_out, T, k = shape
    x, layout = trunk_input(B, c_in, T, channels_last, dtype)
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
    dt = str(dtype).removeprefix("torch.")
    return (f"| {layout} | {dt} | {B} | {c_in} | {c_out} | {T} | {k} | {fwd:.2f} | {a:.2f} | {b:.2f} | {b / a:.2f} | "
            f"{'yes' if tap_weight_grad_pays(c_in, k, T, dtype) else 'no'} |")


def winograd_row(shape, channels_last: bool) -> str:
    B, c_in, c_out, T, k = shape
    x, layout = trunk_input(B, c_in, T, channels_last)
    x.requires_grad_()
    w, b = (torch.randn(c_out, c_in, k) * 0.02).requires_grad_(), torch.zeros(c_out, requires_grad=True)
    if channels_last:
        conv = lambda: F.conv2d(x, w.unsqueeze(2), b, padding=(0, k // 2))  # noqa: E731
    else:
        conv = lambda: F.conv1d(x, w, b, padding=k // 2)  # noqa: E731
    wino = lambda: WinogradConv1d.apply(x, w, b)  # noqa: E731
    g = torch.randn_like(conv())
    with torch.no_grad():
        fwd = [median_ms(f) for f in (conv, wino)]
    both = [median_ms(lambda f=f: torch.autograd.grad(f(), (x, w, b), g)) for f in (conv, wino)]
    return (f"| {layout} | {B} | {c_in} | {c_out} | {T} | {k} | {fwd[0]:.2f} | {fwd[1]:.2f} | {both[0]:.2f} | "
            f"{both[1]:.2f} | {both[1] / both[0]:.2f} | "
            f"{'yes' if winograd_pays(c_in, c_out, k, T, torch.float32, B) else 'no'} |")


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
    print("\nfloat32, forward and forward + all gradients (input, weight, bias)\n")
    print("| layout | B | C_in | C_out | T | K | oneDNN forward ms | Winograd forward ms | oneDNN fwd+bwd ms "
          "| Winograd fwd+bwd ms | Winograd / oneDNN (fwd+bwd) | winograd_pays |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for channels_last in (False, True):
        for shape in CONV_SHAPES:
            if shape[4] == 1 or (channels_last and shape[1] > 512):
                continue
            print(winograd_row(shape, channels_last), flush=True)
    for shape in WINOGRAD_BATCH_SHAPES:
        print(winograd_row(shape, False), flush=True)


if __name__ == "__main__":
    main()
