"""What every policy shares: normalisation, observation encoding, chunk geometry, and the prediction interface.

Observations come in as ``{key: (B, To, ...)}`` in dataset units (images float ``(B, To, C, H, W)`` in [0, 1],
already cropped); actions come out as ``(B, n_action_steps, Da)`` in dataset units. The first executed action of a
chunk is the one aligned with the newest observation (index ``n_obs_steps - 1`` of the predicted horizon).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..core.normalize import Normalizer
from ..nets.encoders import ObservationEncoder


class Policy(nn.Module):
    def __init__(self, normalizer: Normalizer, encoder: ObservationEncoder, action_dim: int, horizon: int,
                 n_obs_steps: int, n_action_steps: int, action_key: str = "action"):
        super().__init__()
        self.normalizer, self.encoder = normalizer, encoder
        self.action_dim, self.horizon = action_dim, horizon
        self.n_obs_steps, self.action_key = n_obs_steps, action_key
        self.set_n_action_steps(n_action_steps)

    @property
    def executable_steps(self) -> int:
        """Actions of a chunk at or after the newest observation: the most that can run before replanning."""
        return self.horizon - self.n_obs_steps + 1

    def set_n_action_steps(self, n_action_steps: int) -> None:
        """How many actions of each chunk are executed before replanning (changeable after training)."""
        if not 1 <= n_action_steps <= self.executable_steps:
            raise ValueError(f"n_obs_steps ({self.n_obs_steps}) - 1 + n_action_steps ({n_action_steps}) exceeds the "
                             f"horizon ({self.horizon}), or n_action_steps < 1: the executed actions must lie inside "
                             f"the predicted chunk")
        self.n_action_steps = n_action_steps

    def encode(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Normalise low-dim keys and encode everything: ``{key: (B, To, ...)}`` -> ``(B, To * F)``."""
        normed = {k: (v if k in self.encoder.image_keys else self.normalizer.normalize(k, v)) for k, v in obs.items()
                  if k in self.encoder.keys}
        return self.encoder(normed)

    def forward(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss of a batch ``{"obs": {key: (B, To, ...)}, "action": (B, T, Da)}``; an optional
        ``"noise"`` ``(B, T, Da)`` couples each action chunk with its noise (reflow)."""
        cond = self.encode({k: v[:, : self.n_obs_steps] for k, v in batch["obs"].items()})
        action = self.normalizer.normalize(self.action_key, batch["action"])
        if "noise" in batch:
            return self.loss(cond, action, generator, noise=batch["noise"])
        return self.loss(cond, action, generator)

    def loss(self, cond: torch.Tensor, action: torch.Tensor, generator: torch.Generator | None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    # -- sampling ---------------------------------------------------------------------------------------------------
    supports_inpainting = False  # whether sample_chunk can hold chunk entries fixed (mask/known)

    def sampling_plan(self, sampler: str | None = None, steps: int | None = None, shift: float | None = None,
                      spacing: str | None = None, time_table: bool = False):
        """A sampling plan (:mod:`~diffpolicy.policy.sampling`); a regression policy has none (None), and sampler
        and step count do not apply to it."""
        if shift is not None:
            raise ValueError(f"shift={shift} sets a flow-matching policy's time grid; {type(self).__name__} has none")
        if spacing is not None:
            raise ValueError(f"spacing={spacing} sets a DDPM policy's timesteps; {type(self).__name__} has none")
        return None

    def sample_chunk(self, cond: torch.Tensor, plan=None, noise: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, mask: torch.Tensor | None = None,
                     known: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised action chunk ``(B, T, Da)`` for a condition ``(B, To * F)``: the one sampling entry."""
        raise NotImplementedError

    @torch.inference_mode()
    def predict_action(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None,
                       plan=None, **plan_kwargs) -> dict[str, torch.Tensor]:
        """``{"action": (B, Na, Da), "action_pred": (B, T, Da)}`` in dataset units. ``plan`` (or the keywords of
        :meth:`sampling_plan`: ``sampler``, ``steps``, ``shift``, ``spacing``) chooses the sampling."""
        if plan is None:
            plan = self.sampling_plan(**plan_kwargs)
        chunk = self.normalizer.unnormalize(self.action_key, self.sample_chunk(self.encode(obs), plan,
                                                                               generator=generator))
        start = self.n_obs_steps - 1
        return {"action": chunk[:, start: start + self.n_action_steps], "action_pred": chunk}
