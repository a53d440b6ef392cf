"""diffusers grids and samplers: an ltc schedule, sampler and prediction type from a diffusers scheduler.

Needs the ``diffusers`` extra (in the README's install command, or ``pip install diffusers``); the
rest of ltc never imports it.

* :func:`schedule_from_diffusers` -- the grid of a scheduler's ``set_timesteps(steps)``, read from
  the scheduler itself (its ``timesteps``, ``sigmas`` / ``alphas_cumprod``) as an
  :class:`ltc.schedule.ExplicitSchedule`, so ltc evaluates the model at exactly diffusers' times and
  noise levels.  Supported: ``DDIMScheduler``, ``DPMSolverMultistepScheduler`` (also SDE),
  ``UniPCMultistepScheduler``, ``FlowMatchEulerDiscreteScheduler``, ``EulerDiscreteScheduler``,
  ``EulerAncestralDiscreteScheduler``, ``HeunDiscreteScheduler``.
* :func:`sampler_from_diffusers` -- the ltc sampler that takes the same steps as the scheduler's
  ``step()`` (DDIM(eta), DPM-Solver++ with diffusers' low-order rules, its SDE variant, UniPC,
  Euler, Euler ancestral, Heun).
* :func:`prediction_from_diffusers` -- ``prediction_type`` -> ltc prediction (``epsilon`` -> ``eps``,
  ``sample`` -> ``x0``, ``v_prediction`` -> ``v``, ``flow_prediction`` -> ``flow``; flow matching
  -> ``flow``).
* :func:`model_fn_from_unet` / :func:`model_fn_from_transformer` -- an :class:`ltc.Model` calling a
  diffusers network, with classifier-free guidance on the doubled batch (unconditional first).

Grid conventions.  Point i (i < N) is ``(t_i, alpha_i, sigma_i)`` with ``t_i = timesteps[i]``;
VP schedulers that keep k-diffusion sigmas ``k = sigma / alpha`` (DPM-Solver, Euler) give
``alpha = 1 / sqrt(1 + k^2)``, ``sigma = k alpha``; flow sigmas s give ``alpha = 1 - s``,
``sigma = s``; DDIM gives ``alpha = sqrt(alphas_cumprod[t])``.  The end point is where diffusers'
last step lands (``final_sigmas_type`` / ``set_alpha_to_one``), with model time -1 for the clean
VP end (never given to a model).  VP schedules carry the scheduler's ``alphas_cumprod`` as their
training table (:class:`ltc.schedule.ExplicitSchedule`): ``noise_at(t)`` reads it, so model times
may repeat -- diffusers' rounded Karras (and Lu-lambda, truncated exponential) timesteps feed one
time at two noise levels (``[..., 2, 1, 1, 0]``: SD betas, Karras, N >= 45).

Hand-built schedules follow the same conventions: ``Schedule.vp(...)`` / ``Schedule.flow(...)``
with a sampler name place the grid as that sampler's diffusers scheduler does for the same config
(:class:`ltc.schedule.VPSchedule`), so this adapter is needed only for options ltc has no name
for (Lu lambdas, exponential sigmas, dynamic shifting, ...) or to take a pipeline's config as is.

diffusers quirks (where its numbers are not a plain grid, and what ltc does):

* Zero-length last step: with ``final_sigmas_type="sigma_min"`` after sigmas that already end at
  sigma_min (Karras, Lu, exponential; EulerDiscrete's linspace), or DDIM's
  ``set_alpha_to_one=False`` after timestep 0, diffusers' last step goes from a noise level to
  itself: a model call that leaves the sample unchanged (orders 1-2).  ltc drops that step (N - 1
  steps, one model call fewer, same samples) and keeps diffusers' orders on the others
  (``DPMSolverPP(order_caps=...)``).  Where DPM-Solver takes it at third order (``solver_order=3``
  without ``euler_at_final``, at N >= 15 with ``lower_order_final``) diffusers' own update divides
  0 by 0 and its samples are NaN: :func:`sampler_from_diffusers` refuses and names the fix
  (``euler_at_final=True``, or ``final_sigmas_type="zero"``).
* DDIM steps from timestep t to ``t - num_train_timesteps // steps``, not to the next timestep.
  That is the next timestep for ``leading`` spacing, and for ``trailing`` spacing when ``steps``
  divides ``num_train_timesteps``; otherwise (``linspace``, other trailing step counts) diffusers'
  state leaves the grid between steps.  ltc steps between consecutive timesteps, so the samples
  differ there; :func:`schedule_from_diffusers` warns.
* DPM-Solver multistep: the last step is first order if ``euler_at_final``, or
  ``lower_order_final`` and fewer than 15 steps, or ``final_sigmas_type="zero"``; the one before
  is at most second order if ``lower_order_final`` and fewer than 15 steps.  Mapped onto
  :class:`ltc.samplers.DPMSolverPP`'s ``lower_order_final`` and ``euler_at_final``.  Its
  ``linspace``/``leading`` spacings take N of N + 1 points (unlike DDIM's).
* FlowMatchEuler shifts ``sigma_min`` twice (once in ``__init__``, once in ``set_timesteps``):
  the grid is read from the scheduler, so this is reproduced as is (``Schedule.flow``'s default
  does the same).
* EulerDiscrete's state is the k-diffusion variable u = x / alpha (its model input is
  ``scale_model_input(u) = x``); ltc's state is x.  Start ltc from ``alpha_0 * latents`` and the
  final states agree up to ``alpha_N`` (1 for ``final_sigmas_type="zero"``; with ``"sigma_min"``
  ltc's final x is ``alpha_N`` times diffusers' u).  With ``linspace`` / ``trailing`` spacing its
  ``init_noise_sigma`` is ``k_max``, not ``sqrt(1 + k_max^2)``, so its initial latents are
  slightly under-dispersed for a VP model.
* Trailing spacing at the step counts where diffusers' float arange holds N + 1 points (61, 103,
  ... of T = 1000) gives a last timestep of -1 (DDIM then reads ``alphas_cumprod[-1]``, the
  noisiest); refused here (model times must lie in [0, T - 1]).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import diffusers
import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ...samplers import DDIM, DPMSolverPP, DPMSolverSDE, Euler, EulerAncestral, Heun, Sampler, UniPC
from ...schedule import ExplicitSchedule, Schedule

SCHEDULERS = ("DDIMScheduler", "DPMSolverMultistepScheduler", "FlowMatchEulerDiscreteScheduler",
              "EulerDiscreteScheduler", "UniPCMultistepScheduler", "EulerAncestralDiscreteScheduler",
              "HeunDiscreteScheduler")
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow_prediction": "flow"}


def _kind(scheduler) -> str:
    for cls in type(scheduler).__mro__:
        if cls.__name__ in SCHEDULERS:
            return cls.__name__
    raise ValueError(f"scheduler {type(scheduler).__name__} is not supported; supported: {SCHEDULERS}")


def _fresh(scheduler_or_config) -> tuple[SchedulerMixin, str]:
    """A new scheduler of the same class and config: the caller's object is never stepped or reset."""
    if isinstance(scheduler_or_config, SchedulerMixin):
        cls, config = type(scheduler_or_config), scheduler_or_config.config
    elif isinstance(scheduler_or_config, Mapping):
        name = scheduler_or_config.get("_class_name")
        if name not in SCHEDULERS:
            raise ValueError(f"a scheduler config needs '_class_name' in {SCHEDULERS}, got {name!r}")
        cls, config = getattr(diffusers, name), scheduler_or_config
    else:
        raise TypeError("scheduler_or_config must be a diffusers scheduler or its config dict (with "
                        f"'_class_name'), got {type(scheduler_or_config).__name__}")
    scheduler = cls.from_config(config)
    return scheduler, _kind(scheduler)


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    return int(steps)


def prediction_from_diffusers(scheduler_or_config) -> str:
    """The ltc prediction type of a scheduler's ``prediction_type`` (flow matching: ``"flow"``)."""
    scheduler, kind = _fresh(scheduler_or_config)
    if kind == "FlowMatchEulerDiscreteScheduler":
        return "flow"
    name = scheduler.config.prediction_type
    if name not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {name!r} has no ltc equivalent; supported: {tuple(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[name]


def _is_flow(scheduler, kind: str) -> bool:
    return kind == "FlowMatchEulerDiscreteScheduler" or \
        (kind in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler") and bool(scheduler.config.use_flow_sigmas))


def schedule_from_diffusers(scheduler_or_config, steps: int, **set_timesteps_kwargs) -> ExplicitSchedule:
    """The ltc schedule of ``scheduler.set_timesteps(steps, **set_timesteps_kwargs)`` (e.g. ``mu=``
    for dynamic shifting): N + 1 points, the model evaluated at diffusers' timesteps (see the
    module docstring for the conventions and quirks).  Use it with ``steps=None`` or ``steps``.

    VP schedulers give their ``alphas_cumprod`` as the schedule's training table, so model times
    may repeat (rounded Karras / Lu / exponential timesteps).  A zero-length last step (its sigma
    twice: ``final_sigmas_type="sigma_min"`` after sigmas that end there, or DDIM's
    ``set_alpha_to_one=False`` after timestep 0) is dropped: diffusers spends a model call on it and
    leaves the sample unchanged, so the schedule has N - 1 steps and the same samples
    (:func:`sampler_from_diffusers` keeps diffusers' orders of the other steps)."""
    scheduler, kind = _fresh(scheduler_or_config)
    steps = _check_steps(steps)
    if kind == "FlowMatchEulerDiscreteScheduler" and scheduler.config.invert_sigmas:
        raise ValueError("FlowMatchEulerDiscreteScheduler(invert_sigmas=True) runs the flow backwards; not supported")
    scheduler.set_timesteps(steps, **set_timesteps_kwargs)
    t, alpha, sigma, family, table = _points(scheduler, kind)
    if table is not None and np.any(t[:-1] < 0):
        raise ValueError(f"{kind}(timestep_spacing={scheduler.config.timestep_spacing!r}) with steps={steps} gives "
                         f"{len(t) - 1} timesteps, the last {t[-2]:g}: its float arange holds N + 1 points at this "
                         "step count (a diffusers quirk); use another step count")
    if _ends_with_zero_length_step(sigma):
        if len(sigma) == 2:
            raise ValueError(f"{kind} with steps=1 takes a single zero-length step (sigma {sigma[0]!r} to itself): "
                             "nothing to sample; use more steps or final_sigmas_type='zero' / set_alpha_to_one=True")
        t, alpha, sigma = t[:-1], alpha[:-1], sigma[:-1]
    return Schedule.explicit(t, alpha, sigma, family=family, alphas_cumprod=table)


def _points(scheduler, kind: str):
    """``(t, alpha, sigma, family, alphas_cumprod or None)`` of the N + 1 points of a scheduler
    after ``set_timesteps`` (see the module docstring's grid conventions)."""
    t = scheduler.timesteps.detach().cpu().to(torch.float64).numpy()
    table = getattr(scheduler, "alphas_cumprod", None)
    if kind == "DDIMScheduler":
        t, a = _ddim_points(scheduler, t)
        return t, np.sqrt(a), np.sqrt(1 - a), "vp", table
    s = scheduler.sigmas.detach().cpu().to(torch.float64).numpy()
    if kind == "HeunDiscreteScheduler":  # [t0, t1, t1, ..., t_{N-1}, t_{N-1}]: the rows of ltc's Heun
        t, s = t[0::2], np.append(s[0:-1:2], s[-1])
    if len(s) != len(t) + 1:
        raise ValueError(f"{kind} has {len(t)} timesteps but {len(s)} sigmas; expected one sigma more")
    if _is_flow(scheduler, kind):
        t_end = s[-1] * scheduler.config.num_train_timesteps
        return np.append(t, t_end), 1 - s, s, "flow", None
    alpha = 1 / np.sqrt(1 + s ** 2)
    continuous = getattr(scheduler.config, "timestep_type", "discrete") == "continuous" and \
        scheduler.config.prediction_type == "v_prediction"
    if continuous:  # EulerDiscrete's t = log(k) / 4: not a training step, so no table
        t_end = 0.25 * math.log(s[-1]) if s[-1] > 0 else -math.inf
        return np.append(t, t_end), alpha, s * alpha, "vp", None
    t_end = -1.0 if s[-1] == 0 else 0.0
    return np.append(t, t_end), alpha, s * alpha, "vp", table


def _ends_with_zero_length_step(sigma: np.ndarray) -> bool:
    """The last step keeps its noise level: equal to float32 round-off (diffusers' sigmas are float32)."""
    return len(sigma) >= 2 and sigma[-1] > 0 and abs(sigma[-1] - sigma[-2]) <= 2 ** -22 * sigma[-2]


def _ddim_points(scheduler, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DDIM: model times and alphas_cumprod of its points, the end where its last step lands."""
    abar = scheduler.alphas_cumprod.detach().cpu().to(torch.float64).numpy()
    T, N = scheduler.config.num_train_timesteps, len(t)
    ts = t.astype(np.int64)
    prev = ts - T // N
    off = [i for i in range(N - 1) if prev[i] != ts[i + 1]]
    if off:
        warnings.warn(f"DDIMScheduler(timestep_spacing={scheduler.config.timestep_spacing!r}) with {N} steps "
                      f"steps from timestep t to t - {T // N} (num_train_timesteps // steps), which is not the "
                      f"next timestep (first at step {off[0]}: {ts[off[0]]} -> {prev[off[0]]}, next is "
                      f"{ts[off[0] + 1]}); ltc steps between consecutive timesteps, so its DDIM samples differ "
                      "from diffusers' here. Leading spacing, or trailing spacing with steps dividing "
                      "num_train_timesteps, agree.", stacklevel=4)
    final = float(scheduler.final_alpha_cumprod)
    a_end = abar[prev[-1]] if prev[-1] >= 0 else final
    if a_end < abar[ts[-1]]:
        raise ValueError(f"DDIMScheduler's last step goes from timestep {ts[-1]} to alphas_cumprod {a_end!r}, "
                         "which adds noise; not supported")
    t_end = -1.0 if a_end == 1.0 else float(max(prev[-1], 0))
    return np.append(t, t_end), np.append(abar[ts], a_end)


def sampler_from_diffusers(scheduler_or_config, steps: int, *, eta: float = 0.0) -> Sampler:
    """The ltc sampler taking the same steps as the scheduler's ``step()``.

    DDIM -> ``DDIM(eta)`` (``eta`` is diffusers' ``step(eta=...)``; with eta > 0 and the same
    generator both draw the same per-step noise); DPM-Solver multistep -> ``DPMSolverPP`` (see the
    module docstring for the low-order rules), or ``DPMSolverSDE`` for ``algorithm_type=
    "sde-dpmsolver++"``; UniPC multistep -> ``UniPC`` (order, ``solver_type``, ``lower_order_final``,
    ``disable_corrector``); FlowMatchEuler and EulerDiscrete (``s_churn = 0``) -> ``Euler``;
    EulerAncestralDiscrete -> ``EulerAncestral``; HeunDiscrete -> ``Heun`` (its interleaved timesteps
    are the rows of ltc's Heun plan).  The stochastic ones replay diffusers' draws with
    ``ltc.sample(..., step_noise=...)``.  Options with no ltc equivalent (x0 clipping /
    thresholding, noise-prediction DPM-Solver or UniPC, the Heun variant of the SDE solver, UniPC's
    ``solver_p``, learned variance, stochastic flow sampling) raise.
    """
    scheduler, kind = _fresh(scheduler_or_config)
    steps = _check_steps(steps)
    config = scheduler.config
    if getattr(config, "thresholding", False):
        raise ValueError(f"{kind}(thresholding=True) clips x0 every step; ltc does not: set thresholding=False")
    if kind == "DDIMScheduler":
        if config.clip_sample:
            raise ValueError("DDIMScheduler(clip_sample=True) clips x0 to [-clip_sample_range, clip_sample_range] "
                             "every step; ltc does not: use DDIMScheduler.from_config(config, clip_sample=False)")
        return DDIM(eta)
    if kind == "FlowMatchEulerDiscreteScheduler":
        if config.stochastic_sampling:
            raise ValueError("FlowMatchEulerDiscreteScheduler(stochastic_sampling=True) is not supported")
        return Euler()
    if kind == "EulerDiscreteScheduler":
        return Euler()
    if kind == "EulerAncestralDiscreteScheduler":
        return EulerAncestral()
    if kind == "HeunDiscreteScheduler":
        if config.clip_sample:
            raise ValueError("HeunDiscreteScheduler(clip_sample=True) clips x0 every step; ltc does not")
        return Heun()
    if kind == "UniPCMultistepScheduler":
        return _unipc(scheduler, steps)
    if config.algorithm_type == "sde-dpmsolver++":
        return _sde_dpm_solver(scheduler, steps)
    if config.algorithm_type != "dpmsolver++":
        raise ValueError(f"DPMSolverMultistepScheduler(algorithm_type={config.algorithm_type!r}) is not supported; "
                         "ltc implements algorithm_type='dpmsolver++'")
    if config.solver_type != "midpoint":
        raise ValueError(f"DPMSolverMultistepScheduler(solver_type={config.solver_type!r}) is not supported; "
                         "ltc's second-order multistep update is the 'midpoint' one")
    if config.variance_type is not None:
        raise ValueError("DPMSolverMultistepScheduler(variance_type=...) slices a learned-variance output; use "
                         "model_fn_from_unet(..., learned_variance=True) and a scheduler with variance_type=None")
    return _dpm_solver(scheduler, steps)


def _dpm_solver(scheduler, N: int) -> DPMSolverPP:
    """diffusers' order rules, which :class:`ltc.samplers.DPMSolverPP` follows by its defaults: lower
    final orders below 15 steps with ``lower_order_final``, a first-order last step with
    ``euler_at_final`` or an end at sigma = 0.  Where diffusers' last step has zero length
    (:func:`schedule_from_diffusers` drops it), the other steps keep diffusers' orders by
    ``order_caps``; if diffusers takes that step at third order (0 / 0: NaN in its own update),
    refused."""
    config = scheduler.config
    order, lof = int(config.solver_order), bool(config.lower_order_final)
    scheduler.set_timesteps(N)
    if not _ends_with_zero_length_step(scheduler.sigmas.detach().cpu().to(torch.float64).numpy()):
        return DPMSolverPP(order, lower_order_final=lof, euler_at_final=bool(config.euler_at_final))
    lowers = lof and N < 15
    if not (config.euler_at_final or lowers) and min(order, N) == 3:
        raise ValueError(f"DPMSolverMultistepScheduler(solver_order=3, final_sigmas_type='sigma_min') with {N} steps "
                         "ends with a zero-length step (its last sigma twice) that diffusers takes at third order, "
                         "dividing 0 by 0: its own samples are NaN. Set euler_at_final=True (diffusers' last step is "
                         "then a first-order no-op, which ltc drops, same samples) or final_sigmas_type='zero'")
    caps = [min(order, N - i) if lowers else order for i in range(N - 1)]
    return DPMSolverPP(order, lower_order_final=False, euler_at_final=False, order_caps=caps)


def _refuse_zero_length_end(scheduler, N: int, what: str) -> None:
    scheduler.set_timesteps(N)
    if _ends_with_zero_length_step(scheduler.sigmas.detach().cpu().to(torch.float64).numpy()):
        raise ValueError(f"{type(scheduler).__name__} with {N} steps ends with a zero-length step (its last sigma "
                         f"twice, final_sigmas_type='sigma_min'), where {what}; ltc drops that step, so it cannot "
                         "reproduce it: use final_sigmas_type='zero'")


def _unipc(scheduler, N: int) -> UniPC:
    """UniPC with diffusers' options; refused where diffusers' update is not UniPC's data-prediction one."""
    config = scheduler.config
    if not config.predict_x0:
        raise ValueError("UniPCMultistepScheduler(predict_x0=False) runs UniPC on the noise prediction; ltc's UniPC "
                         "is the data-prediction form (predict_x0=True, diffusers' default)")
    if getattr(scheduler, "solver_p", None) is not None:
        raise ValueError("UniPCMultistepScheduler(solver_p=...) replaces UniP by another scheduler; not supported")
    if config.solver_type not in UniPC.VARIANTS:
        raise ValueError(f"UniPCMultistepScheduler(solver_type={config.solver_type!r}) is not supported; ltc's UniPC "
                         f"has {UniPC.VARIANTS}")
    _refuse_zero_length_end(scheduler, N, "diffusers' corrector still corrects the state before it")
    return UniPC(int(config.solver_order), config.solver_type, lower_order_final=bool(config.lower_order_final),
                 disable_corrector=list(config.disable_corrector or []))


def _sde_dpm_solver(scheduler, N: int) -> DPMSolverSDE:
    """SDE-DPM-Solver++ with diffusers' order rules (the midpoint second-order update)."""
    config = scheduler.config
    if config.solver_type != "midpoint" and int(config.solver_order) == 2:
        raise ValueError(f"DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', solver_type="
                         f"{config.solver_type!r}) is not supported; ltc's second-order SDE update is 'midpoint'")
    if config.variance_type is not None:
        raise ValueError("DPMSolverMultistepScheduler(variance_type=...) slices a learned-variance output; use "
                         "model_fn_from_unet(..., learned_variance=True) and a scheduler with variance_type=None")
    _refuse_zero_length_end(scheduler, N, "diffusers draws and adds noise")
    return DPMSolverSDE(int(config.solver_order), lower_order_final=bool(config.lower_order_final),
                        euler_at_final=bool(config.euler_at_final))
