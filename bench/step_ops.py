"""One step op (``--op``, one of ltc.ops.contract.OPS; default a classifier-free-guided
DPM-Solver++(2M) model step): fused Triton kernel vs the eager torch reference
(:mod:`ltc.ops.reference`) vs ``torch.compile`` of that same reference.

The bytes each op must move (n = latent elements, s = bytes per element; GB/s = bytes / time):

    model_step        x, m_u, m_c, D_{i-1} in; x_{i+1}, D_i out (cfg, reads 1)          6 n s
    extrapolate_step  x, x_prev, D_{i-1}, D_{i-2} in; x_{i+1}, D_i out (reads 2)         6 n s
    transition_dots   x, x_prev, x_target in; [B, 2] out                                3 n s

each also as a fraction of the device-to-device copy bandwidth measured in the same run
(``dst.copy_(src)`` of a large buffer, read + write; also a copy of the same bytes as the step).

Timing (EVALUATION.md): inputs are random normals in several rotated buffer sets; before every
timed call a 256 MiB buffer is written to flush L2; each call is timed alone (CUDA events, or
``perf_counter`` on the CPU); the JSON keeps the median and every repeat.  Also recorded: the
back-to-back wall time per call (host overhead included, what an eager loop sees at small sizes)
and, on CUDA, the time per step of steps replayed from a CUDA graph (launch overhead removed).

    python bench/step_ops.py                  # CPU: small sizes, eager reference only, model_step (+ executor bytes)
    python bench/step_ops.py --device cuda    # 64K..64M elements, fp32 + bf16, all three implementations
    python bench/step_ops.py --device cuda --op extrapolate_step   # or transition_dots
    python bench/step_ops.py --device cuda --configs 2048x8 4096x8   # + other fused launch sizes (model_step)

Every row says whether n % 16 == 0 (``aligned``); the default CUDA sizes include unaligned ones
(n + 8), and the summary prints % of copy bandwidth for aligned and unaligned sizes apart.

Bytes of the whole executor step (model_step only; ``executor_bytes`` in the JSON): one guided
``Walk.advance`` of the fused backend (``--executor-backend``, default triton; its interpreter on
the CPU with ``TRITON_INTERPRET=1``) with ``check_finite="end"``, after a model call that returns a
contiguous output and one that returns a DiT-style ``out[:, :C]`` view of a ``[2B, 2C, H, W]``
tensor.  Every aten operation launched is counted by a dispatch mode (tensor arguments read,
written arguments and fresh outputs written, views free), the fused kernel by its own minimum;
the ratio to the kernel's minimum is the goal's (<= 1.1x).  The model input ``[x; x]`` is counted
apart (it belongs to the model call).

writes ``bench/results/step_kernels_<device>.json`` (model_step) or ``step_ops_<op>_<device>.json``.
(``<device>``: ``cpu`` or the GPU's name; the model step keeps the file name and format that
bench/report.py reads.)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path

if "cuda" not in sys.argv:  # a CPU run counts the Triton executor's bytes in Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import machine_info, write_result  # noqa: E402

from ltc.ops import reference as ops_reference  # noqa: E402
from ltc.ops.contract import EXTRAPOLATION_COLS, HISTORY_SLOTS, OPS  # noqa: E402
from ltc.plan import compile_plan  # noqa: E402
from ltc.policies import Full  # noqa: E402
from ltc.samplers import get_sampler  # noqa: E402
from ltc.schedule import Schedule  # noqa: E402

GUIDANCE = 7.5
PLAN_STEPS = 20
STEP = 10               # a second-order step: reads D_{i-1}
READS = 1
STREAMS = 6             # x, m_u, m_c, D_{i-1} in; x_{i+1}, D_i out
EXTRAPOLATE_READS = 2   # the extrapolated step reads D_{i-1} and D_{i-2}
OP_STREAMS = {"model_step": STREAMS, "extrapolate_step": 6, "transition_dots": 3}
OP_BYTES = {"model_step": "(x, m_u, m_c, D_prev in; x_next, D out)",
            "extrapolate_step": "(x, x_prev, D_prev, D_prev2 in; x_next, D out)",
            "transition_dots": "(x, x_prev, x_target in; [B, 2] out)"}
CUDA_SIZES = [1 << k for k in (16, 18, 20, 22, 24, 26)] + [(1 << 22) + 8, (1 << 24) + 8]  # 64K .. 64M; unaligned
CPU_SIZES = [1 << 16, 1 << 18]
EXECUTOR_SHAPES_CPU = [(1, 4, 8, 8), (1, 4, 7, 9)]          # n % 16 == 0 and not (interpreter: tiny)
EXECUTOR_SHAPES_CUDA = [(1, 4, 64, 64), (1, 4, 63, 65)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MIB = 1 << 20


def plan_coefficients(device):
    """The [N, NCOLS] table of a real plan: VP schedule, DPM-Solver++(2M), eps model, CFG; its
    extrapolation columns (zero in a plan without extrapolated steps) random, so the extrapolated
    step computes something (the values do not change its cost)."""
    schedule = Schedule.vp("scaled_linear", spacing="leading", steps_offset=1)
    plan = compile_plan(schedule.discretize(PLAN_STEPS), get_sampler("dpmpp_2m"), Full(), ["eps"], GUIDANCE)
    assert plan.history_reads[STEP] == READS and plan.cfg
    table = plan.coefficients(torch.float32, device).clone()
    cols = [int(c) for c in EXTRAPOLATION_COLS]
    table[:, cols] = torch.rand((table.shape[0], len(cols)), generator=torch.Generator().manual_seed(0)).to(device)
    return table


class StepBuffers:
    """One set of inputs/outputs of ``op`` for a latent of ``n`` elements, shape [1, n]."""

    def __init__(self, n, dtype, device, seed, op="model_step"):
        g = torch.Generator(device=device).manual_seed(seed)
        def randn(*shape):
            return torch.randn(shape, generator=g, device=device, dtype=dtype)
        self.x = randn(1, n)
        self.tensors = [self.x]
        if op == "model_step":
            self.m = randn(2, n)
            self.tensors.append(self.m)
        else:
            self.x_prev = randn(1, n)
            self.tensors.append(self.x_prev)
        if op == "transition_dots":
            self.x_target = randn(1, n)
            self.tensors.append(self.x_target)
        else:
            self.hist = randn(HISTORY_SLOTS, 1, n)
            self.out = torch.empty_like(self.x)
            self.tensors += [self.hist, self.out]

    @property
    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in self.tensors)


def bind(fn, op, coefs):
    """fn(buffers) -> the op's result (``out``, or the dots) for ``fn`` an implementation of ``op``."""
    if op == "model_step":
        def call(b):
            fn(b.x, b.m, b.hist, coefs, STEP, b.out, reads=READS, cfg=True)
            return b.out
    elif op == "extrapolate_step":
        def call(b):
            fn(b.x, b.x_prev, b.hist, coefs, STEP, b.out, reads=EXTRAPOLATE_READS)
            return b.out
    else:
        def call(b):
            return fn(b.x, b.x_prev, b.x_target)
    return call


def implementations(coefs, names, configs=(), op="model_step"):
    """name -> fn(buffers): the same ``op`` by each implementation.  Call once per (size, dtype):
    ``torch.compile`` specialises on shapes (``dynamic=False``), and the dynamo cache is reset so
    that its recompile limit never sends a case back to eager."""
    torch._dynamo.reset()
    impls = {}
    for name in names:
        if name == "eager":
            impls[name] = bind(getattr(ops_reference, op), op, coefs)
        elif name == "compile":
            impls[name] = bind(torch.compile(getattr(ops_reference, op), dynamic=False, fullgraph=True), op, coefs)
        elif name == "fused":
            from ltc import kernels
            if not kernels.AVAILABLE:
                raise SystemExit("--impls fused needs triton")
            impls[name] = bind(getattr(kernels, op), op, coefs)
        else:
            raise SystemExit(f"unknown implementation {name!r}: use fused, eager, compile")
    if configs and op != "model_step":
        raise SystemExit("--configs times the fused model step's launch sizes: use it with --op model_step")
    for config in configs:  # the fused kernel at other launch sizes, e.g. "2048x8"
        from ltc.kernels.model_step import launch_unchecked
        block, warps = (int(v) for v in config.split("x"))
        impls[f"fused_{block}x{warps}"] = (
            lambda b, block=block, warps=warps: launch_unchecked(
                b.x, b.m, b.hist, coefs, STEP, b.out, reads=READS, cfg=True, noise=None, block=block, num_warps=warps))
    return impls


class Timer:
    """Per-call timing with an L2 flush before every call: CUDA events, or perf_counter on the CPU."""

    def __init__(self, device, flush_bytes):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.flush = torch.empty(flush_bytes, dtype=torch.int8, device=device)
        self.method = "cuda events" if self.cuda else "time.perf_counter"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def per_call_us(self, fn, sets, repeats, warmup):
        for w in range(warmup):
            fn(sets[w % len(sets)])
        self.sync()
        times = []
        if self.cuda:
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(repeats)]
            for r, (start, end) in enumerate(events):
                self.flush.zero_()
                start.record()
                fn(sets[r % len(sets)])
                end.record()
            self.sync()
            times = [start.elapsed_time(end) * 1e3 for start, end in events]
        else:
            for r in range(repeats):
                self.flush.zero_()
                start = time.perf_counter()
                fn(sets[r % len(sets)])
                times.append((time.perf_counter() - start) * 1e6)
        return times

    def back_to_back_us(self, fn, sets, calls):
        """Wall time per call of ``calls`` calls in a row (no flush): includes host overhead."""
        self.sync()
        start = time.perf_counter()
        for c in range(calls):
            fn(sets[c % len(sets)])
        self.sync()
        return (time.perf_counter() - start) / calls * 1e6

    def graph_us_per_step(self, fn, buffers, steps_per_graph, repeats):
        """CUDA only: ``steps_per_graph`` calls captured in one graph; replay time / steps (L2 warm)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn(buffers)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(steps_per_graph):
                fn(buffers)
        graph.replay()
        self.sync()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for start, end in events:
            start.record()
            graph.replay()
            end.record()
        self.sync()
        return statistics.median(s.elapsed_time(e) * 1e3 for s, e in events) / steps_per_graph


def copy_bandwidth(timer, nbytes, repeats, warmup):
    """``dst.copy_(src)`` of ``nbytes`` (read + write = 2 nbytes moved): median us and GB/s."""
    src = torch.randn(max(1, nbytes // 4), device=timer.device)
    dst = torch.empty_like(src)
    times = timer.per_call_us(lambda _: dst.copy_(src), [None], repeats, warmup)
    median = statistics.median(times)
    return {"bytes_moved": 2 * src.numel() * 4, "median_us": median,
            "gbps": 2 * src.numel() * 4 / median / 1e3, "raw_us": times}


def rotating_sets(n, dtype, device, working_set_bytes, max_sets, op="model_step"):
    first = StepBuffers(n, dtype, device, seed=0, op=op)
    count = min(max_sets, max(2, math.ceil(working_set_bytes / first.nbytes)))
    return [first] + [StepBuffers(n, dtype, device, seed=s, op=op) for s in range(1, count)]


def op_args(op):
    """The fixed arguments of the timed call, as recorded in the result rows."""
    return {"model_step": {"cfg": True, "reads": READS}, "extrapolate_step": {"reads": EXTRAPOLATE_READS},
            "transition_dots": {}}[op]


def device_slug(device):
    if torch.device(device).type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


class ByteCounter(TorchDispatchMode):
    """Bytes moved by the aten operations run under it: each tensor argument read once, each
    written argument (schema ``a!``) and each fresh output written once; views move nothing."""

    def __init__(self):
        super().__init__()
        self.read = self.written = 0
        self.ops: list[str] = []
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused or func.is_view or func._schema.name in ("aten::empty", "aten::empty_like", "aten::lift_fresh"):
            return out
        self.ops.append(func._schema.name)
        for arg, value in zip(func._schema.arguments, [*args, *[kwargs.get(a.name) for a in
                                                               func._schema.arguments[len(args):]]]):
            for t in (value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(t, torch.Tensor):
                    if arg.alias_info is not None and arg.alias_info.is_write:
                        self.written += t.numel() * t.element_size()
                    else:
                        self.read += t.numel() * t.element_size()
        if not func._schema.returns or all(r.alias_info is None for r in func._schema.returns):
            for t in (out if isinstance(out, (list, tuple)) else [out]):
                if isinstance(t, torch.Tensor):
                    self.written += t.numel() * t.element_size()
        return out


def executor_bytes(backend: str, dtype: torch.dtype, shape, device) -> dict:
    """Bytes one guided model step of the walk moves (``check_finite="end"``), per model-output
    layout, next to the fused kernel's minimum (module docstring)."""
    from ltc import ops as ltc_ops
    from ltc.executor.walk import Walk
    from ltc.models import as_models

    name, module = ltc_ops.resolve(backend, device)
    kernel_module = sys.modules.get("ltc.kernels.model_step") if name == "triton" else None
    schedule = Schedule.vp("scaled_linear")
    plan = compile_plan(schedule.discretize(PLAN_STEPS), get_sampler("dpmpp_2m"), Full(), ["eps"], GUIDANCE)
    n, item = math.prod(shape), dtype.itemsize
    reads, noisy = plan.history_reads[STEP], plan.noisy[STEP]
    minimum = (3 + reads + (1 if noisy else 0) + 2) * n * item  # x, m_u, m_c, D_prev.., z in; x_next, D out
    result = {"backend": name, "dtype": str(dtype).replace("torch.", ""), "shape": list(shape), "numel": n,
              "aligned": n % 16 == 0, "fused_minimum_bytes": minimum}
    for layout in ("contiguous", "batch_strided"):
        def model(x, t, layout=layout):
            if layout == "contiguous":
                return torch.zeros_like(x)
            return torch.zeros((x.shape[0], 2 * x.shape[1], *x.shape[2:]), dtype=x.dtype, device=x.device)[:, :x.shape[1]]
        model.prediction, model.name = "eps", "stand-in"
        walk = Walk(plan, as_models(model), torch.zeros(shape, dtype=dtype, device=device), ops=module,
                    check_finite="end")
        walk.load(torch.randn(shape, dtype=dtype, device=device))
        for i in range(STEP):  # the checked first call of each op, and a realistic history
            walk.step(i)
        with ByteCounter() as counter:
            walk.model_input(STEP)
        input_bytes = counter.read + counter.written
        model_out = walk.call(STEP)
        counter = ByteCounter()
        launches = []
        if kernel_module is not None:  # the kernel by its minimum; aten work inside its launcher excluded
            real = kernel_module.launch_unchecked

            def counted(*args, **kwargs):
                counter.paused = True
                try:
                    launches.append(minimum)
                    return real(*args, **kwargs)
                finally:
                    counter.paused = False
            kernel_module.launch_unchecked = counted
        try:
            with counter:
                walk.advance(STEP, model_out)
        finally:
            if kernel_module is not None:
                kernel_module.launch_unchecked = real
        total = counter.read + counter.written + sum(launches)
        result[layout] = {"step_bytes": total, "ratio_to_fused_minimum": total / minimum,
                          "aten_ops": counter.ops, "model_input_bytes": input_bytes}
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--op", default="model_step", choices=OPS, help="the step op to time (default model_step)")
    p.add_argument("--sizes", type=int, nargs="+", help="latent elements (default: 64K..64M on CUDA, 64K, 256K on CPU)")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--impls", nargs="+", help="fused eager compile (default: all on CUDA, eager on CPU)")
    p.add_argument("--configs", nargs="*", default=[],
                   help="also time the fused kernel at these BLOCKxnum_warps launch sizes, e.g. 2048x8 4096x8")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 50 CUDA, 20 CPU)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--flush-mib", type=int, default=None, help="L2 flush buffer (default 256 MiB CUDA, 32 MiB CPU)")
    p.add_argument("--copy-mib", type=int, default=None, help="copy-bandwidth buffer (default 1024 MiB CUDA, 64 CPU)")
    p.add_argument("--executor-backend", default="triton", help="backend of the executor byte count (model_step; "
                   "'none' skips it)")
    p.add_argument("--out", type=Path, help="result file (default bench/results/step_kernels_<device>.json for "
                   "model_step, step_ops_<op>_<device>.json for the other ops)")
    args = p.parse_args()

    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    sizes = args.sizes or (CUDA_SIZES if cuda else CPU_SIZES)
    names = args.impls or (["fused", "eager", "compile"] if cuda else ["eager"])
    repeats = args.repeats or (50 if cuda else 20)
    flush = (args.flush_mib or (256 if cuda else 32)) * MIB
    copy_bytes = (args.copy_mib or (1024 if cuda else 64)) * MIB
    if not cuda:
        torch.set_num_threads(1)

    timer = Timer(args.device, flush)
    coefs = plan_coefficients(args.device)
    peak = copy_bandwidth(timer, copy_bytes, repeats, args.warmup)
    print(f"copy bandwidth ({copy_bytes // MIB} MiB): {peak['gbps']:.1f} GB/s")
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for n in sizes:
            step_bytes = OP_STREAMS[args.op] * n * dtype.itemsize
            sets = rotating_sets(n, dtype, args.device, working_set_bytes=4 * flush, max_sets=8, op=args.op)
            same = copy_bandwidth(timer, step_bytes // 2, repeats, args.warmup)
            results, case_rows = {}, []
            for name, fn in implementations(coefs, names, args.configs, args.op).items():
                row = {"impl": name, "dtype": dtype_name, "numel": n, "aligned": n % 16 == 0, "shape": [1, n],
                       **op_args(args.op),
                       "bytes_moved": step_bytes, "rotating_sets": len(sets)}
                try:
                    times = timer.per_call_us(fn, sets, repeats, args.warmup)
                except Exception as exc:  # e.g. a torch.compile failure: recorded, the sweep goes on
                    row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                    case_rows.append(row)
                    print(f"{name:8s} {dtype_name} n={n:>9d}: {row['error']}")
                    continue
                median = statistics.median(times)
                gbps = step_bytes / median / 1e3
                row.update(median_us=median, gbps=gbps, frac_copy_peak=gbps / peak["gbps"],
                           copy_same_bytes_gbps=same["gbps"], frac_copy_same_bytes=gbps / same["gbps"],
                           back_to_back_us=timer.back_to_back_us(fn, sets, 200 if n <= 1 << 20 else 20),
                           raw_us=times)
                if cuda and name != "compile":
                    try:
                        row["graph_us_per_step"] = timer.graph_us_per_step(fn, sets[0], 20, 20)
                    except Exception as exc:
                        row["graph_error"] = f"{type(exc).__name__}: {exc}"[:500]
                results[name] = fn(sets[0]).float().clone()
                case_rows.append(row)
                print(f"{name:8s} {dtype_name} n={n:>9d}: {median:9.1f} us  {gbps:8.1f} GB/s  "
                      f"{100 * gbps / peak['gbps']:5.1f}% of copy  (b2b {row['back_to_back_us']:.1f} us)")
            for row in case_rows:  # agreement with the eager chain: a sanity check, not a test
                if "eager" in results and row["impl"] in results:
                    row["max_abs_diff_vs_eager"] = float((results[row["impl"]] - results["eager"]).abs().max())
                for base in ("eager", "compile"):
                    other = next((r for r in case_rows if r["impl"] == base and "median_us" in r), None)
                    if other is not None and "median_us" in row:
                        row[f"speedup_vs_{base}"] = other["median_us"] / row["median_us"]
            rows += case_rows
            del sets, results
            if cuda:
                torch.cuda.empty_cache()

    for impl in sorted({r["impl"] for r in rows}):
        for dtype_name in args.dtypes:
            for aligned in (True, False):
                fracs = [r["frac_copy_peak"] for r in rows if r["impl"] == impl and r["dtype"] == dtype_name
                         and r["aligned"] == aligned and "frac_copy_peak" in r]
                if fracs:
                    print(f"{impl:8s} {dtype_name} {'aligned  ' if aligned else 'unaligned'} (n % 16 "
                          f"{'==' if aligned else '!='} 0): {100 * min(fracs):.1f}-{100 * max(fracs):.1f}% of copy")

    executor = []
    if args.op == "model_step" and args.executor_backend != "none":
        for dtype_name in args.dtypes:
            for shape in (EXECUTOR_SHAPES_CUDA if cuda else EXECUTOR_SHAPES_CPU):
                try:
                    entry = executor_bytes(args.executor_backend, DTYPES[dtype_name], shape, args.device)
                except Exception as exc:  # e.g. triton on the CPU without its interpreter: owed to the GPU run
                    entry = {"dtype": dtype_name, "shape": list(shape), "error": f"{type(exc).__name__}: {exc}"[:300]}
                    print(f"executor bytes {dtype_name} {shape}: {entry['error']}")
                else:
                    for layout in ("contiguous", "batch_strided"):
                        e = entry[layout]
                        print(f"executor bytes {entry['backend']} {dtype_name} {shape} {layout:13s}: "
                              f"{e['step_bytes']} B = {e['ratio_to_fused_minimum']:.2f}x the fused minimum "
                              f"({entry['fused_minimum_bytes']} B); aten ops {e['aten_ops']}")
                executor.append(entry)

    slug = device_slug(args.device)
    label = (f"GPU ({slug}); implementations: {', '.join(names)}" if cuda else
             f"CPU, reference only (implementations: {', '.join(names)}; eager = the ops_reference chain): "
             "this run only keeps the benchmark from rotting; CPU timings on a shared machine, not a result")
    step = {"sampler": "dpmpp_2m", "guidance_scale": GUIDANCE, "prediction": "eps", "plan_steps": PLAN_STEPS,
            "step": STEP, **op_args(args.op),
            "bytes_moved": f"{OP_STREAMS[args.op]} * numel * itemsize {OP_BYTES[args.op]}"}
    payload = {"benchmark": "step_kernels", "label": label,
               **({} if args.op == "model_step" else {"op": args.op}),
               "step": step,
               "timing": {"method": timer.method, "repeats": repeats, "warmup": args.warmup,
                          "l2_flush_bytes": flush, "median": "of the per-call times in raw_us",
                          "back_to_back_us": "wall time per call of calls in a row, host overhead included",
                          "graph_us_per_step": "20 steps captured in one CUDA graph, replay time / 20, L2 warm"},
               "copy_peak": {k: v for k, v in peak.items()},
               "rows": rows, **({"executor_bytes": executor} if executor else {})}
    if args.out is None:
        written = write_result(f"step_kernels_{slug}" if args.op == "model_step" else f"step_ops_{args.op}_{slug}",
                               payload)
    else:
        args.out.write_text(json.dumps({"machine": machine_info(), **payload}, indent=2, default=str) + "\n")
        written = args.out
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
