"""Observation encoders: named observations ``{key: (B, To, ...)}`` -> one condition vector ``(B, To * F)``.

Low-dim keys pass through (already normalised); each camera key has its own backbone, shared over the observation
steps, ending in a spatial-softmax keypoint head. Two families (``image_encoder``):

- ``resnet18_gn``: ResNet-18 layout with GroupNorm instead of BatchNorm (batch statistics misbehave with EMA weights
  and small batches), the recipe of Diffusion Policy;
- ``conv``: a few 3x3 convolutions (GroupNorm, ReLU) at small strides, 11-20x faster per image than the width-64
  ResNet: what a CPU budget affords (``benchmarks/RESULTS.md``, "Policies from cameras").

Images are float ``(C, H, W)`` in [0, 1] with any channel count (RGB, depth or grayscale, stacked modalities): the
first convolution takes ``C`` from the key's shape.
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


class KeypointBackbone(nn.Module):
    """A convolutional trunk (``features``) read out by spatial-softmax keypoints and a linear layer:
    ``(B, C, H, W)`` images in [0, 1] -> ``(B, out_dim)``."""

    def __init__(self, channels: int, num_kp: int, out_dim: int):
        super().__init__()
        self.head = SpatialSoftmax(channels, num_kp)
        self.out = nn.Linear(2 * num_kp, out_dim)
        self.out_dim = out_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x):
        # [0, 1] -> [-1, 1] input scaling; no pretrained weights are used (nothing downloads).
        return self.out(self.head(self.features(x * 2 - 1)))


class ResNetGN(KeypointBackbone):
    """ResNet-18 layout (2-2-2-2 basic blocks) with GroupNorm and a spatial-softmax head: ``(B, C, H, W)`` -> ``(B, F)``."""

    def __init__(self, width: int = 64, num_kp: int = 32, out_dim: int = 64, in_channels: int = 3):
        w = [width, width * 2, width * 4, width * 8]
        super().__init__(w[-1], num_kp, out_dim)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w[0], 7, 2, 3, bias=False), _gn(w[0]), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, c = [], w[0]
        for i, c_out in enumerate(w):
            layers += [BasicBlock(c, c_out, 1 if i == 0 else 2), BasicBlock(c_out, c_out, 1)]
            c = c_out
        self.layers = nn.Sequential(*layers)

    def features(self, x):
        return self.layers(self.stem(x))


class ConvKeypointNet(KeypointBackbone):
    """3x3 convolutions (GroupNorm, ReLU) with the given output channels and strides, then a spatial-softmax head:
    ``(B, C, H, W)`` -> ``(B, F)``. The default (strides 2, 1, 2, 1) leaves a quarter-resolution feature map, so the
    keypoints keep sub-pixel precision at a fraction of a ResNet's cost."""

    def __init__(self, channels: Sequence[int] = (32, 32, 64, 64), strides: Sequence[int] = (2, 1, 2, 1),
                 num_kp: int = 32, out_dim: int = 64, in_channels: int = 3):
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"conv encoder: channels {list(channels)} and strides {list(strides)} must be non-empty "
                             f"and of the same length")
        super().__init__(channels[-1], num_kp, out_dim)
        layers, c = [], in_channels
        for c_out, stride in zip(channels, strides):
            layers += [nn.Conv2d(c, c_out, 3, stride, 1, bias=False), _gn(c_out), nn.ReLU()]
            c = c_out
        self.layers = nn.Sequential(*layers)

    def features(self, x):
        return self.layers(x)


IMAGE_ENCODERS = ("resnet18_gn", "conv")


def place_for_device(module: nn.Module, device: torch.device | str) -> nn.Module:
    """Move ``module`` to ``device``; on CUDA its 2-D convolution weights go channels-last (NHWC), the layout of
    cuDNN's fastest convolutions (with bf16 / tensor cores), matched by the encoder's input. On the CPU the default
    layout stays: channels-last bought nothing there for these encoders (``benchmarks/results/encoders.md``)."""
    device = torch.device(device)
    module.to(device)
    if device.type == "cuda":
        module.to(memory_format=torch.channels_last)  # only 4-D tensors change: Conv2d weights
    return module


def make_image_encoder(kind: str, in_channels: int, width: int = 32, features: int = 64, keypoints: int = 32,
                       channels: Sequence[int] | None = None, strides: Sequence[int] | None = None) -> nn.Module:
    """One camera's backbone ``(B, C, H, W)`` -> ``(B, features)``: ``resnet18_gn`` (widths ``width * (1, 2, 4,
    8)``) or ``conv`` (``channels`` / ``strides``, by default ``(width, width, 2 width, 2 width)`` / ``(2, 1, 2, 1)``)."""
    if kind == "resnet18_gn":
        return ResNetGN(width, keypoints, features, in_channels)
    if kind == "conv":
        channels = tuple(channels) if channels else (width, width, 2 * width, 2 * width)
        strides = tuple(strides) if strides else (2, 1, 2, 1)[:len(channels)] + (1,) * max(0, len(channels) - 4)
        return ConvKeypointNet(channels, strides, keypoints, features, in_channels)
    raise ValueError(f"image_encoder must be one of {IMAGE_ENCODERS}, got {kind!r}")


class ObservationEncoder(nn.Module):
    """Concatenates low-dim keys and per-camera image features over the observation history.

    Args:
        shapes: event shape per key: ``(D,)`` (or any low-dim shape, flattened) or ``(C, H, W)`` for cameras
            (after cropping).
        image_keys: which keys are cameras.
        image_encoder: backbone family per camera (:data:`IMAGE_ENCODERS`); ``image_width``, ``image_features``,
            ``image_keypoints``, ``image_channels``, ``image_strides`` size it (:func:`make_image_encoder`).
    """

    def __init__(self, shapes: Mapping[str, Sequence[int]], image_keys: Sequence[str] = (), n_obs_steps: int = 2,
                 image_width: int = 64, image_features: int = 64, image_encoder: str = "resnet18_gn",
                 image_keypoints: int = 32, image_channels: Sequence[int] | None = None,
                 image_strides: Sequence[int] | None = None):
        super().__init__()
        self.keys = sorted(shapes)
        self.image_keys = [k for k in self.keys if k in set(image_keys)]
        self.n_obs_steps = n_obs_steps
        for k in self.image_keys:
            if len(shapes[k]) != 3 or min(shapes[k]) < 1:
                raise ValueError(f"camera {k!r}: expected an event shape (C, H, W), got {tuple(shapes[k])}")
        self.cameras = nn.ModuleDict({
            k: make_image_encoder(image_encoder, int(shapes[k][0]), image_width, image_features, image_keypoints,
                                  image_channels, image_strides)
            for k in self.image_keys})
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
                what = " (channels, height, width)" if k in self.image_keys else ""
                raise ValueError(f"observation {k!r}: expected (B, {self.n_obs_steps}, *{self.shapes[k]}){what}, "
                                 f"got {tuple(x.shape)}")
            B, To = x.shape[:2]
            if k in self.image_keys:
                frames = x.flatten(0, 1)  # one backbone pass over all observation steps
                if frames.is_cuda:  # cuDNN's NHWC kernels (with channels-last weights, see place_for_device)
                    frames = frames.contiguous(memory_format=torch.channels_last)
                feats.append(self.cameras[k](frames).reshape(B, To, -1))
            else:
                feats.append(x.reshape(B, To, -1))
        return torch.cat(feats, -1).flatten(1)
