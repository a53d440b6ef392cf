"""``extrapolate_step`` on every backend (reference, triton, cuda) against the specification: the
equations of :mod:`ltc.ops.contract` in float64 (tests/ops/cases.py says how, and with which
tolerances).  The matrix is every shape x storage dtype, with reads, the step (row, host int or
device tensor), ``out`` aliasing ``x`` or ``x_prev`` and non-contiguous read-only inputs combined
pairwise; then real plans with extrapolated steps, edge cases and the argument checks.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import cases
from cases import (N_ROWS, SHAPES, STEPS, STORAGE, generator, history, late, nan_like, random, run_extrapolate_step,
                   same_bits, step_arg, strided, table)
from ltc.ops import reference
from ltc.ops.contract import EXTRAPOLATION_COLS, compute_dtype
from ltc.plan import Decision, compile_plan
from ltc.policies import Policy
from ltc.samplers import get_sampler
from ltc.schedule import Schedule

MATRIX = cases.pairwise({
    "shape": SHAPES, "dtype": list(STORAGE), "reads": [0, 1, 2], "step": list(STEPS),
    "step_kind": ["int", "tensor", "int32"], "alias": [None, "x", "x_prev"], "strided": [False, True]})


def extrapolate_inputs(shape, dtype, device, gen, *, step, reads):
    """``x, x_prev, hist, coefs`` of one step (``hist`` poisoned but for the slots read)."""
    x, x_prev = random(shape, dtype, device, gen), random(shape, dtype, device, gen)
    return x, x_prev, history(shape, dtype, device, gen, step, reads), table(dtype, device, gen)


@pytest.mark.parametrize("case", cases.params(MATRIX))
def test_extrapolate_step_matches_the_specification(backend, case):
    step, reads, alias, device = case["step"], case["reads"], case["alias"], backend.device
    x, x_prev, hist, coefs = extrapolate_inputs(case["shape"], case["dtype"], device,
                                                generator("extrapolate_step", case), step=step, reads=reads)
    if case["strided"]:  # the read-only inputs (not the one that is also out)
        x = x if alias == "x" else strided(x)
        x_prev = x_prev if alias == "x_prev" else strided(x_prev)
        coefs = strided(coefs)
    run_extrapolate_step(backend.module, x, x_prev, hist, coefs, step_arg(step, case["step_kind"], device),
                         reads=reads, alias=alias)


def test_extrapolate_step_reads_the_same_step_from_a_device_tensor(backend):
    """Every row of the table and every reads: a device step index gives the host index's bits."""
    device, gen = backend.device, generator("extrapolate_step device step")
    x, x_prev, _, coefs = extrapolate_inputs((3, 5), torch.float32, device, gen, step=0, reads=0)
    cases.assert_device_step_gives_the_host_bits(
        device, gen, x, lambda s, h, out, reads: backend.module.extrapolate_step(x, x_prev, h, coefs, s, out,
                                                                                reads=reads), max_reads=2)


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


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_3m"])
def test_extrapolate_step_on_compiled_plans(backend, sampler):
    """Every extrapolated step of real plans (their coefficients and reads), fp32 and bf16."""
    schedule = Schedule.vp("scaled_linear", spacing="leading", steps_offset=1)
    plan = compile_plan(schedule.discretize(8), get_sampler(sampler), EveryOther(), ["eps"])
    extrapolated = [i for i, k in enumerate(plan.models) if k == -1]
    assert extrapolated and max(plan.history_reads[i] for i in extrapolated) == 2
    gen = generator("extrapolate_step plans", sampler)
    for dtype in (torch.float32, torch.bfloat16):
        coefs = plan.coefficients(compute_dtype(dtype), backend.device)
        for step in extrapolated:
            reads = plan.history_reads[step]
            x, x_prev, hist, _ = extrapolate_inputs((2, 4, 9, 11), dtype, backend.device, gen, step=step, reads=reads)
            run_extrapolate_step(backend.module, x, x_prev, hist, coefs, step, reads=reads)


def test_extrapolate_step_on_unaligned_storage(backend):
    """Every tensor starts one element into its storage (the extension's scalar path); out = x_prev."""
    for dtype in STORAGE:
        x, x_prev, hist, coefs = extrapolate_inputs((2, 4, 8, 8), dtype, backend.device, generator("late", dtype),
                                                    step=4, reads=2)
        run_extrapolate_step(backend.module, late(x), late(x_prev), late(hist), coefs, 4, reads=2, alias="x_prev")


# ---------------------------------------------------------------- argument checks

def test_extrapolate_step_rejects_bad_arguments_before_any_work(checked):
    x, x_prev, hist, coefs = extrapolate_inputs((3, 8, 5), torch.float32, "cpu", generator("bad extrapolate"),
                                                step=2, reads=2)
    base = dict(x=x, x_prev=x_prev, hist=hist, coefs=coefs, step=2, out=torch.empty_like(x), reads=2)
    bad = [
        (dict(x_prev=x_prev[:1]), ValueError, "x_prev has shape"),
        (dict(x_prev=x_prev.to(torch.int64)), TypeError, "x_prev must have a dtype"),
        (dict(out=x[0]), ValueError, "out has shape"),
        (dict(out=torch.empty(3, 5, 8).transpose(1, 2)), ValueError, "out must be contiguous"),
        (dict(hist=hist.transpose(0, 1).contiguous().transpose(0, 1)), ValueError, "hist must be contiguous"),
        (dict(hist=hist[:2]), ValueError, "need at least 3 slots"),
        (dict(reads=-1), ValueError, "reads must be 0, 1 or 2, got -1"),
        (dict(reads=3), ValueError, "reads must be 0, 1 or 2, got 3"),  # D_{i-3}: a model step's only
        (dict(step=N_ROWS + 3), ValueError, "step must be in"),
        (dict(step=True), TypeError, "step must be an int"),
        (dict(coefs=coefs.double()), TypeError, r"coefs must have dtype torch.float32 \(the compute dtype"),
        (dict(x=x.half(), x_prev=x_prev.half(), coefs=coefs.double()), TypeError,
         "coefs must have dtype torch.float32"),
    ]
    if checked.__name__ == "ltc.ops.cuda":
        bad += [(dict(), ValueError, "needs CUDA tensors")]
    else:  # the extension checks the device first: its overlaps in test_extrapolate_step_rejects_overlaps_on_cuda
        bad += overlapping_extrapolate_step_args(base)
    cases.assert_refused_before_any_write(checked.extrapolate_step, base, bad)


def overlapping_extrapolate_step_args(base):
    """Outputs sharing memory with an input or with each other (the CUDA binding's checks, shared):
    ``out`` may be ``x`` or ``x_prev`` itself, nothing else."""
    x, x_prev, hist = base["x"], base["x_prev"], base["hist"]
    buffer = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    shifted_prev, shifted_out = buffer[:-1].view(x.shape), buffer[1:].view(x.shape)  # out one element after x_prev
    shifted_prev.copy_(x_prev)
    read_slot = (base["step"] - 1) % hist.shape[0]
    written_slot = base["step"] % hist.shape[0]
    out_as_step = torch.empty_like(x)
    return [
        (dict(x_prev=shifted_prev, out=shifted_out), ValueError,
         "out overlaps x_prev without being the very same tensor"),
        (dict(x=shifted_prev, out=shifted_out), ValueError, "out overlaps x without being the very same tensor"),
        (dict(out=hist[read_slot]), ValueError, "out overlaps hist; they must be separate memory"),
        (dict(x_prev=hist[written_slot]), ValueError, "hist overlaps x_prev"),
        (dict(x=hist[read_slot]), ValueError, "hist overlaps x"),
        (dict(coefs=hist.view(-1)[:base["coefs"].numel()].view(base["coefs"].shape)), ValueError,
         "hist overlaps coefs"),
        (dict(out=out_as_step, step=out_as_step.view(torch.int32).flatten()[0]), ValueError, "out overlaps step"),
    ]


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_extrapolate_step_rejects_overlaps_on_cuda(name):
    backend = cases.cuda_backend_or_skip(name)
    x, x_prev, hist, coefs = extrapolate_inputs((3, 8, 5), torch.float32, "cuda", generator("overlap"), step=2,
                                                reads=2)
    base = dict(x=x, x_prev=x_prev, hist=hist, coefs=coefs, step=2, out=torch.empty_like(x), reads=2)
    for change, error, match in overlapping_extrapolate_step_args(base):
        with pytest.raises(error, match=match):
            backend.module.extrapolate_step(**{**base, **change})


# ---------------------------------------------------------------- the extension only

@pytest.mark.gpu
def test_extension_extrapolate_step_equals_the_reference_bit_for_bit():
    """Same operations in the same order, each correctly rounded: identical results."""
    ext = cases.backend("cuda")
    for dtype in STORAGE:
        x, x_prev, hist, coefs = extrapolate_inputs((1, 1027), dtype, "cuda", generator("bits", dtype), step=5,
                                                    reads=2)
        ref_hist, ref_out = hist.clone(), nan_like(x)
        reference.extrapolate_step(x, x_prev, ref_hist, coefs, 5, ref_out, reads=2)
        out, got_hist = run_extrapolate_step(ext.module, x, x_prev, hist, coefs, 5, reads=2)
        assert same_bits(out, ref_out) and same_bits(got_hist, ref_hist), dtype


@pytest.mark.parametrize("name", [pytest.param("triton", marks=cases.needs_triton),
                                  pytest.param("cuda", marks=pytest.mark.gpu)])
def test_device_step_outside_the_table_poisons_out_and_keeps_history(name):
    """Out of ``[0, N)`` a device index makes the compiled backends write NaN to every element of
    out (full blocks and the tail) and leave the history alone, in every storage dtype."""
    backend = cases.backend(name)
    for dtype in STORAGE:
        x, x_prev, hist, coefs = extrapolate_inputs((2, 1500), dtype, backend.device, generator("oob", dtype),
                                                    step=1, reads=2)
        for bad in (N_ROWS, -1):
            for step_dtype in (torch.int64, torch.int32):
                out, h = torch.zeros_like(x), hist.clone()
                step = torch.tensor(bad, device=backend.device, dtype=step_dtype)
                backend.module.extrapolate_step(x, x_prev, h, coefs, step, out, reads=2)
                assert torch.isnan(out).all() and same_bits(h, hist), (dtype, bad, step_dtype)
