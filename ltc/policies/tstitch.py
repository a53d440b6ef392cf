"""T-Stitch: a chain of models ordered small to large, each running one contiguous block of steps.

Trajectory stitching (arXiv 2402.14167) lets a cheap model take the early, noisy steps, where
models of different sizes trained on the same data behave alike, and a large model the rest.
The switch is static: it is part of the compiled plan, so sampling never inspects ``t`` on the
host (the public implementation's ``t[0].item()`` per call forces a device sync every step).

``fractions = (f_0, ..., f_{K-2})`` gives one entry per model except the last, which runs the
remaining steps.  With cumulative sums ``c_k = f_0 + ... + f_k`` (``c_{-1} = 0``, ``c_{K-1} = 1``)
and a progress ``u_i`` in [0, 1) of step ``i``, step ``i`` runs model ``k`` with

    c_{k-1} <= u_i < c_k         (up to a 1e-9 tolerance for rounding in the fractions)

* ``by="step"``: ``u_i = i / N`` -- model 0 runs the first ``ceil(f_0 N)`` of the ``N`` steps.
* ``by="time"``: ``u_i = (t_0 - t_i) / (t_0 - t_N)``, the fraction of the grid's model-time span
  already covered at point i (``t_N`` = the last finite grid time when the clean end has
  ``t = inf``).  The switch then sits at the same model time whatever the step count; it differs
  from ``by="step"`` on grids that are not uniform in ``t`` (Karras sigmas, flow shift).

Composition with LTC: :meth:`TStitch.decide` returns the base decision (a model index per step,
no extrapolation).  A composed policy takes it and replaces the steps LTC skips by
``EXTRAPOLATE`` with their coefficients, keeping every other step's model index; the first step
can never be extrapolated.

Every stitched model must return the same prediction type and shape; :func:`check_compatible`
checks that with one small probe call per model before sampling starts.
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import numpy as np
import torch

from ..models import INPLACE_FIX, output_hint
from ..ops.contract import compute_dtype
from ..plan import Decision
from .base import Policy, no_extrapolation

BY = ("step", "time")
TOLERANCE = 1e-9


def _check_fractions(fractions) -> tuple[float, ...]:
    if isinstance(fractions, (int, float)) and not isinstance(fractions, bool):
        fractions = (fractions,)
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, (Sequence, np.ndarray)):
        raise TypeError("fractions must be a number or a sequence of numbers (one per model except the "
                        f"last), got {type(fractions).__name__}")
    values = []
    for k, f in enumerate(fractions):
        if isinstance(f, bool) or not isinstance(f, (int, float, np.integer, np.floating)):
            raise TypeError(f"fractions[{k}] must be a number, got {type(f).__name__}")
        if not (math.isfinite(f) and 0.0 <= f <= 1.0):
            raise ValueError(f"fractions[{k}] must be in [0, 1], got {f!r}")
        values.append(float(f))
    if not values:
        raise ValueError("fractions is empty: give one fraction per model except the last")
    if sum(values) > 1.0 + TOLERANCE:
        raise ValueError(f"fractions must sum to at most 1 (the last model runs the rest), got sum {sum(values)!r}")
    return tuple(values)


class TStitch(Policy):
    """Run model 0 for the first ``fractions[0]`` of the sampling, model 1 for the next
    ``fractions[1]``, ..., and the last model for the rest (see the module docstring).

    Args:
        fractions: one number per model except the last (a single number for two models),
            each in [0, 1], summing to at most 1.  Models are ordered small to large.
        by: ``"step"`` (fraction of the steps) or ``"time"`` (fraction of the model-time span).
    """

    def __init__(self, fractions, by: str = "step"):
        self.fractions = _check_fractions(fractions)
        if not isinstance(by, str) or by not in BY:
            raise ValueError(f"by must be one of {BY}, got {by!r}")
        self.by = by

    def config(self) -> dict:
        return {"policy": "tstitch", "fractions": list(self.fractions), "by": self.by}

    def progress(self, grid) -> np.ndarray:
        """``u_i`` in [0, 1) for each of the ``N`` steps (see the module docstring)."""
        N = grid.steps
        if self.by == "step":
            return np.arange(N, dtype=np.float64) / N
        t = np.asarray(grid.t, dtype=np.float64)
        t_end = t[-1] if np.isfinite(t[-1]) else t[-2]
        span = t[0] - t_end
        if not np.isfinite(span) or span == 0:
            raise ValueError(f"TStitch(by='time') needs a grid whose model times change from t[0] to t[N]; "
                             f"got t[0]={t[0]!r}, t[N]={t[-1]!r}")
        u = (t[0] - t[:-1]) / span
        back = np.flatnonzero(np.diff(u) < 0)
        if len(back):
            i = int(back[0])
            raise ValueError(f"TStitch(by='time') needs model times that move monotonically from t[0] to t[N]; "
                             f"this grid turns back between points {i} and {i + 1} (t = {float(t[i])!r}, "
                             f"{float(t[i + 1])!r}), so the models would alternate; use by='step'")
        return u

    def decide(self, grid, sampler, n_models: int) -> Decision:
        if n_models != len(self.fractions) + 1:
            raise ValueError(f"TStitch has {len(self.fractions)} fraction(s), so it needs "
                             f"{len(self.fractions) + 1} models ordered small to large; got {n_models} "
                             "(give one fraction per model except the last, which runs the rest)")
        bounds = np.cumsum(self.fractions) - TOLERANCE
        models = np.searchsorted(bounds, self.progress(grid), side="right").astype(np.int64)
        return Decision(models, no_extrapolation(grid.steps))

    def switch_steps(self, grid) -> list[int]:
        """First step of each model (``N`` for a model that runs no step)."""
        models = self.decide(grid, None, len(self.fractions) + 1).models
        return [int(np.searchsorted(models, k, side="left")) for k in range(len(self.fractions) + 1)]

    def check_models(self, models, x, t, model_kwargs=None, *, cfg: bool = False) -> None:
        """Hook for :func:`ltc.sample`: :func:`check_compatible` before sampling starts, once per
        (model functions, sample shape, dtype, device, cfg): the probe calls are not repeated on
        every call with the same models (they would eat the speed-up at small batch)."""
        fns = [getattr(m, "fn", m) for m in models]
        key = (tuple((id(f), getattr(m, "prediction", None)) for f, m in zip(fns, models)),
               tuple(x.shape[1:]), x.dtype, str(x.device), cfg)
        refs = _CHECKED.get(key)
        if refs is not None and all(ref() is f for ref, f in zip(refs, fns)):
            return  # the same live functions (an id alone may be reused by a new object)
        check_compatible(models, x, t, model_kwargs, cfg=cfg)
        try:
            _CHECKED[key] = tuple(weakref.ref(f) for f in fns)
        except TypeError:  # not weak-referenceable: probed again next time
            return
        if len(_CHECKED) > 64:
            _CHECKED.pop(next(iter(_CHECKED)))


_CHECKED: dict = {}  # model sets already found compatible -> weak references to their functions (bounded)


def _probe_kwargs(kwargs: dict, batch: int, cfg: bool) -> dict:
    """Keep the first sample of each batched tensor argument (dim 0 == B, or 2B under CFG), as a
    copy: the caller's tensors are never handed to a model as views."""
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor) and cfg and value.ndim >= 1 and value.shape[0] == 2 * batch:
            value = value[[0, batch]]
        elif isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch:
            value = value[:1].clone()
        out[key] = value
    return out


def check_compatible(models, x: torch.Tensor, t, model_kwargs=None, *, cfg: bool = False) -> None:
    """Check that stitched models agree before sampling: the same declared prediction type, and
    one probe call each on the first sample of ``x`` (``[B, *S]``; duplicated under ``cfg``) at
    time ``t`` returns a tensor of the probe's shape and of ``x``'s dtype and device.  Tensor
    arguments in ``model_kwargs`` with leading dimension ``B`` (or ``2B`` under ``cfg``) are cut
    to the same sample; others are passed unchanged.  Raises ValueError/TypeError naming the model.
    """
    models = list(models)
    if len(models) < 2:
        return
    preds = [getattr(m, "prediction", None) for m in models]
    names = [getattr(m, "name", f"model_fns[{k}]") for k, m in enumerate(models)]
    for k in range(1, len(models)):
        if preds[k] != preds[0]:
            raise ValueError(f"stitched models must share one prediction type: {names[0]!r} predicts "
                             f"{preds[0]!r} but {names[k]!r} predicts {preds[k]!r}")
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[0] < 1:
        raise ValueError("check_compatible needs a non-empty batch x [B, *S]")
    probe = torch.cat([x[:1], x[:1]]) if cfg else x[:1].clone()  # a copy: a model may write its input
    t_dtype = compute_dtype(x.dtype)  # as the walk passes t
    t = torch.as_tensor(t, dtype=t_dtype, device=x.device)
    t_probe = (t.reshape(-1)[:1] if t.ndim else t).clone().expand(probe.shape[0])
    kwargs = _probe_kwargs(model_kwargs or {}, x.shape[0], cfg)
    for name, model in zip(names, models):
        versions = probe._version, t_probe._version
        out = model(probe, t_probe, **kwargs)
        if (probe._version, t_probe._version) != versions:
            which = "x" if probe._version != versions[0] else "t"
            raise ValueError(f"stitched model {name!r} modified its input {which} in place during T-Stitch's "
                             f"compatibility probe; {INPLACE_FIX}")
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"stitched model {name!r} returned {type(out).__name__}, expected a torch.Tensor"
                            + output_hint(out))
        if out.shape != probe.shape:
            raise ValueError(f"stitched model {name!r} returned shape {tuple(out.shape)} for an input of shape "
                             f"{tuple(probe.shape)}; every stitched model must return the shape of x")
        if out.dtype != x.dtype or out.device != x.device:
            raise ValueError(f"stitched model {name!r} returned {out.dtype} on {out.device}, "
                             f"expected {x.dtype} on {x.device}")
