"""``ltc.calibrate``: fit the LTC weights of one (model, schedule, sampler, steps) on calibration noise.

Noises (:mod:`ltc.calibration.split`): by default the first half of the calibration noises fit
the weights and the last half judge them; with ``held_out`` given, all fit and those are judged.

Passes (model calls counted in ``Calibration.cost``):

1. the full-N run of the sampler on the fit noises (N calls), recording the coherence curve;
2. the fit walk (:class:`ltc.calibration.walk.LTCWalk` in fit mode; NFE + K calls): the one-step
   closed-form least squares at each extrapolated step, clamped to ``clamp``, continuing from the
   extrapolated state (``objective="step"`` stops here);
3. ``objective="trajectory"``: the teacher's endpoints and Levenberg-Marquardt on the whole weight
   vector (:mod:`ltc.calibration.trajectory`), started at the one-step fit;
4. the report (``report=True``), on the judged noises: the judge ladder, the full-N run, the plain
   samplers at the LTC NFE, LTC calibrated and LTC w = 1, and the refusal rule
   (:mod:`ltc.calibration.report`).  When w = 1 is at least as close to the judge as the fitted
   weights, the calibration's ``weights`` are 1 (the fitted ones stay in ``weights_fit``).  A
   refused calibration is announced with a warning naming why (plain better, cannot tell, too few
   noises) and the better plain plan.

The calibration records what it was fitted on (``Calibration.fitted_on``): the guidance scale, the
sample shape ``[*S]`` and, for each model its plan calls, the name, the sha256 of the weights
(:func:`ltc.io.model_fingerprint`, computed once per calibration on CPU copies; cached per module)
and the user's ``model_tag``.  Sampling with the calibration checks them before the first model call.
"""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch

from .. import ops
from .._version import __version__
from ..api import check_noise, initial_state, sampling_arguments
from ..executor.walk import check_conditioning
from ..io import model_fingerprint
from ..models import as_models
from ..plan import Plan, compile_plan
from ..policies import LTC, Full
from ..samplers import DPMSolverPP
from ..schedule import Schedule
from .file import Calibration, fitted_on_record
from .report import MIN_NOISES, decide, decision_line, rounding_floor, row
from .runs import Runner, evaluated_grid, teacher_grid
from .split import split
from .trajectory import fit_trajectory
from .walk import LTCWalk

logger = logging.getLogger(__name__)

OBJECTIVES = ("step", "trajectory")
TEACHERS = ("dpmpp_2m", "full")


def _check_clamp(clamp) -> tuple[float, float]:
    if not (isinstance(clamp, (tuple, list)) and len(clamp) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in clamp)
            and clamp[0] <= clamp[1]):
        raise ValueError(f"clamp must be a pair (lo, hi) of finite numbers with lo <= hi, got {clamp!r}")
    return float(clamp[0]), float(clamp[1])


def _check_held_out(held_out, noise):
    if held_out is None:
        return None
    if not isinstance(held_out, torch.Tensor):
        raise TypeError(f"held_out must be a noise tensor [B, *S], got {type(held_out).__name__}")
    if held_out.shape[1:] != noise.shape[1:] or held_out.dtype != noise.dtype or held_out.device != noise.device:
        raise ValueError(f"held_out must have the per-sample shape, dtype and device of the calibration noise "
                         f"({tuple(noise.shape[1:])}, {noise.dtype}, {noise.device}); got "
                         f"{tuple(held_out.shape[1:])}, {held_out.dtype}, {held_out.device}")
    return held_out


def _check_no_grad(**tensors) -> None:
    """Calibration noises are finite (``held_out`` too: ltc.api.check_noise) and do not require grad:
    the fit reads their values, it does not differentiate."""
    for name, value in tensors.items():
        if value is None:
            continue
        if name == "held_out":
            try:
                check_noise(value)
            except (TypeError, ValueError) as err:
                raise type(err)(f"held_out: {err}") from None
        if value.requires_grad:
            raise ValueError(f"{name} requires grad, but calibration does not differentiate through sampling: "
                             f"pass {name}.detach()")


def calibrate(model_fns, schedule: Schedule, policy: LTC | None = None, *, sampler="dpmpp_2m",
              steps: int | None = None, noise: torch.Tensor | None = None, shape=None,
              generator: torch.Generator | None = None, held_out: torch.Tensor | None = None,
              held_out_kwargs: dict | None = None, objective: str = "step", teacher="dpmpp_2m",
              clamp=(0.0, 10.0), ridge: float = 1e-2, max_iter: int = 3, fd_step: float | None = None,
              model_kwargs: dict | None = None, guidance_scale: float | None = None,
              prediction: str | None = None, dtype: torch.dtype | None = None, device=None,
              backend: str | None = None, report: bool = True, verbose: bool = True,
              model_tag=None) -> Calibration:
    """Calibrate the weights of ``policy`` (default ``LTC()``) for ``model_fns`` on ``schedule``.

    Args:
        sampler, steps, model_kwargs, guidance_scale, prediction, dtype, device, backend: as in
            :func:`ltc.sample` (the sampler must be deterministic).
        noise | shape + generator: the calibration noises ``[B, *S]`` (e.g. 64 samples).  Without
            ``held_out``, the first ``B - B // 2`` fit the weights and the last ``B // 2`` judge
            them (their ``model_kwargs`` rows follow them, :mod:`ltc.calibration.split`); the
            decision needs at least :data:`ltc.calibration.report.MIN_NOISES` judged noises.
        held_out: other noises ``[B', *S]`` to judge on (with ``held_out_kwargs``); all of ``noise``
            then fit.
        objective: ``"step"`` (one-step closed-form least squares) or ``"trajectory"``
            (endpoint against ``teacher``, :mod:`ltc.calibration.trajectory`; ``ridge``, ``max_iter``,
            ``fd_step``).
        teacher: ``"dpmpp_2m"`` (DPM-Solver++(2M), 2N steps on the same schedule), ``"full"``
            (the full-N run of ``sampler``) or an :class:`ltc.Plan` on the same models.
        clamp: bounds of the one-step weights (reference: [0, 10]).
        report: run the judge, the comparison rows and the refusal rule on the judged noises
            (:mod:`ltc.calibration.report`); ``verbose``: log the summary (logger
            ``ltc.calibration.fit``, level INFO: ``logging.basicConfig(level=logging.INFO)`` shows
            it; or print ``cal.summary()``).
        model_tag: a name for each model (one string, or one per model of ``model_fns``, None
            for none), recorded with the weights' fingerprints; it identifies a callable that reads
            no tensors (nothing to fingerprint): sampling with the calibration then needs a model of
            that name (``ltc.Model(fn, prediction, name=tag)``), and without a tag only warns.
    """
    policy = LTC() if policy is None else policy
    if not isinstance(policy, LTC):
        raise TypeError(f"policy must be an ltc.policies.LTC, got {type(policy).__name__}")
    session = Session(model_fns, schedule, sampler=sampler, steps=steps, noise=noise, shape=shape,
                      generator=generator, held_out=held_out, held_out_kwargs=held_out_kwargs,
                      model_kwargs=model_kwargs, guidance_scale=guidance_scale, prediction=prediction,
                      dtype=dtype, device=device, backend=backend, model_tag=model_tag)
    cal = session.calibrate(policy, objective=objective, teacher=teacher, clamp=clamp, ridge=ridge,
                            max_iter=max_iter, fd_step=fd_step, report=report)
    if verbose:
        logger.info("%s", cal.summary())
    if cal.accepted is False:
        warnings.warn(decision_line(cal.report["decision"]), stacklevel=2)
    return cal


class Session:
    """The validated inputs of a calibration and its memoised plain runs, shared by several
    calibrations on the same noises (:func:`ltc.calibration.auto.auto` tries several LTC structures).
    ``calls`` counts every model call made so far."""

    def __init__(self, model_fns, schedule, *, sampler, steps, noise=None, shape=None, generator=None,
                 held_out=None, held_out_kwargs=None, model_kwargs=None, guidance_scale=None, prediction=None,
                 dtype=None, device=None, backend=None, model_tag=None):
        self.models = as_models(model_fns, prediction)
        self.tags = _check_model_tag(model_tag, len(self.models))
        _, self.solver, self.guidance = sampling_arguments(schedule, None, sampler, guidance_scale)
        self.schedule = schedule
        self.grid = self.solver.grid(schedule, steps)
        x = initial_state(noise, shape, generator, dtype, device)
        held_out = _check_held_out(held_out, x)
        _check_no_grad(noise=x, held_out=held_out)
        for value, rows in ((model_kwargs, x), (held_out_kwargs, held_out)):  # the caller's batches, before the split
            if rows is not None:
                check_conditioning(self.models, value, rows.shape[0], self.guidance is not None)
        _, self.ops = ops.resolve(backend, x.device)
        self.x0, self.kwargs, self.held_out, self.held_kwargs, self.validation = split(
            x, model_kwargs, held_out, held_out_kwargs, self.guidance is not None)
        self.runners = {"calibration": Runner(self.models, self.x0, ops=self.ops, model_kwargs=self.kwargs,
                                              guidance_scale=self.guidance)}
        if self.held_out.shape[0]:
            self.runners["held_out"] = Runner(self.models, self.held_out, ops=self.ops,
                                              model_kwargs=self.held_kwargs, guidance_scale=self.guidance)
        self.walk_calls = 0
        self.fingerprints = [model_fingerprint(m.fn) for m in self.models]  # the weights, before any call

    def fitted_on(self, plan: Plan) -> dict:
        """What a calibration with ``plan`` is fitted on: the models it calls, guidance, sample shape."""
        used = sorted({int(m) for m in plan.models if m >= 0})
        return fitted_on_record([self.models[k] for k in used], [self.fingerprints[k] for k in used],
                                [self.tags[k] for k in used], self.x0.shape[1:], self.guidance)

    @property
    def calls(self) -> int:
        return self.walk_calls + sum(r.calls for r in self.runners.values())

    def compile(self, grid, sampler, policy) -> Plan:
        return compile_plan(grid, sampler, policy, [m.prediction for m in self.models], self.guidance)

    def walk(self, policy: LTC, full_plan: Plan, which: str = "calibration") -> LTCWalk:
        skip = policy.extrapolated_steps(self.grid.steps)
        R0, R1 = policy.rows(self.grid, self.solver, skip)
        return LTCWalk(full_plan, skip, R0, R1, self.models, ops=self.ops,
                       model_kwargs=self.kwargs if which == "calibration" else self.held_kwargs,
                       dtype=self.x0.dtype, device=self.x0.device)

    def require_judged(self) -> None:
        """A report judges the fit on noises it did not see: refuse (before any model call) when there are none."""
        if "held_out" not in self.runners:
            raise ValueError(f"report=True judges the fit on noises it did not see, but there are none: "
                             f"{self.validation['fit_noises']} calibration noise(s) and no held_out; give at least "
                             f"2 noises (the last half are judged; {2 * MIN_NOISES} for a decision) or held_out=, "
                             "or report=False")

    def teacher_plan(self, base) -> Plan:
        """The default teacher: DPM-Solver++(2M) with 2N steps (:func:`ltc.calibration.runs.teacher_grid`)."""
        return self.compile(teacher_grid(self.schedule, self.grid), DPMSolverPP(2), base)

    def ladder(self, base, fit_target: Plan | None = None) -> tuple[Plan, Plan, Plan]:
        """The judge's teacher ladder ``(J, J', T)``: DPM-Solver++(3M) and DPM-Solver++(2M) with 4N
        steps (the grid refined twice) and DPM-Solver++(2M) with 2N steps; each twice as fine again
        while ``fit_target`` (the trajectory objective's teacher) is J or J': the judge J is never
        what was fitted (:mod:`ltc.calibration.report`)."""
        coarse = teacher_grid(self.schedule, self.grid)
        while True:
            fine = teacher_grid(self.schedule, coarse)
            ladder = (self.compile(fine, DPMSolverPP(3), base), self.compile(fine, DPMSolverPP(2), base),
                      self.compile(coarse, DPMSolverPP(2), base))
            if fit_target is None or fit_target.fingerprint not in {p.fingerprint for p in ladder[:2]}:
                return ladder
            coarse = fine

    def calibrate(self, policy: LTC, *, objective="step", teacher="dpmpp_2m", clamp=(0.0, 10.0), ridge=1e-2,
                  max_iter=3, fd_step=None, report=True) -> Calibration:
        """One calibration of ``policy`` (see :func:`calibrate`); no printing."""
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if not (isinstance(teacher, Plan) or (isinstance(teacher, str) and teacher in TEACHERS)):
            raise ValueError(f"teacher must be one of {TEACHERS} or an ltc.Plan, got {teacher!r}")
        lo_hi = _check_clamp(clamp)
        if isinstance(ridge, bool) or not (isinstance(ridge, (int, float)) and ridge >= 0):
            raise ValueError(f"ridge must be a number >= 0, got {ridge!r}")
        if isinstance(max_iter, bool) or not (isinstance(max_iter, int) and max_iter >= 0):
            raise ValueError(f"max_iter must be an int >= 0, got {max_iter!r}")
        if report:
            self.require_judged()
        grid, solver, x0 = self.grid, self.solver, self.x0
        ltc_plan = self.compile(grid, solver, policy)
        if isinstance(teacher, Plan):
            _check_teacher_plan(teacher, grid, self.models)
        base = policy.base or Full()
        runner = self.runners["calibration"]
        start = self.calls
        full_plan = self.compile(grid, solver, base)
        x_full, coherence = runner.run_plan(full_plan, coherence=True)
        cost = {"full_run": self.calls - start}
        walk = self.walk(policy, full_plan)
        fitted = walk.run(x0, fit=lo_hi)
        self.walk_calls += walk.calls
        cost["fit_walk"] = walk.calls
        w_step = fitted.weights.double().cpu().numpy()
        dots = fitted.dots.numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            per_sample = np.where(dots[:, :, 1] > 0, dots[:, :, 0] / dots[:, :, 1], np.nan)
            residual = fitted.residual.sum(1).numpy() / fitted.transition.sum(1).numpy()

        teacher_plan = teacher if isinstance(teacher, Plan) else self.teacher_plan(base)
        teacher_name = (f"plan {teacher_plan.sampler!r} {teacher_plan.steps} steps" if isinstance(teacher, Plan)
                        else f"dpmpp_2m {teacher_plan.steps} steps")
        fit_info = {"objective": objective, "clamp": list(lo_hi),
                    "teacher": f"full {grid.steps} steps of {solver.config()['name']}" if teacher == "full"
                    else teacher_name}
        w, x_ltc = w_step, fitted.x
        if objective == "trajectory":
            before = self.calls
            target = x_full if teacher == "full" else runner.run_plan(teacher_plan)
            cost["teacher"] = self.calls - before
            calls = walk.calls
            w, x_ltc, info = fit_trajectory(walk, x0, target, w_step, ridge=ridge, max_iter=max_iter,
                                            fd_step=fd_step)
            self.walk_calls += walk.calls - calls
            cost["trajectory_fit"] = walk.calls - calls
            fit_info.update(info)
        rep, w_used = {}, np.asarray(w, np.float64)
        if report:
            fit_target = None if objective != "trajectory" else full_plan if teacher == "full" else teacher_plan
            rep = self._report(policy, ltc_plan, full_plan, self.ladder(base, fit_target), w, objective, cost)
            if rep["decision"]["weights"] == "w = 1":
                w_used = np.ones_like(w_used)
        cost["total"] = sum(cost.values())
        skip = walk.skip
        return Calibration(weights=w_used, weights_fit=np.asarray(w, np.float64), weights_step=w_step,
                           steps=np.asarray(skip, np.int64), gamma=policy.gammas(grid, skip), residual=residual,
                           w_mean=np.nanmean(per_sample, 1), w_std=np.nanstd(per_sample, 1), coherence=coherence,
                           grid=grid, sampler=solver.config(), structure=policy.structure(),
                           key=policy.calibration_key(grid, solver), fit=fit_info, cost=cost, report=rep,
                           version=__version__, fitted_on=self.fitted_on(ltc_plan), validation=dict(self.validation))

    def _report(self, policy, ltc_plan, full_plan, ladder, w, objective, cost) -> dict:
        """The judged rows and the decision (:mod:`ltc.calibration.report`)."""
        before = self.calls
        runner = self.runners["held_out"]
        walk = self.walk(policy, full_plan, "held_out")
        x_full = runner.run_plan(full_plan)
        x_ltc = walk.run(self.held_out, torch.as_tensor(w, dtype=walk.ct, device=walk.device)).x
        ends = [runner.run_plan(p) for p in ladder]
        rows = self._rows(runner, walk, x_full, x_ltc, ltc_plan, ends, w, objective, policy.state,
                          policy.base or Full())
        names = [f"{p.sampler.config()['name']} {p.steps} steps" for p in ladder]
        rows += [row(f"{names[2]} (ladder T)", "teacher", ladder[2].nfe, ends[2], ends, x_full),
                 row(f"{names[1]} (ladder J')", "teacher", ladder[1].nfe, ends[1], ends, x_full)]
        self.walk_calls += walk.calls
        cost["report"] = self.calls - before
        floor = [float(v) for v in rounding_floor(ends[0], ladder[0].steps, self.held_out.dtype)]
        return {"judge": names[0], "ladder": names, "rows": rows, "floor": floor, "decision": decide(rows, floor)}

    def _rows(self, runner: Runner, walk: LTCWalk, x_full, x_ltc, ltc_plan, T, w, objective, state,
              base) -> list[dict]:
        """The report rows on the judged noises against the ladder's endpoints ``T`` (J, J', T)."""
        grid, solver = self.grid, self.solver
        N, nfe = grid.steps, ltc_plan.nfe
        name = solver.config()["name"]
        rows = [row(f"full {N} steps ({name})", "full", N, x_full, T, x_full)]
        candidates = [(solver, name)]
        if solver.config() != DPMSolverPP(2).config():
            candidates.append((DPMSolverPP(2), "dpmpp_2m"))
        sub = evaluated_grid(grid, ltc_plan.models)
        points = [i for i, m in enumerate(ltc_plan.models) if m >= 0] + [N]
        for smp, label in candidates:
            try:  # the grid ltc.sample(schedule, sampler=label, steps=nfe) walks, as the recommendation says
                own = smp.grid(self.schedule, nfe)
            except ValueError:  # e.g. an explicit schedule has one step count
                own = None
            if own is not None:
                rows.append(row(f"{label}, {nfe} steps (own grid)", "plain", nfe, runner.endpoint(own, smp, base),
                                T, x_full, {"sampler": label, "grid": "own", "steps": nfe}))
            rows.append(row(f"{label} on the LTC grid ({nfe} points)", "plain", nfe, runner.endpoint(sub, smp, base),
                            T, x_full, {"sampler": label, "grid": "ltc", "steps": nfe, "points": points}))
        ones = torch.ones(walk.K, dtype=walk.ct, device=walk.device)
        rows.append(row(f"LTC calibrated ({objective}, state {state})", "ltc", nfe, x_ltc, T, x_full,
                        {"weights": [float(v) for v in w]}))
        rows.append(row("LTC w = 1", "ltc_w1", nfe, walk.run(runner.noise, ones).x, T, x_full))
        return rows


def _check_model_tag(model_tag, count: int) -> list:
    """One tag (a non-empty string or None) per model."""
    if model_tag is None:
        return [None] * count
    tags = [model_tag] if isinstance(model_tag, str) else model_tag
    if not (isinstance(tags, (list, tuple)) and len(tags) == count
            and all(t is None or (isinstance(t, str) and t) for t in tags)):
        raise ValueError(f"model_tag must be None, a non-empty string (one model) or a sequence of {count} such "
                         f"(one per model), got {model_tag!r}")
    return list(tags)


def _check_teacher_plan(plan: Plan, grid, models) -> None:
    g = plan.grid
    if not (np.isclose(g.sigma[0], grid.sigma[0]) and np.isclose(g.alpha[0], grid.alpha[0])
            and np.isclose(g.sigma[-1], grid.sigma[-1])):
        raise ValueError("the teacher plan must start and end at the calibration grid's first and last points "
                         f"(sigma {grid.sigma[0]:.6g} -> {grid.sigma[-1]:.6g}); "
                         f"got {g.sigma[0]:.6g} -> {g.sigma[-1]:.6g}")
    if len(plan.predictions) != len(models):
        raise ValueError(f"the teacher plan was compiled for {len(plan.predictions)} model(s), "
                         f"calibrate got {len(models)}")
