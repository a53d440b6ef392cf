"""Print the README's result tables as markdown, from the JSON files in bench/results/.

Each table names the file it comes from and the device recorded in it, so the README never
carries a number that no result file holds.  (The LTC evidence table:
``python bench/ltc_evidence.py --table``.)

    python bench/readme_tables.py
"""
from __future__ import annotations

import json
import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def device(data: dict) -> str:
    m = data.get("machine", {})
    return m.get("device") or m.get("platform", "unknown machine")


def source(name: str, data: dict) -> str:
    return f"_Source: `bench/results/{name}` ({device(data)}, torch {data.get('machine', {}).get('torch')})._"


def convergence() -> str:
    name = "convergence.json"
    data = load(name)
    rows = {}
    for r in data["rows"]:
        rows.setdefault((r["family"], r["grid_end"]), {})[r["sampler"]] = r["order"]
    samplers = ["ddim", "euler", "dpmpp_2m", "dpmpp_3m"]
    out = ["| grid | " + " | ".join(samplers) + " |", "|---|" + "---|" * len(samplers)]
    for (family, end), orders in rows.items():
        out.append(f"| {family}, ends at {'positive noise' if end == 'keep' else 'sigma = 0'} | "
                   + " | ".join(f"{orders[s]:.2f}" for s in samplers) + " |")
    return "\n".join(["Convergence order (slope of log endpoint RMSE over 8..64 steps):", "", *out, "",
                      source(name, data)])


def loop_overhead() -> str:
    name = "loop_overhead_cpu.json"
    data = load(name)
    ov = data["overhead_us_per_step"]
    out = ["| loop | overhead per step (us) |", "|---|---|"]
    out += [f"| {k} | {v:.1f} |" for k, v in ov.items()]
    ratio = data.get("overhead_ratio_diffusers_over_ltc")
    tail = f"diffusers / ltc: {ratio:.2f}x." if ratio else ""
    return "\n".join([f"Loop overhead, {data['steps']} steps, shape {data['shape']}, {data['sampler']}:", "", *out,
                      "", tail, source(name, data)])


def tstitch() -> str:
    name = "tstitch_tradeoff.json"
    data = load(name)
    out = ["| small-model fraction | NFE small/large | model cost | Frechet distance | PSNR vs full (dB) | "
           "speed-up (ideal) |", "|---|---|---|---|---|---|"]
    for r in data["rows"]:
        psnr = "inf" if math.isinf(r["psnr"]) else f"{r['psnr']:.1f}"
        out.append(f"| {r['fraction_small']:g} | {'/'.join(map(str, r['nfe_per_model']))} | {r['model_cost']:.2f} | "
                   f"{r['frechet_distance']:.3f} | {psnr} | {r['speedup_vs_full']:.2f} ({r['ideal_speedup']:.2f}) |")
    plain = ", ".join(f"{r['steps']} steps {r['psnr']:.1f} dB" for r in data["large_alone_equal_cost"])
    return "\n".join(["T-Stitch trade-off:", "", *out, "", f"Large model alone at equal cost: {plain}.",
                      source(name, data)])


def calibration_cost() -> str:
    name = "ltc_calibration_cost.json"
    data = load(name)
    out = ["| tensors | closed form | grid search | ratio | same w to grid resolution |", "|---|---|---|---|---|"]
    for c in data["cases"]:
        out.append(f"| {c['case']} | {c['closed_form_median_s'] * 1e6:.0f} us | {c['grid_search_median_s'] * 1e3:.1f} ms"
                   f" | {c['time_ratio']:.0f}x | {c['same_w_to_grid_resolution']} |")
    return "\n".join(["LTC calibration cost, closed form vs 1000-point grid search:", "", *out, "",
                      source(name, data)])


def main() -> None:
    for table in (convergence, loop_overhead, tstitch, calibration_cost):
        print(table())
        print()


if __name__ == "__main__":
    main()
