"""Fused Triton kernels of the step operations (installed as ``ltc.kernels``): backend ``triton``
of :mod:`ltc.ops`.

One function per name in :data:`ltc.ops.contract.OPS` (``model_step``, ``extrapolate_step``,
``transition_dots``), with the signatures and semantics of :mod:`ltc.ops.reference` (the
specification); each step op is one kernel launch that reads its coefficients from the plan's
device table at the step index, so it replays in a CUDA graph.  One module per op, named after it
(:mod:`ltc.kernels.model_step`, :mod:`ltc.kernels.extrapolate_step`,
:mod:`ltc.kernels.transition_dots`); shared conventions (the backend's rules for the argument
checks of :mod:`ltc.ops.checks`, launch sizes, the step index, history slots) in :mod:`.launch`.

Names: the package attribute ``ltc.kernels.<op>`` is the *function* -- the backend contract that
:func:`ltc.ops.resolve` checks -- so ``from ltc.kernels import model_step`` and
``ltc.kernels.model_step(...)`` call the kernel.  The package imports each op's module once (a
loop over ``OPS``), keeps it under the private alias ``_modules[op]`` and binds the op name to the
module's function, replacing the submodule attribute the import machinery had set.  Reach a module
(its kernels, tile sizes, ``launch_unchecked``) through the import system, which reads
``sys.modules`` rather than the attribute: ``importlib.import_module("ltc.kernels.transition_dots")``
or ``from ltc.kernels.model_step import launch_unchecked``; ``import ltc.kernels.model_step as m``
and dotted monkeypatch targets such as ``"ltc.kernels.transition_dots.TARGET_CHUNKS"`` read the
attribute and get the function.  (Modules winning the name instead would break the contract.)

``AVAILABLE`` says whether triton imports.  Without it this package still imports and every op is
a stub with the reference's signature that raises ``RuntimeError`` (:mod:`ltc.ops` checks
``AVAILABLE`` before choosing it).
"""
from __future__ import annotations

import functools
import importlib
from types import SimpleNamespace

from ltc.ops import reference as _reference
from ltc.ops.contract import OPS

try:
    import triton  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    AVAILABLE = False
    UNAVAILABLE_REASON = f"triton is not importable ({_exc})"
else:
    AVAILABLE = True
    UNAVAILABLE_REASON = ""


def _unavailable(reference):
    @functools.wraps(reference)
    def stub(*args, **kwargs):
        raise RuntimeError(f"ltc.kernels.{reference.__name__}: {UNAVAILABLE_REASON}; "
                           "install triton or use backend='reference'")
    return stub


_modules = {op: importlib.import_module(f"{__name__}.{op}") for op in OPS} if AVAILABLE else {}
for _op in OPS:
    globals()[_op] = getattr(_modules[_op], _op) if AVAILABLE else _unavailable(getattr(_reference, _op))
del _op

# Each op without its argument checks (each module's ``unchecked``), for callers whose buffers are
# valid by construction: ltc.executor.walk.Walk launches through them after its first checked call.
unchecked = SimpleNamespace(**{op: _modules[op].unchecked for op in OPS}) if AVAILABLE else None

__all__ = ["AVAILABLE", "UNAVAILABLE_REASON", "unchecked", *OPS]
