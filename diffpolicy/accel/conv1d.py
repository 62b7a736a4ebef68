"""1D convolutions of the U-Net trunk with CPU fast paths; same parameters and state-dict keys as torch's.

:func:`diffpolicy.accel.accelerate` turns a built net's ``nn.Conv1d`` / ``nn.ConvTranspose1d`` modules into
:class:`FastConv1d` / :class:`FastConvTranspose1d` (a class swap: parameters, state-dict keys and outputs stay):

- batch-1 sampling: small inputs run as one matrix product of unfolded windows (torch's conv picks an unblocked
  im2col path for one-sample inputs);
- float32 batches (training, batched evaluation): :class:`WinogradConv1d` computes each tile of ``m`` outputs with
  ``m + K - 1`` matrix products instead of ``m K``, forward and backward;
- bf16 training where Winograd does not serve: :class:`TapWeightGradConv1d`, whose weight gradient skips the zero
  padding.

Each path takes the ``(B, C, T)`` layout and the trunk's channels-last ``(B, C, 1, T)``; where none pays, torch's
oneDNN convolution runs. Timings behind each rule: ``python benchmarks/bench_kernels.py``
(``benchmarks/results/core.md``).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

# Inputs of at most this many positions (batch x horizon) take the matrix-product convolution below: at batch 1 it is
# 1.6-2.1x faster than torch's conv1d, which picks its unblocked im2col path for one-sample inputs (2-core AMD EPYC,
# benchmarks/results/core.md). Larger inputs (training batches) take Winograd, the tap weight gradient or oneDNN.
GEMM_CONV_MAX_ROWS = 128

# Outputs per Winograd tile, by kernel size: a tile of m outputs reads m + K - 1 inputs ("points"). More points save
# more products but lose float32 accuracy; with 8 points (0, +-1, +-2, +-1/2 and infinity) outputs and gradients
# stay near 1e-6 relative error, 3-10x a direct convolution's (tests/test_nets_conv1d.py bounds it).
WINOGRAD_TILE = {3: 4, 5: 4, 7: 2}
WINOGRAD_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2))


@functools.cache
def winograd_transforms(kernel: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Toom-Cook matrices of F(m, K) in float64, ``m = WINOGRAD_TILE[K]``, ``n = m + K - 1``: ``AT`` ``(m, n)``,
    ``G`` ``(n, K)``, ``BT`` ``(n, n)``, such that for a tile ``d`` ``(n,)`` and a kernel ``w`` ``(K,)`` the
    correlation ``y[t] = sum_j w[j] d[t + j]``, ``t < m``, is ``AT @ ((G @ w) * (BT @ d))``."""
    m = WINOGRAD_TILE[kernel]
    points = [Fraction(p) for p in WINOGRAD_POINTS[: m + kernel - 2]]  # and infinity: each matrix's last row/column

    def poly(roots):  # coefficients of prod (x - r), lowest power first
        c = [Fraction(1)]
        for r in roots:
            c = [a - r * b for a, b in zip([Fraction(0)] + c, c + [Fraction(0)])]
        return c

    at = [[p ** i for p in points] + [int(i == m - 1)] for i in range(m)]
    g = [[p ** j / math.prod(p - q for q in points if q != p) for j in range(kernel)] for p in points]
    g.append([0] * (kernel - 1) + [1])
    bt = [poly([q for q in points if q != p]) + [0] for p in points] + [poly(points)]
    return tuple(torch.tensor([[float(v) for v in row] for row in a], dtype=torch.float64) for a in (at, g, bt))


def winograd_pays(c_in: int, c_out: int, kernel: int, length: int, dtype: torch.dtype, batch: int) -> bool:
    """Whether :class:`WinogradConv1d` beats torch's convolution on a ``(batch, c_in, length)`` input in ``dtype``:
    float32 or float64 only, kernels of :data:`WINOGRAD_TILE`, from 128 channels; where its products
    (``ceil(length / m) (m + K - 1)``) are at most 2/3 of the (output, tap) pairs that meet real input; and with
    enough tiles (``batch ceil(length / m)`` rows per product: 64 from 256 channels, 256 below) to repay transforming
    the kernel at every call.

    Forward + backward against oneDNN (``python benchmarks/bench_kernels.py``, 2-core AMD EPYC;
    ``benchmarks/results/core.md``): at batch 256, 0.44-0.77x from 256 channels at lengths 4-16, both layouts; 0.7-1.1x
    at 128 channels (near even inside a whole step); 0.9-1.7x at 64 channels; 1.0-1.6x at length 2 (4 of its 10
    output-tap pairs meet the input). By rows from 256 channels: 0.6-0.9x at 64, 0.7-1.4x at 16-32.
    """
    if dtype not in (torch.float32, torch.float64) or kernel not in WINOGRAD_TILE or min(c_in, c_out) < 128:
        return False
    m, pad = WINOGRAD_TILE[kernel], kernel // 2
    tiles = -(-length // m)
    direct = sum(max(0, min(length, length + pad - j) - max(0, pad - j)) for j in range(kernel))
    return 3 * tiles * (m + kernel - 1) <= 2 * direct and batch * tiles >= (64 if min(c_in, c_out) >= 256 else 256)


def time_major(x: torch.Tensor) -> torch.Tensor:
    """A ``(T, B, C)`` view of ``(B, C, T)`` or ``(B, C, 1, T)``."""
    return (x.select(2, 0) if x.ndim == 4 else x).permute(2, 0, 1)


def new_in_layout(like: torch.Tensor, ndim: int, batch: int, channels: int, length: int) -> torch.Tensor:
    """An uninitialised ``(B, C, T)`` tensor, or channels-last ``(B, C, 1, T)`` if ``ndim == 4``, with ``like``'s
    dtype and device."""
    if ndim == 4:
        return torch.empty(batch, channels, 1, length, dtype=like.dtype, device=like.device,
                           memory_format=torch.channels_last)
    return like.new_empty(batch, channels, length)


class WinogradConv1d(torch.autograd.Function):
    """Stride-1 'same' convolution (padding ``K // 2``) by Winograd's minimal filtering F(m, K), on ``(B, C, T)``
    or the trunk's channels-last ``(B, C, 1, T)``.

    The padded input is cut into tiles of ``n = m + K - 1`` positions (stride ``m``); at each of the ``n`` points
    the tiles' transformed inputs ``(B, C_in)`` meet the transformed kernel ``(C_in, C_out)`` in one matrix product,
    so ``m`` outputs take ``n`` products instead of ``m K`` (K = 5, m = 4: 8 instead of 20, or 14 at length 4 where
    padding leaves taps out). The backward pass is the same products transposed. The work runs time-major,
    ``(T, B, C)``, where each transform is one small matrix times a contiguous block.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        """``x`` ``(B, C_in, T)`` or ``(B, C_in, 1, T)``, ``weight`` ``(C_out, C_in, K)`` -> ``x``'s layout with
        ``C_out`` channels."""
        (c_out, c_in, k), B, T = weight.shape, x.shape[0], x.shape[-1]
        m, pad = WINOGRAD_TILE[k], k // 2
        n, tiles = m + k - 1, -(-T // m)
        at, g, bt = (a.to(x) for a in winograd_transforms(k))
        padded = x.new_zeros(tiles * m + k - 1, B, c_in)
        padded[pad:pad + T] = time_major(x)
        windows = padded.as_strided((tiles, n, B * c_in), (m * B * c_in, B * c_in, 1))
        v = torch.matmul(bt, windows).view(tiles, n, B, c_in)
        u = (g @ weight.permute(2, 0, 1).reshape(k, -1)).view(n, c_out, c_in)
        prod = x.new_empty(tiles, n, B, c_out)
        for i in range(tiles):
            torch.bmm(v[i], u.transpose(1, 2), out=prod[i])
        y = torch.matmul(at, prod.view(tiles, n, B * c_out)).view(tiles * m, B, c_out)[:T]
        out = new_in_layout(y, x.ndim, B, c_out, T)
        if bias is None:
            time_major(out).copy_(y)
        else:
            torch.add(y, bias, out=time_major(out))
        ctx.save_for_backward(v, u)
        ctx.ndim, ctx.kernel, ctx.length, ctx.has_bias = x.ndim, k, T, bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        v, u = ctx.saved_tensors
        (tiles, n, B, c_in), c_out, k, T = v.shape, u.shape[1], ctx.kernel, ctx.length
        m, pad = WINOGRAD_TILE[k], k // 2
        at, g, bt = (a.to(grad) for a in winograd_transforms(k))
        grad_t = grad.new_zeros(tiles * m, B, c_out)
        grad_t[:T] = time_major(grad)
        grad_prod = torch.matmul(at.t(), grad_t.view(tiles, m, B * c_out)).view(tiles, n, B, c_out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_v = grad.new_empty(tiles, n, B, c_in)
            for i in range(tiles):
                torch.bmm(grad_prod[i], u, out=grad_v[i])
            grad_windows = torch.matmul(bt.t(), grad_v.view(tiles, n, B * c_in))  # (tiles, n, B C_in)
            grad_padded = grad_windows[0]
            if tiles > 1:  # overlap-add of the tiles' windows
                grad_padded = grad.new_zeros(tiles * m + k - 1, B * c_in)
                for i in range(tiles):
                    grad_padded[i * m:i * m + n] += grad_windows[i]
            grad_x = new_in_layout(grad_t, ctx.ndim, B, c_in, T)
            time_major(grad_x).copy_(grad_padded[pad:pad + T].view(T, B, c_in))
        if ctx.needs_input_grad[1]:
            grad_u = torch.bmm(grad_prod[0].transpose(1, 2), v[0])  # (n, C_out, C_in)
            for i in range(1, tiles):
                grad_u.baddbmm_(grad_prod[i].transpose(1, 2), v[i])
            grad_w = (g.t() @ grad_u.view(n, -1)).view(k, c_out, c_in).permute(1, 2, 0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_t.view(-1, c_out).sum(0)
        return grad_x, grad_w, grad_b


def tap_weight_grad_pays(c_in: int, kernel: int, length: int, dtype: torch.dtype) -> bool:
    """Whether :class:`TapWeightGradConv1d` beats oneDNN's weight gradient for a ``(B, c_in, length)`` input computed
    in ``dtype``.

    ``python benchmarks/bench_kernels.py`` on a 2-core AMD EPYC (benchmarks/results/core.md), taps /
    oneDNN time: for ``c_in * kernel >= 2560`` 0.3-1.0x in float32 and 0.2-0.6x in bf16 (lengths 4-8); at 256
    channels, length 4, 0.3-0.7x; in bf16 0.35-0.8x from 128 channels at lengths 2-4 (64 channels: 0.7-1.1x); in
    float32 below 256 channels 0.7-1.8x, and at length 16 on 64 channels 1.3-2.3x.
    """
    work = c_in * kernel
    return work >= 2560 or (length <= 4 and work >= (1280 if dtype == torch.float32 else 320))


class TapWeightGradConv1d(torch.autograd.Function):
    """Stride-1 zero-padded convolution, on ``(B, C, T)`` or the trunk's channels-last ``(B, C, 1, T)``, whose
    weight gradient is a sum of per-tap matrix products over the positions where each tap meets real input,
    skipping the padding (30-40% of a kernel-5 product at lengths 2-4).

    oneDNN's own weight gradient for short, wide sequences takes 3-6x its forward pass (batch 256, length 4: 1024 to
    2048 input channels, 256 channels channels-last in bf16; ``benchmarks/bench_kernels.py``); the input gradient
    stays with oneDNN, which is as fast at it as at the forward pass.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int):
        """``x`` ``(B, C_in, T)`` or ``(B, C_in, 1, T)``, ``weight`` ``(C_out, C_in, K)`` -> ``x``'s layout with
        ``C_out`` channels and length ``T + 2 padding - K + 1``."""
        if torch.is_autocast_enabled(x.device.type):  # keep what the convolution computes in, for the backward
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, bias = (v.to(dtype) if v is not None else None for v in (x, weight, bias))
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        if x.ndim == 4:
            return F.conv2d(x, weight.unsqueeze(2), bias, 1, (0, padding))
        return F.conv1d(x, weight, bias, padding=padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        pad, (c_out, c_in, k), t_in, nd = ctx.padding, weight.shape, x.shape[-1], x.ndim - 2
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = None
        # The bias gradient is a plain sum (accumulated in at least float32 under bf16 autocast): asked of oneDNN
        # without the weight gradient, it makes the call 4x slower.
        sum_dtype = torch.promote_types(grad.dtype, torch.float32)
        grad_b = grad.sum((0, *range(2, x.ndim)), dtype=sum_dtype) if want_b and ctx.has_bias else None
        if want_x:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight.view(c_out, c_in, *(1,) * (nd - 1), k), None, [1] * nd, [0] * (nd - 1) + [pad],
                [1] * nd, False, [0] * nd, 1, [True, False, False])[0]
        if want_w:
            # (T, B, C) copies make each tap's run of positions one contiguous (positions x batch, C) matrix
            xt, gt = (time_major(v).contiguous() for v in (x, grad))
            t_out = gt.shape[0]
            grad_w, tap = grad.new_empty(c_out, c_in, k), grad.new_empty(c_out, c_in)
            for j in range(k):
                lo, hi = max(0, pad - j), min(t_out, t_in + pad - j)  # outputs whose tap j lands inside x
                if hi > lo:
                    torch.mm(gt[lo:hi].reshape(-1, c_out).t(), xt[lo + j - pad:hi + j - pad].reshape(-1, c_in),
                             out=tap)
                # a strided copy per tap: 3x faster than permuting a (K, C_out, C_in) stack at the end
                grad_w[:, :, j] = tap if hi > lo else 0
        return grad_x, grad_w, grad_b, None


class FastConv1d(nn.Conv1d):
    """``nn.Conv1d`` (zero padding) that, for small inputs, runs as one product of unfolded windows
    ``(B T_out, C_in K) @ (C_in K, C_out)``, for large CPU inputs takes :class:`WinogradConv1d` or (training only)
    :class:`TapWeightGradConv1d` where it pays, and also takes the trunk's ``(B, C, 1, T)`` channels-last layout.
    Same parameters and state-dict keys as ``nn.Conv1d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (k,), (s,) = self.kernel_size, self.stride
        B, C, T = x.shape[0], x.shape[1], x.shape[-1]
        simple = (not isinstance(self.padding, str) and self.dilation == (1,) and self.groups == 1
                  and self.padding_mode == "zeros")
        small = x.ndim == 3 and B * T <= GEMM_CONV_MAX_ROWS
        if simple and not small and s == 1 and x.device.type == "cpu":
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
            if self.padding[0] == k // 2 and winograd_pays(C, self.out_channels, k, T, dtype, B):
                return WinogradConv1d.apply(x, self.weight, self.bias)
            if self.weight.requires_grad and torch.is_grad_enabled() and tap_weight_grad_pays(C, k, T, dtype):
                return TapWeightGradConv1d.apply(x, self.weight, self.bias, self.padding[0])
        if x.ndim == 4:
            return F.conv2d(x, self.weight.unsqueeze(2), self.bias, (1, self.stride[0]), (0, self.padding[0]),
                            (1, self.dilation[0]), self.groups)
        if not (simple and small):
            return super().forward(x)
        pad = self.padding[0]
        # (B, C, T + 2 pad) -> (B, C, T_out, k) windows -> (B, T_out, C, k) rows, matching weight's (C_out, C, k)
        windows = F.pad(x, (pad, pad)).unfold(2, k, s) if (k, s, pad) != (1, 1, 0) else x.unsqueeze(-1)
        t_out = windows.shape[2]
        cols = windows.transpose(1, 2).reshape(B * t_out, C * k)
        w = self.weight.view(self.out_channels, C * k).t()
        out = torch.addmm(self.bias, cols, w) if self.bias is not None else cols @ w
        return out.view(B, t_out, self.out_channels).transpose(1, 2)


class FastConvTranspose1d(nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` that, for small inputs, runs as one matrix product ``(B T, C_in) @ (C_in, C_out K)``
    followed by an overlap-add of the K taps (``F.fold``): torch's own batch-1 path (``slow_conv_transpose2d``)
    took 10% of a (256,512,1024) forward. Also takes the trunk's ``(B, C, 1, T)`` channels-last layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (k,), (s,), (pad,), (op,) = self.kernel_size, self.stride, self.padding, self.output_padding
        if x.ndim == 4:
            return F.conv_transpose2d(x, self.weight.unsqueeze(2), self.bias, (1, s), (0, pad), (0, op),
                                      self.groups, (1, self.dilation[0]))
        B, C, T = x.shape
        if B * T > GEMM_CONV_MAX_ROWS or self.dilation != (1,) or self.groups != 1 or op != 0:
            return super().forward(x)
        taps = x.transpose(1, 2).reshape(B * T, C) @ self.weight.view(C, -1)  # (B T, C_out k), C_out-major
        t_out = (T - 1) * s - 2 * pad + k
        out = F.fold(taps.view(B, T, -1).transpose(1, 2), (1, t_out), (1, k), padding=(0, pad), stride=(1, s))
        out = out.view(B, self.out_channels, t_out)
        return out + self.bias[:, None] if self.bias is not None else out


