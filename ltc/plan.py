"""The plan: everything that depends only on schedule, sampler and policy, decided once on the host.

A plan is a static per-step table.  Step ``i`` is either a *model step* (model ``models[i]`` is
called at point i) or an *extrapolated step* (``models[i] == EXTRAPOLATE``, no model call).  The
numeric part is one ``[N, NCOLS]`` coefficient table (columns :class:`Col`); the step operations
(:mod:`ltc.ops`) read row ``i`` of its device copy, so no host scalar changes between steps and a
captured CUDA graph can replay any step.

Model step (CFG combine, prediction -> x0, solver update (*) of :mod:`ltc.samplers`):

    m   = m_u + G (m_c - m_u)            (only with classifier-free guidance)
    D_i = PX x_i + PM m                  (see :mod:`ltc.models`)
    x_{i+1} = A x_i + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + NOISE z

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
        """The ``[N, NCOLS]`` table on ``device`` in the compute dtype of ``storage_dtype`` (cached)."""
        dtype = compute_dtype(storage_dtype)
        key = ("coef", dtype, str(device))
        if key not in self._device_cache:
            self._device_cache[key] = torch.tensor(self.table, dtype=dtype, device=device)
        return self._device_cache[key]

    def timesteps(self, storage_dtype: torch.dtype, device) -> torch.Tensor:
        """Model time input of every step, ``[N]`` on ``device`` in the compute dtype (cached)."""
        dtype = compute_dtype(storage_dtype)
        key = ("t", dtype, str(device))
        if key not in self._device_cache:
            self._device_cache[key] = torch.tensor(self.grid.t[:-1], dtype=dtype, device=device)
        return self._device_cache[key]

    def describe(self) -> str:
        kinds = "".join("x" if m == EXTRAPOLATE else str(m) for m in self.models)
        return (f"Plan({self.sampler!r}, steps={self.steps}, nfe={self.nfe}, models={kinds}, "
                f"cfg={self.cfg}, fingerprint={self.fingerprint[:12]})")


def fingerprint_of(*parts) -> str:
    """sha256 of the canonical JSON of ``parts``."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def compile_plan(grid: Grid, sampler: Sampler, policy, predictions, guidance_scale=None) -> Plan:
    """Compile ``grid x sampler x policy`` for models with the given prediction types."""
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
    table[:, Col.GUIDANCE] = 0.0 if guidance_scale is None else guidance_scale
    reads = []
    for i in range(N):
        if models[i] == EXTRAPOLATE:
            table[i, list(EXTRAPOLATION_COLS)] = extrap[i]
            table[i, [Col.A, Col.B0, Col.B1, Col.B2, Col.NOISE]] = 0.0
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
