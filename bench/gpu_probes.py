"""GPU probes of the graph executor's defects that only a CUDA device can show (part of bench/gpu_check.py).

    python bench/gpu_probes.py          # writes bench/results/gpu_probes.json

* ``rng_after_failed_capture`` -- ``graph="auto"`` + DDIM(eta = 1) + a model that syncs with the host:
  the fallback samples eagerly and the default and a custom CUDA generator still draw afterwards.
* ``replaced_weights`` -- a model held in a closure, its weights replaced by
  ``load_state_dict(assign=True)`` after capture: the next graph run equals eager (max abs diff).
* ``capture_memory`` -- peak memory of the whole-trajectory capture of DiT-XL/2 (bf16, batch 8,
  guidance, 50 steps) against the eager walk's (goal: ratio <= 1.2).
* ``replays`` -- 200 replays of a captured DiT-S walk: allocated memory before and after (flat).
* ``device_guard`` -- Triton step ops on ``cuda:1`` while ``cuda:0`` is current equal the reference
  (skipped with one GPU).
Each probe records ``ok`` and its numbers, or the error; a failing probe never stops the others.
"""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import write_result  # noqa: E402

import ltc  # noqa: E402
from ltc.executor import graph as graphs  # noqa: E402
from ltc.zoo.reference_nets import dit  # noqa: E402

SCHEDULE = ltc.Schedule.vp("linear")


class HostSync(torch.nn.Module):
    prediction = "eps"

    def forward(self, x, t):
        if float(x.float().sum()) > 1e30:  # a host read inside the model: not capturable
            return x
        return torch.tanh(x)


def rng_after_failed_capture() -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = {}
    for label, generator in (("default", None), ("custom", gen)):
        graphs.clear_cache()
        model = HostSync()  # one object: graph="auto" captures from its second call
        run = dict(sampler=ltc.samplers.DDIM(eta=1.0), steps=4, progress=False, generator=generator,
                   noise=torch.randn(2, 8, device="cuda"), return_info=True)
        ltc.sample(model, SCHEDULE, graph="auto", **run)
        _, info = ltc.sample(model, SCHEDULE, graph="auto", **run)
        torch.randn(4, device="cuda")
        torch.randn(4, device="cuda", generator=gen)
        ltc.sample(model, SCHEDULE, graph=False, **run)
        torch.cuda.synchronize()
        out[label] = {"executor": info.executor, "why": info.extra.get("graph")}
    return {"ok": True, **out}


def replaced_weights() -> dict:
    torch.manual_seed(0)
    net = torch.nn.Linear(64, 64).cuda()
    model = ltc.Model(lambda x, t: net(x), "eps", name="closure")
    run = dict(steps=10, noise=torch.randn(4, 64, device="cuda"), progress=False)
    with torch.no_grad():
        graphs.clear_cache()
        ltc.sample(model, SCHEDULE, graph=True, **run)
        net.load_state_dict(torch.nn.Linear(64, 64).cuda().state_dict(), assign=True)
        replay = ltc.sample(model, SCHEDULE, graph=True, **run)
        eager = ltc.sample(model, SCHEDULE, graph=False, **run)
    diff = float((replay - eager).abs().max())
    return {"ok": diff < 1e-4, "max_abs_diff": diff}


def _peak(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def capture_memory(size="XL", batch=8, steps=50) -> dict:
    net = dit(size, device="cuda", dtype=torch.bfloat16)
    noise = torch.randn(batch, 4, 32, 32, device="cuda", dtype=torch.bfloat16)
    run = dict(steps=steps, noise=noise, model_kwargs={"y": torch.arange(batch, device="cuda")}, guidance_scale=4.0,
               progress=False)
    with torch.no_grad():
        graphs.clear_cache()
        eager = _peak(lambda: ltc.sample(net, SCHEDULE, graph=False, **run))
        t0 = time.perf_counter()
        captured = _peak(lambda: ltc.sample(net, SCHEDULE, graph="whole", **run))
        capture_s = time.perf_counter() - t0
    graphs.clear_cache()
    ratio = captured / max(eager, 1)
    return {"ok": ratio <= 1.2, "eager_peak_mib": eager / 2**20, "capture_peak_mib": captured / 2**20,
            "ratio": ratio, "capture_s": capture_s, "model": f"DiT-{size}/2", "batch": batch, "steps": steps}


def replays(n=200) -> dict:
    net = dit("S", device="cuda", dtype=torch.bfloat16)
    noise = torch.randn(8, 4, 32, 32, device="cuda", dtype=torch.bfloat16)
    run = dict(steps=50, noise=noise, model_kwargs={"y": torch.arange(8, device="cuda")}, progress=False)
    with torch.no_grad():
        graphs.clear_cache()
        ltc.sample(net, SCHEDULE, graph=True, **run)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        for _ in range(n):
            ltc.sample(net, SCHEDULE, graph=True, **run)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) / n
        after = torch.cuda.memory_allocated()
    graphs.clear_cache()
    return {"ok": after <= before, "allocated_before": before, "allocated_after": after, "replays": n,
            "seconds_per_sample": seconds}


def device_guard() -> dict:
    if torch.cuda.device_count() < 2:
        return {"ok": None, "skipped": "one CUDA device"}
    torch.cuda.set_device(0)
    model = ltc.oracles.GaussianMixture.random(SCHEDULE, dim=64)
    noise = torch.randn(4, 64, device="cuda:1")
    run = dict(steps=10, noise=noise, progress=False, graph=False)
    fast = ltc.sample(model, SCHEDULE, backend="triton", **run)
    ref = ltc.sample(model, SCHEDULE, backend="reference", **run)
    diff = float((fast - ref).abs().max())
    return {"ok": diff < 1e-5, "max_abs_diff": diff}


PROBES = [rng_after_failed_capture, replaced_weights, capture_memory, replays, device_guard]


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to probe")
        return 0
    results = {}
    for probe in PROBES:
        t0 = time.perf_counter()
        try:
            results[probe.__name__] = probe()
        except Exception as err:  # a probe that fails is a finding, not the end of the run
            results[probe.__name__] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                                       "traceback": traceback.format_exc()[-2000:]}
        results[probe.__name__]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"{probe.__name__:26s} ok={results[probe.__name__].get('ok')}")
    path = write_result("gpu_probes", {"probes": results})
    print("wrote", path)
    return 0 if all(r.get("ok") is not False for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
