"""Host-side argument checks shared by the compiled step-op backends (:mod:`ltc.kernels`,
:mod:`ltc.ops_cuda`), so both refuse the same inputs with the same messages.  Torch only: it
imports neither triton nor the extension."""
from __future__ import annotations

import torch

from .arguments import FLOAT_DTYPES


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
