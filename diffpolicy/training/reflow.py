"""Reflow (Liu et al. 2023, "Flow straight and fast"): retrain a flow policy on its own noise -> chunk couplings.

A flow-matching policy trained on independent (demo chunk, noise) pairs learns curved sampling paths: where the
demonstrations are multimodal, the first Euler steps head for the average of the modes, so few-step sampling
blurs them. Reflow draws, for every training window, ``copies`` noise chunks ``z`` and the teacher's many-step
sample ``x = teacher(z | obs)``, then trains a student (initialised from the teacher) with the same flow loss on the
fixed pairs ``(x, z)``. Each pair is joined by a straight line that no other pair's line needs to cross, so the
student's paths straighten and a few Euler steps land where the teacher's many did.

The couplings live in memory: observation windows, chunk and noise per pair (small for state observations; for
images, ``copies x windows`` image stacks).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.dataset import WindowDataset
from ..policy.diffusion import DiffusionPolicy
from ..policy.sampling import SamplingPlan


@torch.inference_mode()
def make_couplings(teacher: DiffusionPolicy, data: WindowDataset, plan: SamplingPlan | None = None, copies: int = 2,
                   batch_size: int = 512, seed: int = 0, device: torch.device | str = "cpu",
                   state_noise: float = 0.0) -> dict:
    """Teacher samples for every window of ``data``, ``copies`` times each, sampled with ``plan`` (default: the
    teacher's configured sampler and steps).

    ``state_noise > 0`` shifts each window's low-dimensional observations by a Gaussian offset of that standard
    deviation in normalised units (one offset for all the window's steps, so velocities stay as observed) before
    the teacher labels them: pairs on states near the demonstrations' rather than on them (DART-style coverage for
    a student that will drift off the demonstrations). Image observations are left as they are.

    Returns ``{"obs": {key: (N, To, ...)}, "action": (N, T, Da) dataset units, "noise": (N, T, Da)}`` with
    ``N = copies x len(data)``, on the CPU; everything is a function of ``seed``.
    """
    if not isinstance(teacher, DiffusionPolicy) or teacher.objective.prediction != "velocity":
        raise ValueError(f"reflow needs a flow-matching teacher (objective type flow); got "
                         f"{type(teacher).__name__} with prediction "
                         f"{getattr(getattr(teacher, 'objective', None), 'prediction', None)!r}")
    if copies < 1:
        raise ValueError(f"reflow copies must be >= 1, got {copies}")
    plan = plan or teacher.sampling_plan()
    windows = np.tile(np.arange(len(data)), copies)
    g = torch.Generator().manual_seed(seed)
    pieces = []
    for start in tqdm(range(0, len(windows), batch_size), desc=f"reflow couplings ({plan.sampler}-{plan.steps})"):
        batch = data.sample_batch(windows[start: start + batch_size], seed=seed + start)
        obs = {k: v[:, : teacher.n_obs_steps] for k, v in batch["obs"].items()}
        if state_noise > 0:
            obs = {k: v if k in data.image_keys else shift_state(teacher.normalizer, k, v, state_noise, g)
                   for k, v in obs.items()}
        pieces.append(teacher_pairs(teacher, obs, plan, g, device))
    return merge_couplings(*pieces)


def shift_state(normalizer, key: str, x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Low-dim observation windows ``(B, To, D)`` shifted by one offset ``(B, 1, D)`` per window, drawn with standard
    deviation ``std`` in the normaliser's units, returned in dataset units."""
    offset = std * torch.randn(x.shape[0], 1, *x.shape[2:], generator=generator)
    return normalizer.unnormalize(key, normalizer.normalize(key, x) + offset.to(x.dtype))


@torch.inference_mode()
def teacher_pairs(teacher: DiffusionPolicy, obs: Mapping[str, torch.Tensor], plan: SamplingPlan,
                  generator: torch.Generator, device: torch.device | str = "cpu") -> dict:
    """One batch of couplings: fresh noise ``(B, T, Da)`` from ``generator`` (on the CPU) and the teacher's sample
    from it for observation windows ``{key: (B, To, ...)}``; the couplings' layout, on the CPU."""
    noise = torch.randn(len(next(iter(obs.values()))), teacher.horizon, teacher.action_dim, generator=generator)
    chunk = teacher.sample_chunk(teacher.encode({k: v.to(device) for k, v in obs.items()}), plan,
                                 noise=noise.to(device))
    return {"obs": {k: v.cpu() for k, v in obs.items()},
            "action": teacher.normalizer.unnormalize(teacher.action_key, chunk).cpu(), "noise": noise}


def merge_couplings(*couplings: Mapping) -> dict:
    """Couplings concatenated along the pair axis (the same observation keys in each)."""
    return {"obs": {k: torch.cat([c["obs"][k] for c in couplings]) for k in couplings[0]["obs"]},
            "action": torch.cat([c["action"] for c in couplings]), "noise": torch.cat([c["noise"] for c in couplings])}


class CouplingBatches:
    """``batch_fn(step, generator)`` over fixed couplings: the batch of step ``k`` is a function of
    ``(seed, k, rank)``, as for :class:`~diffpolicy.training.batches.StepBatches`."""

    def __init__(self, couplings: Mapping, batch_size: int, seed: int = 0, device: torch.device | str = "cpu",
                 rank: int = 0):
        self.c, self.batch_size, self.seed, self.rank = couplings, batch_size, seed, rank
        self.device = torch.device(device)
        self.n = len(couplings["action"])

    def __call__(self, step: int, generator: torch.Generator | None = None) -> dict:
        idx = torch.from_numpy(np.random.default_rng([self.seed, step, self.rank]).integers(0, self.n, self.batch_size))
        return {"obs": {k: v[idx].to(self.device) for k, v in self.c["obs"].items()},
                "action": self.c["action"][idx].to(self.device), "noise": self.c["noise"][idx].to(self.device)}
