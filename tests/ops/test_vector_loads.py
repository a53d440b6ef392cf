"""The Triton step kernels move their data in 16-byte vectors (``ld.global.v4`` / ``st.global.v4``)
also when ``numel`` is not a multiple of 16, checked on the CPU: the kernels are compiled to PTX
for sm_90 with the specialisation a real launch gives them.

A subprocess (without ``TRITON_INTERPRET``, which the other tests set) calls the public ops on CPU
tensors with the device check lifted, catches the launch (``kernel.run``) and compiles exactly
those arguments -- Triton's own binder decides which are divisible by 16 or constant -- with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``.  Each stream (x, both CFG
halves, noise, each history slot read; ``out`` and the slot written) is one 16-byte vector per
VECTORS_PER_THREAD in the unmasked blocks and again in the masked tail block, since with
``numel = 1000`` every segment still starts on 16 bytes.  Skipped, with the reason, where the
installed triton cannot compile for CUDA without a GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cases import needs_triton

CANNOT_COMPILE = 77  # the subprocess's exit status when this triton cannot compile for sm_90 here

SCRIPT = r"""
import importlib, json, sys
import torch
try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(%(cannot)d)
from ltc.ops.checks import Rules
from ltc.ops.contract import HISTORY_SLOTS, NCOLS
launch = importlib.import_module("ltc.kernels.launch")
launch.RULES = Rules("triton", one_dtype=False, device=lambda first, device: None)  # CPU tensors, compiled
ms = importlib.import_module("ltc.kernels.model_step")
es = importlib.import_module("ltc.kernels.extrapolate_step")


def vectors(kernel, call):
    caught = {}
    kernel.run = lambda *args, grid, warmup, **kwargs: caught.update(args=args, kwargs=kwargs)
    call()
    args, kwargs = caught["args"], caught["kwargs"]
    try:  # the launch's own specialisation (internals of triton.runtime.jit)
        bound, specialization, options = create_function_from_signature(kernel.signature, kernel.params,
                                                                         backend)(*args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    except (AttributeError, TypeError, ValueError) as exc:
        print(f"this triton specialises launches differently: {type(exc).__name__}: {exc}")
        sys.exit(%(cannot)d)
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}")
        sys.exit(%(cannot)d)
    ptx = compiled.asm["ptx"]
    return [ptx.count("ld.global.v4"), ptx.count("st.global.v4")]


counts = []
for dtype in (torch.float32, torch.bfloat16):
    for n in (1000, 1023):
        for cfg in (False, True):
            for reads in (0, 1, 2, 3):
                x = torch.randn(1, n, dtype=dtype)
                m = torch.randn(2 if cfg else 1, n, dtype=dtype)
                hist, coefs = torch.randn(HISTORY_SLOTS, 1, n, dtype=dtype), torch.randn(7, NCOLS)
                out, z = torch.empty_like(x), torch.randn_like(x)
                counts.append(dict(op="model_step", dtype=str(dtype), n=n, cfg=cfg, reads=reads,
                                   got=vectors(ms._model_step_kernel, lambda: ms.model_step(
                                       x, m, hist, coefs, 2, out, reads=reads, cfg=cfg, noise=z))))
                if not cfg and reads <= 2:
                    counts.append(dict(op="extrapolate_step", dtype=str(dtype), n=n, cfg=False, reads=reads,
                                       got=vectors(es._extrapolate_step_kernel, lambda: es.extrapolate_step(
                                           x, z, hist, coefs, 2, out, reads=reads))))
print("COUNTS " + json.dumps(counts))
""" % {"cannot": CANNOT_COMPILE}


@pytest.fixture(scope="module")
def counts():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, env=env)
    if result.returncode == CANNOT_COMPILE:
        pytest.skip(f"this triton cannot compile the launch for CUDA sm_90 here: {result.stdout.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("COUNTS "))
    return json.loads(line[len("COUNTS "):])


def expected_streams(case) -> tuple[int, int]:
    """``(streams read, streams written)`` of a step: x, the model output (two CFG halves) and the
    noise, or x and x_prev; each history slot read; ``out`` and the slot written."""
    read = (1 + (2 if case["cfg"] else 1) + 1 if case["op"] == "model_step" else 2) + case["reads"]
    return read, 2


@needs_triton
def test_every_stream_is_vectorized_when_numel_is_not_a_multiple_of_16(counts):
    """numel = 1000 (fp32, bf16; CFG on and off; reads 0..3, 0..2 extrapolated): every load and store of the data is a
    16-byte vector, in the unmasked blocks and in the tail block: two vectors per thread and stream
    in each, and the NaN stores of an out-of-table step."""
    for case in counts:
        if case["n"] != 1000:
            continue
        read, written = expected_streams(case)
        loads, stores = case["got"]
        assert loads == 2 * 2 * read, case
        assert stores >= 2 * 2 * written, case


@needs_triton
def test_aligned_streams_are_vectorized_when_numel_is_odd(counts):
    """numel = 1023: the CFG halves and history slots start off 16 bytes (scalar, as in the CUDA
    extension), but x, the unconditional half, the noise and ``out`` start aligned: their full
    blocks still move 16-byte vectors."""
    for case in counts:
        if case["n"] != 1023:
            continue
        loads, stores = case["got"]
        aligned_reads = 3 if case["op"] == "model_step" else 2  # x, m_u, noise / x, x_prev
        assert loads >= 2 * aligned_reads and stores >= 2, case
