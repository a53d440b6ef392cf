"""The eager executor: walks a compiled plan, one model call or extrapolation per step.

State lives in the static buffers of a :class:`ltc.executor.walk.Walk`.  Every decision was made when the plan was
compiled; the loop only reads the plan's host tuples and indexes its device table.  No value is
copied to the host inside the loop, except by ``check_finite="step"`` (the CPU default), which
stops at the first non-finite model output; on CUDA the default ``"end"`` keeps a device-side
record of the first bad step and raises once after the loop.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..plan import EXTRAPOLATE, HISTORY_SLOTS, Plan
from .walk import Walk


def run_eager(plan: Plan, models, noise: torch.Tensor, *, ops, model_kwargs=None,
              generator: torch.Generator | None = None, callback=None, progress: bool = False,
              check_finite: str = "auto") -> torch.Tensor:
    """Sample from ``noise`` (``[B, *S]``, the state at the first grid point) along ``plan``.

    ``models``: the :class:`ltc.Model` of each model index; ``ops``: a backend module of
    :mod:`ltc.ops`.  Returns a new ``[B, *S]`` tensor.  Runs under ``torch.no_grad()``: sampling
    is not differentiated through (the walk writes its buffers in place).
    """
    walk = Walk(plan, models, noise, ops=ops, model_kwargs=model_kwargs, generator=generator,
                check_finite=check_finite)
    steps = range(plan.steps)
    if progress:
        steps = tqdm(steps, desc="ltc.sample", leave=False)
    with torch.no_grad():  # models with trainable weights keep no activations for backward
        walk.load(noise)
        for i in steps:
            walk.step(i)
            if callback is not None:
                _report(callback, walk, i)
        return walk.finish()


def _report(callback, walk: Walk, i: int) -> None:
    """``callback`` with step ``i``'s result; copies: the buffers are reused two steps later, and a
    callback may keep what it gets."""
    plan, k = walk.plan, walk.plan.models[i]
    callback({"step": i, "x": walk.state(i + 1).clone(), "t": plan.grid.t[i], "sigma": plan.grid.sigma[i],
              "sigma_next": plan.grid.sigma[i + 1], "denoised": walk.hist[i % HISTORY_SLOTS].clone(),
              "model": None if k == EXTRAPOLATE else walk.models[k].name})
