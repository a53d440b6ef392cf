"""Fused extrapolated step (no model call) and the clean estimate it implies, one launch.

With ``i`` the step and the coefficients of row ``i`` of the plan's table:

    out = EX x + EXP x_prev + EH1 D_{i-1} + EH2 D_{i-2};      hist[i % H] = IN out + IC x

(``out`` enters the history unrounded, as in the reference.)  Each program owns BLOCK
consecutive elements, reads x, x_prev and the ``reads`` (0 to 2) past D once and writes ``out`` and
``hist[i % H]`` once.  Every element of ``out`` depends on the same element of ``x_prev``, so
``out`` may be ``x_prev`` itself (the executor's double buffer does; not a shifted view).  Only
the last program masks its accesses; a device step outside the table writes NaN to ``out`` and
nothing to ``hist``.  The specification is
:func:`ltc.ops.reference.extrapolate_step`; host conventions are in :mod:`ltc.kernels.launch`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ltc.ops import checks

from . import launch
from .launch import (COL_EH1, COL_EH2, COL_EX, COL_EXP, COL_IC, COL_IN, NO_COL, add_history, history_slot, load,
                     poison, step_start, store)


@triton.jit(do_not_specialize=["step"])
def _extrapolate_step_kernel(x_ptr, x_prev_ptr, hist_ptr, coefs_ptr, coef_row_stride, coef_col_stride, rows,
                             step, step_ptr, out_ptr, n_seg, H,
                             SEG: tl.constexpr, STEP_IN_MEMORY: tl.constexpr, READS: tl.constexpr,
                             BLOCK: tl.constexpr):
    n, i, row, offs, mask, full, valid = step_start(step, step_ptr, coefs_ptr, coef_row_stride, rows, n_seg, SEG,
                                                    STEP_IN_MEMORY, BLOCK)
    if valid:
        if full:
            _extrapolate_step_block(x_ptr, x_prev_ptr, hist_ptr, row, coef_col_stride, i, out_ptr, n, H, offs, mask,
                                    READS, False)
        else:
            _extrapolate_step_block(x_ptr, x_prev_ptr, hist_ptr, row, coef_col_stride, i, out_ptr, n, H, offs, mask,
                                    READS, True)
    else:
        poison(out_ptr, offs, mask, BLOCK)


@triton.jit
def _extrapolate_step_block(x_ptr, x_prev_ptr, hist_ptr, row, coef_col_stride, i, out_ptr, n, H, offs, mask,
                            READS: tl.constexpr, MASKED: tl.constexpr):
    """The step on one block of elements (``mask`` applied only when MASKED: the last block)."""
    c_x = tl.load(row + COL_EX * coef_col_stride)
    c_prev = tl.load(row + COL_EXP * coef_col_stride)
    x = load(x_ptr + offs, mask, MASKED).to(c_x.dtype)
    x_prev = load(x_prev_ptr + offs, mask, MASKED).to(c_x.dtype)
    nxt = add_history(c_x * x + c_prev * x_prev, row, coef_col_stride, hist_ptr, i, n, H, offs, mask,
                      COL_EH1, COL_EH2, NO_COL, READS, MASKED)
    # the clean estimate the step implies: D_i = IN x_{i+1} + IC x_i
    d = tl.load(row + COL_IN * coef_col_stride) * nxt + tl.load(row + COL_IC * coef_col_stride) * x
    store(hist_ptr + history_slot(i, 0, H) * n + offs, d, mask, MASKED)
    store(out_ptr + offs, nxt, mask, MASKED)


def extrapolate_step(x: torch.Tensor, x_prev: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
                     step, out: torch.Tensor, *, reads: int) -> None:
    """One extrapolated step in one kernel launch (see the module docstring and
    :func:`ltc.ops.reference.extrapolate_step`).  ``x, x_prev, out: [B, *S]``, ``hist: [H, B, *S]``
    (H > reads), ``coefs: [N, NCOLS]``; writes ``out`` and ``hist[step % H]``."""
    a = checks.extrapolate_step(launch.RULES, x, x_prev, hist, coefs, step, out, reads=reads)
    _launch(a.x, a.x_prev, a.hist, a.coefs, a.step, a.out, reads=a.reads)


def unchecked(x, x_prev, hist, coefs, step, out, *, reads) -> None:
    """:func:`extrapolate_step` without the argument checks, for arguments valid by construction
    (the walk's buffers); non-contiguous read-only inputs are still copied."""
    _launch(checks.readable(x), checks.readable(x_prev), hist, coefs, step, out, reads=reads)


def _launch(x, x_prev, hist, coefs, step, out, *, reads) -> None:
    n = x.numel()
    if n == 0:
        return
    in_memory = isinstance(step, torch.Tensor)
    block, num_warps = launch.elementwise_config(x.dtype, x_prev.dtype, hist.dtype, out.dtype)
    with launch.on_device(x):
        n_seg, seg = launch.segment(n)
        _extrapolate_step_kernel[(launch.cdiv(n, block),)](
            x, x_prev, hist, coefs, coefs.stride(0), coefs.stride(1), coefs.shape[0],
            0 if in_memory else step, step if in_memory else coefs, out, n_seg, hist.shape[0], SEG=seg,
            STEP_IN_MEMORY=in_memory, READS=reads, BLOCK=block, num_warps=num_warps)
