"""Backend ``cuda`` of :mod:`ltc.ops`: the fused step operations from the optional CUDA extension.

The kernels live in ``csrc/`` and register ``torch.ops.ltc_cuda.{model_step, extrapolate_step,
transition_dots}`` when loaded: from the built module ``ltc._C`` (``LTC_BUILD_CUDA=1 pip install
--no-build-isolation -e .``), or, with ``LTC_CUDA_JIT=1``, compiled on import by
:func:`ltc.ops.cuda_build.load`.  This module always imports: without the extension (or without a
CUDA device) ``AVAILABLE`` is False, ``UNAVAILABLE_REASON`` says why and how to build it, and the
three functions raise ``RuntimeError`` after checking their arguments.

The functions have the signatures and semantics of :mod:`ltc.ops.reference` (the specification):

    model step:        m = m_u + G (m_c - m_u) (cfg);  D_i = PX x + PM m
                       out = A x + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + NOISE z;  hist[i % H] = D_i
    extrapolated step: out = EX x + EXP x_prev + EH1 D_{i-1} + EH2 D_{i-2};  hist[i % H] = IN out + IC x
    transition dots:   [B, 2] = per sample [<d, r>, <d, d>],  d = x - x_prev,  r = x_target - x

Conventions of this backend: all tensors on one CUDA device; one storage dtype (fp16, bf16, fp32
or fp64) shared by ``x``, ``model_out``/``x_prev``/``x_target``, ``noise``, ``hist`` and ``out``;
``coefs`` in the compute dtype (float32, float64 for fp64 storage) -- exactly what
:func:`ltc.executor.eager.run_eager` passes.  Read-only inputs that are not contiguous are copied once;
``out`` and ``hist`` are written in place and must be contiguous.  ``out`` may be ``x`` (or
``x_prev``) itself, but may not overlap any other argument.  ``step`` is an int in ``[0, N)``, or
a 0-d integer tensor on the device, read inside the kernel (graph replay); a device index outside
``[0, N)`` writes NaN to ``out`` and leaves ``hist`` untouched.  ``hist`` needs ``H > reads``.
"""
from __future__ import annotations

import importlib
import os

import torch

from .checks import readable, reads_of, step_of, tensor, writable
from .contract import NCOLS

_BUILD_HINT = ("build it with `LTC_BUILD_CUDA=1 pip install --no-build-isolation -e .` (needs a CUDA "
               "toolkit and a CUDA build of torch), or set LTC_CUDA_JIT=1 to compile csrc/ on import")


def _registered() -> bool:
    try:
        torch.ops.ltc_cuda.model_step  # noqa: B018 - resolves the op or raises
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
            from .cuda_build import load
            try:
                load()
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

def _like(name: str, t, x: torch.Tensor, shape=None) -> torch.Tensor:
    """A tensor of x's storage dtype and ``shape`` (default x's)."""
    tensor(name, t)
    if t.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}: the cuda backend needs one "
                        "storage dtype for all state tensors")
    expected = tuple(x.shape) if shape is None else tuple(shape)
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {expected}")
    return t


def _hist(hist, x: torch.Tensor) -> torch.Tensor:
    tensor("hist", hist)
    if hist.dim() != x.dim() + 1 or hist.shape[0] < 1:
        raise ValueError(f"hist must be [H, *x.shape] = [H, {', '.join(map(str, x.shape))}], "
                         f"got shape {tuple(hist.shape)}")
    return writable("hist", _like("hist", hist, x, (hist.shape[0], *x.shape)))


def _coefs(coefs, x: torch.Tensor) -> torch.Tensor:
    tensor("coefs", coefs, (torch.float32, torch.float64))
    if coefs.dim() != 2 or coefs.shape[1] != NCOLS or coefs.shape[0] < 1:
        raise ValueError(f"coefs must be the plan's [N, {NCOLS}] table, got shape {tuple(coefs.shape)}")
    want = torch.float64 if x.dtype == torch.float64 else torch.float32
    if coefs.dtype != want:
        raise TypeError(f"coefs must have dtype {want} (the compute dtype of {x.dtype} storage), got {coefs.dtype}")
    return readable(coefs)


def _step(step, coefs: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """``(tensor, 0)`` for a 0-d device tensor (int32/int64 read in-kernel), ``(None, i)`` for an int."""
    step = step_of(step, coefs)
    if isinstance(step, torch.Tensor):
        return (step if step.dtype in (torch.int32, torch.int64) else step.to(torch.int64)), 0
    return None, step


def _on_cuda(**tensors) -> None:
    """All tensors on one CUDA device."""
    (first, t0), *rest = [(k, t) for k, t in tensors.items() if t is not None]
    if t0.device.type != "cuda":
        raise ValueError(f"the cuda backend needs CUDA tensors, got {first} on {t0.device}")
    for name, t in rest:
        if t.device != t0.device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {t0.device}: all tensors must be on one device")


# ---------------------------------------------------------------- the operations

def model_step(x: torch.Tensor, model_out: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
               step, out: torch.Tensor, *, reads: int, cfg: bool,
               noise: torch.Tensor | None = None) -> None:
    """One model step, fused (see the module docstring and :func:`ltc.ops.reference.model_step`):

        m = m_u + G (m_c - m_u);  D_i = PX x + PM m;
        out = A x + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + NOISE z;  hist[i % H] = D_i
    """
    tensor("x", x)
    if not isinstance(cfg, bool):
        raise TypeError(f"cfg must be a bool, got {type(cfg).__name__}")
    _like("model_out", model_out, x, (x.shape[0] * (2 if cfg else 1), *x.shape[1:]))
    hist = _hist(hist, x)
    coefs = _coefs(coefs, x)
    step_tensor, step_index = _step(step, coefs)
    writable("out", _like("out", out, x))
    if noise is not None:
        _like("noise", noise, x)
    reads = reads_of(reads, hist.shape[0])
    _on_cuda(x=x, model_out=model_out, hist=hist, coefs=coefs, out=out, noise=noise)
    _require("model_step")
    torch.ops.ltc_cuda.model_step(readable(x), readable(model_out), hist, coefs, step_tensor, step_index, out,
                                  reads, cfg, None if noise is None else readable(noise))


def extrapolate_step(x: torch.Tensor, x_prev: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
                     step, out: torch.Tensor, *, reads: int) -> None:
    """One extrapolated step, fused (see :func:`ltc.ops.reference.extrapolate_step`):

        out = EX x + EXP x_prev + EH1 D_{i-1} + EH2 D_{i-2};   hist[i % H] = IN out + IC x
    """
    tensor("x", x)
    _like("x_prev", x_prev, x)
    hist = _hist(hist, x)
    coefs = _coefs(coefs, x)
    step_tensor, step_index = _step(step, coefs)
    writable("out", _like("out", out, x))
    reads = reads_of(reads, hist.shape[0])
    _on_cuda(x=x, x_prev=x_prev, hist=hist, coefs=coefs, out=out)
    _require("extrapolate_step")
    torch.ops.ltc_cuda.extrapolate_step(readable(x), readable(x_prev), hist, coefs, step_tensor, step_index,
                                        out, reads)


def transition_dots(x: torch.Tensor, x_prev: torch.Tensor, x_target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``[<d, r>, <d, d>]``, ``d = x - x_prev``, ``r = x_target - x``: ``[B, 2]`` float32
    (float64 for float64 storage), deterministic (fixed two-pass reduction order, no atomics)."""
    tensor("x", x)
    _like("x_prev", x_prev, x)
    _like("x_target", x_target, x)
    if x.dim() < 1:
        raise ValueError("x must be [B, *S] with at least one dim, got a 0-d tensor")
    _on_cuda(x=x, x_prev=x_prev, x_target=x_target)
    _require("transition_dots")
    return torch.ops.ltc_cuda.transition_dots(readable(x), readable(x_prev), readable(x_target))


__all__ = ["AVAILABLE", "UNAVAILABLE_REASON", "model_step", "extrapolate_step", "transition_dots"]
