"""Per-sample ``[<d, r>, <d, d>]`` with ``d = x - x_prev``, ``r = x_target - x``: one pass over
the inputs, deterministic.

Each sample (row ``b`` of ``[B, L]``, ``L = numel / B``) is cut into chunks of ``CHUNK = TILES *
BLOCK`` elements.  Pass 1 (grid ``[chunks, B]``): every program accumulates ``d*r`` and ``d*d``
elementwise over its chunk in the accumulation dtype (float32; float64 for float64 ``x``), sums
its accumulators with a fixed tree and writes the pair to ``partials[b, chunk]``.  Pass 2 (grid
``[B]``) sums the partials of a row in a fixed order.  No atomics: for given shapes and dtypes
the result is the same bits on every run.  The specification is
:func:`ltc.ops.reference.transition_dots`; host conventions are in :mod:`ltc.kernels.launch`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ltc.ops import checks
from ltc.ops.contract import compute_dtype

from . import launch

TARGET_CHUNKS = 1024  # chunks per sample before a chunk grows beyond one tile (4M elements: 1024 programs)
MAX_TILES = 16
FINISH_BLOCK = 1024
FINISH_WARPS = 4
MAX_BATCH = 65535     # grid axis 1 of pass 1


@triton.jit
def _partial_dots_kernel(x_ptr, x_prev_ptr, x_target_ptr, partials_ptr, L, chunks,
                         ACC: tl.constexpr, TILES: tl.constexpr, BLOCK: tl.constexpr):
    chunk = tl.program_id(0)
    b = tl.program_id(1)
    row = b.to(tl.int64) * L
    start = chunk.to(tl.int64) * (TILES * BLOCK)
    acc_dr = tl.zeros([BLOCK], dtype=ACC)
    acc_dd = tl.zeros([BLOCK], dtype=ACC)
    for t in range(TILES):
        offs = start + t * BLOCK + tl.arange(0, BLOCK)
        mask = offs < L
        x = tl.load(x_ptr + row + offs, mask=mask, other=0.0).to(ACC)
        x_prev = tl.load(x_prev_ptr + row + offs, mask=mask, other=0.0).to(ACC)
        x_target = tl.load(x_target_ptr + row + offs, mask=mask, other=0.0).to(ACC)
        d = x - x_prev
        r = x_target - x
        acc_dr += d * r
        acc_dd += d * d
    out = partials_ptr + (b.to(tl.int64) * chunks + chunk) * 2
    tl.store(out, tl.sum(acc_dr, axis=0))
    tl.store(out + 1, tl.sum(acc_dd, axis=0))


@triton.jit
def _finish_dots_kernel(partials_ptr, out_ptr, chunks, ACC: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    row = partials_ptr + b.to(tl.int64) * chunks * 2
    acc_dr = tl.zeros([BLOCK], dtype=ACC)
    acc_dd = tl.zeros([BLOCK], dtype=ACC)
    for start in range(0, chunks, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        mask = idx < chunks
        acc_dr += tl.load(row + idx * 2, mask=mask, other=0.0)
        acc_dd += tl.load(row + idx * 2 + 1, mask=mask, other=0.0)
    tl.store(out_ptr + b * 2, tl.sum(acc_dr, axis=0))
    tl.store(out_ptr + b * 2 + 1, tl.sum(acc_dd, axis=0))


def chunking(L: int, block: int) -> tuple[int, int]:
    """``(TILES, chunks)`` of a row of ``L`` elements: a power-of-two number of BLOCK tiles per
    chunk, growing with L so that large rows do not need huge grids."""
    tiles = min(MAX_TILES, triton.next_power_of_2(max(1, launch.cdiv(L, block * TARGET_CHUNKS))))
    return tiles, launch.cdiv(L, tiles * block)


def transition_dots(x: torch.Tensor, x_prev: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
    """``[B, 2]`` = per-sample ``[<d, r>, <d, d>]`` (float32, float64 for float64 ``x``), see the
    module docstring and :func:`ltc.ops.reference.transition_dots`.  Inputs ``[B, *S]``."""
    x, x_prev, x_target = checks.transition_dots(launch.RULES, x, x_prev, x_target)
    if x.shape[0] > MAX_BATCH:
        raise ValueError(f"transition_dots supports at most {MAX_BATCH} samples, got B = {x.shape[0]}")
    return _launch(x, x_prev, x_target)


def unchecked(x: torch.Tensor, x_prev: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
    """:func:`transition_dots` without the argument checks (valid arguments, at most MAX_BATCH
    samples); non-contiguous inputs are still copied."""
    return _launch(checks.readable(x), checks.readable(x_prev), checks.readable(x_target))


def _launch(x: torch.Tensor, x_prev: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
    acc = compute_dtype(x.dtype)
    B = x.shape[0]
    L = x.numel() // B if B else 0
    if L == 0:
        return torch.zeros((B, 2), dtype=acc, device=x.device)
    block, num_warps = launch.elementwise_config(x.dtype, x_prev.dtype, x_target.dtype)
    tiles, chunks = chunking(L, block)
    partials = torch.empty((B, chunks, 2), dtype=acc, device=x.device)
    out = torch.empty((B, 2), dtype=acc, device=x.device)
    tl_acc = tl.float64 if acc == torch.float64 else tl.float32
    finish = min(FINISH_BLOCK, triton.next_power_of_2(chunks))
    with launch.on_device(x):
        _partial_dots_kernel[(chunks, B)](x, x_prev, x_target, partials, L, chunks,
                                          ACC=tl_acc, TILES=tiles, BLOCK=block, num_warps=num_warps)
        _finish_dots_kernel[(B,)](partials, out, chunks, ACC=tl_acc, BLOCK=finish, num_warps=FINISH_WARPS)
    return out

