"""The contract every step-op backend implements: op names, the coefficient table's columns,
the history ring, the storage dtypes and the arithmetic dtype.

A backend (:mod:`ltc.ops.reference`, :mod:`ltc.kernels`, :mod:`ltc.ops.cuda`) is a module with
one function per name in :data:`OPS`, each with the reference's signature and semantics::

    model_step(x, model_out, hist, coefs, step, out, *, reads, cfg, noise, finite)
    extrapolate_step(x, x_prev, hist, coefs, step, out, *, reads)
    transition_dots(x, x_prev, x_target) -> [B, 2]

(``finite``: the optional "first bad step" word, :mod:`ltc.ops.reference`.)  A backend may also
offer ``unchecked``, a namespace with the same three functions minus the per-call argument checks,
for callers whose buffers are valid by construction (the walk launches through it after its
first, checked, call of each op).

The plan's ``[N, NCOLS]`` table (columns :class:`Col`) holds, per step ``i``:

    model step:        m = m_u + GUIDANCE (m_c - m_u)   (classifier-free guidance only)
                       D_i = PX x_i + PM m
                       x_{i+1} = A x_i + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + B3 D_{i-3} + NOISE z
    extrapolated step: x_{i+1} = EX x_i + EXP x_{i-1} + EH1 D_{i-1} + EH2 D_{i-2}
                       D_i = IN x_{i+1} + IC x_i

``D_j`` (the clean estimate of step j) lives in slot ``j % HISTORY_SLOTS`` of ``hist``.

Adding a fused op: its name in :data:`OPS` (``ltc.ops`` refuses a backend without it; also in
:data:`STEP_OPS` if it reads row ``step`` of the table, so per-step graph replay substitutes the
index; new columns in :class:`Col`, in ``csrc/ltc_ops.h``, filled in ``ltc/plan.py``); the
specification in ``ltc/ops/reference.py``; its host checks in ``ltc/ops/checks.py``; the Triton
kernel in ``kernels/<op>.py`` (bound from ``OPS`` by ``kernels/__init__.py``); the CUDA kernel in
``csrc/`` (``.cu``, ``ltc_ops.h``, ``binding.cpp``) and its wrapper in ``ltc/ops/cuda.py``; its
custom-op registration in ``ltc/ops/library.py``; the call in ``ltc/executor/walk.py`` or
``ltc/calibration/walk.py``; tests in ``tests/ops/test_<op>.py`` (its case matrix in
``tests/ops/cases.py``, run on every backend) and ``bench/step_ops.py --op <op>`` for its speed.
Tensors are stored in one of :data:`FLOAT_DTYPES`; the arithmetic and the table are in
:func:`compute_dtype` of the storage dtype.  A policy gives the six coefficients of an
extrapolated step as one ``[6]`` row, indexed by :class:`ExtrapolationCol`.
"""
from __future__ import annotations

from enum import IntEnum

import torch

OPS = ("model_step", "extrapolate_step", "transition_dots")
STEP_OPS = ("model_step", "extrapolate_step")  # the ops that read row ``step`` (5th argument) of the table
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HISTORY_SLOTS = 4  # D of step j lives in slot j % 4: a model step reads up to D_{i-3} (UniPC-3's corrector)


class Col(IntEnum):
    """Columns of the plan's coefficient table."""

    PX = 0
    PM = 1
    A = 2
    B0 = 3
    B1 = 4
    B2 = 5
    NOISE = 6
    GUIDANCE = 7
    EX = 8
    EXP = 9
    EH1 = 10
    EH2 = 11
    IN = 12
    IC = 13
    B3 = 14


NCOLS = len(Col)


class ExtrapolationCol(IntEnum):
    """Columns of a policy's ``[K, 6]`` extrapolation block (:class:`ltc.plan.Decision`)."""

    EX = 0
    EXP = 1
    EH1 = 2
    EH2 = 3
    IN = 4
    IC = 5

    @property
    def table_col(self) -> Col:
        """The same coefficient's column in the plan's table."""
        return Col[self.name]


EXTRAPOLATION_COLS = tuple(c.table_col for c in ExtrapolationCol)


def extrapolation_reads(row) -> int:
    """Past clean estimates an extrapolated step with coefficients ``row`` (``[6]``, by
    :class:`ExtrapolationCol`) reads: 2 if it uses D_{i-2}, 1 if D_{i-1}, else 0."""
    return 2 if row[ExtrapolationCol.EH2] != 0 else 1 if row[ExtrapolationCol.EH1] != 0 else 0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype of the step operations (and of the plan's device tables) for a storage
    dtype: float64 for float64 storage, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32
