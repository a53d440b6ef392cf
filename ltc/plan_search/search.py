"""``ltc.optimize``: the best plan for a budget of model calls -- sampler, step grid and LTC weights --
fitted on calibration noises and chosen on held-out ones by the calibration judge.

Procedure (every model call counted; ``max_calls`` bounds the search, the judge included):

1. **Noises** are split as :func:`ltc.calibrate` splits them (:mod:`ltc.calibration.split`): the
   first half fit, the last half (or ``held_out``) are judged.
2. **Anchor and teacher.**  The anchor A is DPM-Solver++(2M)'s grid of the schedule at ``nfe``
   steps; every grid of the search has A's end points (:mod:`ltc.plan_search.space`).  The fit
   target T is DPM-Solver++(2M) on the reference grid of 4 ``nfe`` steps (:meth:`_Search.reference_grid`:
   uniform in log-SNR where the start has a finite one -- a grid refined from A would keep A's
   coarse last step into sigma = 0, and on a vp "trailing" schedule such a teacher is less accurate
   than the plans it judges); the judge's ladder (:mod:`ltc.calibration.report`) is
   DPM-Solver++(3M) and (2M) on the reference grid of 8 ``nfe`` steps, and T: the judge is never
   what was fitted.
3. **Screening** (fit noises): every sampler on every hand-designed grid
   (:func:`ltc.plan_search.space.hand_grids`), ranked by the mean distance to T.
4. **Candidates** (fit noises, against T, :mod:`ltc.plan_search.fit`):
   the grid of each of the ``optimize_top`` best samplers, started from its best hand grid; with
   ``ltc``, on the best sampler, a plan of ``N = nfe + K`` steps whose K extrapolated steps are
   chosen by transition coherence on its hand grid (the rule of :func:`ltc.calibration.auto`):
   its LTC weights alone on the hand grid ("LTC on a hand grid"), then grid and weights together.
   Continuous times: Levenberg-Marquardt; ``times="integer"`` (models that take only integer
   time steps): a pattern search over integer times, then the LTC weights with the grid fixed.
   The calls ``max_calls`` leaves after the fixed cost (teacher, screening, coherence run, judge and
   its rows) are shared in :data:`SHARES` (a grid 1, LTC weights on a hand grid 1/4, grid + LTC 3/2);
   what one search leaves passes to the next.
5. **Judge** (judged noises): the ``plain_rows`` best hand plans of the screening are the plain
   rows; each candidate must beat *every* one of them by the refusal rule
   (:func:`ltc.calibration.report.compare`: the paired margin net of the ladder's error bound,
   one-sided 95% bootstrap bound > 0, at least 8 judged noises) and be ``min_gain`` (2%) closer to
   the judge than the best of them -- a significant but negligible gain is a tie.  The accepted
   candidate closest to the judge is returned; when none is, the best plain row is -- the search
   never ships a plan that loses to the best hand-designed one it judged.
6. **Cost and break-even**: calls and wall time; with ``break_even``, the best plain plan is run
   at more steps (on the judged noises, counted apart) until it is as close to the judge as the
   chosen plan: the optimisation's sample evaluations (calls x batch) divided by the calls saved per
   sample is the number of samples after which the search has paid for itself.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from ..calibration.auto import candidate_structures
from ..calibration.fit import Session
from ..calibration.report import compare, rounding_floor, row
from ..calibration.runs import sample_distance, teacher_grid
from ..policies import LTC, Full
from ..policies.ltc_accel import STATES, PROGRESS
from ..samplers import DPMSolverPP, Sampler, get_sampler
from .fit import Budget, Objective, levenberg_marquardt, pattern_search
from .result import OptimizedPlan
from .runs import Runs
from .space import TIMES, GridSpace, check_schedule, hand_grids, same_ends, spaced_grid

logger = logging.getLogger(__name__)

DEFAULT_SAMPLERS = ("dpmpp_2m", "dpmpp_3m", "unipc")
CALLS_PER_NFE = 100  # default max_calls = 100 nfe
SHARES = {"grid": 1.0, "ltc_hand": 0.25, "ltc_grid": 1.5}  # how the optimisation budget is split


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_samplers(samplers) -> list[Sampler]:
    """Deterministic one-stage samplers (names or :class:`ltc.samplers.Sampler`), at least one, no repeats."""
    if isinstance(samplers, (str, Sampler)):
        samplers = [samplers]
    out = []
    for s in samplers:
        smp = get_sampler(s) if isinstance(s, str) else s
        if not isinstance(smp, Sampler):
            raise TypeError(f"samplers must hold sampler names or ltc.samplers.Sampler objects, got {s!r}")
        if smp.stochastic or smp.stages != 1:
            raise ValueError(f"samplers: {smp!r} is {'stochastic' if smp.stochastic else 'two-stage'}; the search "
                             "fits deterministic one-stage samplers (e.g. ddim, dpmpp_2m, dpmpp_3m, unipc)")
        out.append(smp)
    if not out:
        raise ValueError("samplers is empty: give at least one sampler")
    names = [repr(s) for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"samplers repeats a sampler: {names}")
    return out


def _check_arguments(nfe, max_calls, optimize_top, plain_rows, ltc_skips, times, state, progress, ridge,
                     max_iter) -> int:
    if not _is_int(nfe) or nfe < 2:
        raise ValueError(f"nfe must be an int >= 2 (model calls of the plan), got {nfe!r}")
    if max_calls is None:
        max_calls = CALLS_PER_NFE * nfe
    if not _is_int(max_calls) or max_calls < 1:
        raise ValueError(f"max_calls must be a positive int, got {max_calls!r}")
    for name, v in (("optimize_top", optimize_top), ("plain_rows", plain_rows), ("max_iter", max_iter)):
        if not _is_int(v) or v < (0 if name == "max_iter" else 1):
            raise ValueError(f"{name} must be an int >= {0 if name == 'max_iter' else 1}, got {v!r}")
    if ltc_skips is not None and (not _is_int(ltc_skips) or not 1 <= ltc_skips <= nfe - 2):
        raise ValueError(f"ltc_skips must be None or an int in [1, {nfe - 2}] (extrapolated steps), got {ltc_skips!r}")
    if times not in TIMES:
        raise ValueError(f"times must be one of {TIMES}, got {times!r}")
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    if progress not in PROGRESS:
        raise ValueError(f"progress must be one of {PROGRESS}, got {progress!r}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not (math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    return int(max_calls)


def optimize(model_fns, schedule, *, nfe: int, samplers=DEFAULT_SAMPLERS, ltc: bool = True, noise=None, shape=None,
             generator=None, held_out=None, held_out_kwargs=None, times: str = "continuous",
             max_calls: int | None = None, optimize_top: int = 2, plain_rows: int = 4, ltc_skips: int | None = None,
             state: str = "x0", progress: str = "sigma", ridge: float = 1e-3, max_iter: int = 6,
             fd_step: float | None = None, min_gain: float = 0.02, break_even: bool = True, model_kwargs=None, guidance_scale=None,
             prediction=None, dtype=None, device=None, backend=None, model_tag=None,
             verbose: bool = True) -> OptimizedPlan:
    """The best plan with ``nfe`` model calls for ``model_fns`` on ``schedule`` (see the module docstring).

    Args:
        nfe: the budget of model calls per sample.
        samplers: the deterministic one-stage samplers searched (names or Sampler objects).
        ltc: also try LTC on top of the best sampler (``ltc_skips`` extrapolated steps, default
            ``max(1, nfe // 4)``; ``state``, ``progress`` as in :class:`ltc.policies.LTC`).
        noise | shape + generator, held_out, held_out_kwargs, model_kwargs, guidance_scale,
            prediction, dtype, device, backend, model_tag: as in :func:`ltc.calibrate`.
        times: ``"continuous"`` (the models take fractional times) or ``"integer"``.
        max_calls: bound on the search's batched model calls, the judge included (default 100 nfe);
            refused before any call when the fixed part (teacher, screening, judge) exceeds it.
        optimize_top: how many samplers get an optimised grid; plain_rows: how many hand plans
            are judged (the screening's best).
        ridge, max_iter, fd_step: the Levenberg-Marquardt settings (:mod:`ltc.plan_search.fit`).
        min_gain: a candidate the refusal rule accepts must also be this fraction closer to the judge
            than the best plain row (default 2%), else it is a tie ("gain below min_gain").
        break_even: measure the break-even number of samples (extra calls, counted apart).
    """
    started = time.perf_counter()
    max_calls = _check_arguments(nfe, max_calls, optimize_top, plain_rows, ltc_skips, times, state, progress,
                                 ridge, max_iter)
    if isinstance(min_gain, bool) or not isinstance(min_gain, (int, float)) or not 0 <= min_gain < 1:
        raise ValueError(f"min_gain must be a number in [0, 1), got {min_gain!r}")
    check_schedule(schedule)
    smps = check_samplers(samplers)
    if not isinstance(ltc, bool) or not isinstance(break_even, bool):
        raise TypeError(f"ltc and break_even must be True or False, got {ltc!r}, {break_even!r}")
    session = Session(model_fns, schedule, sampler=DPMSolverPP(2), steps=nfe, noise=noise, shape=shape,
                      generator=generator, held_out=held_out, held_out_kwargs=held_out_kwargs,
                      model_kwargs=model_kwargs, guidance_scale=guidance_scale, prediction=prediction, dtype=dtype,
                      device=device, backend=backend, model_tag=model_tag)
    session.require_judged()
    search = _Search(session, schedule, nfe, smps, times, state, progress, ridge, max_iter, fd_step, min_gain)
    K = (ltc_skips if ltc_skips is not None else max(1, nfe // 4)) if ltc else 0
    fixed = search.fixed_calls(plain_rows, optimize_top, K)
    if fixed > max_calls:
        raise ValueError(f"max_calls={max_calls} is below the search's fixed cost of {fixed} model calls at nfe={nfe} "
                         f"(teacher {search.teacher.nfe}, screening {len(search.screen_plans) * nfe}, judge "
                         f"{sum(p.nfe for p in search.ladder)}, judged rows); raise max_calls or use fewer samplers")
    budget = Budget(max_calls - fixed)
    search.screen()
    candidates = search.candidates(optimize_top, K, budget)
    result = search.judge(candidates, plain_rows)
    result.cost.update(calls=session.calls + search.runs_calls, max_calls=max_calls,
                       wall_s=time.perf_counter() - started,
                       sample_evaluations=search.sample_evaluations())
    if break_even and result.accepted:
        result.break_even.update(search.break_even(result))
    result.cost["wall_s_total"] = time.perf_counter() - started
    if verbose:
        logger.info("%s", result.summary())
    return result


class _Search:
    """The state of one :func:`optimize` run (see the module docstring)."""

    def __init__(self, session: Session, schedule, nfe, samplers, times, state, progress, ridge, max_iter, fd_step,
                 min_gain):
        self.session, self.schedule, self.nfe, self.samplers = session, schedule, nfe, samplers
        self.min_gain = min_gain
        self.times, self.state, self.progress = times, state, progress
        self.ridge, self.max_iter = ridge, max_iter
        self.fd_step = fd_step if fd_step is not None else (1e-4 if session.x0.dtype == torch.float64 else 1e-2)
        self.anchor = session.grid
        self.space = GridSpace(schedule, self.anchor, nfe, times)
        self.hand = hand_grids(self.space, [s.grid_rule for s in samplers])
        self.screen_plans = [(smp, kind, session.compile(g, smp, Full())) for smp in samplers
                             for kind, g in self.hand.items()]
        self.teacher = session.compile(self.reference_grid(4 * nfe), DPMSolverPP(2), Full())
        judge = self.reference_grid(8 * nfe)
        self.ladder = (session.compile(judge, DPMSolverPP(3), Full()), session.compile(judge, DPMSolverPP(2), Full()),
                       self.teacher)
        self.fit_runs = Runs(session.models, session.x0, ops=session.ops, model_kwargs=session.kwargs)
        self.notes: list[str] = []
        self.screening: list[dict] = []

    def reference_grid(self, steps: int):
        """The teacher's and judge's grid of ``steps`` steps: log-SNR uniform where the start has a finite
        log-SNR, else the schedule's own grid (time-uniform first), else the anchor refined by midpoints;
        with ``times="integer"`` its times rounded (points that round together merge: fewer steps)."""
        grid = self._continuous_reference(steps)
        if self.times == "continuous":
            return grid
        space = GridSpace(self.schedule, self.anchor, steps, "integer")  # integer times: rounded, repeats dropped
        t = np.unique(np.round(grid.t[1:-1]))[::-1]
        t = t[(t < space.t0) & ((t > space.t_lo) | ((t == space.t_lo) & space.inclusive))]
        return GridSpace(self.schedule, self.anchor, len(t) + 1, "integer").grid_at(t)

    def _continuous_reference(self, steps: int):
        grid = spaced_grid(GridSpace(self.schedule, self.anchor, steps), "logsnr")
        if grid is not None:
            return grid
        for rule in ("ddim", "dpm_solver", "euler"):
            try:
                grid = self.schedule.discretize(steps, rule=rule)
            except ValueError:
                continue
            if same_ends(grid, self.anchor):
                return grid
        grid = self.anchor
        while grid.steps < steps:
            grid = teacher_grid(self.schedule, grid)
        return grid

    @property
    def runs_calls(self) -> int:
        return self.fit_runs.calls

    def sample_evaluations(self) -> int:
        """Model evaluations of single samples so far (calls x batch), fit and judged noises."""
        s = self.session
        fit = s.runners["calibration"].calls + s.walk_calls + self.fit_runs.calls
        return int(fit * s.x0.shape[0] + s.runners["held_out"].calls * s.held_out.shape[0])

    def fixed_calls(self, plain_rows: int, optimize_top: int, K: int) -> int:
        """Calls outside the optimisers: teacher, screening, LTC coherence run, the judge and its rows."""
        n = self.nfe
        rows = min(plain_rows, len(self.screen_plans)) + min(optimize_top, len(self.samplers)) + (2 if K else 0)
        return self.teacher.nfe + len(self.screen_plans) * n + (n + K if K else 0) + \
            sum(p.nfe for p in self.ladder[:2]) + self.teacher.nfe + rows * n

    # -- fit noises ------------------------------------------------------------------------------
    def screen(self) -> None:
        runner = self.session.runners["calibration"]
        self.target = runner.run_plan(self.teacher)
        for smp, kind, plan in self.screen_plans:
            d = sample_distance(runner.run_plan(plan), self.target)
            self.screening.append({"sampler": smp, "kind": kind, "grid": self.hand[kind], "plan": plan,
                                   "fit_mean": float(np.mean(d))})
        self.screening.sort(key=lambda e: e["fit_mean"])

    def _best_hand(self, smp: Sampler) -> dict:
        return next(e for e in self.screening if e["sampler"] is smp)

    def _objective(self, build, p0, budget: Budget) -> Objective:
        return Objective(build, self.fit_runs, self.target, p0, self.ridge, budget)

    def _share(self, budget: Budget, kinds: list[str]) -> Budget:
        return Budget(int(budget.left * SHARES[kinds[0]] / sum(SHARES[k] for k in kinds)))

    def _spend(self, budget: Budget, part: Budget, given: int) -> None:
        budget.spend(given - part.left)

    def candidates(self, optimize_top: int, K: int, budget: Budget) -> list[dict]:
        """The optimised candidates on the fit noises (see the module docstring, step 4)."""
        order = list(dict.fromkeys(e["sampler"] for e in self.screening))
        chosen = order[:optimize_top]
        jobs = ["grid"] * len(chosen) + (["ltc_hand", "ltc_grid"] if K else [])
        out = []
        for smp in chosen:
            part = self._share(budget, jobs)
            given = part.left
            out.append(self._grid_candidate(smp, part))
            self._spend(budget, part, given)
            jobs.pop(0)
        if K:
            out += self._ltc_candidates(order[0], K, budget, jobs)
        return [c for c in out if c is not None]

    def _fit_grid(self, space: GridSpace, start_grid, build_from_grid, budget: Budget, extra=None, skip=()):
        """Optimise the interior points (and ``extra``: initial LTC weights of the extrapolated steps ``skip``,
        fitted jointly) from ``start_grid``."""
        extra = np.zeros(0) if extra is None else np.asarray(extra, np.float64)
        if self.times == "integer":  # the grid by pattern search, then the weights (a third of the calls) by LM
            times0 = start_grid.t[1:-1].copy()
            part = Budget(budget.left * 2 // 3) if len(extra) else budget
            given = part.left
            obj = self._objective(lambda t: build_from_grid(space.grid_at(t), extra), times0, part)
            t, loss, info = pattern_search(obj, space)
            if part is not budget:
                budget.spend(given - part.left)
            grid = space.grid_at(t)
            if len(extra):
                obj = self._objective(lambda w: build_from_grid(grid, w), extra, budget)
                try:
                    w, loss, info_w = levenberg_marquardt(obj, list(skip), max_iter=self.max_iter,
                                                          fd_step=self.fd_step)
                except ValueError as err:
                    w, info_w = extra, {"skipped": str(err)}
                return grid, w, loss, {"grid": info, "weights": info_w}
            return grid, extra, loss, info
        theta0 = space.theta_of(start_grid)
        m = len(theta0)
        obj = self._objective(lambda p: build_from_grid(space.grid(p[:m]), p[m:]),
                              np.concatenate([theta0, extra]), budget)
        starts = list(range(m)) + list(skip)  # theta_k first changes step k; w_k its extrapolated step
        p, loss, info = levenberg_marquardt(obj, starts, max_iter=self.max_iter, fd_step=self.fd_step)
        return space.grid(p[:m]), p[m:], loss, info

    def _grid_candidate(self, smp: Sampler, budget: Budget) -> dict | None:
        start = self._best_hand(smp)
        before = budget.left
        try:
            grid, _, loss, info = self._fit_grid(self.space, start["grid"],
                                                 lambda g, w: self.session.compile(g, smp, Full()), budget)
        except ValueError as err:
            self.notes.append(f"{smp!r}: grid search skipped ({err})")
            return None
        return {"name": f"{smp.config()['name']}, optimised grid (from {start['kind']})", "kind": "grid",
                "sampler": smp, "grid": grid, "skip": [], "weights": [], "fit": info,
                "calls": before - budget.left, "plan": self.session.compile(grid, smp, Full())}

    def _ltc_policy(self, skip, w) -> LTC:
        return LTC(skip=list(skip), weights=[float(v) for v in w], state=self.state, progress=self.progress)

    def _ltc_candidates(self, smp: Sampler, K: int, budget: Budget, jobs: list[str]) -> list[dict]:
        """LTC on a hand grid of ``nfe + K`` steps (weights only), then grid and weights together."""
        N = self.nfe + K
        space = GridSpace(self.schedule, self.anchor, N, self.times)
        hand = hand_grids(space, [smp.grid_rule])
        kind = self._best_hand(smp)["kind"]
        kind = kind if kind in hand else next(iter(hand))
        grid0 = hand[kind]
        runner = self.session.runners["calibration"]
        _, coherence = runner.run_plan(self.session.compile(grid0, smp, Full()), coherence=True)
        ranked = candidate_structures(coherence, N, K, (2,), state=self.state, phase="reference")
        if not ranked:
            self.notes.append(f"LTC skipped: no {K} extrapolated steps fit {N} steps with state {self.state!r}")
            return []
        _, start, end, every = ranked[0]
        skip = LTC(interval=(start, end), every=every, state=self.state).extrapolated_steps(N)
        name = smp.config()["name"]

        def build(g, w):
            return self.session.compile(g, smp, self._ltc_policy(skip, w))

        out = []
        part = self._share(budget, jobs)
        given = part.left
        obj = self._objective(lambda w: build(grid0, w), np.ones(K), part)
        try:
            w_hand, _, info = levenberg_marquardt(obj, skip, max_iter=self.max_iter,
                                                  fd_step=self.fd_step)
        except ValueError as err:
            self.notes.append(f"LTC skipped ({err})")
            return []
        finally:
            self._spend(budget, part, given)
        jobs.pop(0)
        out.append({"name": f"{name} + LTC on a hand grid ({kind}, {N} steps, skip {skip})", "kind": "ltc_hand",
                    "sampler": smp, "grid": grid0, "skip": list(skip), "weights": [float(v) for v in w_hand],
                    "fit": info, "calls": given - part.left, "plan": build(grid0, w_hand)})
        part = self._share(budget, jobs)
        given = part.left
        try:
            grid, w, _, info = self._fit_grid(space, grid0, build, part, extra=w_hand, skip=skip)
        except ValueError as err:
            self.notes.append(f"LTC grid search skipped ({err})")
            return out
        finally:
            self._spend(budget, part, given)
        out.append({"name": f"{name} + LTC, optimised grid ({N} steps, skip {skip})", "kind": "ltc_grid",
                    "sampler": smp, "grid": grid, "skip": list(skip), "weights": [float(v) for v in w],
                    "fit": info, "calls": given - part.left, "plan": build(grid, w)})
        return out

    # -- judged noises ---------------------------------------------------------------------------
    def judge(self, candidates: list[dict], plain_rows: int) -> OptimizedPlan:
        """Rows on the judged noises and the choice (see the module docstring, step 5)."""
        runner = self.session.runners["held_out"]
        ends = [runner.run_plan(p) for p in self.ladder]
        J = ends[0]
        plain = []
        for e in self.screening[:plain_rows]:
            name = f"{e['sampler'].config()['name']}, {e['kind']} grid"
            plain.append(row(name, "plain", self.nfe, runner.run_plan(e["plan"]), ends, J,
                             {"sampler": e["sampler"].config(), "grid": e["kind"], "fit_mean": e["fit_mean"],
                              "points": _points(e["grid"]), "skip": [], "weights": []}))
        floor = [float(v) for v in rounding_floor(J, self.ladder[0].steps, self.session.held_out.dtype)]
        rows, verdicts = list(plain), []
        best_plain = min(range(len(plain)), key=lambda k: plain[k]["mean"])
        for c in candidates:
            r = row(c["name"], c["kind"], c["plan"].nfe, runner.run_plan(c["plan"]), ends, J,
                    {"sampler": c["sampler"].config(), "skip": c["skip"], "weights": c["weights"],
                     "points": _points(c["grid"])})
            rows.append(r)
            v = {"name": c["name"], "kind": c["kind"], "mean": r["mean"], **compare(r, plain, floor)}
            if v["accepted"] and r["mean"] > (1 - self.min_gain) * plain[best_plain]["mean"]:
                v.update(verdict="gain below min_gain", accepted=False)
            verdicts.append(v)
        accepted = [k for k, v in enumerate(verdicts) if v["accepted"]]
        names = [f"{p.sampler.config()['name']} {p.steps} steps" for p in self.ladder]
        report = {"judge": names[0], "ladder": names, "rows": rows, "floor": floor, "candidates": verdicts,
                  "screening": [{"sampler": e["sampler"].config()["name"], "config": e["sampler"].config(),
                                "grid": e["kind"], "fit_mean": e["fit_mean"]}
                                for e in self.screening], "notes": list(self.notes)}
        if accepted:
            k = min(accepted, key=lambda k: verdicts[k]["mean"])
            c, v = candidates[k], verdicts[k]
            decision = {"accepted": True, "chosen": c["name"], "kind": c["kind"], **_verdict_fields(v),
                        "best_plain": plain[best_plain]["name"], "best_plain_mean": plain[best_plain]["mean"]}
            chosen = (c["sampler"], c["grid"], c["skip"], c["weights"], c["kind"], c["fit"])
        else:
            e = self.screening[best_plain]
            decision = {"accepted": False, "chosen": plain[best_plain]["name"], "kind": "plain",
                        "best_plain": plain[best_plain]["name"], "best_plain_mean": plain[best_plain]["mean"],
                        "verdicts": {v["name"]: v["verdict"] for v in verdicts}}
            chosen = (e["sampler"], e["grid"], [], [], "plain", {})
        report["decision"] = decision
        smp, grid, skip, weights, kind, fit = chosen
        plan_for_record = self.session.compile(grid, smp, self._ltc_policy(skip, weights) if skip else Full())
        cost = {"fit_calls": self.session.runners["calibration"].calls + self.fit_runs.calls,
                "judge_calls": runner.calls,
                "candidates": {c["name"]: c["calls"] for c in candidates}}
        return OptimizedPlan(grid=grid, sampler_config=smp.config(), skip=np.asarray(skip, np.int64),
                             weights=np.asarray(weights, np.float64), kind=kind, nfe=self.nfe, times=self.times,
                             state=self.state, progress=self.progress, schedule_config=self.schedule.config(),
                             alphas_cumprod=_table(self.schedule), report=report, cost=cost, fit=_jsonable(fit),
                             fitted_on=self.session.fitted_on(plan_for_record),
                             validation=dict(self.session.validation), break_even={})

    def break_even(self, result: OptimizedPlan) -> dict:
        """Steps the best plain plan needs to be as close to the judge as ``result`` (see step 6)."""
        runner = self.session.runners["held_out"]
        J = runner.run_plan(self.ladder[0])
        target = result.report["decision"]["mean"]
        best = next(e for e in self.screening
                    if f"{e['sampler'].config()['name']}, {e['kind']} grid" == result.report["decision"]["best_plain"])
        before = runner.calls
        tried = []
        for m in sorted({math.ceil(self.nfe * r) for r in (1.25, 1.5, 2, 3, 4)}):
            space = GridSpace(self.schedule, self.anchor, m, self.times)
            grid = hand_grids(space, [best["sampler"].grid_rule]).get(best["kind"])
            if grid is None:
                continue
            mean = float(np.mean(sample_distance(runner.run_plan(self.session.compile(grid, best["sampler"], Full())),
                                                 J)))
            tried.append({"nfe": m, "mean": mean})
            if mean <= target:
                break
        evals = result.cost["sample_evaluations"]
        reached = tried and tried[-1]["mean"] <= target
        m = tried[-1]["nfe"] if tried else None
        return {"plain": result.report["decision"]["best_plain"], "tried": tried, "calls": runner.calls - before,
                "plain_nfe_needed": m if reached else None,
                "samples": evals / (m - self.nfe) if reached else None,
                "samples_at_most": evals / (m - self.nfe) if (m and not reached) else None}


def _points(grid) -> dict:
    """A grid as JSON (exact: hex floats), for the report's rows."""
    return {"family": grid.family, **{k: [float(v).hex() for v in getattr(grid, k)] for k in ("t", "alpha", "sigma")}}


def _verdict_fields(v: dict) -> dict:
    return {k: v[k] for k in ("verdict", "mean", "against", "against_mean", "margin", "judge_bound", "lower", "upper",
                              "noises")}


def _table(schedule):
    return None if not hasattr(schedule, "alphas_cumprod") else np.asarray(schedule.alphas_cumprod, np.float64)


def _jsonable(value):
    """Numpy values of a fit record as plain Python (for the file's JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
