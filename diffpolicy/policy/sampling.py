"""A policy's sampling plan: which sampler walks which time grid, built and validated once, then reused.

:meth:`DiffusionPolicy.sampling_plan <diffpolicy.policy.diffusion.DiffusionPolicy.sampling_plan>` is the one place
where sampler names, step counts and time-grid settings (a flow policy's ``shift``, a DDPM policy's ``spacing``) are
checked and turned into a :class:`~diffpolicy.core.schedules.SamplingSchedule`; ``sample_chunk(cond, plan)`` is the
one sampling entry that evaluation, the controller and reflow call. A plan is immutable: changing the sampler or
grid means building another plan and handing it over (a reference swap, so a thread sampling with the old plan
finishes with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..core.objectives import DDPM, FlowMatching, Objective
from ..core.samplers import DETERMINISTIC_SAMPLERS, check_steps, get_sampler
from ..core.schedules import SPACINGS, SamplingSchedule


class TimeTable:
    """The FiLM time parts of a grid's model times ``(N,)``, computed in one batched call: ``(B,)`` -> ``(B, F)``.

    Each step picks its row by exact match of ``t`` (a one-hot product, so no host/device sync in the sampling
    loop). Samplers evaluate the network only at the grid's times ``model_time[:-1]``
    (``tests/test_policy_sampling.py`` checks every sampler), so a table built from the plan's own schedule covers
    every call.
    """

    def __init__(self, net, times: torch.Tensor):
        w = net.film.weight
        self.times = torch.unique(times.to(device=w.device, dtype=w.dtype))  # a repeat would add its row twice
        self.table = net.time_film(self.times)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        hit = t[:, None] == self.times[None].to(t.dtype)
        return hit.to(self.table.dtype) @ self.table


@dataclass(frozen=True, eq=False)
class SamplingPlan:
    """A sampler and its time grid, ready to run. ``time_table``: FiLM time parts precomputed with the weights of
    the moment (:meth:`DiffusionPolicy.sampling_plan` with ``time_table=True``), valid while those weights stay."""

    sampler: str
    steps: int
    schedule: SamplingSchedule
    shift: float | None = None  # flow policies' grid shift (None for DDPM)
    spacing: str | None = None  # DDPM policies' timestep spacing (None for flow)
    time_table: TimeTable | None = None

    @property
    def fn(self) -> Callable[..., torch.Tensor]:
        return get_sampler(self.sampler)

    @property
    def deterministic(self) -> bool:
        """Whether the sample is a function of the initial noise alone (no noise drawn inside the loop)."""
        return self.sampler in DETERMINISTIC_SAMPLERS


def grid_schedule(objective: Objective, steps: int, shift: float | None = None,
                  spacing: str | None = None) -> tuple[SamplingSchedule, float | None, str | None]:
    """``(schedule, shift, spacing)`` for ``steps`` steps; ``shift``/``spacing`` default to the objective's own and
    are refused where they do not apply."""
    if isinstance(objective, FlowMatching):
        if spacing is not None:
            raise ValueError(f"spacing={spacing} sets a DDPM policy's timesteps; this is a flow-matching policy "
                             "(its time grid is set by shift)")
        shift = objective.sampling_shift if shift is None else float(shift)
        if shift <= 0:
            raise ValueError(f"flow sampling shift must be > 0, got {shift}")
        return objective.sampling_schedule(steps, shift=shift), shift, None
    if isinstance(objective, DDPM):
        if shift is not None:
            raise ValueError(f"shift={shift} sets a flow-matching policy's time grid; this is a DDPM policy "
                             "(its timesteps are set by spacing)")
        spacing = objective.spacing if spacing is None else spacing
        if spacing not in SPACINGS:
            raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
        return objective.sampling_schedule(steps, spacing=spacing), None, spacing
    if shift is not None or spacing is not None:
        raise ValueError(f"{type(objective).__name__} has no time-grid settings (shift={shift}, spacing={spacing})")
    return objective.sampling_schedule(steps), None, None


def make_plan(objective: Objective, net, sampler: str, steps: int, shift: float | None = None,
              spacing: str | None = None, time_table: bool = False) -> SamplingPlan:
    """Validate the settings and build the plan, its schedule on ``net``'s device in float32."""
    get_sampler(sampler)
    schedule, shift, spacing = grid_schedule(objective, check_steps(steps), shift, spacing)
    schedule = schedule.to(device=net.film.weight.device, dtype=torch.float32)
    table = None
    if time_table:
        with torch.no_grad():
            table = TimeTable(net, schedule.model_time[:-1])
    return SamplingPlan(sampler, steps, schedule, shift, spacing, table)
