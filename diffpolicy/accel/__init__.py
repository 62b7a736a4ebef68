"""Optional speed-ups, applied to a built model or to the process by one explicit call each.

- :func:`accelerate` (``net`` in place): the 1D U-Net's convolutions take CPU fast paths (matrix products at batch 1,
  Winograd F(4, 5) for float32 batches, per-tap weight gradients in bf16; :mod:`.conv1d`) and, where it pays, a
  channels-last trunk layout (:mod:`.unet1d`). Parameters, state-dict keys and outputs stay (float32 differences
  ~1e-6 relative; ``tests/test_accel_*.py``). The CLIs apply it (config key ``accel``, default true) and
  :meth:`Controller.from_checkpoint <diffpolicy.control.Controller.from_checkpoint>` does (``accel=True``).
- :func:`compile_trunk`: the U-Net trunk through ``torch.compile`` (the controller's ``compile=True``).
- :func:`tune_process`: process-wide CPU runtime settings (MKL mode, glibc allocator thresholds), which the CLIs
  opt in to at start; importing ``diffpolicy`` changes nothing process-wide.

``python benchmarks/bench_core.py`` measures each setting side by side with Diffusion Policy's U-Net.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nets.unet1d import ConditionalUnet1D
from .conv1d import FastConv1d, FastConvTranspose1d
from .runtime import tune_process
from .unet1d import ChannelsLastUnet1D, channels_last_pays

__all__ = ["accelerate", "is_accelerated", "compile_trunk", "tune_process"]

SWAPS = {nn.Conv1d: FastConv1d, nn.ConvTranspose1d: FastConvTranspose1d}


def accelerate(model: nn.Module, channels_last: bool | None = None) -> nn.Module:
    """Swap ``model``'s 1D convolutions and U-Nets for their fast CPU versions, in place; returns ``model``.

    ``channels_last``: the U-Net trunk layout for large CPU inputs; ``None`` where it was measured faster (widths up
    to 256 channels). Modules of other types are left alone, so any policy or model can be passed.
    """
    for module in model.modules():
        if type(module) in SWAPS:  # exact types: a subclass may have its own forward
            module.__class__ = SWAPS[type(module)]
        elif type(module) is ConditionalUnet1D:
            if channels_last if channels_last is not None else channels_last_pays(module):
                module.__class__ = ChannelsLastUnet1D
    return model


def is_accelerated(model: nn.Module) -> bool:
    """Whether any module of ``model`` runs an accelerated path."""
    return any(isinstance(m, (FastConv1d, FastConvTranspose1d)) for m in model.modules())


def compile_trunk(net: ConditionalUnet1D) -> ConditionalUnet1D:
    """Run ``net``'s trunk (``forward_film``, what every sampling step calls) through ``torch.compile``; in place.
    The first calls compile: minutes on a 2-core CPU, so do it in a warm-up."""
    net.forward_film = torch.compile(net.forward_film)
    return net
