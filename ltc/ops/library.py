"""The step operations as torch custom operators, ``torch.ops.ltc.*``: visible to ``torch.compile``
(a loop of them traces with ``fullgraph=True``, no graph break) and checked by
``torch.library.opcheck``.

Importing this module registers, in the ``ltc`` namespace (``(a!)``: written in place)::

    model_step(Tensor x, Tensor model_out, Tensor(a!) hist, Tensor coefs, Tensor? step_tensor, int step,
               Tensor(b!) out, int reads, bool cfg, Tensor? noise, str? backend,
               Tensor(c!)? finite=None) -> ()
    model_step_(Tensor(a!) x, Tensor model_out, Tensor(b!) hist, Tensor coefs, Tensor? step_tensor, int step,
                int reads, bool cfg, Tensor? noise, str? backend, Tensor(c!)? finite=None) -> ()  # out = x
    extrapolate_step(Tensor x, Tensor x_prev, Tensor(a!) hist, Tensor coefs, Tensor? step_tensor, int step,
                     Tensor(b!) out, int reads, str? backend) -> ()
    extrapolate_step_(Tensor x, Tensor(a!) x_prev, Tensor(b!) hist, Tensor coefs, Tensor? step_tensor,
                      int step, int reads, str? backend) -> ()                                   # out = x_prev
    transition_dots(Tensor x, Tensor x_prev, Tensor x_target, str? backend) -> Tensor         # [B, 2]

Each runs the op of the same name of the backend ``ltc.ops.resolve(backend, x.device)`` picks
(``None``: ``LTC_BACKEND``, default ``auto``; a backend that is not available is a ``ValueError``
at the call): the equations of :mod:`ltc.ops.contract`, e.g. for the model step
``out = A x + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + B3 D_{i-3} + NOISE z`` and ``hist[i % H] = D_i``.
The step is ``step_tensor`` (a 0-d integer tensor on the device, read in the kernel: graph replay)
when given, else the int ``step``.  ``finite`` is the model step's "first bad step" word
(:mod:`ltc.ops.reference`), declared written.  Shapes and dtypes are the backends' (``x: [B, *S]``,
``hist: [H, B, *S]``, ``coefs: [N, NCOLS]``, ...), checked by the backend before any write.

Aliasing.  A schema says which arguments an operator writes, and functionalization (what
``torch.compile`` does with a mutating operator) relies on a written tensor sharing no memory with
any other argument.  So every operator refuses, with a ``ValueError`` before any write, a written
tensor that shares memory with another tensor argument.  ``out = x`` (model step) and
``out = x_prev`` (extrapolated step), which the backends accept and the executor uses, are the
in-place variants ``model_step_`` and ``extrapolate_step_``: the result goes into that argument.

The functions :func:`model_step`, :func:`extrapolate_step` and :func:`transition_dots` have the
reference's signatures plus ``backend``: they split ``step`` into the two schema arguments and
call the in-place variant when ``out`` is ``x`` (``x_prev``).  They trace under ``torch.compile``.

Fake kernels (shape propagation while tracing) read no data: the step operators return nothing,
``transition_dots`` an empty ``[B, 2]`` tensor in the compute dtype of ``x``
(:func:`ltc.ops.contract.compute_dtype`).  The operators have no autograd formula (sampling is not
differentiated through).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import resolve
from .contract import compute_dtype

NAMESPACE = "ltc"


# ---------------------------------------------------------------- aliasing

def _span(t: torch.Tensor) -> tuple[int, int]:
    """The bytes ``[start, end)`` spanned by ``t`` (any strides; empty for no elements)."""
    if t.numel() == 0:
        return 0, 0
    start = t.data_ptr()
    return start, start + t.element_size() * (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())))


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the spans of ``a`` and ``b`` intersect (same device; conservative for strided views)."""
    if a.device != b.device:
        return False
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def refuse_aliasing(op: str, written: dict, others: dict, hint: str = "") -> None:
    """ValueError when a ``written`` tensor (name -> tensor) shares memory with another written one
    or with any of ``others`` (name -> tensor or None)."""
    names = list(written)
    for k, name in enumerate(names):
        for other, t in [*((n, written[n]) for n in names[k + 1:]), *others.items()]:
            if isinstance(t, torch.Tensor) and _shares_memory(written[name], t):
                raise ValueError(f"torch.ops.{NAMESPACE}.{op}: {name} shares memory with {other}; a written "
                                 f"argument of a custom operator must not alias another argument{hint}")


# ---------------------------------------------------------------- the operators

def _step(step_tensor: Optional[torch.Tensor], step: int):
    return step if step_tensor is None else step_tensor


def _written(finite: Optional[torch.Tensor], **outputs) -> dict:
    """The written tensors of a model step: its outputs, and the word when given."""
    return outputs if finite is None else {**outputs, "finite": finite}


@torch.library.custom_op(f"{NAMESPACE}::model_step", mutates_args=("hist", "out", "finite"))
def _model_step(x: torch.Tensor, model_out: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
                step_tensor: Optional[torch.Tensor], step: int, out: torch.Tensor, reads: int, cfg: bool,
                noise: Optional[torch.Tensor], backend: Optional[str], finite: Optional[torch.Tensor] = None) -> None:
    refuse_aliasing("model_step", _written(finite, out=out, hist=hist),
                    dict(x=x, model_out=model_out, coefs=coefs, step_tensor=step_tensor, noise=noise),
                    f" (for out = x call torch.ops.{NAMESPACE}.model_step_, which writes the result into x)")
    ops = resolve(backend, x.device)[1]
    ops.model_step(x, model_out, hist, coefs, _step(step_tensor, step), out, reads=reads, cfg=cfg, noise=noise,
                   finite=finite)


@torch.library.custom_op(f"{NAMESPACE}::model_step_", mutates_args=("x", "hist", "finite"))
def _model_step_in_place(x: torch.Tensor, model_out: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
                         step_tensor: Optional[torch.Tensor], step: int, reads: int, cfg: bool,
                         noise: Optional[torch.Tensor], backend: Optional[str],
                         finite: Optional[torch.Tensor] = None) -> None:
    refuse_aliasing("model_step_", _written(finite, x=x, hist=hist),
                    dict(model_out=model_out, coefs=coefs, step_tensor=step_tensor, noise=noise))
    ops = resolve(backend, x.device)[1]
    ops.model_step(x, model_out, hist, coefs, _step(step_tensor, step), x, reads=reads, cfg=cfg, noise=noise,
                   finite=finite)


@torch.library.custom_op(f"{NAMESPACE}::extrapolate_step", mutates_args=("hist", "out"))
def _extrapolate_step(x: torch.Tensor, x_prev: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
                      step_tensor: Optional[torch.Tensor], step: int, out: torch.Tensor, reads: int,
                      backend: Optional[str]) -> None:
    refuse_aliasing("extrapolate_step", {"out": out, "hist": hist},
                    dict(x=x, x_prev=x_prev, coefs=coefs, step_tensor=step_tensor),
                    f" (for out = x_prev call torch.ops.{NAMESPACE}.extrapolate_step_, which writes the result "
                    "into x_prev)")
    ops = resolve(backend, x.device)[1]
    ops.extrapolate_step(x, x_prev, hist, coefs, _step(step_tensor, step), out, reads=reads)


@torch.library.custom_op(f"{NAMESPACE}::extrapolate_step_", mutates_args=("x_prev", "hist"))
def _extrapolate_step_in_place(x: torch.Tensor, x_prev: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
                               step_tensor: Optional[torch.Tensor], step: int, reads: int,
                               backend: Optional[str]) -> None:
    refuse_aliasing("extrapolate_step_", {"x_prev": x_prev, "hist": hist},
                    dict(x=x, coefs=coefs, step_tensor=step_tensor))
    ops = resolve(backend, x.device)[1]
    ops.extrapolate_step(x, x_prev, hist, coefs, _step(step_tensor, step), x_prev, reads=reads)


@torch.library.custom_op(f"{NAMESPACE}::transition_dots", mutates_args=())
def _transition_dots(x: torch.Tensor, x_prev: torch.Tensor, x_target: torch.Tensor,
                     backend: Optional[str]) -> torch.Tensor:
    return resolve(backend, x.device)[1].transition_dots(x, x_prev, x_target)


# ---------------------------------------------------------------- fake kernels (no data read)

@_model_step.register_fake
def _(x, model_out, hist, coefs, step_tensor, step, out, reads, cfg, noise, backend, finite=None) -> None:
    return None


@_model_step_in_place.register_fake
def _(x, model_out, hist, coefs, step_tensor, step, reads, cfg, noise, backend, finite=None) -> None:
    return None


@_extrapolate_step.register_fake
def _(x, x_prev, hist, coefs, step_tensor, step, out, reads, backend) -> None:
    return None


@_extrapolate_step_in_place.register_fake
def _(x, x_prev, hist, coefs, step_tensor, step, reads, backend) -> None:
    return None


@_transition_dots.register_fake
def _(x, x_prev, x_target, backend) -> torch.Tensor:
    if x.dim() < 1:
        raise ValueError("x must be [B, *S], got a 0-d tensor")
    return x.new_empty((x.shape[0], 2), dtype=compute_dtype(x.dtype))


# ---------------------------------------------------------------- the contract's signatures

def _split(step) -> tuple[Optional[torch.Tensor], int]:
    """The two schema arguments of ``step``: ``(tensor, 0)`` for a tensor, ``(None, step)`` else."""
    return (step, 0) if isinstance(step, torch.Tensor) else (None, step)


def model_step(x: torch.Tensor, model_out: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor, step,
               out: torch.Tensor, *, reads: int, cfg: bool, noise: torch.Tensor | None = None,
               finite: torch.Tensor | None = None, backend: str | None = None) -> None:
    """:func:`ltc.ops.reference.model_step` through ``torch.ops.ltc.model_step`` (``model_step_``
    when ``out`` is ``x``), on ``backend`` (None: ``LTC_BACKEND``, default auto)."""
    step_tensor, step = _split(step)
    if out is x:
        torch.ops.ltc.model_step_(x, model_out, hist, coefs, step_tensor, step, reads, cfg, noise, backend, finite)
    else:
        torch.ops.ltc.model_step(x, model_out, hist, coefs, step_tensor, step, out, reads, cfg, noise, backend,
                                 finite)


def extrapolate_step(x: torch.Tensor, x_prev: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor, step,
                     out: torch.Tensor, *, reads: int, backend: str | None = None) -> None:
    """:func:`ltc.ops.reference.extrapolate_step` through ``torch.ops.ltc.extrapolate_step``
    (``extrapolate_step_`` when ``out`` is ``x_prev``), on ``backend``."""
    step_tensor, step = _split(step)
    if out is x_prev:
        torch.ops.ltc.extrapolate_step_(x, x_prev, hist, coefs, step_tensor, step, reads, backend)
    else:
        torch.ops.ltc.extrapolate_step(x, x_prev, hist, coefs, step_tensor, step, out, reads, backend)


def transition_dots(x: torch.Tensor, x_prev: torch.Tensor, x_target: torch.Tensor, *,
                    backend: str | None = None) -> torch.Tensor:
    """:func:`ltc.ops.reference.transition_dots` through ``torch.ops.ltc.transition_dots``:
    ``[B, 2]`` per-sample ``[<d, r>, <d, d>]``, ``d = x - x_prev``, ``r = x_target - x``."""
    return torch.ops.ltc.transition_dots(x, x_prev, x_target, backend)


OPERATORS = ("model_step", "model_step_", "extrapolate_step", "extrapolate_step_", "transition_dots")

__all__ = ["NAMESPACE", "OPERATORS", "model_step", "extrapolate_step", "transition_dots", "refuse_aliasing"]
