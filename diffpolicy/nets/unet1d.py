"""Conditional 1D temporal U-Net for action chunks (the Diffusion Policy architecture).

Residual blocks of (Conv1d, GroupNorm, Mish) x 2, each modulated by FiLM (per-channel scale and bias) computed from
``Mish([time_embedding, global_cond])``. All blocks' FiLM projections are one fused ``Linear`` (``self.film``), and
it splits into a time part and a condition part, so a sampler can compute the condition part once per chunk
(:meth:`ConditionalUnet1D.conditioned`) and pay only the small time part at each step.

This is the plain model: ``nn.Conv1d`` on ``(B, C, T)``. :func:`diffpolicy.accel.accelerate` swaps in CPU
convolution paths and a channels-last trunk layout (same parameters, same outputs within float32 tolerance).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import TimeEmbedding


class ConvBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish on ``(B, C, T)``; 'same' padding."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, groups: int):
        if c_out % groups:
            raise ValueError(f"GroupNorm: {c_out} channels are not divisible into {groups} groups")
        super().__init__(nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.GroupNorm(groups, c_out),
                         nn.Mish())


class FiLMResBlock(nn.Module):
    """Residual conv block whose first conv's output is modulated as ``scale * h + bias``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, groups: int):
        super().__init__()
        self.conv1 = ConvBlock(c_in, c_out, kernel_size, groups)
        self.conv2 = ConvBlock(c_out, c_out, kernel_size, groups)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.film_dim = 2 * c_out

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C_in, T)``, ``film`` ``(B, 2 C_out)`` -> ``(B, C_out, T)``."""
        # (B, 2 C) -> (B, 2 C, 1, ...): broadcast over x's position axes (one, or two in an accelerated trunk layout)
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
    """

    def __init__(self, action_dim: int, global_cond_dim: int = 0, local_cond_dim: int = 0,
                 down_dims: Sequence[int] = (256, 512, 1024), kernel_size: int = 5, n_groups: int = 8,
                 time_embed_dim: int = 256):
        super().__init__()
        down_dims = list(down_dims)
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
                                            nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, 2, 1)]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(list(zip(down_dims[:-1], down_dims[1:]))):
            self.up.append(nn.ModuleList([block(c_out * 2, c_in), block(c_in, c_in),
                                          nn.ConvTranspose1d(c_in, c_in, 4, 2, 1)]))
        self.final = nn.Sequential(ConvBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   nn.Conv1d(down_dims[0], action_dim, 1))
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
        """The trunk, given precomputed FiLM parameters ``(B, F)``: ``x`` ``(B, T, D)`` -> ``(B, T, D)``."""
        self.check_horizon(x.shape[1])
        it = iter(film.split([b.film_dim for b in self._blocks], dim=1))
        h = self.to_trunk(x)
        local = None
        if self.local is not None:
            if local_cond is None:
                raise ValueError(f"this U-Net expects local_cond of shape (B, {x.shape[1]}, {self.local_cond_dim})")
            local = self.to_trunk(self.local(local_cond))
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
        return self.from_trunk(self.final(h))

    def to_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C)`` -> the trunk's layout, ``(B, C, T)``."""
        return x.transpose(1, 2)

    def from_trunk(self, h: torch.Tensor) -> torch.Tensor:
        """The trunk's layout -> ``(B, T, C)``."""
        return h.transpose(1, 2)

    def conditioned(self, global_cond: torch.Tensor | None = None, local_cond: torch.Tensor | None = None,
                    time_film=None) -> "ConditionedUnet":
        """A ``net(x, t)`` callable for samplers with the condition's FiLM part computed once per chunk.

        ``time_film``: a replacement for :meth:`time_film`, ``(B,)`` -> ``(B, F)`` (e.g. a policy's table of the
        sampling grid's time parts, :class:`~diffpolicy.policy.sampling.TimeTable`).
        """
        return ConditionedUnet(self, global_cond, local_cond, time_film)


class ConditionedUnet:
    """The per-chunk view of a :class:`ConditionalUnet1D`; see :meth:`ConditionalUnet1D.conditioned`."""

    def __init__(self, net: ConditionalUnet1D, global_cond, local_cond=None, time_film=None):
        self.net, self.global_cond, self.local_cond = net, global_cond, local_cond
        self.time_film = time_film or net.time_film
        self.cond_part = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        if cond is not None:  # e.g. classifier-free guidance's doubled batch: it would be silently ignored
            raise ValueError("a conditioned U-Net carries its condition from conditioned(global_cond=...) and takes "
                             "none per call; for classifier-free guidance (which passes cond and null_cond as one "
                             "batch) sample with the network itself")
        if self.cond_part is None:
            self.cond_part = self.net.cond_film(self.global_cond, x.shape[0])
        # net.forward_film looked up at each call: an accelerated or compiled trunk takes effect at once
        return self.net.forward_film(x, self.cond_part + self.time_film(t), self.local_cond)
