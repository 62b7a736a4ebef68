"""The 1D U-Net's trunk in a channels-last layout for large CPU inputs.

oneDNN convolves and group-normalises ``(B, C, 1, T)`` tensors in ``channels_last`` memory format without the
layout reorders it pays on ``(B, C, T)``. Float32 training step on a 2-core AMD EPYC, one thread: 1.16x faster at
down_dims (64,128,256), 1.32x at (32,64,128); 0.94x at (256,512,1024); under bf16 autocast no change
(``benchmarks/results/core.md``). Small inputs (batch-1 sampling) keep ``(B, C, T)``, where
:class:`~diffpolicy.accel.conv1d.FastConv1d` runs them as matrix products.
"""

from __future__ import annotations

import torch

from ..nets.unet1d import ConditionalUnet1D
from .conv1d import GEMM_CONV_MAX_ROWS

# U-Nets no wider than this take the channels-last trunk (above it, the layout measured slower).
CHANNELS_LAST_MAX_WIDTH = 256


class ChannelsLastUnet1D(ConditionalUnet1D):
    """A :class:`ConditionalUnet1D` whose trunk runs large CPU inputs on ``(B, C, 1, T)`` channels-last tensors
    (every convolution of the net must be a :class:`~diffpolicy.accel.conv1d.FastConv1d`, which takes that layout).
    Made by :func:`diffpolicy.accel.accelerate`, never constructed directly."""

    def to_trunk(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        if x.device.type == "cpu" and x.shape[0] * x.shape[1] > GEMM_CONV_MAX_ROWS:
            h = h.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return h

    def from_trunk(self, h: torch.Tensor) -> torch.Tensor:
        return (h.squeeze(2) if h.ndim == 4 else h).transpose(1, 2)


def channels_last_pays(net: ConditionalUnet1D) -> bool:
    """Whether the channels-last trunk was measured faster for this net's widths."""
    return max(b.conv1[0].out_channels for b in net._blocks) <= CHANNELS_LAST_MAX_WIDTH
