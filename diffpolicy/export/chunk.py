"""The chunk function a deployed controller runs: observations and noise in, an action chunk out.

:class:`ChunkFunction` wraps a policy and one sampling plan as a module whose ``forward`` is the whole path of
:meth:`Policy.predict_action <diffpolicy.policy.base.Policy.predict_action>` with the noise as an input: normalise
the low-dim observations, encode, run the plan's sampler from the given noise, unnormalise. Nothing is written
again here: it calls the policy's ``encode`` and its one sampling entry, ``sample_chunk``, so an exported artifact
computes what evaluation and the controller compute.
"""

from __future__ import annotations

import torch
from torch import nn

from ..policy.base import Policy
from ..policy.diffusion import DiffusionPolicy


class NotExportable(ValueError):
    """A policy or sampling plan whose chunk function cannot be written as a fixed graph."""


class ChunkFunction(nn.Module):
    """``forward(*obs, noise) -> (action, action_normalized)``, both ``(B, T, Da)``.

    ``obs``: one tensor per key of ``input_keys``, in that order, ``(B, To, *shape)`` as the encoder sees them
    (low-dim keys in dataset units; images float in [0, 1], ``(C, h, w)`` after the centre crop). ``noise``
    ``(B, T, Da)`` is the sampler's initial standard-normal noise. ``action`` is in dataset units (the full predicted
    chunk: the first executed action is index ``n_obs_steps - 1``); ``action_normalized`` is the same chunk in the
    network's normalised units.
    """

    def __init__(self, policy: Policy, plan):
        super().__init__()
        check_exportable(policy, plan)
        self.policy, self.plan = policy, plan
        self.input_keys = list(policy.encoder.keys)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *obs, noise = inputs
        cond = self.policy.encode(dict(zip(self.input_keys, obs)))
        normed = self.policy.sample_chunk(cond, self.plan, noise=noise)
        return self.policy.normalizer.unnormalize(self.policy.action_key, normed), normed


def check_exportable(policy: Policy, plan) -> None:
    """A :class:`NotExportable` error unless the chunk is a function of the observations and the initial noise."""
    if not isinstance(policy, DiffusionPolicy):
        raise NotExportable(f"export writes a diffusion or flow policy's sampling loop; this checkpoint holds a "
                            f"{type(policy).__name__}, which has none")
    if plan is None or not plan.deterministic:
        raise NotExportable(f"sampler {getattr(plan, 'sampler', None)!r} draws fresh noise at every step, so its "
                            "chunk is not a function of the initial noise input; export a deterministic sampler "
                            "(ddim, euler, heun or dpmpp_2m)")
