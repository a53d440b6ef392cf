"""``ltc.sample``: validate everything, compile the plan once, then walk it."""
from __future__ import annotations

from collections import OrderedDict

import torch

from . import graphs, ops
from .arguments import check_generator, initial_state, sampling_arguments
from .executor import CHECK_FINITE, SampleInfo
from .models import as_models
from .plan import Plan, compile_plan, fingerprint_of
from .policies import Policy
from .schedule import Schedule


_PLANS: "OrderedDict[str, Plan]" = OrderedDict()
PLAN_CACHE_SIZE = 64


def _cached_plan(schedule, steps, solver, policy, predictions, guidance_scale) -> Plan:
    """The compiled plan, from a small LRU cache keyed by what it is compiled from (the configs of
    schedule, sampler and policy identify them completely), so repeated calls skip compilation and
    reuse the plan's device coefficient tables."""
    key = fingerprint_of(schedule.config(), steps, solver.config(), policy.config(), predictions, guidance_scale)
    plan = _PLANS.get(key)
    if plan is None:
        plan = compile_plan(schedule.discretize(steps), solver, policy, predictions, guidance_scale)
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
           check_finite: str = "auto", graph="auto"):
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
            unconditional half first).
        guidance_scale: classifier-free guidance: the model is called once on ``[x; x]`` and
            ``m = m_u + g (m_c - m_u)`` is fused into the step.
        prediction: the prediction type of callables that do not declare one.
        progress: tqdm progress bar.  ``callback(dict)`` is called after every step (eager only).
        return_info: also return a :class:`ltc.executor.SampleInfo` (NFE per model, the plan, backend).
        backend: step-op backend (:mod:`ltc.ops`); ``check_finite``: ``"step"``, ``"end"``,
            ``"off"`` or ``"auto"`` (step on CPU, end on CUDA).
        graph: ``"auto"`` (CUDA: from the second call with the same plan, shapes and models,
            capture the whole walk as a CUDA graph and replay it; per-step graphs when it does
            not fit, eager with a warning when capture fails; CPU: eager), ``True`` (graphs from
            the first call, or an error), ``False`` (eager), ``"whole"`` or ``"step"``.  A
            callback or ``check_finite="step"`` means eager.  See :mod:`ltc.graphs`.

    Returns:
        ``[B, *S]`` samples (and the info when ``return_info``).
    """
    models = as_models(model_fns, prediction)
    policy, solver, guidance_scale = sampling_arguments(schedule, policy, sampler, guidance_scale)
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict or None, got {type(model_kwargs).__name__}")
    if check_finite not in CHECK_FINITE:
        raise ValueError(f"check_finite must be one of {CHECK_FINITE}, got {check_finite!r}")
    check_generator(generator, solver)
    plan = _cached_plan(schedule, steps, solver, policy, tuple(m.prediction for m in models), guidance_scale)
    grid = plan.grid
    x_init = initial_state(noise, shape, generator, dtype, device)
    backend_name, backend_ops = ops.resolve(backend, x_init.device)
    graphs.check_option(graph, x_init.device, callback, check_finite)
    check_models = getattr(policy, "check_models", None)  # e.g. TStitch: models agree, before sampling
    if check_models is not None:
        check_models(models, x_init, float(grid.t[0]), model_kwargs, cfg=plan.cfg)
    x, executor, graph_note = graphs.run(plan, models, x_init, graph=graph, ops=backend_ops, ops_name=backend_name,
                                         model_kwargs=model_kwargs, generator=generator, callback=callback,
                                         progress=progress, check_finite=check_finite)
    if not return_info:
        return x
    info = SampleInfo(nfe=plan.nfe, nfe_per_model=plan.nfe_per_model(),
                      model_names=[m.name for m in models], plan=plan, backend=backend_name, executor=executor)
    if graph_note:
        info.extra["graph"] = graph_note
    return x, info
