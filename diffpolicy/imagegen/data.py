"""The image data set: scikit-learn's handwritten digits, upsampled, in [-1, 1].

Source: ``sklearn.datasets.load_digits`` reads ``digits.csv.gz`` shipped inside the scikit-learn package (no
download; scikit-learn is BSD-3-Clause). The data are the test part of the UCI "Optical Recognition of Handwritten
Digits" set (Alpaydin & Kaynak 1998, https://doi.org/10.24432/C50P49, licensed CC BY 4.0): 1797 grey-scale 8x8
images with integer intensities 0..16, 10 classes (~180 per class).

Images are bilinearly upsampled (8x8 -> ``size`` x ``size``) so the U-Net has three resolutions to work on, and
scaled to [-1, 1] (the range the objectives' ``clip_x0 = 1`` assumes). The train/held-out split is stratified
per class and seeded, so every run and every metric sees the same held-out images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NUM_CLASSES = 10
SOURCE_SIZE = 8
MAX_INTENSITY = 16.0


@dataclass(frozen=True)
class DigitsSplit:
    """``images`` ``(N, 1, H, W)`` float32 in [-1, 1] and ``labels`` ``(N,)`` int64 in ``0..9``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # scikit-learn is the only source of the data set
        raise ImportError("diffpolicy.imagegen needs scikit-learn for its data set (pip install scikit-learn)") from e
    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, 1, 8, 8)`` intensities in [0, 16] to ``(N, 1, size, size)`` in [-1, 1] (bilinear, corners aligned
    off, as image resizing does)."""
    if size < SOURCE_SIZE:
        raise ValueError(f"image size {size} is below the source resolution {SOURCE_SIZE}; expected >= 8")
    x = images / MAX_INTENSITY * 2 - 1
    if size != SOURCE_SIZE:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(-1, 1)


def load_digits_splits(size: int = 16, held_out: float = 0.2, seed: int = 0) -> tuple[DigitsSplit, DigitsSplit]:
    """``(train, held_out)`` splits, stratified: each class puts ``round(held_out * n_c)`` images in held-out."""
    if size % 4:
        raise ValueError(f"image size {size} must be a multiple of 4 (the U-Net halves it twice)")
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out fraction {held_out} must be in (0, 1)")
    raw, labels = _load_raw()
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        test_idx.append(rng.permutation(idx)[: int(round(held_out * len(idx)))])
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[np.concatenate(test_idx)] = True
    images = upsample(torch.from_numpy(raw)[:, None], size)
    lab = torch.from_numpy(labels)
    mask = torch.from_numpy(test_mask)
    return DigitsSplit(images[~mask].contiguous(), lab[~mask]), DigitsSplit(images[mask].contiguous(), lab[mask])


class DigitBatches:
    """``batch_fn(step, generator) -> {"image": (B, 1, H, W), "label": (B,)}`` for the shared training loop.

    Batches are drawn with replacement from the training split by the step's generator, so a resumed run draws the
    same batches as an uninterrupted one.
    """

    def __init__(self, split: DigitsSplit, batch_size: int, device: torch.device | str = "cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = split.images.to(device), split.labels.to(device)
        self.batch_size = batch_size

    def __call__(self, step: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(self.labels), (self.batch_size,), generator=generator, device=generator.device)
        return {"image": self.images[idx], "label": self.labels[idx]}
