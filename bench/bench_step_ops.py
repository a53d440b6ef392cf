"""pytest-benchmark microbenchmarks of one call of each step op, one test per op (the cases of
``bench/step_ops.py``, whose JSON sweep is the result of record): a CFG + DPM-Solver++(2M) model
step, an extrapolated step reading two past estimates, and the transition dots.

    pytest bench/bench_step_ops.py --benchmark-only
    pytest bench/bench_step_ops.py --benchmark-only -k model_step

On the CPU only the eager reference runs (small sizes, so it cannot rot); with a CUDA device also
the fused Triton kernel and ``torch.compile`` of the reference, at 64K..16M elements.  Each timed
call ends with a device synchronisation, so these are wall times of one call.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_ops import DTYPES, StepBuffers, implementations, plan_coefficients  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SIZES = [1 << 16, 1 << 20, 1 << 22, 1 << 24] if CUDA else [1 << 12, 1 << 16]
IMPLS = ["eager",
         pytest.param("fused", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device")),
         pytest.param("compile", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]


def cases(test):
    """The original test's parameters: implementation x dtype x size."""
    for parametrize in (pytest.mark.parametrize("impl", IMPLS), pytest.mark.parametrize("dtype", list(DTYPES)),
                        pytest.mark.parametrize("numel", SIZES)):
        test = parametrize(test)
    return test


def run(benchmark, op, impl, dtype, numel):
    buffers = StepBuffers(numel, DTYPES[dtype], DEVICE, seed=0, op=op)
    fn = implementations(plan_coefficients(DEVICE), [impl], op=op)[impl]

    def call():
        result = fn(buffers)
        if CUDA:
            torch.cuda.synchronize()
        return result

    call()  # compile / warm up outside the timing
    benchmark.extra_info.update(op=op, impl=impl, dtype=dtype, numel=numel, device=DEVICE)
    assert torch.isfinite(benchmark(call)).all()


@cases
def test_model_step(benchmark, impl, dtype, numel):
    run(benchmark, "model_step", impl, dtype, numel)


@cases
def test_extrapolate_step(benchmark, impl, dtype, numel):
    run(benchmark, "extrapolate_step", impl, dtype, numel)


@cases
def test_transition_dots(benchmark, impl, dtype, numel):
    run(benchmark, "transition_dots", impl, dtype, numel)
