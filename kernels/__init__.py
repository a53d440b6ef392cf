"""Fused Triton kernels of the step operations (installed as ``ltc.kernels``).

``model_step``, ``extrapolate_step`` and ``transition_dots`` have the signatures and semantics of
:mod:`ltc.ops.reference` (the specification); each step op is one kernel launch that reads its
coefficients from the plan's device table at the step index, so it replays in a CUDA graph.
Module per op: :mod:`.model_step_kernel`, :mod:`.extrapolate_step_kernel`,
:mod:`.transition_dots_kernel`; shared conventions (dtypes, contiguity, the step argument,
launch sizes) in :mod:`.launch`.

``AVAILABLE`` says whether triton imports.  Without it this package still imports and the three
functions raise ``RuntimeError`` (:mod:`ltc.ops` checks ``AVAILABLE`` before choosing it).
"""
from __future__ import annotations

import functools

from ltc.ops import reference as _reference

try:
    import triton  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    AVAILABLE = False
    UNAVAILABLE_REASON = f"triton is not importable ({_exc})"
else:
    AVAILABLE = True
    UNAVAILABLE_REASON = ""

if AVAILABLE:
    from .extrapolate_step_kernel import extrapolate_step
    from .model_step_kernel import model_step
    from .transition_dots_kernel import transition_dots
else:
    def _unavailable(reference):
        @functools.wraps(reference)
        def stub(*args, **kwargs):
            raise RuntimeError(f"ltc.kernels.{reference.__name__}: {UNAVAILABLE_REASON}; "
                               "install triton or use backend='reference'")
        return stub

    model_step = _unavailable(_reference.model_step)
    extrapolate_step = _unavailable(_reference.extrapolate_step)
    transition_dots = _unavailable(_reference.transition_dots)

__all__ = ["AVAILABLE", "model_step", "extrapolate_step", "transition_dots"]
