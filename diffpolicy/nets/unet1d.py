"""Conditional 1D temporal U-Net for action chunks (the Diffusion Policy architecture).

Residual blocks of (Conv1d, GroupNorm, Mish) x 2, each modulated by FiLM (per-channel scale and bias) computed from
``Mish([time_embedding, global_cond])``. All blocks' FiLM projections are one fused ``Linear`` (``self.film``), and
it splits into a time part and a condition part, so a sampler can compute the condition part once per chunk
(:meth:`ConditionalUnet1D.conditioned`) and pay only the small time part at each step.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import TimeEmbedding


# Inputs of at most this many positions (batch x horizon) take the matrix-product convolution below: at batch 1 it is
# 1.6-2.1x faster than torch's conv1d, which picks its unblocked im2col path for one-sample inputs (2-core AMD EPYC,
# benchmarks/results/core.md). Larger inputs (training batches) take torch's oneDNN path.
GEMM_CONV_MAX_ROWS = 128
# On CPU, large inputs of U-Nets no wider than this run the trunk on (B, C, 1, T) tensors in channels_last memory
# format, where oneDNN's convolutions and GroupNorm skip layout reorders. Float32 training step on the same EPYC, one
# thread: 1.16x faster at (64,128,256), 1.32x at (32,64,128); but 0.94x at (256,512,1024); bf16 autocast: no change.
CHANNELS_LAST_MAX_WIDTH = 256


def tap_weight_grad_pays(c_in: int, kernel: int, length: int, dtype: torch.dtype) -> bool:
    """Whether :class:`TapWeightGradConv1d` beats oneDNN's weight gradient for a ``(B, c_in, length)`` input computed
    in ``dtype``.

    ``python benchmarks/bench_kernels.py`` on a 2-core AMD EPYC (benchmarks/results/core.md, session 9), taps /
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
            xt, gt = (v.flatten(2).permute(2, 0, 1).contiguous() for v in (x, grad))
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


class Conv1d(nn.Conv1d):
    """``nn.Conv1d`` (zero padding) that, for small inputs, runs as one product of unfolded windows
    ``(B T_out, C_in K) @ (C_in K, C_out)``, for large CPU inputs that need a weight gradient takes
    :class:`TapWeightGradConv1d` where it pays, and also takes the trunk's ``(B, C, 1, T)`` channels-last layout.
    Same parameters and state-dict keys as ``nn.Conv1d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (k,), (s,) = self.kernel_size, self.stride
        B, C, T = x.shape[0], x.shape[1], x.shape[-1]
        simple = (not isinstance(self.padding, str) and self.dilation == (1,) and self.groups == 1
                  and self.padding_mode == "zeros")
        small = x.ndim == 3 and B * T <= GEMM_CONV_MAX_ROWS
        if simple and not small and s == 1 and x.device.type == "cpu" and self.weight.requires_grad \
                and torch.is_grad_enabled():
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
            if tap_weight_grad_pays(C, k, T, dtype):
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


class ConvTranspose1d(nn.ConvTranspose1d):
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


class ConvBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish on ``(B, C, T)`` or ``(B, C, 1, T)``; 'same' padding."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, groups: int):
        if c_out % groups:
            raise ValueError(f"GroupNorm: {c_out} channels are not divisible into {groups} groups")
        super().__init__(Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.GroupNorm(groups, c_out),
                         nn.Mish())


class FiLMResBlock(nn.Module):
    """Residual conv block whose first conv's output is modulated as ``scale * h + bias``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, groups: int):
        super().__init__()
        self.conv1 = ConvBlock(c_in, c_out, kernel_size, groups)
        self.conv2 = ConvBlock(c_out, c_out, kernel_size, groups)
        self.skip = Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.film_dim = 2 * c_out

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C_in, T)`` or ``(B, C_in, 1, T)``, ``film`` ``(B, 2 C_out)`` -> ``x``'s layout, ``C_out``."""
        scale, bias = film.view(*film.shape, *(1,) * (x.ndim - 2)).chunk(2, dim=1)
        return self.conv2(torch.addcmul(bias, scale, self.conv1(x))) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Denoiser network ``(B, T, D) -> (B, T, D)`` conditioned on time and an observation embedding.

    Args:
        action_dim: ``D``, the per-step dimension of the denoised sequence.
        global_cond_dim: size of the global condition vector (0 for none).
        local_cond_dim: per-timestep condition ``(B, T, local_cond_dim)`` added at full resolution (0 for none).
        down_dims: channel widths per level; the horizon must be divisible by ``2 ** (len(down_dims) - 1)``.
        time_embed_dim: size of the diffusion-time embedding.
        channels_last: run the trunk on ``(B, C, 1, T)`` channels_last tensors for large CPU inputs (training
            batches); ``None``: when no level is wider than ``CHANNELS_LAST_MAX_WIDTH``. Outputs are the same.
    """

    def __init__(self, action_dim: int, global_cond_dim: int = 0, local_cond_dim: int = 0,
                 down_dims: Sequence[int] = (256, 512, 1024), kernel_size: int = 5, n_groups: int = 8,
                 time_embed_dim: int = 256, channels_last: bool | None = None):
        super().__init__()
        down_dims = list(down_dims)
        self.channels_last = max(down_dims) <= CHANNELS_LAST_MAX_WIDTH if channels_last is None else channels_last
        self.levels = len(down_dims)
        self.global_cond_dim, self.local_cond_dim = global_cond_dim, local_cond_dim
        self.time_embed = TimeEmbedding(time_embed_dim)
        self.time_embed_dim = time_embed_dim
        block = lambda i, o: FiLMResBlock(i, o, kernel_size, n_groups)  # noqa: E731

        dims = [action_dim] + down_dims
        self.down = nn.ModuleList()
        for level, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = level == self.levels - 1
            self.down.append(nn.ModuleList([block(c_in, c_out), block(c_out, c_out),
                                            nn.Identity() if last else Conv1d(c_out, c_out, 3, 2, 1)]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(list(zip(down_dims[:-1], down_dims[1:]))):
            self.up.append(nn.ModuleList([block(c_out * 2, c_in), block(c_in, c_in),
                                          ConvTranspose1d(c_in, c_in, 4, 2, 1)]))
        self.final = nn.Sequential(ConvBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   Conv1d(down_dims[0], action_dim, 1))
        self.local = (nn.Sequential(nn.Linear(local_cond_dim, down_dims[0]), nn.Mish(),
                                    nn.Linear(down_dims[0], down_dims[0])) if local_cond_dim else None)
        self._blocks = [m for m in self.modules() if isinstance(m, FiLMResBlock)]
        self.film = nn.Linear(time_embed_dim + global_cond_dim, sum(b.film_dim for b in self._blocks))

    # -- conditioning ---------------------------------------------------------------------------------------------
    def check_horizon(self, horizon: int) -> None:
        step = 2 ** (self.levels - 1)
        if horizon % step:
            raise ValueError(f"horizon {horizon} does not fit a U-Net with {self.levels} levels: it must be a "
                             f"multiple of {step} (e.g. {step * max(1, round(horizon / step))})")

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """FiLM input from the diffusion time: ``(B,)`` -> ``(B, time_embed_dim)``."""
        return F.mish(self.time_embed(t))

    def cond_features(self, global_cond: torch.Tensor | None) -> torch.Tensor:
        """FiLM input from the global condition: ``(B, global_cond_dim)`` -> same shape, checked."""
        if global_cond is None or global_cond.shape[-1] != self.global_cond_dim:
            got = None if global_cond is None else tuple(global_cond.shape)
            raise ValueError(f"global_cond: expected shape (B, {self.global_cond_dim}), got {got}")
        return F.mish(global_cond)

    def cond_film(self, global_cond: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Condition part of all FiLM parameters, ``(B, F)``, bias included: constant over a chunk's steps."""
        if self.global_cond_dim == 0:
            return self.film.bias.expand(batch, -1)
        return F.linear(self.cond_features(global_cond), self.film.weight[:, self.time_embed_dim:], self.film.bias)

    def time_film(self, t: torch.Tensor) -> torch.Tensor:
        """Time part of all FiLM parameters: ``(B,)`` -> ``(B, F)``."""
        return F.linear(self.time_features(t), self.film.weight[:, : self.time_embed_dim])

    # -- forward --------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, global_cond: torch.Tensor | None = None,
                local_cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, T, D)``, ``t`` ``(B,)`` -> ``(B, T, D)``."""
        # One product with the whole FiLM weight: the split parts' backward would zero-fill two weight-sized buffers.
        emb = self.time_features(t)
        if self.global_cond_dim:
            cond = self.cond_features(global_cond)
            batch = max(len(emb), len(cond))  # either may be one row, broadcast as the split form did
            emb = torch.cat([emb.expand(batch, -1), cond.expand(batch, -1)], dim=1)
        return self.forward_film(x, F.linear(emb, self.film.weight, self.film.bias), local_cond)

    def forward_film(self, x: torch.Tensor, film: torch.Tensor, local_cond: torch.Tensor | None = None):
        """The trunk, given precomputed FiLM parameters ``(B, F)``."""
        self.check_horizon(x.shape[1])
        films = film.split([b.film_dim for b in self._blocks], dim=1)
        it = iter(films)
        h = x.transpose(1, 2)
        if self.channels_last and x.device.type == "cpu" and x.shape[0] * x.shape[1] > GEMM_CONV_MAX_ROWS:
            h = h.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        local = None
        if self.local is not None:
            if local_cond is None:
                raise ValueError(f"this U-Net expects local_cond of shape (B, {x.shape[1]}, {self.local_cond_dim})")
            local = self.local(local_cond).transpose(1, 2)
            local = local.unsqueeze(2) if h.ndim == 4 else local
        skips = []
        for level, (b1, b2, down) in enumerate(self.down):
            h = b1(h, next(it))
            if level == 0 and local is not None:
                h = h + local
            h = b2(h, next(it))
            skips.append(h)
            h = down(h)
        for b in self.mid:
            h = b(h, next(it))
        for b1, b2, upsample in self.up:
            h = b1(torch.cat([h, skips.pop()], dim=1), next(it))
            h = upsample(b2(h, next(it)))
        out = self.final(h)
        return (out.squeeze(2) if out.ndim == 4 else out).transpose(1, 2)

    def time_table(self, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(unique times (N,), their FiLM time parts (N, F))`` for a schedule's model times ``(N,)``."""
        if times.ndim != 1:
            raise ValueError(f"times: expected the (N,) model times of a schedule, got shape {tuple(times.shape)}")
        w = self.film.weight
        unique = torch.unique(times.to(device=w.device, dtype=w.dtype))  # a repeat would add its row twice
        return unique, self.time_film(unique)

    def conditioned(self, global_cond: torch.Tensor | None = None, local_cond: torch.Tensor | None = None,
                    times: torch.Tensor | None = None):
        """A ``net(x, t, cond)`` callable for samplers with the condition's FiLM part computed once.

        ``times`` ``(N,)``: the model times the sampler will visit (a schedule's ``model_time[:-1]``). Their FiLM
        time parts are then computed in one batched call instead of one per step, and each step picks its row by
        exact match of ``t`` (a one-hot product, so no host sync); a ``t`` outside ``times`` is an error.
        """
        return ConditionedUnet(self, global_cond, local_cond, times)


class ConditionedUnet:
    """The per-chunk view of a :class:`ConditionalUnet1D`; see :meth:`ConditionalUnet1D.conditioned`."""

    def __init__(self, net: ConditionalUnet1D, global_cond, local_cond, times=None, time_table=None, trunk=None):
        """``time_table``: a cached ``net.time_table(times)`` pair instead of ``times``; ``trunk``: a replacement
        for ``net.forward_film`` with its signature (e.g. a compiled one)."""
        self.net, self.global_cond, self.local_cond = net, global_cond, local_cond
        self.trunk = trunk or net.forward_film
        self.cond_part = None
        self.times, self.time_table = time_table if time_table is not None else (None, None)
        if times is not None:
            self.times, self.time_table = net.time_table(times)

    def time_part(self, t: torch.Tensor) -> torch.Tensor:
        """``(B,)`` -> ``(B, F)``, from the table when one was precomputed."""
        if self.time_table is None:
            return self.net.time_film(t)
        hit = t[:, None] == self.times[None].to(t.dtype)
        torch._assert_async(hit.any(1).all(), "conditioned(times=...): the sampler asked for a time not in times")
        return hit.to(self.time_table.dtype) @ self.time_table

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        if cond is not None:  # e.g. classifier-free guidance's doubled batch: it would be silently ignored
            raise ValueError("a conditioned U-Net carries its condition from conditioned(global_cond=...) and takes "
                             "none per call; for classifier-free guidance (which passes cond and null_cond as one "
                             "batch) sample with the network itself")
        if self.cond_part is None:
            self.cond_part = self.net.cond_film(self.global_cond, x.shape[0])
        return self.trunk(x, self.cond_part + self.time_part(t), self.local_cond)
