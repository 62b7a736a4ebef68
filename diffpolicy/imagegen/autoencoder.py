"""A small KL autoencoder for the digits: the latent space of latent diffusion (Rombach et al. 2022).

The network is diffusers' ``AutoencoderKL`` (Stable Diffusion's VAE architecture) in a small configuration: a
1-channel ``(1, 16, 16)`` image in [-1, 1] becomes a diagonal Gaussian posterior over ``(4, 4, 4)`` latents (three
levels, two 2x downsamples), decoded back to ``(1, 16, 16)``. Training (:meth:`DigitAutoencoder.forward`, the shared
loop's interface) minimises

    mean |x - decode(z)|  +  kl_weight * KL(q(z | x) || N(0, I)) / (H * W)

with ``z ~ q(z | x)`` drawn with the step's generator (a resumed run repeats the same draws).

L1 rather than squared error: the digits are mostly exactly -1 background with sharp strokes, and L1's median-like
estimate keeps the background flat and the edges sharper where squared error averages them into grey (the usual
choice for image autoencoders; ``reconstruction: mse`` is available). The KL term is Stable Diffusion's per-image
sum divided by the pixel count, so ``kl_weight`` means what it means there relative to a per-pixel reconstruction
sum (SD uses 1e-6). It only keeps the latents bounded; their scale is fixed afterwards by ``scaling_factor``
(``1 / std`` of the training latents, :meth:`fit_scaling_factor`), a buffer saved with the weights, so the
diffusion model sees ~unit-variance latents. Latents are the posterior mean times ``scaling_factor``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from ..policy.checkpoint import load_config, load_tensors, resolve_checkpoint

RECONSTRUCTION_LOSSES = ("l1", "mse")


class DigitAutoencoder(nn.Module):
    """``encode((B, C, H, W) in [-1, 1]) -> (B, latent_channels, h, w)`` and ``decode`` back, ``h = H / 2^(L-1)``
    for ``L = len(block_out_channels)`` levels; ``forward(batch, generator) -> loss`` for the shared loop."""

    def __init__(self, image_size: int = 16, channels: int = 1, block_out_channels: Sequence[int] = (16, 32, 64),
                 layers_per_block: int = 1, latent_channels: int = 4, norm_num_groups: int = 8,
                 mid_block_attention: bool = True, kl_weight: float = 1e-4, reconstruction: str = "l1"):
        super().__init__()
        levels = len(block_out_channels)
        if levels < 1 or image_size % 2 ** (levels - 1):
            raise ValueError(f"autoencoder image_size {image_size} is not divisible by 2^{levels - 1} "
                             f"({levels} levels of block_out_channels {list(block_out_channels)})")
        if any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(f"autoencoder block_out_channels {list(block_out_channels)} must be multiples of "
                             f"norm_num_groups={norm_num_groups}")
        if reconstruction not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"autoencoder reconstruction {reconstruction!r}: expected one of {RECONSTRUCTION_LOSSES}")
        if kl_weight < 0:
            raise ValueError(f"autoencoder kl_weight must be >= 0, got {kl_weight}")
        self.image_size, self.channels = image_size, channels
        self.kl_weight, self.reconstruction = kl_weight, reconstruction
        self.latent_shape = (latent_channels, image_size // 2 ** (levels - 1), image_size // 2 ** (levels - 1))
        self.vae = AutoencoderKL(
            in_channels=channels, out_channels=channels, down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block, latent_channels=latent_channels, norm_num_groups=norm_num_groups,
            sample_size=image_size, mid_block_add_attention=mid_block_attention,
        )
        # 0 until fit_scaling_factor: encode refuses to run with an unfitted scale.
        self.register_buffer("scaling_factor", torch.zeros(()))

    def check_images(self, images: torch.Tensor, what: str = "images") -> None:
        expected = (self.channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"{what} has shape {tuple(images.shape)}; expected (B, {', '.join(map(str, expected))})")

    def posterior(self, images: torch.Tensor):
        """The diagonal Gaussian ``q(z | images)`` (diffusers' ``DiagonalGaussianDistribution``; mean and std
        ``(B, *latent_shape)``, unscaled)."""
        self.check_images(images)
        return self.vae.encode(images).latent_dist

    def forward(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss of ``batch["image"]`` ``(B, C, H, W)`` in [-1, 1]: reconstruction + weighted KL (scalar)."""
        images = batch["image"]
        self.check_images(images, "batch['image']")
        post = self.posterior(images)
        recon = self.vae.decode(post.sample(generator)).sample
        rec = (F.l1_loss if self.reconstruction == "l1" else F.mse_loss)(recon, images)
        kl = post.kl().mean() / (images.shape[-2] * images.shape[-1])
        return rec + self.kl_weight * kl

    @property
    def fitted(self) -> bool:
        return bool(self.scaling_factor > 0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, *latent_shape)``: the posterior mean of ``images`` ``(B, C, H, W)`` times
        ``scaling_factor``."""
        if not self.fitted:
            raise RuntimeError("the autoencoder's scaling_factor is not fitted; call fit_scaling_factor(images) "
                               "after training (diffpolicy-imagegen autoencoder does)")
        return self.posterior(images).mean * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` clamped to [-1, 1] from scaled latents ``(B, *latent_shape)``."""
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}; "
                             f"expected (B, {', '.join(map(str, self.latent_shape))})")
        if not self.fitted:
            raise RuntimeError("the autoencoder's scaling_factor is not fitted; call fit_scaling_factor(images)")
        return self.vae.decode(latents / self.scaling_factor).sample.clamp(-1, 1)

    @torch.no_grad()
    def fit_scaling_factor(self, images: torch.Tensor, batch_size: int = 500) -> float:
        """Set ``scaling_factor`` to 1 / std of the posterior means of ``images`` ``(N, C, H, W)`` over all their
        entries (Stable Diffusion's recipe; the mean is left in), and return it."""
        means = torch.cat([self.posterior(chunk).mean for chunk in images.split(batch_size)])
        std = float(means.float().std())
        if not std > 0:
            raise ValueError(f"the latents of {len(images)} images have std {std}; cannot fit a scaling factor")
        self.scaling_factor.fill_(1.0 / std)
        return 1.0 / std

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """``decode(encode(images))``, ``(B, C, H, W)`` in [-1, 1]."""
        return self.decode(self.encode(images))


def build_autoencoder(cfg: Mapping[str, Any]) -> DigitAutoencoder:
    """From an autoencoder model config: the keyword arguments of :class:`DigitAutoencoder` (``image_size`` and
    ``channels`` included). Unknown keys are an error naming them."""
    cfg = dict(cfg)
    known = set(inspect.signature(DigitAutoencoder.__init__).parameters) - {"self"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"autoencoder.model: unknown keys {unknown}; expected some of {sorted(known)}")
    if "block_out_channels" in cfg:
        cfg["block_out_channels"] = tuple(cfg["block_out_channels"])
    return DigitAutoencoder(**cfg)


def load_autoencoder(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
                     ) -> tuple[DigitAutoencoder, dict, Path]:
    """``(autoencoder in eval mode, its model config, checkpoint_dir)`` from an autoencoder checkpoint, its
    ``checkpoints/`` root or its run directory (written by ``diffpolicy-imagegen autoencoder``)."""
    ckpt = resolve_checkpoint(path)
    name = "ema" if use_ema else "model"
    tensors = load_tensors(ckpt, name)
    if "scaling_factor" not in tensors:
        some = sorted(tensors)[:3]
        raise ValueError(f"{ckpt} is not an autoencoder checkpoint: its {name}.safetensors has no 'scaling_factor' "
                         f"(keys begin {some}); write one with `diffpolicy-imagegen autoencoder run_dir=...`")
    if not float(tensors["scaling_factor"]) > 0:
        raise ValueError(f"{ckpt}: the autoencoder's scaling_factor was never fitted (training was interrupted "
                         f"before the end); finish it with `diffpolicy-imagegen autoencoder resume=true run_dir=...`")
    model_cfg = (load_config(ckpt).get("autoencoder") or {}).get("model")
    if not isinstance(model_cfg, Mapping):
        raise ValueError(f"{ckpt}/config.yaml has no autoencoder.model section: not an autoencoder checkpoint")
    ae = build_autoencoder(model_cfg)
    ae.load_state_dict(tensors)
    return ae.to(device).eval().requires_grad_(False), dict(model_cfg), ckpt
