"""Dispatch of the fused step operations to one of three implementations of one signature.

* ``reference`` -- :mod:`ltc.ops.reference`, plain torch (always available; the specification).
* ``triton``    -- :mod:`ltc.kernels` (needs triton; on CPU tensors only with ``TRITON_INTERPRET=1``).
* ``cuda``      -- the optional compiled extension built from ``csrc/`` (``LTC_BUILD_CUDA=1``).

``backend="auto"`` (the default, or the environment variable ``LTC_BACKEND``) picks triton for
CUDA tensors when triton imports, else the reference; the CUDA extension is used only when asked
for by name.  Asking for a backend that is not available is an error, never a silent fallback.

:mod:`ltc.ops.library` (imported on its own) registers the ops as torch custom operators,
``torch.ops.ltc.*``, on any of these backends: what ``torch.compile`` traces without a graph break.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

from .contract import OPS

BACKENDS = ("auto", "reference", "triton", "cuda")
_MODULES = {"reference": "ltc.ops.reference", "triton": "ltc.kernels", "cuda": "ltc.ops.cuda"}
_loaded: dict[str, ModuleType] = {}
_errors: dict[str, str] = {}


class IncompleteBackendError(RuntimeError):
    """A backend module does not provide every op of :data:`~ltc.ops.contract.OPS`."""


def missing_ops(module: ModuleType) -> list[str]:
    """The names in OPS that ``module`` does not provide as callables."""
    return [op for op in OPS if not callable(getattr(module, op, None))]


def _load(name: str) -> ModuleType | None:
    if name not in _loaded and name not in _errors:
        try:
            module = importlib.import_module(_MODULES[name])
        except Exception as exc:  # ImportError, or a broken/missing compiled extension
            _errors[name] = f"{type(exc).__name__}: {exc}"
        else:
            missing = missing_ops(module)
            if missing:  # not cached: every use of the backend raises
                raise IncompleteBackendError(f"backend {name!r} ({module.__name__}) does not provide the op(s) "
                                             f"{', '.join(missing)} of ltc.ops.contract.OPS {OPS}")
            _loaded[name] = module
    return _loaded.get(name)


def available(name: str) -> bool:
    """Whether backend ``name`` can be used in this process."""
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    module = _load(name)
    return module is not None and getattr(module, "AVAILABLE", True)


def resolve(backend: str | None, device) -> tuple[str, ModuleType]:
    """``(name, module)`` of the backend to use for tensors on ``device``.

    ``backend=None`` reads ``LTC_BACKEND`` (default ``auto``).  The module provides every op of
    :data:`~ltc.ops.contract.OPS` with the reference's signature (:class:`IncompleteBackendError`
    otherwise).
    """
    name = backend if backend is not None else os.environ.get("LTC_BACKEND", "auto")
    if name not in BACKENDS:
        source = "backend" if backend is not None else "LTC_BACKEND"
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        is_cuda = getattr(device, "type", str(device)).startswith("cuda")
        name = "triton" if is_cuda and available("triton") else "reference"
    if not available(name):
        why = (_errors.get(name) or getattr(_loaded.get(name), "UNAVAILABLE_REASON", "")
               or "not available in this build")
        raise ValueError(f"backend {name!r} is not available: {why}")
    return name, _loaded[name]
