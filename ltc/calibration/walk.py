"""The executor in calibration mode: walk an LTC plan whose weights live on the device.

An LTC plan is the base plan (every step a model step, :class:`ltc.plan.Plan` of the base policy)
with the skipped steps k = 1..K replaced by extrapolations whose six coefficients are affine in the
weight, ``R0_k + w_k R1_k`` (:meth:`ltc.policies.LTC.rows`).  :class:`LTCWalk` walks it with the
step operations of :mod:`ltc.ops` (model steps through :class:`ltc.executor.walk.Walk`) and the
weights as a device tensor ``[K]``, so one compiled base plan serves every weight vector (and no
weight is copied to the host inside the loop; one finiteness check runs after it).

Fit mode (the calibration pass of the seed).  At extrapolated step i, with
``base = x_{i+1}(w=0)`` and ``dir = x_{i+1}(1) - x_{i+1}(0)`` (both by ``extrapolate_step``), the
model is also called to get the true next state ``x*`` (``model_step`` with the base plan's row i
and the current history).  Pooled over the batch,

    w_i = clamp( sum_b <dir_b, r_b> / sum_b <dir_b, dir_b>,  lo, hi ),   r = x* - base

(``transition_dots``; for the state ``x``, dir = gamma (x_i - x_{i-1}) and r = x* - x_i as in the
seed), and the walk continues from the *extrapolated* state base + w_i dir, so later weights are
fitted on the accelerated path.  Per-sample statistics: w_b = <dir_b, r_b> / <dir_b, dir_b>,
residual_b = |r_b - w dir_b|^2, and the true transition |x* - x_i|^2.

Checkpoints: the buffers ``(x_i, x_{i-1}, hist)`` just before each extrapolated step, so a walk
with another weight for skip k can restart there (:meth:`LTCWalk.run` with ``start``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..executor.walk import NonFiniteError, Walk
from ..ops.contract import EXTRAPOLATION_COLS, NCOLS, compute_dtype, extrapolation_reads
from ..plan import Plan


@dataclass
class Checkpoint:
    """Buffers at the start of step ``step``: ``x`` = x_i, ``x_prev`` = x_{i-1}, ``hist`` [3, B, *S]."""

    step: int
    x: torch.Tensor
    x_prev: torch.Tensor
    hist: torch.Tensor


@dataclass
class WalkResult:
    """Endpoint ``x`` ``[B, *S]``, the weights used ``[K]`` (device), checkpoints (by skip index)
    and, in fit mode, per-step statistics on the host: ``dots [K, B, 2]`` (<dir, r>, <dir, dir>),
    ``residual [K, B]`` and ``transition [K, B]``."""

    x: torch.Tensor
    weights: torch.Tensor
    checkpoints: dict = field(default_factory=dict)
    dots: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    transition: torch.Tensor | None = None


class LTCWalk:
    """Walks ``base_plan`` with the steps ``skip`` extrapolated by ``R0 + w R1`` (each ``[K, 6]``).

    The model steps are those of a :class:`ltc.executor.walk.Walk` of the base plan (one per state
    shape, reused by every run); the extrapolated steps call ``extrapolate_step`` on its buffers
    with this walk's own table.
    """

    def __init__(self, base_plan: Plan, skip, R0, R1, models, *, ops, model_kwargs=None,
                 dtype: torch.dtype, device):
        self.plan, self.models, self.ops = base_plan, models, ops
        self.kwargs = model_kwargs or {}
        self.skip = [int(i) for i in skip]
        self.index = {i: k for k, i in enumerate(self.skip)}
        self.dtype, self.device = dtype, torch.device(device)
        self.ct = compute_dtype(dtype)
        self.cols = torch.tensor([int(c) for c in EXTRAPOLATION_COLS], device=self.device)
        N = base_plan.steps
        self.T0 = torch.zeros((N, NCOLS), dtype=self.ct, device=self.device)
        self.T1 = torch.zeros_like(self.T0)
        rows = torch.tensor(self.skip, device=self.device)
        r0 = torch.as_tensor(R0, dtype=self.ct, device=self.device)
        r1 = torch.as_tensor(R1, dtype=self.ct, device=self.device)
        self.T0[rows[:, None], self.cols[None, :]] = r0
        self.T1[rows[:, None], self.cols[None, :]] = r1
        both = ((r0 != 0) | (r1 != 0)).cpu()
        self.reads = [extrapolation_reads(both[k]) for k in range(len(self.skip))]
        self.calls = 0
        self._walks: dict = {}

    @property
    def K(self) -> int:
        return len(self.skip)

    def _walk(self, template: torch.Tensor) -> Walk:
        """The base plan's walk for states shaped like ``template`` (model outputs are checked for
        shape, dtype and device; their values once, on the endpoint)."""
        key = tuple(template.shape)
        if key not in self._walks:
            self._walks[key] = Walk(self.plan, self.models, template, ops=self.ops, model_kwargs=self.kwargs,
                                    check_finite="off")
        return self._walks[key]

    def calls_from(self, step: int) -> int:
        """Model calls of a (non-fitting) walk from ``step`` to the end."""
        return sum(1 for i in range(step, self.plan.steps) if i not in self.index)

    @torch.no_grad()  # trainable model weights: the walk keeps no autograd graph
    def run(self, noise: torch.Tensor | None = None, weights: torch.Tensor | None = None, *,
            fit: tuple | None = None, start: Checkpoint | None = None,
            keep_checkpoints: bool = False) -> WalkResult:
        """Walk from ``noise`` (or from checkpoint ``start``) to the end.

        ``weights``: ``[K]`` (device); required unless ``fit=(lo, hi)``, which fits every weight
        from ``start`` on (weights before ``start`` are taken from ``weights``).
        """
        if fit is None and weights is None:
            raise ValueError("give weights, or fit=(lo, hi) to fit them")
        W = torch.ones(self.K, dtype=self.ct, device=self.device) if weights is None else \
            weights.to(self.ct).clone()
        walk = self._walk(noise if start is None else start.x)
        if start is None:
            walk.load(noise)
            s = 0
        else:
            s = start.step
            walk.state(s).copy_(start.x)
            walk.state(s + 1).copy_(start.x_prev)
            walk.hist.copy_(start.hist)
        work = self.T0.clone()
        result = WalkResult(None, W)
        stats = []
        scratch = [torch.empty_like(walk.xs[0]) for _ in range(3)] if fit is not None else None
        for i in range(s, self.plan.steps):
            k = self.index.get(i)
            if k is None:
                walk.step(i)
                self.calls += 1
                continue
            x, xp = walk.state(i), walk.state(i + 1)
            if keep_checkpoints:
                result.checkpoints[k] = Checkpoint(i, x.clone(), xp.clone(), walk.hist.clone())
            if fit is not None:
                stats.append(self._fit_step(walk, i, k, W, fit, scratch))
            work[i, self.cols] = self.T0[i, self.cols] + W[k] * self.T1[i, self.cols]
            self.ops.extrapolate_step(x, xp, walk.hist, work, i, xp, reads=self.reads[k])
        x = walk.finish().clone()
        if not bool(torch.isfinite(x).all()):  # one host check, after the loop
            raise NonFiniteError("the LTC walk produced NaN or Inf (a model output or an extrapolation "
                                 "diverged)")
        result.x = x
        if stats:
            B = x.shape[0]
            dots, res, tra = (torch.stack(v).double().cpu() for v in zip(*stats))
            result.dots, result.residual, result.transition = dots, res.reshape(-1, B), tra.reshape(-1, B)
        return result

    def _fit_step(self, walk: Walk, i, k, W, bounds, scratch):
        base, dirn, star = scratch
        ops, x, xp, hist = self.ops, walk.state(i), walk.state(i + 1), walk.hist
        ops.extrapolate_step(x, xp, hist, self.T0, i, base, reads=self.reads[k])
        ops.extrapolate_step(x, xp, hist, self.T1, i, dirn, reads=self.reads[k])
        walk.advance(i, walk.call(i), out=star)                         # the true next state x*
        self.calls += 1
        dots = ops.transition_dots(base, base - dirn, star)            # [B, 2]: <dir, r>, <dir, dir>
        num, den = dots.to(self.ct).sum(0)
        w = torch.where(den > 0, num / den.clamp_min(torch.finfo(self.ct).tiny), torch.ones_like(num))
        W[k] = w.clamp(bounds[0], bounds[1])
        B = x.shape[0]
        ct = torch.float64
        r = (star.to(ct) - base.to(ct)).reshape(B, -1)
        d = dirn.to(ct).reshape(B, -1)
        residual = ((r - W[k].to(ct) * d) ** 2).sum(1)
        transition = ((star.to(ct) - x.to(ct)).reshape(B, -1) ** 2).sum(1)
        return dots, residual, transition
