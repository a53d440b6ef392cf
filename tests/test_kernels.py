"""The Triton step kernels (``ltc.kernels``) against the specification, ``ltc.ops.reference``.

On a machine without CUDA the kernels run in Triton's CPU interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); every test parametrised by ``device`` runs again on CUDA where there is one.
Outputs and the history slot written are pre-filled with NaN (an unwritten element fails), the
slots a step does not read are NaN too (reading one fails), and every slot but the written one
must keep its exact bits.  Inputs are fresh random normals per test.

Tolerances (one per storage dtype, relative to each value and to the largest value of the
tensor): fp32 1e-6, fp64 1e-12, fp16/bf16 1e-2.  The half tolerance also covers Triton 3.9's
interpreter, which rounds fp32 -> bf16 by truncation (GPUs round to nearest even): one bf16 ulp.
"""
from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch

import ltc
from ltc import kernels
from ltc.ops import reference
from ltc.plan import EXTRAPOLATION_COLS, NCOLS, Decision, compile_plan
from ltc.policies import Full, Policy
from ltc.samplers import DDIM, get_sampler
from ltc.schedule import Schedule

needs_triton = pytest.mark.skipif(not kernels.AVAILABLE, reason="triton is not importable")
if kernels.AVAILABLE:
    from ltc.kernels.launch import interpreted
    from ltc.kernels.model_step_kernel import _model_step_kernel
    INTERPRETED = interpreted(_model_step_kernel)
else:  # pragma: no cover
    INTERPRETED = False

DEVICES = [
    pytest.param("cpu", marks=[needs_triton, pytest.mark.skipif(
        not INTERPRETED, reason="Triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1)")]),
    pytest.param("cuda", marks=[needs_triton, pytest.mark.gpu]),
]
STORAGE = (torch.float32, torch.float16, torch.bfloat16)
TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-2, torch.bfloat16: 1e-2}
SHAPES = [(1, 1), (1, 7), (3, 341), (2, 4, 9, 11)]   # 1, 7, 1023 elements and a 4-D latent
BIG = (1, 65537)
H = 3
N_ROWS = 7


# ---------------------------------------------------------------- helpers

def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def assert_close(got, want, dtype):
    tol = TOL[dtype]
    scale = max(1.0, float(want.detach().abs().nan_to_num(0).max())) if want.numel() else 1.0
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol * scale, equal_nan=True)


def same_bits(a, b):
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.view(ints), b.view(ints))


def random(shape, dtype, device, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def random_table(dtype, device, gen, rows=N_ROWS):
    return random((rows, NCOLS), compute_dtype(dtype), device, gen)


def history(shape, dtype, device, gen, step, reads):
    """[H, *shape]: the slots the step reads random, every other slot NaN."""
    hist = torch.full((H, *shape), float("nan"), dtype=dtype, device=device)
    for back in range(1, reads + 1):
        hist[(step - back) % H] = random(shape, dtype, device, gen)
    return hist


def check_step(impl_out, impl_hist, ref_out, ref_hist, hist_before, step, dtype):
    written = int(step) % H
    assert not torch.isnan(impl_out).any(), "out has unwritten (NaN) elements"
    assert not torch.isnan(impl_hist[written]).any(), "the history slot written has NaN elements"
    assert_close(impl_out, ref_out, dtype)
    assert_close(impl_hist[written], ref_hist[written], dtype)
    for slot in range(H):
        if slot != written:
            assert same_bits(impl_hist[slot], hist_before[slot]), f"history slot {slot} was modified"


def run_model_step(x, m, hist, coefs, step, *, reads, cfg, noise):
    """Both implementations on their own copies of the outputs; asserts they agree."""
    results = []
    for impl in (reference.model_step, kernels.model_step):
        h = hist.clone()
        out = torch.full(x.shape, float("nan"), dtype=x.dtype, device=x.device)  # contiguous
        impl(x, m, h, coefs, step, out, reads=reads, cfg=cfg, noise=noise)
        results.append((out, h))
    (ref_out, ref_hist), (out, h) = results
    check_step(out, h, ref_out, ref_hist, hist, step, x.dtype)
    return out, h


def model_case(shape, dtype, device, gen, *, step, reads, cfg, noise, coefs=None):
    x = random(shape, dtype, device, gen)
    m = random((shape[0] * (2 if cfg else 1), *shape[1:]), dtype, device, gen)
    hist = history(shape, dtype, device, gen, int(step), reads)
    z = random(shape, dtype, device, gen) if noise else None
    coefs = random_table(dtype, device, gen) if coefs is None else coefs
    return x, m, hist, coefs, z


def run_extrapolate_step(x, x_prev, hist, coefs, step, *, reads):
    results = []
    for impl in (reference.extrapolate_step, kernels.extrapolate_step):
        h = hist.clone()
        out = torch.full(x.shape, float("nan"), dtype=x.dtype, device=x.device)  # contiguous
        impl(x, x_prev, h, coefs, step, out, reads=reads)
        results.append((out, h))
    (ref_out, ref_hist), (out, h) = results
    check_step(out, h, ref_out, ref_hist, hist, step, x.dtype)
    return out, h


def extrapolate_case(shape, dtype, device, gen, *, step, reads, coefs=None):
    x, x_prev = random(shape, dtype, device, gen), random(shape, dtype, device, gen)
    hist = history(shape, dtype, device, gen, int(step), reads)
    coefs = random_table(dtype, device, gen) if coefs is None else coefs
    return x, x_prev, hist, coefs


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


# ---------------------------------------------------------------- the package

@needs_triton
@pytest.mark.parametrize("name", ["model_step", "extrapolate_step", "transition_dots"])
def test_exports_have_the_reference_signatures(name):
    assert inspect.signature(getattr(kernels, name)) == inspect.signature(getattr(reference, name))


def test_package_imports_without_triton_and_reports_unavailable():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import ltc.kernels as k, ltc.ops as ops, inspect, ltc.ops.reference as r\n"
            "assert k.AVAILABLE is False and not ops.available('triton')\n"
            "assert inspect.signature(k.model_step) == inspect.signature(r.model_step)\n"
            "try:\n    k.transition_dots(None, None, None)\nexcept RuntimeError as e:\n"
            "    assert 'triton is not importable' in str(e)\nelse:\n    raise SystemExit('no error')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- model step

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", STORAGE, ids=str)
@pytest.mark.parametrize("reads", [0, 1, 2])
@pytest.mark.parametrize("cfg", [False, True], ids=["plain", "cfg"])
@pytest.mark.parametrize("noise", [False, True], ids=["", "noise"])
def test_model_step_matches_reference(device, shape, dtype, reads, cfg, noise, gen):
    step = 4 + reads  # different written/read slots per case
    x, m, hist, coefs, z = model_case(shape, dtype, device, gen, step=step, reads=reads, cfg=cfg, noise=noise)
    run_model_step(x, m, hist, coefs, step, reads=reads, cfg=cfg, noise=z)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", STORAGE, ids=str)
def test_model_step_reads_the_step_from_a_device_tensor(device, dtype, gen):
    coefs = random_table(dtype, device, gen)
    for step in range(N_ROWS):
        reads = min(step, 2)
        x, m, hist, _, z = model_case((2, 4, 3, 3), dtype, device, gen, step=step, reads=reads, cfg=True,
                                      noise=True, coefs=coefs)
        step_tensor = torch.tensor(step, device=device)
        run_model_step(x, m, hist, coefs, step_tensor, reads=reads, cfg=True, noise=z)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, cfg, reads, noise, tensor_step", [
    (torch.float32, True, 2, True, False), (torch.bfloat16, False, 1, False, True)], ids=["fp32", "bf16"])
def test_model_step_large_latent(device, dtype, cfg, reads, noise, tensor_step, gen):
    x, m, hist, coefs, z = model_case(BIG, dtype, device, gen, step=5, reads=reads, cfg=cfg, noise=noise)
    step = torch.tensor(5, device=device) if tensor_step else 5
    run_model_step(x, m, hist, coefs, step, reads=reads, cfg=cfg, noise=z)


PLAN_CASES = [  # (schedule, sampler, prediction)
    ("vp", "ddim", "eps"), ("vp", DDIM(eta=0.7), "eps"), ("flow", "euler", "flow"), ("vp", "euler", "v"),
    ("vp", "dpmpp_1m", "x0"), ("vp", "dpmpp_2m", "eps"), ("vp", "dpmpp_3m", "v"), ("flow", "dpmpp_3m", "flow")]


def schedule_of(kind):
    return Schedule.vp("scaled_linear", spacing="leading", steps_offset=1) if kind == "vp" else Schedule.flow(3.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind, sampler, prediction", PLAN_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_model_step_on_compiled_plans(device, kind, sampler, prediction, dtype, gen):
    plan = compile_plan(schedule_of(kind).discretize(6), get_sampler(sampler), Full(), [prediction], 4.0)
    coefs = plan.coefficients(compute_dtype(dtype), device)
    assert max(plan.history_reads) == {"dpmpp_2m": 1, "dpmpp_3m": 2}.get(getattr(sampler, "name", sampler), 0)
    for step in range(plan.steps):
        reads, noisy = plan.history_reads[step], plan.noisy[step]
        x, m, hist, _, z = model_case((2, 4, 9, 11), dtype, device, gen, step=step, reads=reads, cfg=True,
                                      noise=noisy, coefs=coefs)
        run_model_step(x, m, hist, coefs, step, reads=reads, cfg=plan.cfg, noise=z)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", STORAGE, ids=str)
def test_model_step_out_may_alias_x(device, dtype, gen):
    x, m, hist, coefs, z = model_case(BIG if dtype == torch.float32 else (3, 341), dtype, device, gen,
                                      step=3, reads=2, cfg=True, noise=True)
    ref_out, ref_hist = torch.empty_like(x), hist.clone()
    reference.model_step(x, m, ref_hist, coefs, 3, ref_out, reads=2, cfg=True, noise=z)
    state = x.clone()
    kernels.model_step(state, m, hist, coefs, 3, state, reads=2, cfg=True, noise=z)
    assert_close(state, ref_out, dtype)
    assert_close(hist, ref_hist, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_model_step_copies_non_contiguous_inputs(device, gen):
    x, m, hist, coefs, z = model_case((2, 4, 6, 6), torch.float32, device, gen, step=2, reads=1, cfg=True,
                                      noise=True)
    x_t, m_t, z_t = (t.transpose(-1, -2) for t in (x, m, z))  # square: same shape, other strides
    run_model_step(x_t, m_t, hist, coefs, 2, reads=1, cfg=True, noise=z_t)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", ["out", "hist"])
def test_model_step_refuses_non_contiguous_outputs(device, which, gen):
    x, m, hist, coefs, _ = model_case((2, 6, 6), torch.float32, device, gen, step=1, reads=0, cfg=False,
                                      noise=False)
    out = torch.empty_like(x)
    if which == "out":
        out = out.transpose(1, 2)  # square: same shape, other strides
    else:
        hist = hist.transpose(2, 3)
    with pytest.raises(ValueError, match=f"{which} must be contiguous"):
        kernels.model_step(x, m, hist, coefs, 1, out, reads=0, cfg=False)


def bad_model_step_args(gen):
    x, m, hist, coefs, z = model_case((2, 5), torch.float32, "cpu", gen, step=1, reads=1, cfg=True, noise=True)
    base = dict(x=x, model_out=m, hist=hist, coefs=coefs, step=1, out=torch.empty_like(x), reads=1, cfg=True,
                noise=z)
    return base, [
        (dict(x=x.numpy()), TypeError, "x must be a torch.Tensor"),
        (dict(x=x.to(torch.int32)), TypeError, "x must have a dtype"),
        (dict(model_out=m[:2]), ValueError, r"model_out has shape \(2, 5\), expected \(4, 5\)"),
        (dict(cfg=False), ValueError, "model_out has shape"),
        (dict(cfg=1), TypeError, "cfg must be a bool"),
        (dict(out=torch.empty(2, 6)), ValueError, "out has shape"),
        (dict(hist=hist[:, :1]), ValueError, "hist has shape"),
        (dict(hist=hist[0]), ValueError, r"hist must be \[H, \*x.shape\]"),
        (dict(noise=z[:1]), ValueError, "noise has shape"),
        (dict(reads=3), ValueError, "reads must be 0, 1 or 2"),
        (dict(hist=hist[:1]), ValueError, "need at least 2 slots"),
        (dict(coefs=coefs[:, :5]), ValueError, r"coefs must be the plan's \[N, 14\] table"),
        (dict(coefs=coefs.half()), TypeError, "coefs must have a dtype"),
        (dict(step=N_ROWS), ValueError, r"step must be in \[0, 7\)"),
        (dict(step=-1), ValueError, "step must be in"),
        (dict(step=1.0), TypeError, "step must be an int or a 0-d integer tensor"),
        (dict(step=torch.tensor(1.0)), TypeError, "0-d integer tensor"),
        (dict(step=torch.tensor([1])), TypeError, "0-d integer tensor"),
    ]


@needs_triton
def test_model_step_rejects_bad_arguments(gen):
    base, cases = bad_model_step_args(gen)
    for change, error, match in cases:
        args = {**base, **change}
        hist_before = args["hist"].clone()
        with pytest.raises(error, match=match):
            kernels.model_step(**args)
        assert same_bits(args["hist"], hist_before)


@needs_triton
@pytest.mark.skipif(INTERPRETED, reason="in the interpreter CPU tensors are accepted")
def test_cpu_tensors_are_refused_outside_the_interpreter(gen):  # runs on machines with a GPU
    base, _ = bad_model_step_args(gen)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        kernels.model_step(**base)


# ---------------------------------------------------------------- extrapolated step

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", STORAGE, ids=str)
@pytest.mark.parametrize("reads", [0, 1, 2])
def test_extrapolate_step_matches_reference(device, shape, dtype, reads, gen):
    step = 3 + reads
    run_extrapolate_step(*extrapolate_case(shape, dtype, device, gen, step=step, reads=reads), step, reads=reads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", STORAGE, ids=str)
def test_extrapolate_step_reads_the_step_from_a_device_tensor(device, dtype, gen):
    coefs = random_table(dtype, device, gen)
    for step in range(1, N_ROWS):
        reads = min(step, 2)
        x, x_prev, hist, _ = extrapolate_case((2, 3, 5), dtype, device, gen, step=step, reads=reads, coefs=coefs)
        run_extrapolate_step(x, x_prev, hist, coefs, torch.tensor(step, device=device), reads=reads)


@pytest.mark.parametrize("device", DEVICES)
def test_extrapolate_step_large_latent(device, gen):
    run_extrapolate_step(*extrapolate_case(BIG, torch.float32, device, gen, step=6, reads=2), 6, reads=2)


class EveryOther(Policy):
    """Test policy: odd steps extrapolated with arbitrary coefficients of every column
    (the implied D inverts the first-order step: IN = 1 / B0, IC = -A / B0)."""

    def config(self):
        return {"policy": "every-other-test"}

    def decide(self, grid, sampler, n_models):
        N = grid.steps
        models = np.zeros(N, np.int64)
        extrap = np.zeros((N, len(EXTRAPOLATION_COLS)))
        A, B0 = sampler.first_order(grid)
        rng = np.random.default_rng(0)
        for i in range(1, N - 1, 2):
            models[i] = -1
            extrap[i, :4] = rng.uniform(-1.5, 1.5, 4)
            extrap[i, 4:] = 1 / B0[i], -A[i] / B0[i]
        return Decision(models, extrap)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_3m"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_extrapolate_step_on_compiled_plans(device, sampler, dtype, gen):
    plan = compile_plan(schedule_of("vp").discretize(8), get_sampler(sampler), EveryOther(), ["eps"])
    coefs = plan.coefficients(compute_dtype(dtype), device)
    extrapolated = [i for i, k in enumerate(plan.models) if k == -1]
    assert extrapolated and max(plan.history_reads[i] for i in extrapolated) == 2
    for step in extrapolated:
        reads = plan.history_reads[step]
        x, x_prev, hist, _ = extrapolate_case((2, 4, 9, 11), dtype, device, gen, step=step, reads=reads,
                                              coefs=coefs)
        run_extrapolate_step(x, x_prev, hist, coefs, step, reads=reads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", STORAGE, ids=str)
def test_extrapolate_step_out_may_alias_x_prev(device, dtype, gen):
    x, x_prev, hist, coefs = extrapolate_case(BIG if dtype == torch.float32 else (3, 341), dtype, device, gen,
                                              step=4, reads=2)
    ref_out, ref_hist = torch.empty_like(x), hist.clone()
    reference.extrapolate_step(x, x_prev, ref_hist, coefs, 4, ref_out, reads=2)
    buffer = x_prev.clone()
    kernels.extrapolate_step(x, buffer, hist, coefs, 4, buffer, reads=2)
    assert_close(buffer, ref_out, dtype)
    assert_close(hist, ref_hist, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_extrapolate_step_copies_non_contiguous_inputs_and_refuses_non_contiguous_outputs(device, gen):
    x, x_prev, hist, coefs = extrapolate_case((3, 8, 5), torch.float32, device, gen, step=2, reads=1)
    x_t, x_prev_t = x.transpose(1, 2), x_prev.transpose(1, 2)
    hist_t = hist.transpose(2, 3).contiguous()
    run_extrapolate_step(x_t, x_prev_t, hist_t, coefs, 2, reads=1)
    with pytest.raises(ValueError, match="out must be contiguous"):
        kernels.extrapolate_step(x_t, x_prev_t, hist_t, coefs, 2, torch.empty_like(x).transpose(1, 2), reads=1)
    with pytest.raises(ValueError, match="hist must be contiguous"):
        kernels.extrapolate_step(x, x_prev, hist.transpose(0, 1).contiguous().transpose(0, 1), coefs, 2,
                                 torch.empty_like(x), reads=1)


@needs_triton
def test_extrapolate_step_rejects_bad_arguments(gen):
    x, x_prev, hist, coefs = extrapolate_case((2, 5), torch.float32, "cpu", gen, step=2, reads=2)
    base = dict(x=x, x_prev=x_prev, hist=hist, coefs=coefs, step=2, out=torch.empty_like(x), reads=2)
    for change, error, match in [
        (dict(x_prev=x_prev[:1]), ValueError, "x_prev has shape"),
        (dict(x_prev=x_prev.to(torch.int64)), TypeError, "x_prev must have a dtype"),
        (dict(out=x[0]), ValueError, "out has shape"),
        (dict(hist=hist[:2]), ValueError, "need at least 3 slots"),
        (dict(reads=-1), ValueError, "reads must be 0, 1 or 2"),
        (dict(step=N_ROWS + 3), ValueError, "step must be in"),
        (dict(step=True), TypeError, "step must be an int"),
    ]:
        with pytest.raises(error, match=match):
            kernels.extrapolate_step(**{**base, **change})


# ---------------------------------------------------------------- transition dots

def check_dots(x, x_prev, x_target):
    got = kernels.transition_dots(x, x_prev, x_target)
    want = reference.transition_dots(x, x_prev, x_target)
    assert got.dtype == want.dtype == compute_dtype(x.dtype) and got.shape == (x.shape[0], 2)
    # a dot product is accurate relative to the sum of the magnitudes of its terms
    ct = compute_dtype(x.dtype)
    B = x.shape[0]
    d = (x.to(ct) - x_prev.to(ct)).reshape(B, -1)
    r = (x_target.to(ct) - x.to(ct)).reshape(B, -1)
    magnitude = torch.stack([(d * r).abs().sum(1), (d * d).sum(1)], dim=1)
    tol = TOL[ct]
    assert torch.all((got - want).abs() <= 2 * tol * magnitude + 1e-30), (got, want)
    return got


DOTS_CASES = [(shape, dtype) for shape in SHAPES for dtype in STORAGE + (torch.float64,)] + [
    (BIG, torch.float32), (BIG, torch.bfloat16), ((2, 40001), torch.float64)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, dtype", DOTS_CASES, ids=str)
def test_transition_dots_matches_reference(device, shape, dtype, gen):
    check_dots(*(random(shape, dtype, device, gen) for _ in range(3)))


@pytest.mark.parametrize("device", DEVICES)
def test_transition_dots_is_deterministic(device, gen):
    inputs = [random((3, 30001), torch.float32, device, gen) for _ in range(3)]
    first = kernels.transition_dots(*inputs)
    assert same_bits(kernels.transition_dots(*inputs), first)


@pytest.mark.parametrize("device", DEVICES)
def test_transition_dots_with_many_tiles_and_partials(device, gen, monkeypatch):
    from ltc.kernels import transition_dots_kernel as module
    monkeypatch.setattr(module, "TARGET_CHUNKS", 3)   # several tiles per chunk
    monkeypatch.setattr(module, "FINISH_BLOCK", 2)    # the final sum loops over the partials
    shape = (2, 9000)
    assert module.chunking(shape[1], 1024) == (4, 3)
    check_dots(*(random(shape, torch.float32, device, gen) for _ in range(3)))


@pytest.mark.parametrize("device", DEVICES)
def test_transition_dots_copies_non_contiguous_inputs(device, gen):
    x, x_prev, x_target = (random((2, 9, 7), torch.bfloat16, device, gen).transpose(1, 2) for _ in range(3))
    check_dots(x, x_prev, x_target)


@needs_triton
def test_transition_dots_rejects_bad_arguments(gen):
    x = random((2, 5), torch.float32, "cpu", gen)
    for args, error, match in [
        ((x, x[:1], x), ValueError, "x_prev has shape"),
        ((x, x, x.T), ValueError, "x_target has shape"),
        ((x, x, x.long()), TypeError, "x_target must have a dtype"),
        ((x.tolist(), x, x), TypeError, "x must be a torch.Tensor"),
    ]:
        with pytest.raises(error, match=match):
            kernels.transition_dots(*args)


# ---------------------------------------------------------------- float64 storage

@pytest.mark.parametrize("device", DEVICES)
def test_float64_storage_computes_in_float64(device, gen):
    dt = torch.float64
    x, m, hist, coefs, z = model_case((2, 3, 7), dt, device, gen, step=5, reads=2, cfg=True, noise=True)
    run_model_step(x, m, hist, coefs, 5, reads=2, cfg=True, noise=z)
    run_extrapolate_step(*extrapolate_case((2, 3, 7), dt, device, gen, step=5, reads=2), 5, reads=2)


# ---------------------------------------------------------------- end to end

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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_3m"])
def test_sample_with_triton_equals_reference_under_guidance(device, sampler):
    schedule = schedule_of("vp")
    model = ConditionalOracle(schedule, dim=2 * 3 * 3)
    noise = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(7)).to(device)
    runs = {}
    for backend in ("reference", "triton"):
        runs[backend] = ltc.sample(model, schedule, sampler=sampler, steps=8, noise=noise, guidance_scale=3.0,
                                   backend=backend, progress=False, return_info=True)
    (want, want_info), (got, got_info) = runs["reference"], runs["triton"]
    assert got_info.backend == "triton" and want_info.backend == "reference"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_sample_with_triton_equals_reference_for_an_eps_model_in_bfloat16(device):
    schedule = schedule_of("vp")
    oracle = ltc.oracles.GaussianMixture.random(schedule, dim=16).as_prediction("eps")
    noise = torch.randn(3, 16, generator=torch.Generator().manual_seed(3)).to(device, torch.bfloat16)
    want = ltc.sample(oracle, schedule, sampler="dpmpp_2m", steps=10, noise=noise, backend="reference",
                      progress=False)
    got = ltc.sample(oracle, schedule, sampler="dpmpp_2m", steps=10, noise=noise, backend="triton", progress=False)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_triton_backend_selected_by_environment_is_reported(device, monkeypatch):
    monkeypatch.setenv("LTC_BACKEND", "triton")
    schedule = schedule_of("vp")
    oracle = ltc.oracles.GaussianMixture.random(schedule, dim=4)
    _, info = ltc.sample(oracle, schedule, steps=3, noise=torch.randn(2, 4).to(device), progress=False,
                         return_info=True)
    assert info.backend == "triton"


# ---------------------------------------------------------------- CUDA only

@pytest.mark.gpu
def test_model_step_replays_in_a_cuda_graph_for_every_step(gen):
    plan = compile_plan(schedule_of("vp").discretize(6), get_sampler("dpmpp_3m"), Full(), ["eps"], 2.0)
    coefs = plan.coefficients(torch.float32, "cuda")
    shape = (2, 4, 16, 16)
    x, m = random(shape, torch.float32, "cuda", gen), random((4, *shape[1:]), torch.float32, "cuda", gen)
    hist, out = random((H, *shape), torch.float32, "cuda", gen), torch.empty_like(x)
    step = torch.zeros((), dtype=torch.int64, device="cuda")
    kernels.model_step(x, m, hist.clone(), coefs, step, out, reads=2, cfg=True)  # compile before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernels.model_step(x, m, hist, coefs, step, out, reads=2, cfg=True)
    for i in range(plan.steps):
        before = hist.clone()
        step.fill_(i)
        graph.replay()
        ref_hist, ref_out = before.clone(), torch.empty_like(out)
        reference.model_step(x, m, ref_hist, coefs, i, ref_out, reads=2, cfg=True)
        assert_close(out, ref_out, torch.float32)
        assert_close(hist, ref_hist, torch.float32)
