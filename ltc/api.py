"""``ltc.sample``: validate everything, compile the plan once, then walk it.

The argument checks that every entry point shares (``ltc.sample``, ``ltc.Stepper``,
``ltc.calibrate``, ``ltc.distributed.generate``) live here too, so all of them accept and refuse
the same inputs with the same messages, before any work starts.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from . import ops
from .executor import graph as graph_executor
from .executor.walk import check_conditioning, check_finite_mode, check_model_kwargs, check_step_noise
from .models import as_models
from .ops.contract import FLOAT_DTYPES
from .plan import Plan, compile_plan, fingerprint_of
from .policies import Full, Policy
from .samplers import Sampler, get_sampler
from .schedule import Schedule, check_bool, is_number


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


_PLANS: "OrderedDict[str, Plan]" = OrderedDict()
PLAN_CACHE_SIZE = 64


def _cached_plan(schedule, steps, solver, policy, predictions, guidance_scale) -> Plan:
    """The compiled plan, from a small LRU cache keyed by what it is compiled from (the configs of
    schedule, sampler and policy identify them completely), so repeated calls skip compilation and
    reuse the plan's device coefficient tables."""
    key = fingerprint_of(schedule.config(), steps, solver.config(), policy.config(), predictions, guidance_scale)
    plan = _PLANS.get(key)
    if plan is None:
        plan = compile_plan(solver.grid(schedule, steps), solver, policy, predictions, guidance_scale)
        _PLANS[key] = plan
        if len(_PLANS) > PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    else:
        _PLANS.move_to_end(key)
    return plan


def sample(model_fns, schedule: Schedule, policy: Policy | None = None, *, sampler="dpmpp_2m",
           steps: int | None = None, noise: torch.Tensor | None = None, shape=None,
           generator: torch.Generator | None = None, model_kwargs: dict | None = None,
           guidance_scale: float | None = None, prediction: str | None = None,
           dtype: torch.dtype | None = None, device=None, progress: bool = True,
           return_info: bool = False, callback=None, backend: str | None = None,
           check_finite: str = "auto", graph="auto", step_noise=None):
    """Sample by walking a static plan of ``steps`` steps from ``noise`` to the clean end.

    Args:
        model_fns: one callable or a sequence (small to large, for stitching); each
            ``fn(x, t, **model_kwargs) -> prediction`` (see :mod:`ltc.models`).
        schedule: an :class:`ltc.Schedule`.
        policy: :class:`ltc.policies.Full` (default), or an acceleration policy.
        sampler: ``"ddim"``, ``"euler"``, ``"dpmpp_1m"``, ``"dpmpp_2m"``, ``"dpmpp_3m"`` or a
            :class:`ltc.samplers.Sampler` (e.g. ``DDIM(eta=0.5)``; stochastic ones need ``generator``).
        steps: number of sampling steps N (``None`` only for explicit schedules).
        noise: the initial state ``[B, *S]`` (used as is, as in diffusers); or ``shape`` with
            ``generator`` to draw it.
        model_kwargs: passed to every model call (under guidance: for the doubled batch,
            unconditional half first; B-row tensors are refused unless the model declares them
            in ``half_batch_kwargs``, see :func:`ltc.models.half_batch_kwargs`).
        guidance_scale: classifier-free guidance: the model is called once on ``[x; x]`` and
            ``m = m_u + g (m_c - m_u)`` is fused into the step.
        prediction: the prediction type of callables that do not declare one.
        progress: tqdm progress bar.
        callback: ``callback(info)`` after every step, eager only (with a callback ``graph="auto"``
            samples eagerly and ``graph=True`` is an error).  ``info`` holds copies of the new
            state ``x`` and the step's clean estimate ``denoised``, and ``step``, ``steps``, ``t``,
            ``sigma``, ``sigma_next``, ``model``.  It steers by what it returns: ``None`` (go on),
            a tensor (the state to continue from, same shape/dtype/device) or a dict
            ``{"x": tensor, "stop": True}`` (either key; ``stop`` ends sampling after this step and
            returns that state).  See :mod:`ltc.executor.eager`.
        step_noise: the fresh noise of a stochastic sampler's steps, given instead of drawn from
            ``generator``: a ``[N, B, *S]`` tensor (row i for plan row i) or ``fn(i) -> [B, *S]``,
            e.g. diffusers' draws to reproduce its samples exactly.  Eager only (like ``callback``).
        return_info: also return a :class:`SampleInfo` (NFE per model, the plan, backend).
        backend: step-op backend (:mod:`ltc.ops`); ``check_finite``: ``"step"``, ``"end"``,
            ``"off"`` or ``"auto"`` (step on CPU, end on CUDA).
        graph: ``"auto"`` (CUDA: from the second call with the same plan, shapes and models,
            capture the whole walk as a CUDA graph and replay it; per-step graphs when it does
            not fit, eager with a warning when capture fails; CPU: eager), ``True`` (graphs from
            the first call, or an error), ``False`` (eager), ``"whole"`` or ``"step"``.  A
            callback or ``check_finite="step"`` means eager.  See :mod:`ltc.executor.graph`.

    Returns:
        ``[B, *S]`` samples (and the info when ``return_info``).
    """
    models = as_models(model_fns, prediction)
    policy, solver, guidance_scale = sampling_arguments(schedule, policy, sampler, guidance_scale)
    check_model_kwargs(model_kwargs)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (it gets a dict after every step) or None, got {callback!r}")
    check_bool("progress", progress)
    check_bool("return_info", return_info)
    check_finite_mode(check_finite, "cpu")  # validated here, resolved for the device by the walk
    check_generator(generator, solver, step_noise)
    plan = _cached_plan(schedule, steps, solver, policy, tuple(m.prediction for m in models), guidance_scale)
    grid = plan.grid
    x_init = initial_state(noise, shape, generator, dtype, device)
    check_before_calls(plan, models, x_init, model_kwargs)
    check_step_noise(step_noise, plan, x_init)
    backend_name, backend_ops = ops.resolve(backend, x_init.device)
    graph_executor.check_option(graph, x_init.device, callback, check_finite, step_noise)
    check_sampling = getattr(policy, "check_sampling", None)  # e.g. a calibrated LTC: fitted on this run?
    if check_sampling is not None:
        check_sampling(plan, x_init, models)
    check_models = getattr(policy, "check_models", None)  # e.g. TStitch: models agree, before sampling
    if check_models is not None:
        check_models(models, x_init, float(grid.t[0]), model_kwargs, cfg=plan.cfg)
    x, executor, graph_note = graph_executor.run(plan, models, x_init, graph=graph, ops=backend_ops, ops_name=backend_name,
                                         model_kwargs=model_kwargs, generator=generator, callback=callback,
                                         progress=progress, check_finite=check_finite, step_noise=step_noise)
    if not return_info:
        return x
    info = SampleInfo(nfe=plan.nfe, nfe_per_model=plan.nfe_per_model(),
                      model_names=[m.name for m in models], plan=plan, backend=backend_name, executor=executor)
    if graph_note:
        info.extra["graph"] = graph_note
    return x, info


# -- the argument checks shared by every entry point --------------------------------------------


def sampling_arguments(schedule, policy, sampler, guidance_scale) -> tuple[Policy, Sampler, float | None]:
    """``(policy, sampler, guidance_scale)`` checked and normalised: ``policy=None`` is
    :class:`~ltc.policies.Full`, a sampler name becomes a :class:`~ltc.samplers.Sampler`, the
    guidance scale a float (or None)."""
    if not isinstance(schedule, Schedule):
        hint = ("; for a diffusers scheduler use ltc.adapters.diffusers.schedule_from_diffusers(scheduler, steps) "
                "(and sampler_from_diffusers)" if hasattr(schedule, "set_timesteps") else "")
        raise TypeError(f"schedule must be an ltc.Schedule (e.g. Schedule.vp(...)), got "
                        f"{type(schedule).__name__}{hint}")
    policy = Full() if policy is None else policy
    if not isinstance(policy, Policy):
        hint = f"; pass an instance, e.g. {policy.__name__}(...)" if isinstance(policy, type) else ""
        raise TypeError(f"policy must be an ltc.policies.Policy, got {type(policy).__name__}{hint}")
    solver = get_sampler(sampler)
    if guidance_scale is not None:
        if not is_number(guidance_scale) or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number or None, got {guidance_scale!r}")
        guidance_scale = float(guidance_scale)
    return policy, solver, guidance_scale


def check_before_calls(plan: Plan, models, x: torch.Tensor, model_kwargs) -> None:
    """What can be refused before the first model call of ``plan`` from ``x`` ``[B, *S]``: the plan's
    tables in the walk's compute dtype (:meth:`Plan.coefficients`), and under classifier-free
    guidance conditioning for B rows where the model gets 2B (see :func:`ltc.models.half_batch_kwargs`)."""
    plan.coefficients(x.dtype, x.device)
    plan.timesteps(x.dtype, x.device)
    check_conditioning(models, model_kwargs, x.shape[0], plan.cfg)


def check_generator(generator, solver: Sampler, step_noise=None) -> None:
    """A generator is a ``torch.Generator`` or None; a stochastic sampler needs one (or ``step_noise``)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if solver.stochastic and generator is None and step_noise is None:
        raise ValueError(f"sampler {solver!r} draws noise every step: pass generator= for reproducible "
                         "samples (or step_noise= with the noise of every step)")


def check_noise(noise) -> None:
    """An initial state is a finite floating tensor ``[B, *S]`` (one host check of its values)."""
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise must be a torch.Tensor [B, *S], got {type(noise).__name__}")
    if noise.dtype not in FLOAT_DTYPES:
        raise TypeError(f"noise must have a floating dtype in {FLOAT_DTYPES}, got {noise.dtype}")
    if noise.device.type == "meta":
        raise ValueError("noise is a meta tensor (a shape without data): sampling needs real values; create it "
                         "on a real device (e.g. torch.randn(shape, device='cpu'))")
    if noise.dim() < 2:
        raise ValueError(f"noise must be [B, *S] with at least 2 dims, got shape {tuple(noise.shape)}")
    if not bool(torch.isfinite(noise).all()):
        raise ValueError("noise contains NaN or Inf")


def initial_state(noise, shape, generator, dtype, device):
    """The validated initial state ``[B, *S]``: ``noise`` as given, or drawn with ``shape`` from
    ``generator`` (``dtype`` default float32, ``device`` default CPU).  Shared by :func:`sample`
    and :func:`ltc.calibrate` so both accept and refuse the same inputs."""
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if noise is not None:
        if shape is not None:
            raise ValueError("give either noise or shape, not both")
        check_noise(noise)
        if dtype is not None and noise.dtype != dtype:
            raise ValueError(f"noise has dtype {noise.dtype} but dtype={dtype} was requested")
        if device is not None and noise.device != torch.device(device):
            raise ValueError(f"noise is on {noise.device} but device={device} was requested")
        return noise
    if shape is None:
        raise ValueError("give noise (a tensor) or shape (and a generator for reproducibility)")
    if not (isinstance(shape, (tuple, list, torch.Size)) and len(shape) >= 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ValueError(f"shape must be a tuple of >= 2 positive ints [B, *S], got {shape!r}")
    dtype = dtype or torch.float32
    try:
        device = torch.device(device) if device is not None else torch.device("cpu")
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch.device or a string such as 'cpu' or 'cuda:0', "
                         f"got {device!r}") from None
    if device.type == "meta":
        raise ValueError("device='meta' holds no data: sampling needs real values; use a real device")
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)
