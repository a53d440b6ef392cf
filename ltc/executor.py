"""The eager executor: walks a compiled plan, one model call or extrapolation per step.

State lives in static buffers: two state buffers used alternately (step i reads ``xs[i % 2]``
and writes ``xs[(i + 1) % 2]``, which held x_{i-1}, the previous state an extrapolation needs)
and the clean-estimate history ``hist[3, B, *S]``.  Every decision was made when the plan was
compiled; the loop only reads the plan's host tuples and indexes its device table.  No value is
copied to the host inside the loop, except by ``check_finite="step"`` (the CPU default), which
stops at the first non-finite model output; on CUDA the default ``"end"`` keeps a device-side
record of the first bad step and raises once after the loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .models import Model, check_output
from .plan import EXTRAPOLATE, HISTORY_SLOTS, Plan

CHECK_FINITE = ("auto", "step", "end", "off")


@dataclass
class SampleInfo:
    """What :func:`ltc.sample` reports with ``return_info=True``."""

    nfe: int
    nfe_per_model: list
    model_names: list
    plan: Plan
    backend: str
    executor: str = "eager"
    extra: dict = field(default_factory=dict)


class NonFiniteError(ValueError):
    """A model returned NaN or Inf."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype of the step operations for a storage dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _nonfinite_message(model: Model, step: int) -> str:
    return f"model {model.name!r} returned NaN or Inf at step {step}"


def advance(plan: Plan, i: int, x: torch.Tensor, out: torch.Tensor, hist: torch.Tensor, coefs: torch.Tensor,
            ops, model_out: torch.Tensor | None = None, generator: torch.Generator | None = None) -> None:
    """Take step ``i`` of ``plan`` from state ``x`` into ``out`` (the buffer holding x_{i-1}).

    An extrapolated step needs no ``model_out``; a model step takes the (validated) model output
    and draws the step's fresh noise z from ``generator`` when ``plan.noisy[i]``.  The one place
    a step is taken: :func:`run_eager` and :class:`ltc.Stepper` both call it.
    """
    if plan.models[i] == EXTRAPOLATE:
        ops.extrapolate_step(x, out, hist, coefs, i, out, reads=plan.history_reads[i])
        return
    z = None
    if plan.noisy[i]:
        gen_device = generator.device if generator is not None else x.device
        z = torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
    ops.model_step(x, model_out, hist, coefs, i, out, reads=plan.history_reads[i], cfg=plan.cfg, noise=z)


def run_eager(plan: Plan, models: list[Model], noise: torch.Tensor, *, ops, model_kwargs=None,
              generator: torch.Generator | None = None, callback=None, progress: bool = False,
              check_finite: str = "auto") -> torch.Tensor:
    """Sample from ``noise`` (``[B, *S]``, the state at the first grid point) along ``plan``.

    ``ops`` is a backend module of :mod:`ltc.ops`.  Returns a new ``[B, *S]`` tensor.
    """
    kwargs = model_kwargs or {}
    device, dtype = noise.device, noise.dtype
    if check_finite == "auto":
        check_finite = "end" if device.type == "cuda" else "step"
    coefs = plan.coefficients(compute_dtype(dtype), device)
    t_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    timesteps = plan.timesteps(t_dtype, device)
    xs = [noise.clone(), torch.empty_like(noise)]
    hist = torch.empty((HISTORY_SLOTS, *noise.shape), dtype=dtype, device=device)
    batch = noise.shape[0] * (2 if plan.cfg else 1)
    first_bad = torch.full((), -1, dtype=torch.long, device=device) if check_finite == "end" else None

    steps = range(plan.steps)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="ltc.sample", leave=False)
    for i in steps:
        x, out = xs[i % 2], xs[(i + 1) % 2]
        k = plan.models[i]
        if k == EXTRAPOLATE:
            advance(plan, i, x, out, hist, coefs, ops)
        else:
            model = models[k]
            inp = torch.cat([x, x]) if plan.cfg else x
            pred = model(inp, timesteps[i].expand(batch), **kwargs)
            check_output(pred, inp, i, model)
            if check_finite == "step" and not bool(torch.isfinite(pred).all()):
                raise NonFiniteError(_nonfinite_message(model, i))
            if first_bad is not None:
                bad = (first_bad < 0) & ~torch.isfinite(pred).all()
                first_bad = torch.where(bad, torch.full_like(first_bad, i), first_bad)
            advance(plan, i, x, out, hist, coefs, ops, pred, generator)
        if callback is not None:
            # copies: the buffers are reused two steps later, a callback may keep what it gets
            callback({"step": i, "x": out.clone(), "t": plan.grid.t[i], "sigma": plan.grid.sigma[i],
                      "sigma_next": plan.grid.sigma[i + 1], "denoised": hist[i % HISTORY_SLOTS].clone(),
                      "model": None if k == EXTRAPOLATE else models[k].name})
    if first_bad is not None:
        bad_step = int(first_bad)  # the one device->host copy, after the loop
        if bad_step >= 0:
            raise NonFiniteError(_nonfinite_message(models[plan.models[bad_step]], bad_step))
    return xs[plan.steps % 2]
