"""ltc inside a diffusers pipeline: a drop-in scheduler, and a stitched denoiser for T-Stitch.

One line on an existing pipeline::

    pipe.scheduler = ltc.adapters.diffusers.scheduler(pipe.scheduler, sampler="dpmpp_2m",
                                                      policy=ltc.policies.LTC(weights=cal))
    image = pipe(prompt).images[0]            # the pipeline's own loop, NFE model calls

:class:`Scheduler` implements what pipelines call -- ``set_timesteps``, ``timesteps``,
``init_noise_sigma``, ``scale_model_input``, ``step``, ``order``, ``config`` -- over an
:class:`ltc.Stepper` (one walk of a compiled plan).  The grid is the pipeline's own scheduler's
(:func:`ltc.adapters.diffusers.schedule_from_diffusers`, same class and config), so with
:class:`ltc.policies.Full` the pipeline's output equals the one with diffusers' scheduler of the same
name and config to round-off.  LTC's extrapolated steps make no model call: ``timesteps`` lists
only the rows that need the model, and ``step`` takes the model row and every extrapolated row
after it, so the pipeline's loop calls the model exactly ``plan.nfe`` times.  Guidance stays the
pipeline's: ``step`` gets the guided output (a DiT pipeline steps its doubled batch; that works too).

Latents.  The pipeline's latents keep the base scheduler's convention: the state x for DDIM,
DPM-Solver, UniPC and flow matching; u = x / alpha for the k-diffusion-style schedulers (Euler,
Euler ancestral, Heun: ``init_noise_sigma`` > 1 and ``scale_model_input`` divides by
sqrt(k^2 + 1)).  ``step`` converts to ltc's x and back.

:class:`StitchedDenoiser` stands in for the pipeline's transformer / UNet under T-Stitch: each call
goes to the model the plan chose for the scheduler's current row -- counted by the scheduler's steps
(host integers, no ``t.item()``) -- and restarts with the scheduler's ``set_timesteps`` when the
pipeline is called again.  Other attributes (``config``, ``dtype``, ...) are the last (largest)
model's, which the pipeline was built for.

CUDA graphs: the pipeline's loop is Python; the denoiser can be captured by the caller (e.g.
``torch.compile(mode="reduce-overhead")``), the scheduler's step is a few fused kernel launches.
Not measured yet (no GPU in the session that wrote this).
"""
from __future__ import annotations

import torch
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from ...plan import EXTRAPOLATE, compile_plan
from ...policies import Full, Policy, TStitch
from ...samplers import Sampler, get_sampler
from ...stepper import Stepper
from .grids import _fresh, prediction_from_diffusers, sampler_from_diffusers, schedule_from_diffusers

K_SPACE = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler")


class Scheduler:
    """A diffusers-style scheduler that steps an ltc plan (see the module docstring).

    Args:
        base: the pipeline's scheduler (or its config dict with ``_class_name``); never modified.
        sampler: an ltc sampler name / :class:`ltc.samplers.Sampler`, or None for the one taking the
            base scheduler's own steps (:func:`ltc.adapters.diffusers.sampler_from_diffusers`).
        policy: an ltc policy (default :class:`ltc.policies.Full`).  T-Stitch needs a
            :class:`StitchedDenoiser` in place of the pipeline's model.
        prediction: the model's prediction type (default: the base's ``prediction_type``).
    """

    def __init__(self, base, *, sampler=None, policy: Policy | None = None, prediction: str | None = None):
        self._base, self.kind = _fresh(base)
        if sampler is not None and not isinstance(sampler, (str, Sampler)):
            raise TypeError(f"sampler must be an ltc sampler name, an ltc.samplers.Sampler or None, got "
                            f"{type(sampler).__name__}")
        self._sampler = None if sampler is None else get_sampler(sampler)
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(f"policy must be an ltc.policies.Policy or None, got {type(policy).__name__}")
        self.policy = policy or Full()
        self.prediction = prediction or prediction_from_diffusers(self._base)
        self.models = len(self.policy.fractions) + 1 if isinstance(self.policy, TStitch) else 1
        self.config = self._base.config
        self.timesteps = None
        self.plan = None
        self._stepper = None
        self._schedule = None
        self._generator = None  # the generator of the current step() call (stochastic samplers draw from it)
        self._row = 0

    # -- what pipelines read ---------------------------------------------------------------------
    @property
    def order(self) -> int:
        """Model calls per step of the user's grid (pipelines' progress bars): the sampler's stages."""
        return (self._sampler or sampler_from_diffusers(self._base, 1)).stages

    @property
    def init_noise_sigma(self) -> float:
        """The base scheduler's (the pipeline scales its initial noise by it)."""
        return self._base.init_noise_sigma

    @property
    def model_index(self) -> int:
        """The model the plan calls next (T-Stitch; 0 with one model)."""
        self._check_set()
        if self._row >= self.plan.steps:
            raise RuntimeError("the plan is done: the pipeline called its model after the last step (call "
                               "set_timesteps to start a new generation)")
        return self.plan.models[self._row]

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, **kwargs) -> None:
        """Compile the plan for ``num_inference_steps`` (and the base's ``set_timesteps`` keyword
        arguments, e.g. ``mu=`` for dynamic shifting); ``timesteps`` then lists the model rows' times
        on ``device``.  Restarts the walk (a pipeline calls this once per generation)."""
        if num_inference_steps is None:
            raise ValueError("set_timesteps needs num_inference_steps (custom timesteps= / sigmas= are not "
                             "supported by the ltc scheduler yet)")
        self._schedule = schedule_from_diffusers(self._base, num_inference_steps, **kwargs)
        self._base.set_timesteps(num_inference_steps, **kwargs)  # for init_noise_sigma and the time dtype
        sampler = self._sampler or sampler_from_diffusers(self._base, num_inference_steps)
        self._sampler_now = sampler
        self.plan = compile_plan(sampler.grid(self._schedule, None), sampler, self.policy,
                                 [self.prediction] * self.models)
        rows = [i for i, m in enumerate(self.plan.models) if m != EXTRAPOLATE]
        times = torch.tensor([self.plan.grid.t[i] for i in rows], dtype=torch.float64)
        self.timesteps = times.to(self._base.timesteps.dtype).to(device)
        self._alpha = self.plan.grid.alpha
        self._stepper = None
        self._row = 0

    def scale_model_input(self, sample: torch.Tensor, timestep=None, *args, **kwargs) -> torch.Tensor:
        """The model input for the current row: ``sample`` itself, or x = alpha u for k-space latents."""
        self._check_set()
        if self.kind not in K_SPACE:
            return sample
        return sample * float(self._alpha[self._row])

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *args,
             generator: torch.Generator | None = None, return_dict: bool = True, **kwargs):
        """Take the current model row with ``model_output`` (the guided prediction for ``sample``)
        and every extrapolated row after it; returns the next latents (``SchedulerOutput`` or a tuple)."""
        self._check_set()
        if self._row >= self.plan.steps:
            raise RuntimeError("the ltc scheduler has taken every step of its plan; call set_timesteps again")
        x = sample * float(self._alpha[self._row]) if self.kind in K_SPACE else sample
        if self._stepper is None or self._stepper.x.shape != x.shape or self._stepper.x.dtype != x.dtype \
                or self._stepper.x.device != x.device:
            if self._row != 0:
                raise ValueError(f"the latents changed shape, dtype or device at plan row {self._row} "
                                 f"({tuple(sample.shape)}, {sample.dtype}): one generation walks one batch")
            noise_fn = self._draw if self._sampler_now.stochastic else None
            self._stepper = Stepper(self._schedule, self.policy, sampler=self._sampler_now, steps=None, noise=x,
                                    predictions=[self.prediction] * self.models, step_noise=noise_fn)
        else:
            self._stepper.load_state(x)
        self._generator = generator
        out = self._stepper.step(model_output.to(x.dtype))
        self._row = self._stepper.step_index
        prev = out / float(self._alpha[self._row]) if self.kind in K_SPACE else out.clone()
        prev = prev.to(sample.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _draw(self, i: int) -> torch.Tensor:
        """Row i's fresh noise, from the generator the pipeline passed to ``step`` (as diffusers draws it)."""
        x = self._stepper.x
        gen = self._generator
        device = gen.device if gen is not None else x.device
        return torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype).to(x.device)

    def _check_set(self) -> None:
        if self.plan is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) first (pipelines do)")

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        plan = self.plan.describe() if self.plan is not None else "no plan yet (set_timesteps)"
        return f"ltc Scheduler({self.kind}, {plan})"


def scheduler(base, *, sampler=None, policy: Policy | None = None, prediction: str | None = None) -> Scheduler:
    """A drop-in :class:`Scheduler` for a pipeline: ``pipe.scheduler = scheduler(pipe.scheduler, ...)``."""
    return Scheduler(base, sampler=sampler, policy=policy, prediction=prediction)


class StitchedDenoiser(torch.nn.Module):
    """Stands in for a pipeline's denoiser under T-Stitch: ``models`` (small to large, the same
    inputs and outputs) called by the plan of ``scheduler`` (a :class:`Scheduler` with a
    :class:`ltc.policies.TStitch` policy).  ``calls`` counts the calls per model."""

    def __init__(self, models, scheduler: Scheduler):
        super().__init__()
        models = list(models)
        if len(models) < 2 or not all(isinstance(m, torch.nn.Module) for m in models):
            raise TypeError("models must be two or more torch.nn.Module denoisers, small to large")
        if not isinstance(scheduler, Scheduler) or scheduler.models != len(models):
            raise ValueError(f"scheduler must be an ltc Scheduler whose policy stitches {len(models)} models (e.g. "
                             f"TStitch with {len(models) - 1} fraction(s)), got {scheduler!r}")
        self.stitched = torch.nn.ModuleList(models)
        self.scheduler = scheduler
        self.calls = [0] * len(models)

    def forward(self, *args, **kwargs):
        k = self.scheduler.model_index
        self.calls[k] += 1
        return self.stitched[k](*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("stitched")[-1], name)
