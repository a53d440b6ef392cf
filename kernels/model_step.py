"""Fused model step: CFG combine, prediction -> x0, solver update and history write, one launch.

With ``i`` the step, ``n = numel(x)`` and the coefficients of row ``i`` of the plan's table:

    m   = m_u + G (m_c - m_u)        (cfg: model_out = [m_u; m_c], [2B, *S]; else m = model_out)
    D_i = PX x + PM m
    out = A x + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + B3 D_{i-3} + NOISE z;      hist[i % H] = D_i

Each program owns BLOCK consecutive elements: it reads x, the model output(s), the ``reads``
(0 to 3) past D and the noise once, and writes ``out`` and ``hist[i % H]`` once.  Every element of
``out`` depends on the same element of ``x``, so ``out`` may be ``x`` itself (not a shifted view:
:func:`ltc.ops.checks.separate`).  Only the last program masks its accesses; a device step outside
the table writes NaN to ``out`` and nothing to ``hist``.  ``model_out`` may be batch-strided (each
sample a contiguous block, samples further apart: a DiT's ``out[:, :4]``), read in place.  With
``finite`` (the "first bad step" word) a block holding a non-finite model output (f = 0) or stored
result (f = 1) does ``atomic_min(word, 2 i + f)``.  The specification is
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
                       step, step_ptr, out_ptr, noise_ptr, finite_ptr, n_seg, H, m_sample, m_batch_stride,
                       SEG: tl.constexpr, STEP_IN_MEMORY: tl.constexpr, READS: tl.constexpr, CFG: tl.constexpr,
                       HAS_NOISE: tl.constexpr, M_STRIDED: tl.constexpr, FINITE: tl.constexpr,
                       BLOCK: tl.constexpr):
    n, i, row, offs, mask, full, valid = step_start(step, step_ptr, coefs_ptr, coef_row_stride, rows, n_seg, SEG,
                                                    STEP_IN_MEMORY, BLOCK)
    if valid:
        if full:
            _model_step_block(x_ptr, m_ptr, hist_ptr, row, coef_col_stride, i, out_ptr, noise_ptr, finite_ptr, n, H,
                              offs, mask, m_sample, m_batch_stride, READS, CFG, HAS_NOISE, M_STRIDED, FINITE, False)
        else:
            _model_step_block(x_ptr, m_ptr, hist_ptr, row, coef_col_stride, i, out_ptr, noise_ptr, finite_ptr, n, H,
                              offs, mask, m_sample, m_batch_stride, READS, CFG, HAS_NOISE, M_STRIDED, FINITE, True)
    else:
        poison(out_ptr, offs, mask, BLOCK)
        if FINITE:  # out is NaN: what the step wrote is not finite (f = 1)
            tl.atomic_min(finite_ptr, (2 * i + 1).to(finite_ptr.dtype.element_ty), mask=tl.program_id(0) == 0)


@triton.jit
def _model_offsets(offs, n, m_sample, m_batch_stride, M_STRIDED: tl.constexpr):
    """Offsets of the unconditional half's elements in ``model_out`` and the shift to the
    conditional half: ``offs`` and ``n`` when contiguous; with a batch stride (each sample a
    contiguous block of ``m_sample`` elements, samples ``m_batch_stride`` apart) element
    ``e = b m_sample + k`` sits at ``b m_batch_stride + k``, and the conditional half
    ``B = n / m_sample`` samples later."""
    if M_STRIDED:
        m_offs = (offs // m_sample) * m_batch_stride + offs % m_sample
        shift = (n // m_sample) * m_batch_stride
    else:
        m_offs = offs
        shift = n
    return m_offs, shift


@triton.jit
def _finite(v):
    """Elementwise: whether ``v`` is finite (``v - v`` is 0 exactly then, NaN for NaN or +-Inf)."""
    return (v - v) == 0


@triton.jit
def _model_step_block(x_ptr, m_ptr, hist_ptr, row, coef_col_stride, i, out_ptr, noise_ptr, finite_ptr, n, H, offs,
                      mask, m_sample, m_batch_stride, READS: tl.constexpr, CFG: tl.constexpr,
                      HAS_NOISE: tl.constexpr, M_STRIDED: tl.constexpr, FINITE: tl.constexpr,
                      MASKED: tl.constexpr):
    """The step on one block of elements (``mask`` applied only when MASKED: the last block); with
    FINITE, ``word <- min(word, 2 i + f)`` when an element of the block is not finite (the model
    output: f = 0; else x_{i+1} or D_i as stored: f = 1)."""
    px = tl.load(row + COL_PX * coef_col_stride)
    pm = tl.load(row + COL_PM * coef_col_stride)
    a = tl.load(row + COL_A * coef_col_stride)
    b0 = tl.load(row + COL_B0 * coef_col_stride)
    ct = px.dtype
    x = load(x_ptr + offs, mask, MASKED).to(ct)
    m_offs, shift = _model_offsets(offs, n, m_sample, m_batch_stride, M_STRIDED)
    if CFG:
        g = tl.load(row + COL_G * coef_col_stride)
        m_u = load(m_ptr + m_offs, mask, MASKED).to(ct)
        m_c = load(m_ptr + shift + m_offs, mask, MASKED).to(ct)
        m = m_u + g * (m_c - m_u)
        if FINITE:
            m_ok = _finite(m_u) & _finite(m_c)
    else:
        m = load(m_ptr + m_offs, mask, MASKED).to(ct)
        if FINITE:
            m_ok = _finite(m)
    d = px * x + pm * m
    nxt = add_history(a * x + b0 * d, row, coef_col_stride, hist_ptr, i, n, H, offs, mask, COL_B1, COL_B2, COL_B3,
                      READS, MASKED)
    if HAS_NOISE:
        c = tl.load(row + COL_NOISE * coef_col_stride)
        z = load(noise_ptr + offs, mask, MASKED).to(ct)
        nxt = nxt + c * z
    d_stored = d.to(hist_ptr.dtype.element_ty)
    nxt_stored = nxt.to(out_ptr.dtype.element_ty)
    store(hist_ptr + history_slot(i, 0, H) * n + offs, d_stored, mask, MASKED)
    store(out_ptr + offs, nxt_stored, mask, MASKED)
    if FINITE:
        written_ok = _finite(d_stored.to(ct)) & _finite(nxt_stored.to(ct))
        model_bad = tl.max((~m_ok & mask).to(tl.int32), axis=0)
        bad = tl.max((~(m_ok & written_ok) & mask).to(tl.int32), axis=0)
        code = 2 * i + 1 - model_bad
        tl.atomic_min(finite_ptr, code.to(finite_ptr.dtype.element_ty), mask=bad != 0)


def model_step(x: torch.Tensor, model_out: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
               step, out: torch.Tensor, *, reads: int, cfg: bool,
               noise: torch.Tensor | None = None, finite: torch.Tensor | None = None) -> None:
    """One model step in one kernel launch (see the module docstring and
    :func:`ltc.ops.reference.model_step`).  ``x, out, noise: [B, *S]``, ``model_out: [B or 2B, *S]``
    (contiguous, or each sample a contiguous block: read with its batch stride), ``hist: [H, B, *S]``
    (H > reads), ``coefs: [N, NCOLS]``, ``finite``: the first-bad-step word or None; writes ``out``
    and ``hist[step % H]`` (and lowers ``finite`` on a non-finite step)."""
    a = checks.model_step(launch.RULES, x, model_out, hist, coefs, step, out, reads=reads, cfg=cfg, noise=noise,
                          finite=finite)
    dtypes = [t.dtype for t in (a.x, a.model_out, a.hist, a.out, a.noise) if t is not None]
    block, num_warps = launch.elementwise_config(*dtypes)
    launch_unchecked(a.x, a.model_out, a.hist, a.coefs, a.step, a.out, reads=a.reads, cfg=a.cfg, noise=a.noise,
                     finite=a.finite, block=block, num_warps=num_warps)


def unchecked(x, model_out, hist, coefs, step, out, *, reads, cfg, noise=None, finite=None) -> None:
    """:func:`model_step` without the argument checks, for arguments valid by construction (the
    walk's buffers, a model output of the right shape, dtype and device): only the layouts of the
    read-only ``model_out`` and ``noise`` are settled (batch-strided or copied; contiguous or copied)."""
    model_out = checks.batch_strided(model_out)
    if noise is not None:
        noise = checks.readable(noise)
    dtypes = (x.dtype, model_out.dtype, hist.dtype, out.dtype) + (() if noise is None else (noise.dtype,))
    block, num_warps = launch.elementwise_config(*dtypes)
    launch_unchecked(x, model_out, hist, coefs, step, out, reads=reads, cfg=cfg, noise=noise, finite=finite,
                     block=block, num_warps=num_warps)


def launch_unchecked(x, model_out, hist, coefs, step, out, *, reads, cfg, noise, block, num_warps,
                     finite=None) -> None:
    """The launch alone, for arguments :func:`model_step` has checked (and benchmarks of other
    ``block`` / ``num_warps``: BLOCK a power of two, a multiple of 32 * num_warps).  ``model_out``
    contiguous or :func:`ltc.ops.checks.batch_strided`."""
    n = x.numel()
    if n == 0:
        return
    in_memory = isinstance(step, torch.Tensor)
    sample = n // x.shape[0]
    stride = checks.batch_stride(model_out)
    with launch.on_device(x):
        n_seg, seg = launch.segment(n)
        _model_step_kernel[(launch.cdiv(n, block),)](
            x, model_out, hist, coefs, coefs.stride(0), coefs.stride(1), coefs.shape[0],
            0 if in_memory else step, step if in_memory else coefs, out, noise if noise is not None else x,
            finite if finite is not None else coefs, n_seg, hist.shape[0], sample, stride, SEG=seg,
            STEP_IN_MEMORY=in_memory, READS=reads, CFG=cfg, HAS_NOISE=noise is not None,
            M_STRIDED=stride != sample, FINITE=finite is not None, BLOCK=block, num_warps=num_warps)
