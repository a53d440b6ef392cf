"""Per-step loop overhead of ltc.sample with a negligible model, beside diffusers' scheduler loop.

overhead per step = (wall of the whole sampling - wall of the same model calls alone) / steps.
CPU timings are noisy: medians of interleaved repeats, and ratios measured in the same run.

    python bench/loop_overhead.py [--steps 50] [--repeats 30]   -> bench/results/loop_overhead_cpu.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ltc  # noqa: E402
from _env import write_result  # noqa: E402


def tiny_model(x, t):
    return x * 0.5


def time_it(fn, repeats):
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--shape", type=int, nargs="+", default=[1, 4, 32, 32])
    args = p.parse_args()
    torch.set_num_threads(1)
    N, shape = args.steps, tuple(args.shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    schedule = ltc.Schedule.vp("scaled_linear", spacing="leading", steps_offset=1)
    model = ltc.Model(tiny_model, "eps", "tiny")
    t = torch.full((shape[0],), 500.0)

    def model_only():
        for _ in range(N):
            tiny_model(noise, t)

    def ours():
        ltc.sample(model, schedule, sampler="dpmpp_2m", steps=N, noise=noise, progress=False)

    runs = {"model_only": model_only, "ltc_eager": ours}
    try:
        from diffusers import DPMSolverMultistepScheduler
        sched = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            timestep_spacing="leading", steps_offset=1)

        def diffusers_loop():
            sched.set_timesteps(N)
            x = noise.clone()
            for step_t in sched.timesteps:
                x = sched.step(tiny_model(x, step_t), step_t, x).prev_sample

        runs["diffusers_dpmsolver"] = diffusers_loop
    except ImportError:
        print("diffusers not installed: only ltc is measured")

    times = {k: [] for k in runs}
    for _ in range(3):  # warm-up
        for fn in runs.values():
            fn()
    for _ in range(args.repeats):  # interleaved so drift hits every setup alike
        for k, fn in runs.items():
            times[k] += time_it(fn, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    overhead = {k: (med[k] - med["model_only"]) / N * 1e6 for k in runs if k != "model_only"}
    result = {"steps": N, "shape": list(shape), "dtype": "float32", "sampler": "DPM-Solver++(2M)",
              "median_s": med, "raw_s": times, "overhead_us_per_step": overhead}
    if "diffusers_dpmsolver" in overhead:
        result["overhead_ratio_diffusers_over_ltc"] = overhead["diffusers_dpmsolver"] / overhead["ltc_eager"]
    path = write_result("loop_overhead_cpu", result)
    for k, v in overhead.items():
        print(f"{k:>22}: {v:8.1f} us/step overhead (median wall {med[k] * 1e3:.2f} ms for {N} steps)")
    if "overhead_ratio_diffusers_over_ltc" in result:
        print(f"diffusers / ltc overhead ratio: {result['overhead_ratio_diffusers_over_ltc']:.2f}x")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
