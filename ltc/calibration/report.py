"""The calibration report and the refusal rule.

Every row is an endpoint from the same noises, measured against the *strong teacher* (default
DPM-Solver++(2M) with 2N steps, :func:`ltc.calibration.runs.teacher_grid`) by the per-sample RMS
distance d_b = sqrt(mean_features (x_b - x_teacher,b)^2); a row gives its median over the
samples, its RMS over everything, and the RMS distance to the full-N run of the sampler itself.

Rows: full N steps; the plain sampler with the LTC NFE on its own grid; DPM-Solver++(2M) with the
LTC NFE on its own grid; both on the grid that the LTC plan evaluates; LTC calibrated; LTC w = 1.

Refusal rule (on the calibration noises): LTC is accepted only if

    median_b d_b(LTC)  <  min over the plain rows at the same NFE of  median_b d_b(plain)

i.e. it must beat the *best* plain sampler at equal model calls, judged against a teacher clearly
more accurate than both.  The median keeps a few samples that flip to another mode from deciding;
judging against the full-N run of the same sampler would only reward reproducing its error.
The judge must also be independent of what was fitted: a trajectory fit to the 2N teacher is
judged by DPM-Solver++(2M) with 4N steps (:meth:`ltc.calibration.fit.Session.judge`), because
it would otherwise look better than it is by the teacher's own error (on flow grids, where
DPM-Solver++(2M) with 2N steps can be no better than Euler with N, that made false accepts).
"""
from __future__ import annotations

import numpy as np

from .runs import sample_distance


def row(name: str, kind: str, nfe: int, x, teacher, full, spec: dict | None = None) -> dict:
    """One report row: median and RMS of the per-sample distance to the teacher, RMS to full N."""
    d = sample_distance(x, teacher)
    return {"name": name, "kind": kind, "nfe": int(nfe), "median": float(np.median(d)),
            "rms": float(np.sqrt(np.mean(d ** 2))),
            "rms_vs_full": float(np.sqrt(np.mean(sample_distance(x, full) ** 2))), "spec": spec}


def decide(rows: list[dict]) -> dict:
    """The refusal rule on one set of rows (see the module docstring)."""
    ltc = next(r for r in rows if r["kind"] == "ltc")
    plain = [r for r in rows if r["kind"] == "plain"]
    best = min(plain, key=lambda r: r["median"])
    accepted = ltc["median"] < best["median"]
    return {"accepted": bool(accepted), "ltc_median": ltc["median"], "best_plain_median": best["median"],
            "best_plain_name": best["name"], "best_plain": best["spec"]}


def decision_line(decision: dict) -> str:
    if decision["accepted"]:
        return (f"LTC ACCEPTED: median distance to the teacher {decision['ltc_median']:.4g} < "
                f"{decision['best_plain_median']:.4g} of the best plain sampler at the same NFE "
                f"({decision['best_plain_name']}).")
    return (f"LTC REFUSED: median distance to the teacher {decision['ltc_median']:.4g} >= "
            f"{decision['best_plain_median']:.4g} of the plain {decision['best_plain_name']} at the same NFE; "
            f"use that plain plan instead ({decision['best_plain']}).")


def _fmt(values, digits: int = 3) -> str:
    return "[" + ", ".join(f"{v:.{digits}g}" for v in values) + "]"


def format_summary(cal) -> str:
    """Text of :meth:`ltc.Calibration.summary`."""
    N, K = cal.grid.steps, len(cal.steps)
    s = cal.structure
    lines = [f"LTC calibration: {cal.sampler.get('name')} on a {cal.grid.family} grid of {N} steps, "
             f"{K} extrapolated (steps {cal.steps.tolist()}), {N - K} model calls instead of {N}",
             f"  state={s['state']} progress={s['progress']} objective={cal.fit.get('objective')} "
             f"teacher={cal.fit.get('teacher')} clamp={cal.fit.get('clamp')}",
             f"  calibration cost: {cal.cost.get('total', '?')} model calls {cal.cost}"]
    rep = cal.report
    if rep:
        sets = rep["sets"]
        names = list(sets)
        head = f"  {'endpoint distance to the teacher (' + rep['teacher'] + ')':<58}{'NFE':>5}"
        for n in names:
            head += f"{n + ' median':>20}{n + ' rms':>16}"
        head += f"{'rms vs full N':>16}"
        lines.append(head)
        for k, r in enumerate(sets[names[0]]):
            line = f"  {r['name']:<58}{r['nfe']:>5}"
            for n in names:
                other = sets[n][k]
                line += f"{other['median']:>20.4g}{other['rms']:>16.4g}"
            lines.append(line + f"{r['rms_vs_full']:>16.4g}")
        lines.append("  " + decision_line(rep["decision"]))
        if "held_out" in rep.get("decisions", {}):
            held = rep["decisions"]["held_out"]
            lines.append(f"  (on the held-out noises the same rule would {'accept' if held['accepted'] else 'refuse'})")
    lines.append(f"  weights w: {_fmt(cal.weights)}")
    if not np.array_equal(cal.weights, cal.weights_step):
        lines.append(f"  one-step fit: {_fmt(cal.weights_step)}")
    lines.append(f"  per-sample w mean {_fmt(cal.w_mean)} std {_fmt(cal.w_std)}")
    lines.append(f"  one-step relative residual: {_fmt(cal.residual)}")
    if len(cal.coherence):
        lines.append(f"  coherence cos(D_i-1, D_i), i=1..{N - 1}: {_fmt(cal.coherence, 3)}")
    return "\n".join(lines)
