"""A noise-conditional digit classifier for classifier guidance (Dhariwal & Nichol 2021).

It models ``p(c | x_t)`` for digits noised along a generator's Gaussian path: trained with cross-entropy on
``x_t = alpha x0 + sigma noise`` at times drawn by the generator's own objective (so it sees the levels the sampler
visits and takes the same ``model_time``), with the shared training loop. Its gradient
``grad_x log p(c | x_t)`` (:meth:`NoisyDigitClassifier.log_prob_grad`) steers any sampler through the core's
denoiser view (:meth:`~diffpolicy.core.objectives.Objective.denoiser`, ``classifier_scale``) without retraining the
generator. This classifier guides; the clean reference classifier of :mod:`~diffpolicy.imagegen.metrics` judges,
so guided samples are not scored by the network they were pushed towards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.objectives import ClassifierGrad, Objective, make_objective
from ..nets.embeddings import TimeEmbedding
from ..policy.checkpoint import load_config, load_tensors, resolve_checkpoint
from .data import NUM_CLASSES


class _Block(nn.Module):
    """Conv 3x3 -> GroupNorm -> time shift and scale -> SiLU; ``(B, Ci, H, W), (B, E) -> (B, Co, H, W)``."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int, groups: int):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out)
        self.film = nn.Linear(embed_dim, 2 * c_out)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        return F.silu(self.norm(self.conv(x)) * (1 + scale) + shift)


class NoisyDigitClassifier(nn.Module):
    """``logits(x (B, C, H, W), model_time (B,)) -> (B, num_classes)``; ``forward(batch, generator) -> loss``.

    Two conv blocks per resolution (widths ``channels``, halving the resolution between them), each modulated by the
    time embedding, then global average pooling and a linear head.
    """

    def __init__(self, objective: Objective, image_size: int = 16, channels: Sequence[int] = (32, 64, 64),
                 in_channels: int = 1, time_embed_dim: int = 64, norm_num_groups: int = 8,
                 num_classes: int = NUM_CLASSES):
        super().__init__()
        if image_size % 2 ** (len(channels) - 1):
            raise ValueError(f"classifier image_size {image_size} is not divisible by 2^{len(channels) - 1} "
                             f"({len(channels)} resolutions)")
        if any(c % norm_num_groups for c in channels):
            raise ValueError(f"classifier channels {list(channels)} must be multiples of norm_num_groups="
                             f"{norm_num_groups}")
        self.objective, self.image_size, self.in_channels = objective, image_size, in_channels
        self.num_classes = num_classes
        self.time = TimeEmbedding(time_embed_dim)
        blocks, c_prev = [], in_channels
        for c in channels:
            blocks += [_Block(c_prev, c, time_embed_dim, norm_num_groups),
                       _Block(c, c, time_embed_dim, norm_num_groups)]
            c_prev = c
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(c_prev, num_classes)

    def logits(self, x: torch.Tensor, model_time: torch.Tensor) -> torch.Tensor:
        emb = self.time(model_time.to(x.dtype).expand(x.shape[0]))
        h = x
        for i, block in enumerate(self.blocks):
            if i and i % 2 == 0:
                h = F.avg_pool2d(h, 2)
            h = block(h, emb)
        return self.head(h.mean(dim=(2, 3)))

    def forward(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Cross-entropy on ``batch["image"]`` ``(B, C, H, W)`` noised at the objective's training times."""
        x0, labels = batch["image"], batch["label"]
        expected = (self.in_channels, self.image_size, self.image_size)
        if x0.ndim != 4 or tuple(x0.shape[1:]) != expected:
            raise ValueError(f"batch['image'] has shape {tuple(x0.shape)}; "
                             f"expected (B, {', '.join(map(str, expected))})")
        alpha, sigma, model_time, _ = self.objective.sample_training_times(x0.shape[0], x0.device, generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * noise
        return F.cross_entropy(self.logits(x, model_time), labels)

    def log_prob_grad(self, labels: torch.Tensor) -> ClassifierGrad:
        """``grad_x log p(labels | x_t)`` as the core's classifier gradient, for a batch ``(B,)`` of wanted classes;
        computed with autograd even when sampling runs under ``torch.no_grad``."""
        if labels.ndim != 1 or int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"classifier guidance labels must be (B,) class ids in 0..{self.num_classes - 1}")

        def grad(x, model_time, alpha, sigma):
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                log_p = F.log_softmax(self.logits(x, model_time), dim=1).gather(1, labels[:, None]).sum()
                return torch.autograd.grad(log_p, x)[0]

        return grad


def build_classifier(cfg: Mapping[str, Any]) -> NoisyDigitClassifier:
    """From a config's ``objective`` (the path it classifies on), ``data`` (image_size, num_classes) and
    ``classifier`` (architecture) sections."""
    arch = {k: v for k, v in dict(cfg.get("classifier", {})).items() if k in ("channels", "time_embed_dim",
                                                                                "norm_num_groups")}
    data = cfg["data"]
    return NoisyDigitClassifier(make_objective(cfg["objective"]), int(data["image_size"]),
                                num_classes=int(data.get("num_classes", NUM_CLASSES)), **arch)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> NoisyDigitClassifier:
    """The EMA weights of a classifier run (a checkpoint, a ``checkpoints/`` root or a run directory)."""
    ckpt = resolve_checkpoint(path)
    cfg = load_config(ckpt)
    if cfg.get("kind") != "noisy_classifier":
        raise ValueError(f"{ckpt} is not a noise-conditional classifier checkpoint (its config.yaml has kind="
                         f"{cfg.get('kind')!r}); train one with `diffpolicy-imagegen classifier`")
    clf = build_classifier(cfg)
    clf.load_state_dict(load_tensors(ckpt, "ema"))
    return clf.to(device).eval().requires_grad_(False)


def check_same_path(classifier: NoisyDigitClassifier, objective: Objective) -> None:
    """Refuse a classifier trained on another Gaussian path or model-time scale than ``objective``'s: its noise
    levels and time inputs would not be the sampler's."""
    mine, theirs = classifier.objective.sampling_schedule(16), objective.sampling_schedule(16)
    same = type(classifier.objective) is type(objective) and all(
        torch.allclose(a, b) for a, b in zip((mine.alpha, mine.sigma, mine.model_time),
                                             (theirs.alpha, theirs.sigma, theirs.model_time)))
    if not same:
        raise ValueError(f"the classifier was trained on a {type(classifier.objective).__name__} path that differs "
                         f"from the generator's {type(objective).__name__} path (noise levels or model times); "
                         f"train one with the generator's objective: `diffpolicy-imagegen classifier imagegen=...`")
