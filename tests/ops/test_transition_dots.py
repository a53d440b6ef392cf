"""``transition_dots`` on every backend (reference, triton, cuda) against the specification: per
sample ``[<d, r>, <d, d>]``, ``d = x - x_prev``, ``r = x_target - x``, in float64 (tests/ops/cases.py).
Every shape x storage dtype, with non-contiguous inputs combined pairwise; determinism, the Triton
kernel's tiling, unaligned storage and the argument checks.
"""
from __future__ import annotations

import importlib

import pytest
import torch

import cases
from cases import (DOTS_SHAPES, STORAGE, TRITON_DEVICE, generator, late, needs_triton, random, run_transition_dots,
                   same_bits, strided)

MATRIX = cases.pairwise({"shape": DOTS_SHAPES, "dtype": list(STORAGE), "strided": [False, True]})


@pytest.mark.parametrize("case", cases.params(MATRIX))
def test_transition_dots_matches_the_specification(backend, case):
    gen = generator("transition_dots", case)
    inputs = [random(case["shape"], case["dtype"], backend.device, gen) for _ in range(3)]
    if case["strided"]:
        inputs = [strided(t) for t in inputs]
    run_transition_dots(backend.module, *inputs)


def test_transition_dots_is_deterministic(backend):
    """Rows of several chunks (two passes in the kernels): the same bits on every call."""
    gen = generator("deterministic")
    inputs = [random((2, 40001), torch.float32, backend.device, gen) for _ in range(3)]
    first = run_transition_dots(backend.module, *inputs)
    for _ in range(2 if backend.device == "cuda" else 1):
        assert same_bits(backend.module.transition_dots(*inputs), first)


def test_transition_dots_on_unaligned_storage(backend):
    for dtype in STORAGE:
        gen = generator("late", dtype)
        run_transition_dots(backend.module, *(late(random((2, 4, 8, 8), dtype, backend.device, gen))
                                              for _ in range(3)))


@needs_triton
def test_triton_transition_dots_with_many_tiles_and_partials(monkeypatch):
    """Small tiling constants: several tiles per chunk, and a final sum that loops over the partials."""
    module = importlib.import_module("ltc.kernels.transition_dots")  # ltc.kernels.transition_dots is the function
    monkeypatch.setattr(module, "TARGET_CHUNKS", 3)
    monkeypatch.setattr(module, "FINISH_BLOCK", 2)
    shape = (2, 9000)
    assert module.chunking(shape[1], 1024) == (4, 3)
    gen = generator("tiles")
    run_transition_dots(cases.backend("triton").module, *(random(shape, torch.float32, TRITON_DEVICE, gen)
                                                          for _ in range(3)))


@needs_triton
def test_triton_transition_dots_gives_one_large_sample_a_thousand_programs():
    """Batch 1 at 4M and 16M elements: 1024 programs in pass 1 (fp32 and bf16 tiles), not 256;
    the chunking depends on the row length and the tile only (deterministic)."""
    module = importlib.import_module("ltc.kernels.transition_dots")
    for block in (1024, 2048):  # fp32, bf16 (launch.elementwise_config)
        for n in (1 << 22, 1 << 24):
            tiles, chunks = module.chunking(n, block)
            assert chunks == 1024 and tiles * block * chunks == n, (block, n, tiles, chunks)
    assert module.chunking(65537, 1024) == (1, 65)


def test_transition_dots_rejects_bad_arguments(checked):
    x = random((2, 5), torch.float32, "cpu", generator("bad dots"))
    bad = [
        ((x, x[:1], x), ValueError, "x_prev has shape"),
        ((x, x, x.T), ValueError, "x_target has shape"),
        ((x, x, x.long()), TypeError, "x_target must have a dtype"),
        ((x.tolist(), x, x), TypeError, "x must be a torch.Tensor"),
        ((x[0, 0], x[0, 0], x[0, 0]), ValueError, r"x must be \[B, \*S\]"),
    ]
    if checked.__name__ == "ltc.ops.cuda":
        bad += [((x, x, x.half()), TypeError, "x_target has dtype torch.float16 but x has torch.float32"),
                ((x, x, x), ValueError, "needs CUDA tensors")]
    for args, error, match in bad:
        with pytest.raises(error, match=match):
            checked.transition_dots(*args)
