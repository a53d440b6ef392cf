"""``ltc.calibration.auto``: the best plan for a requested NFE (or speed-up) -- LTC or plain.

Rule.  With N steps and a requested NFE, K = N - NFE steps must be extrapolated.

1. Measure the coherence curve c_i = mean_b cos(Delta_{i-1}, Delta_i) on the full-N run of the
   fit noises (N calls).
2. Candidates: for every cadence ``e`` in ``everies``, every run of K consecutive steps that LTC's
   ``phase`` extrapolates (:func:`candidate_structures`).  Score = the mean coherence at the
   extrapolated steps i (the transition x_i -> x_{i+1} that the extrapolation predicts from
   x_{i-1} -> x_i), ties broken towards later intervals.  The ``candidates`` best-scoring ones,
   plus the default structure ``LTC(every=2)`` when it extrapolates K steps, are calibrated
   (:meth:`ltc.calibration.fit.Session.calibrate`: the same fit and judged noises, the same judge,
   shared plain runs).
3. The plain rows of every candidate's report (every sampler and grid) are pooled; the best plain
   plan P is the one with the smallest mean distance to the judge.  Each candidate's LTC row
   (calibrated or w = 1, as its report chose) is tested against all of them by the refusal rule
   (:func:`ltc.calibration.report.compare`).  The accepted candidate with the smallest mean
   distance is returned; when none is accepted, P is returned -- never a plain plan worse than the
   best one evaluated -- and the message gives every candidate's verdict.

So ``auto`` never accepts an LTC structure that :func:`ltc.calibrate` refuses on the same noises
(it must beat a superset of that calibration's plain rows); it may refuse one that ``calibrate``
accepts alone, when a plain plan on another candidate's grid is as good, and then says so.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np

from ..api import sample
from ..policies import LTC, Full
from ..policies.ltc_accel import PHASES, first_extrapolable_step, interval_steps
from ..samplers import DPMSolverPP, Sampler, get_sampler
from ..schedule import Schedule, VPSchedule
from .file import Calibration
from .fit import Session
from .report import choose_ltc, compare

logger = logging.getLogger(__name__)


@dataclass
class AutoChoice:
    """What :func:`auto` chose: ``policy`` with ``schedule``, ``sampler`` and ``steps`` (pass them
    to :func:`ltc.sample`, or call :meth:`sample`).  ``accepted`` tells whether it is LTC;
    ``candidates`` summarises every LTC structure tried (its verdict against the best plain plan),
    ``plain`` every plain plan evaluated (``name``, ``spec``, ``mean`` distance to the judge)."""

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
    plain: list = field(default_factory=list)

    def sample(self, model_fns, **kwargs):
        return sample(model_fns, self.schedule, self.policy, sampler=self.sampler, steps=self.steps, **kwargs)


def candidate_structures(coherence: np.ndarray, steps: int, skips: int, everies, *, state: str = "x0",
                         phase: str = "reference") -> list:
    """``(score, start, end, every)`` of every interval (int step indices) whose ``phase`` extrapolates
    exactly ``skips`` steps, best first; ``LTC(interval=(start, end), every=every, phase=phase)``
    extrapolates them.  ``"reference"``: runs of ``skips`` consecutive steps with
    ``i % every == every - 1``, as the tightest interval (first - 1, last + 1); ``"interval"``:
    intervals of ``skips * every`` steps ending at N, N - 1, ..."""
    out = []
    first = first_extrapolable_step(state)
    for e in everies:
        if phase == "reference":
            terms = [i for i in range(first, steps) if i % e == e - 1]
            windows = [(terms[m] - 1, terms[m + skips - 1] + 1) for m in range(len(terms) - skips + 1)]
        else:
            windows = [(end - skips * e, end) for end in range(steps, skips * e - 1, -1)]
        for start, end in windows:
            idx = interval_steps(start, end, e, phase)
            if len(idx) != skips or idx[0] < first:
                continue
            out.append((float(np.mean([coherence[i - 1] for i in idx])), start, end, e))
    out.sort(key=lambda c: (-c[0], -c[2], c[3]))
    return out


def _plain_choice(schedule, grid, spec: dict):
    sampler = DPMSolverPP(2) if spec["sampler"] == "dpmpp_2m" else get_sampler(spec["sampler"])
    if spec["grid"] == "own":
        return schedule, sampler, spec["steps"]
    p = spec["points"]
    table = schedule.alphas_cumprod if isinstance(schedule, VPSchedule) else None  # model times may repeat (Karras)
    return (Schedule.explicit(grid.t[p], grid.alpha[p], grid.sigma[p], family=grid.family, alphas_cumprod=table),
            sampler, None)


def _policies(ranked, count, steps, skips, everies, progress, state, phase, base) -> list:
    """The ``count`` best-ranked structures, then ``LTC(every=2)`` if it extrapolates ``skips`` steps
    and is not among them."""
    out = [LTC(interval=(start, end), every=e, phase=phase, progress=progress, state=state, base=base)
           for _, start, end, e in ranked[:count]]
    default = LTC(phase=phase, progress=progress, state=state, base=base)
    try:
        steps_default = default.extrapolated_steps(steps)
    except ValueError:
        return out
    if 2 in everies and len(steps_default) == skips and steps_default[0] >= first_extrapolable_step(state) \
            and all(p.extrapolated_steps(steps) != steps_default for p in out):
        out.append(default)
    return out


def _describe(policy: LTC, steps: int) -> str:
    return f"steps {policy.extrapolated_steps(steps)} ({policy!r})"


def auto(model_fns, schedule: Schedule, *, steps: int, nfe: int | None = None, speedup: float | None = None,
         sampler="dpmpp_2m", noise=None, shape=None, generator=None, held_out=None, held_out_kwargs=None,
         everies=(2, 3, 4), candidates: int = 3, progress: str = "sigma", state: str = "x0",
         phase: str = "reference", base=None, objective: str = "step", teacher="dpmpp_2m", clamp=(0.0, 10.0),
         model_kwargs=None, guidance_scale=None, prediction=None, dtype=None, device=None, backend=None,
         verbose: bool = True) -> AutoChoice:
    """The best plan with ``nfe`` model calls (or ``steps / speedup``) out of ``steps``, by the rule of
    the module docstring.  Other arguments as in :func:`ltc.calibrate` (the noises are split the
    same way) and :class:`ltc.policies.LTC`; ``verbose`` logs the choice (logger
    ``ltc.calibration.auto``, level INFO)."""
    nfe = _check_arguments(steps, nfe, speedup, everies, candidates, phase)
    session = Session(model_fns, schedule, sampler=sampler, steps=steps, noise=noise, shape=shape,
                      generator=generator, held_out=held_out, held_out_kwargs=held_out_kwargs,
                      model_kwargs=model_kwargs, guidance_scale=guidance_scale, prediction=prediction,
                      dtype=dtype, device=device, backend=backend)
    session.require_judged()
    base_policy = base or Full()
    _, coherence = session.runners["calibration"].run_plan(session.compile(session.grid, session.solver,
                                                                           base_policy), coherence=True)
    ranked = candidate_structures(coherence, steps, steps - nfe, everies, state=state, phase=phase)
    tried = [(policy, session.calibrate(policy, objective=objective, teacher=teacher, clamp=clamp))
             for policy in _policies(ranked, candidates, steps, steps - nfe, everies, progress, state, phase, base)]
    plain = _plain_rows(cal for _, cal in tried)
    best_plain = min(plain, key=lambda r: r["mean"])
    summary = [_verdict(policy, cal, plain, steps) for policy, cal in tried]
    accepted = [(e["ltc_mean"], k) for k, e in enumerate(summary) if e["accepted"]]
    head = f"ltc.calibration.auto ({nfe} calls of {steps}, {len(tried)} LTC structures tried)"
    plain_text = f"the best plain plan {best_plain['name']} (mean distance to the judge {best_plain['mean']:.4g})"
    plain_summary = [{"name": r["name"], "spec": r["spec"], "mean": r["mean"]} for r in plain]
    if accepted:
        k = min(accepted)[1]
        (policy, cal), entry = tried[k], summary[k]
        msg = (f"{head}: LTC {_describe(policy, steps)} with {entry['weights']} weights ACCEPTED: mean distance to "
               f"the judge {entry['ltc_mean']:.4g} against {plain_text}; margin {entry['margin']:.3g}, judge bound "
               f"{entry['judge_bound']:.3g}, lower bound {entry['lower']:.3g} > 0")
        choice = AutoChoice(True, cal.policy(base=base), schedule, session.solver, steps, nfe, msg, cal, summary,
                            session.calls, plain_summary)
    else:
        why = "; ".join(f"{e['policy']}: {e['ltc_mean']:.4g}, {e['verdict']}" for e in summary)
        msg = (f"{head}: no LTC structure is better than every plain plan evaluated beyond what the judge can "
               f"resolve; returning {plain_text}. Candidates: {why}")
        sch, smp, n = _plain_choice(schedule, session.grid, best_plain["spec"])
        choice = AutoChoice(False, base_policy if base is not None else Full(), sch, smp, n, nfe, msg, None,
                            summary, session.calls, plain_summary)
    if verbose:
        logger.info("%s", msg)
    return choice


def _check_arguments(steps, nfe, speedup, everies, candidates, phase) -> int:
    """The requested NFE, after checking :func:`auto`'s own arguments (before any model call)."""
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
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return nfe


def _verdict(policy: LTC, cal: Calibration, plain: list[dict], steps: int) -> dict:
    """One candidate's summary: its LTC row (as its report chose) against every plain row ``plain``."""
    chosen = choose_ltc(cal.report["rows"])
    return {"policy": repr(policy), "steps": policy.extrapolated_steps(steps),
            "weights": cal.report["decision"]["weights"], "ltc_mean": chosen["mean"], "own_verdict": cal.verdict,
            **compare(chosen, plain, cal.report["floor"])}


def _plain_rows(calibrations) -> list[dict]:
    """The plain rows of the reports, each plan once."""
    found = {}
    for cal in calibrations:
        for r in cal.report["rows"]:
            if r["kind"] == "plain":
                found.setdefault(json.dumps(r["spec"], sort_keys=True), r)
    return list(found.values())
