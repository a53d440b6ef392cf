"""The CUDA extension's step operations vs the Triton kernels vs the eager torch reference, as GB/s
and as a fraction of the device-to-device copy bandwidth measured in the same run.

Operations and the bytes each must move (n = latent elements, s = bytes per element):

    model_step        CFG DPM-Solver++(2M) step: x, m_u, m_c, D_{i-1} in; x_{i+1}, D_i out    6 n s
    extrapolate_step  reads 2: x, x_prev, D_{i-1}, D_{i-2} in; x_{i+1}, D_i out               6 n s
    transition_dots   x, x_prev, x_target in; [B, 2] out                                     3 n s

Timing as in bench/step_ops.py (EVALUATION.md): random normal inputs in rotated buffer sets,
a 256 MiB buffer written before every timed call to flush L2, each call timed alone with CUDA
events after a warm-up; the JSON keeps every repeat and the median.  GPU only: without a CUDA
device it says so and exits 0.

    LTC_BUILD_CUDA=1 pip install --no-build-isolation -e .    # or LTC_CUDA_JIT=1 in the environment
    python bench/cuda_ext.py                                   # 64K..64M elements, fp32 + bf16

writes ``bench/results/cuda_ext_<gpu>.json``.
"""
from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import write_result  # noqa: E402

from ltc import ops  # noqa: E402
from ltc.ops.contract import EXTRAPOLATION_COLS, HISTORY_SLOTS, OPS  # noqa: E402
from ltc.plan import compile_plan  # noqa: E402
from ltc.policies import Full  # noqa: E402
from ltc.samplers import get_sampler  # noqa: E402
from ltc.schedule import Schedule  # noqa: E402

SIZES = [1 << k for k in (16, 18, 20, 22, 24, 26)]  # 64K .. 64M elements
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STREAMS = {"model_step": 6, "extrapolate_step": 6, "transition_dots": 3}
STEP = 10  # of a 20-step CFG DPM-Solver++(2M) plan: reads D_{i-1}
MIB = 1 << 20


def coefficient_table(device):
    """A real plan's [20, NCOLS] table, with random extrapolation columns (their values do not
    change the cost)."""
    schedule = Schedule.vp("scaled_linear", spacing="leading", steps_offset=1)
    plan = compile_plan(schedule.discretize(20), get_sampler("dpmpp_2m"), Full(), ["eps"], 7.5)
    assert plan.history_reads[STEP] == 1 and plan.cfg
    table = plan.coefficients(torch.float32, device).clone()
    cols = list(EXTRAPOLATION_COLS)
    table[:, cols] = torch.rand((table.shape[0], len(cols)), generator=torch.Generator().manual_seed(0)).to(device)
    return table


class Buffers:
    """Inputs and outputs of all three operations for a [1, n] latent."""

    def __init__(self, n, dtype, device, seed):
        g = torch.Generator(device=device).manual_seed(seed)
        def randn(*shape):
            return torch.randn(shape, generator=g, device=device, dtype=dtype)
        self.x, self.x_prev, self.m = randn(1, n), randn(1, n), randn(2, n)
        self.hist, self.out = randn(HISTORY_SLOTS, 1, n), torch.empty((1, n), device=device, dtype=dtype)

    @property
    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in (self.x, self.x_prev, self.m, self.hist, self.out))


def calls(module, coefs):
    """op name -> fn(buffers) running that op of ``module`` (a backend of ltc.ops)."""
    return {
        "model_step": lambda b: module.model_step(b.x, b.m, b.hist, coefs, STEP, b.out, reads=1, cfg=True),
        "extrapolate_step": lambda b: module.extrapolate_step(b.x, b.x_prev, b.hist, coefs, STEP, b.out, reads=2),
        "transition_dots": lambda b: module.transition_dots(b.x, b.x_prev, b.out),
    }


def per_call_us(fn, sets, flush, repeats, warmup):
    """Each call alone, L2 flushed before it, timed with CUDA events: microseconds per repeat."""
    for w in range(warmup):
        fn(sets[w % len(sets)])
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for r, (start, end) in enumerate(events):
        flush.zero_()
        start.record()
        fn(sets[r % len(sets)])
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) * 1e3 for start, end in events]


def copy_gbps(nbytes, flush, repeats, warmup):
    """``dst.copy_(src)`` of ``nbytes`` (read + write: 2 nbytes moved)."""
    src = torch.randn(max(1, nbytes // 4), device="cuda")
    dst = torch.empty_like(src)
    times = per_call_us(lambda _: dst.copy_(src), [None], flush, repeats, warmup)
    median = statistics.median(times)
    return {"bytes_moved": 2 * src.numel() * 4, "median_us": median, "gbps": 2 * src.numel() * 4 / median / 1e3,
            "raw_us": times}


def backends():
    """Available backends among cuda (the extension), triton and eager (the reference); and why
    the others are not."""
    found, missing = {}, {}
    for label, name in (("cuda_ext", "cuda"), ("triton", "triton"), ("eager", "reference")):
        try:
            found[label] = ops.resolve(name, "cuda")[1]
        except ValueError as exc:
            missing[label] = str(exc)
    return found, missing


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="latent elements (default 64K..64M)")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--flush-mib", type=int, default=256)
    p.add_argument("--copy-mib", type=int, default=1024)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("bench/cuda_ext.py needs a CUDA device (and the extension built): nothing measured")
        return

    found, missing = backends()
    for label, why in missing.items():
        print(f"{label}: not available ({why})")
    flush = torch.empty(args.flush_mib * MIB, dtype=torch.int8, device="cuda")
    coefs = coefficient_table("cuda")
    peak = copy_gbps(args.copy_mib * MIB, flush, args.repeats, args.warmup)
    print(f"copy bandwidth ({args.copy_mib} MiB): {peak['gbps']:.1f} GB/s")
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for n in args.sizes:
            first = Buffers(n, dtype, "cuda", seed=0)
            count = min(8, max(2, math.ceil(4 * flush.numel() / first.nbytes)))
            sets = [first] + [Buffers(n, dtype, "cuda", seed=s) for s in range(1, count)]
            for op in args.ops:
                nbytes = STREAMS[op] * n * dtype.itemsize
                same = copy_gbps(nbytes // 2, flush, args.repeats, args.warmup)
                medians = {}
                for label, module in found.items():
                    times = per_call_us(calls(module, coefs)[op], sets, flush, args.repeats, args.warmup)
                    median = statistics.median(times)
                    gbps = nbytes / median / 1e3
                    medians[label] = median
                    rows.append({"op": op, "impl": label, "dtype": dtype_name, "numel": n, "shape": [1, n],
                                 "bytes_moved": nbytes, "rotating_sets": len(sets), "median_us": median,
                                 "gbps": gbps, "frac_copy_peak": gbps / peak["gbps"],
                                 "copy_same_bytes_gbps": same["gbps"], "frac_copy_same_bytes": gbps / same["gbps"],
                                 "raw_us": times})
                    print(f"{op:16s} {label:8s} {dtype_name} n={n:>9d}: {median:9.1f} us {gbps:8.1f} GB/s "
                          f"{100 * gbps / peak['gbps']:5.1f}% of copy")
                for row in rows[-len(found):]:
                    if "eager" in medians:
                        row["speedup_vs_eager"] = medians["eager"] / row["median_us"]
            del sets, first
            torch.cuda.empty_cache()

    slug = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    payload = {"benchmark": "cuda_ext", "implementations": list(found), "unavailable": missing,
               "ops": {op: f"{STREAMS[op]} * numel * itemsize bytes" for op in args.ops},
               "step": {"plan": "vp scaled_linear, 20 steps, dpmpp_2m, eps, guidance 7.5", "step": STEP,
                        "model_step": "reads=1, cfg", "extrapolate_step": "reads=2"},
               "timing": {"method": "cuda events, one call per event pair", "repeats": args.repeats,
                          "warmup": args.warmup, "l2_flush_bytes": flush.numel(), "median": "of raw_us"},
               "copy_peak": peak, "rows": rows}
    print(f"wrote {write_result(f'cuda_ext_{slug}', payload)}")


if __name__ == "__main__":
    main()
