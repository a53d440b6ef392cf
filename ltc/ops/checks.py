"""Host-side argument checks shared by the compiled step-op backends (:mod:`ltc.kernels`,
:mod:`ltc.ops.cuda`), so both refuse the same inputs with the same messages.  Torch only: it
imports neither triton nor the extension."""
from __future__ import annotations

import numbers

import torch

from .contract import FLOAT_DTYPES


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


def writable(name: str, t: torch.Tensor) -> torch.Tensor:
    """An output buffer: it is written in place, so it must be contiguous."""
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (it is written in place); got strides {t.stride()} "
                         f"for shape {tuple(t.shape)}")
    return t


def readable(t: torch.Tensor) -> torch.Tensor:
    """A read-only input as a contiguous tensor (a copy only when it is not contiguous)."""
    return t if t.is_contiguous() else t.contiguous()


def is_int(v) -> bool:
    """A Python or numpy integer, not a bool (``type is int`` first: the ABC check is slow)."""
    return type(v) is int or (not isinstance(v, bool) and isinstance(v, numbers.Integral))


def reads_of(reads, hist_slots: int) -> int:
    if not is_int(reads) or reads not in (0, 1, 2):
        raise ValueError(f"reads must be 0, 1 or 2, got {reads!r}")
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
