"""Observations as the policy sees them: one module for training windows, evaluation and the controller.

Stored and live images are channel-last ``(..., H, W, C)`` ``uint8`` (or float in [0, 255]); the policy takes float
``(..., C, H, W)`` in [0, 1], centre-cropped at run time (training windows crop at random while gathering,
:mod:`~diffpolicy.data.augment`). Low-dim observations are float32 in dataset units. :class:`ObsAdapter` turns an
env's ``Dict`` observation into the policy's per-step tensors and stacks histories into ``{key: (B, To, ...)}``.
"""

from __future__ import annotations

from collections import deque
from typing import Mapping, Sequence

import numpy as np
import torch


def to_float(images_chw: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Channel-first ``uint8`` (or float in [0, 255]) images -> float32 in [0, 1], same shape."""
    return torch.as_tensor(images_chw).to(torch.float32).div_(255.0)


def to_float_chw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(..., H, W, C)`` uint8 or float in [0, 255] -> float32 ``(..., C, H, W)`` in [0, 1] (e.g. env frames)."""
    return to_float(torch.as_tensor(images).movedim(-1, -3).contiguous())


def center_crop(images: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Centre crop of ``(..., C, H, W)`` images: the eval-time transform, for run-time observations too."""
    h, w = images.shape[-2:]
    ch, cw = out_hw
    if ch > h or cw > w:
        raise ValueError(f"crop {tuple(out_hw)} is larger than the image {(h, w)}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return images[..., top:top + ch, left:left + cw]


class ObsAdapter:
    """Env ``Dict`` observations -> policy tensors ``{key: (B, To, ...)}`` (images cropped, float in [0, 1])."""

    def __init__(self, obs_keys: Sequence[str], image_keys: Sequence[str], crop_shape: Sequence[int] | None):
        self.obs_keys, self.image_keys = list(obs_keys), set(image_keys)
        self.crop = tuple(crop_shape) if crop_shape else None

    def step_obs(self, obs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """One step's observation -> ``{key: (...)}`` (images ``(C, h, w)``)."""
        out = {}
        for k in self.obs_keys:
            if k not in obs:
                raise KeyError(f"the environment's observation has no key {k!r} (has {sorted(obs)}); the policy "
                               f"was trained on {self.obs_keys}")
            if k in self.image_keys:
                img = to_float_chw(np.asarray(obs[k]))
                out[k] = center_crop(img, self.crop) if self.crop else img
            else:
                out[k] = torch.as_tensor(np.asarray(obs[k]), dtype=torch.float32)
        return out

    @staticmethod
    def stack(histories: Sequence[deque]) -> dict[str, torch.Tensor]:
        """``B`` histories of ``To`` step observations -> ``{key: (B, To, ...)}``."""
        keys = histories[0][0].keys()
        return {k: torch.stack([torch.stack([h[k] for h in hist]) for hist in histories]) for k in keys}
