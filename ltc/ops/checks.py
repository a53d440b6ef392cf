"""Host-side argument checks shared by the compiled step-op backends (:mod:`ltc.kernels`,
:mod:`ltc.ops.cuda`), so both refuse the same inputs with the same messages.  Torch only: it
imports neither triton nor the extension.

One function per op of :data:`~ltc.ops.contract.OPS` -- :func:`model_step`,
:func:`extrapolate_step`, :func:`transition_dots` -- runs the whole validation sequence of a call
(tensors, dtypes, shapes, contiguity of the outputs, the step, reads, the cfg batch, one device,
no memory shared by the outputs with each other or with the inputs but ``out`` being ``x`` or
``x_prev`` itself)
and returns the arguments ready for a launch: read-only inputs contiguous (a copy only when they
are not; ``model_out`` may instead be batch-strided, :func:`batch_strided`), ``reads`` an int,
``step`` an int in ``[0, N)`` or the 0-d integer tensor as given, ``finite`` (the model step's
"first bad step" word, :mod:`ltc.ops.reference`) a 1-element int32/int64 tensor or None.
Nothing is written before every check has passed.  A backend's own conventions are its
:class:`Rules`: whether every state tensor must share x's storage dtype (the CUDA extension) or
each may have its own (Triton), and which devices it runs on.  ``coefs`` is always in the
compute dtype of x's storage.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import torch

from . import reference
from .contract import FLOAT_DTYPES, NCOLS, compute_dtype

COEF_DTYPES = (torch.float32, torch.float64)
MAX_READS = {"model_step": 3, "extrapolate_step": 2}  # past clean estimates a step op can read (contract)


class Rules(NamedTuple):
    """What a backend adds to the shared checks."""

    backend: str                                   # named in messages: "the {backend} backend ..."
    one_dtype: bool                                # all state tensors in x's dtype
    device: Callable[[str, torch.device], None]    # (first tensor's name, the device): raises if unusable


class ModelStepArgs(NamedTuple):
    x: torch.Tensor
    model_out: torch.Tensor
    hist: torch.Tensor
    coefs: torch.Tensor
    step: int | torch.Tensor
    out: torch.Tensor
    reads: int
    cfg: bool
    noise: torch.Tensor | None
    finite: torch.Tensor | None


class ExtrapolateStepArgs(NamedTuple):
    x: torch.Tensor
    x_prev: torch.Tensor
    hist: torch.Tensor
    coefs: torch.Tensor
    step: int | torch.Tensor
    out: torch.Tensor
    reads: int


class TransitionDotsArgs(NamedTuple):
    x: torch.Tensor
    x_prev: torch.Tensor
    x_target: torch.Tensor


# ---------------------------------------------------------------- one op, one sequence

def model_step(rules: Rules, x, model_out, hist, coefs, step, out, *, reads, cfg, noise,
               finite=None) -> ModelStepArgs:
    """The checked arguments of :func:`ltc.ops.reference.model_step` for a backend with ``rules``."""
    tensor("x", x)
    tensor("model_out", model_out)
    tensor("hist", hist)
    tensor("out", out)
    if noise is not None:
        tensor("noise", noise)
    coefs = table(rules, coefs, x)
    if not isinstance(cfg, bool):
        raise TypeError(f"cfg must be a bool, got {type(cfg).__name__}")
    batched(x)
    like(rules, "model_out", model_out, x, (x.shape[0] * (2 if cfg else 1), *x.shape[1:]))
    like(rules, "out", out, x)
    history(rules, hist, x)
    if noise is not None:
        like(rules, "noise", noise, x)
    writable("out", out)
    writable("hist", hist)
    reads = reads_of(reads, hist.shape[0], MAX_READS["model_step"])
    step = step_of(step, coefs)
    if finite is not None:
        reference.check_word(finite, x)
    one_device(rules, x=x, model_out=model_out, hist=hist, coefs=coefs, out=out, noise=noise,
               step=step if isinstance(step, torch.Tensor) else None)
    a = ModelStepArgs(readable(x), batch_strided(model_out), hist, readable(coefs), step, out, reads, cfg,
                      None if noise is None else readable(noise), finite)
    step_tensor = step if isinstance(step, torch.Tensor) else None
    separate(a.out, a.hist, x=a.x, model_out=a.model_out, coefs=a.coefs, noise=a.noise, step=step_tensor,
             finite=finite)
    if finite is not None:
        for name, t in dict(x=a.x, model_out=a.model_out, coefs=a.coefs, noise=a.noise, step=step_tensor).items():
            if t is not None and overlap(finite, t):
                raise ValueError(f"finite overlaps {name}; they must be separate memory")
    return a


def extrapolate_step(rules: Rules, x, x_prev, hist, coefs, step, out, *, reads) -> ExtrapolateStepArgs:
    """The checked arguments of :func:`ltc.ops.reference.extrapolate_step` for a backend with ``rules``."""
    tensor("x", x)
    tensor("x_prev", x_prev)
    tensor("hist", hist)
    tensor("out", out)
    coefs = table(rules, coefs, x)
    batched(x)
    like(rules, "x_prev", x_prev, x)
    like(rules, "out", out, x)
    history(rules, hist, x)
    writable("out", out)
    writable("hist", hist)
    reads = reads_of(reads, hist.shape[0], MAX_READS["extrapolate_step"])
    step = step_of(step, coefs)
    one_device(rules, x=x, x_prev=x_prev, hist=hist, coefs=coefs, out=out,
               step=step if isinstance(step, torch.Tensor) else None)
    a = ExtrapolateStepArgs(readable(x), readable(x_prev), hist, readable(coefs), step, out, reads)
    separate(a.out, a.hist, out_may_be=("x", "x_prev"), x=a.x, x_prev=a.x_prev, coefs=a.coefs,
             step=step if isinstance(step, torch.Tensor) else None)
    return a


def transition_dots(rules: Rules, x, x_prev, x_target) -> TransitionDotsArgs:
    """The checked arguments of :func:`ltc.ops.reference.transition_dots` for a backend with ``rules``."""
    tensor("x", x)
    tensor("x_prev", x_prev)
    tensor("x_target", x_target)
    batched(x)
    like(rules, "x_prev", x_prev, x)
    like(rules, "x_target", x_target, x)
    one_device(rules, x=x, x_prev=x_prev, x_target=x_target)
    return TransitionDotsArgs(readable(x), readable(x_prev), readable(x_target))


# ---------------------------------------------------------------- the single checks

def tensor(name: str, t, dtypes=FLOAT_DTYPES) -> torch.Tensor:
    """``t`` if it is a tensor of one of ``dtypes``; TypeError naming ``name`` otherwise."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have a dtype in {dtypes}, got {t.dtype}")
    return t


def shape(name: str, t: torch.Tensor, expected) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(expected)}")


def like(rules: Rules, name: str, t: torch.Tensor, x: torch.Tensor, expected=None) -> None:
    """``t`` has shape ``expected`` (default x's) and, for a one-dtype backend, x's dtype."""
    if rules.one_dtype and t.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}: the {rules.backend} backend needs one "
                        "storage dtype for all state tensors")
    shape(name, t, x.shape if expected is None else expected)


def batched(x: torch.Tensor) -> None:
    if x.dim() < 1:
        raise ValueError("x must be [B, *S], got a 0-d tensor")


def history(rules: Rules, hist: torch.Tensor, x: torch.Tensor) -> None:
    """``hist`` is ``[H, *x.shape]`` (H itself is checked against the reads by :func:`reads_of`)."""
    if hist.dim() != x.dim() + 1:
        raise ValueError(f"hist must be [H, *x.shape] = [H, {', '.join(map(str, x.shape))}], "
                         f"got shape {tuple(hist.shape)}")
    like(rules, "hist", hist, x, (hist.shape[0], *x.shape))


def table(rules: Rules, coefs, x: torch.Tensor) -> torch.Tensor:
    """The plan's ``[N, NCOLS]`` table, in the compute dtype of x's storage (float64 for float64 x,
    float32 otherwise): the dtype the kernels do their arithmetic in."""
    tensor("coefs", coefs, COEF_DTYPES)
    if coefs.dim() != 2 or coefs.shape[1] != NCOLS or coefs.shape[0] < 1:
        raise ValueError(f"coefs must be the plan's [N, {NCOLS}] table, got shape {tuple(coefs.shape)}")
    want = compute_dtype(x.dtype)
    if coefs.dtype != want:
        raise TypeError(f"coefs must have dtype {want} (the compute dtype of {x.dtype} storage), got {coefs.dtype}")
    return coefs


def writable(name: str, t: torch.Tensor) -> torch.Tensor:
    """An output buffer: it is written in place, so it must be contiguous."""
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (it is written in place); got strides {t.stride()} "
                         f"for shape {tuple(t.shape)}")
    return t


def readable(t: torch.Tensor) -> torch.Tensor:
    """A read-only input as a contiguous tensor (a copy only when it is not contiguous)."""
    return t if t.is_contiguous() else t.contiguous()


def sample_contiguous(t: torch.Tensor) -> bool:
    """Whether each sample ``t[b]`` of ``t`` ``[B, *S]`` is one contiguous block (dims of size 1
    may have any stride), whatever the batch stride."""
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def batch_strided(t: torch.Tensor) -> torch.Tensor:
    """A read-only ``[B, *S]`` input the kernels read with its batch stride, ``t.stride(0)``: ``t``
    itself when it is contiguous or each sample is a contiguous block (a DiT's ``out[:, :4]`` of a
    contiguous ``[B, 8, H, W]``); any other layout is copied once (:func:`readable`)."""
    return t if t.is_contiguous() or (t.dim() >= 1 and sample_contiguous(t)) else t.contiguous()


def batch_stride(t: torch.Tensor) -> int:
    """The elements between samples of a :func:`batch_strided` tensor (its sample size when
    contiguous, or when it has at most one sample: the stride of a size-1 dim is arbitrary)."""
    sample = math.prod(t.shape[1:])
    return sample if t.shape[0] <= 1 or t.is_contiguous() else t.stride(0)


def is_int(v) -> bool:
    """A Python or numpy integer, not a bool (``type is int`` first: the ABC check is slow)."""
    return type(v) is int or (not isinstance(v, bool) and isinstance(v, numbers.Integral))


def reads_of(reads, hist_slots: int, most: int) -> int:
    """``reads`` as an int in ``0..most`` (:data:`MAX_READS` of the op) with ``hist_slots > reads``:
    the slot a step writes is never one it reads."""
    if not is_int(reads) or not 0 <= reads <= most:
        allowed = ", ".join(map(str, range(most))) + f" or {most}"
        raise ValueError(f"reads must be {allowed}, got {reads!r}")
    if hist_slots <= reads:
        raise ValueError(f"hist has {hist_slots} slot(s) but the step reads {reads} past clean "
                         f"estimate(s): need at least {reads + 1} slots")
    return int(reads)


def step_of(step, coefs: torch.Tensor) -> int | torch.Tensor:
    """The checked step: a Python int, or the 0-d integer tensor as given."""
    if isinstance(step, torch.Tensor):
        if step.dim() != 0 or step.dtype.is_floating_point or step.dtype.is_complex or step.dtype == torch.bool:
            raise TypeError(f"step must be an int or a 0-d integer tensor, got a {step.dtype} tensor "
                            f"of shape {tuple(step.shape)}")
        if step.device != coefs.device:
            raise ValueError(f"step is on {step.device} but coefs is on {coefs.device}")
        return step
    if not is_int(step):
        raise TypeError(f"step must be an int or a 0-d integer tensor, got {type(step).__name__}")
    if not 0 <= step < coefs.shape[0]:
        raise ValueError(f"step must be in [0, {coefs.shape[0]}) (rows of coefs), got {step}")
    return int(step)


def span(t: torch.Tensor) -> tuple[int, int]:
    """The bytes ``[start, end)`` spanned by ``t`` (non-negative strides; ``nbytes`` when contiguous)."""
    start = t.data_ptr()
    if t.is_contiguous():
        return start, start + t.nbytes
    return start, start + t.element_size() * (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())))


def overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the byte spans of two tensors (on one device) intersect."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def separate(out: torch.Tensor, hist: torch.Tensor, out_may_be=("x",), **inputs) -> None:
    """The written tensors ``out`` and ``hist`` (contiguous) share no memory with each other or with
    the read-only ``inputs`` (contiguous; None entries skipped) -- except that ``out`` may be the
    very same memory as an input named in ``out_may_be`` (same start and size: every element is
    read before it is written, by the same thread).  The checks of the CUDA extension's binding."""
    if overlap(out, hist):
        raise ValueError("out overlaps hist; they must be separate memory")
    for name, t in inputs.items():
        if t is None:
            continue
        if overlap(out, t):
            same = out.data_ptr() == t.data_ptr() and out.nbytes == t.nbytes
            if not (same and name in out_may_be):
                raise ValueError(f"out overlaps {name}" + (" without being the very same tensor"
                                                           if name in out_may_be else "; they must be separate memory"))
        if overlap(hist, t):
            raise ValueError(f"hist overlaps {name}; they must be separate memory")


def one_device(rules: Rules, **tensors) -> torch.device:
    """The one device of all ``tensors`` (None entries are skipped), if ``rules`` accepts it."""
    first, device = None, None
    for name, t in tensors.items():
        if t is None:
            continue
        if device is None:
            first, device = name, t.device
        elif t.device != device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {device}: all tensors must be on one device")
    rules.device(first, device)
    return device
