"""The plan walk: the one place a step of a compiled plan is taken.

A :class:`Walk` owns everything a step touches, allocated once for one shape, dtype and device:

    xs[2]      [B, *S]      state; step i reads xs[i % 2] and writes xs[(i + 1) % 2] (which held x_{i-1},
                            the previous state an extrapolation needs)
    hist       [H, B, *S]   clean estimates; D_j in slot j % H (H = HISTORY_SLOTS)
    coefs      [N, NCOLS]   the plan's coefficient table, compute dtype (:func:`ltc.ops.contract.compute_dtype`)
    timesteps  [N]          the model time input of every step, compute dtype
    step_ids   [N]          int64 step indices on the device (the value a finite record writes)
    first_bad  0-d int64    first step whose model output was not finite (-1: none), ``check_finite="end"``

and the step itself: the model input (``[x; x]`` under classifier-free guidance, times expanded to
the batch), the model call, the output checks (shape, dtype, device; NaN/Inf per ``check_finite``)
and :meth:`Walk.advance` (the step operation of the plan's row i).  The eager executor, the
captured (graph) walk, :class:`ltc.Stepper` and the LTC calibration walk are all built on it.

``check_finite``: ``"step"`` copies one flag to the host after every model call and raises at
once; ``"end"`` records the first bad step on the device (no sync) and :meth:`Walk.finish`
raises after the loop; ``"off"`` checks nothing.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..models import Model, check_output
from ..ops.contract import HISTORY_SLOTS
from ..plan import EXTRAPOLATE, Plan

CHECK_FINITE = ("auto", "step", "end", "off")


class NonFiniteError(ValueError):
    """A model returned NaN or Inf."""


class Expected(NamedTuple):
    """Shape, dtype and device a model output must have (what :func:`ltc.models.check_output` reads)."""

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device


def check_finite_mode(check_finite: str, device: torch.device) -> str:
    """The validated mode, ``"auto"`` resolved: ``"end"`` on CUDA, ``"step"`` elsewhere."""
    if check_finite not in CHECK_FINITE:
        raise ValueError(f"check_finite must be one of {CHECK_FINITE}, got {check_finite!r}")
    if check_finite == "auto":
        return "end" if torch.device(device).type == "cuda" else "step"
    return check_finite


def nonfinite_error(model: Model, step: int) -> NonFiniteError:
    return NonFiniteError(f"model {model.name!r} returned NaN or Inf at step {step}")


class Walk:
    """The buffers, tables and step of one walk of ``plan`` for states shaped like ``template``
    (``[B, *S]``; only its shape, dtype and device are used).

    ``models[k]`` is the :class:`ltc.Model` of model index k (the Stepper's never get called: they
    name the model in messages); ``ops`` is a step-op backend (:mod:`ltc.ops`); ``model_kwargs``
    go to every model call; ``generator`` draws the per-step noise of stochastic samplers.
    """

    def __init__(self, plan: Plan, models, template: torch.Tensor, *, ops, model_kwargs=None,
                 generator: torch.Generator | None = None, check_finite: str = "auto"):
        device, dtype = template.device, template.dtype
        self.plan, self.models, self.ops, self.generator = plan, list(models), ops, generator
        self.kwargs = model_kwargs or {}
        self.check_finite = check_finite_mode(check_finite, device)
        self.coefs = plan.coefficients(dtype, device)
        self.timesteps = plan.timesteps(dtype, device)
        self.step_ids = torch.arange(plan.steps, dtype=torch.long, device=device)
        self.xs = [torch.zeros_like(template), torch.zeros_like(template)]
        self.hist = torch.zeros((HISTORY_SLOTS, *template.shape), dtype=dtype, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device) if self.check_finite == "end" else None
        batch = template.shape[0] * (2 if plan.cfg else 1)
        self.expected = Expected(torch.Size((batch, *template.shape[1:])), dtype, device)
        self.where = None

    # -- state -----------------------------------------------------------------------------------
    def load(self, noise: torch.Tensor) -> None:
        """Start a run from ``noise`` (copied into ``xs[0]``; the finite record is cleared)."""
        self.xs[0].copy_(noise)
        if self.first_bad is not None:
            self.first_bad.fill_(-1)

    def state(self, i: int) -> torch.Tensor:
        """The state x_i before step ``i`` (after the last step: the sample)."""
        return self.xs[i % 2]

    # -- one step ------------------------------------------------------------------------------
    def model_input(self, i: int, t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, t)`` of step ``i``'s model call: ``[M, *S]`` and ``[M]`` (``M = 2B`` under guidance,
        the state twice; else ``B``).  ``t`` overrides the 0-d time (per-step graphs gather it)."""
        x = self.state(i)
        inp = torch.cat([x, x]) if self.plan.cfg else x
        t = self.timesteps[i] if t is None else t
        return inp, t.expand(self.expected.shape[0])

    def check(self, i: int, model_out, step_id: torch.Tensor | None = None) -> None:
        """Validate step ``i``'s model output: metadata always, values per ``check_finite``
        (``step_id``: the device value the ``"end"`` record writes, default ``step_ids[i]``)."""
        model = self.models[self.plan.models[i]]
        check_output(model_out, self.expected, i, model)
        if self.check_finite == "step" and not bool(torch.isfinite(model_out).all()):
            raise nonfinite_error(model, i)
        if self.first_bad is not None:
            step_id = self.step_ids[i] if step_id is None else step_id
            bad = (self.first_bad < 0) & ~torch.isfinite(model_out).all()
            self.first_bad.copy_(torch.where(bad, step_id, self.first_bad))

    def call(self, i: int, t: torch.Tensor | None = None, step_id: torch.Tensor | None = None) -> torch.Tensor:
        """Step ``i``'s model called on :meth:`model_input`, its output checked."""
        inp, times = self.model_input(i, t)
        out = self.models[self.plan.models[i]](inp, times, **self.kwargs)
        self.check(i, out, step_id)
        return out

    def advance(self, i: int, model_out: torch.Tensor | None = None, *, out: torch.Tensor | None = None,
                coefs: torch.Tensor | None = None, ops=None) -> None:
        """Take step ``i`` from ``xs[i % 2]`` into ``out`` (default ``xs[(i + 1) % 2]``, the buffer
        holding x_{i-1}), writing D_i to the history.

        An extrapolated step needs no ``model_out``; a model step takes the (checked) model output
        and draws the step's fresh noise z from ``generator`` when ``plan.noisy[i]``.  ``coefs``
        and ``ops`` override the plan's table and the backend (per-step graphs).
        """
        plan, ops, coefs = self.plan, ops or self.ops, self.coefs if coefs is None else coefs
        x = self.state(i)
        out = self.xs[(i + 1) % 2] if out is None else out
        if plan.models[i] == EXTRAPOLATE:
            ops.extrapolate_step(x, out, self.hist, coefs, i, out, reads=plan.history_reads[i])
            return
        z = None
        if plan.noisy[i]:
            gen_device = self.generator.device if self.generator is not None else x.device
            z = torch.randn(x.shape, generator=self.generator, device=gen_device, dtype=x.dtype).to(x.device)
        ops.model_step(x, model_out, self.hist, coefs, i, out, reads=plan.history_reads[i], cfg=plan.cfg, noise=z)

    def step(self, i: int, *, t: torch.Tensor | None = None, step_id: torch.Tensor | None = None,
             coefs: torch.Tensor | None = None, ops=None) -> None:
        """Step ``i`` whole: the model call and its checks (model steps), then :meth:`advance`.
        ``where`` names what runs, for the messages of a failed capture."""
        k, model_out = self.plan.models[i], None
        if k != EXTRAPOLATE:
            self.where = f"model {self.models[k].name!r} at step {i}"
            model_out = self.call(i, t, step_id)
        self.where = f"the step operation of step {i}"
        self.advance(i, model_out, coefs=coefs, ops=ops)

    def finish(self) -> torch.Tensor:
        """The sample (a view of the walk's buffer), after raising :class:`NonFiniteError` for the
        first bad step the ``"end"`` record holds (the one device-to-host copy of a walk)."""
        if self.first_bad is not None:
            bad_step = int(self.first_bad)
            if bad_step >= 0:
                raise nonfinite_error(self.models[self.plan.models[bad_step]], bad_step)
        return self.state(self.plan.steps)
