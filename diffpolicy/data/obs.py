"""Observations as the policy sees them: one module for training windows, evaluation and the controller.

*Raw* observations are flat ``{name: array}`` records: a dataset's arrays ``data/<name>`` ``(N, ...)``, or one env
step's observation flattened (a ``Box`` observation is named ``state``; nested ``Dict`` entries ``outer/inner``).
An :class:`ObsSpec` (the task config's ``obs_spec``) says how raw records become the policy's keys -- rename, select
or slice components, angle -> (sin, cos), affine scale, concatenate -- and the same spec is applied to dataset arrays
at training time and to live observations in evaluation and the controller (it is saved with the checkpoint's task).

Stored and live images are channel-last ``(..., H, W, C)`` ``uint8`` (or float in [0, 255]); the policy takes float
``(..., C, H, W)`` in [0, 1], centre-cropped at run time (training windows crop at random while gathering,
:mod:`~diffpolicy.data.augment`). Low-dim observations are float32 in dataset units. :class:`ObsAdapter` turns an
env's observation into the policy's per-step tensors and stacks histories into ``{key: (B, To, ...)}``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from diffpolicy.data.tasks import flatten_obs

PART_FIELDS = {"key", "index", "slice", "angle", "scale", "offset"}


@dataclass(frozen=True)
class ObsPart:
    """One raw key's contribution to a policy key: ``raw[..., index or slice]``, optionally ``(sin, cos)`` of it,
    then ``* scale + offset``; ``(..., d)`` -> ``(..., k)``."""

    key: str
    index: tuple[int, ...] | None = None
    slice: tuple[int, int] | None = None
    angle: bool = False
    scale: Any = None
    offset: Any = None

    @property
    def plain(self) -> bool:
        return self.index is None and self.slice is None and not self.angle and self.scale is None \
            and self.offset is None

    def width(self, d: int) -> int:
        """Output width for a raw last axis of ``d`` (indices checked against it)."""
        if self.index is not None:
            bad = [i for i in self.index if not -d <= i < d]
            if bad:
                raise IndexError(f"index {bad} out of range for {d} components")
            k = len(self.index)
        elif self.slice is not None:
            k = len(range(*slice(*self.slice).indices(d)))
            if k == 0:
                raise IndexError(f"slice {list(self.slice)} selects nothing of {d} components")
        else:
            k = d
        return 2 * k if self.angle else k

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.index is not None:
            x = x[..., list(self.index)]
        elif self.slice is not None:
            x = x[..., slice(*self.slice)]
        if self.angle:
            x = np.concatenate([np.sin(x), np.cos(x)], axis=-1)
        if self.scale is not None:
            x = x * np.asarray(self.scale, dtype=np.float32)
        if self.offset is not None:
            x = x + np.asarray(self.offset, dtype=np.float32)
        return x


class ObsSpec:
    """The policy's observation keys and how each is made from raw keys (see the module docstring); ``raw_keys``:
    the raw keys it reads, in order of first use.

    ``spec`` (a task's ``obs_spec``): ``{policy_key: part or [parts]}``, a part being ``{"key": raw_key, "index":
    i or [i, ...], "slice": [start, stop], "angle": true, "scale": s, "offset": o}`` (all but ``key`` optional;
    ``index`` and ``slice`` exclusive). Policy keys in ``obs_keys`` without an entry are the raw key of that name.
    Low-dim parts are concatenated on the last axis; an image key takes one plain part (a rename).
    """

    def __init__(self, obs_keys: Sequence[str], spec: Mapping[str, Any] | None = None):
        self.keys = list(obs_keys)
        spec = dict(spec or {})
        unknown = sorted(set(spec) - set(self.keys))
        if unknown:
            raise ValueError(f"obs_spec has entries {unknown} that are not in obs_keys {self.keys}")
        self.parts = {k: self._parse(k, spec.get(k, {"key": k})) for k in self.keys}
        # Derived once: apply() runs at every env step of evaluation and the controller.
        self.raw_keys = list(dict.fromkeys(p.key for parts in self.parts.values() for p in parts))
        self._renames = {k: parts[0].key for k, parts in self.parts.items() if len(parts) == 1 and parts[0].plain}

    @staticmethod
    def _parse(name: str, entry: Any) -> tuple[ObsPart, ...]:
        entries = entry if isinstance(entry, (list, tuple)) else [entry]
        parts = []
        for e in entries:
            if isinstance(e, str):
                e = {"key": e}
            if not isinstance(e, Mapping) or "key" not in e or set(e) - PART_FIELDS:
                raise ValueError(f"obs_spec.{name}: each part is a raw key name or a mapping with 'key' and "
                                 f"optional {sorted(PART_FIELDS - {'key'})}; got {e!r}")
            if e.get("index") is not None and e.get("slice") is not None:
                raise ValueError(f"obs_spec.{name}: part of {e['key']!r} has both index and slice")
            index = e.get("index")
            index = None if index is None else tuple(int(i) for i in (index if isinstance(index, (list, tuple))
                                                                        else [index]))
            sl = e.get("slice")
            if sl is not None and (not isinstance(sl, (list, tuple)) or len(sl) != 2):
                raise ValueError(f"obs_spec.{name}: slice must be [start, stop], got {sl!r}")
            parts.append(ObsPart(str(e["key"]), index, None if sl is None else (sl[0], sl[1]), bool(e.get("angle")),
                                 e.get("scale"), e.get("offset")))
        if not parts:
            raise ValueError(f"obs_spec.{name}: no parts")
        return tuple(parts)

    @classmethod
    def from_task(cls, task: Mapping[str, Any]) -> "ObsSpec":
        return cls(task["obs_keys"], task.get("obs_spec"))

    def renamed(self, key: str) -> str | None:
        """The raw key that policy key ``key`` is a plain rename of (None if it is computed)."""
        return self._renames.get(key)

    def shapes(self, raw_shapes: Mapping[str, Sequence[int]], source: str) -> dict[str, tuple[int, ...]]:
        """Per-step shapes of the policy keys from the raw keys' per-step shapes; mismatches are a ``ValueError``
        naming the key and ``source`` (e.g. the env id or the dataset path)."""
        out = {}
        for key, parts in self.parts.items():
            missing = [p.key for p in parts if p.key not in raw_shapes]
            if missing:
                raise ValueError(f"observation key {key!r} needs {missing}, which {source} does not have "
                                 f"(it has {sorted(raw_shapes)})")
            shapes = [tuple(raw_shapes[p.key]) for p in parts]
            if self.renamed(key) is not None:  # a rename: any shape (vectors, images)
                out[key] = shapes[0]
                continue
            widths = []
            for p, shape in zip(parts, shapes):
                if len(shape) > 1:
                    raise ValueError(f"observation key {key!r}: {p.key!r} of {source} has shape {shape}; index, "
                                     "slice, angle, scale and joining apply to vectors (an image can only be renamed)")
                try:
                    widths.append(p.width(shape[0] if shape else 1))
                except IndexError as e:
                    raise ValueError(f"observation key {key!r}: {p.key!r} of {source}: {e}") from None
            out[key] = (sum(widths),)
        return out

    def apply(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw arrays with any leading axes (one step ``(d,)``, or a dataset's ``(N, d)``) -> policy keys; images
        and plain renames are passed through untouched (no copy)."""
        out = {}
        for key, parts in self.parts.items():
            src = self._renames.get(key)
            if src is not None:
                out[key] = raw[src]
            else:
                xs = [p(raw[p.key] if np.ndim(raw[p.key]) else np.reshape(raw[p.key], (1,))) for p in parts]
                out[key] = xs[0] if len(xs) == 1 else np.concatenate(xs, axis=-1)
        return out


def to_float(images_chw: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Channel-first ``uint8`` (or float in [0, 255]) images -> float32 in [0, 1], same shape."""
    return torch.as_tensor(images_chw).to(torch.float32).div_(255.0)


def to_float_chw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(..., H, W, C)`` uint8 or float in [0, 255] -> float32 ``(..., C, H, W)`` in [0, 1] (e.g. env frames)."""
    return to_float(torch.as_tensor(images).movedim(-1, -3).contiguous())


def center_crop(images: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Centre crop of ``(..., C, H, W)`` images: the eval-time transform, for run-time observations too."""
    h, w = images.shape[-2:]
    ch, cw = out_hw
    if ch > h or cw > w:
        raise ValueError(f"crop {tuple(out_hw)} is larger than the image {(h, w)}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return images[..., top:top + ch, left:left + cw]


class ObsAdapter:
    """Env observations -> policy tensors: one step's ``{key: (...)}`` (images cropped, float in [0, 1]) and
    histories stacked into ``{key: (B, To, ...)}``. ``spec``: an :class:`ObsSpec` (or just the policy's keys, taken
    from the observation as they are); ``box_key``: the raw name of a ``Box`` observation."""

    def __init__(self, spec: ObsSpec | Sequence[str], image_keys: Sequence[str], crop_shape: Sequence[int] | None,
                 box_key: str = "state", source: str = "the environment"):
        self.spec = spec if isinstance(spec, ObsSpec) else ObsSpec(spec)
        self.obs_keys, self.image_keys = self.spec.keys, set(image_keys)
        self.crop = tuple(crop_shape) if crop_shape else None
        self.box_key, self.source = box_key, source

    def raw(self, obs: Any) -> dict[str, np.ndarray]:
        """The flat raw record of an env observation, checked to hold every raw key the spec reads."""
        raw = flatten_obs(obs, self.box_key)
        missing = [k for k in self.spec.raw_keys if k not in raw]
        if missing:
            raise KeyError(f"the observation of {self.source} has no {missing} (it has {sorted(raw)}); the policy "
                           f"reads {self.spec.raw_keys} for its keys {self.obs_keys}")
        return raw

    def step_obs(self, obs: Any) -> dict[str, torch.Tensor]:
        """One step's observation (``Box`` array or ``Dict``) -> ``{key: (...)}`` (images ``(C, h, w)``)."""
        return self.from_raw(self.raw(obs))

    def from_raw(self, raw: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """:meth:`step_obs` of a record already returned by :meth:`raw`."""
        out = {}
        for k, v in self.spec.apply(raw).items():
            if k in self.image_keys:
                img = to_float_chw(np.asarray(v))
                out[k] = center_crop(img, self.crop) if self.crop else img
            else:
                out[k] = torch.as_tensor(np.asarray(v), dtype=torch.float32)
        return out

    @staticmethod
    def stack(histories: Sequence[deque]) -> dict[str, torch.Tensor]:
        """``B`` histories of ``To`` step observations -> ``{key: (B, To, ...)}``."""
        keys = histories[0][0].keys()
        return {k: torch.stack([torch.stack([h[k] for h in hist]) for hist in histories]) for k in keys}
