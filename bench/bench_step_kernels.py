"""pytest-benchmark microbenchmarks of one CFG + DPM-Solver++(2M) model step (the case of
``bench/step_kernels.py``, whose JSON sweep is the result of record).

    pytest bench/bench_step_kernels.py --benchmark-only

On the CPU only the eager reference chain runs (small sizes, so it cannot rot); with a CUDA device
also the fused Triton kernel and ``torch.compile`` of the reference chain, at 64K..16M elements.
Each timed call ends with a device synchronisation, so these are wall times of one step.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_kernels import DTYPES, StepBuffers, implementations, plan_coefficients  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SIZES = [1 << 16, 1 << 20, 1 << 22, 1 << 24] if CUDA else [1 << 12, 1 << 16]
IMPLS = ["eager",
         pytest.param("fused", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device")),
         pytest.param("compile", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]


def synchronized(fn, buffers):
    def call():
        fn(buffers)
        if CUDA:
            torch.cuda.synchronize()
    return call


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("numel", SIZES)
def test_cfg_dpmpp_2m_model_step(benchmark, impl, dtype, numel):
    buffers = StepBuffers(numel, DTYPES[dtype], DEVICE, seed=0)
    fn = implementations(plan_coefficients(DEVICE), [impl])[impl]
    call = synchronized(fn, buffers)
    call()  # compile / warm up outside the timing
    benchmark.extra_info.update(impl=impl, dtype=dtype, numel=numel, device=DEVICE)
    benchmark(call)
    assert torch.isfinite(buffers.out).all()
