"""Sample grids as PNG: one row per class."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch


def grid_image(images: torch.Tensor, rows: int, scale: int = 4, pad: int = 1) -> np.ndarray:
    """``images`` ``(rows * cols, 1, H, W)`` in [-1, 1], row-major, to a uint8 ``(rows * (H*scale + pad) + pad, ...)``
    grey image with ``pad``-pixel separators, each pixel repeated ``scale`` times (nearest) so 16x16 digits stay
    visible."""
    n, c, h, w = images.shape
    if c != 1 or n % rows:
        raise ValueError(f"expected (rows * cols, 1, H, W) grey images with rows={rows}, got {tuple(images.shape)}")
    cols = n // rows
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()[:, 0]
    x = x.repeat(scale, axis=1).repeat(scale, axis=2)
    hs, ws = h * scale, w * scale
    out = np.full((rows * (hs + pad) + pad, cols * (ws + pad) + pad), 128, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        out[pad + r * (hs + pad): pad + r * (hs + pad) + hs, pad + q * (ws + pad): pad + q * (ws + pad) + ws] = x[i]
    return out


def save_grid(images: torch.Tensor, rows: int, path: str | Path, scale: int = 4) -> Path:
    """Write the grid of :func:`grid_image` to ``path`` (PNG), creating its folder."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"sample grid path {path} must end in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, grid_image(images, rows, scale))
    return path
