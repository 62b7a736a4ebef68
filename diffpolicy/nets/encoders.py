"""Observation encoders: named observations ``{key: (B, To, ...)}`` -> one condition vector ``(B, To * F)``.

Low-dim keys pass through (already normalised); each camera key has its own ResNet-18-style backbone with
GroupNorm instead of BatchNorm (batch statistics misbehave with EMA weights and small batches) and a spatial-softmax
keypoint head, the recipe of Diffusion Policy.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, c // 16), c)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = _gn(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = _gn(c_out)
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _gn(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(h)) + self.skip(x))


class SpatialSoftmax(nn.Module):
    """``(B, C, H, W)`` -> ``(B, 2K)``: expected image coordinates in [-1, 1] of K learned keypoint heatmaps."""

    def __init__(self, channels: int, num_kp: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, num_kp, 1)

    def forward(self, x):
        h = self.proj(x)
        B, K, H, W = h.shape
        attn = h.flatten(2).softmax(-1)  # (B, K, H*W)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, H, device=x.device, dtype=attn.dtype),
                                torch.linspace(-1, 1, W, device=x.device, dtype=attn.dtype), indexing="ij")
        coords = torch.stack([xs.flatten(), ys.flatten()], -1)  # (H*W, 2)
        return (attn @ coords).flatten(1)


class ResNetGN(nn.Module):
    """ResNet-18 layout (2-2-2-2 basic blocks) with GroupNorm and a spatial-softmax head: ``(B, 3, H, W)`` -> ``(B, F)``."""

    def __init__(self, width: int = 64, num_kp: int = 32, out_dim: int = 64):
        super().__init__()
        w = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 7, 2, 3, bias=False), _gn(w[0]), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, c = [], w[0]
        for i, c_out in enumerate(w):
            layers += [BasicBlock(c, c_out, 1 if i == 0 else 2), BasicBlock(c_out, c_out, 1)]
            c = c_out
        self.layers = nn.Sequential(*layers)
        self.head = SpatialSoftmax(c, num_kp)
        self.out = nn.Linear(2 * num_kp, out_dim)
        self.out_dim = out_dim

    def forward(self, x):
        # ImageNet-style input scaling of [0, 1] images; no pretrained weights are used (nothing downloads).
        return self.out(self.head(self.layers(self.stem(x * 2 - 1))))


class ObservationEncoder(nn.Module):
    """Concatenates low-dim keys and per-camera image features over the observation history.

    Args:
        shapes: event shape per key: ``(D,)`` (or any low-dim shape, flattened) or ``(C, H, W)`` for cameras
            (after cropping).
        image_keys: which keys are cameras.
    """

    def __init__(self, shapes: Mapping[str, Sequence[int]], image_keys: Sequence[str] = (), n_obs_steps: int = 2,
                 image_width: int = 64, image_features: int = 64):
        super().__init__()
        self.keys = sorted(shapes)
        self.image_keys = [k for k in self.keys if k in set(image_keys)]
        self.n_obs_steps = n_obs_steps
        self.cameras = nn.ModuleDict({k: ResNetGN(image_width, out_dim=image_features) for k in self.image_keys})
        per_step = 0
        for k in self.keys:
            if k in self.image_keys:
                per_step += image_features
            else:
                n = 1
                for s in shapes[k]:
                    n *= int(s)
                per_step += n
        self.shapes = {k: tuple(int(s) for s in shapes[k]) for k in self.keys}
        self.out_dim = per_step * n_obs_steps

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{key: (B, To, *event)}`` -> ``(B, To * F)``."""
        feats = []
        for k in self.keys:
            if k not in obs:
                raise KeyError(f"observation key {k!r} missing; the encoder expects {self.keys}")
            x = obs[k]
            if tuple(x.shape[2:]) != self.shapes[k] or x.shape[1] != self.n_obs_steps:
                raise ValueError(f"observation {k!r}: expected (B, {self.n_obs_steps}, *{self.shapes[k]}), "
                                 f"got {tuple(x.shape)}")
            B, To = x.shape[:2]
            if k in self.image_keys:
                feats.append(self.cameras[k](x.flatten(0, 1)).reshape(B, To, -1))
            else:
                feats.append(x.reshape(B, To, -1))
        return torch.cat(feats, -1).flatten(1)
