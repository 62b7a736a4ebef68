"""Quality of generated digits, measured with a small classifier trained on the real training images.

- **Class accuracy**: the fraction of images generated for class ``c`` that the classifier labels ``c``.
- **FID in the classifier's feature space**: the Fréchet distance between Gaussians fitted to the classifier's
  penultimate activations (``FEATURES``-dimensional) of two image sets (Heusel et al. 2017, with this classifier in
  place of Inception, which would need a download and does not fit 16x16 grey digits). Its floor is the distance
  between real training images and held-out real images of the same counts: a generator cannot be expected to do
  better than fresh real data. FID is biased by sample size, so compare numbers computed with equal set sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import NUM_CLASSES, DigitsSplit
from .model import ImageGenerator

FEATURES = 64


class DigitClassifier(nn.Module):
    """``(B, 1, H, W)`` in [-1, 1] -> logits ``(B, 10)``; :meth:`features` gives the ``(B, 64)`` penultimate layer."""

    def __init__(self, image_size: int = 16):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"classifier image_size {image_size} must be a multiple of 4")
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * (image_size // 4) ** 2, FEATURES), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random integer translations by up to ``max_shift`` pixels (background value -1), one per image."""
    B, _, H, W = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0)
    dx, dy = torch.randint(0, 2 * p + 1, (2, B), generator=generator, device=x.device)
    rows = (torch.arange(H, device=x.device)[None] + dy[:, None])[:, None, :, None].expand(B, 1, H, W + 2 * p)
    out = padded.gather(2, rows)
    cols = (torch.arange(W, device=x.device)[None] + dx[:, None])[:, None, None, :].expand(B, 1, H, W)
    return out.gather(3, cols)


def train_classifier(split: DigitsSplit, epochs: int = 20, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                     device: str | torch.device = "cpu", progress: bool = True) -> DigitClassifier:
    """Train :class:`DigitClassifier` on ``split`` with random 1-pixel shifts; seeded, so repeatable."""
    torch.manual_seed(seed)
    size = split.images.shape[-1]
    clf = DigitClassifier(size).to(device)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * -(-len(split) // batch_size))
    g = torch.Generator(device=device).manual_seed(seed)
    images, labels = split.images.to(device), split.labels.to(device)
    clf.train()
    for _ in tqdm(range(epochs), desc="classifier", disable=not progress, dynamic_ncols=True):
        for idx in torch.randperm(len(split), generator=g, device=device).split(batch_size):
            loss = F.cross_entropy(clf(_shift(images[idx], g)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return clf.eval().requires_grad_(False)


@torch.no_grad()
def predict_features(clf: DigitClassifier, images: torch.Tensor, batch_size: int = 1000):
    """``(predicted labels (N,), features (N, FEATURES) float64)`` of ``images`` ``(N, 1, H, W)``."""
    preds, feats = [], []
    for chunk in images.split(batch_size):
        f = clf.features(chunk)
        preds.append(clf.head(f).argmax(1))
        feats.append(f.double())
    return torch.cat(preds), torch.cat(feats)


def accuracy(clf: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict_features(clf, images)[0] == labels.to(images.device)).float().mean())


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(c)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features ``(N1, D)`` and ``(N2, D)`` (float64).

    ``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^1/2)``, with ``tr (C1 C2)^1/2`` computed as the trace of the PSD root of
    ``C1^1/2 C2 C1^1/2`` (same eigenvalues, symmetric, so ``eigh`` is stable where ``sqrtm`` of a product is not).
    """
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with equal D, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    if min(len(f1), len(f2)) < 2:
        raise ValueError(f"need at least 2 samples per set for a covariance, got {len(f1)} and {len(f2)}")
    f1, f2 = f1.double(), f2.double()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = torch.cov(f1.T), torch.cov(f2.T)
    s1 = _sqrtm_psd(c1)
    tr_sqrt = torch.linalg.eigvalsh(s1 @ c2 @ s1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + c1.trace() + c2.trace() - 2 * tr_sqrt)


def fid(clf: DigitClassifier, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """FID in the classifier's feature space between two image sets ``(N, 1, H, W)``."""
    return frechet_distance(predict_features(clf, images_a)[1], predict_features(clf, images_b)[1])


def balanced_labels(per_class: int, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """``(per_class * num_classes,)`` labels ``0, 0, ..., 1, 1, ...``."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def evaluate_samples(gen: ImageGenerator, clf: DigitClassifier, reference: torch.Tensor, per_class: int,
                     sampler: str, steps: int, guidance: float, seed: int = 0) -> dict:
    """Generate ``per_class`` images per class and score them: class accuracy and FID against ``reference``."""
    labels = balanced_labels(per_class, gen.num_classes)
    device = next(gen.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    images = gen.generate(labels, sampler=sampler, steps=steps, guidance=guidance, generator=g)
    pred, feats = predict_features(clf, images)
    ref_feats = predict_features(clf, reference.to(device))[1]
    return {"sampler": sampler, "steps": steps, "guidance": guidance, "n": len(labels),
            "class_accuracy": float((pred == labels.to(device)).float().mean()),
            "fid": frechet_distance(feats, ref_feats)}
