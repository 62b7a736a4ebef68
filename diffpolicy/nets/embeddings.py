"""Time embeddings shared by the 1D and 2D networks."""

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal features of a scalar: ``(B,)`` -> ``(B, dim)`` as ``[sin, cos]``."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"sinusoidal embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = t.float()[:, None] * self.freqs[None]
        return torch.cat([arg.sin(), arg.cos()], dim=-1).to(t.dtype if t.is_floating_point() else torch.float32)


class TimeEmbedding(nn.Sequential):
    """Sinusoid followed by a 2-layer Mish MLP: ``(B,)`` -> ``(B, dim)``."""

    def __init__(self, dim: int, hidden_mult: int = 4):
        super().__init__(SinusoidalEmbedding(dim), nn.Linear(dim, dim * hidden_mult), nn.Mish(),
                         nn.Linear(dim * hidden_mult, dim))
