"""The eager executor: walks a compiled plan, one model call or extrapolation per step.

State lives in the static buffers of a :class:`ltc.executor.walk.Walk`.  Every decision was made when the plan was
compiled; the loop only reads the plan's host tuples and indexes its device table.  No value is
copied to the host inside the loop, except by ``check_finite="step"`` (the CPU default), which
stops at the first non-finite model output; on CUDA the default ``"end"`` keeps a device-side
record of the first bad step and raises once after the loop.

Callbacks (``ltc.sample(..., callback=fn)``; eager only -- a callback makes ``graph="auto"`` sample
eagerly and ``graph=True`` an error, :func:`ltc.executor.graph.check_option`).  After step ``i``,
``fn(info)`` gets a dict of copies (it may keep them), with k-diffusion's keys -- ``i``, ``x`` (the
state x_i the step started from, ``[B, *S]``), ``sigma`` (its noise level: ltc's sigma, the
coefficient of the noise in x = alpha x0 + sigma eps), ``sigma_hat`` (= ``sigma``: ltc adds no churn)
and ``denoised`` (D_i, the clean estimate at x_i) all refer to point i -- and ``step`` (= i),
``steps`` (N), ``x_next`` (the new state x_{i+1}), ``t`` (the model time of point i), ``sigma_next``
(host floats) and ``model`` (the name of the model called, or None for an extrapolated step).
What it returns steers the walk, as diffusers' ``callback_on_step_end`` does:

* ``None`` -- continue.
* a tensor -- the state to continue from: copied into the walk's state in place of x_{i+1}
  (``x_next``, not ``x``); it
  must have the state's shape, dtype and device and be finite.  The past (the clean estimates a
  multistep sampler reads, the previous state an LTC extrapolation reads) is kept.
* a dict with the keys ``"x"`` (a tensor, as above) and/or ``"stop"`` (a bool): ``{"stop": True}``
  ends sampling after this step, and the state x_{i+1} (after any replacement) is returned as the
  result -- partly denoised when i < N - 1.

Anything else is a TypeError naming the step and what was returned.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..plan import EXTRAPOLATE, HISTORY_SLOTS, Plan
from .walk import Walk, check_like_state

STEERING_KEYS = ("x", "stop")


def run_eager(plan: Plan, models, noise: torch.Tensor, *, ops, model_kwargs=None,
              generator: torch.Generator | None = None, callback=None, progress: bool = False,
              check_finite: str = "auto", step_noise=None) -> torch.Tensor:
    """Sample from ``noise`` (``[B, *S]``, the state at the first grid point) along ``plan``.

    ``models``: the :class:`ltc.Model` of each model index; ``ops``: a backend module of
    :mod:`ltc.ops`.  Returns a new ``[B, *S]`` tensor.  Runs under ``torch.no_grad()``: sampling
    is not differentiated through (the walk writes its buffers in place).  ``callback``: see the
    module docstring (it may replace the state or stop the walk early).
    """
    walk = Walk(plan, models, noise, ops=ops, model_kwargs=model_kwargs, generator=generator,
                check_finite=check_finite, step_noise=step_noise)
    bar = tqdm(total=plan.steps, desc="ltc.sample", leave=False) if progress else None
    try:
        with torch.no_grad():  # models with trainable weights keep no activations for backward
            walk.load(noise)
            for i in range(plan.steps):
                walk.step(i)
                if bar is not None:
                    bar.update(1)
                if callback is not None and _report(callback, walk, i):
                    sample = walk.state(i + 1)
                    walk.finish()  # the finite record of the steps taken ("end" mode) raises here
                    return sample
            return walk.finish()
    finally:
        if bar is not None:
            bar.close()


def _report(callback, walk: Walk, i: int) -> bool:
    """``callback`` with step ``i``'s result (copies: the buffers are reused two steps later, and a
    callback may keep what it gets), then what it returned applied; True when it asks to stop."""
    plan, k = walk.plan, walk.plan.models[i]
    sigma = float(plan.grid.sigma[i])
    answer = callback({"step": i, "i": i, "steps": plan.steps, "x": walk.state(i).clone(),
                       "x_next": walk.state(i + 1).clone(), "t": float(plan.grid.t[i]), "sigma": sigma,
                       "sigma_hat": sigma, "sigma_next": float(plan.grid.sigma[i + 1]),
                       "denoised": walk.hist[i % HISTORY_SLOTS].clone(),
                       "model": None if k == EXTRAPOLATE else walk.models[k].name})
    if answer is None:
        return False
    if isinstance(answer, torch.Tensor):
        answer = {"x": answer}
    if not isinstance(answer, dict):
        raise TypeError(f"the callback returned {type(answer).__name__} after step {i}; expected None, a tensor "
                        "(the state to continue from) or a dict with 'x' and/or 'stop'")
    unknown = sorted(set(answer) - set(STEERING_KEYS), key=str)
    if unknown:
        raise ValueError(f"the callback returned a dict with unknown keys {unknown} after step {i}; "
                         f"it may hold {STEERING_KEYS}")
    if "x" in answer:
        _replace_state(walk.state(i + 1), answer["x"], i)
    stop = answer.get("stop", False)
    if not isinstance(stop, bool):
        raise TypeError(f"the callback's 'stop' after step {i} must be True or False, got {stop!r}")
    return stop


def _replace_state(state: torch.Tensor, new, i: int) -> None:
    """Copy the callback's replacement ``new`` into the walk's ``state`` after checking it."""
    where = f"the state the callback returned after step {i}"
    check_like_state(where, new, state)
    if not bool(torch.isfinite(new).all()):
        raise ValueError(f"{where} contains NaN or Inf")
    state.copy_(new)
