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

The "first bad step" word (``model_step(..., finite=word)``): a 1-element int32 or int64 tensor on
the device of ``x``, set by the caller to :data:`FINITE_SENTINEL` of its dtype (no bad step yet).
A model step i whose model output or whose written results hold NaN or Inf records

    word <- min(word, 2 i + f),   f = 0 if the model output (either half with guidance) is not
                                  finite, f = 1 if it is but x_{i+1} or D_i as stored is not,

so after a walk ``word // 2`` is its first bad step and ``word % 2`` says whether the model or the
step operation produced the NaN/Inf (a later step never overwrites an earlier one: a minimum,
atomic in the compiled backends, whatever the order of their blocks).  A finite step leaves the
word as it was.  ``i`` is the ``step`` argument (a compiled backend's device step outside the
table, which writes NaN to ``out``, records ``2 i + 1``).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .contract import Col, compute_dtype

# Plain-int column indices (IntEnum indexing of a tuple sends torch.compile into a recursion).
PX, PM, A, B0, B1, B2, NOISE, GUIDANCE, EX, EXP, EH1, EH2, IN, IC, B3 = (int(c) for c in Col)
FINITE_DTYPES = (torch.int32, torch.int64)
FINITE_SENTINEL = {torch.int32: 2 ** 31 - 1, torch.int64: 2 ** 63 - 1}  # the word's "no bad step"


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
               noise: torch.Tensor | None = None, finite: torch.Tensor | None = None) -> None:
    """One model step: CFG combine, prediction -> D_i, solver update, D_i -> hist.

        m = m_u + G (m_c - m_u);  D_i = PX x + PM m;
        out = A x + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + B3 D_{i-3} + NOISE z;  hist[i % H] = D_i

    ``reads`` (0 to 3) is how many past D the step uses (solver order - 1; UniPC's corrector
    reads one more).  ``finite``: the "first bad step" word, ``word <- min(word, 2 i + f)`` when
    the step is not finite (module docstring).
    """
    _separate_outputs(out, hist)
    _model_step(x, model_out, hist, coefs, step, out, reads=reads, cfg=cfg, noise=noise, finite=finite)


def _model_step(x, model_out, hist, coefs, step, out, *, reads, cfg, noise=None, finite=None) -> None:
    """:func:`model_step` without the overlap check (``unchecked``)."""
    if finite is not None:
        check_word(finite, x)
    row = _row(coefs, step)
    ct = coefs.dtype
    xf = x.to(ct)
    m = model_out.to(ct)
    model_ok = torch.isfinite(m).all() if finite is not None else None  # before any write (out may overlap it)
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
    if finite is not None:
        written_ok = torch.isfinite(out).all() & torch.isfinite(_read(hist, step, 0)).all()
        record_first_bad(finite, step, model_ok, written_ok)


def check_word(finite, x: torch.Tensor) -> None:
    """The "first bad step" word: a 1-element int32/int64 tensor on x's device."""
    if not isinstance(finite, torch.Tensor) or finite.dtype not in FINITE_DTYPES or finite.numel() != 1:
        what = (f"a {finite.dtype} tensor of shape {tuple(finite.shape)}" if isinstance(finite, torch.Tensor)
                else type(finite).__name__)
        raise TypeError(f"finite must be a 1-element int32 or int64 tensor (the first-bad-step word), got {what}")
    if finite.device != x.device:
        raise ValueError(f"finite is on {finite.device} but x is on {x.device}")


def record_first_bad(finite: torch.Tensor, step, model_ok: torch.Tensor, written_ok: torch.Tensor) -> None:
    """``finite <- min(finite, 2 step + f)`` unless both 0-d bools hold (f = 0 when the model
    output was bad, 1 when only what the step wrote was); device work only, no host read."""
    i = step.reshape(()).to(finite.dtype) if isinstance(step, torch.Tensor) else step
    code = 2 * i + model_ok.to(finite.dtype)
    keep = torch.full((), FINITE_SENTINEL[finite.dtype], dtype=finite.dtype, device=finite.device)
    finite.copy_(torch.minimum(finite, torch.where(model_ok & written_ok, keep, code).reshape(finite.shape)))


def extrapolate_step(x: torch.Tensor, x_prev: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
                     step, out: torch.Tensor, *, reads: int) -> None:
    """One extrapolated step (no model call) and the clean estimate it implies:

        out = EX x + EXP x_prev + EH1 D_{i-1} + EH2 D_{i-2};   hist[i % H] = IN out + IC x

    ``reads`` (0, 1 or 2) is how many past D the extrapolation uses.
    """
    _separate_outputs(out, hist)
    _extrapolate_step(x, x_prev, hist, coefs, step, out, reads=reads)


def _extrapolate_step(x, x_prev, hist, coefs, step, out, *, reads) -> None:
    """:func:`extrapolate_step` without the overlap check (``unchecked``)."""
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


# The ops without the argument checks, for callers whose buffers are valid by construction
# (ltc.executor.walk.Walk, which checks each model output itself): here the out/hist overlap check is skipped.
unchecked = SimpleNamespace(model_step=_model_step, extrapolate_step=_extrapolate_step,
                            transition_dots=transition_dots)
