"""The plan: everything that depends only on schedule, sampler and policy, decided once on the host.

A plan is a static per-step table.  Step ``i`` is either a *model step* (model ``models[i]`` is
called at point i) or an *extrapolated step* (``models[i] == EXTRAPOLATE``, no model call).  The
numeric part is one ``[N, NCOLS]`` coefficient table (columns :class:`Col`); the step operations
(:mod:`ltc.ops`) read row ``i`` of its device copy, so no host scalar changes between steps and a
captured CUDA graph can replay any step.

Model step (CFG combine, prediction -> x0, solver update (*) of :mod:`ltc.samplers`):

    m   = m_u + G (m_c - m_u)            (only with classifier-free guidance)
    D_i = PX x_i + PM m                  (see :mod:`ltc.models`)
    x_{i+1} = A x_i + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + B3 D_{i-3} + NOISE z

Extrapolated step (any linear extrapolation of the state or of the model-output history),
followed by the x0 it implies, written to the history so multistep solvers stay consistent:

    x_{i+1} = EX x_i + EXP x_{i-1} + EH1 D_{i-1} + EH2 D_{i-2}
    D_i     = IN x_{i+1} + IC x_i
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
import numpy as np
import torch

from .models import canonical, check_family, x0_coefficients
from .ops.contract import (EXTRAPOLATION_COLS, HISTORY_SLOTS, NCOLS, Col, ExtrapolationCol, compute_dtype,
                           extrapolation_reads)
from .samplers import Sampler
from .schedule import Grid

EXTRAPOLATE = -1
PLAN_FORMAT = 1

__all__ = ["Plan", "Decision", "compile_plan", "fingerprint_of", "EXTRAPOLATE", "Col", "NCOLS",
           "HISTORY_SLOTS", "ExtrapolationCol", "EXTRAPOLATION_COLS"]


@dataclass(frozen=True)
class Decision:
    """What a policy decides: ``models[i]`` (model index or EXTRAPOLATE) and, for extrapolated
    steps, the six extrapolation coefficients ``[N, 6]`` (columns :class:`ExtrapolationCol`)."""

    models: np.ndarray
    extrapolation: np.ndarray


@dataclass(frozen=True, eq=False)
class Plan:
    """A compiled plan.  Host side: ``models``, ``history_reads`` (past D read per step),
    ``noisy`` (step draws fresh noise) and the float64 ``table``; device copies on demand."""

    grid: Grid
    sampler: Sampler
    policy: object
    predictions: tuple
    guidance_scale: float | None
    models: tuple
    history_reads: tuple
    noisy: tuple
    table: np.ndarray
    fingerprint: str
    _device_cache: dict = field(default_factory=dict, repr=False)

    @property
    def steps(self) -> int:
        return len(self.models)

    @property
    def cfg(self) -> bool:
        return self.guidance_scale is not None

    @property
    def nfe(self) -> int:
        """Model calls of one sampling run (a CFG call on the doubled batch counts once)."""
        return sum(m != EXTRAPOLATE for m in self.models)

    def nfe_per_model(self) -> list[int]:
        return [sum(m == k for m in self.models) for k in range(len(self.predictions))]

    def coefficients(self, storage_dtype: torch.dtype, device) -> torch.Tensor:
        """The ``[N, NCOLS]`` table on ``device`` in the compute dtype of ``storage_dtype`` (cached).
        Raises ValueError naming the column, the step and the cause when a coefficient is not finite
        in that dtype (e.g. ``guidance_scale=1e39`` in a float32 table)."""
        dtype = compute_dtype(storage_dtype)
        key = ("coef", dtype, str(device))
        if key not in self._device_cache:
            bad = _first_overflow(self.table, dtype)
            if bad is not None:
                raise ValueError(self._overflow_message(*bad, dtype))
            self._device_cache[key] = torch.tensor(self.table, dtype=dtype, device=device)
        return self._device_cache[key]

    def timesteps(self, storage_dtype: torch.dtype, device) -> torch.Tensor:
        """Model time input of every step, ``[N]`` on ``device`` in the compute dtype (cached)."""
        dtype = compute_dtype(storage_dtype)
        key = ("t", dtype, str(device))
        if key not in self._device_cache:
            bad = _first_overflow(self.grid.t[:-1, None], dtype)
            if bad is not None:
                raise ValueError(f"the model time t = {float(self.grid.t[bad[0]])!r} of step {bad[0]} does not fit "
                                 f"in {dtype} (the dtype the model receives t in, for {storage_dtype} states): the "
                                 "schedule's times are too large; rescale them (or sample in float64)")
            self._device_cache[key] = torch.tensor(self.grid.t[:-1], dtype=dtype, device=device)
        return self._device_cache[key]

    def evict(self, table: torch.Tensor) -> None:
        """Drop a cached device table (one a model wrote into: the next walk builds a clean copy)."""
        for key in [k for k, v in self._device_cache.items() if v is table]:
            del self._device_cache[key]

    def _overflow_message(self, i: int, c: int, dtype: torch.dtype) -> str:
        """Why coefficient ``Col(c)`` of step ``i`` does not fit in ``dtype``: the argument it comes from."""
        col, value = Col(c), self.table[i, c]
        where = (f"coefficient {col.name} = {value:.4g} of step {i} does not fit in {dtype} (largest "
                 f"{torch.finfo(dtype).max:.4g}), the compute dtype of the walk")
        if col == Col.GUIDANCE:
            cause = f"guidance_scale={self.guidance_scale!r} is too large for {dtype}: lower it (or sample in float64)"
        elif col in EXTRAPOLATION_COLS:
            cause = (f"step {i} is extrapolated and its coefficients come from the policy's weights: an LTC weight "
                     f"(given, or loaded from a calibration file) of extrapolated step {i} is too large; lower it "
                     "(or sample in float64)")
        else:
            cause = (f"the schedule's noise levels at points {i}, {i + 1} (alpha = {self.grid.alpha[i]:.4g}, "
                     f"{self.grid.alpha[i + 1]:.4g}; sigma = {self.grid.sigma[i]:.4g}, {self.grid.sigma[i + 1]:.4g}) "
                     f"are too extreme for the {'prediction conversion' if col in (Col.PX, Col.PM) else 'sampler'} "
                     f"in {dtype} (sample in float64)")
        return f"plan {where}: {cause}"

    def describe(self) -> str:
        """One line: the sampler, steps, model calls (in total and per model index), which model
        runs at each step (``k``: model k, ``x``: extrapolated, no call; space-separated beyond 10
        models), the guidance scale and the fingerprint's first 12 hex digits.  Also the repr."""
        sep = "" if len(self.predictions) <= 10 else " "
        kinds = sep.join("x" if m == EXTRAPOLATE else str(m) for m in self.models)
        per_model = "+".join(str(n) for n in self.nfe_per_model())
        return (f"Plan({self.sampler!r}, steps={self.steps}, nfe={self.nfe} (per model {per_model}), "
                f"step models {kinds} (k: model k, x: extrapolated), guidance_scale={self.guidance_scale}, "
                f"fingerprint={self.fingerprint[:12]})")

    def __repr__(self) -> str:  # the dataclass repr would print the whole grid and table
        return self.describe()


def _first_overflow(table: np.ndarray, dtype: torch.dtype) -> tuple[int, int] | None:
    """``(row, column)`` of the first entry of the float64 ``table`` that is not finite in ``dtype``."""
    if dtype == torch.float64:
        return None
    bad = torch.argwhere(~torch.isfinite(torch.tensor(table, dtype=dtype)))
    return None if len(bad) == 0 else (int(bad[0][0]), int(bad[0][1]))


def fingerprint_of(*parts) -> str:
    """sha256 of the canonical JSON of ``parts``."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def compile_plan(grid: Grid, sampler: Sampler, policy, predictions, guidance_scale=None) -> Plan:
    """Compile ``grid x sampler x policy`` for models with the given prediction types.  The plan's
    rows are ``sampler.rows(grid)`` (the grid itself, or a two-stage sampler's rows: Heun)."""
    if not isinstance(grid, Grid):
        raise TypeError(f"grid must be an ltc.Grid (schedule.discretize(steps)), got {type(grid).__name__}")
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be an ltc.samplers.Sampler (e.g. get_sampler('dpmpp_2m')), got "
                        f"{type(sampler).__name__}")
    if not callable(getattr(policy, "decide", None)) or not callable(getattr(policy, "config", None)):
        raise TypeError(f"policy must be an ltc.policies.Policy, got {type(policy).__name__}")
    if isinstance(predictions, str):
        raise TypeError(f"predictions must be a sequence of prediction types, one per model, got {predictions!r}")
    if grid.repeated:
        raise ValueError("grid has zero-length rows (a two-stage sampler's rows); pass the schedule's grid: the "
                         "sampler expands it (Sampler.rows)")
    grid = sampler.rows(grid)
    N = grid.steps
    preds = tuple(canonical(p) for p in predictions)
    for p in preds:
        check_family(p, grid.family)
    solver = sampler.table(grid)
    decision = policy.decide(grid, sampler, len(preds))
    models = np.asarray(decision.models, dtype=np.int64)
    if models.shape != (N,):
        raise ValueError(f"policy {policy!r} decided {models.shape} steps, expected ({N},)")
    if np.any((models < EXTRAPOLATE) | (models >= len(preds))):
        raise ValueError(f"policy {policy!r} chose a model index outside 0..{len(preds) - 1}")
    extrap = np.asarray(decision.extrapolation, dtype=np.float64)
    if extrap.shape != (N, len(EXTRAPOLATION_COLS)):
        raise ValueError(f"policy {policy!r} gave extrapolation coefficients of shape {extrap.shape}")
    if models[0] == EXTRAPOLATE:
        raise ValueError("the first step cannot be extrapolated: there is no previous transition")

    table = np.zeros((N, NCOLS))
    table[:, Col.A], table[:, Col.B0] = solver.A, solver.B0
    table[:, Col.B1], table[:, Col.B2], table[:, Col.NOISE] = solver.B1, solver.B2, solver.C
    table[:, Col.B3] = solver.B3
    table[:, Col.GUIDANCE] = 0.0 if guidance_scale is None else guidance_scale
    reads = []
    for i in range(N):
        if models[i] == EXTRAPOLATE:
            table[i, list(EXTRAPOLATION_COLS)] = extrap[i]
            table[i, [Col.A, Col.B0, Col.B1, Col.B2, Col.B3, Col.NOISE]] = 0.0
            reads.append(extrapolation_reads(extrap[i]))
        else:
            px, pm = x0_coefficients(preds[models[i]], grid.alpha[i], grid.sigma[i])
            table[i, Col.PX], table[i, Col.PM] = px, pm
            reads.append(int(solver.order[i]) - 1)
    bad = np.argwhere(~np.isfinite(table))
    if len(bad):
        i, c = bad[0]
        raise ValueError(f"plan coefficient {Col(c).name} of step {i} is not finite (alpha={grid.alpha[i]}, "
                         f"sigma={grid.sigma[i]}); e.g. an eps prediction cannot be used where alpha = 0")
    noisy = tuple(bool(c != 0) for c in table[:, Col.NOISE])
    fp = fingerprint_of(PLAN_FORMAT, grid.digest(), sampler.config(), policy.config(), preds,
                        guidance_scale, [int(m) for m in models],
                        [float(v).hex() for v in table.ravel()])
    table.setflags(write=False)
    return Plan(grid, sampler, policy, preds, guidance_scale, tuple(int(m) for m in models),
                tuple(reads), noisy, table, fp)
