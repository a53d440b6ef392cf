"""Per-step loop overhead of ltc.sample with a negligible model, beside k-diffusion's sample_dpmpp_2m and diffusers' DPM-Solver loop.

overhead per step = (wall of the whole sampling - wall of the same model calls alone) / steps, for
DPM-Solver++(2M) on one grid (VP scaled-linear, trailing spacing -- the one spacing whose grid ltc,
diffusers' DPM-Solver and k-diffusion share --, 50 steps, ending at sigma = 0),
one thread, float32.  Medians of interleaved repeats (drift hits every loop alike); every ratio is
measured in the same run, from wall time (``overhead_us_per_step``, the headline) and from the
thread's CPU time (``overhead_cpu_us_per_step``: steadier on a shared machine).  The loops are
checked to give the same sample (to float32 round-off) before anything is timed, so the
comparison is like for like:

* ``ltc_eager``: ``ltc.sample(model, schedule, sampler="dpmpp_2m", ...)`` with the default
  ``check_finite`` (``"step"`` on the CPU: every step is checked for NaN/Inf).
* ``kdiffusion_dpmpp_2m``: ``k_diffusion.sampling.sample_dpmpp_2m`` over the same grid in
  k-diffusion's variables (``x_k = x / alpha``, ``sigma_k = sigma / alpha``), the eps model wrapped
  by k-diffusion's own ``DiscreteEpsDDPMDenoiser`` (quantized: the same integer times as ltc).
* ``kdiffusion_dpmpp_2m_bare``: the same sampler with the cheapest correct wrapper (the model time
  of each call from a precomputed list): the lowest overhead k-diffusion can have here.
* ``diffusers_dpmsolver``: ``DPMSolverMultistepScheduler`` (``set_timesteps`` + ``step`` per step).

k-diffusion is optional: its package ``__init__`` imports training and evaluation modules (clip,
clean-fid, kornia, scikit-image, ...), so only ``k_diffusion.sampling`` and ``k_diffusion.external``
are loaded, which need scipy, torchsde and torchdiffeq (``pip install --no-deps k-diffusion`` then
``pip install scipy torchsde torchdiffeq``; torchvision, imported by an image helper sampling never
calls, is stood in for when absent).  When it cannot be imported the loop is skipped and the JSON
says why (``kdiffusion.skipped``); likewise diffusers.  ``goals`` holds the issue's CPU targets:
ltc's overhead <= k-diffusion's (the bare wrapper, its cheapest) and <= 0.5x diffusers'.

    python bench/loop_overhead.py [--steps 50] [--repeats 25] [--shapes 1x4x64x64 1x4x32x32]   -> bench/results/loop_overhead_cpu.json
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ltc  # noqa: E402
from _env import machine_info, write_result  # noqa: E402

BETA_START, BETA_END, TRAIN_STEPS = 0.00085, 0.012, 1000  # scaled_linear, as Schedule.vp("scaled_linear")
AGREEMENT_TOL = 1e-4  # max |a - b| / max |a| between the samples of any two loops (float32 round-off)


def tiny_model(x, t):
    """The negligible eps model every loop calls."""
    return x * 0.1


def load_kdiffusion():
    """``(k_diffusion.sampling, k_diffusion.external, version)``, or ``(None, None, why)``.

    ``import k_diffusion`` runs a package ``__init__`` that imports every training and evaluation
    module; when that fails, the two modules sampling needs are imported under an empty package
    shell (the real package's path, its ``__init__`` not run).  ``k_diffusion.utils`` imports
    torchvision for two image-conversion helpers that sampling never calls; PyPI's torchvision
    wheels need a CUDA build of torch, so where torchvision is absent an empty placeholder stands
    in for it during the import only."""
    if importlib.util.find_spec("k_diffusion") is None:
        return None, None, "k-diffusion is not installed"
    version = importlib.metadata.version("k-diffusion")
    try:
        import k_diffusion
        return k_diffusion.sampling, k_diffusion.external, version
    except ImportError:
        pass
    spec = importlib.util.find_spec("k_diffusion")
    sys.modules["k_diffusion"] = importlib.util.module_from_spec(spec)  # not executed: only its __path__ is used
    placeholders = [] if importlib.util.find_spec("torchvision") else ["torchvision", "torchvision.transforms",
                                                                        "torchvision.transforms.functional"]
    for name in placeholders:
        sys.modules[name] = types.ModuleType(name)
    if placeholders:
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    try:
        sampling = importlib.import_module("k_diffusion.sampling")
        external = importlib.import_module("k_diffusion.external")
    except ImportError as e:
        del sys.modules["k_diffusion"]
        return None, None, f"k-diffusion {version} is installed but k_diffusion.sampling cannot be imported: {e}"
    finally:
        for name in placeholders:
            del sys.modules[name]
    return sampling, external, version


def time_once(fn) -> tuple[float, float]:
    """Wall and CPU (this thread's) seconds of one ``fn()``; on a shared machine the CPU time
    leaves out the time the loop waited for a core."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def overheads(runs: dict, times: dict, steps: int) -> dict:
    """Per-step overhead in us of every loop from the medians of ``times`` (name -> seconds)."""
    med = {k: statistics.median(v) for k, v in times.items()}
    return {k: (med[k] - med["model_only"]) / steps * 1e6 for k in runs if k != "model_only"}


def scaled_linear_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, TRAIN_STEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def loops(shape: tuple, steps: int, kd) -> tuple[dict, dict]:
    """The loops to time (name -> zero-argument callable returning the sample) and what was skipped."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    schedule = ltc.Schedule.vp("scaled_linear", spacing="trailing")
    model = ltc.Model(tiny_model, "eps", "tiny")
    grid = schedule.discretize(steps)
    t_model = torch.full((shape[0],), 500.0)

    def model_only():
        for _ in range(steps):
            tiny_model(noise, t_model)

    def ltc_eager():
        return ltc.sample(model, schedule, sampler="dpmpp_2m", steps=steps, noise=noise, progress=False)

    runs, skipped = {"model_only": model_only, "ltc_eager": ltc_eager}, {}
    sampling, external, why = kd
    if sampling is None:
        skipped["kdiffusion"] = why
    else:
        # k-diffusion's variables: x_k = x / alpha, sigma_k = sigma / alpha; the last point is sigma = 0, alpha = 1
        sigmas = torch.tensor(np.asarray(grid.sigma) / np.asarray(grid.alpha), dtype=torch.float32)
        noise_k = noise / float(grid.alpha[0])
        denoiser = external.DiscreteEpsDDPMDenoiser(tiny_model, scaled_linear_alphas_cumprod().float(), quantize=True)
        times = [torch.full((shape[0],), float(t)) for t in grid.t[:-1]]

        def kdiffusion():
            return sampling.sample_dpmpp_2m(denoiser, noise_k, sigmas, disable=True)

        def kdiffusion_bare():
            model_times = iter(times)

            def bare(x, sigma):  # x_k -> the x0 estimate: x = alpha x_k, alpha = 1 / sqrt(1 + sigma_k^2)
                s = sigma.view(-1, *([1] * (x.ndim - 1)))
                return x - s * tiny_model(x * (s * s + 1).rsqrt(), next(model_times))
            return sampling.sample_dpmpp_2m(bare, noise_k, sigmas, disable=True)

        runs["kdiffusion_dpmpp_2m"] = kdiffusion
        runs["kdiffusion_dpmpp_2m_bare"] = kdiffusion_bare
    try:
        from diffusers import DPMSolverMultistepScheduler
    except ImportError as e:
        skipped["diffusers"] = f"diffusers cannot be imported: {e}"
    else:
        sched = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=BETA_START, beta_end=BETA_END,
                                            timestep_spacing="trailing")

        def diffusers_loop():
            sched.set_timesteps(steps)
            x = noise.clone()
            for step_t in sched.timesteps:
                x = sched.step(tiny_model(x, step_t), step_t, x).prev_sample
            return x

        runs["diffusers_dpmsolver"] = diffusers_loop
    return runs, skipped


def agreement(runs: dict) -> dict:
    """Max |sample - ltc's sample| / max |ltc's sample| of every other loop; raises past AGREEMENT_TOL."""
    ref = runs["ltc_eager"]()
    scale = float(ref.abs().max())
    out = {}
    for name, fn in runs.items():
        if name in ("model_only", "ltc_eager"):
            continue
        out[name] = float((fn() - ref).abs().max()) / scale
        if not out[name] <= AGREEMENT_TOL:
            raise RuntimeError(f"{name} gives another sample than ltc (relative max difference {out[name]:.3g} > "
                               f"{AGREEMENT_TOL:g}): the loops are not comparable")
    return out


def measure(shape: tuple, steps: int, repeats: int, kd) -> dict:
    runs, skipped = loops(shape, steps, kd)
    agree = agreement(runs)
    wall, cpu = {k: [] for k in runs}, {k: [] for k in runs}
    for _ in range(3):  # warm-up
        for fn in runs.values():
            fn()
    for _ in range(repeats):  # interleaved so drift hits every loop alike
        for k, fn in runs.items():
            w, c = time_once(fn)
            wall[k].append(w)
            cpu[k].append(c)
    overhead, overhead_cpu = overheads(runs, wall, steps), overheads(runs, cpu, steps)
    ltc_us = overhead["ltc_eager"]
    result = {"shape": list(shape), "median_s": {k: statistics.median(v) for k, v in wall.items()}, "raw_s": wall,
              "raw_cpu_s": cpu, "overhead_us_per_step": overhead, "overhead_cpu_us_per_step": overhead_cpu,
              "relative_max_difference_to_ltc": agree, "skipped": skipped,
              "ratio_ltc_over": {k: ltc_us / v for k, v in overhead.items() if k != "ltc_eager"},
              "ratio_ltc_over_cpu_time": {k: overhead_cpu["ltc_eager"] / v for k, v in overhead_cpu.items()
                                          if k != "ltc_eager"}}
    if "diffusers_dpmsolver" in overhead:
        result["overhead_ratio_diffusers_over_ltc"] = overhead["diffusers_dpmsolver"] / ltc_us
    result["goals"] = goals(result)
    return result


def goals(result: dict) -> dict:
    """The issue's CPU targets, met or not, by wall and by CPU time (absent: that loop was skipped)."""
    out = {}
    for clock, ratio in (("wall", result["ratio_ltc_over"]), ("cpu_time", result["ratio_ltc_over_cpu_time"])):
        if "kdiffusion_dpmpp_2m_bare" in ratio:
            out[f"ltc_le_kdiffusion_{clock}"] = ratio["kdiffusion_dpmpp_2m_bare"] <= 1.0
        if "diffusers_dpmsolver" in ratio:
            out[f"ltc_le_half_diffusers_{clock}"] = ratio["diffusers_dpmsolver"] <= 0.5
    return out


def parse_shape(text: str) -> tuple:
    try:
        shape = tuple(int(s) for s in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is sizes joined by x, e.g. 1x4x64x64; got {text!r}") from None
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape needs a batch and at least one positive size; got {text!r}")
    return shape


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--shapes", type=parse_shape, nargs="+", default=[(1, 4, 64, 64), (1, 4, 32, 32)])
    p.add_argument("--out", type=Path, help="write the JSON here instead of bench/results/loop_overhead_cpu.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    kd = load_kdiffusion()
    by_shape = [measure(shape, args.steps, args.repeats, kd) for shape in args.shapes]
    kd_info = {"version": kd[2], "denoiser": "k_diffusion.external.DiscreteEpsDDPMDenoiser(quantize=True); "
               "bare: x_k - sigma_k eps(x_k / sqrt(1 + sigma_k^2), t)"} if kd[0] is not None else {"skipped": kd[2]}
    head = by_shape[0]
    result = {"machine": {**machine_info(), "threads": torch.get_num_threads()},
              "steps": args.steps, "shape": head["shape"], "dtype": "float32", "sampler": "DPM-Solver++(2M)",
              "grid": "VP scaled_linear, trailing spacing, final sigma 0",
              "check_finite": "step (the CPU default)", "kdiffusion": kd_info,
              **{k: v for k, v in head.items() if k != "shape"}, "by_shape": by_shape}
    if args.out is None:
        path = write_result("loop_overhead_cpu", result)
    else:
        path = args.out
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for entry in by_shape:
        print(f"shape {entry['shape']}, {args.steps} steps, medians of {args.repeats} interleaved repeats:")
        for k, v in entry["overhead_us_per_step"].items():
            ratio = "" if k == "ltc_eager" else (f"   ltc / this: {entry['ratio_ltc_over'][k]:.2f} "
                                                 f"(CPU time: {entry['ratio_ltc_over_cpu_time'][k]:.2f})")
            print(f"  {k:>26}: {v:8.1f} us/step overhead, {entry['overhead_cpu_us_per_step'][k]:8.1f} CPU "
                  f"(median wall {entry['median_s'][k] * 1e3:.2f} ms){ratio}")
        for k, why in entry["skipped"].items():
            print(f"  {k:>26}: skipped ({why})")
        print("  goals met: " + ", ".join(f"{k}={v}" for k, v in entry["goals"].items()))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
