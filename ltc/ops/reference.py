"""Torch reference of the fused step operations: the specification every kernel is tested against.

Shapes: ``x``, ``x_prev``, ``out``, ``noise``: ``[B, *S]`` in the storage dtype (fp32, fp16,
bf16 or fp64); ``model_out``: ``[B, *S]``, or ``[2B, *S]`` with classifier-free guidance
(unconditional half first); ``hist``: ``[H, B, *S]`` storage dtype, the clean estimate D_j of
step j lives in slot ``j % H``; ``coefs``: the plan's ``[N, NCOLS]`` table in the compute dtype
(float32, or float64 for float64 storage); ``step``: the step index, a Python int or a 0-d
integer tensor on the device (graph replay).  Arithmetic is in the compute dtype; results are
rounded once to the storage dtype when written.  ``out`` may alias ``x`` (model step) or
``x_prev`` (extrapolated step).  The equations are those of :mod:`ltc.plan`.

Overlap: unlike the compiled backends (:mod:`ltc.ops.checks`), the reference accepts ``out`` or
``hist`` sharing memory with any read-only input (even ``out`` = ``x`` shifted by one element):
every input is read into fresh temporaries before either output is written, so the result is
exactly the specification's for the inputs as they were at the call.  It refuses only ``out``
overlapping ``hist``, the one case without a defined result (``ValueError``; not checked while
``torch.compile`` traces).
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .contract import Col, compute_dtype

# Plain-int column indices (IntEnum indexing of a tuple sends torch.compile into a recursion).
PX, PM, A, B0, B1, B2, NOISE, GUIDANCE, EX, EXP, EH1, EH2, IN, IC, B3 = (int(c) for c in Col)


def _row(coefs: torch.Tensor, step) -> tuple | list:
    """The coefficients of row ``step``.  A device ``step`` is gathered on the device (indexing
    with a 0-d tensor would copy it to the host).  A host ``step`` of a table read at once
    (:func:`_read_now`) gives Python floats: the table's values exactly (float32 and float64 are
    doubles exactly), and torch rounds a Python scalar to the tensor's dtype, so the arithmetic
    is that of the 0-d tensors, without making fifteen of them per call."""
    if isinstance(step, torch.Tensor):
        return coefs.index_select(0, step.reshape(1).long())[0].unbind()
    if _read_now(coefs):
        return coefs[step].tolist()
    return coefs[step].unbind()


def _read_now(coefs: torch.Tensor) -> bool:
    """Whether the op runs now on a plain CPU table, so its values may be read to the host: not
    while ``torch.compile`` traces nor under a dispatch mode (a graph recording, fake tensors,
    tracing), whose replays or graphs must read the table's values when they run."""
    return (coefs.device.type == "cpu" and type(coefs) is torch.Tensor and not torch.compiler.is_compiling()
            and not is_in_torch_dispatch_mode())


def _slot(step, back: int, H: int):
    """History slot of step ``step - back``: an int, or a 1-element device index tensor."""
    if isinstance(step, torch.Tensor):
        return ((step.reshape(1).long() - back) % H)
    return (step - back) % H


def _read(hist: torch.Tensor, step, back: int) -> torch.Tensor:
    slot = _slot(step, back, hist.shape[0])
    return hist.index_select(0, slot)[0] if isinstance(slot, torch.Tensor) else hist[slot]


def _write(hist: torch.Tensor, step, value: torch.Tensor) -> None:
    slot = _slot(step, 0, hist.shape[0])
    if isinstance(slot, torch.Tensor):
        hist.index_copy_(0, slot, value.to(hist.dtype).unsqueeze(0))
    else:
        hist[slot] = value.to(hist.dtype)


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """The bytes ``[start, end)`` spanned by ``t`` (any strides; empty for no elements)."""
    if t.numel() == 0:
        return 0, 0
    start = t.data_ptr()
    return start, start + t.element_size() * (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())))


def _separate_outputs(out: torch.Tensor, hist: torch.Tensor) -> None:
    """``out`` and ``hist`` span disjoint memory (two outputs of one step have no common result)."""
    if torch.compiler.is_compiling():
        return
    (a0, a1), (b0, b1) = _extent(out), _extent(hist)
    if a0 < b1 and b0 < a1:
        raise ValueError("out overlaps hist; they must be separate memory")


def model_step(x: torch.Tensor, model_out: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
               step, out: torch.Tensor, *, reads: int, cfg: bool,
               noise: torch.Tensor | None = None) -> None:
    """One model step: CFG combine, prediction -> D_i, solver update, D_i -> hist.

        m = m_u + G (m_c - m_u);  D_i = PX x + PM m;
        out = A x + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + B3 D_{i-3} + NOISE z;  hist[i % H] = D_i

    ``reads`` (0 to 3) is how many past D the step uses (solver order - 1; UniPC's corrector
    reads one more).
    """
    _separate_outputs(out, hist)
    row = _row(coefs, step)
    ct = coefs.dtype
    xf = x.to(ct)
    m = model_out.to(ct)
    if cfg:
        m_u, m_c = m.chunk(2)
        m = m_u + row[GUIDANCE] * (m_c - m_u)
    d = row[PX] * xf + row[PM] * m
    nxt = row[A] * xf + row[B0] * d
    if reads >= 1:
        nxt += row[B1] * _read(hist, step, 1).to(ct)
    if reads >= 2:
        nxt += row[B2] * _read(hist, step, 2).to(ct)
    if reads >= 3:
        nxt += row[B3] * _read(hist, step, 3).to(ct)
    if noise is not None:
        nxt += row[NOISE] * noise.to(ct)
    _write(hist, step, d)
    out.copy_(nxt)


def extrapolate_step(x: torch.Tensor, x_prev: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
                     step, out: torch.Tensor, *, reads: int) -> None:
    """One extrapolated step (no model call) and the clean estimate it implies:

        out = EX x + EXP x_prev + EH1 D_{i-1} + EH2 D_{i-2};   hist[i % H] = IN out + IC x

    ``reads`` (0, 1 or 2) is how many past D the extrapolation uses.
    """
    _separate_outputs(out, hist)
    row = _row(coefs, step)
    ct = coefs.dtype
    xf = x.to(ct)
    nxt = row[EX] * xf + row[EXP] * x_prev.to(ct)
    if reads >= 1:
        nxt += row[EH1] * _read(hist, step, 1).to(ct)
    if reads >= 2:
        nxt += row[EH2] * _read(hist, step, 2).to(ct)
    _write(hist, step, row[IN] * nxt + row[IC] * xf)
    out.copy_(nxt)


def transition_dots(x: torch.Tensor, x_prev: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``[<d, r>, <d, d>]`` with ``d = x - x_prev``, ``r = x_target - x``.

    Returns ``[B, 2]`` float32 (float64 for float64 inputs); the LTC least-squares weight of a
    step is ``w = sum_b <d,r> / (gamma * sum_b <d,d>)``.  Deterministic: fixed reduction order.
    """
    ct = compute_dtype(x.dtype)
    B = x.shape[0]
    xf = x.to(ct).reshape(B, -1)
    d = xf - x_prev.to(ct).reshape(B, -1)
    r = x_target.to(ct).reshape(B, -1) - xf
    return torch.stack([(d * r).sum(1), (d * d).sum(1)], dim=1)
