"""T-Stitch trade-off on the zoo: fraction of small-model steps vs quality, model cost and wall time.

For each fraction f of the steps given to ``unet_small`` (the rest to ``unet_large``), with
DPM-Solver++ 2M, classifier-free guidance and labels cycling 0..9, from the same noise:

* Frechet distance (zoo classifier features) to the whole data set, classifier confidence,
  agreement with the requested label, class-balance entropy;
* PSNR / RMSE against the full large-model samples (f = 0) from the same noise;
* NFE per model, model cost (MACs-weighted NFE relative to the full large model);
* wall time of one sampling call on a timing batch: median of repeats, fractions interleaved.

Reference rows: the large model alone at the step count of equal model cost (the plain
"same cost" baseline), and the Frechet distance between two halves of the real data (noise floor).

    python bench/tstitch_tradeoff.py                 # writes bench/results/tstitch_tradeoff.json
    python bench/tstitch_tradeoff.py --quick         # small smoke run, prints only
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import ltc
import ltc.zoo as zoo
from ltc.policies import Full, TStitch
from ltc.zoo import metrics as M

RESULT = Path(__file__).parent / "results" / "tstitch_tradeoff.json"


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "ltc": ltc.__version__}


def draw(args, small, large, schedule, policy, noise, labels, steps):
    return ltc.sample([small, large], schedule, policy, sampler="dpmpp_2m", steps=steps, noise=noise,
                      model_kwargs={"y": labels}, guidance_scale=args.guidance, progress=False,
                      return_info=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=500, help="samples per fraction for the quality metrics")
    parser.add_argument("--timing-batch", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: few samples, no JSON written")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.timing_batch, args.repeats, args.fractions = 40, 10, 1, [0.0, 0.5, 1.0]
    torch.set_num_threads(args.threads)

    small, large = zoo.load("unet_small"), zoo.load("unet_large")
    schedule = zoo.schedule("unet_large")
    macs = [small.fn.macs_per_sample, large.fn.macs_per_sample]
    gen = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.samples, 1, 16, 16, generator=gen)
    labels = torch.arange(args.samples) % 10
    t_noise, t_labels = noise[:args.timing_batch].clone(), labels[:args.timing_batch].clone()

    def cost(nfe_per_model):
        return sum(n * m for n, m in zip(nfe_per_model, macs)) / (args.steps * macs[1])

    rows, reference = [], None
    for f in args.fractions:
        x, info = draw(args, small, large, schedule, TStitch(f), noise, labels, args.steps)
        if reference is None:
            if f != 0.0:
                raise ValueError("the first fraction must be 0.0 (the full large-model reference)")
            reference = x
        row = {"fraction_small": f, "nfe_per_model": info.nfe_per_model, "model_cost": cost(info.nfe_per_model),
               "frechet_distance": M.frechet_distance(x), **M.confidence(x, labels),
               "class_entropy": M.class_balance(x)["entropy"], **M.psnr_rmse(x, reference)}
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    baselines = []
    for row in rows:
        n = max(1, round(row["model_cost"] * args.steps))
        if n in [b["steps"] for b in baselines] or n == args.steps:
            continue
        x, info = draw(args, small, large, schedule, Full(1), noise, labels, n)
        b = {"steps": n, "model_cost": n / args.steps, "frechet_distance": M.frechet_distance(x),
             **M.confidence(x, labels), "class_entropy": M.class_balance(x)["entropy"], **M.psnr_rmse(x, reference)}
        baselines.append(b)
        print("large alone, equal cost:", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in b.items()})

    times = {f: [] for f in args.fractions}
    for f in args.fractions:  # warm-up
        draw(args, small, large, schedule, TStitch(f), t_noise, t_labels, args.steps)
    for _ in range(args.repeats):
        for f in args.fractions:
            start = time.perf_counter()
            draw(args, small, large, schedule, TStitch(f), t_noise, t_labels, args.steps)
            times[f].append(time.perf_counter() - start)
    full_wall = statistics.median(times[args.fractions[0]])
    for row in rows:
        row["wall_s_median"] = statistics.median(times[row["fraction_small"]])
        row["wall_s_repeats"] = times[row["fraction_small"]]
        row["speedup_vs_full"] = full_wall / row["wall_s_median"]
        row["ideal_speedup"] = 1.0 / row["model_cost"]

    x_data, _ = zoo.digits("all")
    perm = torch.randperm(x_data.shape[0], generator=torch.Generator().manual_seed(1))
    half = x_data.shape[0] // 2
    floor = M.frechet_distance(x_data[perm[:half]], x_data[perm[half:]])
    x_sub = x_data[perm[:args.samples]]
    data_row = {"frechet_distance_data_half_vs_half": floor,
                "frechet_distance_data_subset_vs_all": M.frechet_distance(x_sub),
                **{f"data_{k}": v for k, v in M.confidence(x_data, zoo.raw_digits("all")[1]).items()}}
    print("data reference:", data_row)

    result = {"benchmark": "tstitch_tradeoff", "machine": machine(),
              "command": "python bench/tstitch_tradeoff.py " + " ".join(argv or []),
              "settings": {"sampler": "dpmpp_2m", "steps": args.steps, "guidance_scale": args.guidance,
                           "schedule": schedule.config(), "samples": args.samples, "timing_batch": args.timing_batch,
                           "repeats": args.repeats, "labels": "cycling 0..9", "seed": args.seed, "dtype": "float32",
                           "models": {"small": "unet_small", "large": "unet_large"},
                           "macs_per_sample": {"unet_small": macs[0], "unet_large": macs[1]},
                           "psnr_reference": "fraction 0 (full large model, same noise)",
                           "frechet_reference": "all 1797 digits, zoo classifier features"},
              "rows": rows, "large_alone_equal_cost": baselines, "data_reference": data_row}
    if not args.quick:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(result, indent=1))
        print(f"wrote {RESULT}")
    return result


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
