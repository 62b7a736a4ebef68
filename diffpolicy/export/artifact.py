"""Write a checkpoint's chunk function as one artifact (ONNX or torch.export) and run it again without the policy.

An artifact is a directory::

    chunk.onnx | chunk.pt2   the chunk function (:class:`~diffpolicy.export.chunk.ChunkFunction`): inputs are the
                             observation keys (``(B, To, *shape)``, float32) and ``noise`` ``(B, T, Da)``; outputs
                             ``action`` and ``action_normalized`` ``(B, T, Da)``; the batch dimension is dynamic
    export.json              what a robot stack needs besides: input names and shapes, chunk geometry, sampler
                             and steps, the action normaliser, the task's observation keys, image keys and crop,
                             and the largest differences from eager PyTorch measured at export (normalised
                             chunk; dataset units)

Both files are written atomically (``export.json`` last, so a directory with it is complete). ONNX files are
protobuf and run in onnxruntime; reading a ``.pt2`` back in Python goes through ``torch.export.load``, which may
unpickle, so :func:`load_artifact` opens one only with ``trusted=True``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..core.normalize import Normalizer
from ..policy.checkpoint import resolve_checkpoint, write_atomically
from ..policy.factory import load_policy
from .chunk import ChunkFunction, NotExportable

FORMATS = {"onnx": "chunk.onnx", "torch_export": "chunk.pt2"}
META = "export.json"


def example_inputs(fn: ChunkFunction, obs_shapes: Mapping[str, Sequence[int]], batch: int = 2,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the chunk function: observations ``(B, To, *shape)`` (images in [0, 1]) and noise."""
    g = torch.Generator().manual_seed(seed)
    p = fn.policy
    obs = []
    for k in fn.input_keys:
        shape = (batch, p.n_obs_steps, *obs_shapes[k])
        obs.append(torch.rand(shape, generator=g) if k in p.encoder.image_keys else torch.randn(shape, generator=g))
    return (*obs, torch.randn(batch, p.horizon, p.action_dim, generator=g))


def export_checkpoint(checkpoint: str | Path, out: str | Path, sampler: str | None = None, steps: int | None = None,
                      fmt: str = "onnx", shift: float | None = None, spacing: str | None = None,
                      atol: float = 1e-4) -> dict[str, Any]:
    """Export the chunk function of ``checkpoint`` (EMA weights, CPU, float32) for ``sampler``/``steps`` (default:
    the policy's) to the directory ``out``; returns the metadata written to ``export.json``.

    The artifact is run once on random inputs before this returns: a difference from eager PyTorch above ``atol``
    in the normalised chunk is an error (the directory is left as written, for inspection).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    ckpt = resolve_checkpoint(checkpoint)
    policy, config = load_policy(ckpt)
    try:
        plan = policy.sampling_plan(sampler, steps, shift, spacing, time_table=True)
        fn = ChunkFunction(policy, plan).eval()
    except NotExportable as e:
        raise NotExportable(f"{ckpt}: {e}") from None
    obs_shapes = {k: tuple(v) for k, v in config["shapes"]["obs"].items()}
    example = example_inputs(fn, obs_shapes)
    names = [*fn.input_keys, "noise"]
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with torch.no_grad():
            program = torch.export.export(fn, example, dynamic_shapes=(tuple({0: batch} for _ in example),),
                                          strict=False)
    except Exception as e:  # noqa: BLE001 - any tracing failure: say which checkpoint and why
        raise NotExportable(f"{ckpt}: torch.export could not trace the chunk function ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from e
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_file = out / FORMATS[fmt]
    if fmt == "onnx":
        onnx_program = torch.onnx.export(program, input_names=names, output_names=["action", "action_normalized"],
                                         dynamo=True, verbose=False)
        write_atomically(model_file, onnx_program.save)
    else:
        write_atomically(model_file, lambda p: torch.export.save(program, p))
    scale, offset = policy.normalizer.params(policy.action_key)
    task = config["task"]
    meta = {
        "format": fmt, "file": model_file.name, "checkpoint": str(ckpt),
        "inputs": {k: [-1, policy.n_obs_steps, *obs_shapes[k]] for k in fn.input_keys},
        "image_keys": list(policy.encoder.image_keys), "noise": [-1, policy.horizon, policy.action_dim],
        "outputs": {"action": [-1, policy.horizon, policy.action_dim],
                    "action_normalized": [-1, policy.horizon, policy.action_dim]},
        "sampler": plan.sampler, "steps": plan.steps, "shift": plan.shift, "spacing": plan.spacing,
        "horizon": policy.horizon, "n_obs_steps": policy.n_obs_steps, "n_action_steps": policy.n_action_steps,
        "action_dim": policy.action_dim, "action_key": policy.action_key,
        "action_normalizer": {"scale": scale.tolist(), "offset": offset.tolist()},
        "task": {k: task.get(k) for k in ("name", "env_id", "env_kwargs", "obs_keys", "image_keys", "crop_shape",
                                          "obs_spec")},
        "shapes": config["shapes"], "policy": config["policy"]["name"], "torch": torch.__version__,
    }
    with torch.no_grad():
        expected = fn(*example)
    got = load_artifact(out, trusted=True, meta=meta).run(example)
    # judged in the network's normalised units ([-1, 1] for the data): dataset units may be pixels, where float32
    # rounding alone is ~1e-4
    meta["max_abs_diff_vs_eager"] = float((got[1] - expected[1]).abs().max())
    meta["max_abs_diff_vs_eager_dataset_units"] = float((got[0] - expected[0]).abs().max())
    write_atomically(out / META, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))
    if meta["max_abs_diff_vs_eager"] > atol:
        raise RuntimeError(f"{model_file}: its normalised chunks differ from eager PyTorch by "
                           f"{meta['max_abs_diff_vs_eager']:.2e} (> {atol}) on random inputs")
    return meta


# ------------------------------------------------------------------------------------------------ running artifacts


@dataclass(frozen=True)
class ExportedPlan:
    """The sampling an artifact was exported with (fixed in its graph)."""

    sampler: str
    steps: int
    shift: float | None = None
    spacing: str | None = None
    deterministic: bool = True
    time_table: None = None


class ExportedPolicy:
    """An artifact behind the interface the :class:`~diffpolicy.control.Controller` uses of a policy.

    ``encode(obs)`` passes the observations through (the artifact encodes); ``sample_chunk(obs, plan, noise)``
    runs the artifact and returns the normalised chunk ``(B, T, Da)``, which the controller unnormalises with the
    action normaliser stored in ``export.json`` (the artifact's own ``action`` output is the same product).
    """

    supports_inpainting = False
    device = torch.device("cpu")

    def __init__(self, meta: Mapping[str, Any], run: Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]]):
        self.meta, self._run = dict(meta), run
        self.input_keys = list(meta["inputs"])
        self.horizon, self.n_obs_steps = int(meta["horizon"]), int(meta["n_obs_steps"])
        self.n_action_steps, self.action_dim = int(meta["n_action_steps"]), int(meta["action_dim"])
        self.action_key = meta["action_key"]
        norm = meta["action_normalizer"]
        self.normalizer = Normalizer({self.action_key: (torch.tensor(norm["scale"]), torch.tensor(norm["offset"]))})
        self.plan = ExportedPlan(meta["sampler"], int(meta["steps"]), meta.get("shift"), meta.get("spacing"))

    @property
    def executable_steps(self) -> int:
        return self.horizon - self.n_obs_steps + 1

    def run(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(action, action_normalized)`` for inputs in the artifact's order (observation keys, then noise)."""
        return tuple(self._run(inputs))

    def encode(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [k for k in self.input_keys if k not in obs]
        if missing:
            raise ValueError(f"the exported chunk function takes {self.input_keys}; missing {missing}")
        return {k: obs[k] for k in self.input_keys}

    def sampling_plan(self, sampler: str | None = None, steps: int | None = None, shift: float | None = None,
                      spacing: str | None = None, time_table: bool = False) -> ExportedPlan:
        asked = {"sampler": sampler, "steps": steps, "shift": shift, "spacing": spacing}
        fixed = {k: getattr(self.plan, k) for k in asked}
        for k, v in asked.items():
            if v is not None and v != fixed[k]:
                raise ValueError(f"this artifact was exported with sampler={self.plan.sampler} steps={self.plan.steps} "
                                 f"(shift={self.plan.shift}, spacing={self.plan.spacing}); {k}={v} needs another "
                                 "export (diffpolicy-export ... sampler=... steps=...)")
        return self.plan

    def sample_chunk(self, cond: Mapping[str, torch.Tensor], plan=None, noise: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, mask=None, known=None) -> torch.Tensor:
        if mask is not None:
            raise ValueError("an exported chunk function cannot hold chunk entries fixed (no inpainting)")
        if noise is None:
            batch = next(iter(cond.values())).shape[0]
            noise = torch.randn(batch, self.horizon, self.action_dim, generator=generator)
        return self.run([*(cond[k] for k in self.input_keys), noise])[1]


def load_artifact(path: str | Path, trusted: bool = False, num_threads: int | None = None,
                  meta: Mapping[str, Any] | None = None) -> ExportedPolicy:
    """An :class:`ExportedPolicy` running the artifact in ``path`` (a directory written by
    :func:`export_checkpoint`): ONNX in onnxruntime (CPU; ``num_threads`` intra-op threads), ``torch_export``
    through ``torch.export.load``, which may unpickle and is therefore opened only with ``trusted=True``."""
    path = Path(path)
    if meta is None:
        if not (path / META).is_file():
            raise FileNotFoundError(f"{path} has no {META}: not a diffpolicy-export artifact (or an export that did "
                                    "not finish)")
        meta = json.loads((path / META).read_text())
    file = path / meta["file"]
    if meta["format"] == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if num_threads is not None:
            opts.intra_op_num_threads, opts.inter_op_num_threads = num_threads, 1
        engine = ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in engine.get_inputs()]

        def run(inputs):
            feed = {n: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32) for n, x in zip(names, inputs)}
            return [torch.from_numpy(y) for y in engine.run(None, feed)]

        return ExportedPolicy(meta, run)
    if meta["format"] == "torch_export":
        if not trusted:
            raise ValueError(f"{file}: torch.export.load may unpickle, which can run code from the file; open a .pt2 "
                             "you exported yourself with trusted=True, or export format=onnx")
        module = torch.export.load(str(file)).module()

        def run(inputs):
            with torch.no_grad():
                return module(*inputs)

        return ExportedPolicy(meta, run)
    raise ValueError(f"{path / META}: unknown format {meta['format']!r}; expected one of {sorted(FORMATS)}")
