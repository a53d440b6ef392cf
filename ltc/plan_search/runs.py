"""Walks of compiled plans that can restart from any step: what the search's probes cost.

A probe that changes step ``s`` onwards (a grid point, an LTC weight) needs only the steps from
``s``: :meth:`Runs.run` keeps the buffers ``(x_s, x_{s-1}, hist)`` at the start of every step of
the current plan (a :class:`State`) and restarts a changed plan there, calling the model only at
the model steps from ``s`` on.  ``calls`` counts every batched model call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..executor.walk import NonFiniteError, Walk
from ..plan import EXTRAPOLATE, Plan


@dataclass
class State:
    """The walk's buffers at the start of step ``step``: x_i, x_{i-1} and the history ``[H, B, *S]``."""

    step: int
    x: torch.Tensor
    x_prev: torch.Tensor
    hist: torch.Tensor


def calls_from(plan: Plan, step: int) -> int:
    """Model calls of ``plan`` from ``step`` to the end."""
    return sum(1 for m in plan.models[step:] if m != EXTRAPOLATE)


class Runs:
    """Endpoints ``[B, *S]`` of plans from ``noise`` (same models, kwargs and backend), with restarts."""

    def __init__(self, models, noise: torch.Tensor, *, ops, model_kwargs=None):
        self.models, self.noise, self.ops, self.kwargs = models, noise, ops, model_kwargs
        self.calls = 0

    @torch.no_grad()
    def run(self, plan: Plan, start: State | None = None, *, keep: bool = False) -> tuple[torch.Tensor, dict]:
        """``(endpoint, states)``: the walk of ``plan`` from the noise, or from ``start`` (a state of a plan
        whose steps before ``start.step`` are this plan's); ``states[i]`` the buffers at the start of
        step i (with ``keep``).  Raises :class:`ltc.NonFiniteError` when the endpoint is not finite."""
        walk = Walk(plan, self.models, self.noise, ops=self.ops, model_kwargs=self.kwargs, check_finite="off")
        s = 0 if start is None else start.step
        if start is None:
            walk.load(self.noise)
        else:
            walk.state(s).copy_(start.x)
            walk.state(s + 1).copy_(start.x_prev)
            walk.hist.copy_(start.hist)
        states = {}
        for i in range(s, plan.steps):
            if keep:
                states[i] = State(i, walk.state(i).clone(), walk.state(i + 1).clone(), walk.hist.clone())
            walk.step(i)
        self.calls += calls_from(plan, s)
        x = walk.finish().clone()
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError(f"the plan {plan.describe()} produced NaN or Inf")
        return x, states
