"""The backends as a whole: every backend provides every op of ``ltc.ops.contract.OPS`` (the
resolver refuses one that does not), ltc works without triton and without the extension,
``ltc.sample`` on a compiled backend equals the reference, and on a GPU the ops replay in CUDA
graphs, run on the current stream and the extension's C++ checks hold.
"""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
import types

import pytest
import torch

import cases
import ltc
from cases import generator, needs_triton, random, same_bits, table
from ltc import ops
from ltc.ops import reference
from ltc.ops.contract import OPS
from ltc.plan import compile_plan
from ltc.policies import Full
from ltc.samplers import get_sampler
from ltc.schedule import Schedule

COMPILED = [pytest.param("triton", marks=needs_triton), pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("name", ["reference", "triton", "cuda"])
def test_every_backend_provides_every_op_with_the_reference_signature(name):
    module = cases.module(name)  # importable whether or not the backend can run here
    assert ops.missing_ops(module) == []
    for op in OPS:
        assert inspect.signature(getattr(module, op)) == inspect.signature(getattr(reference, op)), op


def test_the_resolver_refuses_an_incomplete_backend(monkeypatch):
    """A backend module without every op is an error naming the missing ones, for the backend by
    name and for ``auto`` (never a silent fallback to another backend)."""
    partial = types.ModuleType("incomplete_backend")
    partial.model_step = reference.model_step
    monkeypatch.setitem(sys.modules, "incomplete_backend", partial)
    monkeypatch.setitem(ops._MODULES, "triton", "incomplete_backend")
    monkeypatch.setattr(ops, "_loaded", {})
    monkeypatch.setattr(ops, "_errors", {})
    for call in (lambda: ops.resolve("triton", "cuda"), lambda: ops.resolve("auto", "cuda"),
                 lambda: ops.available("triton")):
        with pytest.raises(ops.IncompleteBackendError,
                           match=r"backend 'triton' \(incomplete_backend\) does not provide the op\(s\) "
                                 r"extrapolate_step, transition_dots"):
            call()
    assert ops.resolve("auto", "cpu")[0] == "reference"  # the CPU never asks for triton


def test_package_imports_without_triton_and_reports_unavailable():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import ltc.kernels as k, ltc.ops as ops, inspect, ltc.ops.reference as r\n"
            "from ltc.ops.contract import OPS\n"
            "assert k.AVAILABLE is False and not ops.available('triton')\n"
            "assert all(inspect.signature(getattr(k, op)) == inspect.signature(getattr(r, op)) for op in OPS)\n"
            "try:\n    k.transition_dots(None, None, None)\nexcept RuntimeError as e:\n"
            "    assert 'triton is not importable' in str(e)\nelse:\n    raise SystemExit('no error')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_ltc_works_without_the_extension():
    """ltc._C blocked and no JIT: ltc imports and samples; the cuda backend is unavailable, asking
    for it is a ValueError and calling it a RuntimeError that say why."""
    code = """
import sys
sys.modules["ltc._C"] = None  # any import of it fails
import torch, ltc, ltc.ops, ltc.ops.cuda as c
assert c.AVAILABLE is False and "LTC_BUILD_CUDA=1" in c.UNAVAILABLE_REASON, c.UNAVAILABLE_REASON
assert not ltc.ops.available("cuda")
schedule = ltc.Schedule.vp("scaled_linear")
oracle = ltc.oracles.GaussianMixture.random(schedule, dim=4)
noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
assert torch.isfinite(ltc.sample(oracle, schedule, steps=4, noise=noise, progress=False)).all()
for call in (lambda: ltc.ops.resolve("cuda", "cpu"),
             lambda: ltc.sample(oracle, schedule, steps=4, noise=noise, progress=False, backend="cuda")):
    try:
        call()
    except ValueError as e:
        assert "'cuda'" in str(e), e
    else:
        raise SystemExit("backend='cuda' did not raise")
if torch.cuda.is_available():  # valid CUDA arguments: the call names the reason
    x = noise.cuda()
    try:
        c.transition_dots(x, x, x)
    except RuntimeError as e:
        assert str(e).startswith("ltc.ops.cuda.transition_dots: ") and "ltc._C" in str(e), e
    else:
        raise SystemExit("transition_dots did not raise")
"""
    env = {k: v for k, v in os.environ.items() if k not in ("LTC_CUDA_JIT", "LTC_BACKEND")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- end to end

def schedule_of(kind):
    return Schedule.vp("scaled_linear", spacing="leading", steps_offset=1) if kind == "vp" else Schedule.flow(3.0)


class ConditionalOracle:
    """A guided model: the unconditional half of the doubled batch is one Gaussian mixture's exact
    x0, the conditional half another's."""

    prediction = "x0"

    def __init__(self, schedule, dim):
        self.uncond = ltc.oracles.GaussianMixture.random(schedule, dim=dim, seed=0)
        self.cond = ltc.oracles.GaussianMixture.random(schedule, dim=dim, seed=1)

    def __call__(self, x, t):
        B = x.shape[0] // 2
        return torch.cat([self.uncond(x[:B], t[:B]), self.cond(x[B:], t[B:])])


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_3m"])
def test_sample_equals_the_reference_under_guidance(name, sampler):
    backend = cases.backend(name)
    schedule = schedule_of("vp")
    model = ConditionalOracle(schedule, dim=2 * 3 * 3)
    noise = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(7)).to(backend.device)
    runs = {}
    for b in ("reference", name):
        runs[b] = ltc.sample(model, schedule, sampler=sampler, steps=8, noise=noise, guidance_scale=3.0, backend=b,
                             progress=False, return_info=True)
    (want, want_info), (got, got_info) = runs["reference"], runs[name]
    assert got_info.backend == name and want_info.backend == "reference"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", COMPILED)
def test_sample_equals_the_reference_for_an_eps_model_in_bfloat16(name):
    backend = cases.backend(name)
    schedule = schedule_of("vp")
    oracle = ltc.oracles.GaussianMixture.random(schedule, dim=16).as_prediction("eps")
    noise = torch.randn(3, 16, generator=torch.Generator().manual_seed(3)).to(backend.device, torch.bfloat16)
    want = ltc.sample(oracle, schedule, sampler="dpmpp_2m", steps=10, noise=noise, backend="reference",
                      progress=False)
    got = ltc.sample(oracle, schedule, sampler="dpmpp_2m", steps=10, noise=noise, backend=name, progress=False)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2)


@needs_triton
def test_triton_backend_selected_by_environment_is_reported(monkeypatch):
    monkeypatch.setenv("LTC_BACKEND", "triton")
    schedule = schedule_of("vp")
    oracle = ltc.oracles.GaussianMixture.random(schedule, dim=4)
    _, info = ltc.sample(oracle, schedule, steps=3, noise=torch.randn(2, 4).to(cases.TRITON_DEVICE),
                         progress=False, return_info=True)
    assert info.backend == "triton"


# ---------------------------------------------------------------- GPU only

def on_gpu(name):
    backend = cases.backend(name)
    if backend.device != "cuda":
        pytest.skip("triton runs in its CPU interpreter here")
    return backend.module


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_steps_replay_in_a_cuda_graph_for_every_step(name):
    module = on_gpu(name)
    gen = generator("graph")
    plan = compile_plan(schedule_of("vp").discretize(6), get_sampler("dpmpp_3m"), Full(), ["eps"], 2.0)
    coefs = plan.coefficients(torch.float32, "cuda")
    shape = (2, 4, 16, 16)
    x, m = random(shape, torch.float32, "cuda", gen), random((4, *shape[1:]), torch.float32, "cuda", gen)
    x_prev = random(shape, torch.float32, "cuda", gen)
    hist, out, out2 = random((cases.H, *shape), torch.float32, "cuda", gen), torch.empty_like(x), torch.empty_like(x)
    step = torch.zeros((), dtype=torch.int64, device="cuda")
    module.model_step(x, m, hist.clone(), coefs, step, out, reads=2, cfg=True)  # compile / load before capture
    module.extrapolate_step(out, x_prev, hist.clone(), coefs, step, out2, reads=2)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        module.model_step(x, m, hist, coefs, step, out, reads=2, cfg=True)
        module.extrapolate_step(out, x_prev, hist, coefs, step, out2, reads=2)
    for i in range(plan.steps):
        ref_hist, ref_out, ref_out2 = hist.clone(), torch.empty_like(out), torch.empty_like(out)
        reference.model_step(x, m, ref_hist, coefs, i, ref_out, reads=2, cfg=True)
        reference.extrapolate_step(ref_out, x_prev, ref_hist, coefs, i, ref_out2, reads=2)
        step.fill_(i)
        graph.replay()
        for got, want in ((out, ref_out), (out2, ref_out2), (hist, ref_hist)):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * max(1.0, float(want.abs().max())))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_kernels_run_on_the_current_stream(name):
    """x is rewritten on a side stream behind a long sleep; a kernel launched on any other stream
    would read the old x."""
    module = on_gpu(name)
    gen = generator("stream")
    x, m, coefs = (random((4, 4096), torch.float32, "cuda", gen), random((4, 4096), torch.float32, "cuda", gen),
                   table(torch.float32, "cuda", gen))
    hist = random((cases.H, 4, 4096), torch.float32, "cuda", gen)
    new_x = random(x.shape, torch.float32, "cuda", gen)
    ref_hist, ref_out = hist.clone(), torch.empty_like(x)
    reference.model_step(new_x, m, ref_hist, coefs, 2, ref_out, reads=1, cfg=False)
    module.model_step(x, m, hist.clone(), coefs, 2, torch.empty_like(x), reads=1, cfg=False)  # compile first
    torch.cuda.synchronize()
    side, out = torch.cuda.Stream(), torch.empty_like(x)
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        x.copy_(new_x)
        module.model_step(x, m, hist, coefs, 2, out, reads=1, cfg=False)
    side.synchronize()
    if name == "cuda":  # the extension rounds like the reference, operation for operation
        assert same_bits(out, ref_out) and same_bits(hist, ref_hist)
    else:
        torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(hist, ref_hist, rtol=1e-6, atol=1e-5)


@pytest.mark.gpu
def test_extension_binding_checks_overlap_and_devices():
    """Beyond the shared Python checks: the C++ binding refuses overlapping buffers and raises
    ValueError / TypeError itself."""
    ext = cases.backend("cuda").module
    gen = generator("binding")
    x, m = random((2, 5), torch.float32, "cuda", gen), random((4, 5), torch.float32, "cuda", gen)
    hist, coefs = random((cases.H, 2, 5), torch.float32, "cuda", gen), table(torch.float32, "cuda", gen)
    z, out = random((2, 5), torch.float32, "cuda", gen), torch.empty_like(x)
    base = dict(x=x, model_out=m, hist=hist, coefs=coefs, step=1, out=out, reads=1, cfg=True, noise=z)
    for change, match in [(dict(out=m[:2]), "out overlaps model_out"), (dict(out=hist[1]), "out overlaps hist"),
                          (dict(noise=hist[0]), "hist overlaps noise")]:
        with pytest.raises(ValueError, match=match):
            ext.model_step(**{**base, **change})
    with pytest.raises(ValueError, match="reads must be 0, 1, 2 or 3, got 5"):
        torch.ops.ltc_cuda.model_step(x, m, hist, coefs, None, 1, out, 5, True, None)
    with pytest.raises(ValueError, match="reads must be 0, 1 or 2, got 3"):
        torch.ops.ltc_cuda.extrapolate_step(x, x, hist, coefs, None, 1, out, 3)
    with pytest.raises(TypeError, match="coefs must have dtype"):
        torch.ops.ltc_cuda.model_step(x, m, hist, coefs.double(), None, 1, out, 1, True, None)
    buffer = torch.zeros(11, device="cuda")
    with pytest.raises(ValueError, match="out overlaps x without being the very same tensor"):
        torch.ops.ltc_cuda.extrapolate_step(buffer[:10].view(2, 5), x, hist, coefs, None, 1, buffer[1:].view(2, 5), 1)


@needs_triton
def test_triton_launches_are_guarded_to_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: a tensor on another device gets a device guard
    (``cuda:1`` while ``cuda:0`` is current), a tensor on the current device or the CPU none."""
    import contextlib
    import importlib

    launch = importlib.import_module("ltc.kernels.launch")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    on = lambda device: launch.on_device(types.SimpleNamespace(device=torch.device(device)))  # noqa: E731
    guard = on("cuda:1")
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    for device in ("cuda:0", "cpu"):
        assert isinstance(on(device), contextlib.nullcontext)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_ops_on_a_device_that_is_not_current_equal_the_reference():
    torch.cuda.set_device(0)
    schedule = Schedule.vp("scaled_linear")
    oracle = ltc.oracles.GaussianMixture.random(schedule, dim=64)
    run = dict(steps=10, noise=torch.randn(4, 64, device="cuda:1"), progress=False, graph=False)
    torch.testing.assert_close(ltc.sample(oracle, schedule, backend="triton", **run),
                               ltc.sample(oracle, schedule, backend="reference", **run), rtol=1e-5, atol=1e-5)
