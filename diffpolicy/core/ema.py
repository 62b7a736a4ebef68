"""Exponential moving average of weights with the warm-up of Diffusion Policy / diffusers' ``EMAModel``."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``self.model``, a frozen copy of a network whose weights trail the trained ones.

    The decay at update ``k`` (counted from 0 after ``update_after_step`` updates) is
    ``1 - (1 + k / inv_gamma) ** -power`` clamped to ``[min_decay, max_decay]``: early updates copy almost
    everything (the average is not stuck at the random init), later ones average over ~1/(1 - decay) steps.
    Buffers (e.g. normaliser statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, power: float = 0.75, inv_gamma: float = 1.0, min_decay: float = 0.0,
                 max_decay: float = 0.9999, update_after_step: int = 0):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.inv_gamma = power, inv_gamma
        self.min_decay, self.max_decay, self.update_after_step = min_decay, max_decay, update_after_step
        self.step = 0

    def decay(self, step: int) -> float:
        k = step - self.update_after_step - 1
        if k < 0:
            return 0.0
        value = 1 - (1 + k / self.inv_gamma) ** -self.power
        return max(self.min_decay, min(value, self.max_decay))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after each optimiser step)."""
        self.step += 1
        d = self.decay(self.step)
        ema_params = [p for p in self.model.parameters()]
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError(f"EMA: model has {len(params)} parameter tensors, the average has {len(ema_params)}")
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.model.load_state_dict(state["model"])
