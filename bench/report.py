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
    entries = data.get("by_shape") or [data]
    shapes = ["x".join(map(str, e["shape"])) for e in entries]
    out = ["| loop | " + " | ".join(f"{s}: us/step (CPU time) | ltc / loop" for s in shapes) + " |",
           "|---|" + "---|---|" * len(entries)]
    for k in entries[0]["overhead_us_per_step"]:
        cells = []
        for e in entries:
            cpu = e.get("overhead_cpu_us_per_step", {}).get(k)
            ratio = e.get("ratio_ltc_over", {}).get(k)
            cells += [f"{e['overhead_us_per_step'][k]:.1f}" + (f" ({cpu:.1f})" if cpu is not None else ""),
                      f"{ratio:.2f}" if ratio is not None else ""]
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    skipped = sorted({f"{k}: {why}" for e in entries for k, why in e.get("skipped", {}).items()})
    goals = [f"{s}: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in e.get("goals", {}).items())
             for s, e in zip(shapes, entries)]
    tail = [f"Same run, medians of {len(entries[0]['raw_s']['ltc_eager'])} interleaved repeats; the samples of "
            "all loops agree to float32 round-off. Goals (ltc <= k-diffusion's bare wrapper, <= 0.5x diffusers): "
            + "; ".join(goals) + ".", ""]
    if skipped:
        tail += ["Skipped: " + "; ".join(skipped) + ".", ""]
    return "\n".join([
        "### Loop overhead", "",
        f"Per-step overhead of the sampling loop around a negligible model, {data['sampler']}, {data['steps']} "
        f"steps, {data['dtype']}, {data.get('grid', '')}, eager reference backend: (wall - the same model calls "
        "alone) / steps; in brackets the same from the thread's CPU time.", "", *out, "", *tail, source(name, data)])


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
    from ltc_evidence import describe, markdown, summary  # the one definition of the tables (imports torch, ltc)

    name = "ltc_evidence.json"
    data = load(name)
    return "\n".join(["### LTC-Accel evidence on exact oracles", "", describe(data), "", summary(data), "",
                      markdown(data), "", source(name, data)])


def sampler_agreement() -> str:
    sys.path.insert(0, str(BENCH))
    from sampler_agreement import markdown, summary  # the one definition of the table (imports diffusers and ltc)

    name = "sampler_agreement.json"
    data = load(name)
    return "\n".join([
        "### Agreement with diffusers' schedulers", "",
        f"Final samples of `ltc.sample` against diffusers' own loop (diffusers {data['diffusers']}) from the same "
        f"latents and model function ({data['model']}), {data['dtype']}: max relative difference (max absolute in "
        "parentheses), through `ltc.adapters.diffusers` and hand-built (`Schedule.vp(...)` / `Schedule.flow(...)` with "
        "the sampler's name, whose grid follows the sampler's diffusers scheduler).",
        "", markdown(data), "", summary(data), "", source(name, data)])


def tstitch() -> str:
    name = "tstitch_tradeoff.json"
    data = load(name)
    s = data["settings"]

    def ci(i, signed=False):
        f = "{:+.3f}" if signed else "{:.3f}"
        return f"{f.format(i['value'])} [{f.format(i['low'])}, {f.format(i['high'])}]"

    out = ["| small-model fraction | NFE small/large | model cost | FD to held-out [95%] | minus full [95%] | vs full | "
           "plain large at equal cost | vs plain | PSNR vs full (dB) | speed-up median / min (ideal) | of ideal (median, min) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    plain = {p["steps"]: p for p in data["large_alone_equal_cost"]}
    for r in data["rows"]:
        psnr = "inf" if math.isinf(r["psnr"]) else f"{r['psnr']:.1f}"
        base = plain.get(r["plain_steps"])
        steps = f"{r['plain_steps']} step{'s' * (r['plain_steps'] != 1)}"
        base = f"{steps}, FD {ci(base['fd_heldout'])}" if base else "(the full run)"
        out.append(f"| {r['fraction_small']:g} | {'/'.join(map(str, r['nfe_per_model']))} | {r['model_cost']:.3f} | "
                   f"{ci(r['fd_heldout'])} | {ci(r['fd_minus_full'], True)} | {r['verdict_vs_full']} | {base} | "
                   f"{r['verdict_vs_plain']} | {psnr} | {r['speedup_vs_full']:.2f} / {r['speedup_vs_full_min']:.2f} "
                   f"({r['ideal_speedup']:.2f}) | {r['speedup_of_ideal']:.1%}, {r['speedup_of_ideal_min']:.1%} |")
    floor = data["data_reference"]
    m = data["machine"]
    load_avg = " to ".join(f"{m[k]:.1f}" for k in ("load_average_start", "load_average_end") if m.get(k) is not None)
    wins = {v: [f"{r['fraction_small']:g}" for r in data["rows"][1:] if r["verdict_vs_plain"] == v]
            for v in ("better", "same", "WORSE")}
    as_full = [f"{r['fraction_small']:g}" for r in data["rows"][1:] if r["verdict_vs_full"] == "same"]
    verdicts = (f"Against the large model alone at the same model cost, stitching is better at fractions "
                f"{', '.join(wins['better']) or 'none'}, the same at {', '.join(wins['same']) or 'none'} and worse at "
                f"{', '.join(wins['WORSE']) or 'none'}; within the full run's own interval at fractions "
                f"{', '.join(as_full) or 'none'}.")
    return "\n".join([
        "### T-Stitch trade-off on the zoo", "",
        f"`{s['models']['small']}` for the first fraction of the steps, `{s['models']['large']}` for the rest "
        f"({s['macs_per_sample'][s['models']['small']]} vs {s['macs_per_sample'][s['models']['large']]} multiply-adds "
        f"per sample); {s['sampler']}, {s['steps']} steps, guidance {s['guidance_scale']}, {s['samples']} samples per "
        "row from the same noises. Quality: Frechet distance to the 297 held-out digits in the zoo classifier's "
        f"features with its 95% interval ({s['interval'].replace('ltc.zoo.distance', '`ltc/zoo/distance.py`')}), and the "
        "paired interval of the difference to the full run; a verdict is `WORSE`/`better` only when that paired "
        "interval excludes 0 and the value lies outside the other row's interval. Each row is judged beside the large "
        "model alone at the most steps its model cost buys. PSNR against the full run is secondary (stitching "
        f"changes the model). CPU wall time on a batch of {s['timing_batch']}, {s['repeats']} interleaved repeats "
        f"(load average {load_avg} on {m.get('cpus')} CPUs: the minimum is the least disturbed); ideal = 1 / "
        "model cost.", "", *out, "", verdicts, "",
        f"The training digits' own distance to the held-out ones (the floor of this yardstick, "
        f"{floor['training_digits']} images): {ci(floor['fd_training_digits_to_heldout'])}.",
        "", "![T-Stitch trade-off](results/tstitch_tradeoff.png)", "", source(name, data)])


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
    ratio = " ".join(f"`unet_large` costs {macs['unet_large'] / macs[small]:.1f}x the multiply-adds of `{small}`."
                     for small in ("unet_small", "unet_tiny") if {"unet_large", small} <= macs.keys())
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
                   f"{data.get('label', '').rstrip('.')}.", "", *out]
        if data.get("executor_bytes"):
            blocks += ["", "Bytes of one whole guided executor step (`Walk.advance`, `check_finite=\"end\"`) against the "
                       "fused kernel's minimum (goal <= 1.1x):", "",
                       "| backend | dtype | shape | aligned | fused minimum (B) | contiguous output | batch-strided output |",
                       "|---|---|---|---|---|---|---|"]
            for e in data["executor_bytes"]:
                if "contiguous" not in e:
                    continue
                cells = [f"{e[k]['step_bytes']} B ({e[k]['ratio_to_fused_minimum']:.2f}x)" for k in
                         ("contiguous", "batch_strided")]
                blocks.append(f"| {e['backend']} | {e['dtype']} | {'x'.join(map(str, e['shape']))} | {e['aligned']} | "
                              f"{e['fused_minimum_bytes']} | {cells[0]} | {cells[1]} |")
        blocks += ["", source(path.name, data)]
    return "\n".join(blocks)


def plan_search() -> str:
    name = "plan_search.json"
    if not (RESULTS / name).exists():
        return ""
    data = load(name)
    sm = data["summary"]
    out = ["| oracle | schedule | NFE | best hand plan (exact error) | LTC on hand grid | optimised grid | "
           "optimised grid + LTC | shipped (judge) | ratio mean / median | calls | break-even samples |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in data["cases"]:
        cand = c["candidates"]

        def cell(kind):
            return f"{cand[kind]['exact']:.2e}" if kind in cand else "-"
        be = c.get("break_even") or {}
        beyond = f"< {be['samples_at_most']:.0f}" if be.get("samples_at_most") else "-"
        be_text = f"{be['samples']:.0f}" if be.get("samples") else beyond
        shipped = c["kind"] if c["accepted"] else "refused: hand"
        out.append(f"| {c['oracle']} | {c['schedule']} | {c['nfe']} | {c['best_hand']['name']} ({c['best_hand']['exact']:.2e}) "
                   f"| {cell('ltc_hand')} | {cell('grid')} | {cell('ltc_grid')} | {shipped} ({c['shipped_exact']:.2e}) | "
                   f"{c['ratio']:.2f} / {c['ratio_median']:.2f} | {c['calls']} | {be_text} |")
    blocks = ["### Plan search (`ltc.optimize`) on exact oracles", "",
              "`ltc.optimize` with its defaults (DPM-Solver++ 2M/3M and UniPC-2M, LTC on the best, max_calls = 100 NFE) "
              f"on {data['settings']['search_noises']} noises (half fit, half judged); every plan then measured on "
              f"{data['settings']['test_noises']} other noises against the exact endpoint (mean per-sample RMS "
              "distance). Best hand plan: the best of every sampler on every hand grid (the schedule's rules, log-SNR "
              "uniform, Karras) by this exact error. Shipped: what the judge chose (an optimised plan, or the best "
              "judged hand plan when it refused). Ratio: best hand / shipped (> 1: gained).", "", *out, "",
              f"At NFE <= 10: the shipped plan is at least 2x better than the best hand plan in "
              f"{sm['shipped_2x_better_nfe_le_10']} of {sm['nfe_le_10']} settings (geometric-mean ratio "
              f"{sm['geomean_ratio_nfe_le_10']:.2f}); {sm['accepted']} of {sm['cases']} searches shipped an optimised "
              f"plan, {sm['shipped_and_loses_exact']} of them worse than the best hand plan by the exact error. "
              f"Most model calls at NFE 10: {sm['max_calls_nfe_10']}.", "", source(name, data)]
    if data.get("zoo"):
        z = data["zoo_settings"]

        def ci(i, signed=False):
            f = "{:+.3f}" if signed else "{:.3f}"
            return f"{f.format(i['value'])} [{f.format(i['low'])}, {f.format(i['high'])}]"
        rows = ["| model | NFE | row | plan | judge verdict | shipped | FD to held-out [95%] | minus best hand [95%] |",
                "|---|---|---|---|---|---|---|---|"]
        for c in data["zoo"]:
            for label, r in c["rows"].items():
                diff = ci(r["fd_minus_best_hand"], True) if "fd_minus_best_hand" in r else "(reference)"
                shipped = "yes" if r["name"] == c["shipped"] else ""
                rows.append(f"| {c['model']} | {c['nfe']} | {label} | {r['name']} | {r['verdict'] or '-'} | {shipped} | "
                            f"{ci(r['fd'])} | {diff} |")
        models = ", ".join(f"`{m}`" for m in z.get("models", [z.get("model")]))
        blocks += ["", f"Zoo: {models}, guidance {z['guidance_scale']}, search on {z['search_noises']} noises, "
                   f"{z['samples']} samples per row (labels cycling 0..9), Frechet distance to the held-out digits "
                   f"with 95% bootstrap intervals ({z['resamples']} resamples, `ltc/zoo/distance.py`).", "", *rows]
    return "\n".join(blocks)


TABLES = (convergence, loop_overhead, calibration_cost, ltc_evidence, plan_search, sampler_agreement, tstitch,
          zoo_training, step_kernels)
COVERED = {"convergence.json", "loop_overhead_cpu.json", "ltc_calibration_cost.json", "ltc_evidence.json",
           "sampler_agreement.json", "tstitch_tradeoff.json", "zoo_training.json", "plan_search.json"}


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
             scripts(), "## Results", *(table() for table in TABLES), uncovered()]
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
