"""LTC-Accel evidence on exact oracles: endpoint RMSE against the exact ODE endpoint, held-out noise.

Oracles (float64, d = 64): a Gaussian mixture (8 components, std 0.3) and the posterior-mean
denoiser of the 1500 training digits of the zoo data set (8x8 pixels scaled to [-1, 1]).
Settings: VP scaled-linear ("trailing" spacing, so every N starts at t = 999 and one exact endpoint
serves all N) + DDIM, VP + DPM-Solver++(2M), flow unshifted + Euler, flow shift 3 + Euler; N in
{10, 20, 50}; LTC with the reference structure (interval N/4..end, every second step).

For every case, on held-out noises (not used for calibration), endpoint RMSE against the exact
endpoint (RK4, convergence checked at two resolutions) of:
(a) the full N steps; (b) the same sampler with the LTC NFE (own grid, and on the grid LTC
evaluates); (c) DPM-Solver++(2M) with the LTC NFE (both grids); (d) LTC calibrated with each
objective (step, trajectory) and state (x, x/alpha, x0); (e) LTC with w = 1; with the calibration
cost in model calls, the refusal decision (judged against the DPM-Solver++(2M) 2N teacher on the
calibration noises), and whether that decision was right on held-out noise against the exact
endpoint (median per-sample distance vs the best plain row).  Also the fitted weights and the
coherence curves, and a comparison of history rules for multistep solvers after a skip
(DPM-Solver++ 2M/3M, x state, one-step weights fitted per rule; see :func:`history_walk`).

    python bench/ltc_evidence.py            # writes bench/results/ltc_evidence.json (~15 min, 1 thread)
    python bench/ltc_evidence.py --quick    # small smoke run, prints only
    python bench/ltc_evidence.py --table    # the table and summary of bench/README.md, from the results file
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import ltc
from ltc.zoo.oracles import EmpiricalData, GaussianMixture, exact_endpoint
from ltc.policies import LTC, Full
from ltc.samplers import DPMSolverPP, get_sampler

RESULT = Path(__file__).parent / "results" / "ltc_evidence.json"
VARIANTS = [(obj, state) for obj in ("step", "trajectory") for state in ("x", "x/alpha", "x0")]


def settings():
    vp = ltc.Schedule.vp("scaled_linear", spacing="trailing")
    return {"vp-ddim": (vp, "ddim"), "vp-dpmpp_2m": (vp, "dpmpp_2m"),
            "flow-euler": (ltc.Schedule.flow(1.0), "euler"), "flow3-euler": (ltc.Schedule.flow(3.0), "euler")}


def oracle(name: str, schedule, dim: int):
    if name == "gmm":
        return GaussianMixture.random(schedule, dim=dim, components=8, std=0.3, seed=0)
    from ltc.zoo import raw_digits
    images, _ = raw_digits("train")
    return EmpiricalData(images.reshape(len(images), -1).to(torch.float64) / 8.0 - 1.0, schedule)


def per_sample(x, ref):
    return ((x - ref) ** 2).reshape(x.shape[0], -1).mean(1).sqrt()


def errors(x, exact) -> dict:
    d = per_sample(x, exact)
    return {"rmse": float(((x - exact) ** 2).mean().sqrt()), "median": float(d.median())}


def exact_for(model, noise, grid, steps: int) -> tuple[torch.Tensor, float]:
    """Exact endpoint with RK4 at ``steps`` and the RMS change from ``steps // 2`` (convergence)."""
    fine = exact_endpoint(model, noise, grid, steps=steps)
    coarse = exact_endpoint(model, noise, grid, steps=steps // 2)
    return fine, float(((fine - coarse) ** 2).mean().sqrt())


def draw(model, schedule, policy, sampler, steps, noise):
    return ltc.sample(model, schedule, policy, sampler=sampler, steps=steps, noise=noise, progress=False)


def plain_rows(model, schedule, sampler, N, nfe, points, noise, exact) -> dict:
    grid = schedule.discretize(N)
    sub = ltc.Schedule.explicit(grid.t[points], grid.alpha[points], grid.sigma[points], family=grid.family)
    rows = {"full": errors(draw(model, schedule, Full(), sampler, N, noise), exact),
            "plain_own": errors(draw(model, schedule, Full(), sampler, nfe, noise), exact),
            "plain_ltc_grid": errors(draw(model, sub, Full(), sampler, None, noise), exact),
            "dpmpp_2m_own": errors(draw(model, schedule, Full(), "dpmpp_2m", nfe, noise), exact),
            "dpmpp_2m_ltc_grid": errors(draw(model, sub, Full(), "dpmpp_2m", None, noise), exact)}
    return rows


def run_case(model, schedule, sampler, N, cal_noise, held, exact) -> dict:
    policy = LTC()
    plan = ltc.compile_plan(schedule.discretize(N), get_sampler(sampler), policy, ["x0"])
    points = [i for i, m in enumerate(plan.models) if m >= 0] + [N]
    case = {"N": N, "nfe": plan.nfe, "skips": policy.extrapolated_steps(N),
            "plain": plain_rows(model, schedule, sampler, N, plan.nfe, points, held, exact), "ltc": []}
    best_plain = min(v["median"] for k, v in case["plain"].items() if k != "full")
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
        x = draw(model, schedule, cal.policy(), sampler, N, held)
        x1 = draw(model, schedule, LTC(state=state), sampler, N, held)
        err = errors(x, exact)
        d = cal.report["decision"]
        wins = err["median"] < best_plain
        case["ltc"].append({
            "objective": objective, "state": state, "calibrated": err, "w1": errors(x1, exact),
            "weights": cal.weights.tolist(), "weights_step": cal.weights_step.tolist(),
            "w_std": cal.w_std.tolist(), "residual": cal.residual.tolist(),
            "cost_calls": cal.cost["total"], "cost": cal.cost, "seconds": seconds,
            "fit": {k: v for k, v in cal.fit.items() if k != "clamp"},
            "accepted": d["accepted"], "teacher_ltc_median": d["ltc_median"],
            "teacher_best_plain_median": d["best_plain_median"], "teacher_best_plain": d["best_plain_name"],
            "beats_best_plain_on_exact": bool(wins),
            "verdict": ("correct accept" if d["accepted"] and wins else "FALSE ACCEPT" if d["accepted"]
                        else "correct refusal" if not wins else "false refusal")})
        case.setdefault("coherence", cal.coherence.tolist())
    return case


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
    grid, sampler = schedule.discretize(N), get_sampler(sampler_name)
    skips = LTC().extrapolated_steps(N)
    out = {}
    for rule in RULES:
        _, w = history_walk(model, grid, sampler, skips, rule, cal_noise)
        x, _ = history_walk(model, grid, sampler, skips, rule, held, weights=w)
        x1, _ = history_walk(model, grid, sampler, skips, rule, held, weights=[1.0] * len(skips))
        out[rule] = {"calibrated": errors(x, exact), "w1": errors(x1, exact), "weights": w}
    # the library's walk must equal the first rule with the same weights
    lib = draw(model, schedule, LTC(state="x", weights=out["implied_first_order"]["weights"]), sampler_name, N,
               held)
    mine, _ = history_walk(model, grid, sampler, skips, "implied_first_order", held,
                           weights=out["implied_first_order"]["weights"])
    out["library_matches_first_rule"] = float((lib - mine).abs().max())
    return out


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "ltc": ltc.__version__}


def tally(results) -> dict:
    verdicts = [v["verdict"] for r in results for c in r["cases"] for v in c["ltc"] if "verdict" in v]
    return {v: verdicts.count(v) for v in ("correct accept", "FALSE ACCEPT", "correct refusal", "false refusal")}


def print_case(oracle_name, setting, case):
    p = case["plain"]
    best_plain = min((v["rmse"], k) for k, v in p.items() if k != "full")
    print(f"{oracle_name:5s} {setting:12s} N={case['N']:3d} nfe={case['nfe']:3d}  full {p['full']['rmse']:.4f}  "
          f"plain {p['plain_own']['rmse']:.4f}/{p['plain_ltc_grid']['rmse']:.4f}  dpm2m "
          f"{p['dpmpp_2m_own']['rmse']:.4f}/{p['dpmpp_2m_ltc_grid']['rmse']:.4f}  (best plain {best_plain[1]})")
    for v in case["ltc"]:
        if "error" in v:
            print(f"      {v['objective']:10s} {v['state']:8s} n/a: {v['error'][:80]}")
            continue
        print(f"      {v['objective']:10s} {v['state']:8s} ltc {v['calibrated']['rmse']:.4f}  w=1 "
              f"{v['w1']['rmse']:.4f}  calls {v['cost_calls']:5d}  {v['verdict']}")


PLAIN_NAMES = {"plain_own": "same sampler", "plain_ltc_grid": "same sampler, LTC grid",
               "dpmpp_2m_own": "DPM++2M", "dpmpp_2m_ltc_grid": "DPM++2M, LTC grid"}


def markdown(data: dict) -> str:
    """The evidence table of bench/README.md: held-out endpoint RMSE against the exact endpoint; bold:
    below the best plain sampler at equal NFE; †: accepted by the refusal rule (judged on the
    calibration noises)."""
    lines = ["| oracle | setting | N | NFE | full N | best plain at NFE | LTC step x | LTC step x0 | LTC traj x | "
             "LTC traj x0 | LTC w=1 x0 | calls step / traj (x0) |", "|" + "---|" * 12]
    for r in data["results"]:
        for c in r["cases"]:
            p = c["plain"]
            best = min((k for k in p if k != "full"), key=lambda k: p[k]["rmse"])
            v = {(e["objective"], e["state"]): e for e in c["ltc"]}

            def cell(o, s):
                e = v[(o, s)]
                mark = "**" if e["calibrated"]["rmse"] < p[best]["rmse"] else ""
                return f"{mark}{e['calibrated']['rmse']:.4f}{mark}{' †' if e['accepted'] else ''}"
            lines.append(f"| {r['oracle']} | {r['setting']} | {c['N']} | {c['nfe']} | {p['full']['rmse']:.4f} | "
                         f"{p[best]['rmse']:.4f} ({PLAIN_NAMES[best]}) | {cell('step', 'x')} | {cell('step', 'x0')} | "
                         f"{cell('trajectory', 'x')} | {cell('trajectory', 'x0')} | {v[('step', 'x0')]['w1']['rmse']:.4f} | "
                         f"{v[('step', 'x0')]['cost_calls']} / {v[('trajectory', 'x0')]['cost_calls']} |")
    return "\n".join(lines)


def summary(data: dict) -> str:
    """What the table adds up to, computed from the results file: the refusal rule's verdicts, the
    geometric mean of each state's RMSE over the best plain sampler, the history rules, the cost."""
    verdicts = [(r["oracle"], r["setting"], c["N"], e) for r in data["results"] for c in r["cases"]
                for e in c["ltc"] if "verdict" in e]
    t = data["refusal_tally"]
    lines = [f"- **Refusal rule** over all {len(verdicts)} calibrations: {t['correct accept']} correct accepts, "
             f"{t['correct refusal']} correct refusals, {t['FALSE ACCEPT']} false accepts, {t['false refusal']} "
             "false refusals (judged on held-out noise against the exact endpoint)."]
    for oracle_name in dict.fromkeys(o for o, *_ in verdicts):
        mine = [e for o, _, _, e in verdicts if o == oracle_name]
        lines.append(f"- `{oracle_name}`: {sum(e['accepted'] for e in mine)} of {len(mine)} calibrations accepted.")
    false = [f"{o} {s} N={n} {e['objective']} {e['state']}" for o, s, n, e in verdicts if e["verdict"] == "FALSE ACCEPT"]
    if false:
        lines.append("- False accepts: " + "; ".join(false) + ".")
    ratios: dict = {}
    for r in data["results"]:
        for c in r["cases"]:
            p = c["plain"]
            best = min(v["rmse"] for k, v in p.items() if k != "full")
            for e in c["ltc"]:
                if "calibrated" in e:
                    ratios.setdefault((e["state"], e["objective"]), []).append(e["calibrated"]["rmse"] / best)
                    if e["objective"] == "step":
                        ratios.setdefault((e["state"], "w = 1"), []).append(e["w1"]["rmse"] / best)
    cases = len(ratios[("x0", "step")])
    lines += ["", f"Geometric mean over the {cases} cases of held-out RMSE / best plain sampler at equal NFE "
              "(below 1: LTC wins on average):", "", "| state | step objective | trajectory objective | w = 1 |",
              "|---|---|---|---|"]
    for state in dict.fromkeys(s for s, _ in ratios):
        cells = [f"{np.exp(np.mean(np.log(ratios[(state, o)]))):.2f}" if (state, o) in ratios else "n/a"
                 for o in ("step", "trajectory", "w = 1")]
        lines.append(f"| {state} | " + " | ".join(cells) + " |")
    wins = data["history_rule_wins"]
    lines += ["", f"History rule of a multistep solver after a skip, {len(data['history_rules'])} cases "
              "(`implied_first_order` is the library's; see `history_walk`):", "",
              "| rule | cases won | geometric-mean ratio to the best rule | worst ratio |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['wins']} | {v['geomean_ratio_to_best']:.2f} | {v['worst_ratio_to_best']:.2f} |"
              for k, v in wins.items()]
    calls = {}
    for *_, e in verdicts:
        calls.setdefault(e["objective"], []).append(e["cost_calls"])
    lines += ["", "Calibration cost in model calls (report included): "
              + "; ".join(f"{k} objective {min(v)}-{max(v)}" for k, v in calls.items()) + "."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small dims and batches, N in {10, 20}; prints only")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--calibration", type=int, default=64, help="calibration noises")
    parser.add_argument("--held-out", type=int, default=256, help="held-out noises")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--rk4", type=int, default=2000, help="RK4 steps of the exact endpoint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="print the evidence table and summary from the results file")
    args = parser.parse_args(argv)
    if args.table:
        data = json.loads(RESULT.read_text())
        print(markdown(data))
        print()
        print(summary(data))
        return
    if args.quick:
        args.dim, args.calibration, args.held_out, args.steps, args.rk4 = 16, 16, 32, [10, 20], 400
    torch.set_num_threads(args.threads)
    oracles = ["gmm"] if args.quick else ["gmm", "digits"]
    g = torch.Generator().manual_seed(1234)
    results, history, started = [], [], time.perf_counter()
    for oracle_name in oracles:
        dim = args.dim if oracle_name == "gmm" else 64
        cal_noise = torch.randn(args.calibration, dim, generator=g, dtype=torch.float64)
        held = torch.randn(args.held_out, dim, generator=g, dtype=torch.float64)
        exact_cache = {}
        for setting, (schedule, sampler) in settings().items():
            model = oracle(oracle_name, schedule, dim)
            key = repr(schedule)
            if key not in exact_cache:
                exact_cache[key] = exact_for(model, held, schedule.discretize(args.steps[0]), args.rk4)
            exact, convergence = exact_cache[key]
            entry = {"oracle": oracle_name, "setting": setting, "schedule": repr(schedule), "sampler": sampler,
                     "exact_convergence_rms": convergence, "cases": []}
            for N in args.steps:
                case = run_case(model, schedule, sampler, N, cal_noise, held, exact)
                entry["cases"].append(case)
                print_case(oracle_name, setting, case)
            results.append(entry)
        for name, schedule, sampler in HISTORY_SETTINGS:
            model = oracle(oracle_name, schedule, dim)
            key = repr(schedule)
            if key not in exact_cache:
                exact_cache[key] = exact_for(model, held, schedule.discretize(args.steps[0]), args.rk4)
            for N in args.steps:
                h = history_study(model, schedule, sampler, N, cal_noise, held, exact_cache[key][0])
                history.append({"oracle": oracle_name, "setting": name, "N": N, **h})
                print("history rules", oracle_name, name, N,
                      {r: round(h[r]["calibrated"]["rmse"], 4) for r in RULES})
    out = {"machine": machine(), "args": vars(args), "seconds": time.perf_counter() - started,
           "results": results, "refusal_tally": tally(results), "history_rules": history,
           "history_rule_wins": history_wins(history)}
    print("refusal rule:", out["refusal_tally"])
    print("history rule wins (lowest calibrated held-out RMSE per case):", out["history_rule_wins"])
    if not args.quick:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(out, indent=1))
        print("wrote", RESULT)


if __name__ == "__main__":
    main()
