"""Noise schedules and their discretisation into sampling grids.

Every schedule describes the forward process

    x_t = alpha_t * x0 + sigma_t * eps,        eps ~ N(0, I)

with lambda_t = log(alpha_t / sigma_t), half the log signal-to-noise ratio (DPM-Solver's lambda).  Two families:

* ``vp``   (variance preserving): alpha_t^2 + sigma_t^2 = 1, alpha_t^2 = prod_{s<=t}(1 - beta_s)
  over ``num_train_timesteps`` discrete training steps (DDPM, Stable Diffusion).
* ``flow`` (rectified flow / flow matching): alpha_t = 1 - sigma_t, sigma in [0, 1]; the model
  time input is ``t = sigma * num_train_timesteps`` (the SD3 / diffusers convention).

A :class:`Schedule` is the *continuous* description; :meth:`Schedule.discretize` turns it into a
:class:`Grid` of ``N + 1`` points for ``N`` sampling steps, placed as the diffusers scheduler family
``rule`` (:data:`GRID_RULES`: ``"ddim"``, ``"dpm_solver"``, ``"euler"``; each sampler names its
own) places them for the same config.  Step ``i`` goes from point ``i``
(where the model is evaluated, with time input ``t[i]``) to point ``i + 1``.  The last point is
never fed to a model; it is usually the clean end ``sigma = 0``.

:meth:`Schedule.noise_at` maps any model time back to ``(alpha, sigma)``; the exact oracles use
it, so they work with every schedule, including fractional times from Karras grids.

This module is the one place that defines alpha, sigma and lambda.
"""
from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch

FAMILIES = ("vp", "flow")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("linspace", "leading", "trailing")
PROGRESS_VARIABLES = ("sigma", "t", "lambda")
GRID_RULES = ("ddim", "dpm_solver", "euler")  # whose set_timesteps a grid follows (Sampler.grid_rule)


@dataclass(frozen=True, eq=False)
class Grid:
    """A discretised schedule: ``N`` steps between ``N + 1`` points (float64, host).

    Attributes:
        t: ``[N+1]`` model time input at each point (``t[N]`` is never given to a model).
        alpha, sigma: ``[N+1]`` noise coefficients, ``sigma`` strictly decreasing.
        family: ``"vp"`` or ``"flow"``.
        repeated: the rows of a two-stage sampler (:meth:`ltc.samplers.Heun.rows`): ``sigma`` may
            repeat a point once (a zero-length row, the model called a second time at that point),
            so it is only non-increasing.
    """

    t: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    family: str
    repeated: bool = False

    def __post_init__(self):
        for name in ("t", "alpha", "sigma"):
            arr = np.array(getattr(self, name), dtype=np.float64)  # a copy: the caller's arrays stay theirs
            object.__setattr__(self, name, arr)
            arr.setflags(write=False)
        n = self.alpha.shape
        if self.alpha.ndim != 1 or self.sigma.shape != n or self.t.shape != n or n[0] < 2:
            raise ValueError(
                f"grid arrays t, alpha, sigma must be 1-D of the same length >= 2; "
                f"got shapes {self.t.shape}, {self.alpha.shape}, {self.sigma.shape}"
            )
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        for name in ("alpha", "sigma"):
            bad = np.flatnonzero(~np.isfinite(getattr(self, name)))
            if len(bad):
                raise ValueError(f"grid {name} must be finite; {name}[{bad[0]}] = {getattr(self, name)[bad[0]]}")
        bad = np.flatnonzero(~np.isfinite(self.t[:-1]))
        if len(bad) or np.isnan(self.t[-1]):
            k = int(bad[0]) if len(bad) else len(self.t) - 1
            raise ValueError(f"grid t[{k}] = {self.t[k]} is not a model time: every point but the last is given "
                             "to a model and must be finite; the last (never given to a model) may be +-inf, "
                             "not NaN")
        first = self.alpha[0] == 0 and self.family == "flow"
        bad = np.flatnonzero(self.alpha[1:] <= 0) + 1 if first else np.flatnonzero(self.alpha <= 0)
        if len(bad):
            raise ValueError(f"grid alpha must be > 0 at every point (a flow grid may start at alpha = 0, sigma = 1); "
                             f"alpha[{bad[0]}] = {self.alpha[bad[0]]}")
        bad = np.flatnonzero(self.sigma[:-1] <= 0)
        if len(bad) or self.sigma[-1] < 0:
            k = int(bad[0]) if len(bad) else len(self.sigma) - 1
            raise ValueError(f"grid sigma must be > 0 at every point but the last, which may be 0; "
                             f"sigma[{k}] = {self.sigma[k]}")
        if not isinstance(self.repeated, bool):
            raise TypeError(f"repeated must be True or False, got {self.repeated!r}")
        step = np.diff(self.sigma)
        bad = np.flatnonzero(step > 0) if self.repeated else np.flatnonzero(step >= 0)
        if self.repeated and not len(bad):
            bad = np.flatnonzero((step[1:] == 0) & (step[:-1] == 0)) + 1
        if len(bad):
            k = int(bad[0])
            raise ValueError(f"grid sigma must be strictly decreasing (noise must fall every step); "
                             f"sigma[{k}] = {self.sigma[k]!r}, sigma[{k + 1}] = {self.sigma[k + 1]!r}")

    @property
    def steps(self) -> int:
        """Number of sampling steps ``N``."""
        return self.sigma.shape[0] - 1

    @property
    def log_snr(self) -> np.ndarray:
        """``lambda = log(alpha / sigma)`` (half log-SNR); ``+inf`` where ``sigma = 0``, ``-inf`` where ``alpha = 0``."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(self.alpha) - np.log(self.sigma)

    def progress(self, variable: str) -> np.ndarray:
        """The LTC progress variable phi at every point: ``sigma``, ``t`` or ``lambda``."""
        if variable == "sigma":
            return self.sigma.copy()
        if variable == "t":
            return self.t.copy()
        if variable == "lambda":
            return self.log_snr
        raise ValueError(f"progress variable must be one of {PROGRESS_VARIABLES}, got {variable!r}")

    def digest(self) -> dict:
        """A JSON-able description, exact to the last bit (hex floats), for fingerprints."""
        return {
            "family": self.family,
            "t": [float(v).hex() for v in self.t],
            "alpha": [float(v).hex() for v in self.alpha],
            "sigma": [float(v).hex() for v in self.sigma],
            **({"repeated": True} if self.repeated else {}),
        }


class Schedule:
    """Base class of the schedules; build one with the class methods below.

    * :meth:`vp` -- discrete DDPM-style schedule (``linear``, ``scaled_linear``,
      ``squaredcos_cap_v2``) with a timestep ``spacing`` or Karras sigmas.
    * :meth:`flow` -- rectified flow with the SD3 ``shift``.
    * :meth:`log_snr` -- a continuous schedule uniform in log-SNR (model time = lambda).
    * :meth:`explicit` -- user arrays ``t, alpha, sigma``.
    """

    family: str
    num_train_timesteps: int = 1000

    def discretize(self, steps: int | None, rule: str = "ddim") -> Grid:  # pragma: no cover - abstract
        """The grid of ``steps`` steps as the diffusers scheduler family ``rule`` (one of
        :data:`GRID_RULES`, the sampler's :attr:`ltc.samplers.Sampler.grid_rule`) spaces it."""
        raise NotImplementedError

    def noise_at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """``(alpha, sigma)`` for model time(s) ``t`` (any shape, floating dtype kept)."""
        raise NotImplementedError

    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "class")
        return f"{type(self).__name__}({args})"

    # -- constructors ---------------------------------------------------------------------
    @staticmethod
    def vp(beta_schedule: str = "scaled_linear", *, spacing: str = "leading",
           beta_start: float | None = None, beta_end: float | None = None,
           num_train_timesteps: int = 1000, steps_offset: int = 0, karras: bool = False,
           final: str = "zero") -> "VPSchedule":
        """A discrete variance-preserving schedule (DDPM, Stable Diffusion): alpha_t^2 =
        prod_{s<=t} (1 - beta_s) over ``num_train_timesteps`` training steps, sigma_t^2 = 1 - alpha_t^2.

        Args:
            beta_schedule: ``"linear"`` (DDPM), ``"scaled_linear"`` (Stable Diffusion) or
                ``"squaredcos_cap_v2"`` (cosine); see :func:`train_alphas_cumprod`.
            spacing: how N sampling steps pick training timesteps: ``"leading"``, ``"trailing"``
                or ``"linspace"`` (diffusers' ``timestep_spacing``, :func:`timestep_spacing`).
            beta_start, beta_end: the betas' end points (None: the schedule's defaults).
            num_train_timesteps: T, the number of training steps.
            steps_offset: added to ``leading`` timesteps (Stable Diffusion uses 1).
            karras: Karras et al. sigmas (rho = 7) in k = sigma/alpha (``use_karras_sigmas``).
            final: the last point: ``"zero"`` (clean, sigma = 0; diffusers' defaults) or ``"last"``
                (training step 0: ``set_alpha_to_one=False`` / ``final_sigmas_type="sigma_min"``).

        The grid follows the diffusers scheduler of the sampler's family with the same config
        (``discretize(steps, rule=sampler.grid_rule)``: DDIM, DPM-Solver / UniPC, Euler; see
        :class:`VPSchedule`).  Example: ``Schedule.vp("scaled_linear", spacing="leading",
        steps_offset=1)`` with ``sampler="dpmpp_2m"`` is Stable Diffusion's
        ``DPMSolverMultistepScheduler`` (``beta_schedule="scaled_linear"``, ``timestep_spacing="leading"``,
        ``steps_offset=1``, default betas).
        """
        return VPSchedule(beta_schedule, spacing=spacing, beta_start=beta_start, beta_end=beta_end,
                          num_train_timesteps=num_train_timesteps, steps_offset=steps_offset,
                          karras=karras, final=final)

    @staticmethod
    def flow(shift: float = 1.0, *, num_train_timesteps: int = 1000,
             sigma_min: float | None = None) -> "FlowSchedule":
        """A rectified-flow / flow-matching schedule: x_s = (1 - s) x0 + s eps, model time
        ``t = s * num_train_timesteps`` (SD3, Flux; see :class:`FlowSchedule`).

        Args:
            shift: SD3's time shift, s' = shift s / (1 + (shift - 1) s) (1: none; SD3 uses 3.0).
            num_train_timesteps: T, the scale of the model time.
            sigma_min: where the unshifted ``linspace(1, sigma_min, N)`` ends before the shift (None:
                ``FlowMatchEulerDiscreteScheduler``'s, the shifted 1 / T, so sigma_min is shifted twice
                as diffusers does; ``1 / T`` for a single shift).
        """
        return FlowSchedule(shift=shift, num_train_timesteps=num_train_timesteps, sigma_min=sigma_min)

    @staticmethod
    def log_snr(lambda_min: float = -6.0, lambda_max: float = 6.0, *, family: str = "vp",
                final: str = "zero") -> "LogSNRSchedule":
        """A continuous schedule uniform in lambda = log(alpha / sigma), model time ``t = lambda``
        (see :class:`LogSNRSchedule`; used for convergence measurements and the oracles).

        Args:
            lambda_min, lambda_max: the noisiest and the cleanest point's lambda.
            family: ``"vp"`` (alpha^2 + sigma^2 = 1) or ``"flow"`` (alpha = 1 - sigma).
            final: ``"zero"`` (the N-th step goes to the clean end) or ``"keep"`` (N + 1 points,
                ending at lambda_max).
        """
        return LogSNRSchedule(lambda_min, lambda_max, family=family, final=final)

    @staticmethod
    def explicit(t, alpha, sigma, *, family: str = "vp", alphas_cumprod=None) -> "ExplicitSchedule":
        """A schedule of given points: ``t, alpha, sigma`` are N + 1 numbers each (model time,
        signal and noise coefficient of x = alpha x0 + sigma eps; sigma strictly decreasing, the
        last point never given to a model).  Sample it with ``steps=None`` (or ``steps=N``).

        ``family``: ``"vp"`` or ``"flow"`` (what the ``v`` / ``flow`` predictions assume).
        ``alphas_cumprod``: optional vp training table ``[T]``; model times are then training steps
        read from it (and may repeat), else interpolated over the points (and may not).  Used by the
        adapters (:mod:`ltc.adapters.diffusers`, :mod:`ltc.adapters.kdiffusion`) to reproduce
        another library's grid exactly; see :class:`ExplicitSchedule`.
        """
        return ExplicitSchedule(t, alpha, sigma, family=family, alphas_cumprod=alphas_cumprod)


def is_number(value) -> bool:
    """A real number: a Python or numpy int or float (bools are not numbers here)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_integer(value) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_number(name: str, value, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float if it is a finite number in the interval; else an error naming ``name``,
    the value and the interval (``low_open`` / ``high_open``: the bound itself is excluded)."""
    lo = "(-inf" if low is None else f"{'(' if low_open else '['}{low}"
    hi = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
    expected = "a finite number" + ("" if low is None and high is None else f" in {lo}, {hi}")
    if not is_number(value):
        raise TypeError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v) or (low is not None and (v < low or (low_open and v == low))) \
            or (high is not None and (v > high or (high_open and v == high))):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return v


def check_bool(name: str, value) -> bool:
    """``value`` if it is a bool (Python or numpy); a string such as ``"no"`` is not."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def _check_train_steps(value) -> int:
    if not is_integer(value) or value < 2:
        raise ValueError(f"num_train_timesteps must be an int >= 2 (the training steps of the model), "
                         f"got {value!r}")
    return int(value)


def _check_steps(steps, maximum: int | None) -> int:
    if not is_integer(steps):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if maximum is not None and steps > maximum:
        raise ValueError(f"steps must be <= num_train_timesteps ({maximum}), got {steps}")
    return int(steps)


def _check_choice(name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _check_time(t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor of model times, got {type(t).__name__}")


def _interp(x: torch.Tensor, xp: np.ndarray, fp: np.ndarray) -> torch.Tensor:
    """Piecewise-linear interpolation of ``fp(xp)`` at ``x`` (``xp`` increasing), in x's dtype."""
    dtype = x.dtype if x.is_floating_point() else torch.float64
    xp_t = torch.as_tensor(xp, dtype=dtype, device=x.device)
    fp_t = torch.as_tensor(fp, dtype=dtype, device=x.device)
    xc = x.to(dtype).clamp(xp_t[0], xp_t[-1])
    idx = torch.searchsorted(xp_t, xc.contiguous(), right=True).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp_t[idx - 1], xp_t[idx], fp_t[idx - 1], fp_t[idx]
    return f0 + (f1 - f0) * (xc - x0) / (x1 - x0)


def train_alphas_cumprod(beta_schedule: str, num_train_timesteps: int = 1000,
                         beta_start: float | None = None, beta_end: float | None = None) -> np.ndarray:
    """``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` for t = 0..T-1 (float64).

    ``linear``: beta linear in [beta_start, beta_end] (default 1e-4, 0.02, DDPM).
    ``scaled_linear``: sqrt(beta) linear (default 0.00085, 0.012, Stable Diffusion).
    ``squaredcos_cap_v2``: Nichol & Dhariwal cosine, alpha_bar(s) = cos^2((s + 0.008)/1.008 * pi/2),
    beta_t = min(1 - alpha_bar((t+1)/T) / alpha_bar(t/T), 0.999).
    """
    betas = _betas(beta_schedule, num_train_timesteps, beta_start, beta_end,
                   lambda a, b, n: np.linspace(a, b, n, dtype=np.float64))
    return np.cumprod(1.0 - betas)


def _betas(beta_schedule: str, num_train_timesteps: int, beta_start, beta_end, linspace):
    """The checked betas of ``beta_schedule``, their linear ramps drawn by ``linspace(a, b, n)`` (numpy
    float64 for ltc's table, torch float32 for diffusers'); the cosine's in float64 (numpy)."""
    _check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    T = _check_train_steps(num_train_timesteps)
    b0, b1 = _check_betas(beta_schedule, beta_start, beta_end)
    if beta_schedule == "linear":
        return linspace(b0, b1, T)
    if beta_schedule == "scaled_linear":
        return linspace(b0 ** 0.5, b1 ** 0.5, T) ** 2
    return _cosine_betas(T)


def _cosine_betas(T: int) -> np.ndarray:
    """Nichol & Dhariwal's betas (diffusers' ``betas_for_alpha_bar``), float64."""
    def abar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)])


def diffusers_sigma_table(beta_schedule: str, num_train_timesteps: int = 1000, beta_start: float | None = None,
                          beta_end: float | None = None) -> np.ndarray:
    """k_j = sqrt((1 - alpha_bar_j) / alpha_bar_j), j = 0..T-1, as diffusers' schedulers compute it:
    betas (``torch.linspace``) and their cumulative product in float32, so k is within float32
    round-off of :func:`train_alphas_cumprod`'s but *equal* to diffusers' (float32 array).  The
    rules ``"dpm_solver"`` and ``"euler"`` place their Karras points and round their model times on
    it, as diffusers does (a float64 table rounds about one Karras grid in ten differently)."""
    betas = torch.as_tensor(_betas(beta_schedule, num_train_timesteps, beta_start, beta_end,
                                   lambda a, b, n: torch.linspace(a, b, n, dtype=torch.float32)), dtype=torch.float32)
    abar = torch.cumprod(1.0 - betas, dim=0)
    return (((1 - abar) / abar) ** 0.5).numpy()


def diffusers_sigma_to_t(k: np.ndarray, log_k_table: np.ndarray) -> np.ndarray:
    """The fractional training step of each k: log k interpolated linearly over the table's
    steps, with diffusers' arithmetic (``_sigma_to_t``, float32 ``log_k_table``), so a rounded
    time is diffusers' exactly."""
    log_k = np.log(np.maximum(k, 1e-10))
    dists = log_k - log_k_table[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_k_table.shape[0] - 2)
    lo, hi = log_k_table[low], log_k_table[low + 1]
    w = np.clip((lo - log_k) / (lo - hi), 0, 1)
    return (1 - w) * low + w * (low + 1)


def karras_sigmas(k_min: float, k_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) eq. 5: k_i = (k_max^(1/rho) + i/(N-1) (k_min^(1/rho) - k_max^(1/rho)))^rho,
    i = 0..N-1 (diffusers' ``_convert_to_karras``)."""
    ramp = np.linspace(0, 1, steps)
    return (k_max ** (1 / rho) + ramp * (k_min ** (1 / rho) - k_max ** (1 / rho))) ** rho


DEFAULT_BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}


def _check_betas(beta_schedule: str, beta_start, beta_end) -> tuple[float, float]:
    """``(beta_start, beta_end)`` with the schedule's defaults for None; each in (0, 1).  The cosine
    schedule has no such parameters, so giving one is refused rather than ignored."""
    if beta_schedule not in DEFAULT_BETAS:
        if beta_start is not None or beta_end is not None:
            raise ValueError(f"beta_start and beta_end do not apply to beta_schedule={beta_schedule!r} (its betas "
                             f"follow the cosine); leave them None, got {beta_start!r}, {beta_end!r}")
        return math.nan, math.nan
    defaults = DEFAULT_BETAS[beta_schedule]
    return tuple(default if value is None else
                 check_number(name, value, 0.0, 1.0, low_open=True, high_open=True)
                 for name, value, default in zip(("beta_start", "beta_end"), (beta_start, beta_end), defaults))


def timestep_spacing(spacing: str, steps: int, num_train_timesteps: int, steps_offset: int = 0,
                     rule: str = "ddim") -> np.ndarray:
    """Decreasing model times of the ``steps`` model evaluations, as the diffusers scheduler family
    ``rule`` spaces them (T = ``num_train_timesteps``, N = ``steps``):

    * ``"ddim"`` (``DDIMScheduler``): ``linspace``: round(linspace(0, T-1, N)) reversed; ``leading``:
      arange(N) * (T // N) reversed, plus ``steps_offset``; ``trailing``: the first N of
      round(arange(T, 0, -T/N)) - 1 (the float arange holds N + 1 points for some N, e.g. 61 of
      T = 1000, where diffusers' last timestep is -1; its first N are diffusers' values).
    * ``"dpm_solver"`` (``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler``): ``linspace``
      and ``leading`` take the first N of N + 1 points: round(linspace(0, T-1, N+1)) reversed, and
      arange(N+1) * (T // (N+1)) reversed, plus ``steps_offset``; ``trailing`` as DDIM's.
    * ``"euler"`` (``EulerDiscreteScheduler``): ``linspace`` is *fractional*, linspace(0, T-1, N)
      reversed in float32 (diffusers' values exactly); ``leading`` and ``trailing`` as DDIM's.

    Integers (as float64) except Euler's linspace.
    """
    _check_choice("spacing", spacing, SPACINGS)
    _check_choice("rule", rule, GRID_RULES)
    T, N = num_train_timesteps, steps
    points = N + 1 if rule == "dpm_solver" and spacing != "trailing" else N
    if spacing == "linspace" and rule == "euler":
        ts = np.linspace(0, T - 1, N, dtype=np.float32)[::-1]
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, points).round()[::-1][:N]
    elif spacing == "leading":
        ts = (np.arange(points) * (T // points)).round()[::-1][:N] + steps_offset
    else:
        ts = np.round(np.arange(T, 0, -T / N))[:N] - 1
    ts = ts.astype(np.float64)
    if ts.max() > T - 1 or ts.min() < 0:
        raise ValueError(f"spacing {spacing!r} with steps_offset={steps_offset} puts the {N} steps at training "
                         f"steps {ts.max():.0f}..{ts.min():.0f}, outside [0, {T - 1}]; use fewer steps "
                         "or a smaller steps_offset")
    if np.any(np.diff(ts) >= 0):
        k = int(np.flatnonzero(np.diff(ts) >= 0)[0])
        raise ValueError(f"spacing {spacing!r} under rule {rule!r} with steps={N} repeats training step {ts[k]:.0f} "
                         f"(steps {k} and {k + 1}) of num_train_timesteps={T}: use fewer steps or another spacing")
    return ts


@dataclass(frozen=True, repr=False)
class VPSchedule(Schedule):
    """Discrete variance-preserving schedule over ``num_train_timesteps`` training steps.

    :meth:`discretize` places the N model points as the diffusers scheduler family ``rule`` does
    for the same config (``beta_schedule``, ``spacing`` = ``timestep_spacing``, ``steps_offset``,
    ``karras`` = ``use_karras_sigmas``, ``final``), to float32 round-off; k = sigma / alpha is the
    EDM / diffusers sigma, alpha = 1 / sqrt(1 + k^2), and k_j = sqrt((1 - alpha_bar_j) / alpha_bar_j)
    at training step j:

    * ``"ddim"`` -- ``DDIMScheduler``: points at the spacing's integer timesteps
      (:func:`timestep_spacing`), alpha^2 = alpha_bar_t.  Karras sigmas (no DDIMScheduler option):
      ltc's own, as ``"dpm_solver"`` but fed the fractional t.
    * ``"dpm_solver"`` -- ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler``: the spacing
      takes N of N + 1 points (``[901, 811, ...]`` for leading, 10 steps, offset 1).  Karras: k
      follows Karras et al. (rho = 7) from k_{T-1} to k_0, the model is fed round(t) (truncated for
      ``squaredcos_cap_v2``, as DPMSolverMultistep does; UniPC rounds) of the t interpolating log k
      over the training steps, while the update uses the Karras k itself, so at large N consecutive
      points can share a model time (``[..., 2, 1, 1, 0]``: fed twice at two noise levels).
    * ``"euler"`` -- ``EulerDiscreteScheduler`` (``interpolation_type="linear"``): ``linspace`` gives
      fractional t (float32 linspace(0, T-1, N)) with k interpolated *linearly* in t between training
      steps; Karras: the rho = 7 ramp from k at the spacing's first timestep to k at its last, fed
      the fractional t (log k interpolated).

    Points at integer training steps read ltc's float64 table, so they equal :meth:`noise_at` (what
    model time t means: log k linear between training steps, whatever the rule) and diffusers'
    float32 values to their round-off (<= 3e-6 in alpha, sigma).  Under ``"dpm_solver"`` and
    ``"euler"`` the Karras points, Euler's fractional ones and the ``final="last"`` end point are
    computed on diffusers' float32 table (:func:`diffusers_sigma_table`): its rounded times are then
    diffusers' exactly, and its sigma_min (off by up to 3e-4 relative in float32, which moves a last
    step's result by up to 4e-5) too.  The grid's alpha, sigma differ from ``noise_at(t)`` where
    diffusers' do (rounded Karras times, Euler's k-linear interpolation).

    ``final``: where the last step lands -- ``"zero"`` (alpha = 1, sigma = 0, model time -1;
    diffusers' ``set_alpha_to_one=True`` / ``final_sigmas_type="zero"``, their class defaults) or
    ``"last"`` (training step 0, alpha_bar_0: ``set_alpha_to_one=False`` /
    ``final_sigmas_type="sigma_min"``).  Where the N-th model point is training step 0 already (a
    spacing ending at 0, Karras sigmas) diffusers' last step has zero length (a model call that
    leaves the sample unchanged); ltc refuses it (use ``final="zero"``, or
    :mod:`ltc.adapters.diffusers`, which drops that step and keeps diffusers' samples).
    Not reproduced: DDIMScheduler's off-grid steps (it steps t -> t - T // N, off its own timesteps
    for ``linspace``, and for ``trailing`` where N does not divide T; ltc steps between consecutive
    timesteps); ``use_exponential_sigmas`` / ``use_lu_lambdas`` / ``use_beta_sigmas``,
    ``lambda_min_clipped``, EulerDiscrete's Karras with ``steps_offset`` (use the adapter for these);
    UniPC's rounding of cosine Karras times; the step counts where diffusers' trailing arange holds
    N + 1 points (its extra timestep is -1; ltc takes the first N).
    """

    beta_schedule: str = "scaled_linear"
    spacing: str = "leading"
    beta_start: float | None = None
    beta_end: float | None = None
    num_train_timesteps: int = 1000
    steps_offset: int = 0
    karras: bool = False
    final: str = "zero"
    family: str = field(default="vp", init=False)

    def __post_init__(self):
        _check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _check_choice("spacing", self.spacing, SPACINGS)
        _check_choice("final", self.final, ("zero", "last"))
        T = _check_train_steps(self.num_train_timesteps)
        _check_betas(self.beta_schedule, self.beta_start, self.beta_end)
        karras = check_bool("karras", self.karras)
        if not is_integer(self.steps_offset) or not 0 <= self.steps_offset < T:
            raise ValueError(f"steps_offset must be an int in [0, {T - 1}] (added to the training steps of "
                             f"spacing='leading'), got {self.steps_offset!r}")
        if self.steps_offset and (self.spacing != "leading" or karras):
            raise ValueError(f"steps_offset={self.steps_offset} only shifts spacing='leading' without Karras sigmas "
                             f"(diffusers' convention; EulerDiscrete's Karras sigmas with an offset: use "
                             f"ltc.adapters.diffusers), got spacing={self.spacing!r}, karras={karras}")
        if self.final == "last" and karras:
            raise ValueError("final='last' lands on training step 0, where Karras sigmas end already: diffusers "
                             "(final_sigmas_type='sigma_min') repeats that sigma, a zero-length last step that "
                             "spends a model call and removes no noise; use final='zero', or "
                             "ltc.adapters.diffusers for such a scheduler (it drops the zero-length step)")
        for name in ("beta_start", "beta_end"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "num_train_timesteps", T)
        object.__setattr__(self, "steps_offset", int(self.steps_offset))
        object.__setattr__(self, "karras", karras)
        abar = train_alphas_cumprod(self.beta_schedule, self.num_train_timesteps,
                                    self.beta_start, self.beta_end)
        object.__setattr__(self, "_abar", abar)
        object.__setattr__(self, "_log_k", 0.5 * np.log((1 - abar) / abar))
        object.__setattr__(self, "_train_steps", np.arange(T, dtype=np.float64))
        k32 = diffusers_sigma_table(self.beta_schedule, T, self.beta_start, self.beta_end)
        object.__setattr__(self, "_k32", k32.astype(np.float64))
        object.__setattr__(self, "_log_k32", np.log(k32))

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return self._abar.copy()

    def config(self) -> dict:
        return {"class": "vp", "beta_schedule": self.beta_schedule, "spacing": self.spacing,
                "beta_start": self.beta_start, "beta_end": self.beta_end,
                "num_train_timesteps": self.num_train_timesteps, "steps_offset": self.steps_offset,
                "karras": self.karras, "final": self.final}

    def discretize(self, steps: int | None, rule: str = "ddim") -> Grid:
        """N steps placed as the diffusers scheduler family ``rule`` places them (see the class docstring)."""
        _check_choice("rule", rule, GRID_RULES)
        if steps is None:
            raise ValueError("steps is required for a vp schedule")
        N = _check_steps(steps, self.num_train_timesteps)
        T = self.num_train_timesteps
        if self.karras:
            t, k = self._karras_points(N, rule)
            alpha = 1 / np.sqrt(1 + k ** 2)
            sigma = k * alpha
        elif rule == "euler" and self.spacing == "linspace":  # fractional t, k linear in diffusers' table
            t = timestep_spacing(self.spacing, N, T, self.steps_offset, rule)
            k = np.interp(t, self._train_steps, self._k32)
            alpha = 1 / np.sqrt(1 + k ** 2)
            sigma = k * alpha
        else:
            t = timestep_spacing(self.spacing, N, T, self.steps_offset, rule)
            abar = self._abar[t.astype(np.int64)]
            alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
        if self.final == "last" and t[-1] == 0:
            raise ValueError(f"final='last' lands on training step 0, where spacing={self.spacing!r} with "
                             f"steps={N} ends already (rule {rule!r}): the last step would remove no noise (diffusers "
                             "takes it as a zero-length step: a model call that leaves the sample unchanged); use "
                             "final='zero' or another step count")
        if self.final == "zero":
            t_end, a_end, s_end = -1.0, 1.0, 0.0
        elif rule == "ddim":
            t_end, a_end, s_end = 0.0, math.sqrt(self._abar[0]), math.sqrt(1 - self._abar[0])
        else:  # diffusers' float32 sigma_min: its 1 - alpha_bar_0 cancellation moves the last step's end by ~1e-4
            k0 = float(self._k32[0])
            t_end, a_end, s_end = 0.0, 1 / math.sqrt(1 + k0 ** 2), k0 / math.sqrt(1 + k0 ** 2)
        return Grid(np.append(t, t_end), np.append(alpha, a_end), np.append(sigma, s_end), "vp")

    def _karras_points(self, N: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
        """Model times and k = sigma/alpha of N Karras points under ``rule``: ``ddim`` ltc's own
        (float64 table, fractional t); ``dpm_solver`` / ``euler`` as DPMSolverMultistep / EulerDiscrete
        compute them, on diffusers' float32 table (its rounded times are diffusers' exactly)."""
        if rule == "ddim":
            k = karras_sigmas(np.exp(self._log_k[0]), np.exp(self._log_k[-1]), N)
            return np.interp(np.log(k), self._log_k, self._train_steps), k
        if rule == "euler":  # the ramp spans k at the spacing's first and last timesteps
            ts = timestep_spacing(self.spacing, N, self.num_train_timesteps, self.steps_offset, rule)
            k_max, k_min = np.interp(ts[[0, -1]], self._train_steps, self._k32)
        else:
            k_min, k_max = self._k32[0], self._k32[-1]
        k = karras_sigmas(float(k_min), float(k_max), N)
        t = diffusers_sigma_to_t(k, self._log_k32)
        if rule == "dpm_solver":  # the model is fed an integer time; the update keeps the Karras k
            t = np.trunc(t) if self.beta_schedule == "squaredcos_cap_v2" else np.round(t)
        return t, k

    def noise_at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log k = log(sigma/alpha) interpolated linearly between integer training steps
        (exact at integers; the inverse of the Karras time lookup); t < 0 means the clean end."""
        return _table_noise_at(t, self._log_k)


def _table_noise_at(t: torch.Tensor, log_k: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha, sigma)`` at model time t of a training table ``log_k[j]``, j = 0..T-1: log k
    linear between integer steps (clamped to the table), the clean end (1, 0) where t < 0."""
    _check_time(t)
    log_k_t = _interp(t, np.arange(len(log_k), dtype=np.float64), log_k)
    alpha = torch.rsqrt(1 + torch.exp(2 * log_k_t))
    sigma = alpha * torch.exp(log_k_t)
    clean = t < 0
    return torch.where(clean, torch.ones_like(alpha), alpha), torch.where(clean, torch.zeros_like(sigma), sigma)


@dataclass(frozen=True, repr=False)
class FlowSchedule(Schedule):
    """Rectified flow: ``x_s = (1 - s) x0 + s eps``, model time ``t = s * T``.

    With ``shift(s) = shift * s / (1 + (shift - 1) * s)`` (SD3), the N model points under the rules
    ``"euler"`` and ``"ddim"`` are ``FlowMatchEulerDiscreteScheduler``'s: ``shift(linspace(1,
    sigma_min, N))`` with ``sigma_min = shift(1 / T)`` by default (diffusers shifts its sigma_min
    once in ``__init__`` and again in ``set_timesteps``); an explicit ``sigma_min`` is used as given
    (``sigma_min=1/T``: a single shift).  Under ``"dpm_solver"`` they are
    ``DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=shift)``'s: the first N of
    ``shift(linspace(1 - 1/T, 0, N + 1))``, the model fed trunc(s T) as diffusers' int64 timesteps
    (no ``sigma_min``: giving one is refused there).  A final clean point ``s = 0`` is appended.
    Not reproduced: UniPC's flow sigmas (``linspace(1, 1/T, N + 1)``, first N, shifted, the first
    lowered by 1e-6), dynamic shifting (``mu``; use :mod:`ltc.adapters.diffusers`).
    """

    shift: float = 1.0
    num_train_timesteps: int = 1000
    sigma_min: float | None = None
    family: str = field(default="flow", init=False)

    def __post_init__(self):
        shift = check_number("shift", self.shift, 0.0, low_open=True)
        T = _check_train_steps(self.num_train_timesteps)
        if self.sigma_min is not None:
            object.__setattr__(self, "sigma_min", check_number("sigma_min", self.sigma_min, 0.0, 1.0,
                                                               low_open=True, high_open=True))
        object.__setattr__(self, "shift", shift)
        object.__setattr__(self, "num_train_timesteps", T)
        s = self._sigmas(T)  # the finest grid: coarser ones (N <= T) are then valid too
        if not (np.all(np.diff(s) < 0) and s[-1] > 0 and s[0] <= 1):
            raise ValueError(f"shift={self.shift!r} (sigma_min={self.sigma_min}, num_train_timesteps={T}) gives "
                             f"shifted sigmas in [{float(s[-1])!r}, {float(s[0])!r}] that do not decrease "
                             f"strictly in float64 on a {T}-step grid; use a {'smaller' if shift > 1 else 'larger'} "
                             "shift")

    def _shifted(self, s: np.ndarray | float) -> np.ndarray:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            return self.shift * s / (1 + (self.shift - 1) * s)

    def _sigmas(self, N: int) -> np.ndarray:
        """The N shifted sigmas of FlowMatchEuler's model steps (before the clean end)."""
        smin = self.sigma_min if self.sigma_min is not None else self._shifted(1.0 / self.num_train_timesteps)
        return self._shifted(np.linspace(1.0, smin, N))

    def config(self) -> dict:
        return {"class": "flow", "shift": float(self.shift),
                "num_train_timesteps": self.num_train_timesteps, "sigma_min": self.sigma_min}

    def discretize(self, steps: int | None, rule: str = "ddim") -> Grid:
        _check_choice("rule", rule, GRID_RULES)
        if steps is None:
            raise ValueError("steps is required for a flow schedule")
        N = _check_steps(steps, self.num_train_timesteps)
        T = self.num_train_timesteps
        if rule != "dpm_solver":
            s = np.append(self._sigmas(N), 0.0)
            return Grid(s * T, 1 - s, s, "flow")
        if self.sigma_min is not None:
            raise ValueError(f"sigma_min={self.sigma_min!r} has no counterpart under rule 'dpm_solver' "
                             "(DPMSolverMultistepScheduler's flow sigmas end at shift((1 - 1/T) / N)); leave it None")
        s = np.append(self._shifted(1.0 - np.linspace(1, 1 / T, N + 1))[::-1][:N], 0.0)
        return Grid(np.append(np.trunc(s[:-1] * T), 0.0), 1 - s, s, "flow")

    def noise_at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_time(t)
        dtype = t.dtype if t.is_floating_point() else torch.float64
        s = t.to(dtype) / self.num_train_timesteps
        return 1 - s, s


@dataclass(frozen=True, repr=False)
class LogSNRSchedule(Schedule):
    """A continuous schedule uniform in log-SNR, model time ``t = lambda``.

    ``N`` steps visit ``lambda_min .. lambda_max`` uniformly (N + 1 points), or with
    ``final="zero"`` N points up to lambda_max and then the clean end (lambda = +inf).
    lambda = log(alpha / sigma) as everywhere in ltc, so vp: alpha^2 = sigmoid(2 lambda),
    sigma^2 = sigmoid(-2 lambda); flow: sigma = 1 / (1 + e^lambda).
    Used for convergence-order measurements (grids ending at positive noise) and the oracles.
    No diffusers counterpart: every grid rule gives the same grid.
    """

    lambda_min: float = -6.0
    lambda_max: float = 6.0
    family: str = "vp"
    final: str = "zero"

    def __post_init__(self):
        _check_choice("family", self.family, FAMILIES)
        _check_choice("final", self.final, ("zero", "keep"))
        lo, hi = (check_number(name, getattr(self, name)) for name in ("lambda_min", "lambda_max"))
        if not lo < hi:
            raise ValueError(f"lambda_min must be < lambda_max, got {self.lambda_min}, {self.lambda_max}")
        object.__setattr__(self, "lambda_min", lo)
        object.__setattr__(self, "lambda_max", hi)
        with np.errstate(over="ignore", under="ignore"):
            alpha, sigma = self._alpha_sigma(np.array([lo, hi]))
        for k, name in enumerate(("lambda_min", "lambda_max")):
            if not (alpha[k] > 0 and sigma[k] > 0):
                raise ValueError(f"{name}={getattr(self, name)!r} gives alpha = {float(alpha[k])!r}, "
                                 f"sigma = {float(sigma[k])!r} in float64 on a {self.family} schedule; both must "
                                 f"be > 0: use a {'larger' if k == 0 else 'smaller'} {name}")
        if not sigma[0] > sigma[1]:
            raise ValueError(f"lambda_min={lo!r} and lambda_max={hi!r} give the same sigma in float64; "
                             "widen the interval")

    def config(self) -> dict:
        return {"class": "log_snr", "lambda_min": float(self.lambda_min),
                "lambda_max": float(self.lambda_max), "family": self.family, "final": self.final}

    def _alpha_sigma(self, lam):
        if self.family == "vp":
            return np.sqrt(1 / (1 + np.exp(-2 * lam))), np.sqrt(1 / (1 + np.exp(2 * lam)))
        sigma = 1 / (1 + np.exp(lam))
        return 1 - sigma, sigma

    def discretize(self, steps: int | None, rule: str = "ddim") -> Grid:
        _check_choice("rule", rule, GRID_RULES)
        if steps is None:
            raise ValueError("steps is required for a log_snr schedule")
        N = _check_steps(steps, None)
        if self.final == "keep":
            lam = np.linspace(self.lambda_min, self.lambda_max, N + 1)
            alpha, sigma = self._alpha_sigma(lam)
            return Grid(lam, alpha, sigma, self.family)
        lam = np.linspace(self.lambda_min, self.lambda_max, N)
        alpha, sigma = self._alpha_sigma(lam)
        return Grid(np.append(lam, np.inf), np.append(alpha, 1.0), np.append(sigma, 0.0), self.family)

    def noise_at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_time(t)
        lam = t.to(t.dtype if t.is_floating_point() else torch.float64)
        if self.family == "vp":
            return torch.sigmoid(2 * lam).sqrt(), torch.sigmoid(-2 * lam).sqrt()
        sigma = torch.sigmoid(-lam)
        return 1 - sigma, sigma


class ExplicitSchedule(Schedule):
    """User-given points ``t, alpha, sigma`` (N + 1 of each, sigma strictly decreasing).

    What a model time means (:meth:`noise_at`, used by the exact oracles):

    * without ``alphas_cumprod``: linear interpolation between the given points (exact at them),
      so the model times must not repeat;
    * with ``alphas_cumprod`` (a vp training table alpha_bar_0..alpha_bar_{T-1}): t is a training
      step, and noise_at is :class:`VPSchedule`'s on that table (log k, k = sqrt((1 - alpha_bar) /
      alpha_bar), linear between integer steps; t < 0 the clean end), independent of the points.
      Model times may then repeat (diffusers' rounded Karras grids feed one time at two noise
      levels, ``[..., 2, 1, 1, 0]``) and must lie in [0, T - 1] (the last point, never given to a
      model, may be anything).
    """

    def __init__(self, t, alpha, sigma, *, family: str = "vp", alphas_cumprod=None):
        _check_choice("family", family, FAMILIES)
        arrays = []
        for name, values in (("t", t), ("alpha", alpha), ("sigma", sigma)):
            try:
                arrays.append(np.asarray(values, np.float64))
            except (TypeError, ValueError):
                raise TypeError(f"{name} must be a 1-D sequence of numbers, got {type(values).__name__}") from None
        self._grid = Grid(*arrays, family)
        self.family = family
        self._log_k = None if alphas_cumprod is None else _table_log_k(alphas_cumprod, family, self._grid.t)
        if self._log_k is None:
            ts = self._grid.t
            finite = np.isfinite(ts)
            repeats = np.flatnonzero(np.diff(ts[finite]) == 0)
            if len(repeats):
                t_rep = float(ts[finite][repeats[0]])
                raise ValueError(f"explicit t must not repeat a value (t = {t_rep!r} twice): noise_at interpolates "
                                 "alpha, sigma over t; give the training table as alphas_cumprod= to map model times "
                                 "to noise levels (repeated times are then allowed)")

    def config(self) -> dict:
        table = {} if self._log_k is None else \
            {"log_k_table_sha256": hashlib.sha256(self._log_k.tobytes()).hexdigest()}
        return {"class": "explicit", **self._grid.digest(), **table}

    def discretize(self, steps: int | None, rule: str = "ddim") -> Grid:
        """The given points, whatever the rule (they are already some scheduler's grid)."""
        _check_choice("rule", rule, GRID_RULES)
        if steps is not None and steps != self._grid.steps:
            raise ValueError(f"steps={steps} does not match the explicit schedule, which has "
                             f"{self._grid.steps} steps; pass steps=None")
        return self._grid

    def noise_at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._log_k is not None:
            return _table_noise_at(t, self._log_k)
        _check_time(t)
        g = self._grid
        finite = np.isfinite(g.t)
        ts, al, si = g.t[finite], g.alpha[finite], g.sigma[finite]
        order = np.argsort(ts)
        return _interp(t, ts[order], al[order]), _interp(t, ts[order], si[order])


def _table_log_k(alphas_cumprod, family: str, t: np.ndarray) -> np.ndarray:
    """log k_j = log sqrt((1 - alpha_bar_j) / alpha_bar_j) of a checked training table."""
    if family != "vp":
        raise ValueError(f"alphas_cumprod is a vp training table; family={family!r} takes none (leave it None)")
    if isinstance(alphas_cumprod, torch.Tensor):
        alphas_cumprod = alphas_cumprod.detach().cpu().to(torch.float64).numpy()
    try:
        abar = np.array(alphas_cumprod, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"alphas_cumprod must be a 1-D sequence of numbers, got {type(alphas_cumprod).__name__}") \
            from None
    if abar.ndim != 1 or len(abar) < 2:
        raise ValueError(f"alphas_cumprod must be 1-D with >= 2 training steps, got shape {abar.shape}")
    bad = np.flatnonzero(~((abar > 0) & (abar < 1)))
    if len(bad):
        raise ValueError(f"alphas_cumprod must lie in (0, 1) at every training step; alphas_cumprod[{bad[0]}] = "
                         f"{float(abar[bad[0]])!r}")
    T, model_t = len(abar), t[:-1]
    bad = np.flatnonzero((model_t < 0) | (model_t > T - 1))
    if len(bad):
        raise ValueError(f"with alphas_cumprod (T = {T} training steps) every model time t[:-1] must lie in "
                         f"[0, {T - 1}]; t[{bad[0]}] = {float(model_t[bad[0]])!r}")
    return 0.5 * np.log((1 - abar) / abar)
