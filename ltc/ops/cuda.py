"""Backend ``cuda`` of :mod:`ltc.ops`: the fused step operations from the optional CUDA extension.

The kernels live in ``csrc/`` and register ``torch.ops.ltc_cuda.<op>`` for every op of
:data:`ltc.ops.contract.OPS` (``model_step``, ``extrapolate_step``, ``transition_dots``) when
loaded: from the built module ``ltc._C`` (``LTC_BUILD_CUDA=1 pip install --no-build-isolation
-e .``), or, with ``LTC_CUDA_JIT=1``, compiled on import by :func:`ltc.ops.cuda_build.load`.
This module always imports: without the extension (or without a CUDA device) ``AVAILABLE`` is
False, ``UNAVAILABLE_REASON`` says why and how to build it, and the ops raise ``RuntimeError``
after checking their arguments.

The functions have the signatures and semantics of :mod:`ltc.ops.reference` (the specification):

    model step:        m = m_u + G (m_c - m_u) (cfg);  D_i = PX x + PM m
                       out = A x + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + B3 D_{i-3} + NOISE z;  hist[i % H] = D_i
    extrapolated step: out = EX x + EXP x_prev + EH1 D_{i-1} + EH2 D_{i-2};  hist[i % H] = IN out + IC x
    transition dots:   [B, 2] = per sample [<d, r>, <d, d>],  d = x - x_prev,  r = x_target - x

Conventions of this backend: all tensors on one CUDA device; one storage dtype (fp16, bf16, fp32
or fp64) shared by ``x``, ``model_out``/``x_prev``/``x_target``, ``noise``, ``hist`` and ``out``;
``coefs`` in the compute dtype (float32, float64 for fp64 storage) -- exactly what
:func:`ltc.executor.eager.run_eager` passes.  Read-only inputs that are not contiguous are copied once (``model_out`` is read in place
with its batch stride when each sample is contiguous, e.g. a DiT's ``out[:, :4]``);
``out`` and ``hist`` are written in place and must be contiguous.  ``out`` may be ``x`` (or
``x_prev``) itself, but may not overlap any other argument.  ``step`` is an int in ``[0, N)``, or
a 0-d integer tensor on the device, read inside the kernel (graph replay); a device index outside
``[0, N)`` writes NaN to ``out`` and leaves ``hist`` untouched.  ``hist`` needs ``H > reads``
(``reads`` 0 to 3 for a model step, 0 to 2 for an extrapolated one).  The host-side checks are
those of :mod:`ltc.ops.checks`, shared with the Triton backend, under this module's ``RULES``;
the binding checks again in C++ (device, overlap).

``torch.ops.ltc_cuda.*`` are the extension's raw launches (no fake kernels; ``out`` may be ``x``
itself, which their schemas do not declare): ``torch.compile`` traces the ops through
:mod:`ltc.ops.library` (``torch.ops.ltc.*``, ``backend="cuda"``) instead.
"""
from __future__ import annotations

import importlib
import os
from types import SimpleNamespace

import torch

from . import checks, cuda_build
from .contract import OPS

_BUILD_HINT = ("build it with `LTC_BUILD_CUDA=1 pip install --no-build-isolation -e .` (needs a CUDA "
               "toolkit and a CUDA build of torch), or set LTC_CUDA_JIT=1 to compile csrc/ on import")


def _registered() -> bool:
    """Whether every op of OPS is registered as ``torch.ops.ltc_cuda.<op>``."""
    try:
        for op in OPS:
            getattr(torch.ops.ltc_cuda, op)  # resolves the op or raises
    except (AttributeError, RuntimeError):
        return False
    return True


def _load() -> str:
    """Registers the ops (built module, else JIT when asked); '' on success, else why not."""
    if not _registered():
        try:
            importlib.import_module("ltc._C")
        except Exception as exc:  # ImportError, or a module built against another torch
            built = f"the CUDA extension ltc._C is not loadable ({type(exc).__name__}: {exc})"
            if os.environ.get("LTC_CUDA_JIT") != "1":
                return f"{built}; {_BUILD_HINT}"
            try:
                cuda_build.load()
            except Exception as jit_exc:
                return f"{built}, and the JIT build (LTC_CUDA_JIT=1) failed: {type(jit_exc).__name__}: {jit_exc}"
        if not _registered():
            return "the CUDA extension loaded but registered no torch.ops.ltc_cuda operators"
    if not torch.cuda.is_available():
        return "the CUDA extension is loaded but there is no CUDA device"
    return ""


UNAVAILABLE_REASON = _load()
AVAILABLE = not UNAVAILABLE_REASON


def _require(name: str) -> None:
    if not AVAILABLE:
        raise RuntimeError(f"ltc.ops.cuda.{name}: {UNAVAILABLE_REASON}")


# ---------------------------------------------------------------- argument checks

def _usable(first: str, device: torch.device) -> None:
    if device.type != "cuda":
        raise ValueError(f"the cuda backend needs CUDA tensors, got {first} on {device}")


RULES = checks.Rules("cuda", one_dtype=True, device=_usable)  # one storage dtype, coefs in its compute dtype


def _step_args(step) -> tuple[torch.Tensor | None, int]:
    """The extension's two step arguments for a checked ``step``: ``(tensor, 0)`` for a 0-d device
    tensor (int32/int64, read in the kernel), ``(None, i)`` for an int."""
    if isinstance(step, torch.Tensor):
        return (step if step.dtype in (torch.int32, torch.int64) else step.to(torch.int64)), 0
    return None, step


# ---------------------------------------------------------------- the operations

def model_step(x: torch.Tensor, model_out: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
               step, out: torch.Tensor, *, reads: int, cfg: bool,
               noise: torch.Tensor | None = None, finite: torch.Tensor | None = None) -> None:
    """One model step, fused (see the module docstring and :func:`ltc.ops.reference.model_step`):

        m = m_u + G (m_c - m_u);  D_i = PX x + PM m;
        out = A x + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + B3 D_{i-3} + NOISE z;  hist[i % H] = D_i

    ``model_out`` contiguous or batch-strided (each sample contiguous: read in place); ``finite``
    the first-bad-step word (``word <- min(word, 2 i + f)``, atomicMin) or None.
    """
    a = checks.model_step(RULES, x, model_out, hist, coefs, step, out, reads=reads, cfg=cfg, noise=noise,
                          finite=finite)
    _require("model_step")
    torch.ops.ltc_cuda.model_step(a.x, a.model_out, a.hist, a.coefs, *_step_args(a.step), a.out, a.reads, a.cfg,
                                  a.noise, a.finite)


def _model_step_unchecked(x, model_out, hist, coefs, step, out, *, reads, cfg, noise=None, finite=None) -> None:
    """:func:`model_step` without the Python checks (the binding's C++ checks still run): the
    layouts of the read-only ``model_out`` (batch-strided or copied) and ``noise`` are settled."""
    noise = None if noise is None else checks.readable(noise)
    torch.ops.ltc_cuda.model_step(x, checks.batch_strided(model_out), hist, coefs, *_step_args(step), out, reads,
                                  cfg, noise, finite)


def _extrapolate_step_unchecked(x, x_prev, hist, coefs, step, out, *, reads) -> None:
    torch.ops.ltc_cuda.extrapolate_step(checks.readable(x), checks.readable(x_prev), hist, coefs,
                                        *_step_args(step), out, reads)


def _transition_dots_unchecked(x, x_prev, x_target) -> torch.Tensor:
    return torch.ops.ltc_cuda.transition_dots(checks.readable(x), checks.readable(x_prev), checks.readable(x_target))


def extrapolate_step(x: torch.Tensor, x_prev: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
                     step, out: torch.Tensor, *, reads: int) -> None:
    """One extrapolated step, fused (see :func:`ltc.ops.reference.extrapolate_step`):

        out = EX x + EXP x_prev + EH1 D_{i-1} + EH2 D_{i-2};   hist[i % H] = IN out + IC x
    """
    a = checks.extrapolate_step(RULES, x, x_prev, hist, coefs, step, out, reads=reads)
    _require("extrapolate_step")
    torch.ops.ltc_cuda.extrapolate_step(a.x, a.x_prev, a.hist, a.coefs, *_step_args(a.step), a.out, a.reads)


def transition_dots(x: torch.Tensor, x_prev: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``[<d, r>, <d, d>]``, ``d = x - x_prev``, ``r = x_target - x``: ``[B, 2]`` float32
    (float64 for float64 storage), deterministic (fixed two-pass reduction order, no atomics)."""
    a = checks.transition_dots(RULES, x, x_prev, x_target)
    _require("transition_dots")
    return torch.ops.ltc_cuda.transition_dots(a.x, a.x_prev, a.x_target)


# The ops without the Python argument checks, for callers whose buffers are valid by construction
# (ltc.executor.walk.Walk launches through them after its first, checked, call of each op).
unchecked = SimpleNamespace(model_step=_model_step_unchecked, extrapolate_step=_extrapolate_step_unchecked,
                            transition_dots=_transition_dots_unchecked)

__all__ = ["AVAILABLE", "UNAVAILABLE_REASON", "unchecked", *OPS]
