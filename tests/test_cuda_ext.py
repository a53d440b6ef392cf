"""The optional CUDA extension (``csrc/``, backend ``cuda``: :mod:`ltc.ops.cuda`) against the
specification, :mod:`ltc.ops.reference`.

Without a GPU: the sources compile with nvcc for sm_90 and the binding against torch's headers
(csrc/compile_check.sh), the kernels' column numbers are ltc.plan.Col, ltc works without the
extension, and arguments are checked before anything needs the extension.

With a GPU (marked ``gpu``; the extension must be built: ``LTC_BUILD_CUDA=1 pip install
--no-build-isolation -e .``, or ``LTC_CUDA_JIT=1``; ``LTC_REQUIRE_CUDA_EXT=1`` turns a missing
build into a failure): every dtype, awkward sizes, reads 0/1/2, cfg, noise, int and device step,
aliasing.  Outputs and the history slot written are pre-filled with NaN (an unwritten element
fails), slots a step does not read are NaN (reading one fails), every other slot keeps its bits.
Tolerances relative to each value and to the largest value: fp32 1e-6, fp64 1e-12, fp16/bf16
1e-2; the kernels round like the reference, operation for operation, so a separate test asks for
equality bit for bit.
"""
from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ltc
from ltc.ops import cuda as ops_cuda, reference
from ltc.plan import NCOLS, Col, compile_plan
from ltc.policies import Full
from ltc.samplers import get_sampler
from ltc.schedule import Schedule

CSRC = Path(__file__).resolve().parent.parent / "csrc"
STORAGE = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-2, torch.bfloat16: 1e-2}
SHAPES = [(1, 1), (1, 7), (3, 341), (1, 65537), (2, 4, 9, 11)]  # 1, 7, 1023, 65537 elements, 4-D latent
H = 3
N_ROWS = 7
NAN = float("nan")


# ---------------------------------------------------------------- helpers

def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def random(shape, dtype, device, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def random_table(dtype, device, gen, rows=N_ROWS):
    return random((rows, NCOLS), compute_dtype(dtype), device, gen)


def history(shape, dtype, device, gen, step, reads, slots=H):
    """[slots, *shape]: the slots the step reads random, every other slot NaN."""
    hist = torch.full((slots, *shape), NAN, dtype=dtype, device=device)
    for back in range(1, reads + 1):
        hist[(step - back) % slots] = random(shape, dtype, device, gen)
    return hist


def nan_like(x):
    """A contiguous NaN tensor of x's shape, dtype and device (whatever x's strides)."""
    return torch.full(x.shape, NAN, dtype=x.dtype, device=x.device)


def same_bits(a, b):
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return a.shape == b.shape and torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


def assert_close(got, want, dtype):
    tol = TOL[dtype]
    scale = max(1.0, float(want.abs().nan_to_num(0).max())) if want.numel() else 1.0
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol * scale, equal_nan=True)


def check_step(out, hist, ref_out, ref_hist, hist_before, step):
    written = int(step) % hist.shape[0]
    assert not torch.isnan(out).any(), "out has unwritten (NaN) elements"
    assert not torch.isnan(hist[written]).any(), "the history slot written has NaN elements"
    assert_close(out, ref_out, out.dtype)
    assert_close(hist[written], ref_hist[written], out.dtype)
    for slot in range(hist.shape[0]):
        if slot != written:
            assert same_bits(hist[slot], hist_before[slot]), f"history slot {slot} was modified"


def model_case(shape, dtype, device, gen, *, step, reads, cfg, noise, slots=H):
    x = random(shape, dtype, device, gen)
    m = random((shape[0] * (2 if cfg else 1), *shape[1:]), dtype, device, gen)
    hist = history(shape, dtype, device, gen, step, reads, slots)
    z = random(shape, dtype, device, gen) if noise else None
    return x, m, hist, random_table(dtype, device, gen), z


def run_model_step(x, m, hist, coefs, step, *, reads, cfg, noise, alias=None):
    """Reference and extension on their own copies; ``alias="x"`` passes one buffer as x and out."""
    ref_hist, ref_out = hist.clone(), nan_like(x)
    reference.model_step(x, m, ref_hist, coefs, int(step), ref_out, reads=reads, cfg=cfg, noise=noise)
    got_hist = hist.clone()
    if alias == "x":
        x = out = x.clone()
    else:
        out = nan_like(x)
    ops_cuda.model_step(x, m, got_hist, coefs, step, out, reads=reads, cfg=cfg, noise=noise)
    check_step(out, got_hist, ref_out, ref_hist, hist, step)
    return out, got_hist, ref_out, ref_hist


def extrapolate_case(shape, dtype, device, gen, *, step, reads):
    x, x_prev = random(shape, dtype, device, gen), random(shape, dtype, device, gen)
    return x, x_prev, history(shape, dtype, device, gen, step, reads), random_table(dtype, device, gen)


def run_extrapolate_step(x, x_prev, hist, coefs, step, *, reads, alias=None):
    """``alias`` ``"x"`` or ``"x_prev"``: that input's buffer is also ``out``."""
    ref_hist, ref_out = hist.clone(), nan_like(x)
    reference.extrapolate_step(x, x_prev, ref_hist, coefs, int(step), ref_out, reads=reads)
    got_hist = hist.clone()
    if alias == "x":
        x = out = x.clone()
    elif alias == "x_prev":
        x_prev = out = x_prev.clone()
    else:
        out = nan_like(x)
    ops_cuda.extrapolate_step(x, x_prev, got_hist, coefs, step, out, reads=reads)
    check_step(out, got_hist, ref_out, ref_hist, hist, step)
    return out, got_hist, ref_out, ref_hist


def check_dots(x, x_prev, x_target):
    got = ops_cuda.transition_dots(x, x_prev, x_target)
    want = reference.transition_dots(x, x_prev, x_target)
    ct = compute_dtype(x.dtype)
    assert got.dtype == want.dtype == ct and got.shape == (x.shape[0], 2)
    # a sum is accurate relative to the sum of the magnitudes of its terms
    B = x.shape[0]
    d = (x.to(ct) - x_prev.to(ct)).reshape(B, -1)
    r = (x_target.to(ct) - x.to(ct)).reshape(B, -1)
    magnitude = torch.stack([(d * r).abs().sum(1), (d * d).sum(1)], dim=1)
    assert torch.all((got - want).abs() <= 2 * TOL[ct] * magnitude + 1e-30), (got, want)
    return got


def step_arg(step, kind, device):
    return torch.tensor(step, device=device) if kind == "tensor" else step


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def ext():
    """The extension on a GPU machine: skipped with the reason when it is not built, unless
    LTC_REQUIRE_CUDA_EXT=1 (then a failure)."""
    if not ops_cuda.AVAILABLE:
        message = f"CUDA extension not available: {ops_cuda.UNAVAILABLE_REASON}"
        if os.environ.get("LTC_REQUIRE_CUDA_EXT") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return ops_cuda


# ---------------------------------------------------------------- without a GPU

def test_sources_compile_with_nvcc_for_sm90_and_the_binding_against_torch_headers():
    if shutil.which(os.environ.get("NVCC", "nvcc")) is None:
        pytest.skip("nvcc not found: the compile check needs a CUDA toolkit")
    result = subprocess.run(["bash", str(CSRC / "compile_check.sh")], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    for source in sorted([*CSRC.glob("*.cu"), *CSRC.glob("*.cpp")]):
        assert f"ok: {source.name} " in result.stdout, result.stdout
    assert "ltc_cuda:: calls are defined by the .cu objects" in result.stdout


def test_kernel_column_numbers_are_the_plan_columns():
    header = (CSRC / "ltc_ops.h").read_text()
    enum = re.search(r"enum Col : int \{(.*?)\};", header, re.S).group(1)
    columns = dict(re.findall(r"(\w+) = (\d+)", enum))
    assert {name: int(v) for name, v in columns.items() if name != "kNumCols"} == {c.name: int(c) for c in Col}
    assert int(columns["kNumCols"]) == NCOLS


def test_exports_have_the_reference_signatures():
    for name in ("model_step", "extrapolate_step", "transition_dots"):
        assert inspect.signature(getattr(ops_cuda, name)) == inspect.signature(getattr(reference, name))


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


def bad_model_step_args(gen, device):
    x, m, hist, coefs, z = model_case((2, 5), torch.float32, device, gen, step=1, reads=1, cfg=True, noise=True)
    base = dict(x=x, model_out=m, hist=hist, coefs=coefs, step=1, out=torch.empty_like(x), reads=1, cfg=True,
                noise=z)
    return base, [
        (dict(x=x.cpu().numpy()), TypeError, "x must be a torch.Tensor"),
        (dict(x=x.to(torch.int32)), TypeError, "x must have a dtype"),
        (dict(model_out=m[:2]), ValueError, r"model_out has shape \(2, 5\), expected \(4, 5\)"),
        (dict(model_out=m.double()), TypeError, "model_out has dtype torch.float64 but x has torch.float32"),
        (dict(cfg=False), ValueError, "model_out has shape"),
        (dict(cfg=1), TypeError, "cfg must be a bool"),
        (dict(out=torch.empty(2, 6, device=device)), ValueError, "out has shape"),
        (dict(out=torch.empty(5, 2, device=device).T), ValueError, "out must be contiguous"),
        (dict(hist=hist[:, :1]), ValueError, "hist has shape"),
        (dict(hist=hist[0]), ValueError, r"hist must be \[H, \*x.shape\]"),
        (dict(hist=hist.transpose(1, 2).contiguous().transpose(1, 2)), ValueError, "hist must be contiguous"),
        (dict(noise=z[:1]), ValueError, "noise has shape"),
        (dict(reads=3), ValueError, "reads must be 0, 1 or 2"),
        (dict(hist=hist[:1]), ValueError, "need at least 2 slots"),
        (dict(coefs=coefs[:, :5]), ValueError, r"coefs must be the plan's \[N, 14\] table"),
        (dict(coefs=coefs.half()), TypeError, "coefs must have a dtype"),
        (dict(coefs=coefs.double()), TypeError, "coefs must have dtype torch.float32"),
        (dict(step=N_ROWS), ValueError, r"step must be in \[0, 7\)"),
        (dict(step=-1), ValueError, "step must be in"),
        (dict(step=1.0), TypeError, "step must be an int or a 0-d integer tensor"),
        (dict(step=True), TypeError, "step must be an int"),
        (dict(step=torch.tensor(1.0, device=device)), TypeError, "0-d integer tensor"),
        (dict(step=torch.tensor([1], device=device)), TypeError, "0-d integer tensor"),
    ]


def test_model_step_rejects_bad_arguments_before_any_work(gen):
    base, cases = bad_model_step_args(gen, "cpu")
    for change, error, match in cases:
        args = {**base, **change}
        hist_before = args["hist"].clone()
        with pytest.raises(error, match=match):
            ops_cuda.model_step(**args)
        assert same_bits(args["hist"], hist_before)
    with pytest.raises(ValueError, match="the cuda backend needs CUDA tensors, got x on cpu"):
        ops_cuda.model_step(**base)


def test_extrapolate_step_and_dots_reject_bad_arguments(gen):
    x, x_prev, hist, coefs = extrapolate_case((2, 5), torch.float32, "cpu", gen, step=2, reads=2)
    base = dict(x=x, x_prev=x_prev, hist=hist, coefs=coefs, step=2, out=torch.empty_like(x), reads=2)
    for change, error, match in [
        (dict(x_prev=x_prev[:1]), ValueError, "x_prev has shape"),
        (dict(x_prev=x_prev.to(torch.int64)), TypeError, "x_prev must have a dtype"),
        (dict(out=x[0]), ValueError, "out has shape"),
        (dict(hist=hist[:2]), ValueError, "need at least 3 slots"),
        (dict(reads=-1), ValueError, "reads must be 0, 1 or 2"),
        (dict(step=N_ROWS + 3), ValueError, "step must be in"),
        (dict(), ValueError, "needs CUDA tensors"),
    ]:
        with pytest.raises(error, match=match):
            ops_cuda.extrapolate_step(**{**base, **change})
    for args, error, match in [
        ((x, x[:1], x), ValueError, "x_prev has shape"),
        ((x, x, x.T), ValueError, "x_target has shape"),
        ((x, x, x.half()), TypeError, "x_target has dtype torch.float16 but x has torch.float32"),
        ((x.tolist(), x, x), TypeError, "x must be a torch.Tensor"),
        ((x, x, x), ValueError, "needs CUDA tensors"),
    ]:
        with pytest.raises(error, match=match):
            ops_cuda.transition_dots(*args)


# ---------------------------------------------------------------- GPU: the matrix

@pytest.mark.gpu
@pytest.mark.parametrize("alias", [None, "x"], ids=["", "out=x"])
@pytest.mark.parametrize("step_kind", ["int", "tensor"])
@pytest.mark.parametrize("noise", [False, True], ids=["", "noise"])
@pytest.mark.parametrize("cfg", [False, True], ids=["plain", "cfg"])
@pytest.mark.parametrize("reads", [0, 1, 2])
@pytest.mark.parametrize("dtype", STORAGE, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_model_step_matches_reference(ext, shape, dtype, reads, cfg, noise, step_kind, alias, gen):
    step = 4 + reads  # different written/read slots per case
    x, m, hist, coefs, z = model_case(shape, dtype, "cuda", gen, step=step, reads=reads, cfg=cfg, noise=noise)
    run_model_step(x, m, hist, coefs, step_arg(step, step_kind, "cuda"), reads=reads, cfg=cfg, noise=z, alias=alias)


@pytest.mark.gpu
@pytest.mark.parametrize("alias", [None, "x", "x_prev"], ids=["", "out=x", "out=x_prev"])
@pytest.mark.parametrize("step_kind", ["int", "tensor"])
@pytest.mark.parametrize("reads", [0, 1, 2])
@pytest.mark.parametrize("dtype", STORAGE, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_extrapolate_step_matches_reference(ext, shape, dtype, reads, step_kind, alias, gen):
    step = 3 + reads
    x, x_prev, hist, coefs = extrapolate_case(shape, dtype, "cuda", gen, step=step, reads=reads)
    run_extrapolate_step(x, x_prev, hist, coefs, step_arg(step, step_kind, "cuda"), reads=reads, alias=alias)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", STORAGE, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(3, 70001), (5, 3)], ids=str)  # multi-chunk rows; 5 rows of 3
def test_transition_dots_matches_reference(ext, shape, dtype, gen):
    check_dots(*(random(shape, dtype, "cuda", gen) for _ in range(3)))


@pytest.mark.gpu
def test_transition_dots_is_deterministic(ext, gen):
    inputs = [random((3, 70001), torch.float32, "cuda", gen) for _ in range(3)]  # 5 chunks per row: two passes
    first = ext.transition_dots(*inputs)
    for _ in range(3):
        assert same_bits(ext.transition_dots(*inputs), first)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", STORAGE, ids=str)
def test_steps_equal_the_reference_bit_for_bit(ext, dtype, gen):
    """Same operations in the same order, each correctly rounded: identical results."""
    x, m, hist, coefs, z = model_case((2, 4, 9, 11), dtype, "cuda", gen, step=5, reads=2, cfg=True, noise=True)
    out, got_hist, ref_out, ref_hist = run_model_step(x, m, hist, coefs, 5, reads=2, cfg=True, noise=z)
    assert same_bits(out, ref_out) and same_bits(got_hist, ref_hist)
    x, x_prev, hist, coefs = extrapolate_case((1, 1027), dtype, "cuda", gen, step=5, reads=2)
    out, got_hist, ref_out, ref_hist = run_extrapolate_step(x, x_prev, hist, coefs, 5, reads=2)
    assert same_bits(out, ref_out) and same_bits(got_hist, ref_hist)


# ---------------------------------------------------------------- GPU: paths and edge cases

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", STORAGE, ids=str)
def test_vector_path_with_scalar_tail(ext, dtype, gen):
    """One history slot and no cfg: every segment is aligned although numel is not a multiple of
    the vector width, so 16-byte vectors run with a scalar tail."""
    x, m, hist, coefs, z = model_case((1, 1027), dtype, "cuda", gen, step=2, reads=0, cfg=False, noise=True, slots=1)
    run_model_step(x, m, hist, coefs, 2, reads=0, cfg=False, noise=z)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", STORAGE, ids=str)
def test_unaligned_storage_takes_the_scalar_path(ext, dtype, gen):
    shape = (2, 4, 8, 8)  # a multiple of every vector width, but every tensor starts one element late
    def late(t):
        buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        view = buffer[1:].view(t.shape)
        view.copy_(t)
        return view
    x, m, hist, coefs, z = model_case(shape, dtype, "cuda", gen, step=4, reads=2, cfg=True, noise=True)
    run_model_step(late(x), late(m), late(hist), coefs, 4, reads=2, cfg=True, noise=late(z))
    x, x_prev, hist, coefs = extrapolate_case(shape, dtype, "cuda", gen, step=4, reads=2)
    run_extrapolate_step(late(x), late(x_prev), late(hist), coefs, 4, reads=2, alias="x_prev")
    check_dots(*(late(random(shape, dtype, "cuda", gen)) for _ in range(3)))


@pytest.mark.gpu
def test_device_step_outside_the_table_poisons_out_and_keeps_history(ext, gen):
    x, m, hist, coefs, _ = model_case((2, 64), torch.float32, "cuda", gen, step=1, reads=1, cfg=False, noise=False)
    for bad in (N_ROWS, -1):
        out, h = torch.zeros_like(x), hist.clone()
        ext.model_step(x, m, h, coefs, torch.tensor(bad, device="cuda"), out, reads=1, cfg=False)
        assert torch.isnan(out).all() and same_bits(h, hist)
        out, h = torch.zeros_like(x), hist.clone()
        ext.extrapolate_step(x, m[:2], h, coefs, torch.tensor(bad, device="cuda", dtype=torch.int32), out, reads=1)
        assert torch.isnan(out).all() and same_bits(h, hist)


@pytest.mark.gpu
def test_int32_step_tensor_and_non_contiguous_inputs(ext, gen):
    x, m, hist, coefs, z = model_case((2, 6, 6), torch.float32, "cuda", gen, step=3, reads=2, cfg=True, noise=True)
    step = torch.tensor(3, dtype=torch.int32, device="cuda")
    run_model_step(x.transpose(1, 2), m.transpose(1, 2), hist, coefs, step, reads=2, cfg=True,
                   noise=z.transpose(1, 2))
    xs = [random((2, 9, 7), torch.bfloat16, "cuda", gen).transpose(1, 2) for _ in range(3)]
    check_dots(*xs)


@pytest.mark.gpu
def test_gpu_bad_arguments(ext, gen):
    base, cases = bad_model_step_args(gen, "cuda")
    for change, error, match in cases:
        with pytest.raises(error, match=match):
            ext.model_step(**{**base, **change})
    x = base["x"]
    for change, match in [
        (dict(out=base["model_out"][:2]), "out overlaps model_out"),
        (dict(out=base["hist"][1]), "out overlaps hist"),
        (dict(noise=base["hist"][0]), "hist overlaps noise"),
        (dict(model_out=torch.cat([x, x]).cpu()), "model_out is on cpu"),
        (dict(step=torch.tensor(1)), "step is on cpu"),
    ]:
        with pytest.raises(ValueError, match=match):
            ext.model_step(**{**base, **change})
    # the C++ checks behind the wrapper raise ValueError / TypeError too
    m, hist, coefs, out = base["model_out"], base["hist"], base["coefs"], base["out"]
    with pytest.raises(ValueError, match="reads must be 0, 1 or 2"):
        torch.ops.ltc_cuda.model_step(x, m, hist, coefs, None, 1, out, 5, True, None)
    with pytest.raises(TypeError, match="coefs must have dtype"):
        torch.ops.ltc_cuda.model_step(x, m, hist, coefs.double(), None, 1, out, 1, True, None)
    buffer = torch.zeros(11, device="cuda")
    with pytest.raises(ValueError, match="out overlaps x without being the very same tensor"):
        torch.ops.ltc_cuda.extrapolate_step(buffer[:10].view(2, 5), x, hist, coefs, None, 1, buffer[1:].view(2, 5), 1)


# ---------------------------------------------------------------- GPU: streams, graphs, end to end

@pytest.mark.gpu
def test_kernels_run_on_the_current_stream(ext, gen):
    """x is rewritten on a side stream behind a long sleep; a kernel launched on any other stream
    would read the old x."""
    x, m, hist, coefs, _ = model_case((4, 4096), torch.float32, "cuda", gen, step=2, reads=1, cfg=False, noise=False)
    new_x = random(x.shape, torch.float32, "cuda", gen)
    ref_hist, ref_out = hist.clone(), torch.empty_like(x)
    reference.model_step(new_x, m, ref_hist, coefs, 2, ref_out, reads=1, cfg=False)
    torch.cuda.synchronize()
    side, out = torch.cuda.Stream(), torch.empty_like(x)
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        x.copy_(new_x)
        ext.model_step(x, m, hist, coefs, 2, out, reads=1, cfg=False)
    side.synchronize()
    assert same_bits(out, ref_out) and same_bits(hist, ref_hist)


def schedule_of(kind):
    return Schedule.vp("scaled_linear", spacing="leading", steps_offset=1) if kind == "vp" else Schedule.flow(3.0)


@pytest.mark.gpu
def test_steps_replay_in_a_cuda_graph_for_every_step(ext, gen):
    plan = compile_plan(schedule_of("vp").discretize(6), get_sampler("dpmpp_3m"), Full(), ["eps"], 2.0)
    coefs = plan.coefficients(torch.float32, "cuda")
    shape = (2, 4, 16, 16)
    x, m = random(shape, torch.float32, "cuda", gen), random((4, *shape[1:]), torch.float32, "cuda", gen)
    x_prev = random(shape, torch.float32, "cuda", gen)
    hist, out, out2 = random((H, *shape), torch.float32, "cuda", gen), torch.empty_like(x), torch.empty_like(x)
    step = torch.zeros((), dtype=torch.int64, device="cuda")
    ext.model_step(x, m, hist.clone(), coefs, step, out, reads=2, cfg=True)  # load the kernels before capture
    ext.extrapolate_step(out, x_prev, hist.clone(), coefs, step, out2, reads=2)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ext.model_step(x, m, hist, coefs, step, out, reads=2, cfg=True)
        ext.extrapolate_step(out, x_prev, hist, coefs, step, out2, reads=2)
    for i in range(plan.steps):
        ref_hist, ref_out, ref_out2 = hist.clone(), torch.empty_like(out), torch.empty_like(out)
        reference.model_step(x, m, ref_hist, coefs, i, ref_out, reads=2, cfg=True)
        reference.extrapolate_step(ref_out, x_prev, ref_hist, coefs, i, ref_out2, reads=2)
        step.fill_(i)
        graph.replay()
        assert_close(out, ref_out, torch.float32)
        assert_close(out2, ref_out2, torch.float32)
        assert_close(hist, ref_hist, torch.float32)


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


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_3m"])
def test_sample_with_the_extension_equals_reference_under_guidance(ext, sampler):
    schedule = schedule_of("vp")
    model = ConditionalOracle(schedule, dim=2 * 3 * 3)
    noise = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(7)).to("cuda")
    runs = {}
    for backend in ("reference", "cuda"):
        runs[backend] = ltc.sample(model, schedule, sampler=sampler, steps=8, noise=noise, guidance_scale=3.0,
                                   backend=backend, progress=False, return_info=True)
    (want, want_info), (got, got_info) = runs["reference"], runs["cuda"]
    assert got_info.backend == "cuda" and want_info.backend == "reference"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
