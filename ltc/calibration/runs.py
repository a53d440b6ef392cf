"""Plain reference runs of a calibration: endpoints of compiled plans on one noise set.

Used by :func:`ltc.calibrate` for the teacher, the full-N run (with its coherence curve) and the
plain samplers at the LTC NFE.  Everything runs through :func:`ltc.executor.eager.run_eager`; endpoints
are memoised by plan fingerprint and model calls are counted (one call = one batched model
evaluation, a CFG call on the doubled batch counting once, as :attr:`ltc.Plan.nfe`).

Grids:

* :func:`teacher_grid` -- 2N steps on the same schedule when ``schedule.discretize(2N)`` starts and
  ends at the N-step grid's points; otherwise (e.g. "leading" spacing, whose first time depends on
  N) the N-step grid refined by the midpoint in model time of each step whose midpoint lies
  strictly inside it (the clean-end step of a VP grid, t -> -1, is kept whole).
* :func:`evaluated_grid` -- the points where an LTC plan calls the model, plus the end: the grid
  on which a plain sampler spends the same model calls at the same noise levels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..executor.eager import run_eager
from ..plan import EXTRAPOLATE, Plan, compile_plan
from ..policies import Full
from ..samplers import DPMSolverPP
from ..schedule import Grid


def teacher_grid(schedule, grid: Grid) -> Grid:
    """The 2N-step grid of the default teacher (see the module docstring)."""
    N = grid.steps
    try:
        fine = schedule.discretize(2 * N, rule=DPMSolverPP.grid_rule)  # the teacher's own spacing
        same = np.array_equal(fine.sigma[[0, -1]], grid.sigma[[0, -1]]) and \
            np.array_equal(fine.alpha[[0, -1]], grid.alpha[[0, -1]])
        if same:
            return fine
    except ValueError:
        pass
    t, a, s = [grid.t[0]], [grid.alpha[0]], [grid.sigma[0]]
    for i in range(N):
        tm = 0.5 * (grid.t[i] + grid.t[i + 1])
        if np.isfinite(tm):
            am, sm = (float(v) for v in schedule.noise_at(torch.tensor([tm], dtype=torch.float64)))
            if grid.sigma[i + 1] < sm < grid.sigma[i] and am > 0:
                t.append(tm), a.append(am), s.append(sm)
        t.append(grid.t[i + 1]), a.append(grid.alpha[i + 1]), s.append(grid.sigma[i + 1])
    return Grid(np.array(t), np.array(a), np.array(s), grid.family)


def evaluated_grid(grid: Grid, models) -> Grid:
    """The sub-grid of the points where ``models[i] != EXTRAPOLATE``, plus the last point."""
    points = [i for i, m in enumerate(models) if m != EXTRAPOLATE] + [grid.steps]
    return Grid(grid.t[points], grid.alpha[points], grid.sigma[points], grid.family)


class Coherence:
    """``run_eager`` callback: per-sample cos(Delta_{i-1}, Delta_i) of consecutive transitions
    Delta_i = x_{i+1} - x_i (the callback's ``x_next`` and ``x``), averaged over the batch;
    ``curve()`` gives ``[N-1]`` (i = 1..N-1) on the host."""

    def __init__(self):
        self.prev_d = None
        self.values = []

    def __call__(self, info: dict) -> None:
        x = info["x"]
        d = (info["x_next"] - x).reshape(x.shape[0], -1).to(torch.float64)
        if self.prev_d is not None:
            self.values.append(F.cosine_similarity(d, self.prev_d, dim=1, eps=1e-30).mean())
        self.prev_d = d

    def curve(self) -> np.ndarray:
        return torch.stack(self.values).cpu().numpy() if self.values else np.zeros(0)


class Runner:
    """Endpoints of plain plans from ``noise`` (memoised), counting model calls in ``calls``."""

    def __init__(self, models, noise: torch.Tensor, *, ops, model_kwargs=None, guidance_scale=None):
        self.models, self.noise, self.ops = models, noise, ops
        self.kwargs, self.guidance = model_kwargs, guidance_scale
        self.cache: dict = {}
        self.calls = 0

    def compile(self, grid: Grid, sampler, policy=None) -> Plan:
        return compile_plan(grid, sampler, policy or Full(), [m.prediction for m in self.models], self.guidance)

    def run_plan(self, plan: Plan, *, coherence: bool = False):
        """Endpoint ``[B, *S]`` of ``plan`` (and the coherence curve when asked)."""
        key = (plan.fingerprint, coherence)
        if key not in self.cache:
            rec = Coherence() if coherence else None
            x = run_eager(plan, self.models, self.noise, ops=self.ops, model_kwargs=self.kwargs, callback=rec)
            self.calls += plan.nfe
            self.cache[key] = (x, rec.curve()) if coherence else x
            if coherence:
                self.cache[(plan.fingerprint, False)] = x
        return self.cache[key]

    def endpoint(self, grid: Grid, sampler, policy=None) -> torch.Tensor:
        return self.run_plan(self.compile(grid, sampler, policy))


def sample_distance(x: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """Per-sample RMS distance ``sqrt(mean_features (x - ref)^2)``, ``[B]`` float64."""
    B = x.shape[0]
    diff = x.to(torch.float64).reshape(B, -1) - ref.to(torch.float64).reshape(B, -1)
    return (diff ** 2).mean(1).sqrt().cpu().numpy()
