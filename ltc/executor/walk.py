"""The plan walk: the one place a step of a compiled plan is taken.

A :class:`Walk` owns everything a step touches, allocated once for one shape, dtype and device:

    xs[2]      [B, *S]      state; step i reads xs[i % 2] and writes xs[(i + 1) % 2] (which held x_{i-1},
                            the previous state an extrapolation needs)
    hist       [H, B, *S]   clean estimates; D_j in slot j % H (H = HISTORY_SLOTS)
    coefs      [N, NCOLS]   the plan's coefficient table, compute dtype (:func:`ltc.ops.contract.compute_dtype`)
    timesteps  [N]          the model time input of every step, compute dtype
    finite     [1] int32    ``check_finite="end"``: the "first bad step" word, 2 i + f of the first step i
                            that was not finite (f = 0: its model output, f = 1: what the step wrote),
                            INT32_MAX while every step was (:mod:`ltc.ops.reference`)

and the step itself: the model input (``[x; x]`` under classifier-free guidance, times expanded to
the batch), the model call, the output checks (shape, dtype, device; the model must not write its
inputs, which are the walk's own buffers), :meth:`Walk.advance` (the step operation of the plan's
row i) and the NaN/Inf checks per ``check_finite``.  The eager executor, the captured (graph)
walk, :class:`ltc.Stepper` and the LTC calibration walk are all built on it.

``check_finite`` covers every step, model step or extrapolated: what the step wrote (x_{i+1};
for an extrapolated step also D_i) and, for a model step, the model output.  ``"step"`` copies
one value to the host after every step (the sum of what it wrote: finite proves every element
finite, :func:`sum_is_finite`; else the exact check decides) and raises at once; ``"end"`` records the flags on the
device (no sync: a model step's op lowers the word itself, in its one launch; an extrapolated
step's check is separate) and :meth:`Walk.finish` raises after the loop (one copy of the word);
``"off"`` checks nothing.

The step ops are launched through the backend's ``unchecked`` entries (:mod:`ltc.ops.contract`)
after the first, checked, call of each op: the walk's buffers are its own and do not change, and
each model output is checked by :meth:`Walk.check` (shape, dtype, device).  Since the noise and every earlier step were finite, the first bad step's own
computation is the source, and the :class:`NonFiniteError` names it: the model (its output), the
guidance combine, the solver update at the schedule's noise levels, or the extrapolation (an LTC
weight) of that step.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..models import INPLACE_FIX, Model, check_output, half_batch_kwargs
from ..ops.contract import HISTORY_SLOTS, Col, compute_dtype
from ..ops.reference import FINITE_SENTINEL, record_first_bad
from ..plan import EXTRAPOLATE, Plan

CHECK_FINITE = ("auto", "step", "end", "off")
NO_BAD_STEP = FINITE_SENTINEL[torch.int32]  # the "end" word while every step was finite


class NonFiniteError(ValueError):
    """A step produced NaN or Inf: a model's output, or the step operation (the message says which)."""


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


def check_model_kwargs(model_kwargs) -> dict:
    """``model_kwargs`` as a dict (``{}`` for None): keyword arguments, so a dict with string keys."""
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict or None, got {type(model_kwargs).__name__}")
    for key in model_kwargs:
        if not isinstance(key, str):
            raise TypeError(f"model_kwargs keys are keyword argument names, so strings; got {key!r} "
                            f"({type(key).__name__})")
    return model_kwargs


def all_finite(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``isfinite(x).all()`` as a 0-d bool tensor (written into ``out`` if given), in three tensor
    operations where ``torch.isfinite`` takes four before the reduction: ``x - x`` is exactly 0
    where ``x`` is finite and NaN where it is NaN or +-Inf."""
    return torch.all(torch.eq(x - x, 0), out=out) if out is not None else torch.eq(x - x, 0).all()


def sum_is_finite(tensors) -> bool:
    """Whether the sum of all elements of ``tensors`` is finite, which proves that every element
    is: a sum with a NaN term is NaN and one with an infinite term is infinite or NaN, in any
    summation order (an infinity never cancels back to a finite value).  False proves nothing
    (finite values may overflow the sum): :func:`all_finite` decides then.  One reduction per
    tensor (accumulated in the compute dtype) and one host read; ``all_finite`` makes three
    passes and a ``[B, *S]`` bool temporary."""
    total = None
    for t in tensors:
        part = t.sum(dtype=compute_dtype(t.dtype))
        total = part if total is None else total + part
    return math.isfinite(total.item())


def check_like_state(where: str, value, state: torch.Tensor) -> None:
    """``value`` (described by ``where``) is a tensor with the walk state's shape, dtype and device."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where} is a {type(value).__name__}, expected a torch.Tensor")
    if value.shape != state.shape or value.dtype != state.dtype or value.device != state.device:
        raise ValueError(f"{where} has shape {tuple(value.shape)}, dtype {value.dtype}, device {value.device}; the "
                         f"walk's state has shape {tuple(state.shape)}, dtype {state.dtype}, device {state.device}")


def check_step_noise(step_noise, plan: Plan, x: torch.Tensor):
    """``step_noise`` checked for a walk of ``plan`` from states like ``x`` ``[B, *S]``: None, a
    ``[N, B, *S]`` tensor of x's dtype and device with finite values (N = plan rows), or a callable
    ``fn(i) -> [B, *S]`` (checked per step).  Refused for a plan that draws no noise (it would be
    ignored)."""
    if step_noise is None:
        return None
    if not any(plan.noisy):
        raise ValueError(f"step_noise is given but {plan.sampler!r} draws no noise on this plan; pass step_noise "
                         "only to stochastic samplers (e.g. dpmpp_2m_sde, euler_a, DDIM(eta=1))")
    if isinstance(step_noise, torch.Tensor):
        want = (plan.steps, *x.shape)
        if tuple(step_noise.shape) != want or step_noise.dtype != x.dtype or step_noise.device != x.device:
            raise ValueError(f"step_noise must be [N, B, *S] = {want} ({x.dtype} on {x.device}: one row of noise "
                             f"per plan row), got {tuple(step_noise.shape)} ({step_noise.dtype} on "
                             f"{step_noise.device})")
        if not bool(all_finite(step_noise)):
            raise ValueError("step_noise contains NaN or Inf")
        return step_noise
    if callable(step_noise):
        return step_noise
    raise TypeError(f"step_noise must be None, a tensor [N, B, *S] or a callable fn(i) -> [B, *S], got "
                    f"{type(step_noise).__name__}")


def check_conditioning(models, model_kwargs, batch: int, cfg: bool) -> None:
    """Under classifier-free guidance the model gets ``[x; x]`` (2B rows): a batched tensor in
    ``model_kwargs`` (nested dicts, lists and tuples too) with the B rows of ``x`` is refused, unless
    every model declares that keyword in ``half_batch_kwargs`` (:func:`ltc.models.half_batch_kwargs`)."""
    if not cfg or not model_kwargs:
        return
    for key, value in model_kwargs.items():
        rows = [v.shape[0] for v in _tensors(value) if v.ndim >= 1]
        if batch in rows and not all(key in half_batch_kwargs(m) for m in models):
            raise ValueError(
                f"model_kwargs[{key!r}] has a tensor with {batch} rows, but under classifier-free guidance the model "
                f"gets [x; x] ({2 * batch} rows, unconditional half first): pass model_kwargs for {2 * batch} rows, "
                "e.g. torch.cat([uncond, cond])")


def _tensors(value) -> list:
    """The tensors in ``value``, looking into dicts, lists and tuples (e.g. diffusers' added_cond_kwargs)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def nonfinite_error(model: Model, step: int, plan: Plan | None = None) -> NonFiniteError:
    """The model's output at ``step`` was not finite (its input was: every earlier step was checked)."""
    note = ""
    if plan is not None and step > 0 and plan.models[step - 1] == EXTRAPOLATE:
        note = (f" (its input x came from extrapolated step {step - 1}: if the model handles ordinary inputs, "
                f"check the LTC weight of step {step - 1})")
    return NonFiniteError(f"model {model.name!r} returned NaN or Inf at step {step}{note}")


def step_error(plan: Plan, models, step: int, dtype: torch.dtype, guidance: bool | None = None) -> NonFiniteError:
    """Step ``step`` turned finite inputs (and a finite model output) into NaN or Inf in ``dtype``
    storage: name the step's own source.  ``guidance``: whether the guidance combine itself was
    found to overflow (None: not known, the ``"end"`` record)."""
    row, g = plan.table[step], plan.grid
    arith = compute_dtype(dtype)
    where = f"{dtype} states, {arith} arithmetic"
    if plan.models[step] == EXTRAPOLATE:
        coefs = ", ".join(f"{c.name}={row[c]:.4g}" for c in (Col.EX, Col.EXP, Col.EH1, Col.EH2, Col.IN, Col.IC))
        return NonFiniteError(
            f"extrapolated step {step} (no model call) produced NaN or Inf from finite states ({where}): its "
            f"coefficients ({coefs}) come from the policy's LTC weight of step {step} (given, or loaded from a "
            "calibration file), which is too large; lower it, or extrapolate fewer steps")
    name = models[plan.models[step]].name
    levels = (f"alpha {g.alpha[step]:.4g} -> {g.alpha[step + 1]:.4g}, sigma {g.sigma[step]:.4g} -> "
              f"{g.sigma[step + 1]:.4g}; PX={row[Col.PX]:.4g}, PM={row[Col.PM]:.4g}, A={row[Col.A]:.4g}, "
              f"B0={row[Col.B0]:.4g}")
    head = f"step {step}: model {name!r} returned finite values, but the step operation turned them into NaN or Inf"
    update = f"the prediction conversion and {plan.sampler!r} update at the schedule's noise levels ({levels})"
    if plan.cfg and guidance:
        return NonFiniteError(
            f"{head} ({where}): classifier-free guidance m_u + G (m_c - m_u) with guidance_scale="
            f"{plan.guidance_scale!r} overflows (the step is finite with m_c alone); lower guidance_scale "
            "(or sample in float64)")
    if plan.cfg and guidance is None:
        return NonFiniteError(
            f"{head} ({where}): classifier-free guidance m_u + G (m_c - m_u) with guidance_scale="
            f"{plan.guidance_scale!r}, or {update}, overflows; a large guidance_scale is the usual cause: lower it "
            "(or sample in float64; check_finite='step' tells the two apart)")
    also = f" (guidance_scale={plan.guidance_scale!r} is not the cause: m_c alone overflows too)" if plan.cfg else ""
    return NonFiniteError(
        f"{head} ({where}){also}: {update} overflows with this output scale; check the schedule (or sample "
        "in float64)")


def input_modified_error(model: Model, step: int, what: str) -> ValueError:
    return ValueError(f"model {model.name!r} modified its input {what} in place at step {step}: {INPLACE_FIX}")


class Walk:
    """The buffers, tables and step of one walk of ``plan`` for states shaped like ``template``
    (``[B, *S]``; only its shape, dtype and device are used).

    ``models[k]`` is the :class:`ltc.Model` of model index k (the Stepper's never get called: they
    name the model in messages); ``ops`` is a step-op backend (:mod:`ltc.ops`); ``model_kwargs``
    go to every model call; ``generator`` draws the per-step noise z of stochastic samplers, or
    ``step_noise`` gives it: a ``[N, B, *S]`` tensor (row i is step i's z) or a callable
    ``fn(i) -> [B, *S]`` (e.g. to replay another library's draws exactly; :func:`check_step_noise`).
    """

    def __init__(self, plan: Plan, models, template: torch.Tensor, *, ops, model_kwargs=None,
                 generator: torch.Generator | None = None, check_finite: str = "auto", step_noise=None):
        device, dtype = template.device, template.dtype
        self.plan, self.models, self.ops, self.generator = plan, list(models), ops, generator
        self.step_noise = check_step_noise(step_noise, plan, template)
        self.kwargs = check_model_kwargs(model_kwargs)
        check_conditioning(self.models, self.kwargs, template.shape[0], plan.cfg)
        self.check_finite = check_finite_mode(check_finite, device)
        self.coefs = plan.coefficients(dtype, device)
        self.timesteps = plan.timesteps(dtype, device)
        self.xs = [torch.zeros_like(template), torch.zeros_like(template)]
        self.hist = torch.zeros((HISTORY_SLOTS, *template.shape), dtype=dtype, device=device)
        end = self.check_finite == "end"
        self.finite = torch.full((1,), NO_BAD_STEP, dtype=torch.int32, device=device) if end else None
        self._scratch = torch.empty_like(self.finite) if end else None  # per-step graphs: the op's own word
        self._true = torch.ones((), dtype=torch.bool, device=device) if end else None
        self._checked_ops: set[str] = set()  # ops called once through the checked entry
        self._rounded = dtype != compute_dtype(dtype)  # stores round the arithmetic: both outputs can overflow
        batch = template.shape[0] * (2 if plan.cfg else 1)
        self.expected = Expected(torch.Size((batch, *template.shape[1:])), dtype, device)
        self.where = None
        self._inputs = None  # (step, version of its state buffer, version of the times) at model_input

    # -- state -----------------------------------------------------------------------------------
    def load(self, noise: torch.Tensor) -> None:
        """Start a run from ``noise`` (copied into ``xs[0]``; the finite record is cleared)."""
        self.xs[0].copy_(noise)
        if self.finite is not None:
            self.finite.fill_(NO_BAD_STEP)

    def state(self, i: int) -> torch.Tensor:
        """The state x_i before step ``i`` (after the last step: the sample)."""
        return self.xs[i % 2]

    # -- one step ------------------------------------------------------------------------------
    def model_input(self, i: int, t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, t)`` of step ``i``'s model call: ``[M, *S]`` and ``[M]`` (``M = 2B`` under guidance,
        the state twice; else ``B``, the state buffer itself).  ``t`` overrides the 0-d time
        (per-step graphs gather it).  Both are the walk's buffers (or views of them): :meth:`check`
        refuses an output after they were written in place."""
        x = self.state(i)
        inp = torch.cat([x, x]) if self.plan.cfg else x
        t = self.timesteps[i] if t is None else t
        self._inputs = (i, x._version, self.timesteps._version)
        return inp, t.expand(self.expected.shape[0])

    def check(self, i: int, model_out) -> None:
        """Validate step ``i``'s model output before it is used: shape, dtype and device (host
        metadata), and that the state and times given by :meth:`model_input` were not written in
        place (version counters).  Values are checked by :meth:`advance`, per ``check_finite``."""
        model = self.models[self.plan.models[i]]
        if self._inputs is not None and self._inputs[0] == i:
            if self.state(i)._version != self._inputs[1]:
                raise input_modified_error(model, i, "x")
            if self.timesteps._version != self._inputs[2]:
                self.plan.evict(self.timesteps)  # the plan's cached times were written: never reuse them
                raise input_modified_error(model, i, "t")
        check_output(model_out, self.expected, i, model)

    def call(self, i: int, t: torch.Tensor | None = None) -> torch.Tensor:
        """Step ``i``'s model called on :meth:`model_input`, its output checked."""
        inp, times = self.model_input(i, t)
        model = self.models[self.plan.models[i]]
        version = inp._version
        out = model(inp, times, **self.kwargs)
        if inp is not self.state(i) and inp._version != version:  # the guided copy [x; x]: check() sees the rest
            raise input_modified_error(model, i, "x")
        self.check(i, out)
        return out

    def advance(self, i: int, model_out: torch.Tensor | None = None, *, out: torch.Tensor | None = None,
                coefs: torch.Tensor | None = None, ops=None, step_id: torch.Tensor | None = None) -> None:
        """Take step ``i`` from ``xs[i % 2]`` into ``out`` (default ``xs[(i + 1) % 2]``, the buffer
        holding x_{i-1}), writing D_i to the history, then check it per ``check_finite``.

        An extrapolated step needs no ``model_out``; a model step takes the (checked) model output
        and draws the step's fresh noise z from ``generator`` when ``plan.noisy[i]``.  ``coefs``
        and ``ops`` override the plan's table and the backend (per-step graphs); ``step_id`` is the
        device step index the ``"end"`` record writes at (per-step graphs; default: row ``i``).
        """
        plan, ops, coefs = self.plan, ops or self.ops, self.coefs if coefs is None else coefs
        x = self.state(i)
        out = self.xs[(i + 1) % 2] if out is None else out
        if plan.models[i] == EXTRAPOLATE:
            self._launch(ops, "extrapolate_step", x, out, self.hist, coefs, i, out, reads=plan.history_reads[i])
        else:
            z = self._noise(i, x) if plan.noisy[i] else None
            word = None
            if self.finite is not None:  # the op records a non-finite step in the word ("end")
                word = self.finite if step_id is None else self._scratch.fill_(NO_BAD_STEP)
            self._launch(ops, "model_step", x, model_out, self.hist, coefs, i, out, reads=plan.history_reads[i],
                         cfg=plan.cfg, noise=z, finite=word)
        if self.check_finite == "step":
            self._check_now(i, model_out, out)
        elif self.finite is not None:
            self._record(i, model_out, out, step_id)

    def _launch(self, ops, name: str, *args, **kwargs) -> None:
        """``ops.<name>(*args, **kwargs)``: through the checked entry the first time (it validates
        the walk's buffers for the backend), then through ``ops.unchecked`` where the backend offers
        it (the buffers do not change; :meth:`check` checked the model output)."""
        fast = getattr(ops, "unchecked", None)
        if fast is None or name not in self._checked_ops:
            getattr(ops, name)(*args, **kwargs)
            self._checked_ops.add(name)
        else:
            getattr(fast, name)(*args, **kwargs)

    def _noise(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Step ``i``'s fresh noise z, ``[B, *S]`` like ``x``: from ``step_noise`` or the generator."""
        if isinstance(self.step_noise, torch.Tensor):
            return self.step_noise[i]
        if self.step_noise is not None:
            z = self.step_noise(i)
            check_like_state(f"the tensor step_noise({i}) returned", z, x)
            if self.check_finite != "off" and not bool(all_finite(z)):
                raise NonFiniteError(f"step_noise({i}) returned NaN or Inf")
            return z
        gen_device = self.generator.device if self.generator is not None else x.device
        return torch.randn(x.shape, generator=self.generator, device=gen_device, dtype=x.dtype).to(x.device)

    def _written(self, i: int, model_out, out: torch.Tensor) -> list[torch.Tensor]:
        """What step ``i`` wrote that must be checked.  A model step's x_{i+1} carries its model
        output and D_i (x_{i+1} = ... + B0 D_i, D_i = PX x_i + PM m); an extrapolated step's
        D_i = IN x_{i+1} + IC x_i carries its x_{i+1}.  With float16/bfloat16 states each store
        rounds (and may overflow) on its own after the float32 arithmetic, so both are checked."""
        if model_out is not None and not self._rounded:
            return [out]
        d_i = self.hist[i % HISTORY_SLOTS]
        if not self._rounded:
            return [d_i]
        return [out, d_i]

    def _check_now(self, i: int, model_out, out: torch.Tensor) -> None:
        """``"step"``: one value to the host after every step, the sum of what the step wrote
        (finite: all finite, :func:`sum_is_finite`); else the exact check decides."""
        written = self._written(i, model_out, out)
        if not sum_is_finite(written) and not all(bool(all_finite(t)) for t in written):
            raise self._diagnose(i, model_out)

    def _record(self, i: int, model_out, out: torch.Tensor, step_id) -> None:
        """``"end"``, after step ``i`` (device work, no sync): a model step's op lowered the word
        itself (per-step graphs: its scratch word, recorded at step ``i % H`` of the ``[H, NCOLS]``
        rows, is moved to the device step ``step_id``); an extrapolated step's written tensors are
        checked here (f = 1: no model output)."""
        step = i if step_id is None else step_id
        if model_out is None:
            written = self._written(i, model_out, out)
            ok = all_finite(written[0])
            for t in written[1:]:
                ok = ok & all_finite(t)
            record_first_bad(self.finite, step, self._true, ok)
        elif step_id is not None:
            s = self._scratch
            moved = 2 * step_id.reshape(1).to(s.dtype) + s % 2
            torch.minimum(self.finite, torch.where(s == NO_BAD_STEP, s, moved), out=self.finite)

    def _diagnose(self, i: int, model_out) -> NonFiniteError:
        """Why step ``i`` (``"step"`` mode, its inputs finite) produced NaN or Inf: buffers still hold it."""
        plan = self.plan
        if model_out is None:
            return step_error(plan, self.models, i, self.expected.dtype)
        if not bool(all_finite(model_out)):
            return nonfinite_error(self.models[plan.models[i]], i, plan)
        return step_error(plan, self.models, i, self.expected.dtype, plan.cfg and self._fits_unguided(i, model_out))

    def _fits_unguided(self, i: int, model_out: torch.Tensor) -> bool:
        """Whether step ``i`` stays finite with the conditional output alone (m = m_c, as with
        guidance_scale = 1): then the guidance scale is what overflowed.  Runs the step op on copies."""
        m_c = model_out.chunk(2)[1]
        out, hist = torch.empty_like(self.state(i)), self.hist.clone()
        self.ops.model_step(self.state(i), torch.cat([m_c, m_c]), hist, self.coefs, i, out,
                            reads=self.plan.history_reads[i], cfg=True, noise=None)
        return bool(all_finite(out) & all_finite(hist[i % HISTORY_SLOTS]))

    def step(self, i: int, *, t: torch.Tensor | None = None, step_id: torch.Tensor | None = None,
             coefs: torch.Tensor | None = None, ops=None) -> None:
        """Step ``i`` whole: the model call and its checks (model steps), then :meth:`advance`.
        ``where`` names what runs, for the messages of a failed capture."""
        k, model_out = self.plan.models[i], None
        if k != EXTRAPOLATE:
            self.where = f"model {self.models[k].name!r} at step {i}"
            model_out = self.call(i, t)
        self.where = f"the step operation of step {i}"
        self.advance(i, model_out, coefs=coefs, ops=ops, step_id=step_id)

    def finish(self) -> torch.Tensor:
        """The sample (a view of the walk's buffer), after raising :class:`NonFiniteError` for the
        first bad step the ``"end"`` record holds (the one device-to-host copy of a walk)."""
        if self.finite is not None:
            word = int(self.finite.item())
            if word != NO_BAD_STEP:
                i, f = divmod(word, 2)
                k = self.plan.models[i]
                if k != EXTRAPOLATE and f == 0:
                    raise nonfinite_error(self.models[k], i, self.plan)
                raise step_error(self.plan, self.models, i, self.expected.dtype)
        return self.state(self.plan.steps)
