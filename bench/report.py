"""Writes bench/README.md: how to run every benchmark script, then every result table, from bench/results/.

Each table names the JSON file it comes from and the device recorded in it, so no result number
is typed by hand.  The script list is read from the module docstrings of ``bench/*.py`` (first
paragraph, plus the indented command lines), so renamed or new scripts show up when this runs.

    python bench/report.py            # writes bench/README.md
    python bench/report.py --check    # exits 1 (and prints a diff) if bench/README.md is out of date
"""
from __future__ import annotations

import argparse
import ast
import difflib
import json
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH / "README.md"
ROOT = BENCH.parent
COMMAND_PREFIXES = ("python ", "pytest ", "compute-sanitizer ", "LTC_")


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def device(data: dict) -> str:
    """The device a result file records: its ``device`` field, else ``cpu`` for a CPU build of torch."""
    m = data.get("machine", {})
    if m.get("device"):
        name = m["device"]
    elif str(m.get("torch", "")).endswith("+cpu") or m.get("cuda_available") is False:
        name = "cpu" + (f": {m['cpu']}" if m.get("cpu") else "")
    else:
        name = m.get("platform", "unknown machine")
    threads = f", {m['threads']} thread{'s' if m['threads'] != 1 else ''}" if m.get("threads") else ""
    return f"{name}, torch {m.get('torch')}{threads}"


def source(name: str, data: dict) -> str:
    return f"_Source: `bench/results/{name}` ({device(data)})._"


# -- scripts ----------------------------------------------------------------------------------
def scripts() -> str:
    out = ["## Scripts", "",
           "Run from the repository root with the package installed (`pip install -e \".[test,triton,demo,diffusers]\"`, as in the README). "
           "Each script's module docstring says what it measures and how; the commands below are copied from it."]
    for path in sorted(BENCH.glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or "(no docstring)"
        summary = " ".join(doc.split("\n\n")[0].split())
        lines = doc.splitlines()
        commands = [ln.strip() for ln in lines if ln.startswith("    ") and ln.strip().startswith(COMMAND_PREFIXES)]
        writes = [" ".join(par.split()) for par in doc.split("\n\n") if par.startswith("writes ")]
        out += ["", f"### `bench/{path.name}`", "", summary]
        if commands:
            out += ["", "```bash", *commands, "```"]
        out += ["", *[w[0].upper() + w[1:] for w in writes]] if writes else []
    return "\n".join(out)


# -- result tables ----------------------------------------------------------------------------
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
    lo, hi = data["lambda_range"]
    return "\n".join([
        "### Convergence order of the samplers", "",
        f"Slope of log endpoint RMSE against log steps (8..64 steps) against the exact ODE endpoint, oracle: "
        f"{data['oracle']}; grids uniform in log-SNR on [{lo:g}, {hi:g}]. With a final jump to sigma = 0 the "
        "last, fixed-size step dominates and no solver shows its order (`tests/test_samplers.py` asserts the bounds).",
        "", *out, "", source(name, data)])


def loop_overhead() -> str:
    name = "loop_overhead_cpu.json"
    data = load(name)
    ov = data["overhead_us_per_step"]
    out = ["| loop | overhead per step (us) |", "|---|---|"]
    out += [f"| {k} | {v:.1f} |" for k, v in ov.items()]
    ratio = data.get("overhead_ratio_diffusers_over_ltc")
    tail = [f"diffusers / ltc: {ratio:.2f}x (same run, medians of {len(data['raw_s']['ltc_eager'])} "
            "interleaved repeats).", ""] if ratio else []
    return "\n".join([
        "### Loop overhead", "",
        f"Per-step overhead of the sampling loop around a negligible model, {data['sampler']}, {data['steps']} "
        f"steps, shape {data['shape']} {data['dtype']}, eager reference backend: (wall - the same model calls "
        "alone) / steps.", "", *out, "", *tail, source(name, data)])


def calibration_cost() -> str:
    name = "ltc_calibration_cost.json"
    data = load(name)
    out = ["| tensors | closed form | grid search | ratio | max abs w difference | same w to grid resolution |",
           "|---|---|---|---|---|---|"]
    for c in data["cases"]:
        out.append(f"| {c['case']} | {c['closed_form_median_s'] * 1e6:.0f} us | {c['grid_search_median_s'] * 1e3:.1f} ms"
                   f" | {c['time_ratio']:.0f}x | {c['max_abs_w_difference']:.1e} (spacing {c['grid_spacing']:.1e})"
                   f" | {c['same_w_to_grid_resolution']} |")
    return "\n".join([
        "### LTC calibration cost", "",
        "Fitting one LTC weight: the closed form (`transition_dots`, then a clamped ratio) against the reference "
        "1000-point grid search in [0, 10], on the tensors of a real calibration pass (medians per step).",
        "", *out, "", source(name, data)])


def ltc_evidence() -> str:
    sys.path.insert(0, str(BENCH))
    from ltc_evidence import markdown, summary  # the one definition of the table (imports torch and ltc)

    name = "ltc_evidence.json"
    data = load(name)
    a = data["args"]
    return "\n".join([
        "### LTC-Accel evidence on exact oracles", "",
        f"Endpoint RMSE against the exact ODE endpoint (RK4, {a['rk4']} steps) on {a['held_out']} held-out noises, "
        f"{a['calibration']} calibration noises, d = {a['dim']}, float64; `gmm` = 8-component Gaussian mixture, "
        "`digits` = posterior mean of the 1500 zoo training digits; VP scaled-linear with trailing spacing, flow "
        "unshifted (`flow`) and with shift 3 (`flow3`); LTC every second step of the last three quarters. "
        "**Bold**: below the best plain sampler at equal NFE; †: accepted by the refusal rule (judged on the "
        "calibration noises against the DPM-Solver++(2M) 2N-step teacher).",
        "", markdown(data), "", summary(data), "", source(name, data)])


def tstitch() -> str:
    name = "tstitch_tradeoff.json"
    data = load(name)
    s = data["settings"]
    out = ["| small-model fraction | NFE small/large | model cost | Frechet distance | PSNR vs full (dB) | "
           "speed-up (ideal) |", "|---|---|---|---|---|---|"]
    for r in data["rows"]:
        psnr = "inf" if math.isinf(r["psnr"]) else f"{r['psnr']:.1f}"
        out.append(f"| {r['fraction_small']:g} | {'/'.join(map(str, r['nfe_per_model']))} | {r['model_cost']:.2f} | "
                   f"{r['frechet_distance']:.3f} | {psnr} | {r['speedup_vs_full']:.2f} ({r['ideal_speedup']:.2f}) |")
    plain = ", ".join(f"{r['steps']} steps {r['psnr']:.1f} dB (FD {r['frechet_distance']:.3f})"
                      for r in data["large_alone_equal_cost"])
    ref = data["data_reference"]
    return "\n".join([
        "### T-Stitch trade-off on the zoo", "",
        f"`{s['models']['small']}` for the first fraction of the steps, `{s['models']['large']}` for the rest; "
        f"{s['sampler']}, {s['steps']} steps, guidance {s['guidance_scale']}, {s['samples']} samples; PSNR against "
        f"the full large-model samples from the same noise; wall time on a batch of {s['timing_batch']} "
        f"(median of {s['repeats']}).", "", *out, "",
        f"The large model alone at equal model cost: {plain}. Frechet-distance noise floor of the data itself: "
        f"{ref['frechet_distance_data_subset_vs_all']:.2f} (subset vs all) to {ref['frechet_distance_data_half_vs_half']:.2f}"
        " (half vs half).", "", source(name, data)])


def zoo_training() -> str:
    name = "zoo_training.json"
    data = load(name)
    out = ["| model | parameters | MACs / sample | training wall (s) | final mean loss | held-out accuracy | command |",
           "|---|---|---|---|---|---|---|"]
    for model, m in data["models"].items():
        cols = m["loss_curve"]["columns"]
        last = dict(zip(cols, m["loss_curve"]["rows"][-1]))
        acc = f"{m['heldout_accuracy']:.3f}" if "heldout_accuracy" in m else ""
        out.append(f"| {model} | {m.get('params', '')} | {m['macs_per_sample']} | {m['wall_time_s']:.0f} | "
                   f"{last['mean_loss']:.4f} (step {last['step']}) | {acc} | `{m['command']}` |")
    macs = {k: m["macs_per_sample"] for k, m in data["models"].items()}
    ratio = (f"`unet_large` costs {macs['unet_large'] / macs['unet_small']:.1f}x the multiply-adds of `unet_small`."
             if {"unet_large", "unet_small"} <= macs.keys() else "")
    return "\n".join(["### Zoo training", "",
                      "The models shipped in `ltc/zoo/weights/` (the demo's), trained on the CPU by the commands "
                      "shown (loss curves in the JSON).", "", *out, "", ratio, "", source(name, data)])


def is_step_kernel_result(data: dict) -> bool:
    """A result of the step-kernel benchmark (any file name: the script may be renamed): one model step's
    setting, the copy peak of the run and rows per implementation."""
    rows = data.get("rows")
    return (isinstance(data.get("step"), dict) and "copy_peak" in data and isinstance(rows, list)
            and all(isinstance(r, dict) and {"impl", "median_us", "gbps", "frac_copy_peak"} <= r.keys() for r in rows))


def step_kernel_files() -> list[Path]:
    return [p for p in sorted(RESULTS.glob("*.json")) if is_step_kernel_result(json.loads(p.read_text()))]


def step_kernels() -> str:
    blocks = ["### Step kernels"]
    for path in step_kernel_files():
        data = json.loads(path.read_text())
        out = ["| impl | dtype | elements | median (us) | GB/s | of copy peak | back-to-back (us) | max abs diff vs eager |",
               "|---|---|---|---|---|---|---|---|"]
        for r in data["rows"]:
            b2b, diff = r.get("back_to_back_us"), r.get("max_abs_diff_vs_eager")
            out.append(f"| {r['impl']} | {r.get('dtype', '')} | {r.get('numel', '')} | {r['median_us']:.1f} | "
                       f"{r['gbps']:.2f} | {100 * r['frac_copy_peak']:.1f}% | {'' if b2b is None else f'{b2b:.1f}'} | "
                       f"{'' if diff is None else f'{diff:.1e}'} |")
        st = data["step"]
        op = data.get("op") or st.get("op") or "model_step"
        blocks += ["", f"`{op}`, one {st.get('sampler')} step, guidance {st.get('guidance_scale')}, bytes moved: "
                   f"{st.get('bytes_moved')}; copy peak {data['copy_peak']['gbps']:.2f} GB/s in the same run. "
                   f"{data.get('label', '').rstrip('.')}.", "", *out, "", source(path.name, data)]
    return "\n".join(blocks)


DIFFUSERS_AGREEMENT = """\
### diffusers agreement (static: no result file holds it)

Not generated from `bench/results/`: the output of `python tests/test_diffusers_adapter.py`, pasted from
one run on the 2-core CPU machine (torch 2.13.0+cpu, float32). Each case drives a diffusers scheduler in
its own loop and ltc's sampler from the same latents; max |ltc - diffusers| and that over max |diffusers|.
The tests assert relative < 1e-5; rerun the command to refresh this block.

```
case                             ltc sampler                                     max abs   max rel
oracle ddim trailing             DDIM(eta=0.0)                                  1.19e-07  1.14e-07
oracle ddim leading sd           DDIM(eta=0.0)                                  2.38e-07  2.01e-07
oracle ddim eta=0.5              DDIM(eta=0.5)                                  2.53e-07  2.57e-07
oracle ddim v                    DDIM(eta=0.0)                                  4.17e-07  3.56e-07
oracle dpmpp_2m                  DPMSolverPP(order=2, lower_order_final=True)   1.86e-07  1.64e-07
oracle dpmpp_2m sigma_min        DPMSolverPP(order=2, lower_order_final=False)  1.07e-06  7.57e-07
oracle dpmpp_2m karras           DPMSolverPP(order=2, lower_order_final=True)   3.58e-07  2.78e-07
oracle dpmpp_2m x0               DPMSolverPP(order=2, lower_order_final=True)   1.19e-07  1.05e-07
oracle dpmpp_3m                  DPMSolverPP(order=3, lower_order_final=True)   2.38e-07  2.08e-07
oracle dpmpp_3m sigma_min        DPMSolverPP(order=3, lower_order_final=False)  2.98e-06  2.28e-06
oracle dpmpp_2m flow sigmas      DPMSolverPP(order=2, lower_order_final=True)   1.79e-07  1.51e-07
oracle flow euler shift 3        Euler()                                        1.79e-07  1.73e-07
oracle flow euler                Euler()                                        3.13e-07  2.56e-07
oracle euler leading             Euler()                                        2.38e-07  2.12e-07
oracle euler linspace v          Euler()                                        1.79e-07  1.61e-07
tiny UNet2DModel ddim            DDIM(eta=0.0)                                  7.63e-06  2.96e-07
tiny UNet2DModel dpmpp_2m        DPMSolverPP(order=2, lower_order_final=True)   1.14e-05  2.57e-07
tiny UNet2DModel dpmpp_2m karras v DPMSolverPP(order=2, lower_order_final=True)   1.19e-06  3.85e-07
tiny UNet2DCondition CFG=4       DPMSolverPP(order=2, lower_order_final=True)   1.72e-05  3.64e-07
tiny SD3Transformer flow euler   Euler()                                        7.15e-07  1.94e-07
```

Where diffusers' definitions differ from a plain grid (DDIM's off-grid steps, DPM-Solver's final-step rules,
FlowMatchEuler's twice-shifted `sigma_min`, EulerDiscrete's `x / alpha` state), the module docstring of
`ltc/adapters/diffusers.py` says what ltc does."""

TABLES = (convergence, loop_overhead, calibration_cost, ltc_evidence, tstitch, zoo_training, step_kernels)
COVERED = {"convergence.json", "loop_overhead_cpu.json", "ltc_calibration_cost.json", "ltc_evidence.json",
           "tstitch_tradeoff.json", "zoo_training.json"}


def uncovered() -> str:
    tabled = COVERED | {p.name for p in step_kernel_files()}
    rest = [p.name for p in sorted(RESULTS.glob("*.json")) if p.name not in tabled]
    if not rest:
        return ""
    return "\n".join(["### Result files without a table here", "",
                      *[f"- `bench/results/{n}` ({device(json.loads((RESULTS / n).read_text()))})" for n in rest]])


def render() -> str:
    parts = ["# Benchmarks and results",
             "Generated by `python bench/report.py` from the scripts in `bench/` and the result files in "
             "`bench/results/`: do not edit by hand (`tests/test_bench_tables.py` fails when this file differs from "
             "what the generator writes). Every table names its source file and the device recorded in it; the "
             "one static block (diffusers agreement) says so.",
             scripts(), "## Results", *(table() for table in TABLES), DIFFUSERS_AGREEMENT, uncovered()]
    return "\n\n".join(p for p in parts if p) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with bench/README.md instead of writing it")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        old = README.read_text() if README.exists() else ""
        if old != text:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                       "bench/README.md (committed)", "bench/README.md (generated)"))
            print("\nbench/README.md is out of date: run `python bench/report.py`")
            return 1
        return 0
    README.write_text(text)
    print(f"wrote {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
