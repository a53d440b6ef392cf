"""Fused model step: CFG combine, prediction -> x0, solver update and history write, one launch.

With ``i`` the step, ``n = numel(x)`` and the coefficients of row ``i`` of the plan's table:

    m   = m_u + G (m_c - m_u)        (cfg: model_out = [m_u; m_c], [2B, *S]; else m = model_out)
    D_i = PX x + PM m
    out = A x + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + B3 D_{i-3} + NOISE z;      hist[i % H] = D_i

Each program owns BLOCK consecutive elements: it reads x, the model output(s), the ``reads``
(0 to 3) past D and the noise once, and writes ``out`` and ``hist[i % H]`` once.  Every element of
``out`` depends on the same element of ``x``, so ``out`` may be ``x`` itself (not a shifted view:
:func:`ltc.ops.checks.separate`).  Only the last program masks its accesses; a device step outside
the table writes NaN to ``out`` and nothing to ``hist``.  The specification is
:func:`ltc.ops.reference.model_step`; host conventions are in :mod:`ltc.kernels.launch`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ltc.ops import checks

from . import launch
from .launch import (COL_A, COL_B0, COL_B1, COL_B2, COL_B3, COL_G, COL_NOISE, COL_PM, COL_PX, add_history, history_slot,
                     load, poison, step_start, store)


@triton.jit(do_not_specialize=["step"])
def _model_step_kernel(x_ptr, m_ptr, hist_ptr, coefs_ptr, coef_row_stride, coef_col_stride, rows,
                       step, step_ptr, out_ptr, noise_ptr, n_seg, H,
                       SEG: tl.constexpr, STEP_IN_MEMORY: tl.constexpr, READS: tl.constexpr, CFG: tl.constexpr,
                       HAS_NOISE: tl.constexpr, BLOCK: tl.constexpr):
    n, i, row, offs, mask, full, valid = step_start(step, step_ptr, coefs_ptr, coef_row_stride, rows, n_seg, SEG,
                                                    STEP_IN_MEMORY, BLOCK)
    if valid:
        if full:
            _model_step_block(x_ptr, m_ptr, hist_ptr, row, coef_col_stride, i, out_ptr, noise_ptr, n, H, offs,
                              mask, READS, CFG, HAS_NOISE, False)
        else:
            _model_step_block(x_ptr, m_ptr, hist_ptr, row, coef_col_stride, i, out_ptr, noise_ptr, n, H, offs,
                              mask, READS, CFG, HAS_NOISE, True)
    else:
        poison(out_ptr, offs, mask, BLOCK)


@triton.jit
def _model_step_block(x_ptr, m_ptr, hist_ptr, row, coef_col_stride, i, out_ptr, noise_ptr, n, H, offs, mask,
                      READS: tl.constexpr, CFG: tl.constexpr, HAS_NOISE: tl.constexpr, MASKED: tl.constexpr):
    """The step on one block of elements (``mask`` applied only when MASKED: the last block)."""
    px = tl.load(row + COL_PX * coef_col_stride)
    pm = tl.load(row + COL_PM * coef_col_stride)
    a = tl.load(row + COL_A * coef_col_stride)
    b0 = tl.load(row + COL_B0 * coef_col_stride)
    ct = px.dtype
    x = load(x_ptr + offs, mask, MASKED).to(ct)
    if CFG:
        g = tl.load(row + COL_G * coef_col_stride)
        m_u = load(m_ptr + offs, mask, MASKED).to(ct)
        m_c = load(m_ptr + n + offs, mask, MASKED).to(ct)
        m = m_u + g * (m_c - m_u)
    else:
        m = load(m_ptr + offs, mask, MASKED).to(ct)
    d = px * x + pm * m
    nxt = add_history(a * x + b0 * d, row, coef_col_stride, hist_ptr, i, n, H, offs, mask, COL_B1, COL_B2, COL_B3,
                      READS, MASKED)
    if HAS_NOISE:
        c = tl.load(row + COL_NOISE * coef_col_stride)
        z = load(noise_ptr + offs, mask, MASKED).to(ct)
        nxt = nxt + c * z
    store(hist_ptr + history_slot(i, 0, H) * n + offs, d, mask, MASKED)
    store(out_ptr + offs, nxt, mask, MASKED)


def model_step(x: torch.Tensor, model_out: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
               step, out: torch.Tensor, *, reads: int, cfg: bool,
               noise: torch.Tensor | None = None) -> None:
    """One model step in one kernel launch (see the module docstring and
    :func:`ltc.ops.reference.model_step`).  ``x, out, noise: [B, *S]``, ``model_out: [B or 2B, *S]``,
    ``hist: [H, B, *S]`` (H > reads), ``coefs: [N, NCOLS]``; writes ``out`` and ``hist[step % H]``."""
    x, model_out, hist, coefs, step, out, reads, cfg, noise = checks.model_step(
        launch.RULES, x, model_out, hist, coefs, step, out, reads=reads, cfg=cfg, noise=noise)

    dtypes = [t.dtype for t in (x, model_out, hist, out, noise) if t is not None]
    block, num_warps = launch.elementwise_config(*dtypes)
    launch_unchecked(x, model_out, hist, coefs, step, out, reads=reads, cfg=cfg, noise=noise,
                     block=block, num_warps=num_warps)


def launch_unchecked(x, model_out, hist, coefs, step, out, *, reads, cfg, noise, block, num_warps) -> None:
    """The launch alone, for arguments :func:`model_step` has checked (and benchmarks of other
    ``block`` / ``num_warps``: BLOCK a power of two, a multiple of 32 * num_warps)."""
    n = x.numel()
    if n == 0:
        return
    in_memory = isinstance(step, torch.Tensor)
    with launch.on_device(x):
        n_seg, seg = launch.segment(n)
        _model_step_kernel[(launch.cdiv(n, block),)](
            x, model_out, hist, coefs, coefs.stride(0), coefs.stride(1), coefs.shape[0],
            0 if in_memory else step, step if in_memory else coefs, out, noise if noise is not None else x,
            n_seg, hist.shape[0], SEG=seg,
            STEP_IN_MEMORY=in_memory, READS=reads, CFG=cfg, HAS_NOISE=noise is not None,
            BLOCK=block, num_warps=num_warps)
