"""T-Stitch trade-off on the zoo: fraction of small-model steps vs distance to held-out digits, model cost and CPU wall time.

For each fraction f of the 20 steps given to the small model of ``ltc.zoo.TSTITCH_PAIR`` (the
rest to the large one), DPM-Solver++(2M), classifier-free guidance 2, labels cycling 0..9, every
row from the same noises:

* Frechet distance to the 297 held-out digits (zoo classifier features, torchmetrics) with its 95%
  bootstrap interval, and the paired intervals of its difference to the full large-model run
  (f = 0) and to the large model alone at the same model cost (``ltc.zoo.distance``: label-
  stratified resamples, fixed reference); a verdict against each (better / same / WORSE);
* PSNR against the full run from the same noise (secondary: stitching changes the model);
* NFE per model, model cost (MAC-weighted NFE, 1 = the full run) and the ideal speed-up 1/cost;
* CPU wall time of one sampling call on a timing batch: median and minimum of interleaved repeats
  (the minimum is the least disturbed by other jobs), speed-up against the full run and its
  fraction of the MAC-weighted ideal.

Reference rows: the large model alone at the most steps the same model cost buys (the plain
baseline, on the same metric and noises), and the training digits' own distance to the held-out
ones (the floor of the yardstick).  Diagnostic: where along t each model errs -- on the held-out
digits noised to training step t, the eps error E|eps_hat - eps|^2 (conditional) and the error of
the guided data prediction x0_hat = (x_t - sigma_t eps_guided) / alpha_t that DPM-Solver++ steps
with, per pixel.

    python bench/tstitch_tradeoff.py                 # ~2000 samples per row; JSON and PNG
    python bench/tstitch_tradeoff.py --quick         # smoke run, prints only
    python bench/tstitch_tradeoff.py --picture       # redraw the PNG from the JSON

writes bench/results/tstitch_tradeoff.json and bench/results/tstitch_tradeoff.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import ltc
import ltc.zoo as zoo
from ltc.policies import Full, TStitch
from ltc.zoo import distance as D
from ltc.zoo import metrics as M

RESULT = Path(__file__).parent / "results" / "tstitch_tradeoff.json"
PICTURE = RESULT.with_suffix(".png")


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "ltc": ltc.__version__}


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def interval(i: D.Interval) -> dict:
    return {"value": i.value, "low": i.low, "high": i.high, "raw": i.raw}


def plain_steps(cost: float, steps: int) -> int:
    """The most plain large-model steps the same model cost buys (at least 1), as the demo counts."""
    return max(1, int(cost * steps + 1e-9))


class Sampler:
    """Draws rows of the trade-off: the stitched pair under a policy, from the bench's noises and labels."""

    def __init__(self, args, models, schedule):
        self.args, self.models, self.schedule = args, models, schedule

    def __call__(self, policy, noise, labels, steps, chunk: int = 500):
        xs, info = [], None
        for i in range(0, noise.shape[0], chunk):
            x, info = ltc.sample(self.models, self.schedule, policy, sampler="dpmpp_2m", steps=steps,
                                 noise=noise[i:i + chunk], model_kwargs={"y": labels[i:i + chunk]},
                                 guidance_scale=self.args.guidance, progress=False, return_info=True)
            xs.append(x)
        return torch.cat(xs), info


def quality_rows(args, draw, noise, labels, macs) -> tuple[list[dict], list[dict], dict]:
    """Sample every fraction and every plain equal-cost baseline; judge them together (paired)."""
    def cost(nfe):
        return sum(n * m for n, m in zip(nfe, macs)) / (args.steps * macs[1])

    if args.fractions[0] != 0.0:
        raise ValueError("the first fraction must be 0.0 (the full large-model run)")
    samples, rows, plain = {}, [], []
    for f in args.fractions:
        start = time.perf_counter()
        x, info = draw(TStitch(f), noise, labels, args.steps)
        name = f"f={f:g}"
        samples[name] = x
        rows.append({"fraction_small": f, "name": name, "nfe_per_model": info.nfe_per_model,
                     "model_cost": cost(info.nfe_per_model), "sampling_s": time.perf_counter() - start})
        print(f"sampled {name} ({rows[-1]['sampling_s']:.0f} s)", flush=True)
    for row in rows:
        n = plain_steps(row["model_cost"], args.steps)
        row["plain_steps"] = n
        if n == args.steps or any(p["steps"] == n for p in plain):
            continue
        x, info = draw(Full(1), noise, labels, n)
        samples[f"plain {n}"] = x
        plain.append({"steps": n, "name": f"plain {n}", "model_cost": n / args.steps})
        print(f"sampled plain {n} steps", flush=True)
    judged = D.judge(samples, labels, resamples=args.resamples, seed=args.seed)
    full = samples["f=0"]
    for row in rows + plain:
        x = samples[row["name"]]
        row.update({"fd_heldout": interval(judged.interval(row["name"])),
                    "fd_minus_full": interval(judged.difference(row["name"], "f=0")),
                    "verdict_vs_full": judged.verdict(row["name"], "f=0"),
                    **M.psnr_rmse(x, full), **M.confidence(x, labels)})
    for row in rows:
        base = "f=0" if row["plain_steps"] == args.steps else f"plain {row['plain_steps']}"
        row["fd_minus_plain"] = interval(judged.difference(row["name"], base))
        row["verdict_vs_plain"] = judged.verdict(row["name"], base)
    x_train, y_train = zoo.digits("train")
    floor = D.judge({"training digits": x_train}, y_train, resamples=args.resamples, seed=args.seed)
    data = {"fd_training_digits_to_heldout": interval(floor.interval("training digits")),
            "training_digits": x_train.shape[0]}
    return rows, plain, data


@torch.no_grad()
def error_by_time(args, names, models, schedule, times=(999, 900, 800, 700, 600, 500, 400, 200, 50, 10)) -> dict:
    """Per training step t and model: eps MSE (conditional) and guided x0 MSE on the held-out digits."""
    abar = torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float32)
    x0, y = zoo.digits("heldout")
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed))
    rows = []
    for t in times:
        a, s = abar[t].sqrt(), (1 - abar[t]).sqrt()
        xt, tt = a * x0 + s * eps, torch.full((x0.shape[0],), float(t))
        row = {"t": t, "alpha": float(a)}
        for name, model in zip(names, models):
            cond, uncond = model(xt, tt, y=y), model(xt, tt, y=torch.full_like(y, zoo.NULL_CLASS))
            guided = uncond + args.guidance * (cond - uncond)
            row[name] = {"eps_mse": float((cond - eps).pow(2).mean()),
                         "x0_mse_guided": float(((xt - s * guided) / a - x0).pow(2).mean())}
        rows.append(row)
    return {"columns": "per t: alpha_t, and per model eps_mse (conditional), x0_mse_guided", "rows": rows}


def timing(args, draw, rows, noise, labels) -> None:
    """Wall time of each fraction on the timing batch: interleaved repeats after one warm-up each."""
    t_noise, t_labels = noise[:args.timing_batch].clone(), labels[:args.timing_batch].clone()
    times = {r["fraction_small"]: [] for r in rows}
    for f in times:
        draw(TStitch(f), t_noise, t_labels, args.steps)
    for _ in range(args.repeats):
        for f in times:
            start = time.perf_counter()
            draw(TStitch(f), t_noise, t_labels, args.steps)
            times[f].append(time.perf_counter() - start)
    full_median, full_min = statistics.median(times[0.0]), min(times[0.0])
    for row in rows:
        walls = times[row["fraction_small"]]
        row.update({"wall_s_median": statistics.median(walls), "wall_s_min": min(walls), "wall_s_repeats": walls,
                    "ideal_speedup": 1.0 / row["model_cost"],
                    "speedup_vs_full": full_median / statistics.median(walls),
                    "speedup_vs_full_min": full_min / min(walls)})
        row["speedup_of_ideal"] = row["speedup_vs_full"] / row["ideal_speedup"]
        row["speedup_of_ideal_min"] = row["speedup_vs_full_min"] / row["ideal_speedup"]


def picture(result: dict, path: Path) -> bool:
    """Two panels: FD (95% interval) vs model cost for T-Stitch and the plain large model, with the full
    run's interval as a band (points far above the T-Stitch curve are named at the top edge instead);
    speed-up vs the fraction, measured (median, min, with the median's share of the ideal) against the ideal."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows, plain, s = result["rows"], result["large_alone_equal_cost"], result["settings"]
    floor = result["data_reference"]["fd_training_digits_to_heldout"]["value"]
    top = floor + 2.5 * (max(r["fd_heldout"]["high"] for r in rows) - floor)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))

    def bars(items, fmt, label, color):
        shown = [r for r in items if r["fd_heldout"]["value"] <= top]
        ys = [r["fd_heldout"]["value"] for r in shown]
        err = [[y - r["fd_heldout"]["low"] for y, r in zip(ys, shown)],
               [r["fd_heldout"]["high"] - y for y, r in zip(ys, shown)]]
        left.errorbar([r["model_cost"] for r in shown], ys, yerr=err, fmt=fmt, color=color, capsize=3, label=label)
        for r in items:
            if r["fd_heldout"]["value"] > top:
                left.annotate(f"plain {r['steps']} step{'s' * (r['steps'] != 1)}: FD {r['fd_heldout']['value']:.1f} (off the chart)",
                              (r["model_cost"], top), xytext=(4, -12), textcoords="offset points", fontsize=7,
                              color=color, arrowprops={"arrowstyle": "->", "color": color})

    full = rows[0]["fd_heldout"]
    left.axhspan(full["low"], full["high"], color="tab:green", alpha=0.15, label="full run's 95% interval")
    left.axhline(floor, color="gray", ls=":", label="training digits (floor)")
    bars(rows, "s-", f"T-Stitch ({s['models']['small']} first)", "tab:blue")
    for r in rows:
        left.annotate(f"{r['fraction_small']:.0%}", (r["model_cost"], r["fd_heldout"]["value"]),
                      textcoords="offset points", xytext=(4, -12), fontsize=8, color="tab:blue")
    bars(sorted(plain + [rows[0]], key=lambda r: r["model_cost"]), "o--",
         f"plain {s['models']['large']} (fewer steps)", "tab:orange")
    left.set_ylim(floor - 0.05, top)
    left.set_xlabel("model cost (multiply-adds; 1 = the full run)")
    left.set_ylabel("FD to held-out digits (95% interval; lower is better)")
    left.set_title(f"distance vs cost, {s['samples']} samples per point")
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="upper right")
    fr = [r["fraction_small"] for r in rows]
    right.plot(fr, [r["ideal_speedup"] for r in rows], "k--", label="ideal (MAC-weighted)")
    right.plot(fr, [r["speedup_vs_full"] for r in rows], "s-", color="tab:blue", label="measured (median)")
    right.plot(fr, [r["speedup_vs_full_min"] for r in rows], "^:", color="tab:purple", label="measured (min)")
    for r in rows[1:]:
        right.annotate(f"{r['speedup_of_ideal']:.0%}", (r["fraction_small"], r["speedup_vs_full"]),
                       textcoords="offset points", xytext=(6, -10), fontsize=8, color="tab:blue")
    right.set_yscale("log")
    right.set_xlabel("fraction of steps on the small model")
    right.set_ylabel("speed-up vs the full run (CPU wall time)")
    right.set_title(f"CPU, batch {s['timing_batch']}, {s['repeats']} repeats (% = median / ideal)")
    right.grid(alpha=0.3, which="both")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=2000, help="samples per row for the distance (a multiple of 10)")
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap resamples of the intervals")
    parser.add_argument("--timing-batch", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: few samples, no files written")
    parser.add_argument("--picture", action="store_true", help="only redraw the PNG from the JSON")
    args = parser.parse_args(argv)
    if args.picture:
        picture(json.loads(RESULT.read_text()), PICTURE)
        return print(f"wrote {PICTURE}")
    if args.quick:
        args.samples, args.resamples, args.timing_batch, args.repeats, args.fractions = 40, 20, 10, 1, [0.0, 0.4, 1.0]
    torch.set_num_threads(args.threads)
    load_before = load_average()

    names = zoo.TSTITCH_PAIR
    models = [zoo.load(n) for n in names]
    schedule = zoo.schedule(names[-1])
    macs = [m.fn.macs_per_sample for m in models]
    noise = torch.randn(args.samples, 1, 16, 16, generator=torch.Generator().manual_seed(args.seed))
    labels = torch.arange(args.samples) % 10
    draw = Sampler(args, models, schedule)
    rows, plain, data = quality_rows(args, draw, noise, labels, macs)
    timing(args, draw, rows, noise, labels)
    errors = error_by_time(args, names, models, schedule)
    for row in rows + plain:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "wall_s_repeats"})
    print("data reference:", data)

    result = {"benchmark": "tstitch_tradeoff", "machine": {**machine(), "load_average_start": load_before,
                                                           "load_average_end": load_average()},
              "command": "python bench/tstitch_tradeoff.py " + " ".join(argv or []),
              "settings": {"sampler": "dpmpp_2m", "steps": args.steps, "guidance_scale": args.guidance,
                           "schedule": schedule.config(), "samples": args.samples, "resamples": args.resamples,
                           "interval": "95% basic bootstrap around the bias-corrected value, resamples stratified by "
                                       "label, held-out set fixed (ltc.zoo.distance)", "timing_batch": args.timing_batch,
                           "repeats": args.repeats, "labels": "cycling 0..9", "seed": args.seed, "dtype": "float32",
                           "models": {"small": names[0], "large": names[1]},
                           "macs_per_sample": dict(zip(names, macs)),
                           "distance": "Frechet distance to the 297 held-out digits in the zoo classifier's features",
                           "psnr_reference": "fraction 0 (full large model, same noise)"},
              "rows": rows, "large_alone_equal_cost": plain, "data_reference": data, "error_by_time": errors}
    if not args.quick:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(result, indent=1))
        print(f"wrote {RESULT}")
        if picture(result, PICTURE):
            print(f"wrote {PICTURE}")
    return result


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
