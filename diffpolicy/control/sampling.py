"""The controller's chunk-sampling call: the policy's one sampling entry, optionally replayed from CUDA graphs.

:class:`ChunkSampler` runs ``policy.sample_chunk(cond, plan, noise, ...)`` under ``torch.inference_mode``. The
controller's plans carry the FiLM time table of their grid, computed once (``sampling_plan(..., time_table=True)``),
and ``Controller(compile=True)`` compiles the denoiser's trunk that entry calls
(:func:`diffpolicy.accel.compile_trunk`); nothing of the sampling is written here again.

**CUDA graphs** (``cuda_graph=True``, only when the policy lives on a CUDA device): the whole ``sample_chunk`` call
for one plan and batch size is captured once into a ``torch.cuda.CUDAGraph`` with static input buffers (condition,
noise, inpainting mask and known values) and replayed. Plans whose sampler draws noise inside the loop (``ddpm``,
``ddim`` with ``eta > 0``) are not captured. This path could not be run on the CPU-only machine it was written on:
it is untested.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..policy.base import Policy


def policy_device(policy) -> torch.device:
    """Where ``policy`` computes: its ``device`` attribute (an exported artifact) or its parameters' device."""
    device = getattr(policy, "device", None)
    return device if isinstance(device, torch.device) else next(policy.parameters()).device


class ChunkSampler:
    """``sampler(cond, noise, plan, mask=None, known=None, generator=None) -> (B, T, Da)`` normalised.

    ``cond`` from ``policy.encode`` (``(B, C)``; for an exported artifact the observations themselves); ``noise``
    ``(B, T, Da)`` standard normal; ``plan`` from ``policy.sampling_plan``; ``mask``/``known`` ``(B, T, Da)`` in
    normalised units hold entries fixed (the sample equals ``known`` where ``mask`` is true).
    """

    def __init__(self, policy: Policy, cuda_graph: bool = False):
        self.policy = policy
        device = policy_device(policy)
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the policy on a CUDA device, it is on {device}")
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, _Graph] = {}  # keyed by (plan, batch size); holds the plans it captured

    def __call__(self, cond: torch.Tensor, noise: torch.Tensor, plan, mask: torch.Tensor | None = None,
                 known: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        if mask is not None and not self.policy.supports_inpainting:
            raise ValueError(f"{type(self.policy).__name__} cannot hold chunk entries fixed (no inpainting sampler);"
                             " real-time chunking needs a diffusion/flow policy")
        with torch.inference_mode():
            if self.cuda_graph and plan is not None and plan.deterministic:
                key = (plan, cond.shape[0])
                if key not in self._graphs:
                    run = lambda c, n, m, k: self.policy.sample_chunk(c, plan, noise=n, mask=m, known=k)  # noqa: E731
                    self._graphs[key] = _Graph(run, cond, noise)
                return self._graphs[key](cond, noise, mask, known)
            return self.policy.sample_chunk(cond, plan, noise=noise, generator=generator, mask=mask, known=known)

    def warm_up(self, cond: torch.Tensor, plan, repeats: int = 2) -> None:
        """Run the full sample ``repeats`` times (with and without a mask) so allocations, compilation and graphs
        exist before the first control period."""
        batch = (cond if torch.is_tensor(cond) else next(iter(cond.values()))).shape[0]  # an artifact's: a dict
        noise = torch.zeros(batch, self.policy.horizon, self.policy.action_dim, device=policy_device(self.policy))
        mask = torch.zeros_like(noise, dtype=torch.bool)
        for _ in range(repeats):
            self(cond, noise, plan)
            if self.policy.supports_inpainting:
                self(cond, noise, plan, mask=mask, known=noise)


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
