"""``ltc.Stepper``: the plan walk turned inside out, for sampling loops the library does not own.

The caller keeps its loop and makes every model call itself; the stepper owns the state and the
compiled plan and tells the caller what to evaluate::

    st = ltc.Stepper(schedule, policy, sampler="dpmpp_2m", steps=20, noise=x_T, predictions="eps")
    while not st.done:
        x_in, t, k = st.request()          # model input [B|2B, *S], times [B|2B], model index k
        st.step(models[k](x_in, t))        # -> the next state (also st.x)
    x0 = st.x

A plan step ``i`` is either a model step or an extrapolated step (:mod:`ltc.plan`).  Extrapolated
steps never reach the caller: :meth:`Stepper.step` takes the model step and then every
extrapolated step that follows it, so after it returns, ``st.x`` is the state where the next model
call is needed (or the final sample).  The first plan step is never extrapolated, so
:meth:`request` has no side effects and may be called again.

Every step goes through :meth:`ltc.executor.walk.Walk.advance` with the plan's device coefficient table and
the same state/history buffers as :func:`ltc.executor.eager.run_eager`, so for the same noise (and
generator, for stochastic samplers) the result equals :func:`ltc.sample` bit for bit.  Model outputs
are validated as in the executor: shape, dtype and device at every step (host metadata only), and
non-finite values per ``check_finite`` (``"step"``: a host check each step, the CPU default;
``"end"``: a device-side record of the first bad step, raised once when the walk finishes, the
CUDA default; ``"off"``).  Nothing else copies a value to the host.

Under classifier-free guidance (``guidance_scale``) :meth:`request` returns ``[x; x]`` and the
caller returns the model output on the doubled batch, unconditional half first.  The stepper never
sees the models, so checks that need them (T-Stitch's compatibility probe, which
:func:`ltc.sample` runs) are the caller's: :func:`ltc.policies.check_compatible`; a calibrated
LTC policy's guidance scale and sample shape are checked here against what the calibration was
fitted on (:meth:`ltc.Calibration.check_models`), and its models too when ``predictions`` gives
the models themselves rather than prediction-type strings.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from . import ops
from .api import check_generator, check_noise, sampling_arguments
from .executor.walk import Walk, check_finite_mode
from .models import PREDICTIONS, Model, canonical, default_name
from .plan import EXTRAPOLATE, Plan, compile_plan
from .policies import Policy
from .schedule import Schedule


class StepRequest(NamedTuple):
    """What the caller evaluates: ``model_index``'s output at ``x`` ``[M, *S]`` and times ``t`` ``[M]``
    (``M = 2B`` under guidance, unconditional half first; else ``M = B``)."""

    x: torch.Tensor
    t: torch.Tensor
    model_index: int


def _prediction_names(predictions) -> list[str]:
    """One prediction type per model: from a string, or a sequence of strings / objects with ``.prediction``."""
    if isinstance(predictions, (str, Model)) or callable(predictions):
        predictions = [predictions]
    if not isinstance(predictions, Sequence) or isinstance(predictions, bytes) or len(predictions) == 0:
        raise TypeError("predictions must be a prediction type (e.g. 'eps'), an ltc.Model, or a non-empty "
                        f"sequence of them (one per model index), got {type(predictions).__name__}")
    names = []
    for k, p in enumerate(predictions):
        declared = p if isinstance(p, str) else getattr(p, "prediction", None)
        if not isinstance(declared, str):
            raise TypeError(f"predictions[{k}] must be a prediction type in {PREDICTIONS} or a model with a "
                            f"'prediction' attribute, got {type(p).__name__}")
        names.append(canonical(declared))
    return names


def _model_names(predictions, count: int) -> list[str]:
    """Each model index's name in messages: as :func:`ltc.sample` names it for a model or callable
    (:func:`ltc.models.default_name`), ``"model k"`` for a bare prediction type."""
    items = predictions if isinstance(predictions, Sequence) and not isinstance(predictions, str) else [predictions]
    return [f"model {k}" if isinstance(p, str) else default_name(p) for k, p in zip(range(count), items)]


def _given_models(predictions, preds: list[str], names: list[str]) -> list[Model] | None:
    """The models, when ``predictions`` gives a model or callable for every index (else None)."""
    items = predictions if isinstance(predictions, Sequence) and not isinstance(predictions, str) else [predictions]
    if any(isinstance(p, str) for p in items):
        return None
    return [p if isinstance(p, Model) else Model(p, pred, name) for p, pred, name in zip(items, preds, names)]


class Stepper:
    """Walk a compiled plan one model call at a time, the caller making the calls.

    Args:
        schedule: an :class:`ltc.Schedule`.
        policy: :class:`ltc.policies.Full` (default) or any policy (T-Stitch, LTC, ...).
        sampler: a name in :data:`ltc.samplers.SAMPLER_NAMES` or a :class:`ltc.samplers.Sampler`.
        steps: number of sampling steps N (``None`` only for explicit schedules).
        noise: the initial state ``[B, *S]`` (copied; never modified).
        predictions: the prediction type of each model index: one string (one model), or a
            sequence of strings or of :class:`ltc.Model` / callables with a ``prediction`` attribute.
        guidance_scale: classifier-free guidance scale G (``m = m_u + G (m_c - m_u)``), or ``None``.
        generator: the generator of the per-step noise of stochastic samplers (required for them),
            or ``step_noise``: that noise given, ``[N, B, *S]`` or ``fn(i) -> [B, *S]`` (as in :func:`ltc.sample`).
        backend: step-op backend (:mod:`ltc.ops`); ``check_finite``: see the module docstring.
        progress: a tqdm progress bar over the model calls, advanced by :meth:`step` and closed
            when the walk is done (off by default: the loop, and its progress bar, are the caller's).

    Attributes: ``plan`` (the compiled :class:`ltc.Plan`), ``step_index`` (the next plan step),
    ``x`` (the current state), ``done``, ``backend``.
    """

    def __init__(self, schedule: Schedule, policy: Policy | None = None, *, sampler="dpmpp_2m",
                 steps: int | None = None, noise: torch.Tensor, predictions,
                 guidance_scale: float | None = None, generator: torch.Generator | None = None,
                 backend: str | None = None, check_finite: str = "auto", progress: bool = False, step_noise=None):
        policy, solver, guidance_scale = sampling_arguments(schedule, policy, sampler, guidance_scale)
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True or False, got {progress!r}")
        preds = _prediction_names(predictions)
        check_noise(noise)
        check_finite = check_finite_mode(check_finite, noise.device)
        check_generator(generator, solver, step_noise)

        self.plan: Plan = compile_plan(solver.grid(schedule, steps), solver, policy, preds, guidance_scale)
        names = _model_names(predictions, len(preds))
        check_sampling = getattr(policy, "check_sampling", None)  # a calibrated LTC: fitted on this run?
        if check_sampling is not None:
            check_sampling(self.plan, noise, _given_models(predictions, preds, names))
        self.backend, backend_ops = ops.resolve(backend, noise.device)
        models = [Model(_no_call, p, n) for p, n in zip(preds, names)]
        self._walk = Walk(self.plan, models, noise, ops=backend_ops, generator=generator, check_finite=check_finite,
                          step_noise=step_noise)
        self._walk.load(noise)
        self._i = 0
        self._bar = tqdm(total=self.plan.nfe, desc="ltc.Stepper", leave=False) if progress else None

    # -- state --------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """Whether every plan step has been taken (``x`` is then the sample)."""
        return self._i == self.plan.steps

    @property
    def step_index(self) -> int:
        """Index ``i`` of the next plan step (``plan.steps`` when done)."""
        return self._i

    @property
    def x(self) -> torch.Tensor:
        """The current state ``[B, *S]``: a view of the stepper's buffer, overwritten two plan steps
        later -- ``.clone()`` it to keep it."""
        return self._walk.state(self._i)

    @property
    def model_calls_left(self) -> int:
        """Model calls still to make (a progress-bar total)."""
        return sum(m != EXTRAPOLATE for m in self.plan.models[self._i:])

    def load_state(self, x: torch.Tensor) -> None:
        """Continue from ``x`` (``[B, *S]``, the state's shape, dtype and device; copied) in place of
        the current state, keeping the past (clean estimates, previous state), as a callback's
        returned tensor does in :func:`ltc.sample`: e.g. a pipeline that edits its latents between
        steps (inpainting masks).  A no-op copy when ``x`` is the current state itself."""
        if self.done:
            raise RuntimeError("the stepper is done: all steps were taken; read .x")
        state = self.x
        if not isinstance(x, torch.Tensor) or x.shape != state.shape or x.dtype != state.dtype \
                or x.device != state.device:
            got = f"{tuple(x.shape)}, {x.dtype} on {x.device}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"load_state needs a tensor shaped like the state, {tuple(state.shape)}, {state.dtype} "
                             f"on {state.device}; got {got}")
        if x.data_ptr() != state.data_ptr():
            state.copy_(x)

    # -- the walk -----------------------------------------------------------------------------
    def request(self) -> StepRequest:
        """The model call the next step needs: ``(x_input, t, model_index)`` (no side effects)."""
        if self.done:
            raise RuntimeError("the stepper is done: all steps were taken; read .x")
        x, t = self._walk.model_input(self._i)
        return StepRequest(x, t, self.plan.models[self._i])

    def step(self, model_output: torch.Tensor) -> torch.Tensor:
        """Take the model step with ``model_output`` (for the input of :meth:`request`), then every
        extrapolated step after it.  Returns the new current state (``self.x``)."""
        if self.done:
            raise RuntimeError("the stepper is done: all steps were taken; read .x")
        self._walk.check(self._i, model_output)
        with torch.no_grad():  # the step keeps no autograd graph, whatever the model output carries
            self._advance(model_output)
            while not self.done and self.plan.models[self._i] == EXTRAPOLATE:
                self._advance(None)
        if self._bar is not None:
            self._bar.update(1)
            if self.done:
                self._bar.close()
        return self._walk.finish() if self.done else self.x

    def _advance(self, model_output) -> None:
        self._walk.advance(self._i, model_output)
        self._i += 1

    def __repr__(self) -> str:
        return f"Stepper(step {self._i}/{self.plan.steps}, {self.plan.describe()})"


def _no_call(x, t):  # pragma: no cover - the stepper's Model objects only name models in messages
    raise RuntimeError("the stepper never calls a model; the caller does")
