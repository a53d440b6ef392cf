"""The policy interface, and the plain policy that calls one model at every step.

A policy decides, per step of a grid, which model runs or whether the step is extrapolated
(:class:`ltc.plan.Decision`).  It is consulted once, when the plan is compiled; nothing of it
runs inside the sampling loop.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..plan import Decision, ExtrapolationCol
from ..schedule import is_integer


class Policy(ABC):
    """Base class.  Subclasses implement :meth:`decide` and :meth:`config`."""

    @abstractmethod
    def decide(self, grid, sampler, n_models: int) -> Decision:
        """``models[i]`` (a model index or EXTRAPOLATE) and the ``[N, 6]`` extrapolation block for
        ``n_models`` models on ``grid`` with ``sampler``; called once, when the plan is compiled."""

    @abstractmethod
    def config(self) -> dict:
        """JSON-able settings that identify the decision completely: they enter the plan's
        fingerprint and key :func:`ltc.sample`'s cache of compiled plans."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "policy")
        return f"{type(self).__name__}({args})"

    def __or__(self, other):
        """``base | accelerator``: ``other`` applied on top of this policy's decision, for policies
        that offer ``with_base`` (e.g. ``TStitch(...) | LTC(...)``)."""
        with_base = getattr(other, "with_base", None)
        return NotImplemented if with_base is None else with_base(self)


def no_extrapolation(steps: int) -> np.ndarray:
    """The ``[N, 6]`` extrapolation block of a plan without extrapolated steps."""
    return np.zeros((steps, len(ExtrapolationCol)))


class Full(Policy):
    """Every step calls one model: ``model`` (an index into ``model_fns``; default the last,
    i.e. the largest when models are ordered small to large)."""

    def __init__(self, model: int = -1):
        if not is_integer(model):
            raise TypeError(f"model must be an int index into model_fns, got {type(model).__name__}")
        self.model = int(model)

    def config(self) -> dict:
        return {"policy": "full", "model": self.model}

    def decide(self, grid, sampler, n_models: int) -> Decision:
        if not -n_models <= self.model < n_models:
            raise ValueError(f"Full(model={self.model}) but only {n_models} model(s) were given")
        index = self.model % n_models
        return Decision(np.full(grid.steps, index, np.int64), no_extrapolation(grid.steps))
