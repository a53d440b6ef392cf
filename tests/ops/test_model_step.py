"""``model_step`` on every backend (reference, triton, cuda) against the specification: the
equations of :mod:`ltc.ops.contract` in float64 (tests/ops/cases.py says how, and with which
tolerances).  The matrix is every shape x storage dtype, with reads, guidance, noise, the step
(row, host int or device tensor), ``out`` aliasing ``x`` and non-contiguous read-only inputs
combined pairwise; then real plans, edge cases and the argument checks.
"""
from __future__ import annotations

import pytest
import torch

import cases
from cases import (N_ROWS, SHAPES, STEPS, STORAGE, TRITON_INTERPRETED, generator, history, late, nan_like, random,
                   run_model_step, same_bits, step_arg, strided, table)
from ltc.ops import reference
from ltc.ops.contract import NCOLS, compute_dtype
from ltc.plan import compile_plan
from ltc.policies import Full
from ltc.samplers import DDIM, get_sampler
from ltc.schedule import Schedule

MATRIX = cases.pairwise({
    "shape": SHAPES, "dtype": list(STORAGE), "reads": [0, 1, 2, 3], "cfg": [False, True], "noise": [False, True],
    "step": list(STEPS), "step_kind": ["int", "tensor", "int32"], "alias": [None, "x"], "strided": [False, True]})


def model_inputs(shape, dtype, device, gen, *, step, reads, cfg, noise, slots=cases.H):
    """``x, model_out, hist, coefs, noise`` of one step (``hist`` poisoned but for the slots read)."""
    x = random(shape, dtype, device, gen)
    m = random((shape[0] * (2 if cfg else 1), *shape[1:]), dtype, device, gen)
    hist = history(shape, dtype, device, gen, step, reads, slots)
    z = random(shape, dtype, device, gen) if noise else None
    return x, m, hist, table(dtype, device, gen), z


@pytest.mark.parametrize("case", cases.params(MATRIX))
def test_model_step_matches_the_specification(backend, case):
    step, reads, cfg, device = case["step"], case["reads"], case["cfg"], backend.device
    x, m, hist, coefs, z = model_inputs(case["shape"], case["dtype"], device, generator("model_step", case),
                                        step=step, reads=reads, cfg=cfg, noise=case["noise"])
    if case["strided"]:  # the read-only inputs (x too, unless it is also out)
        x = x if case["alias"] == "x" else strided(x)
        m, coefs, z = strided(m), strided(coefs), None if z is None else strided(z)
    run_model_step(backend.module, x, m, hist, coefs, step_arg(step, case["step_kind"], device), reads=reads,
                   cfg=cfg, noise=z, alias=case["alias"])


def test_model_step_reads_the_same_step_from_a_device_tensor(backend):
    """Every row of the table and every reads: a device step index gives the host index's bits."""
    device, gen = backend.device, generator("model_step device step")
    x, m, _, coefs, z = model_inputs((3, 5), torch.float32, device, gen, step=0, reads=0, cfg=True, noise=True)
    cases.assert_device_step_gives_the_host_bits(
        device, gen, x, lambda s, h, out, reads: backend.module.model_step(x, m, h, coefs, s, out, reads=reads,
                                                                          cfg=True, noise=z), max_reads=3)


PLAN_CASES = [  # (schedule, sampler, prediction)
    ("vp", "ddim", "eps"), ("vp", DDIM(eta=0.7), "eps"), ("flow", "euler", "flow"), ("vp", "euler", "v"),
    ("vp", "dpmpp_1m", "x0"), ("vp", "dpmpp_2m", "eps"), ("vp", "dpmpp_3m", "v"), ("flow", "dpmpp_3m", "flow"),
    ("vp", "unipc_3m", "eps")]  # UniPC-3's corrector reads D_{i-3}


def schedule_of(kind):
    return Schedule.vp("scaled_linear", spacing="leading", steps_offset=1) if kind == "vp" else Schedule.flow(3.0)


@pytest.mark.parametrize("kind, sampler, prediction", PLAN_CASES,
                         ids=[f"{k}-{getattr(s, 'name', s)}{'-eta' if isinstance(s, DDIM) else ''}-{p}"
                              for k, s, p in PLAN_CASES])
def test_model_step_on_compiled_plans(backend, kind, sampler, prediction):
    """Every step of real guided plans (their coefficients, reads and noise), fp32 and bf16."""
    plan = compile_plan(schedule_of(kind).discretize(6), get_sampler(sampler), Full(), [prediction], 4.0)
    assert max(plan.history_reads) == {"dpmpp_2m": 1, "dpmpp_3m": 2, "unipc_3m": 3}.get(getattr(sampler, "name",
                                                                                               sampler), 0)
    gen = generator("model_step plans", kind, str(sampler), prediction)
    for dtype in (torch.float32, torch.bfloat16):
        coefs = plan.coefficients(compute_dtype(dtype), backend.device)
        for step in range(plan.steps):
            reads = plan.history_reads[step]
            x, m, hist, _, z = model_inputs((2, 4, 9, 11), dtype, backend.device, gen, step=step, reads=reads,
                                            cfg=plan.cfg, noise=plan.noisy[step])
            run_model_step(backend.module, x, m, hist, coefs, step, reads=reads, cfg=plan.cfg, noise=z)


def test_model_step_with_one_history_slot(backend):
    """H = 1 and no guidance: every segment aligned although numel is not a multiple of the vector
    width (the extension's 16-byte vectors with a scalar tail)."""
    for dtype in STORAGE:
        x, m, hist, coefs, z = model_inputs((1, 1027), dtype, backend.device, generator("one slot", dtype),
                                            step=2, reads=0, cfg=False, noise=True, slots=1)
        run_model_step(backend.module, x, m, hist, coefs, 2, reads=0, cfg=False, noise=z)


def test_model_step_on_unaligned_storage(backend):
    """Every tensor starts one element into its storage (the extension's scalar path)."""
    for dtype in STORAGE:
        x, m, hist, coefs, z = model_inputs((2, 4, 8, 8), dtype, backend.device, generator("late", dtype),
                                            step=4, reads=3, cfg=True, noise=True)
        run_model_step(backend.module, late(x), late(m), late(hist), coefs, 4, reads=3, cfg=True, noise=late(z))


def test_reference_model_step_traces_without_graph_breaks():
    step = torch.compile(reference.model_step, fullgraph=True, backend="eager")
    x, m, coefs = torch.randn(2, 4), torch.randn(2, 4), torch.randn(3, NCOLS)
    hist, out = torch.randn(cases.H, 2, 4), torch.empty(2, 4)
    want_hist, want = hist.clone(), torch.empty(2, 4)
    step(x, m, hist, coefs, torch.tensor(2), out, reads=3, cfg=False)
    reference.model_step(x, m, want_hist, coefs, 2, want, reads=3, cfg=False)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(hist, want_hist)


# ---------------------------------------------------------------- argument checks

def bad_model_step_args(gen, device, one_dtype):
    x, m, hist, coefs, z = model_inputs((2, 5), torch.float32, device, gen, step=1, reads=1, cfg=True, noise=True)
    base = dict(x=x, model_out=m, hist=hist, coefs=coefs, step=1, out=torch.empty_like(x), reads=1, cfg=True,
                noise=z)
    bad = [
        (dict(x=x.cpu().numpy()), TypeError, "x must be a torch.Tensor"),
        (dict(x=x.to(torch.int32)), TypeError, "x must have a dtype"),
        (dict(model_out=m[:2]), ValueError, r"model_out has shape \(2, 5\), expected \(4, 5\)"),
        (dict(cfg=False), ValueError, "model_out has shape"),
        (dict(cfg=1), TypeError, "cfg must be a bool"),
        (dict(out=torch.empty(2, 6, device=device)), ValueError, "out has shape"),
        (dict(out=torch.empty(5, 2, device=device).T), ValueError, "out must be contiguous"),
        (dict(hist=hist[:, :1]), ValueError, "hist has shape"),
        (dict(hist=hist[0]), ValueError, r"hist must be \[H, \*x.shape\]"),
        (dict(hist=hist.transpose(1, 2).contiguous().transpose(1, 2)), ValueError, "hist must be contiguous"),
        (dict(noise=z[:1]), ValueError, "noise has shape"),
        (dict(reads=4), ValueError, "reads must be 0, 1, 2 or 3, got 4"),
        (dict(reads=-1), ValueError, "reads must be 0, 1, 2 or 3, got -1"),
        (dict(hist=hist[:1]), ValueError, "need at least 2 slots"),
        (dict(reads=3, hist=hist[:3]), ValueError, "hist has 3 slot.s. but the step reads 3 past clean estimate.s.: "
                                                   "need at least 4 slots"),
        (dict(coefs=coefs[:, :5]), ValueError, rf"coefs must be the plan's \[N, {NCOLS}\] table"),
        (dict(coefs=coefs[:, :NCOLS - 1]), ValueError, rf"coefs must be the plan's \[N, {NCOLS}\] table"),
        (dict(coefs=coefs.half()), TypeError, "coefs must have a dtype"),
        (dict(step=N_ROWS), ValueError, r"step must be in \[0, 7\)"),
        (dict(step=-1), ValueError, "step must be in"),
        (dict(step=1.0), TypeError, "step must be an int or a 0-d integer tensor"),
        (dict(step=True), TypeError, "step must be an int"),
        (dict(step=torch.tensor(1.0, device=device)), TypeError, "0-d integer tensor"),
        (dict(step=torch.tensor([1], device=device)), TypeError, "0-d integer tensor"),
        (dict(coefs=coefs.double()), TypeError, r"coefs must have dtype torch.float32 \(the compute dtype"),
        (dict(x=x.half(), model_out=m.half(), coefs=coefs.double()), TypeError,
         "coefs must have dtype torch.float32"),
    ]
    if device != "cpu" or not one_dtype:  # the extension checks the device before the overlaps
        bad += overlapping_model_step_args(base)
    if one_dtype:  # the extension: one storage dtype
        bad += [(dict(model_out=m.double()), TypeError, "model_out has dtype torch.float64 but x has torch.float32")]
    return base, bad


def overlapping_model_step_args(base):
    """Outputs sharing memory with an input or with each other (the CUDA binding's checks, shared):
    ``out`` may be ``x`` itself, nothing else."""
    x, m, hist, z = base["x"], base["model_out"], base["hist"], base["noise"]
    buffer = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    shifted_x, shifted_out = buffer[1:].view(x.shape), buffer[:-1].view(x.shape)  # out one element before x
    shifted_x.copy_(x)
    read_slot = (base["step"] - 1) % hist.shape[0]
    out_as_step = torch.empty_like(x)
    return [
        (dict(x=shifted_x, out=shifted_out), ValueError, "out overlaps x without being the very same tensor"),
        (dict(out=hist[read_slot]), ValueError, "out overlaps hist; they must be separate memory"),
        (dict(out=m[:x.shape[0]]), ValueError, "out overlaps model_out; they must be separate memory"),
        (dict(out=z), ValueError, "out overlaps noise"),
        (dict(noise=hist[2]), ValueError, "hist overlaps noise"),
        (dict(x=hist[2].clone(), out=hist[2]), ValueError, "out overlaps hist"),
        (dict(x=hist[2]), ValueError, "hist overlaps x"),
        (dict(model_out=hist.view(-1)[:m.numel()].view(m.shape)), ValueError, "hist overlaps model_out"),
        (dict(out=out_as_step, step=out_as_step.view(torch.int32).flatten()[0]), ValueError, "out overlaps step"),
    ]


def test_model_step_rejects_bad_arguments_before_any_work(checked):
    """CPU tensors: the checks run before the device is needed, and nothing is written."""
    cuda_ext = checked.__name__ == "ltc.ops.cuda"
    base, bad = bad_model_step_args(generator("bad model_step"), "cpu", one_dtype=cuda_ext)
    cases.assert_refused_before_any_write(checked.model_step, base, bad)
    if cuda_ext:
        with pytest.raises(ValueError, match="the cuda backend needs CUDA tensors, got x on cpu"):
            checked.model_step(**base)
    elif not TRITON_INTERPRETED:  # a machine with a GPU: CPU tensors only in the interpreter
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            checked.model_step(**base)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_model_step_rejects_bad_cuda_arguments(name):
    """The same checks on CUDA tensors, and tensors on two devices."""
    backend = cases.cuda_backend_or_skip(name)
    base, bad = bad_model_step_args(generator("bad cuda model_step"), "cuda", one_dtype=name == "cuda")
    for change, error, match in bad:
        with pytest.raises(error, match=match):
            backend.module.model_step(**{**base, **change})
    for change, match in [(dict(model_out=base["model_out"].cpu()), "model_out is on cpu"),
                          (dict(step=torch.tensor(1)), "step is on cpu")]:
        with pytest.raises(ValueError, match=match):
            backend.module.model_step(**{**base, **change})


def test_out_overlapping_the_history_is_refused_by_every_backend(backend):
    """``out`` inside ``hist`` (a slot the step reads, or the one it writes) has no defined result:
    every backend, the reference included, raises before writing anything."""
    x, m, hist, coefs, z = model_inputs((2, 5), torch.float32, backend.device, generator("out in hist"), step=4,
                                        reads=2, cfg=False, noise=True)
    for slot in ((4 - 1) % cases.H, 4 % cases.H):
        h = hist.clone()
        with pytest.raises(ValueError, match="out overlaps hist; they must be separate memory"):
            backend.module.model_step(x, m, h, coefs, 4, h[slot], reads=2, cfg=False, noise=z)
        assert same_bits(h, hist)


def test_reference_is_exact_with_out_overlapping_its_inputs():
    """The reference reads every input before it writes: ``out`` shifted one element from ``x``,
    inside ``model_out`` or inside ``noise`` still gets the specification of the inputs as given."""
    for where in ("x", "model_out", "noise"):
        x, m, hist, coefs, z = model_inputs((2, 5), torch.float32, "cpu", generator("reference overlap", where),
                                            step=4, reads=3, cfg=True, noise=True)
        buffer = torch.cat([(x if where == "x" else z).flatten(), torch.zeros(1)])  # the input, then a spare
        shifted_input, out = buffer[:-1].view(x.shape), buffer[1:].view(x.shape)    # out one element later
        if where == "x":
            x = shifted_input
        elif where == "noise":
            z = shifted_input
        else:
            out = m[1:3]  # across the unconditional and conditional halves
        want, mag, d, d_mag = cases.spec_model_step(x, m, hist, coefs, 4, reads=3, cfg=True, noise=z)
        reference.model_step(x, m, hist, coefs, 4, out, reads=3, cfg=True, noise=z)
        cases.assert_matches(out, want, mag, torch.float32, f"out overlapping {where}")
        cases.assert_matches(hist[4 % cases.H], d, d_mag, torch.float32, f"hist, out overlapping {where}")


# ---------------------------------------------------------------- the extension only

@pytest.mark.gpu
def test_extension_model_step_equals_the_reference_bit_for_bit():
    """Same operations in the same order, each correctly rounded: identical results."""
    ext = cases.backend("cuda")
    for dtype in STORAGE:
        x, m, hist, coefs, z = model_inputs((2, 4, 9, 11), dtype, "cuda", generator("bits", dtype), step=5,
                                            reads=3, cfg=True, noise=True)
        ref_hist, ref_out = hist.clone(), nan_like(x)
        reference.model_step(x, m, ref_hist, coefs, 5, ref_out, reads=3, cfg=True, noise=z)
        out, got_hist = run_model_step(ext.module, x, m, hist, coefs, 5, reads=3, cfg=True, noise=z)
        assert same_bits(out, ref_out) and same_bits(got_hist, ref_hist), dtype


@pytest.mark.parametrize("name", [pytest.param("triton", marks=cases.needs_triton),
                                  pytest.param("cuda", marks=pytest.mark.gpu)])
def test_device_step_outside_the_table_poisons_out_and_keeps_history(name):
    """A device index is read in the kernel: out of ``[0, N)`` the compiled backends write NaN to
    every element of out (full blocks and the tail) and leave the history alone, in every storage
    dtype, with and without guidance."""
    backend = cases.backend(name)
    for dtype in STORAGE:
        for cfg in (False, True):
            x, m, hist, coefs, z = model_inputs((2, 1500), dtype, backend.device, generator("oob", dtype), step=1,
                                                reads=3, cfg=cfg, noise=True)
            for bad in (N_ROWS, -1):
                for step_dtype in (torch.int64, torch.int32):
                    out, h = torch.zeros_like(x), hist.clone()
                    step = torch.tensor(bad, device=backend.device, dtype=step_dtype)
                    backend.module.model_step(x, m, h, coefs, step, out, reads=3, cfg=cfg, noise=z)
                    assert torch.isnan(out).all() and same_bits(h, hist), (dtype, cfg, bad, step_dtype)
