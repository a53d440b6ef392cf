"""LTC-Accel evidence on exact oracles: the refusal rule's decisions against the exact ODE endpoint.

For every case (oracle x setting x N) and every variant (objective step / trajectory x state x,
x/alpha, x0), ``ltc.calibrate`` fits and judges on 64 calibration noises (by default the first 32
fit, the last 32 are judged by the teacher ladder, :mod:`ltc.calibration.report`).  Then, on 256
other noises, every row is measured against the exact endpoint (RK4 in log-SNR, float64, 2000 steps,
convergence checked at half the steps) by the mean per-sample RMS distance: the plain rows at the
LTC NFE (the sampler and DPM-Solver++(2M), on their own grid and on the grid LTC evaluates) and the
LTC plan the decision chose (calibrated weights or w = 1).  The decision is then a true or false
accept or refusal: LTC truly wins when its exact error is below the best plain row's; the ratio of
the two says by how much.  Also ``ltc.calibration.auto`` (objective step, state x0, 2 candidates)
against the best plain plan it evaluated, and the skip rule: the reference code's steps against
ltc 0.1's where they differ (floor(N/4) odd).  ``--history``: the history rules of a multistep solver
after a skip (:func:`history_walk`; state x, one-step weights fitted per rule, gmm and digits, VP
and flow, DPM-Solver++ 2M/3M, N in {10, 20, 50}: 24 cases), as cited in ``ltc/policies/ltc_accel.py``.

Cases.  The benchmark of ltc 0.1 ("bench"): oracles ``gmm`` (8 components, std 0.3, d = 64) and
``digits`` (the posterior mean of the 1500 zoo training digits, d = 64, finite data) x settings
VP scaled-linear "trailing" + DDIM, + DPM-Solver++(2M), flow + Euler, flow shift 3 + Euler x
N in {10, 20, 50}.  Settings it never used ("unseen"): N = 25 on those; oracles ``gmm16`` (4
components, std 0.1, d = 16) and ``gmm256`` (8 components, std 0.5, d = 256) on the same
settings (``gmm256``: VP + DPM-Solver++(2M) and flow shift 3 + Euler) with N in {10, 25, 50};
VP cosine "trailing" + DPM-Solver++(2M) with ``gmm`` and ``gmm256``, VP scaled-linear "leading" +
DDIM with ``gmm`` and ``gmm16``, N in {10, 25, 50}.  RK4 with 300 steps (150 for the check): the
exact endpoints move by less than 1e-6 RMS from 1000 steps (digits: 0, the samples snap onto data
points), four orders below the errors compared.

    python bench/ltc_evidence.py            # writes bench/results/ltc_evidence.json (~10 min, 1 thread)
    python bench/ltc_evidence.py --resume   # continue an interrupted run (progress kept in the temp folder)
    python bench/ltc_evidence.py --history  # adds the history-rule study to the results file (~5 min)
    python bench/ltc_evidence.py --quick    # small smoke run, prints only
    python bench/ltc_evidence.py --table    # the tables of bench/README.md, from the results file
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import ltc
from ltc.calibration import auto
from ltc.policies import LTC, Full
from ltc.samplers import DPMSolverPP, get_sampler
from ltc.zoo.oracles import EmpiricalData, GaussianMixture, exact_endpoint

RESULT = Path(__file__).parent / "results" / "ltc_evidence.json"
PARTIAL = Path(tempfile.gettempdir()) / "ltc_evidence.partial.json"  # progress of a run, for --resume
VARIANTS = [(obj, state) for obj in ("step", "trajectory") for state in ("x", "x/alpha", "x0")]
PLAIN = ("plain_own", "plain_ltc_grid", "dpmpp_2m_own", "dpmpp_2m_ltc_grid")
ORACLES = {"gmm": {"dim": 64, "components": 8, "std": 0.3}, "digits": None,
           "gmm16": {"dim": 16, "components": 4, "std": 0.1}, "gmm256": {"dim": 256, "components": 8, "std": 0.5}}
BENCH_SETTINGS = ("vp-ddim", "vp-dpmpp_2m", "flow-euler", "flow3-euler")


def settings() -> dict:
    vp = ltc.Schedule.vp("scaled_linear", spacing="trailing")
    return {"vp-ddim": (vp, "ddim"), "vp-dpmpp_2m": (vp, "dpmpp_2m"),
            "flow-euler": (ltc.Schedule.flow(1.0), "euler"), "flow3-euler": (ltc.Schedule.flow(3.0), "euler"),
            "vpcos-dpmpp_2m": (ltc.Schedule.vp("squaredcos_cap_v2", spacing="trailing"), "dpmpp_2m"),
            "vplead-ddim": (ltc.Schedule.vp("scaled_linear", spacing="leading"), "ddim")}


def cases(quick: bool) -> list[tuple[str, str, int, str]]:
    """``(oracle, setting, N, group)`` of the run (see the module docstring)."""
    if quick:
        return [("gmm16", s, N, "quick") for s in ("vp-ddim", "flow3-euler", "vplead-ddim") for N in (10, 20)]
    out = [(o, s, N, "bench") for o in ("gmm", "digits") for s in BENCH_SETTINGS for N in (10, 20, 50)]
    out += [(o, s, 25, "unseen") for o in ("gmm", "digits") for s in BENCH_SETTINGS]
    out += [("gmm16", s, N, "unseen") for s in BENCH_SETTINGS for N in (10, 25, 50)]
    out += [("gmm256", s, N, "unseen") for s in ("vp-dpmpp_2m", "flow3-euler") for N in (10, 25, 50)]
    out += [(o, "vpcos-dpmpp_2m", N, "unseen") for o in ("gmm", "gmm256") for N in (10, 25, 50)]
    out += [(o, "vplead-ddim", N, "unseen") for o in ("gmm", "gmm16") for N in (10, 25, 50)]
    return out


def oracle(name: str, schedule):
    if name == "digits":
        from ltc.zoo import raw_digits
        images, _ = raw_digits("train")
        return EmpiricalData(images.reshape(len(images), -1).to(torch.float64) / 8.0 - 1.0, schedule)
    o = ORACLES[name]
    return GaussianMixture.random(schedule, dim=o["dim"], components=o["components"], std=o["std"], seed=0)


def dim_of(name: str) -> int:
    return 64 if name == "digits" else ORACLES[name]["dim"]


def error(x, exact) -> dict:
    """Mean and RMS over the samples of the per-sample RMS distance to the exact endpoint."""
    d = ((x - exact) ** 2).reshape(x.shape[0], -1).mean(1).sqrt()
    return {"mean": float(d.mean()), "rmse": float((d ** 2).mean().sqrt())}


def draw(model, schedule, policy, sampler, steps, noise):
    return ltc.sample(model, schedule, policy, sampler=sampler, steps=steps, noise=noise, progress=False)


def plain_endpoint(model, schedule, N: int, spec: dict, noise, sampler: str):
    """The endpoints of a report's plain row ``spec`` of an LTC plan with ``sampler`` (whose N-step grid the
    points of an "ltc" row index)."""
    if spec["grid"] == "own":
        return draw(model, schedule, Full(), spec["sampler"], spec["steps"], noise)
    grid, p = get_sampler(sampler).grid(schedule, N), spec["points"]
    sub = ltc.Schedule.explicit(grid.t[p], grid.alpha[p], grid.sigma[p], family=grid.family)
    return draw(model, sub, Full(), spec["sampler"], None, noise)


def ratio(a: float, b: float) -> float | None:
    """``a / b``; 1 when both are 0 (a tie: finite data, samples on the data points), None when only b is."""
    if b > 0:
        return a / b
    return 1.0 if a == 0 else None


def verdict(accepted: bool, wins: bool) -> str:
    return ("true accept" if wins else "FALSE ACCEPT") if accepted else ("false refusal" if wins else "true refusal")


def run_case(model, schedule, sampler, N, cal_noise, held, exact) -> dict:
    plan = ltc.compile_plan(get_sampler(sampler).grid(schedule, N), get_sampler(sampler), LTC(), ["x0"])
    points = [i for i, m in enumerate(plan.models) if m >= 0] + [N]
    specs = {"plain_own": {"sampler": sampler, "grid": "own", "steps": plan.nfe},
             "plain_ltc_grid": {"sampler": sampler, "grid": "ltc", "points": points},
             "dpmpp_2m_own": {"sampler": "dpmpp_2m", "grid": "own", "steps": plan.nfe},
             "dpmpp_2m_ltc_grid": {"sampler": "dpmpp_2m", "grid": "ltc", "points": points}}
    plain = {"full": error(draw(model, schedule, Full(), sampler, N, held), exact)}
    plain.update({k: error(plain_endpoint(model, schedule, N, s, held, sampler), exact) for k, s in specs.items()})
    best = min(PLAIN, key=lambda k: plain[k]["mean"])
    case = {"N": N, "nfe": plan.nfe, "skips": LTC().extrapolated_steps(N), "plain": plain, "best_plain": best,
            "ltc": []}
    w1 = {}
    for objective, state in VARIANTS:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cal = ltc.calibrate(model, schedule, LTC(state=state), sampler=sampler, steps=N, noise=cal_noise,
                                    objective=objective, verbose=False)
        except ValueError as exc:  # a state the grid cannot extrapolate (e.g. x/alpha at alpha = 0)
            case["ltc"].append({"objective": objective, "state": state, "error": str(exc)})
            continue
        seconds = time.perf_counter() - t0
        fitted = cal.policy().replace(weights=[float(v) for v in cal.weights_fit])
        if state not in w1:
            w1[state] = error(draw(model, schedule, LTC(state=state), sampler, N, held), exact)
        calibrated = error(draw(model, schedule, fitted, sampler, N, held), exact)
        d = cal.report["decision"]
        chosen = w1[state] if d["weights"] == "w = 1" else calibrated
        r = ratio(chosen["mean"], plain[best]["mean"])
        case["ltc"].append({
            "objective": objective, "state": state, "calibrated": calibrated, "w1": w1[state],
            "weights_used": d["weights"], "chosen": chosen, "ratio_to_best_plain": r,
            "rmse_ratio_to_best_plain": ratio(chosen["rmse"], min(plain[k]["rmse"] for k in PLAIN)),
            "weights_fit": cal.weights_fit.tolist(), "weights_step": cal.weights_step.tolist(),
            "cost_calls": cal.cost["total"], "cost": cal.cost, "seconds": seconds,
            "fit": {k: v for k, v in cal.fit.items() if k not in ("clamp", "loss")},
            "decision": {k: d[k] for k in ("verdict", "accepted", "margin", "judge_bound", "lower", "upper",
                                           "ltc_mean", "best_plain_mean", "best_plain_name")},
            "verdict": verdict(d["accepted"], r is not None and r < 1.0)})
        case.setdefault("coherence", cal.coherence.tolist())
    return case


def run_auto(model, schedule, sampler, N, nfe, cal_noise, held, exact) -> dict:
    """``ltc.calibration.auto`` (step, x0, 2 candidates): its choice against every plain plan it evaluated,
    on the exact endpoints."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        choice = auto(model, schedule, steps=N, nfe=nfe, sampler=sampler, noise=cal_noise, candidates=2,
                      verbose=False)
    chosen = error(choice.sample(model, noise=held, progress=False), exact)
    plain = [error(plain_endpoint(model, schedule, N, p["spec"], held, sampler), exact)["mean"] for p in choice.plain]
    return {"accepted": choice.accepted, "chosen": chosen, "best_plain_evaluated": min(plain),
            "ratio_to_best_plain_evaluated": ratio(chosen["mean"], min(plain)), "plain_evaluated": len(plain),
            "cost_calls": choice.cost, "message": choice.message}


def phase_study(model, schedule, sampler, N, cal_noise, held, exact) -> dict:
    """Held-out exact error of the reference code's steps against ltc 0.1's (w = 1 and step-calibrated x0)."""
    out = {}
    for phase in ("reference", "interval"):
        policy = LTC(phase=phase)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cal = ltc.calibrate(model, schedule, policy, sampler=sampler, steps=N, noise=cal_noise, report=False,
                                verbose=False)
        out[phase] = {"skips": policy.extrapolated_steps(N),
                      "w1": error(draw(model, schedule, policy, sampler, N, held), exact),
                      "calibrated": error(draw(model, schedule, cal.policy(), sampler, N, held), exact)}
    return out


# -- history rules for multistep solvers after a skip (x state) --------------------------------
RULES = ("implied_first_order", "implied_own_multistep", "restart_first_order", "stale")
HISTORY_SETTINGS = [("vp-dpmpp_2m", ltc.Schedule.vp("scaled_linear", spacing="trailing"), "dpmpp_2m"),
                    ("vp-dpmpp_3m", ltc.Schedule.vp("scaled_linear", spacing="trailing"), "dpmpp_3m"),
                    ("flow-dpmpp_2m", ltc.Schedule.flow(1.0), "dpmpp_2m"),
                    ("flow3-dpmpp_2m", ltc.Schedule.flow(3.0), "dpmpp_2m")]


def history_walk(model, grid, sampler, skips, rule, noise, weights=None, clamp=(0.0, 10.0)):
    """A plain-torch LTC walk with a chosen history rule; fits one-step weights when ``weights`` is None.

    implied_first_order: D_i = (x_{i+1} - A x_i) / B0 with DDIM's (A, B0)  (the library's rule);
    implied_own_multistep: D_i = (x_{i+1} - A x_i - B1 D_{i-1} - B2 D_{i-2}) / B0 with the solver's row;
    restart_first_order: the solver restarts after a skip (orders 1, 2, ... from the next step);
    stale: D_i = D_{i-1}.
    """
    tables = {k: DPMSolverPP(k).table(grid) for k in (1, 2, 3)}
    tab = sampler.table(grid)
    A1, B01 = sampler.first_order(grid)
    s = grid.sigma
    x, xp, D, last_skip, fitted = noise.clone(), None, {}, -10, []
    for i in range(grid.steps):
        t = torch.full((x.shape[0],), grid.t[i], dtype=torch.float64)

        def true_step(x=x, t=t, i=i):
            order = int(tab.order[i])
            if rule == "restart_first_order":
                order = min(order, i - last_skip)
            row = tables[order] if rule == "restart_first_order" else tab
            d = model(x, t)
            nxt = row.A[i] * x + row.B0[i] * d
            if order >= 2:
                nxt = nxt + row.B1[i] * D[i - 1]
            if order >= 3:
                nxt = nxt + row.B2[i] * D[i - 2]
            return nxt, d

        if i in skips:
            k = skips.index(i)
            gamma = (s[i + 1] - s[i]) / (s[i] - s[i - 1])
            dirn = gamma * (x - xp)
            if weights is None:
                star, _ = true_step()
                w = float((dirn * (star - x)).sum() / (dirn * dirn).sum())
                w = min(max(w, clamp[0]), clamp[1])
                fitted.append(w)
            else:
                w = weights[k]
            nxt = x + w * dirn
            if rule == "implied_first_order":
                D[i] = (nxt - A1[i] * x) / B01[i]
            elif rule == "implied_own_multistep":
                acc = nxt - tab.A[i] * x
                if tab.order[i] >= 2:
                    acc = acc - tab.B1[i] * D[i - 1]
                if tab.order[i] >= 3:
                    acc = acc - tab.B2[i] * D[i - 2]
                D[i] = acc / tab.B0[i]
            else:
                D[i] = D[i - 1]
            last_skip = i
        else:
            nxt, D[i] = true_step()
        xp, x = x, nxt
    return x, fitted


def history_wins(history) -> dict:
    """Per rule: cases won (lowest calibrated held-out RMSE), and the geometric-mean and worst ratio
    of its RMSE to the case's best rule."""
    out = {r: {"wins": 0, "ratios": []} for r in RULES}
    for h in history:
        errs = {r: h[r]["calibrated"]["rmse"] for r in RULES}
        best = min(errs.values())
        out[min(errs, key=errs.get)]["wins"] += 1
        for r in RULES:
            out[r]["ratios"].append(errs[r] / best)
    return {r: {"wins": v["wins"], "geomean_ratio_to_best": float(np.exp(np.mean(np.log(v["ratios"])))),
                "worst_ratio_to_best": float(max(v["ratios"]))} for r, v in out.items()}


def history_study(model, schedule, sampler_name, N, cal_noise, held, exact) -> dict:
    sampler = get_sampler(sampler_name)
    grid = sampler.grid(schedule, N)
    skips = LTC().extrapolated_steps(N)
    out = {}
    for rule in RULES:
        _, w = history_walk(model, grid, sampler, skips, rule, cal_noise)
        x, _ = history_walk(model, grid, sampler, skips, rule, held, weights=w)
        x1, _ = history_walk(model, grid, sampler, skips, rule, held, weights=[1.0] * len(skips))
        out[rule] = {"calibrated": rmse(x, exact), "w1": rmse(x1, exact), "weights": w}
    # the library's walk must equal the first rule with the same weights
    lib = draw(model, schedule, LTC(state="x", weights=out["implied_first_order"]["weights"]), sampler_name, N,
               held)
    mine, _ = history_walk(model, grid, sampler, skips, "implied_first_order", held,
                           weights=out["implied_first_order"]["weights"])
    out["library_matches_first_rule"] = float((lib - mine).abs().max())
    return out




def rmse(x, exact) -> dict:
    return {"rmse": float(((x - exact) ** 2).mean().sqrt())}


def history_run(args) -> dict:
    """The history-rule study (``--history``): gmm and digits (d = 64), N in {10, 20, 50}."""
    noises, exact_cache, history = {}, {}, []
    for oracle_name in ("gmm", "digits"):
        cal_noise, held = noise_pair(noises, 64, args)
        for name, schedule, sampler in HISTORY_SETTINGS:
            model = oracle(oracle_name, schedule)
            for N in (10, 20, 50):
                exact, _ = exact_for(exact_cache, oracle_name, model, schedule, N, held, args.rk4, sampler)
                h = history_study(model, schedule, sampler, N, cal_noise, held, exact)
                history.append({"oracle": oracle_name, "setting": name, "N": N, **h})
                print("history rules", oracle_name, name, N, {r: round(h[r]["calibrated"]["rmse"], 4) for r in RULES},
                      flush=True)
    return {"history_rules": history, "history_rule_wins": history_wins(history)}



def noise_pair(cache: dict, dim: int, args) -> tuple:
    """``(calibration noises, exact-comparison noises)`` of dimension ``dim``, the same for every oracle."""
    if dim not in cache:
        g = torch.Generator().manual_seed(1234 + dim)
        cache[dim] = (torch.randn(args.calibration, dim, generator=g, dtype=torch.float64),
                      torch.randn(args.held_out, dim, generator=g, dtype=torch.float64))
    return cache[dim]


def exact_for(cache: dict, oracle_name, model, schedule, N: int, held, steps: int, sampler: str):
    """``(exact endpoint, RMS change from steps // 2)`` from ``held`` over the ends of ``sampler``'s N-step
    grid (cached: "trailing" and flow grids share their ends for every N, "leading" grids do not)."""
    grid = get_sampler(sampler).grid(schedule, N)
    key = (oracle_name, repr(schedule), float(grid.t[0]), float(grid.t[-1]))
    if key not in cache:
        fine = exact_endpoint(model, held, grid, steps=steps)
        coarse = exact_endpoint(model, held, grid, steps=steps // 2)
        cache[key] = (fine, float(((fine - coarse) ** 2).mean().sqrt()))
    return cache[key]


def machine() -> dict:
    import os
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "ltc": ltc.__version__, "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg()[0]}


# -- tallies and tables -------------------------------------------------------------------------
def entries(data: dict):
    """``(result, case, ltc entry)`` of every calibration that ran."""
    return [(r, c, e) for r in data["results"] for c in r["cases"] for e in c["ltc"] if "verdict" in e]


def confusion(items) -> dict:
    v = [e["verdict"] for *_, e in items]
    out = {k: v.count(k) for k in ("true accept", "FALSE ACCEPT", "true refusal", "false refusal")}
    accepts = out["true accept"] + out["FALSE ACCEPT"]
    worst = max((np.inf if e["ratio_to_best_plain"] is None else e["ratio_to_best_plain"]
                 for *_, e in items if e["verdict"] == "FALSE ACCEPT"), default=None)
    out.update({"accepts": accepts, "false_accept_share": out["FALSE ACCEPT"] / accepts if accepts else 0.0,
                "worst_false_accept_ratio": worst})
    return out


def tallies(data: dict) -> dict:
    items = entries(data)
    groups = {"all": items}
    for g in dict.fromkeys(r["group"] for r, *_ in items):
        groups[g] = [i for i in items if i[0]["group"] == g]
    for obj, state in VARIANTS:
        groups[f"{obj} {state}"] = [i for i in items if (i[2]["objective"], i[2]["state"]) == (obj, state)]
    return {k: confusion(v) for k, v in groups.items() if v}


def cell(c: dict) -> str:
    worst = "" if c["worst_false_accept_ratio"] is None else f"{c['worst_false_accept_ratio']:.3f}"
    return (f"{c['true accept']} | {c['FALSE ACCEPT']} | {c['true refusal']} | {c['false refusal']} | "
            f"{100 * c['false_accept_share']:.1f}% | {worst or '-'}")


def describe(data: dict) -> str:
    """The paragraph above the tables of bench/README.md."""
    a = data["args"]
    minutes = data["seconds"] / 60
    load = data["machine"].get("load_average_at_start")
    return (f"Every calibration fits on the first {a['calibration'] // 2} of {a['calibration']} calibration noises and "
            f"the refusal rule judges it on the other {a['calibration'] // 2} (teacher ladder DPM-Solver++(3M) 4N / "
            "(2M) 4N / (2M) 2N, paired bootstrap of the margin net of the judge's bound, "
            "`ltc/calibration/report.py`); the truth is the mean per-sample RMS distance to the exact ODE endpoint "
            f"(RK4, {a['rk4']} steps) on {a['held_out']} other noises, float64.  A decision is a true accept when "
            "the LTC plan it chose (calibrated weights or w = 1) is closer to the exact endpoints than the best plain "
            "row at equal NFE (the sampler and DPM-Solver++(2M), on their own grid and on the grid LTC evaluates), a "
            "false accept when it is not (ratio: LTC / best plain).  `gmm` = 8-component Gaussian mixture (std 0.3, "
            "d = 64), `gmm16` = 4 components, std 0.1, d = 16, `gmm256` = 8 components, std 0.5, d = 256, `digits` = "
            "posterior mean of the 1500 zoo training digits (d = 64); `vp` scaled-linear and `vpcos` cosine with "
            "trailing spacing, `vplead` scaled-linear with leading spacing, `flow` unshifted, `flow3` shift 3; LTC "
            "with the reference code's steps (odd i above N/4).  Group `bench`: the settings of ltc 0.1's "
            f"benchmark; `unseen`: settings it never used.  Command: `{data['command']}` ({minutes:.0f} min on one "
            f"thread{'' if load is None else f', load average {load:.1f} at the start'}).")


def markdown(data: dict) -> str:
    """The per-case table: exact mean error of the best plain row and of each variant's chosen LTC plan
    on held-out noises; the verdict letter: A = accepted (true), F = FALSE accept, r = refused
    (true), m = missed (false refusal)."""
    letter = {"true accept": "A", "FALSE ACCEPT": "F", "true refusal": "r", "false refusal": "m"}
    head = ["oracle", "setting", "N", "NFE", "full N", "best plain at NFE"] + [f"{o} {s}" for o, s in VARIANTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in data["results"]:
        for c in r["cases"]:
            v = {(e["objective"], e["state"]): e for e in c["ltc"]}
            cells = []
            for key in VARIANTS:
                e = v.get(key)
                cells.append("n/a" if e is None or "verdict" not in e else
                             f"{e['chosen']['mean']:.4f}{' (w=1)' if e['weights_used'] == 'w = 1' else ''} "
                             f"{letter[e['verdict']]}")
            p = c["plain"]
            lines.append(f"| {r['oracle']} | {r['setting']} | {c['N']} | {c['nfe']} | {p['full']['mean']:.4f} | "
                         f"{p[c['best_plain']]['mean']:.4f} ({c['best_plain']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(data: dict) -> str:
    """The confusion table, the auto and skip-rule results and the cost, from the results file."""
    t = data["tallies"]
    lines = ["| calibrations | true accepts | FALSE accepts | true refusals | false refusals | false accepts / accepts "
             "| worst false-accept ratio |", "|---|---|---|---|---|---|---|"]
    for k, c in t.items():
        n = sum(c[v] for v in ("true accept", "FALSE ACCEPT", "true refusal", "false refusal"))
        lines.append(f"| {k} ({n}) | {cell(c)} |")
    lines += ["", "Geometric mean over the cases of the exact error / the best plain row's at equal NFE (below 1: LTC "
              "wins on average), whatever the decision:", "",
              "| state | step objective | trajectory objective | w = 1 |", "|---|---|---|---|"]
    for state in ("x", "x/alpha", "x0"):
        cells = []
        for key in (("step", "calibrated"), ("trajectory", "calibrated"), ("step", "w1")):
            r = [ratio(e[key[1]]["mean"], c["plain"][c["best_plain"]]["mean"]) for _, c, e in entries(data)
                 if (e["objective"], e["state"]) == (key[0], state)]
            r = [v for v in r if v]  # a ratio is undefined (None) or 0 only where the best plain row is exact
            cells.append(f"{np.exp(np.mean(np.log(r))):.2f} ({len(r)})" if r else "n/a")
        lines.append(f"| {state} | " + " | ".join(cells) + " |")
    a = data["auto"]
    ratios = [np.inf if x["ratio_to_best_plain_evaluated"] is None else x["ratio_to_best_plain_evaluated"] for x in a]
    finite = [v for v in ratios if 0 < v < np.inf]
    lines += ["", f"`ltc.calibration.auto` (step, x0, 2 candidates) in {len(a)} cases: LTC in "
              f"{sum(x['accepted'] for x in a)}, plain in {sum(not x['accepted'] for x in a)}; exact error of its "
              f"choice / best plain plan it evaluated: worst {max(ratios):.3f}, geometric mean "
              f"{np.exp(np.mean(np.log(finite))):.3f}, above 1.05 in {sum(v > 1.05 for v in ratios)}."]
    ph = data["phase_study"]
    lines += ["", "Skip rule where the reference code's steps differ from ltc 0.1's (floor(N/4) odd); exact mean "
              "error on held-out noises, state x0:", "", "| oracle | setting | N | reference w=1 | ltc 0.1 w=1 | "
              "reference calibrated | ltc 0.1 calibrated |", "|---|---|---|---|---|---|---|"]
    for p in ph:
        r, i = p["reference"], p["interval"]
        lines.append(f"| {p['oracle']} | {p['setting']} | {p['N']} | {r['w1']['mean']:.4f} | {i['w1']['mean']:.4f} | "
                     f"{r['calibrated']['mean']:.4f} | {i['calibrated']['mean']:.4f} |")
    better = sum(p["reference"]["calibrated"]["mean"] < p["interval"]["calibrated"]["mean"] for p in ph)
    lines += ["", f"Reference steps better (calibrated) in {better} of {len(ph)}."]
    if "history_rule_wins" in data:
        wins = data["history_rule_wins"]
        lines += ["", f"History rule of a multistep solver after a skip, {len(data['history_rules'])} cases "
                  "(`implied_first_order` is the library's; `--history`, see `history_walk`):", "",
                  "| rule | cases won | geometric-mean ratio to the best rule | worst ratio |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['wins']} | {v['geomean_ratio_to_best']:.2f} | {v['worst_ratio_to_best']:.2f} |"
                  for k, v in wins.items()]
    calls = {}
    for *_, e in entries(data):
        calls.setdefault(e["objective"], []).append(e["cost_calls"])
    lines += ["", "Calibration cost in model calls (fit and report): "
              + "; ".join(f"{k} objective {min(v)}-{max(v)}" for k, v in calls.items()) + "."]
    return "\n".join(lines)


def print_case(oracle_name, setting, case):
    p = case["plain"]
    print(f"{oracle_name:6s} {setting:14s} N={case['N']:3d} nfe={case['nfe']:3d} full {p['full']['mean']:.4f} "
          f"best plain {p[case['best_plain']]['mean']:.4f} ({case['best_plain']})", flush=True)
    for v in case["ltc"]:
        if "error" in v:
            print(f"      {v['objective']:10s} {v['state']:8s} n/a: {v['error'][:80]}")
            continue
        d = v["decision"]
        print(f"      {v['objective']:10s} {v['state']:8s} ltc {v['chosen']['mean']:.4f} ({v['weights_used']}) "
              f"ratio {v['ratio_to_best_plain']} {d['verdict']:14s} -> {v['verdict']}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="gmm16 on three settings, N in {10, 20}; prints only")
    parser.add_argument("--calibration", type=int, default=64, help="calibration noises (half fit, half judged)")
    parser.add_argument("--held-out", type=int, default=256, help="noises of the exact comparison")
    parser.add_argument("--rk4", type=int, default=300, help="RK4 steps of the exact endpoint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="print the tables from the results file")
    parser.add_argument("--history", action="store_true", help="run the history-rule study into the results file")
    parser.add_argument("--resume", action="store_true", help=f"skip the cases done by an interrupted run ({PARTIAL})")
    args = parser.parse_args(argv)
    if args.table:
        data = json.loads(RESULT.read_text())
        print(markdown(data))
        print()
        print(summary(data))
        return
    if args.quick:
        args.calibration, args.held_out, args.rk4 = 32, 64, 200
    torch.set_num_threads(args.threads)
    if args.history:
        data = json.loads(RESULT.read_text())
        data.update(history_run(args))
        RESULT.write_text(json.dumps(data, indent=1))
        print("history rule wins:", data["history_rule_wins"], "\nwrote", RESULT)
        return
    started, noises, exact_cache = time.perf_counter(), {}, {}
    same = {k: v for k, v in vars(args).items() if k not in ("resume", "history")}
    state = {"args": same, "machine": machine(), "seconds": 0.0, "results": [], "auto": [], "phase_study": []}
    if args.resume and PARTIAL.is_file() and json.loads(PARTIAL.read_text())["args"] == same:
        state = json.loads(PARTIAL.read_text())
    results, autos, phases = state["results"], state["auto"], state["phase_study"]
    done = {(a["oracle"], a["setting"], a["N"]) for a in autos}
    for oracle_name, setting, N, group in cases(args.quick):
        if (oracle_name, setting, N) in done:
            continue
        dim = dim_of(oracle_name)
        cal_noise, held = noise_pair(noises, dim, args)
        schedule, sampler = settings()[setting]
        model = oracle(oracle_name, schedule)
        exact, convergence = exact_for(exact_cache, oracle_name, model, schedule, N, held, args.rk4, sampler)
        case = run_case(model, schedule, sampler, N, cal_noise, held, exact)
        case["group"] = group
        print_case(oracle_name, setting, case)
        a = run_auto(model, schedule, sampler, N, case["nfe"], cal_noise, held, exact)
        print(f"      auto: {'LTC' if a['accepted'] else 'plain'} ratio to the best plain evaluated "
              f"{a['ratio_to_best_plain_evaluated']}", flush=True)
        phase = phase_study(model, schedule, sampler, N, cal_noise, held, exact) \
            if N // 4 % 2 == 1 and oracle_name != "digits" else None
        entry = next((r for r in results if (r["oracle"], r["setting"]) == (oracle_name, setting)), None)
        if entry is None:
            entry = {"oracle": oracle_name, "setting": setting, "group": group, "schedule": repr(schedule),
                     "sampler": sampler, "dim": dim, "exact_convergence_rms": {}, "cases": []}
            results.append(entry)
        entry["exact_convergence_rms"][str(N)] = convergence
        entry["cases"].append(case)
        autos.append({"oracle": oracle_name, "setting": setting, "N": N, **a})
        if phase is not None:
            phases.append({"oracle": oracle_name, "setting": setting, "N": N, **phase})
        state["seconds"] += time.perf_counter() - started
        started = time.perf_counter()
        PARTIAL.write_text(json.dumps(state))
    if not args.quick:  # the skip rules also at N = 22 and 30 (floor(N/4) odd), d = 256 and 64
        for oracle_name, setting in (("gmm256", "flow3-euler"), ("gmm256", "vp-dpmpp_2m"), ("gmm", "flow3-euler")):
            schedule, sampler = settings()[setting]
            model = oracle(oracle_name, schedule)
            cal_noise, held = noise_pair(noises, dim_of(oracle_name), args)
            for N in (22, 30):
                exact, _ = exact_for(exact_cache, oracle_name, model, schedule, N, held, args.rk4, sampler)
                phases.append({"oracle": oracle_name, "setting": setting, "N": N,
                               **phase_study(model, schedule, sampler, N, cal_noise, held, exact)})
    out = {"machine": state["machine"], "args": same, "seconds": state["seconds"] + time.perf_counter() - started,
           "command": "python bench/ltc_evidence.py" + (" --quick" if args.quick else ""),
           "results": results, "auto": autos, "phase_study": phases}
    out["tallies"] = tallies(out)
    print(summary(out))
    if not args.quick:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(out, indent=1))
        PARTIAL.unlink(missing_ok=True)  # a finished run leaves nothing to resume
        print("wrote", RESULT)


if __name__ == "__main__":
    main()
