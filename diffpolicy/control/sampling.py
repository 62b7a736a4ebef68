"""The chunk-sampling call of the controller: ``(cond, noise, mask, known) -> normalised chunk (B, T, Da)``.

:class:`ChunkSampler` wraps a policy's sampling for a loop that calls it thousands of times:

- **eager path** (any policy): ``policy.predict_chunk`` under ``torch.inference_mode``.
- **fast path** (:class:`~diffpolicy.policy.diffusion.DiffusionPolicy`): the sampling schedule and the FiLM time
  embeddings of its grid are computed once per ``(sampler, steps)`` and cached; the condition's FiLM part once per
  chunk; the per-step time part is picked from the cached table with a one-hot product (no host/device sync in the
  loop). ``compile=True`` additionally runs the U-Net body through ``torch.compile`` (the first call compiles:
  minutes on a 2-core CPU, so do it at load, in the warm-up).
- **CUDA graphs** (``cuda_graph=True``, only when the policy lives on a CUDA device): the full chunk sample for one
  ``(sampler, steps)`` and batch size is captured once into a ``torch.cuda.CUDAGraph`` with static input buffers
  (condition, noise, inpainting mask and known values) and replayed. Samplers that draw their own noise inside the
  loop (``ddpm``, ``ddim`` with ``eta > 0``) are not captured and run on the fast path. This path could not be run
  on the CPU-only machine it was written on: it is untested.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from ..core.samplers import SAMPLERS
from ..nets.unet1d import ConditionedUnet
from ..policy.base import Policy
from ..policy.diffusion import DiffusionPolicy

# Samplers whose loop consumes no random numbers (graph-capturable, and deterministic given the initial noise).
DETERMINISTIC = {"ddim", "euler", "heun", "dpmpp_2m"}


class ChunkSampler:
    """``sampler(cond, noise, sampler, steps, mask=None, known=None, generator=None) -> (B, T, Da)`` normalised.

    ``cond`` ``(B, C)`` from ``policy.encode``; ``noise`` ``(B, T, Da)`` standard normal; ``mask``/``known``
    ``(B, T, Da)`` in normalised units hold entries fixed (the sample equals ``known`` where ``mask`` is true).
    """

    def __init__(self, policy: Policy, fast: bool = True, compile: bool = False, cuda_graph: bool = False):
        self.policy = policy
        self.fast = fast and isinstance(policy, DiffusionPolicy)
        if compile and not self.fast:
            raise ValueError("compile=True needs the fast path of a DiffusionPolicy (fast=True)")
        self.device = next(policy.parameters()).device
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the policy on a CUDA device, it is on {self.device}")
        if cuda_graph and not self.fast:
            raise ValueError("cuda_graph=True needs the fast path of a DiffusionPolicy (fast=True)")
        self.cuda_graph = cuda_graph
        self._trunk = torch.compile(policy.net.forward_film) if compile else (policy.net.forward_film
                                                                              if self.fast else None)
        self._tables: dict[tuple[str, int], tuple] = {}
        self._graphs: dict[tuple[str, int, int], _Graph] = {}

    def supports_inpainting(self) -> bool:
        """Whether the policy's ``predict_chunk`` takes ``mask``/``known`` (a regression policy ignores them)."""
        return "mask" in inspect.signature(self.policy.predict_chunk).parameters

    def __call__(self, cond: torch.Tensor, noise: torch.Tensor, sampler: str, steps: int,
                 mask: torch.Tensor | None = None, known: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if mask is not None and not self.supports_inpainting():
            raise ValueError(f"{type(self.policy).__name__} cannot hold chunk entries fixed (no inpainting sampler);"
                             " real-time chunking needs a diffusion/flow policy")
        with torch.inference_mode():
            self.prepare(sampler, steps)
            if not self.fast:
                return self.policy.predict_chunk(cond, generator, sampler=sampler, steps=steps, mask=mask,
                                                 known=known)
            if self.cuda_graph and sampler in DETERMINISTIC:
                key = (sampler, steps, cond.shape[0])
                if key not in self._graphs:
                    self._graphs[key] = _Graph(self._sample_fn(sampler, steps), cond, noise)
                return self._graphs[key](cond, noise, mask, known)
            return self._sample_fn(sampler, steps)(cond, noise, mask, known, generator)

    def invalidate(self) -> None:
        """Forget cached tables and graphs: call after changing the policy's weights or sampling time grid."""
        self._tables.clear()
        self._graphs.clear()

    def prepare(self, sampler: str, steps: int) -> None:
        """Validate ``sampler``/``steps`` and build their cached tables (fast path)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {sorted(SAMPLERS)}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if self.fast:
            with torch.inference_mode():
                self._sample_fn(sampler, steps)

    def _sample_fn(self, sampler: str, steps: int) -> Callable:
        key = (sampler, steps)
        if key not in self._tables:
            schedule = self.policy.objective.sampling_schedule(steps).to(device=self.device, dtype=torch.float32)
            self._tables[key] = (schedule, self.policy.net.time_table(schedule.model_time[:-1]))
        schedule, time_table = self._tables[key]
        net, trunk, objective, fn = self.policy.net, self._trunk, self.policy.objective, SAMPLERS[sampler]

        def run(cond, noise, mask, known, generator=None):
            conditioned = ConditionedUnet(net, cond, None, time_table=time_table, trunk=trunk)
            return fn(objective.denoiser(conditioned), noise, schedule, generator=generator, mask=mask, known=known)

        return run

    def warm_up(self, cond: torch.Tensor, sampler: str, steps: int, repeats: int = 2) -> None:
        """Run the full sample ``repeats`` times (with and without a mask) so caches, compilation and graphs exist."""
        noise = torch.zeros(cond.shape[0], self.policy.horizon, self.policy.action_dim, device=cond.device)
        mask = torch.zeros_like(noise, dtype=torch.bool)
        for _ in range(repeats):
            self(cond, noise, sampler, steps)
            if self.supports_inpainting():
                self(cond, noise, sampler, steps, mask=mask, known=noise)


class _Graph:
    """One captured chunk sample on CUDA with static buffers (untested: written without a GPU).

    The mask is always applied inside the graph (all false when no entries are fixed), so one graph serves both
    plain and inpainted sampling.
    """

    def __init__(self, run: Callable, cond: torch.Tensor, noise: torch.Tensor):
        self.cond, self.noise = cond.clone(), noise.clone()
        self.mask = torch.zeros_like(noise, dtype=torch.bool)
        self.known = torch.zeros_like(noise)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up iterations off the default stream, as capture requires
            for _ in range(3):
                run(self.cond, self.noise, self.mask, self.known)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = run(self.cond, self.noise, self.mask, self.known)

    def __call__(self, cond, noise, mask, known) -> torch.Tensor:
        self.cond.copy_(cond)
        self.noise.copy_(noise)
        if mask is None:
            self.mask.zero_()
        else:
            self.mask.copy_(mask)
            self.known.copy_(known)
        self.graph.replay()
        return self.out.clone()
