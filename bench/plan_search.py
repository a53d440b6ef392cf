"""Plan search evidence: ``ltc.optimize`` against the best hand-designed plans, on exact oracles and a zoo model.

Oracles (exact endpoints): ``gmm`` (8 components, std 0.3, d = 64), ``gmm16`` (4, std 0.1, d = 16),
``gmm256`` (8, std 0.5, d = 256) x schedules VP scaled-linear "trailing" (eps prediction), flow
(shift 1) and flow shift 3 (flow prediction) x NFE 4, 6, 8, 10, 16.  ``ltc.optimize`` runs with its
defaults (DPM-Solver++ 2M/3M and UniPC-2M, LTC, max_calls = 100 NFE) on 64 noises (32 fit, 32
judged); every plan is then measured on 128 *other* noises against the exact endpoint (RK4 in
log-SNR, 300 steps, :func:`ltc.zoo.oracles.exact_endpoint`, to the log-SNR of the least noisy model
time -- training step 0 of the vp table, where every grid's last step takes the model's clean
estimate -- then that estimate) by the mean per-sample RMS distance:
the best hand grid of each sampler (every hand grid the search knows, chosen by this exact error:
the hardest baseline), LTC on a hand grid, the optimised grid alone (the better sampler), the
optimised grid + LTC, and the plan the search ships (an optimised one if the judge accepted it, else
its best plain row).  ``ratio``: best hand / shipped (> 1: the search gained); ``ratio_median``: the
same for the median per-sample distance (the mean of a sharp mixture, gmm16, is dominated by the few
noises that land in another mode than the exact flow's).

Zoo (``--zoo``; ``--zoo-models``, default ``unet_small``): guidance 2, labels cycling 0..9, NFE 4, 6, 8, 10, 16: the same
search on 64 noises, then 500 samples of each row and their Frechet distance to the held-out digits
with 95% bootstrap intervals (:mod:`ltc.zoo.distance`), and the difference to the best hand plan.

    python bench/plan_search.py            # oracles: writes bench/results/plan_search.json (~5 min, 1 thread)
    python bench/plan_search.py --zoo --zoo-models unet_small unet_large   # adds the zoo rows (~30 min)
    python bench/plan_search.py --quick    # small smoke run, prints only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import ltc
from ltc import zoo
from ltc.plan_search.result import sampler_from_config
from ltc.plan_search.space import GridSpace, hand_grids
from ltc.samplers import DPMSolverPP
from ltc.zoo import distance as D
from ltc.zoo.oracles import GaussianMixture, exact_endpoint

RESULT = Path(__file__).parent / "results" / "plan_search.json"
ORACLES = {"gmm": {"dim": 64, "components": 8, "std": 0.3}, "gmm16": {"dim": 16, "components": 4, "std": 0.1},
           "gmm256": {"dim": 256, "components": 8, "std": 0.5}}
SCHEDULES = {"vp": (lambda: ltc.Schedule.vp("scaled_linear", spacing="trailing"), "eps"),
             "flow": (lambda: ltc.Schedule.flow(1.0), "flow"), "flow3": (lambda: ltc.Schedule.flow(3.0), "flow")}
NFES = (4, 6, 8, 10, 16)
ZOO_NFES = (4, 6, 8, 10, 16)


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "ltc": ltc.__version__, "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg()[0]}


def noise(n: int, shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def run_row(model, res, r, x, **kw) -> torch.Tensor:
    return ltc.sample(model, res.schedule_of(r["grid"]), r["policy"], sampler=r["sampler"], steps=None, noise=x,
                      progress=False, **kw)


def least_noisy_lambda(schedule, nfe: int) -> float:
    """log-SNR of the least noisy model time a grid of the search can reach (the vp training step 0; 12 where
    sigma -> 0 is a model time, flow): a sampler's last step to sigma = 0 returns the model's clean estimate
    there, so the exact endpoint of its problem is the ODE solved to that lambda, then the clean estimate."""
    space = GridSpace(schedule, DPMSolverPP(2).grid(schedule, nfe), nfe)
    alpha, sigma = (float(v) for v in schedule.noise_at(torch.tensor([space.t_lo], dtype=torch.float64)))
    return float(np.log(alpha / sigma)) if sigma > 0 else 12.0


def hand_rows(res, schedule) -> list[dict]:
    """Every hand grid of every sampler the search screened (not only the judged ones), as runnable rows."""
    anchor = DPMSolverPP(2).grid(schedule, res.nfe)
    out = []
    for e in res.report["screening"]:
        smp = sampler_from_config(e["config"])
        grid = hand_grids(GridSpace(schedule, anchor, res.nfe, res.times), [smp.grid_rule])[e["grid"]]
        out.append({"name": f"{e['sampler']}, {e['grid']} grid", "kind": "hand", "grid": grid, "sampler": smp,
                    "policy": ltc.policies.Full(), "sampler_name": e["sampler"]})
    return out


def oracle_case(oname: str, sname: str, nfe: int, test: int) -> dict:
    make, prediction = SCHEDULES[sname]
    schedule = make()
    orc = GaussianMixture.random(schedule, **ORACLES[oname])
    model = orc.as_prediction(prediction)
    dim = ORACLES[oname]["dim"]
    start = time.perf_counter()
    res = ltc.optimize(model, schedule, nfe=nfe, noise=noise(64, (dim,), 1), verbose=False)
    wall = time.perf_counter() - start
    x = noise(test, (dim,), 2)
    exact = exact_endpoint(orc, x, res.grid, steps=300, lambda_cap=least_noisy_lambda(schedule, nfe))

    def errs(r):
        return ((run_row(model, res, r, x) - exact) ** 2).mean(1).sqrt()

    def err(r):
        return float(errs(r).mean())
    hand = [{**r, "exact": err(r)} for r in hand_rows(res, schedule)]
    best_by_sampler = {}
    for r in hand:
        if r["sampler_name"] not in best_by_sampler or r["exact"] < best_by_sampler[r["sampler_name"]]["exact"]:
            best_by_sampler[r["sampler_name"]] = r
    best_hand = min(hand, key=lambda r: r["exact"])
    cands = {}
    for r in res.rows():
        if r["kind"] != "plain":
            e = err(r)
            if r["kind"] not in cands or e < cands[r["kind"]]["exact"]:
                cands[r["kind"]] = {"name": r["name"], "exact": e, "verdict": r["verdict"], "judge_mean": r["mean"]}
    shipped = next(r for r in res.rows() if r["name"] == res.report["decision"]["chosen"])
    shipped_err = err(shipped)
    median = {"shipped": float(errs(shipped).median()),
              "best_hand": min(float(errs(r).median()) for r in hand_rows(res, schedule))}
    return {"oracle": oname, "schedule": sname, "nfe": nfe, "accepted": res.accepted, "kind": res.kind,
            "shipped": res.report["decision"]["chosen"], "shipped_exact": shipped_err,
            "best_hand": {"name": best_hand["name"], "exact": best_hand["exact"]},
            "best_hand_by_sampler": {k: {"grid": v["name"], "exact": v["exact"]} for k, v in best_by_sampler.items()},
            "candidates": cands, "ratio": best_hand["exact"] / shipped_err, "median": median,
            "ratio_median": median["best_hand"] / median["shipped"],
            "ratio_best_candidate": best_hand["exact"] / min(c["exact"] for c in cands.values()) if cands else None,
            "loses": res.accepted and shipped_err > best_hand["exact"],
            "calls": res.cost["calls"], "max_calls": res.cost["max_calls"], "wall_s": wall,
            "break_even": res.break_even}


def zoo_case(nfe: int, samples: int, resamples: int, model_name: str = "unet_small", guidance: float = 2.0) -> dict:
    model, schedule = zoo.load(model_name), zoo.schedule(model_name)
    calib = noise(64, (1, 16, 16), 1, torch.float32)
    labels = torch.arange(64) % 10
    start = time.perf_counter()
    res = ltc.optimize(model, schedule, nfe=nfe, noise=calib, model_kwargs={"y": labels}, guidance_scale=guidance,
                       verbose=False)
    wall = time.perf_counter() - start
    x, y = noise(samples, (1, 16, 16), 2, torch.float32), torch.arange(samples) % 10
    rows = {}
    judged = res.rows()
    best_plain = next(r for r in judged if r["name"] == res.report["decision"]["best_plain"])
    picks = [("best hand (by the judge)", best_plain)]
    for kind in ("ltc_hand", "grid", "ltc_grid"):
        cands = [r for r in judged if r["kind"] == kind]
        if cands:
            picks.append((kind, min(cands, key=lambda r: r["mean"])))
    with torch.no_grad():
        for label, r in picks:
            rows[label] = {"name": r["name"], "verdict": r["verdict"], "judge_mean": r["mean"],
                           "x": run_row(model, res, r, x, model_kwargs={"y": y}, guidance_scale=guidance)}
    dist = D.judge({k: v["x"] for k, v in rows.items()}, y, resamples=resamples)
    out = {}
    for k, v in rows.items():
        out[k] = {"name": v["name"], "verdict": v["verdict"], "judge_mean": v["judge_mean"],
                  "fd": _interval(dist.interval(k))}
        if k != "best hand (by the judge)":
            out[k]["fd_minus_best_hand"] = _interval(dist.difference(k, "best hand (by the judge)"))
    return {"model": model_name, "nfe": nfe, "accepted": res.accepted, "shipped": res.report["decision"]["chosen"],
            "rows": out, "calls": res.cost["calls"], "wall_s": wall, "break_even": res.break_even}


def _interval(iv) -> dict:
    return {"value": iv.value, "low": iv.low, "high": iv.high} if hasattr(iv, "value") else iv


def summary(cases: list[dict]) -> dict:
    low = [c for c in cases if c["nfe"] <= 10]
    return {"cases": len(cases), "nfe_le_10": len(low),
            "shipped_2x_better_nfe_le_10": sum(c["ratio"] >= 2 for c in low),
            "best_candidate_2x_better_nfe_le_10": sum((c["ratio_best_candidate"] or 0) >= 2 for c in low),
            "accepted": sum(c["accepted"] for c in cases),
            "shipped_and_loses_exact": sum(bool(c["loses"]) for c in cases),
            "geomean_ratio_nfe_le_10": float(np.exp(np.mean([np.log(c["ratio"]) for c in low]))) if low else None,
            "max_calls_nfe_10": max((c["calls"] for c in cases if c["nfe"] == 10), default=None)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--zoo", action="store_true", help="add the zoo rows (the oracle rows are kept from the file)")
    p.add_argument("--zoo-models", nargs="+", default=["unet_small"], help="zoo models (others' rows are kept)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--resamples", type=int, default=200)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        cases = [oracle_case("gmm16", "vp", 6, 32)]
        print(json.dumps(cases, indent=1, default=str))
        return {"cases": cases}
    if args.zoo:
        result = json.loads(RESULT.read_text())
        kept = [c for c in result.get("zoo", []) if c["model"] not in args.zoo_models]
        new = [zoo_case(n, args.samples, args.resamples, m) for m in args.zoo_models for n in ZOO_NFES]
        for c in new:
            print(c["model"], c["nfe"], c["shipped"], {k: v["fd"] for k, v in c["rows"].items()})
        result["zoo"] = kept + new
        result["zoo_settings"] = {"models": sorted({c["model"] for c in result["zoo"]}), "guidance_scale": 2.0,
                                  "samples": args.samples, "resamples": args.resamples, "nfe": list(ZOO_NFES),
                                  "search_noises": 64,
                                  "command": "python bench/plan_search.py --zoo --zoo-models unet_small unet_large"}
    else:
        cases = []
        for oname in ORACLES:
            for sname in SCHEDULES:
                for nfe in NFES:
                    c = oracle_case(oname, sname, nfe, 128)
                    print(f"{oname:7s} {sname:6s} nfe {nfe:3d}: shipped {c['shipped'][:55]:55s} "
                          f"ratio {c['ratio']:.2f} (best cand {c['ratio_best_candidate'] or 0:.2f}) calls {c['calls']}")
                    cases.append(c)
        result = {"benchmark": "plan_search", "machine": machine(), "command": "python bench/plan_search.py",
                  "settings": {"oracles": ORACLES, "schedules": {k: v[1] for k, v in SCHEDULES.items()},
                               "nfe": list(NFES), "search_noises": 64, "test_noises": 128,
                               "exact": "RK4 in log-SNR, 300 steps", "optimize": "defaults"},
                  "cases": cases, "summary": summary(cases)}
        print(json.dumps(result["summary"], indent=1))
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {RESULT}")
    return result


if __name__ == "__main__":
    main()
