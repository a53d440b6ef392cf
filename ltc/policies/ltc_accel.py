"""LTC-Accel (arXiv 2503.09675): replace model calls by extrapolating the last transition.

Local transition coherence: along a deterministic trajectory the transitions Delta_i = x_{i+1} - x_i
of neighbouring steps point in nearly the same direction, so inside an interval of the trajectory
every ``every``-th step is *extrapolated* (no model call):

    x_{i+1} = x_i + w_i gamma_i (x_i - x_{i-1}),   gamma_i = (phi_{i+1} - phi_i) / (phi_i - phi_{i-1})

with phi the schedule's progress variable (:meth:`ltc.Grid.progress`: sigma, t or lambda);
gamma_i makes the step exact for a trajectory linear in phi, and w_i is a calibrated per-step weight
(:func:`ltc.calibrate`; 1 without calibration).  The public reference code uses the ratio shifted
by one index, (phi_i - phi_{i-1}) / (phi_{i-1} - phi_{i-2}); we use the aligned ratio above and the
calibrated w_i absorbs the difference.

Every extrapolation here is affine in its weight, so a step's coefficients (the plan's extrapolated
step, :mod:`ltc.plan`: x_{i+1} = EX x_i + EXP x_{i-1} + EH1 D_{i-1} + EH2 D_{i-2}) are
``R0_i + w_i R1_i`` (:meth:`LTC.rows`).  With c = w gamma, the extrapolated quantity (``state``) is

* ``"x"``       the state (the seed's method):  EX = 1 + c, EXP = -c.
* ``"x/alpha"`` the scaled state u = x / alpha (VP; x / (1 - sigma) on flow grids): u_{i+1} = u_i +
  c (u_i - u_{i-1}), i.e. EX = alpha_{i+1} (1 + c) / alpha_i, EXP = -c alpha_{i+1} / alpha_{i-1}.
* ``"x0"``      the model output D (clean estimate): D_i ~ D_{i-1} + c' (D_{i-1} - D_{i-2}) with the
  gamma of points i-2, i-1, i, then the first-order step x_{i+1} = A x_i + B0 D_i
  (:meth:`ltc.samplers.Sampler.first_order`): EX = A, EH1 = B0 (1 + c'), EH2 = -B0 c'.  This is a
  two-step multistep update (close to DPM-Solver++(2M) without a model call).  Extrapolating eps
  instead would need x_{i-2}, which the plan's two state buffers do not keep.

History for multistep solvers: after an extrapolated step the solver's next steps read D_i.  The
plan stores the clean estimate *implied* by the step, obtained by inverting the deterministic
first-order update x_{i+1} = A x_i + B0 D_i:

    D_i = IN x_{i+1} + IC x_i,   IN = 1 / B0,  IC = -A / B0

so the history is the x0 that a DDIM step would need to go from x_i to x_{i+1} (for the ``"x0"``
state it is exactly the extrapolated D_i).  ``bench/ltc_evidence.py --history`` compares it, state x
with one-step weights fitted per rule, with three alternatives on the exact oracles (DPM-Solver++
2M/3M, VP and flow, N = 10/20/50, 24 cases, the reference code's steps): inverting the solver's own
multistep update, restarting the solver at first order after a skip, and reusing D_{i-1}
("stale").  No rule wins everywhere; ratio of held-out RMSE to the best rule of each case,
geometric mean / worst: first-order inversion 1.43 / 3.9 (3 wins), own multistep 1.13 / 2.3 (8),
restart 1.84 / 7.9 (0), stale 1.21 / 5.0 (13).  On the samplers' own grids (``Sampler.grid_rule``)
the solver's own multistep inversion is the more robust rule, but it reads D_{i-1} and D_{i-2}:
first-order inversion is the only one of them the plan's form (x_{i+1}, x_i) can express.

Default state, from ``bench/ltc_evidence.py`` (mean exact error on held-out noises / the best plain
row at equal NFE, geometric mean over its 62 cases): ``"x0"`` 1.77 (step objective), 0.98
(trajectory), 1.87 (w = 1), against ``"x"`` 2.00, 1.08, 2.40 and ``"x/alpha"`` 1.88, 0.91, 6.45.
The default is therefore ``"x0"`` (best with one-step weights and w = 1, close to ``"x/alpha"``
with the trajectory objective); ``state="x"`` is the seed paper's extrapolation.  (Ratios above 1:
on average LTC loses to the best plain sampler -- the refusal rule of
:mod:`ltc.calibration.report` accepts it only where it wins.)

Which steps: ``interval = (start, end)`` (fractions of the N steps, or step indices; default
(0.25, 1.0): from N/4 to the end), ``every`` and ``phase``: the steps i with ``start < i < end``
and (fractions map to ``start = floor(f N)``)

* ``phase="reference"`` (default): ``i % every == every - 1`` -- the reference code's rule, which
  skips the odd i with N/4 < i < N (every second step; with 40 steps 15 extrapolations, 25 model
  calls);
* ``phase="interval"``: ``(i - start) % every == every - 1`` -- the rule of ltc 0.1, counted from
  the interval's start.  It differs from the reference whenever ``floor(N/4)`` is odd (N = 12-15,
  20-23, 28-31, ...: at N = 20 it skips 6, 8, ..., 18 instead of 7, 9, ..., 19).  There, on the
  exact oracles of ``bench/ltc_evidence.py`` (10 cases: N = 20, 22, 30, VP and flow, d = 64 and
  256, state x0), the reference steps had the lower exact error on held-out noises with w = 1 in
  10 of 10 (flow shift 3, d = 64, N = 20: 0.0159 against 0.0583) and with step-calibrated weights
  in 5 of 10, one tie (the four others on VP grids, by up to 1.22x).  It is kept for calibrations
  fitted with it; every calibration records its phase.

Or ``skip``: an explicit list of step indices (no two consecutive).  The previous step of an
extrapolated step is always a model step, and step 0 is never extrapolated (there is no previous
transition).

Samplers with fresh noise per step (DDIM eta > 0) are refused: their transitions contain the
injected noise, so there is no coherent direction to extrapolate.

Composition: ``LTC(..., base=TStitch(...))`` or ``TStitch(...) | LTC(...)``: the base policy picks
the model of every model step; LTC replaces its skipped steps by extrapolations.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..plan import EXTRAPOLATE, Decision, ExtrapolationCol, fingerprint_of
from .base import Full, Policy

STATES = ("x", "x/alpha", "x0")
PROGRESS = ("sigma", "t", "lambda")
PHASES = ("reference", "interval")
# Enters every calibration key.  Bump it whenever the numbers an LTC weight multiplies change
# (the formulas of ``rows``/``gammas``, the history rule, which steps are extrapolated): a shipped
# or saved calibration then fails its key check instead of loading stale weights.
# ``tests/test_calibration_files.py`` re-fits the shipped calibrations to catch a missed bump.
# Version 2: the key names the skip rule (``phase``), whose default became the reference's.
CALIBRATION_FORMAT = 2


def calibration_key(grid, sampler_config: dict, steps, progress: str, state: str, base_config,
                    phase: str) -> str:
    """Fingerprint of what LTC weights are valid for: the exact grid, the sampler, the extrapolated
    steps and the rule that chose them (``phase``), the progress variable, the state and the base
    policy."""
    return fingerprint_of("ltc-calibration", CALIBRATION_FORMAT, grid.digest(), sampler_config,
                          [int(i) for i in steps], phase, progress, state, base_config)


def interval_steps(start: int, end: int, every: int, phase: str) -> list[int]:
    """The steps ``start < i < end`` that ``phase`` extrapolates (see the module docstring):
    ``"reference"``: ``i % every == every - 1``; ``"interval"``: ``(i - start) % every == every - 1``."""
    if phase == "reference":
        return [i for i in range(start + 1, end) if i % every == every - 1]
    return [i for i in range(start + 1, end) if (i - start) % every == every - 1]


def first_extrapolable_step(state: str) -> int:
    """The earliest step that state ``state`` can extrapolate: ``"x0"`` extrapolates the model
    outputs of steps i-2 and i-1 (from step 2 on); ``"x"`` and ``"x/alpha"`` the states x_{i-1},
    x_i (from step 1 on)."""
    return 2 if state == "x0" else 1


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _check_interval(interval) -> tuple:
    if not (isinstance(interval, (tuple, list)) and len(interval) == 2):
        raise TypeError(f"interval must be a pair (start, end) of fractions in [0, 1] or step indices, "
                        f"got {interval!r}")
    out = []
    for name, v in zip(("start", "end"), interval):
        if v is None and name == "end":
            out.append(None)
        elif _is_int(v):
            if v < 0:
                raise ValueError(f"interval {name} must be a step index >= 0, got {v}")
            out.append(int(v))
        elif _is_number(v):
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"interval {name} as a fraction must be in [0, 1], got {v!r}")
            out.append(float(v))
        else:
            raise TypeError(f"interval {name} must be an int step index or a float fraction, got {v!r}")
    start, end = out
    if end is not None and type(start) is type(end) and start >= end:
        raise ValueError(f"interval {interval!r}: start must be below end")
    return tuple(out)


DEFAULT_INTERVAL = (0.25, 1.0)


class LTC(Policy):
    """Extrapolate every ``every``-th step inside ``interval`` (see the module docstring).

    Args:
        interval: ``(start, end)``; floats are fractions of the N steps, ints are step indices,
            ``end=None`` means N.  Default ``(0.25, 1.0)``.
        every: cadence >= 2 inside the interval.
        phase: ``"reference"`` (default: the reference code's steps, ``i % every == every - 1``)
            or ``"interval"`` (ltc 0.1's, ``(i - start) % every == every - 1``); see the module
            docstring.
        skip: explicit extrapolated step indices instead of interval/every/phase.
        progress: ``"sigma"`` (default), ``"t"`` or ``"lambda"`` -- phi of gamma.
        state: ``"x0"`` (default, see the module docstring), ``"x"`` (the seed's) or ``"x/alpha"``.
        weights: ``None`` (w = 1), one number, one number per extrapolated step, or a
            calibration: any object with ``weights`` (one per extrapolated step) and
            ``check(grid, sampler, policy)`` (raises when it is not valid for the plan), such
            as :class:`ltc.Calibration`; it is checked when the plan is compiled.
        base: the policy choosing the model of each model step (default :class:`Full`).
    """

    def __init__(self, interval=(0.25, 1.0), every: int = 2, *, phase: str = "reference", skip=None,
                 progress: str = "sigma", state: str = "x0", weights=None, base: Policy | None = None):
        self.interval = _check_interval(interval)
        if not _is_int(every):
            raise TypeError(f"every must be an int >= 2, got {every!r}")
        if every < 2:
            raise ValueError(f"every must be >= 2 (a model step between two extrapolations), got {every}")
        self.every = int(every)
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        self.phase = phase
        self.skip = None if skip is None else self._check_skip(skip)
        default_interval = self.interval == DEFAULT_INTERVAL and all(type(v) is float for v in self.interval)
        if self.skip is not None and (not default_interval or self.every != 2):
            raise ValueError(f"give either skip (the extrapolated steps) or interval/every, not both: "
                             f"interval={interval!r}, every={every!r} would be ignored with skip={list(self.skip)}")
        if self.skip is not None and phase != "reference":
            raise ValueError(f"give either skip (the extrapolated steps) or phase (which steps of interval/every), "
                             f"not both: phase={phase!r} would be ignored with skip={list(self.skip)}")
        if progress not in PROGRESS:
            raise ValueError(f"progress must be one of {PROGRESS}, got {progress!r}")
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        self.progress, self.state = progress, state
        if base is not None and not isinstance(base, Policy):
            raise TypeError(f"base must be an ltc.policies.Policy, got {type(base).__name__}")
        if isinstance(base, LTC):
            raise ValueError("base must not itself be an LTC policy")
        self.base = base
        self.calibration = None
        self.weights = self._check_weights(weights)

    # -- construction helpers -----------------------------------------------------------------
    @staticmethod
    def _check_skip(skip) -> tuple:
        if isinstance(skip, (str, bytes)) or not isinstance(skip, (Sequence, np.ndarray)):
            raise TypeError(f"skip must be a sequence of step indices, got {type(skip).__name__}")
        steps = []
        for v in skip:
            if not _is_int(v):
                raise TypeError(f"skip must hold int step indices, got {v!r}")
            steps.append(int(v))
        if not steps:
            raise ValueError("skip is empty: give at least one step to extrapolate")
        if sorted(set(steps)) != steps:
            raise ValueError(f"skip must be strictly increasing, got {steps}")
        if steps[0] <= 0:
            raise ValueError("skip contains step 0: the first step cannot be extrapolated "
                             "(there is no previous transition)")
        if any(b - a < 2 for a, b in zip(steps, steps[1:])):
            raise ValueError(f"skip must not hold two consecutive steps (a model step must come between "
                             f"two extrapolations), got {steps}")
        return tuple(steps)

    def _check_weights(self, weights):
        if weights is None:
            return None
        if callable(getattr(weights, "check", None)) and hasattr(weights, "weights"):
            self.calibration = weights  # e.g. an ltc.Calibration: checked against the plan in decide()
            weights = weights.weights
        elif _is_number(weights):
            if not math.isfinite(weights):
                raise ValueError(f"weights must be finite, got {weights!r}")
            return float(weights)
        if isinstance(weights, (str, bytes)) or not isinstance(weights, (Sequence, np.ndarray)) \
                or np.ndim(weights) != 1:
            raise TypeError(f"weights must be None, a number, a 1-D sequence of numbers or a calibration (e.g. "
                            f"ltc.Calibration), got {type(weights).__name__}")
        for k, w in enumerate(weights):
            if not _is_number(w) or not math.isfinite(w):
                raise ValueError(f"weights[{k}] must be a finite number, got {w!r}")
        return tuple(float(w) for w in weights)

    def with_base(self, base: Policy) -> "LTC":
        """The same LTC on top of ``base`` (used by ``base | ltc``)."""
        return self.replace(base=base)

    def replace(self, **changes) -> "LTC":
        """A copy with some constructor arguments changed."""
        args = dict(progress=self.progress, state=self.state, weights=self.calibration or self._weights_arg(),
                    base=self.base)
        args.update(dict(skip=self.skip) if self.skip is not None else
                    dict(interval=self.interval, every=self.every, phase=self.phase))
        args.update(changes)
        return LTC(**args)

    def _weights_arg(self):
        return self.weights if not isinstance(self.weights, tuple) else list(self.weights)

    def structure(self) -> dict:
        """Everything but the weights: what a calibration is valid for."""
        return {"interval": list(self.interval), "every": self.every, "phase": self.phase,
                "skip": None if self.skip is None else list(self.skip), "progress": self.progress,
                "state": self.state, "base": None if self.base is None else self.base.config()}

    def config(self) -> dict:
        w = self.weights if not isinstance(self.weights, tuple) else [float(v).hex() for v in self.weights]
        return {"policy": "ltc", **self.structure(), "weights": w}

    def __repr__(self) -> str:
        """The constructor call (``phase`` when not the default), weights in decimal (6 significant
        digits); :meth:`config` keeps them exact (hex floats) for fingerprints."""
        args = [f"skip={list(self.skip)}"] if self.skip is not None else \
            [f"interval={self.interval!r}", f"every={self.every}"] + \
            ([] if self.phase == "reference" else [f"phase={self.phase!r}"])
        args += [f"progress={self.progress!r}", f"state={self.state!r}"]
        if isinstance(self.weights, tuple):
            args.append("weights=[" + ", ".join(f"{w:.6g}" for w in self.weights) + "]")
        elif self.weights is not None:
            args.append(f"weights={self.weights:.6g}")
        if self.base is not None:
            args.append(f"base={self.base!r}")
        return f"LTC({', '.join(args)})"

    # -- the plan --------------------------------------------------------------------------------
    def extrapolated_steps(self, steps: int) -> list[int]:
        """Indices of the extrapolated steps of an ``steps``-step grid."""
        N = steps
        if self.skip is not None:
            if self.skip[-1] >= N:
                raise ValueError(f"skip contains step {self.skip[-1]}, outside the {N} steps 0..{N - 1}")
            return list(self.skip)
        start, end = self.interval
        start = start if isinstance(start, int) else int(math.floor(start * N + 1e-9))
        end = N if end is None else end if isinstance(end, int) else int(math.floor(end * N + 1e-9))
        if end > N:
            raise ValueError(f"interval end {end} lies outside the {N}-step trajectory (steps 0..{N - 1}, "
                             f"end <= {N})")
        if start >= end:
            raise ValueError(f"interval {self.interval} gives steps [{start}, {end}) of {N}: start must be "
                             "below end")
        found = interval_steps(start, end, self.every, self.phase)
        if not found:
            raise ValueError(f"interval {self.interval} gives steps [{start}, {end}) of {N}, too short for one "
                             f"extrapolation with every={self.every} and phase={self.phase!r} (steps "
                             f"{start} < i < {end} with "
                             + ("i" if self.phase == "reference" else f"i - {start}")
                             + f" % {self.every} == {self.every - 1})")
        return found

    def gammas(self, grid, steps: list[int]) -> np.ndarray:
        """gamma of each extrapolated step (for state ``"x0"`` the ratio one point earlier)."""
        phi = grid.progress(self.progress)
        first = first_extrapolable_step(self.state)
        out = []
        for i in steps:
            j = i - (first - 1)  # gamma of points j-1, j, j+1
            if i < first:
                raise ValueError(f"state 'x0' extrapolates the model outputs of the two steps before; step {i} is "
                                 f"too early (extrapolate from step 2 on: more steps, or an interval starting later)")
            a, b, c = phi[j - 1], phi[j], phi[j + 1]
            if not np.all(np.isfinite([a, b, c])):
                raise ValueError(f"progress {self.progress!r} is not finite at points {j - 1}..{j + 1} "
                                 f"({a}, {b}, {c}) needed by extrapolated step {i}; use progress='sigma' "
                                 "(lambda is infinite where sigma = 0 or alpha = 0)")
            if b == a:
                raise ValueError(f"progress {self.progress!r} does not change between points {j - 1} and {j}: "
                                 f"gamma of step {i} is undefined")
            out.append((c - b) / (b - a))
        return np.asarray(out, dtype=np.float64)

    def rows(self, grid, sampler, steps: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(R0, R1)``, each ``[K, 6]`` (columns :class:`ltc.plan.ExtrapolationCol`): the
        coefficients of extrapolated step k are ``R0[k] + w_k R1[k]``."""
        g = self.gammas(grid, steps)
        A, B0 = sampler.first_order(grid)
        a = grid.alpha
        E = ExtrapolationCol
        R0 = np.zeros((len(steps), len(E)))
        R1 = np.zeros_like(R0)
        for k, i in enumerate(steps):
            R0[k, E.IN], R0[k, E.IC] = 1.0 / B0[i], -A[i] / B0[i]
            if self.state == "x":
                R0[k, E.EX] = 1.0
                R1[k, E.EX], R1[k, E.EXP] = g[k], -g[k]
            elif self.state == "x/alpha":
                if a[i - 1] <= 0:
                    raise ValueError(f"state 'x/alpha' divides by alpha at point {i - 1}, which is 0 (a flow grid "
                                     f"starts at alpha = 0); step {i} cannot extrapolate x/alpha")
                R0[k, E.EX] = a[i + 1] / a[i]
                R1[k, E.EX], R1[k, E.EXP] = g[k] * a[i + 1] / a[i], -g[k] * a[i + 1] / a[i - 1]
            else:
                R0[k, E.EX], R0[k, E.EH1] = A[i], B0[i]
                R1[k, E.EH1], R1[k, E.EH2] = B0[i] * g[k], -B0[i] * g[k]
        return R0, R1

    def weight_vector(self, K: int) -> np.ndarray:
        if self.weights is None:
            return np.ones(K)
        if isinstance(self.weights, float):
            return np.full(K, self.weights)
        if len(self.weights) != K:
            raise ValueError(f"LTC has {len(self.weights)} weights but the plan extrapolates {K} steps")
        return np.asarray(self.weights)

    def base_decision(self, grid, sampler, n_models: int) -> Decision:
        base = (self.base or Full()).decide(grid, sampler, n_models)
        if np.any(np.asarray(base.models) == EXTRAPOLATE):
            raise ValueError(f"base policy {self.base!r} already extrapolates steps; LTC needs a base that "
                             "calls a model at every step")
        return base

    def check_models(self, models, x, t, model_kwargs=None, *, cfg: bool = False) -> None:
        """The base policy's pre-sampling model check (e.g. T-Stitch's compatibility probe), if any."""
        hook = getattr(self.base, "check_models", None)
        if hook is not None:
            hook(models, x, t, model_kwargs, cfg=cfg)

    def check_sampling(self, plan, x, models=None) -> None:
        """Before the first model call of ``plan`` from ``x`` ``[B, *S]`` (``ltc.sample``, graph runs,
        ``ltc.Stepper``; ``models=None`` when the caller does not see them): a calibration that
        offers ``check_models`` (e.g. :class:`ltc.Calibration`) checks the models the plan calls
        (in model-index order), the sample shape ``S`` and the guidance scale against what it was
        fitted on."""
        check = getattr(self.calibration, "check_models", None)
        if check is None:
            return
        used = None if models is None else [models[k] for k in sorted({int(m) for m in plan.models if m >= 0})]
        check(used, tuple(x.shape[1:]), plan.guidance_scale)

    def calibration_key(self, grid, sampler) -> str:
        """What a calibration of this policy on (grid, sampler) is valid for (:func:`calibration_key`)."""
        return calibration_key(grid, sampler.config(), self.extrapolated_steps(grid.steps), self.progress,
                               self.state, None if self.base is None else self.base.config(), self.phase)

    def decide(self, grid, sampler, n_models: int) -> Decision:
        if getattr(sampler, "stochastic", False):
            raise ValueError(f"LTC needs a deterministic sampler; {sampler!r} adds fresh noise every step, so "
                             "consecutive transitions are not coherent (use eta=0)")
        if getattr(sampler, "stages", 1) > 1:
            raise ValueError(f"LTC extrapolates whole transitions x_{{i-1}} -> x_i -> x_{{i+1}}; {sampler!r} takes "
                             f"{sampler.stages} model calls per step (rows of one step are not transitions): use a "
                             "one-stage sampler (e.g. dpmpp_2m, unipc)")
        steps = self.extrapolated_steps(grid.steps)
        if self.calibration is not None:
            self.calibration.check(grid, sampler, self)
        base = self.base_decision(grid, sampler, n_models)
        R0, R1 = self.rows(grid, sampler, steps)
        w = self.weight_vector(len(steps))
        models = np.array(base.models, dtype=np.int64)
        extrap = np.array(base.extrapolation, dtype=np.float64)
        models[steps] = EXTRAPOLATE
        extrap[steps] = R0 + w[:, None] * R1
        return Decision(models, extrap)
