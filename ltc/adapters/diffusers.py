"""diffusers adapter: an ltc schedule, sampler and model function from diffusers objects.

Needs the ``diffusers`` extra (in the README's install command, or ``pip install diffusers``); the
rest of ltc never imports it.

* :func:`schedule_from_diffusers` -- the grid of a scheduler's ``set_timesteps(steps)``, read from
  the scheduler itself (its ``timesteps``, ``sigmas`` / ``alphas_cumprod``) as an
  :class:`ltc.schedule.ExplicitSchedule`, so ltc evaluates the model at exactly diffusers' times and
  noise levels.  Supported: ``DDIMScheduler``, ``DPMSolverMultistepScheduler``,
  ``FlowMatchEulerDiscreteScheduler``, ``EulerDiscreteScheduler``.
* :func:`sampler_from_diffusers` -- the ltc sampler that takes the same steps as the scheduler's
  ``step()`` (DDIM(eta), DPM-Solver++ with diffusers' low-order rules, Euler).
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
VP end (never given to a model).

diffusers quirks (where its numbers are not a plain grid, and what ltc does):

* DDIM steps from timestep t to ``t - num_train_timesteps // steps``, not to the next timestep.
  That is the next timestep for ``leading`` spacing, and for ``trailing`` spacing when ``steps``
  divides ``num_train_timesteps``; otherwise (``linspace``, other trailing step counts) diffusers'
  state leaves the grid between steps.  ltc steps between consecutive timesteps, so the samples
  differ there; :func:`schedule_from_diffusers` warns.  With ``set_alpha_to_one=False`` and a last
  timestep of 0 diffusers' last step is a no-op, which ltc refuses (no noise decrease).
* DPM-Solver multistep: the last step is first order if ``euler_at_final``, or
  ``lower_order_final`` and fewer than 15 steps, or ``final_sigmas_type="zero"``; the one before
  is at most second order if ``lower_order_final`` and fewer than 15 steps.  Mapped onto
  :class:`ltc.samplers.DPMSolverPP`'s ``lower_order_final`` and ``euler_at_final``.  Its
  ``linspace``/``leading`` spacings take N of N + 1 points (unlike DDIM's).
* FlowMatchEuler shifts ``sigma_min`` twice (once in ``__init__``, once in ``set_timesteps``):
  the grid is read from the scheduler, so this is reproduced as is.
* EulerDiscrete's state is the k-diffusion variable u = x / alpha (its model input is
  ``scale_model_input(u) = x``); ltc's state is x.  Start ltc from ``alpha_0 * latents`` and the
  final states agree (``alpha_N = 1`` for ``final_sigmas_type="zero"``).  With ``linspace`` /
  ``trailing`` spacing its ``init_noise_sigma`` is ``k_max``, not ``sqrt(1 + k_max^2)``, so its
  initial latents are slightly under-dispersed for a VP model.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import diffusers
import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..models import Model
from ..samplers import DDIM, DPMSolverPP, Euler, Sampler
from ..schedule import ExplicitSchedule, Schedule

SCHEDULERS = ("DDIMScheduler", "DPMSolverMultistepScheduler", "FlowMatchEulerDiscreteScheduler",
              "EulerDiscreteScheduler")
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
        (kind == "DPMSolverMultistepScheduler" and bool(scheduler.config.use_flow_sigmas))


def schedule_from_diffusers(scheduler_or_config, steps: int, **set_timesteps_kwargs) -> ExplicitSchedule:
    """The ltc schedule of ``scheduler.set_timesteps(steps, **set_timesteps_kwargs)`` (e.g. ``mu=``
    for dynamic shifting): N + 1 points, the model evaluated at diffusers' timesteps (see the
    module docstring for the conventions and quirks).  Use it with ``steps=None`` or ``steps``."""
    scheduler, kind = _fresh(scheduler_or_config)
    steps = _check_steps(steps)
    if kind == "FlowMatchEulerDiscreteScheduler" and scheduler.config.invert_sigmas:
        raise ValueError("FlowMatchEulerDiscreteScheduler(invert_sigmas=True) runs the flow backwards; not supported")
    scheduler.set_timesteps(steps, **set_timesteps_kwargs)
    t = scheduler.timesteps.detach().cpu().to(torch.float64).numpy()
    if kind == "DDIMScheduler":
        return _ddim_schedule(scheduler, t)
    s = scheduler.sigmas.detach().cpu().to(torch.float64).numpy()
    if len(s) != len(t) + 1:
        raise ValueError(f"{kind} has {len(t)} timesteps but {len(s)} sigmas; expected one sigma more")
    if _is_flow(scheduler, kind):
        t_end = s[-1] * scheduler.config.num_train_timesteps
        return Schedule.explicit(np.append(t, t_end), 1 - s, s, family="flow")
    alpha = 1 / np.sqrt(1 + s ** 2)
    continuous = getattr(scheduler.config, "timestep_type", "discrete") == "continuous" and \
        scheduler.config.prediction_type == "v_prediction"
    if continuous:  # EulerDiscrete's t = log(k) / 4
        t_end = 0.25 * math.log(s[-1]) if s[-1] > 0 else -math.inf
    else:
        t_end = -1.0 if s[-1] == 0 else 0.0
    return Schedule.explicit(np.append(t, t_end), alpha, s * alpha, family="vp")


def _ddim_schedule(scheduler, t: np.ndarray) -> ExplicitSchedule:
    """DDIM: points at ``alphas_cumprod[t_i]``; the end is where its last step lands."""
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
                      "num_train_timesteps, agree.", stacklevel=3)
    final = float(scheduler.final_alpha_cumprod)
    a_end = abar[prev[-1]] if prev[-1] >= 0 else final
    if a_end <= abar[ts[-1]]:
        raise ValueError(f"DDIMScheduler's last step goes from timestep {ts[-1]} to alphas_cumprod {a_end!r}, "
                         "which removes no noise (set_alpha_to_one=False with a last timestep of 0); "
                         "use set_alpha_to_one=True or steps_offset=1")
    t_end = -1.0 if a_end == 1.0 else float(max(prev[-1], 0))
    a = np.append(abar[ts], a_end)
    return Schedule.explicit(np.append(t, t_end), np.sqrt(a), np.sqrt(1 - a), family="vp")


def sampler_from_diffusers(scheduler_or_config, steps: int, *, eta: float = 0.0) -> Sampler:
    """The ltc sampler taking the same steps as the scheduler's ``step()``.

    DDIM -> ``DDIM(eta)`` (``eta`` is diffusers' ``step(eta=...)``; with eta > 0 and the same
    generator both draw the same per-step noise); DPM-Solver multistep -> ``DPMSolverPP`` (see the
    module docstring for the low-order rules); FlowMatchEuler and EulerDiscrete (``s_churn = 0``) ->
    ``Euler``.  Options with no ltc equivalent (x0 clipping / thresholding, SDE or noise-prediction
    DPM-Solver, the Heun DPM-Solver variant, learned variance, stochastic flow sampling) raise.
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
    if config.algorithm_type != "dpmsolver++":
        raise ValueError(f"DPMSolverMultistepScheduler(algorithm_type={config.algorithm_type!r}) is not supported; "
                         "ltc implements algorithm_type='dpmsolver++'")
    if config.solver_type != "midpoint":
        raise ValueError(f"DPMSolverMultistepScheduler(solver_type={config.solver_type!r}) is not supported; "
                         "ltc's second-order multistep update is the 'midpoint' one")
    if config.variance_type is not None:
        raise ValueError("DPMSolverMultistepScheduler(variance_type=...) slices a learned-variance output; use "
                         "model_fn_from_unet(..., learned_variance=True) and a scheduler with variance_type=None")
    return _dpm_solver(config, steps)


def _dpm_solver(config, N: int) -> DPMSolverPP:
    """diffusers' order rules, which :class:`ltc.samplers.DPMSolverPP` follows by its defaults: lower
    final orders below 15 steps with ``lower_order_final``, a first-order last step with
    ``euler_at_final`` or an end at sigma = 0."""
    return DPMSolverPP(int(config.solver_order), lower_order_final=bool(config.lower_order_final),
                       euler_at_final=bool(config.euler_at_final))


class _DiffusersModel:
    """``fn(x, t, **kwargs)`` calling a diffusers network; see :func:`model_fn_from_unet`."""

    def __init__(self, net, input_name: str, negative: dict | None, forward_kwargs: dict,
                 timestep_scale: float, learned_variance: bool):
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"expected a diffusers model (a torch.nn.Module), got {type(net).__name__}")
        if negative is not None:
            if not isinstance(negative, Mapping):
                raise TypeError(f"negative must be a dict of unconditional inputs, got {type(negative).__name__}")
            missing = [k for k in negative if k not in forward_kwargs]
            if missing:
                raise ValueError(f"negative has keys {missing} without a conditional value among the keyword arguments")
        if isinstance(timestep_scale, bool) or not isinstance(timestep_scale, (int, float)) \
                or not math.isfinite(timestep_scale):
            raise ValueError(f"timestep_scale must be a finite number, got {timestep_scale!r}")
        self.net, self.input_name, self.negative = net, input_name, dict(negative or {})
        self.forward_kwargs, self.timestep_scale = dict(forward_kwargs), float(timestep_scale)
        self.learned_variance = bool(learned_variance)

    def _inputs(self, rows: int, call_kwargs: dict) -> dict:
        out = {}
        for key, value in {**self.forward_kwargs, **call_kwargs}.items():
            if key in self.negative and key not in call_kwargs:
                if rows % 2:
                    raise ValueError(f"with negative inputs the model expects the doubled batch [2B, ...] "
                                     f"(ltc.sample(..., guidance_scale=...)), got {rows} rows")
                value = torch.cat([_rows(self.negative[key], rows // 2), _rows(value, rows // 2)])
            elif isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == 1 and rows > 1:
                value = value.expand(rows, *value.shape[1:])
            out[key] = value
        return out

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **call_kwargs) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype
        kwargs = self._inputs(x.shape[0], call_kwargs)
        with torch.no_grad():
            out = self.net(**{self.input_name: x.to(dtype)}, timestep=t * self.timestep_scale,
                           return_dict=False, **kwargs)[0]
        if self.learned_variance:
            out = out[:, : x.shape[1]]
        return out.to(x.dtype)


def _rows(value, rows: int):
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == 1 and rows > 1:
        return value.expand(rows, *value.shape[1:])
    return value


def model_fn_from_unet(unet, *, prediction: str, negative: dict | None = None, learned_variance: bool = False,
                       name: str | None = None, **forward_kwargs) -> Model:
    """An :class:`ltc.Model` calling ``unet(x, timestep=t, **forward_kwargs)`` (UNet2DModel,
    UNet2DConditionModel, ...), under ``torch.no_grad``, in the unet's dtype (output cast back to x's).

    Args:
        prediction: the ltc prediction type (e.g. ``prediction_from_diffusers(scheduler)``).
        forward_kwargs: the model's inputs, e.g. ``encoder_hidden_states=[B|1, L, C]``,
            ``class_labels=[B]``; tensors with one row are broadcast to the batch.
        negative: for classifier-free guidance, the unconditional values of some of those keys
            (e.g. ``{"encoder_hidden_states": uncond_embeds}``): the model then expects the doubled
            batch ``[x; x]`` of ``ltc.sample(..., guidance_scale=g)`` and passes
            ``cat([negative[k], forward_kwargs[k]])`` (unconditional first).
        learned_variance: keep the first C output channels of a model that also predicts its variance.
        Keyword arguments given at call time (``ltc.sample``'s ``model_kwargs``) override these;
        per-sample conditioning of a batch is best passed there (T-Stitch's compatibility probe
        cuts ``model_kwargs`` to its one-sample batch, but not the values bound here).
    """
    fn = _DiffusersModel(unet, "sample", negative, forward_kwargs, 1.0, learned_variance)
    return Model(fn, prediction, name or type(unet).__name__)


def model_fn_from_transformer(transformer, *, prediction: str, negative: dict | None = None,
                              timestep_scale: float = 1.0, learned_variance: bool = False,
                              name: str | None = None, **forward_kwargs) -> Model:
    """An :class:`ltc.Model` calling ``transformer(hidden_states=x, timestep=t * timestep_scale,
    **forward_kwargs)`` (SD3Transformer2DModel with ``encoder_hidden_states`` and
    ``pooled_projections``, DiTTransformer2DModel with ``class_labels`` and ``learned_variance=True``,
    ...).  ``timestep_scale=1/1000`` for models fed sigma instead of t (Flux).  Arguments as in
    :func:`model_fn_from_unet`."""
    fn = _DiffusersModel(transformer, "hidden_states", negative, forward_kwargs, timestep_scale, learned_variance)
    return Model(fn, prediction, name or type(transformer).__name__)
