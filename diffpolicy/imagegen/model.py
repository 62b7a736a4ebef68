"""Class-conditional image generation on the shared core: a 2D U-Net, an objective, classifier-free guidance.

The network is diffusers' ``UNet2DModel`` with a class embedding (``num_class_embeds = num_classes + 1``): the
extra index ``num_classes`` is the *null label* of classifier-free guidance. diffusers' U-Net is used rather than
one of our own because its 2D blocks (ResNet + GroupNorm + optional attention, embedding added to every block) are
exactly what small image diffusion needs, it is already a dependency, and the core's interface makes the choice
invisible: anything ``net(x, t, cond)`` trains with :meth:`Objective.loss` and samples with
:func:`diffpolicy.core.samplers.sample`. Nothing here re-implements a schedule, loss or sampler.

Training drops each label to the null label with probability ``label_dropout`` (Ho & Salimans 2022), so one
network learns both the conditional and the unconditional model; sampling combines them with the core's guidance
``out = out_c + w (out_c - out_null)`` (``w = 0``: plain conditional).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from diffusers import UNet2DModel
from torch import nn

from ..core.objectives import Objective, make_objective
from ..core.samplers import check_steps, get_sampler, sample
from ..policy.checkpoint import load_config, load_tensors, resolve_checkpoint


class ClassConditionalUNet(nn.Module):
    """``net(x (B, C, H, W), t (B,), labels (B,) int64) -> (B, C, H, W)``, labels in ``0..num_classes`` (the last
    one is the null label)."""

    def __init__(self, image_size: int, channels: int, num_classes: int, block_out_channels: Sequence[int],
                 layers_per_block: int = 1, attention_levels: Sequence[bool] | None = None, norm_num_groups: int = 8):
        super().__init__()
        levels = len(block_out_channels)
        attention_levels = list(attention_levels) if attention_levels is not None else [False] * levels
        if len(attention_levels) != levels:
            raise ValueError(f"attention_levels has {len(attention_levels)} entries; expected one per level "
                             f"of block_out_channels {list(block_out_channels)}")
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{levels - 1} ({levels} U-Net levels)")
        if any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(f"block_out_channels {list(block_out_channels)} must be multiples of "
                             f"norm_num_groups={norm_num_groups}")
        self.num_classes = num_classes
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=channels, out_channels=channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)),
            norm_num_groups=norm_num_groups, attention_head_dim=8, num_class_embeds=num_classes + 1,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, class_labels=labels).sample


class ImageGenerator(nn.Module):
    """A class-conditional generator: ``forward(batch, generator) -> loss`` for the shared training loop, and
    :meth:`generate` for sampling.

    ``batch`` is ``{"image": (B, C, H, W) in [-1, 1], "label": (B,) int64}``.
    """

    def __init__(self, objective: Objective, net: ClassConditionalUNet, image_size: int, channels: int = 1,
                 label_dropout: float = 0.1):
        super().__init__()
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout {label_dropout} must be in [0, 1)")
        self.objective, self.net = objective, net
        self.image_size, self.channels, self.label_dropout = image_size, channels, label_dropout
        self.num_classes = net.num_classes

    @property
    def null_label(self) -> int:
        return self.num_classes

    def drop_labels(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``labels`` ``(B,)`` with each entry replaced by the null label with probability ``label_dropout``."""
        if self.label_dropout == 0.0:
            return labels
        u = torch.rand(labels.shape, generator=generator, device=labels.device)
        return torch.where(u < self.label_dropout, torch.full_like(labels, self.null_label), labels)

    def check_labels(self, labels: torch.Tensor, allow_null: bool = False) -> None:
        top = self.num_classes if allow_null else self.num_classes - 1
        if labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"labels must be a 1-D integer tensor (B,), got {tuple(labels.shape)} {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > top):
            raise ValueError(f"labels must be in 0..{top}, got values in {int(labels.min())}..{int(labels.max())}")

    def forward(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        expected = (self.channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"batch['image'] has shape {tuple(images.shape)}; "
                             f"expected (B, {', '.join(map(str, expected))})")
        self.check_labels(labels, allow_null=True)
        return self.objective.loss(self.net, images, self.drop_labels(labels, generator), generator)

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, sampler: str = "dpmpp_2m", steps: int = 20, guidance: float = 0.0,
                 generator: torch.Generator | None = None, batch_size: int = 500, **sampler_kwargs) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [-1, 1] of classes ``labels`` ``(B,)``, ``batch_size`` at a time.

        Initial noise and any sampler noise come from ``generator``, so a seed fixes the samples.
        """
        get_sampler(sampler), check_steps(steps)  # fail before any work
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0 (0 = conditional model without guidance), got {guidance}")
        self.check_labels(labels)
        device = next(self.net.parameters()).device
        labels = labels.to(device)
        null = torch.full((1,), self.null_label, dtype=labels.dtype, device=device)
        out = []
        for chunk in labels.split(batch_size):
            noise = torch.randn((len(chunk), self.channels, self.image_size, self.image_size), generator=generator,
                                device=device)
            x = sample(self.objective, self.net, noise, chunk, sampler=sampler, steps=steps, guidance=guidance,
                       null_cond=null if guidance else None, generator=generator, **sampler_kwargs)
            out.append(x.clamp(-1, 1))
        return torch.cat(out)


def build_generator(cfg: Mapping[str, Any]) -> ImageGenerator:
    """From the config's ``data`` (image_size), ``model`` (U-Net and label dropout) and ``objective`` sections."""
    data, model = cfg["data"], dict(cfg["model"])
    label_dropout = model.pop("label_dropout", 0.1)
    size = int(data["image_size"])
    net = ClassConditionalUNet(image_size=size, channels=1, num_classes=int(data.get("num_classes", 10)), **model)
    return ImageGenerator(make_objective(cfg["objective"]), net, size, 1, label_dropout)


def load_generator(path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
                   ) -> tuple[ImageGenerator, dict, Path]:
    """``(generator, config, checkpoint_dir)`` from a checkpoint, a ``checkpoints/`` root or a run directory."""
    ckpt = resolve_checkpoint(path)
    cfg = load_config(ckpt)
    missing = [k for k in ("data", "model", "objective") if k not in cfg]
    if missing:
        raise ValueError(f"{ckpt}/config.yaml lacks {missing}: not an image-generator checkpoint")
    gen = build_generator(cfg)
    gen.load_state_dict(load_tensors(ckpt, "ema" if use_ema else "model"))
    return gen.to(device).eval(), cfg, ckpt
