"""The calibration report and the refusal rule: a judge independent of the fit, with an uncertainty.

**Noises.**  The decision is made on *judged* noises the fit did not see: by default the last half
of the calibration noises (:mod:`ltc.calibration.split`), or the ``held_out`` noises given.

**Judge.**  A ladder of teachers on the same schedule (:meth:`ltc.calibration.fit.Session.ladder`):
J = DPM-Solver++(3M) with 4N steps (the judge), J' = DPM-Solver++(2M) with 4N steps and
T = DPM-Solver++(2M) with 2N steps (the default fit target of the trajectory objective); all twice
as fine again when a user's teacher plan is J or J'.  The judge is thus never what was fitted: it
is another solver on a grid twice as fine.

**Rows** (one endpoint per judged noise b): the full N steps; the plain sampler and
DPM-Solver++(2M) at the LTC NFE, each on its own grid and on the grid LTC evaluates; LTC with the
calibrated weights; LTC with w = 1 (no calibration); and the ladder's T and J' (kind ``teacher``).
Each row keeps its per-sample RMS distances d_b(R) = sqrt(mean_features (x_b - R_b)^2) to every
teacher R of the ladder (``d``: to J; ``d_ladder``: to J' and T) and shows their mean, median and
RMS to J.

**What the judge can resolve.**  For an LTC row L and a plain row P the per-sample margin measured
by teacher R is m_b(R) = d_b(P, R) - d_b(L, R).  Along a converging ladder (order p >= 1 in the
grid), the margin measured by the exact endpoint differs from m_b(J') by at most
|m_b(J') - m_b(T)| (Richardson: the error at 4N is |m(4N) - m(2N)| / (2^p - 1)), and J differs
from J' by the solver alone, so the judge's error bound is

    e_b = |m_b(J) - m_b(J')| + |m_b(J') - m_b(T)| + r_b     (<= 2 (|J_b - J'_b| + |J'_b - T_b|) + r_b),

with r_b the rounding floor (:func:`rounding_floor`: two endpoints that agree to rounding are a tie,
whatever the sign of their difference).

It is the error *of this comparison*: errors that all rows share cancel in it, errors that the
ladder's solvers share do not (on a VP "trailing" grid the last step to sigma = 0 makes every
solver converge at first order, and J, J' agree far more closely with each other than with the
exact endpoint: only the resolution term sees that), and a solver outside its asymptotic range
(DPM-Solver++(3M) on flow grids) shows in the solver term.

**Rule.**  First the LTC row: w = 1 unless the calibrated weights' mean distance to J is strictly
smaller (then the calibration *uses* w = 1, and says so).  Then against the plain rows (the best,
P, has the smallest mean distance to J: it is the plan recommended on a refusal):

* accepted     -- against *every* plain row, the one-sided 95% bootstrap lower bound of
  mean_b (m_b(J) - e_b) is > 0: LTC's margin exceeds what the judge cannot resolve, significantly
  on these noises (every row, not only the one J ranks best: J may misrank them within e);
* plain better -- against some plain row, the 95% upper bound of mean_b (m_b(J) + e_b) is < 0;
* cannot tell  -- neither (a refusal, said as such: ties and zero distances land here);
* too few noises -- fewer than :data:`MIN_NOISES` judged noises: refused whatever the numbers.

The mean, not the median: on finite data samples snap onto data points and most per-sample
distances are exactly 0 for every row, so a median ties and decides nothing, while the mean of the
paired differences keeps the samples that differ.  The bootstrap (:func:`mean_bounds`) is the
percentile bootstrap with a fixed seed, so a decision is deterministic.  :data:`MIN_NOISES` = 8:
below 5 noises even all-positive margins are not significant at 5% (sign test: 2^-4 > 5%), and with
8 one sample may go the other way (9/256 < 5%); the bootstrap's percentiles are unreliable below it.
"""
from __future__ import annotations

import numpy as np
import torch

from .runs import sample_distance

LEVEL = 0.95
MIN_NOISES = 8
RESAMPLES = 4000
SEED = 0
VERDICTS = ("accepted", "plain better", "cannot tell", "too few noises")


def row(name: str, kind: str, nfe: int, x, ladder, full, spec: dict | None = None) -> dict:
    """One report row of endpoints ``x [B, *S]``: the per-sample distances to the ladder's endpoints
    ``(J, J', T)`` (``d``: to J; ``d_ladder``: to J' and T), the mean, median and RMS of ``d``, and the
    RMS distance to the full-N run ``full``."""
    d, *others = (sample_distance(x, teacher) for teacher in ladder)
    return {"name": name, "kind": kind, "nfe": int(nfe), "mean": float(np.mean(d)), "median": float(np.median(d)),
            "rms": float(np.sqrt(np.mean(d ** 2))),
            "rms_vs_full": float(np.sqrt(np.mean(sample_distance(x, full) ** 2))), "spec": spec,
            "d": [float(v) for v in d], "d_ladder": [[float(v) for v in o] for o in others]}


def rounding_floor(judge, steps: int, dtype) -> np.ndarray:
    """``[B]``: r_b = 8 sqrt(steps) eps(dtype) rms(J_b), the per-sample distance below which endpoints
    of ``steps``-step walks stored in ``dtype`` cannot be told apart from rounding (rounding errors
    of the steps add up like a random walk; 8: a safety factor)."""
    return 8.0 * np.sqrt(steps) * torch.finfo(dtype).eps * sample_distance(judge, torch.zeros_like(judge))


def mean_bounds(values, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """One-sided ``level`` percentile-bootstrap bounds ``(lower, upper)`` of the mean of ``values [n]``
    (``resamples`` resamples of n with replacement, ``numpy.random.default_rng(seed)``)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {v.shape}")
    idx = np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))
    means = v[idx].mean(axis=1)
    return float(np.quantile(means, 1.0 - level)), float(np.quantile(means, level))


def margins(candidate: dict, plain: dict, floor) -> tuple[np.ndarray, np.ndarray]:
    """``(m, e)``, each ``[n]``: the per-sample margin of ``candidate`` over ``plain`` measured by J, and
    the judge's error bound e_b with the rounding floor ``floor`` r_b (see the module docstring)."""
    m_j, m_j2, m_t = (np.asarray(p, dtype=np.float64) - np.asarray(c, dtype=np.float64)
                      for p, c in zip([plain["d"], *plain["d_ladder"]], [candidate["d"], *candidate["d_ladder"]]))
    return m_j, np.abs(m_j - m_j2) + np.abs(m_j2 - m_t) + np.asarray(floor, dtype=np.float64)


def pair_test(candidate: dict, plain: dict, floor) -> dict:
    """The bounds of one LTC row's margin over one plain row (see the module docstring): mean margin,
    mean judge bound, and the one-sided bootstrap bounds ``lower`` of mean(m - e), ``upper`` of mean(m + e)."""
    m, e = margins(candidate, plain, floor)
    if m.size == 0:
        raise ValueError("the refusal rule needs at least one judged noise")
    return {"against": plain["name"], "against_mean": plain["mean"], "margin": float(m.mean()),
            "judge_bound": float(e.mean()), "lower": mean_bounds(m - e)[0], "upper": mean_bounds(m + e)[1]}


def compare(candidate: dict, plain_rows: list[dict], floor) -> dict:
    """The refusal rule for one LTC row against *every* plain row at its NFE (the judge may misrank
    the plain rows within its error bound, so LTC must beat each of them): ``verdict`` and the
    comparison that decided it (the plain row LTC beats least surely, or for "plain better" the row
    most surely better than LTC)."""
    tests = [pair_test(candidate, p, floor) for p in plain_rows]
    n = len(candidate["d"])
    hardest = min(tests, key=lambda t: t["lower"])
    clearest = min(tests, key=lambda t: t["upper"])
    if n < MIN_NOISES:
        verdict, deciding = "too few noises", hardest
    elif hardest["lower"] > 0:
        verdict, deciding = "accepted", hardest
    elif clearest["upper"] < 0:
        verdict, deciding = "plain better", clearest
    else:
        verdict, deciding = "cannot tell", hardest
    return {"verdict": verdict, "accepted": verdict == "accepted", "noises": n, **deciding}


def choose_ltc(rows: list[dict]) -> dict:
    """The LTC row the decision uses: w = 1 unless the calibrated weights are strictly closer."""
    calibrated = next(r for r in rows if r["kind"] == "ltc")
    ones = next((r for r in rows if r["kind"] == "ltc_w1"), None)
    return calibrated if ones is None or calibrated["mean"] < ones["mean"] else ones


def decide(rows: list[dict], floor) -> dict:
    """The refusal rule on the judged rows (see the module docstring); ``floor``: r_b ``[n]``."""
    chosen = choose_ltc(rows)
    calibrated = next(r for r in rows if r["kind"] == "ltc")
    plain = [r for r in rows if r["kind"] == "plain"]
    best = min(plain, key=lambda r: r["mean"])
    test = compare(chosen, plain, floor)
    return {**test, "weights": "w = 1" if chosen["kind"] == "ltc_w1" else "calibrated",
            "ltc_mean": chosen["mean"], "calibrated_mean": calibrated["mean"],
            "w1_mean": next((r["mean"] for r in rows if r["kind"] == "ltc_w1"), None),
            "best_plain_mean": best["mean"], "best_plain_name": best["name"], "best_plain": best["spec"],
            "level": LEVEL, "min_noises": MIN_NOISES}


def decision_line(decision: dict) -> str:
    """The decision as one sentence (what the warning and the summary say)."""
    d = decision
    which = "LTC w = 1" if d["weights"] == "w = 1" else "LTC with the calibrated weights"
    numbers = (f"mean distance to the judge {d['ltc_mean']:.4g} ({which}) against {d['best_plain_mean']:.4g} "
               f"for the best plain plan at the same NFE ({d['best_plain_name']}) on {d['noises']} held-out noises; "
               + ("" if d["against"] == d["best_plain_name"] else
                  f"the deciding comparison, against {d['against']} ({d['against_mean']:.4g}): ")
               + f"margin {d['margin']:.3g}, judge bound {d['judge_bound']:.3g}")
    bounds = f"{d['level']:.0%} bounds of the margin net of the judge's bound"
    if d["verdict"] == "accepted":
        line = f"LTC ACCEPTED: {numbers}; {bounds}: lower {d['lower']:.3g} > 0."
    elif d["verdict"] == "too few noises":
        line = (f"LTC REFUSED (too few noises): {d['noises']} held-out noises, the judge's interval needs at least "
                f"{d['min_noises']} (calibrate with at least {2 * d['min_noises']} noises -- the last half judge the "
                f"fit -- or pass held_out=); {numbers}. Use the plain plan ({d['best_plain']}).")
    elif d["verdict"] == "plain better":
        line = (f"LTC REFUSED (the plain plan is better): {numbers}; upper bound {d['upper']:.3g} < 0. Use the plain "
                f"plan instead ({d['best_plain']}).")
    else:
        line = (f"LTC REFUSED (cannot tell): {numbers}; {bounds}: [{d['lower']:.3g}, {d['upper']:.3g}] -- the judge "
                f"cannot tell them apart on these noises. Use the plain plan ({d['best_plain']}).")
    if d["weights"] == "w = 1" and d["w1_mean"] is not None:
        line += (f" LTC w = 1 is at least as close as the calibrated weights ({d['w1_mean']:.4g} vs "
                 f"{d['calibrated_mean']:.4g}): this calibration uses w = 1.")
    return line


def _fmt(values, digits: int = 3) -> str:
    return "[" + ", ".join(f"{v:.{digits}g}" for v in values) + "]"


def format_summary(cal) -> str:
    """Text of :meth:`ltc.Calibration.summary`."""
    N, K = cal.grid.steps, len(cal.steps)
    s = cal.structure
    lines = [f"LTC calibration: {cal.sampler.get('name')} on a {cal.grid.family} grid of {N} steps, "
             f"{K} extrapolated (steps {cal.steps.tolist()}, phase {s.get('phase')!r}), {N - K} model calls "
             f"instead of {N}",
             f"  state={s['state']} progress={s['progress']} objective={cal.fit.get('objective')} "
             f"teacher={cal.fit.get('teacher')} clamp={cal.fit.get('clamp')}",
             f"  noises: {cal.validation.get('fit_noises', '?')} fit, {cal.validation.get('judged_noises', '?')} "
             f"judged ({cal.validation.get('held_out', '?')})",
             f"  calibration cost: {cal.cost.get('total', '?')} model calls {cal.cost}"]
    rep = cal.report
    if rep:
        lines.append(f"  {'judged noises: distance to the judge (' + rep['judge'] + ')':<66}{'NFE':>5}{'mean':>11}"
                     f"{'median':>11}{'rms':>11}{'rms vs full N':>15}")
        for r in rep["rows"]:
            lines.append(f"  {r['name']:<66}{r['nfe']:>5}{r['mean']:>11.4g}{r['median']:>11.4g}{r['rms']:>11.4g}"
                         f"{r['rms_vs_full']:>15.4g}")
        lines.append("  " + decision_line(rep["decision"]))
    lines.append(f"  weights w: {_fmt(cal.weights)}")
    if not np.array_equal(cal.weights, cal.weights_fit):
        lines.append(f"  fitted weights (not used): {_fmt(cal.weights_fit)}")
    if not np.array_equal(cal.weights_fit, cal.weights_step):
        lines.append(f"  one-step fit: {_fmt(cal.weights_step)}")
    lines.append(f"  per-sample w mean {_fmt(cal.w_mean)} std {_fmt(cal.w_std)}")
    lines.append(f"  one-step relative residual: {_fmt(cal.residual)}")
    if len(cal.coherence):
        lines.append(f"  coherence cos(D_i-1, D_i), i=1..{N - 1}: {_fmt(cal.coherence, 3)}")
    return "\n".join(lines)
