"""``ltc.calibration.auto``: choose the LTC interval and cadence for a requested NFE (or speed-up).

Rule.  With N steps and a requested NFE, K = N - NFE steps must be extrapolated.

1. Measure the coherence curve c_i = mean_b cos(Delta_{i-1}, Delta_i) on the full-N run of the
   calibration noises (N calls).
2. Candidates: every cadence ``e`` in ``everies`` and every interval [start, end) with exactly K
   extrapolated steps (start = end - K e, end = N, N-1, ...).  Score = the mean coherence at the
   extrapolated steps i (the transition x_i -> x_{i+1} that the extrapolation predicts from
   x_{i-1} -> x_i), ties broken towards later intervals.  The ``candidates`` best-scoring ones
   are calibrated (:meth:`ltc.calibration.fit.Session.calibrate`, sharing the plain runs).
3. Keep the calibrations the refusal rule accepts (:mod:`ltc.calibration.report`) and return
   the one with the smallest median distance to the teacher.  When none is accepted, return the
   best plain plan at that NFE (the plain row with the smallest median over all candidates'
   reports) and say so.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..api import sample
from ..policies import LTC, Full
from ..policies.ltc_accel import first_extrapolable_step
from ..samplers import DPMSolverPP, Sampler, get_sampler
from ..schedule import Schedule
from .file import Calibration
from .fit import Session

logger = logging.getLogger(__name__)


@dataclass
class AutoChoice:
    """What :func:`auto` chose: ``policy`` with ``schedule``, ``sampler`` and ``steps`` (pass them
    to :func:`ltc.sample`, or call :meth:`sample`).  ``accepted`` tells whether it is LTC."""

    accepted: bool
    policy: object
    schedule: Schedule
    sampler: Sampler
    steps: int | None
    nfe: int
    message: str
    calibration: Calibration | None = None
    candidates: list = field(default_factory=list)
    cost: int = 0

    def sample(self, model_fns, **kwargs):
        return sample(model_fns, self.schedule, self.policy, sampler=self.sampler, steps=self.steps, **kwargs)


def candidate_structures(coherence: np.ndarray, steps: int, skips: int, everies, *, state: str = "x0") -> list:
    """``(score, start, end, every)`` of every interval with exactly ``skips`` extrapolations, best first."""
    out = []
    first = first_extrapolable_step(state)
    for e in everies:
        for end in range(steps, 0, -1):
            start = end - skips * e
            if start < 0:
                break
            idx = [i for i in range(start, end) if (i - start) % e == e - 1]
            if len(idx) != skips or idx[0] < first:
                continue
            score = float(np.mean([coherence[i - 1] for i in idx]))
            out.append((score, start, end, e))
    out.sort(key=lambda c: (-c[0], -c[2], c[3]))
    return out


def _plain_choice(schedule, grid, spec: dict):
    sampler = DPMSolverPP(2) if spec["sampler"] == "dpmpp_2m" else get_sampler(spec["sampler"])
    if spec["grid"] == "own":
        return schedule, sampler, spec["steps"]
    p = spec["points"]
    return Schedule.explicit(grid.t[p], grid.alpha[p], grid.sigma[p], family=grid.family), sampler, None


def auto(model_fns, schedule: Schedule, *, steps: int, nfe: int | None = None, speedup: float | None = None,
         sampler="dpmpp_2m", noise=None, shape=None, generator=None, held_out=None, held_out_kwargs=None,
         everies=(2, 3, 4), candidates: int = 3, progress: str = "sigma", state: str = "x0", base=None,
         objective: str = "step", teacher="dpmpp_2m", clamp=(0.0, 10.0), model_kwargs=None,
         guidance_scale=None, prediction=None, dtype=None, device=None, backend=None,
         verbose: bool = True) -> AutoChoice:
    """Choose an LTC interval and cadence for ``nfe`` model calls (or ``steps / speedup``) out of
    ``steps``, by the rule of the module docstring.  Other arguments as in :func:`ltc.calibrate`;
    ``verbose`` logs the choice (logger ``ltc.calibration.auto``, level INFO)."""
    if (nfe is None) == (speedup is None):
        raise ValueError("give exactly one of nfe (model calls) or speedup (steps / nfe)")
    if speedup is not None:
        if isinstance(speedup, bool) or not isinstance(speedup, (int, float)) or not speedup > 1:
            raise ValueError(f"speedup must be a number > 1, got {speedup!r}")
        nfe = int(round(steps / speedup))
    if isinstance(nfe, bool) or not isinstance(nfe, int):
        raise TypeError(f"nfe must be an int, got {type(nfe).__name__}")
    if not everies or any(isinstance(e, bool) or not isinstance(e, int) or e < 2 for e in everies):
        raise ValueError(f"everies must be a non-empty sequence of ints >= 2, got {everies!r}")
    max_skips = (steps - 1) // min(everies)
    if not steps - max_skips <= nfe < steps:
        raise ValueError(f"nfe must be in [{steps - max_skips}, {steps - 1}] for {steps} steps with cadences "
                         f"{tuple(everies)} (at most one extrapolation per {min(everies)} steps), got {nfe}")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be an int >= 1, got {candidates!r}")
    session = Session(model_fns, schedule, sampler=sampler, steps=steps, noise=noise, shape=shape,
                      generator=generator, held_out=held_out, held_out_kwargs=held_out_kwargs,
                      model_kwargs=model_kwargs, guidance_scale=guidance_scale, prediction=prediction,
                      dtype=dtype, device=device, backend=backend)
    base_policy = base or Full()
    _, coherence = session.runners["calibration"].run_plan(session.compile(session.grid, session.solver,
                                                                           base_policy), coherence=True)
    ranked = candidate_structures(coherence, steps, steps - nfe, everies, state=state)
    tried = []
    for score, start, end, e in ranked[:candidates]:
        policy = LTC(interval=(start, end), every=e, progress=progress, state=state, base=base)
        cal = session.calibrate(policy, objective=objective, teacher=teacher, clamp=clamp)
        d = cal.report["decision"]
        tried.append({"interval": [start, end], "every": e, "score": score, "accepted": d["accepted"],
                      "ltc_median": d["ltc_median"], "best_plain_median": d["best_plain_median"],
                      "best_plain": d["best_plain_name"], "calibration": cal})
    accepted = [t for t in tried if t["accepted"]]
    summary = [{k: v for k, v in t.items() if k != "calibration"} for t in tried]
    if accepted:
        best = min(accepted, key=lambda t: t["ltc_median"])
        cal = best["calibration"]
        msg = (f"ltc.calibration.auto: interval {best['interval']} every {best['every']} ({nfe} calls of {steps}) accepted: "
               f"median distance to the teacher {best['ltc_median']:.4g} < {best['best_plain_median']:.4g} "
               f"({best['best_plain']})")
        choice = AutoChoice(True, cal.policy(base=base), schedule, session.solver, steps, nfe, msg, cal, summary,
                            session.calls)
    else:
        rows = [(r["median"], r["spec"], r["name"]) for t in tried
                for r in t["calibration"].report["sets"]["calibration"] if r["kind"] == "plain"]
        median, spec, name = min(rows, key=lambda r: r[0])
        sch, smp, n = _plain_choice(schedule, session.grid, spec)
        msg = (f"ltc.calibration.auto: no LTC setting with {nfe} calls of {steps} passed the refusal rule "
               f"({len(tried)} tried); returning the best plain plan at that NFE: {name} "
               f"(median distance to the teacher {median:.4g})")
        choice = AutoChoice(False, base_policy if base is not None else Full(), sch, smp, n, nfe, msg, None,
                            summary, session.calls)
    if verbose:
        logger.info("%s", msg)
    return choice
