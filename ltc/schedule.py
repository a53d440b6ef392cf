"""Noise schedules and their discretisation into sampling grids.

Every schedule describes the forward process

    x_t = alpha_t * x0 + sigma_t * eps,        eps ~ N(0, I)

with lambda_t = log(alpha_t / sigma_t), half the log signal-to-noise ratio (DPM-Solver's lambda).  Two families:

* ``vp``   (variance preserving): alpha_t^2 + sigma_t^2 = 1, alpha_t^2 = prod_{s<=t}(1 - beta_s)
  over ``num_train_timesteps`` discrete training steps (DDPM, Stable Diffusion).
* ``flow`` (rectified flow / flow matching): alpha_t = 1 - sigma_t, sigma in [0, 1]; the model
  time input is ``t = sigma * num_train_timesteps`` (the SD3 / diffusers convention).

A :class:`Schedule` is the *continuous* description; :meth:`Schedule.discretize` turns it into a
:class:`Grid` of ``N + 1`` points for ``N`` sampling steps.  Step ``i`` goes from point ``i``
(where the model is evaluated, with time input ``t[i]``) to point ``i + 1``.  The last point is
never fed to a model; it is usually the clean end ``sigma = 0``.

:meth:`Schedule.noise_at` maps any model time back to ``(alpha, sigma)``; the exact oracles use
it, so they work with every schedule, including fractional times from Karras grids.

This module is the one place that defines alpha, sigma and lambda.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch

FAMILIES = ("vp", "flow")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("linspace", "leading", "trailing")
PROGRESS_VARIABLES = ("sigma", "t", "lambda")


@dataclass(frozen=True, eq=False)
class Grid:
    """A discretised schedule: ``N`` steps between ``N + 1`` points (float64, host).

    Attributes:
        t: ``[N+1]`` model time input at each point (``t[N]`` is never given to a model).
        alpha, sigma: ``[N+1]`` noise coefficients, ``sigma`` strictly decreasing.
        family: ``"vp"`` or ``"flow"``.
    """

    t: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    family: str

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
        bad = np.flatnonzero(np.diff(self.sigma) >= 0)
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

    def discretize(self, steps: int | None) -> Grid:  # pragma: no cover - abstract
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
                or ``"linspace"`` (diffusers' definitions, :func:`timestep_spacing`).
            beta_start, beta_end: the betas' end points (None: the schedule's defaults).
            num_train_timesteps: T, the number of training steps.
            steps_offset: added to ``leading`` timesteps (Stable Diffusion uses 1).
            karras: Karras et al. sigmas (rho = 7) in k = sigma/alpha instead of ``spacing``.
            final: the last point: ``"zero"`` (clean, sigma = 0) or ``"last"`` (the first training step).

        Example: ``Schedule.vp("scaled_linear", spacing="leading", steps_offset=1)`` is Stable
        Diffusion's; see :class:`VPSchedule`.
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
            sigma_min: the last noisy level before the clean end (None: 1 / T).
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
    def explicit(t, alpha, sigma, *, family: str = "vp") -> "ExplicitSchedule":
        """A schedule of given points: ``t, alpha, sigma`` are N + 1 numbers each (model time,
        signal and noise coefficient of x = alpha x0 + sigma eps; sigma strictly decreasing, the
        last point never given to a model).  Sample it with ``steps=None`` (or ``steps=N``).

        ``family``: ``"vp"`` or ``"flow"`` (what the ``v`` / ``flow`` predictions assume).  Used by
        the adapters (:mod:`ltc.adapters.diffusers`, :mod:`ltc.adapters.kdiffusion`) to reproduce
        another library's grid exactly; see :class:`ExplicitSchedule`.
        """
        return ExplicitSchedule(t, alpha, sigma, family=family)


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
    _check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    T = _check_train_steps(num_train_timesteps)
    b0, b1 = _check_betas(beta_schedule, beta_start, beta_end)
    if beta_schedule == "linear":
        betas = np.linspace(b0, b1, T, dtype=np.float64)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=np.float64) ** 2
    else:
        def abar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)])
    return np.cumprod(1.0 - betas)


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


def timestep_spacing(spacing: str, steps: int, num_train_timesteps: int, steps_offset: int = 0) -> np.ndarray:
    """Decreasing integer model times for ``steps`` evaluations (diffusers' definitions).

    ``linspace``: round(linspace(0, T-1, N)) reversed; ``leading``: arange(N) * (T // N) reversed,
    plus ``steps_offset``; ``trailing``: the first N of round(arange(T, 0, -T/N)) - 1 (the float
    arange holds N + 1 points for some N, e.g. 61 of T = 1000; its first N are diffusers' values).
    """
    _check_choice("spacing", spacing, SPACINGS)
    T, N = num_train_timesteps, steps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, N).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(N) * (T // N)).round()[::-1] + steps_offset
    else:
        ts = np.round(np.arange(T, 0, -T / N))[:N] - 1
    ts = ts.astype(np.float64)
    if ts.max() > T - 1 or ts.min() < 0:
        raise ValueError(f"spacing {spacing!r} with steps_offset={steps_offset} puts the {N} steps at training "
                         f"steps {ts.max():.0f}..{ts.min():.0f}, outside [0, {T - 1}]; use fewer steps "
                         "or a smaller steps_offset")
    return ts


@dataclass(frozen=True, repr=False)
class VPSchedule(Schedule):
    """Discrete variance-preserving schedule over ``num_train_timesteps`` training steps.

    ``final``: where the last step lands -- ``"zero"`` (alpha = 1, sigma = 0, model time -1;
    diffusers' ``set_alpha_to_one=True`` / ``final_sigmas_type="zero"``) or ``"last"``
    (the first training step, alpha_bar_0).
    ``karras``: sigmas in the EDM scale k = sigma/alpha follow Karras et al. (rho = 7) between the
    training extremes; model times are found by interpolating log k over the training steps.
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
                             f"(diffusers' convention), got spacing={self.spacing!r}, karras={karras}")
        if self.final == "last" and (karras or self.spacing == "linspace" or
                                     (self.spacing == "leading" and self.steps_offset == 0)):
            why = "Karras sigmas end" if karras else f"spacing={self.spacing!r} ends"
            raise ValueError(f"final='last' lands on training step 0, where {why} already: the last step would "
                             "remove no noise; use final='zero'" +
                             ("" if karras or self.spacing == "linspace" else " or steps_offset=1"))
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

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return self._abar.copy()

    def config(self) -> dict:
        return {"class": "vp", "beta_schedule": self.beta_schedule, "spacing": self.spacing,
                "beta_start": self.beta_start, "beta_end": self.beta_end,
                "num_train_timesteps": self.num_train_timesteps, "steps_offset": self.steps_offset,
                "karras": self.karras, "final": self.final}

    def discretize(self, steps: int | None) -> Grid:
        if steps is None:
            raise ValueError("steps is required for a vp schedule")
        N = _check_steps(steps, self.num_train_timesteps)
        if self.karras:
            k_min, k_max = np.exp(self._log_k[0]), np.exp(self._log_k[-1])
            ramp = np.linspace(0, 1, N)
            rho = 7.0
            k = (k_max ** (1 / rho) + ramp * (k_min ** (1 / rho) - k_max ** (1 / rho))) ** rho
            t = np.interp(np.log(k), self._log_k, np.arange(self.num_train_timesteps, dtype=np.float64))
            alpha = 1 / np.sqrt(1 + k ** 2)
            sigma = k * alpha
        else:
            t = timestep_spacing(self.spacing, N, self.num_train_timesteps, self.steps_offset)
            abar = self._abar[t.astype(np.int64)]
            alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
        if self.final == "last" and t[-1] == 0:
            raise ValueError(f"final='last' lands on training step 0, where spacing={self.spacing!r} with "
                             f"steps={N} ends already: the last step would remove no noise; use final='zero' "
                             "or fewer steps")
        if self.final == "zero":
            t_end, a_end, s_end = -1.0, 1.0, 0.0
        else:
            t_end, a_end, s_end = 0.0, math.sqrt(self._abar[0]), math.sqrt(1 - self._abar[0])
        return Grid(np.append(t, t_end), np.append(alpha, a_end), np.append(sigma, s_end), "vp")

    def noise_at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log k = log(sigma/alpha) interpolated linearly between integer training steps
        (exact at integers; the inverse of the Karras time lookup); t < 0 means the clean end."""
        _check_time(t)
        log_k = _interp(t, np.arange(self.num_train_timesteps, dtype=np.float64), self._log_k)
        alpha = torch.rsqrt(1 + torch.exp(2 * log_k))
        sigma = alpha * torch.exp(log_k)
        clean = t < 0
        return torch.where(clean, torch.ones_like(alpha), alpha), torch.where(clean, torch.zeros_like(sigma), sigma)


@dataclass(frozen=True, repr=False)
class FlowSchedule(Schedule):
    """Rectified flow: ``x_s = (1 - s) x0 + s eps``, model time ``t = s * T``.

    Sigmas are ``linspace(1, sigma_min, N)`` (``sigma_min`` defaults to 1/T), then shifted,
    ``s' = shift * s / (1 + (shift - 1) * s)`` (SD3), and a final clean point ``s = 0`` is appended.
    (diffusers' FlowMatchEulerDiscreteScheduler shifts its sigma_min once more before spacing;
    pass ``sigma_min`` explicitly to reproduce it.)
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

    def _sigmas(self, N: int) -> np.ndarray:
        """The N shifted sigmas of the model steps (before the clean end)."""
        smin = self.sigma_min if self.sigma_min is not None else 1.0 / self.num_train_timesteps
        s = np.linspace(1.0, smin, N)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            return self.shift * s / (1 + (self.shift - 1) * s)

    def config(self) -> dict:
        return {"class": "flow", "shift": float(self.shift),
                "num_train_timesteps": self.num_train_timesteps, "sigma_min": self.sigma_min}

    def discretize(self, steps: int | None) -> Grid:
        if steps is None:
            raise ValueError("steps is required for a flow schedule")
        N = _check_steps(steps, self.num_train_timesteps)
        s = np.append(self._sigmas(N), 0.0)
        return Grid(s * self.num_train_timesteps, 1 - s, s, "flow")

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

    def discretize(self, steps: int | None) -> Grid:
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

    ``noise_at`` interpolates linearly between the given points (exact at them).
    """

    def __init__(self, t, alpha, sigma, *, family: str = "vp"):
        _check_choice("family", family, FAMILIES)
        arrays = []
        for name, values in (("t", t), ("alpha", alpha), ("sigma", sigma)):
            try:
                arrays.append(np.asarray(values, np.float64))
            except (TypeError, ValueError):
                raise TypeError(f"{name} must be a 1-D sequence of numbers, got {type(values).__name__}") from None
        self._grid = Grid(*arrays, family)
        self.family = family
        ts = self._grid.t
        finite = np.isfinite(ts)
        if not np.all(np.diff(ts[finite]) != 0):
            raise ValueError("explicit t must not repeat a value")

    def config(self) -> dict:
        return {"class": "explicit", **self._grid.digest()}

    def discretize(self, steps: int | None) -> Grid:
        if steps is not None and steps != self._grid.steps:
            raise ValueError(f"steps={steps} does not match the explicit schedule, which has "
                             f"{self._grid.steps} steps; pass steps=None")
        return self._grid

    def noise_at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_time(t)
        g = self._grid
        finite = np.isfinite(g.t)
        ts, al, si = g.t[finite], g.alpha[finite], g.sigma[finite]
        order = np.argsort(ts)
        return _interp(t, ts[order], al[order]), _interp(t, ts[order], si[order])
