"""Per-key affine normalisers fitted from data and saved with the weights.

Two modes: ``"minmax"`` maps each dimension's [min, max] to [-1, 1]; ``"gaussian"`` maps it to zero mean and unit
standard deviation. A constant dimension (range or std below ``eps``) is only shifted, never divided by ~0: minmax
sends it to 0 and gaussian to 0, and unnormalisation gives back the constant.

Statistics travel as ``{key: {"min", "max", "mean", "std"}}`` with per-dimension tensors of the event shape, so a
dataset layer can compute them in a streaming pass and hand them to :meth:`Normalizer.from_stats`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

MODES = ("minmax", "gaussian", "identity")


def stats_of(x: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
    """Statistics over the leading (sample) axis of ``x`` ``(N, *event)``, in float64."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"cannot fit a normaliser to an array of shape {tuple(x.shape)}: need (N>0, ...)")
    if not torch.isfinite(x).all():
        raise ValueError("cannot fit a normaliser: the data contains NaN or inf")
    return {"min": x.amin(0), "max": x.amax(0), "mean": x.mean(0), "std": x.std(0, unbiased=False)}


def _affine(stats: Mapping[str, torch.Tensor], mode: str, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, offset)`` with ``normalized = x * scale + offset``."""
    if mode == "minmax":
        lo, hi = stats["min"].double(), stats["max"].double()
        span = hi - lo
        constant = span < eps
        scale = torch.where(constant, torch.ones_like(span), 2.0 / span.clamp_min(eps))
        offset = torch.where(constant, -lo, -1.0 - lo * scale)
    elif mode == "gaussian":
        mean, std = stats["mean"].double(), stats["std"].double()
        scale = torch.where(std < eps, torch.ones_like(std), 1.0 / std.clamp_min(eps))
        offset = -mean * scale
    elif mode == "identity":
        ref = stats["mean"] if "mean" in stats else stats["min"]
        scale, offset = torch.ones_like(ref, dtype=torch.float64), torch.zeros_like(ref, dtype=torch.float64)
    else:
        raise ValueError(f"unknown normaliser mode {mode!r}; expected one of {MODES}")
    return scale.float(), offset.float()


class Normalizer(nn.Module):
    """Maps named tensors to and from the network's normalised space.

    The affine parameters are buffers named ``<key>.scale`` / ``<key>.offset`` (event-shaped), so the state dict
    saves to safetensors as is and follows ``.to(device)``. ``normalize(key, x)`` accepts any ``x`` whose trailing
    dims equal the key's event shape, e.g. ``(B, T, D)`` for a ``(D,)`` key.
    """

    def __init__(self, params: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None):
        super().__init__()
        self._keys: list[str] = []
        for key, (scale, offset) in (params or {}).items():
            self._add(key, scale, offset)

    def _add(self, key: str, scale: torch.Tensor, offset: torch.Tensor) -> None:
        if scale.shape != offset.shape:
            raise ValueError(f"normaliser key {key!r}: scale {tuple(scale.shape)} != offset {tuple(offset.shape)}")
        self._keys.append(key)
        # Buffer names may not contain '.', so the key is escaped; state_dict names stay readable.
        self.register_buffer(self._name(key, "scale"), scale.float().contiguous())
        self.register_buffer(self._name(key, "offset"), offset.float().contiguous())

    @staticmethod
    def _name(key: str, part: str) -> str:
        return f"{key.replace('.', '__')}__{part}"

    @classmethod
    def from_stats(
        cls, stats: Mapping[str, Mapping[str, torch.Tensor]], modes: Mapping[str, str], eps: float = 1e-6
    ) -> "Normalizer":
        """Build from precomputed statistics; ``modes[key]`` picks ``minmax``/``gaussian``/``identity``."""
        missing = [k for k in modes if k not in stats]
        if missing:
            raise KeyError(f"normaliser: no statistics for keys {missing}; have {sorted(stats)}")
        return cls({k: _affine({n: torch.as_tensor(v) for n, v in stats[k].items()}, m, eps) for k, m in modes.items()})

    @classmethod
    def fit(cls, data: Mapping[str, np.ndarray | torch.Tensor], modes: Mapping[str, str], eps: float = 1e-6) -> "Normalizer":
        """Fit to in-memory arrays ``data[key]`` of shape ``(N, *event)``."""
        return cls.from_stats({k: stats_of(data[k]) for k in modes}, modes, eps)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "Normalizer":
        """Rebuild from a saved state dict (e.g. loaded with ``safetensors.torch.load_file``)."""
        keys = sorted({name[: -len("__scale")] for name in state if name.endswith("__scale")})
        params = {}
        for k in keys:
            if f"{k}__offset" not in state:
                raise KeyError(f"normaliser state: {k}__scale has no matching {k}__offset")
            params[k.replace("__", ".")] = (state[f"{k}__scale"], state[f"{k}__offset"])
        return cls(params)

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def params(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self._keys:
            raise KeyError(f"normaliser has no key {key!r}; it was fitted on {self._keys}")
        return getattr(self, self._name(key, "scale")), getattr(self, self._name(key, "offset"))

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self.params(key)
        return x * scale + offset

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self.params(key)
        return (x - offset) / scale
