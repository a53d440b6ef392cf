"""CUDA-graph executor on DiT: sampler overhead, realised policy speed-ups, capture and compile times.

Setting: DiT-S/2 and DiT-XL/2 (:mod:`ltc.zoo.reference_nets`, random weights) in bf16 on 32x32x4
latents, batch 1 and 8, 50 steps of DPM-Solver++(2M) on DiT's linear VP schedule, classifier-free
guidance 4.0 (one model call on 2B rows per step).  Timed with CUDA events after warm-up; medians
of ``--repeats`` runs, raw runs in the JSON.

Part ``overhead`` (per model and batch).  Sampler overhead = wall - floor, per step and in % of
the floor, where the floor is the same model calls measured alone:

  model_eager         the 50 model calls alone, eager                 floor of the eager setups
  model_graphed       the same calls replayed from one CUDA graph     floor of the graphed setups
  ltc_eager           ltc.sample(graph=False)
  ltc_step            ltc.sample(graph="step"): per-step graphs
  ltc_whole           ltc.sample(graph="whole"): one graph for the whole trajectory
  ltc_whole_executor  the same replay on a plan compiled once (graphs.run): without ltc.sample's
                      per-call prologue (validation, plan compilation, the noise finite check)
  diffusers           DPMSolverMultistepScheduler loop around the eager model
  compiled_graphed    the calls of the torch.compile'd model (default mode) from one CUDA graph:
                      floor of the compiled setups
  diffusers_compiled  the diffusers loop, model under torch.compile(mode="reduce-overhead")
  ltc_whole_compiled  ltc.sample(graph="whole") around the torch.compile'd model (default mode)

Every wall is also compared with the model-only floor ``model_graphed``.  Capture / compile time:
the first call of each setup (warm-up and capture, or compilation), minus its steady median.

Part ``policies`` (per batch; DiT-S/2 small, DiT-XL/2 large): Full, LTC() (every second step from
N/4: 31 of 50 model calls; weights 1 -- timing does not depend on them), TStitch(0.4) [S, XL],
LTC(base=TStitch(0.4)), each eager and as a whole graph, and the reference-style T-Stitch loop
(diffusers scheduler, the model picked by ``t.item()`` every step).  Realised speed-up =
wall(Full) / wall(policy); ideal = the same ratio of sums of measured per-call model times
(graphed for the graph executor, eager for the eager ones; 0 for an extrapolated step).

    python bench/graph_executor.py                  # everything -> bench/results/graph_executor.json
    python bench/graph_executor.py --part overhead --models S --batches 1 --setups model_graphed ltc_whole
    python bench/graph_executor.py --smoke          # CPU plumbing check: recorded graphs, tiny DiT (--out to write)

Without a CUDA device (and without --smoke) it prints a message and exits 0.  Results of several
invocations merge into the one JSON file (each entry records its device).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ltc  # noqa: E402
from _env import RESULTS, machine_info  # noqa: E402
from ltc.executor import graph as graphs  # noqa: E402
from ltc.policies import LTC, Full, TStitch  # noqa: E402
from ltc.zoo.reference_nets import DiT, dit  # noqa: E402

NAME = "graph_executor"
OVERHEAD_SETUPS = ("model_eager", "model_graphed", "ltc_eager", "ltc_step", "ltc_whole", "ltc_whole_executor",
                   "diffusers", "compiled_graphed", "diffusers_compiled", "ltc_whole_compiled")
POLICIES = {"full": lambda: Full(), "ltc": lambda: LTC(), "tstitch": lambda: TStitch(0.4),
            "tstitch+ltc": lambda: LTC(base=TStitch(0.4))}
EXECUTOR_FLOORS = {"eager": "eager", "graph_whole": "graphed", "graph_whole_executor_only": "graphed"}
SCHEDULE = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, spacing="leading", steps_offset=1)


class Bench:
    """Shared state of one run: device, timing, inputs of one batch size."""

    def __init__(self, args, device, dtype):
        self.args, self.device, self.dtype = args, device, dtype
        self.N, self.G = args.steps, args.guidance
        self.schedule = ltc.Schedule.vp(**SCHEDULE)
        self.models = {}

    # -- timing ----------------------------------------------------------------------------
    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def first_call(self, fn):
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - start, out

    def repeat(self, fn) -> list[float]:
        self.sync()
        times = []
        for _ in range(self.args.repeats):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return times

    def measure(self, fn) -> tuple[dict, object]:
        """Time ``fn``: the first 1 + warmup calls one by one (they include capture or compilation;
        setup_s = their sum - as many steady medians), then ``repeats`` timed calls."""
        firsts = []
        for _ in range(1 + self.args.warmup):
            elapsed, out = self.first_call(fn)
            firsts.append(elapsed)
        raw = self.repeat(fn)
        med = statistics.median(raw)
        return {"median_s": med, "raw_s": raw, "first_calls_s": firsts,
                "setup_s": max(sum(firsts) - len(firsts) * med, 0.0)}, out

    # -- inputs and models -----------------------------------------------------------------
    def model(self, size):
        if size not in self.models:
            if self.args.smoke:
                net = ltc.zoo.reference_nets.randomize(DiT(32, 2, 2, name=f"tiny-{size}"), seed=len(self.models))
                self.models[size] = net.to(self.device, self.dtype)
            else:
                self.models[size] = dit(size, seed=len(self.models), device=self.device, dtype=self.dtype)
        return self.models[size]

    def inputs(self, batch):
        g = torch.Generator().manual_seed(batch)
        self.noise = torch.randn((batch, 4, 32, 32), generator=g).to(self.device, self.dtype)
        self.labels = torch.arange(batch, device=self.device) % 1000
        self.x2 = torch.cat([self.noise, self.noise])
        plan_t = self.schedule.discretize(self.N).t[:-1]
        self.times = torch.tensor(plan_t, dtype=torch.float32, device=self.device)

    # -- setups ----------------------------------------------------------------------------
    def model_calls(self, model):
        def calls():
            for i in range(self.N):
                model(self.x2, self.times[i].expand(self.x2.shape[0]), y=self.labels)
        return calls

    def graphed(self, body):
        """``body`` captured with the executor's capture backend at the first call, then replayed."""
        backend, state = graphs._backend, {}

        def run():
            if "graph" not in state:
                backend.warmup(body, self.device)
                state["graph"] = backend.capture(body, self.device)
            state["graph"].replay()
        return run

    def executor_only(self, models, policy):
        """The whole-graph executor on a plan compiled once: ltc.sample without its per-call
        prologue (validation, plan compilation, a policy's model check)."""
        models = ltc.models.as_models(models)
        plan = ltc.compile_plan(self.schedule.discretize(self.N), ltc.samplers.get_sampler("dpmpp_2m"), policy,
                                [m.prediction for m in models], self.G)
        name, ops = ltc.ops.resolve(None, self.device)

        def run():
            return graphs.run(plan, models, self.noise, graph="whole", ops=ops, ops_name=name,
                              model_kwargs={"y": self.labels})
        return run

    def ltc_sample(self, models, policy, graph):
        def run():
            return ltc.sample(models, self.schedule, policy, sampler="dpmpp_2m", steps=self.N, noise=self.noise,
                              model_kwargs={"y": self.labels}, guidance_scale=self.G, progress=False,
                              return_info=True, graph=graph)
        return run

    def scheduler(self):
        from diffusers import DPMSolverMultistepScheduler
        return DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                           beta_end=0.02, solver_order=2, algorithm_type="dpmsolver++",
                                           prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)

    def diffusers_loop(self, pick, mark_step=False):
        sched = self.scheduler()

        def run():
            sched.set_timesteps(self.N, device=self.device)
            x = self.noise.clone()
            for t in sched.timesteps:
                model = pick(t)
                if mark_step:
                    torch.compiler.cudagraph_mark_step_begin()
                eps = model(torch.cat([x, x]), t.expand(2 * x.shape[0]), y=self.labels)
                u, c = eps.chunk(2)
                x = sched.step(u + self.G * (c - u), t, x).prev_sample
            return x
        return run


def summarise(results: dict, N: int) -> None:
    """Add overhead = wall - floor (per step, % of floor) and wall vs the model-only floor."""
    floors = {k: results[k]["median_s"] for k in ("model_eager", "model_graphed", "compiled_graphed")
              if "median_s" in results.get(k, {})}
    floor_of = {"ltc_eager": "model_eager", "diffusers": "model_eager", "ltc_step": "model_graphed",
                "ltc_whole": "model_graphed", "ltc_whole_executor": "model_graphed",
                "diffusers_compiled": "compiled_graphed",
                "ltc_whole_compiled": "compiled_graphed"}
    for name, row in results.items():
        if "median_s" not in row:
            continue
        floor_name = floor_of.get(name)
        if floor_name in floors:
            over = row["median_s"] - floors[floor_name]
            row.update(floor=floor_name, overhead_s=over, overhead_us_per_step=over / N * 1e6,
                       overhead_pct_of_floor=100 * over / floors[floor_name])
        if "model_graphed" in floors:
            row["vs_model_only_floor"] = row["median_s"] / floors["model_graphed"]


def run_overhead(b: Bench, size: str, batch: int, setups) -> dict:
    b.inputs(batch)
    model = b.model(size)
    results, outputs = {}, {}

    def attempt(name, make):
        if name not in setups:
            return
        try:
            results[name], outputs[name] = b.measure(make())
        except Exception as err:  # record and go on: one failing setup must not lose the others
            results[name] = {"error": f"{type(err).__name__}: {err}"}
        print(f"  {size} b{batch} {name:>20}: " + (f"{results[name]['median_s'] * 1e3:9.2f} ms"
              if "median_s" in results[name] else results[name]["error"]), flush=True)

    with torch.no_grad():
        attempt("model_eager", lambda: b.model_calls(model))
        attempt("model_graphed", lambda: b.graphed(b.model_calls(model)))
        for name, graph in (("ltc_eager", False), ("ltc_step", "step"), ("ltc_whole", "whole")):
            attempt(name, lambda: b.ltc_sample(model, None, graph))
        attempt("ltc_whole_executor", lambda: b.executor_only(model, Full()))
        if b.diffusers:
            attempt("diffusers", lambda: b.diffusers_loop(lambda t: model))
        if b.compile:
            compiled = torch.compile(model, dynamic=False)
            attempt("compiled_graphed", lambda: b.graphed(b.model_calls(compiled)))
            attempt("ltc_whole_compiled", lambda: b.ltc_sample(compiled, None, "whole"))
            if b.diffusers:
                reduce_overhead = torch.compile(model, mode="reduce-overhead", dynamic=False)
                attempt("diffusers_compiled", lambda: b.diffusers_loop(lambda t: reduce_overhead, mark_step=True))
    for name, out in outputs.items():
        if name.startswith("ltc_") and isinstance(out, tuple):  # (x, SampleInfo) or graphs.run's (x, executor, note)
            results[name]["executor"] = getattr(out[1], "executor", out[1])
    if "ltc_eager" in outputs and "ltc_whole" in outputs:
        diff = (outputs["ltc_whole"][0].float() - outputs["ltc_eager"][0].float()).abs().max()
        results["ltc_whole"]["max_abs_diff_vs_eager"] = float(diff)
    graphs.clear_cache()
    return results


def run_policies(b: Bench, batch: int) -> dict:
    b.inputs(batch)
    small, large = b.model("S"), b.model("XL")
    per_call, rows = {}, {}
    with torch.no_grad():
        for size, model in (("S", small), ("XL", large)):
            eager, _ = b.measure(b.model_calls(model))
            graphed, _ = b.measure(b.graphed(b.model_calls(model)))
            per_call[size] = {"eager_s": eager["median_s"] / b.N, "graphed_s": graphed["median_s"] / b.N}
        for name, make in POLICIES.items():
            models = [small, large] if "tstitch" in name else large
            plan = None
            for executor, graph in (("eager", False), ("graph_whole", "whole"), ("graph_whole_executor_only", None)):
                fn = b.ltc_sample(models, make(), graph) if graph is not None else b.executor_only(models, make())
                row, out = b.measure(fn)
                plan = out[1].plan if graph is not None else plan
                row["executor"] = out[1].executor if graph is not None else out[1]
                rows[f"{name}/{executor}"] = row
                print(f"  b{batch} {name:>12} {executor:>26}: {row['median_s'] * 1e3:9.2f} ms", flush=True)
            sizes = ["S", "XL"] if "tstitch" in name else ["XL"]
            calls = [sizes[k] if len(sizes) > 1 else "XL" for k in plan.models if k != ltc.plan.EXTRAPOLATE]
            for kind in ("eager", "graphed"):
                rows[f"{name}/ideal_{kind}_s"] = sum(per_call[s][f"{kind}_s"] for s in calls)
            rows[f"{name}/nfe"] = plan.nfe_per_model()
        if b.diffusers:
            sched = b.scheduler()
            sched.set_timesteps(b.N)
            switch = int(sched.timesteps[math.ceil(0.4 * b.N)])  # first large-model step, as TStitch(0.4)

            def pick(t):  # the reference T-Stitch switch: one host sync per step
                return small if t.item() > switch else large
            for name, fn in (("diffusers_full", b.diffusers_loop(lambda t: large)),
                             ("tstitch_item", b.diffusers_loop(pick))):
                rows[name], _ = b.measure(fn)
                print(f"  b{batch} {name:>24}: {rows[name]['median_s'] * 1e3:9.2f} ms", flush=True)
    def speedup(realised, ideal):
        return {"realised": realised, "ideal": ideal, "fraction_of_ideal": realised / ideal}

    speedups = {}
    for name in POLICIES:
        for executor, kind in EXECUTOR_FLOORS.items():
            speedups[f"{name}/{executor}"] = speedup(
                rows[f"full/{executor}"]["median_s"] / rows[f"{name}/{executor}"]["median_s"],
                rows[f"full/ideal_{kind}_s"] / rows[f"{name}/ideal_{kind}_s"])
    if "tstitch_item" in rows:
        speedups["tstitch_item/diffusers"] = speedup(
            rows["diffusers_full"]["median_s"] / rows["tstitch_item"]["median_s"], speedups["tstitch/eager"]["ideal"])
    for name, v in speedups.items():
        print(f"  b{batch} {name:>38}: realised {v['realised']:.3f}x, ideal {v['ideal']:.3f}x "
              f"({100 * v['fraction_of_ideal']:.1f}% of ideal)")
    graphs.clear_cache()
    return {"per_call": per_call, "runs": rows, "speedups": speedups}


def merge(path: Path, update: dict) -> dict:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.pop("machine", None)

    def deep(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict) and k not in ("runs",):
                deep(dst[k], v)
            else:
                dst[k] = v
    deep(data, update)
    return data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["overhead", "policies", "all"], default="all")
    p.add_argument("--models", nargs="+", default=["S", "XL"], choices=["S", "B", "L", "XL"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--setups", nargs="+", default=list(OVERHEAD_SETUPS), choices=OVERHEAD_SETUPS)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile setups")
    p.add_argument("--smoke", action="store_true",
                   help="CPU plumbing check with recorded graphs and a tiny DiT; writes only to --out")
    p.add_argument("--out", type=Path, default=None,
                   help=f"result file (default {RESULTS / (NAME + '.json')}; entries merge into it)")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.repeats, args.warmup, args.batches = 4, 1, 0, [1]
        device, dtype = torch.device("cpu"), torch.float32
    elif not torch.cuda.is_available():
        print("graph_executor: no CUDA device; this benchmark needs a GPU (try --smoke for a CPU plumbing check)")
        return 0
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
    b = Bench(args, device, dtype)
    try:
        import diffusers  # noqa: F401
        b.diffusers = True
    except ImportError:
        b.diffusers = False
        print("diffusers not importable: its setups are skipped")
    b.compile = not (args.no_compile or args.smoke)
    if b.compile:  # one compiled graph per (model, batch, mode): stay under dynamo's recompile limit
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    device_name = machine_info().get("device")
    config = {"steps": args.steps, "dtype": str(dtype), "sampler": "DPM-Solver++(2M)", "guidance": args.guidance,
              "schedule": SCHEDULE, "latent": [4, 32, 32], "weights": "random (ltc.zoo.reference_nets)",
              "timing": "CUDA events, median of repeats after warm-up", "repeats": args.repeats,
              "warmup": args.warmup, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None}
    update = {"config": config, "overhead": {}, "policies": {}}
    context = graphs.use_backend(graphs.RecordedGraphs()) if args.smoke else _nothing()
    with context:
        if args.part in ("overhead", "all"):
            for size in args.models:
                for batch in args.batches:
                    entry = run_overhead(b, size, batch, set(args.setups))
                    update["overhead"].setdefault(f"DiT-{size}/2", {})[f"batch {batch}"] = \
                        {"device": device_name, "setups": entry}
        if args.part in ("policies", "all"):
            for batch in args.batches:
                update["policies"][f"batch {batch}"] = {"device": device_name, **run_policies(b, batch)}
    if args.smoke and args.out is None:
        print("smoke run: nothing written (give --out to write)")
        return 0
    path = args.out or RESULTS / f"{NAME}.json"
    merged = merge(path, update)
    for per_batch in merged["overhead"].values():  # floors may come from an earlier invocation
        for entry in per_batch.values():
            summarise(entry["setups"], merged["config"]["steps"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine_info(), **merged}, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return 0


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    sys.exit(main())
