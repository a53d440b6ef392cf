"""What every step kernel shares: the backend's :class:`~ltc.ops.checks.Rules` for the shared
host-side argument checks (:mod:`ltc.ops.checks`, one function per op), launch sizes, and on the
device the step index and the history slots.

Conventions of the wrappers in :mod:`ltc.kernels` (they extend :mod:`ltc.ops.reference`, whose
semantics they implement exactly):

* Storage dtypes fp16, bf16, fp32, fp64 (each tensor may have its own); arithmetic in the dtype
  of ``coefs`` (float32, or float64 for float64 storage), results rounded once when stored.
* Read-only inputs that are not contiguous are copied once with ``.contiguous()`` (one extra
  read and write of that tensor); the outputs ``out`` and ``hist`` are the caller's static
  buffers and must be contiguous (``ValueError`` otherwise).
* ``step`` is a Python int in ``[0, N)`` (checked) or a 0-d integer tensor on the device of the
  data (read inside the kernel, so a captured CUDA graph replays any step); a device index outside
  ``[0, N)`` writes NaN to every element of ``out`` and leaves ``hist`` untouched (as the CUDA
  extension does), without reading the table.
* ``hist`` needs more slots than the step reads (``H > reads``) so that the slot written is
  never a slot read; ``out`` and ``hist`` share no memory with each other or with an input, but
  ``out`` may be ``x`` (or ``x_prev``) itself (:func:`ltc.ops.checks.separate`).
* Vector accesses: every block but the last runs unmasked, and ``numel`` enters the kernel as
  ``n_seg * SEG`` with ``SEG = gcd(numel, 16)`` a compile-time constant (:func:`segment`), so
  the compiler can prove the alignment of the CFG halves and the history slots and the constancy
  of the tail mask; 16-byte vectors wherever the data allow them, whatever ``numel % 16``.
* CPU tensors run only in Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is
  imported); elsewhere all tensors must be on one CUDA device, which need not be the current
  one (:func:`on_device`).
"""
from __future__ import annotations

import contextlib
import functools
import math

import torch
import triton
import triton.language as tl

from ltc.ops.checks import Rules
from ltc.ops.contract import Col

VECTOR_BYTES = 16     # one 128-bit load/store per thread and access
VECTORS_PER_THREAD = 2
NUM_WARPS = 4


def interpreted(kernel) -> bool:
    """Whether ``kernel`` (a ``@triton.jit`` function) runs in the CPU interpreter."""
    return type(kernel).__name__ == "InterpretedFunction"


@functools.lru_cache(maxsize=None)
def elementwise_config(*dtypes: torch.dtype) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` of a memory-bound elementwise kernel: every thread moves
    VECTORS_PER_THREAD 16-byte vectors of the narrowest stream (fp32: BLOCK = 1024, fp16/bf16: 2048
    with 4 warps), fixed per dtype so a launch captured in a CUDA graph needs no autotuning."""
    narrowest = min(d.itemsize for d in dtypes)
    per_thread = VECTORS_PER_THREAD * VECTOR_BYTES // narrowest
    return per_thread * 32 * NUM_WARPS, NUM_WARPS


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` on the host (``triton.cdiv`` is a jit function, slower to call)."""
    return -(-a // b)


def segment(n: int) -> tuple[int, int]:
    """``(n // seg, seg)`` with ``seg = gcd(n, 16)``: the kernels rebuild ``n = n_seg * SEG`` with
    ``SEG`` a compile-time constant, so the compiler knows n's largest power-of-two divisor (up to
    16) and with it the alignment of the segments at multiples of n (the CFG halves of
    ``model_out``, the history slots) and the constancy of the tail mask.  Triton's launch only
    specialises an integer divisible by 16; without this, any other n makes every access scalar."""
    seg = math.gcd(n, 16)
    return n // seg, seg


@triton.jit
def step_index(step, step_ptr, STEP_IN_MEMORY: tl.constexpr):
    """The step i as int64: loaded from ``step_ptr`` (graph replay) or the scalar argument."""
    if STEP_IN_MEMORY:
        i = tl.load(step_ptr).to(tl.int64)
    else:
        i = step.to(tl.int64)
    return i


@triton.jit
def history_slot(i, back, H):
    """Slot of D_{i - back} in an H-slot ring (i >= 0, 0 <= back < H): ``(i - back) mod H``."""
    return (i + 2 * H - back) % H


# The plan table's columns (ltc.ops.contract.Col) as Triton compile-time constants.
COL_PX, COL_PM, COL_A, COL_B0, COL_B1, COL_B2, COL_B3, COL_NOISE, COL_G = (
    tl.constexpr(int(c)) for c in (Col.PX, Col.PM, Col.A, Col.B0, Col.B1, Col.B2, Col.B3, Col.NOISE, Col.GUIDANCE))
COL_EX, COL_EXP, COL_EH1, COL_EH2, COL_IN, COL_IC = (
    tl.constexpr(int(c)) for c in (Col.EX, Col.EXP, Col.EH1, Col.EH2, Col.IN, Col.IC))
NO_COL = tl.constexpr(-1)  # the column of a past estimate an op never reads (extrapolate_step: D_{i-3})


@triton.jit
def load(ptrs, mask, MASKED: tl.constexpr):
    """``tl.load(ptrs)``, under ``mask`` only in the masked (tail) block."""
    if MASKED:
        v = tl.load(ptrs, mask=mask)
    else:
        v = tl.load(ptrs)
    return v


@triton.jit
def store(ptrs, value, mask, MASKED: tl.constexpr):
    """``tl.store(ptrs, value)`` rounded to the pointee dtype, under ``mask`` only when MASKED."""
    if MASKED:
        tl.store(ptrs, value.to(ptrs.dtype.element_ty), mask=mask)
    else:
        tl.store(ptrs, value.to(ptrs.dtype.element_ty))


@triton.jit
def add_history(nxt, row, coef_col_stride, hist_ptr, i, n, H, offs, mask,
                COL1: tl.constexpr, COL2: tl.constexpr, COL3: tl.constexpr, READS: tl.constexpr,
                MASKED: tl.constexpr):
    """``nxt + c1 D_{i-1} + c2 D_{i-2} + c3 D_{i-3}``, the terms in that order, for the ``READS``
    (0 to 3) past clean estimates a step reads, with ``c1, c2, c3`` from columns COL1, COL2, COL3
    of the step's table row (a column past READS is never read: :data:`NO_COL`), in the dtype of
    ``nxt``."""
    if READS >= 1:
        nxt = _add_past(nxt, row, coef_col_stride, hist_ptr, i, n, H, offs, mask, 1, COL1, MASKED)
    if READS >= 2:
        nxt = _add_past(nxt, row, coef_col_stride, hist_ptr, i, n, H, offs, mask, 2, COL2, MASKED)
    if READS >= 3:
        nxt = _add_past(nxt, row, coef_col_stride, hist_ptr, i, n, H, offs, mask, 3, COL3, MASKED)
    return nxt


@triton.jit
def _add_past(nxt, row, coef_col_stride, hist_ptr, i, n, H, offs, mask, BACK: tl.constexpr, COL: tl.constexpr,
              MASKED: tl.constexpr):
    """``nxt + c D_{i - BACK}`` with ``c`` from column COL of the step's row."""
    c = tl.load(row + COL * coef_col_stride)
    h = load(hist_ptr + history_slot(i, BACK, H) * n + offs, mask, MASKED).to(nxt.dtype)
    return nxt + c * h


@triton.jit
def block_offsets(n, BLOCK: tl.constexpr):
    """This program's element offsets (int64, so any size is addressable), their mask, and whether
    the block lies wholly inside ``[0, n)`` (then it runs unmasked: only the last block is masked)."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < n, start + BLOCK <= n


@triton.jit
def in_table(i, rows):
    """Whether step i is a row of the table (a device index is the caller's; outside, the step
    writes NaN to ``out`` and leaves ``hist`` alone, as the CUDA extension does)."""
    return (i >= 0) & (i < rows)


@triton.jit
def step_start(step, step_ptr, coefs_ptr, coef_row_stride, rows, n_seg, SEG: tl.constexpr,
               STEP_IN_MEMORY: tl.constexpr, BLOCK: tl.constexpr):
    """``(n, i, row, offs, mask, full, valid)``: numel ``n = n_seg * SEG`` (its power-of-two divisor
    SEG known at compile time, :func:`segment`), the step, a pointer to its table row, this
    program's offsets and mask (:func:`block_offsets`), whether the block is full, and whether i
    is a row of the table (:func:`in_table`)."""
    n = n_seg * SEG
    i = step_index(step, step_ptr, STEP_IN_MEMORY)
    offs, mask, full = block_offsets(n, BLOCK)
    return n, i, coefs_ptr + i * coef_row_stride, offs, mask, full, in_table(i, rows)


@triton.jit
def poison(out_ptr, offs, mask, BLOCK: tl.constexpr):
    """``out = NaN`` on this block: the result of a device step index outside the table."""
    tl.store(out_ptr + offs, tl.full([BLOCK], float("nan"), tl.float32).to(out_ptr.dtype.element_ty), mask=mask)


def on_device(x: torch.Tensor):
    """The context a launch for ``x`` runs in: Triton launches on the *current* CUDA device, so a
    tensor on another device (``cuda:1`` while ``cuda:0`` is current) gets a device guard; CPU
    tensors and tensors on the current device need none."""
    device = x.device
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device.index)
    return contextlib.nullcontext()


def _usable(first: str, device: torch.device) -> None:
    """Triton runs CUDA tensors, and CPU tensors in its interpreter only."""
    if device.type == "cpu" and not interpreted(block_offsets):
        raise ValueError("the triton backend runs CPU tensors only in Triton's interpreter: set "
                         "TRITON_INTERPRET=1 before triton is imported, or use CUDA tensors")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"the triton backend supports CUDA tensors (or CPU in the interpreter), got {device}")


RULES = Rules("triton", one_dtype=False, device=_usable)  # each tensor its own storage dtype
