"""Samplers as pure functions of the grid: per-step linear update coefficients.

Every sampler here is written in data-prediction form.  With ``D_j`` the clean estimate (x0) of
the model at point ``j`` and ``z`` fresh standard noise, step ``i`` (point i -> i+1) is

    x_{i+1} = A_i x_i + B0_i D_i + B1_i D_{i-1} + B2_i D_{i-2} + C_i z                (*)

so a sampler is just the table ``(A, B0, B1, B2, C)`` plus the order used at each step (how many
past D it reads).  Symbols: alpha_i, sigma_i from :mod:`ltc.schedule`, lambda_i = log(alpha_i /
sigma_i), h_i = lambda_{i+1} - lambda_i.  Primes denote point i+1.

The tables are computed once on the host in float64 and compiled into the plan.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .schedule import Grid, check_bool, check_number, is_integer


@dataclass(frozen=True)
class SolverTable:
    """Per-step coefficients of (*), each ``[N]`` float64, and ``order[i]`` in {1, 2, 3}."""

    A: np.ndarray
    B0: np.ndarray
    B1: np.ndarray
    B2: np.ndarray
    C: np.ndarray
    order: np.ndarray


class Sampler:
    """Base class: ``table(grid)`` returns the :class:`SolverTable`; ``config()`` identifies it."""

    name: str = "sampler"
    stochastic: bool = False

    def table(self, grid: Grid) -> SolverTable:  # pragma: no cover - abstract
        raise NotImplementedError

    def first_order(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """``(A, B0)`` of the deterministic first-order step x' = A x + B0 D (DDIM), per step.
        Used to turn a state update into the model output it implies."""
        first = DDIM().table(grid)
        return first.A, first.B0

    def config(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class DDIM(Sampler):
    """DDIM (Song et al. 2021, eq. 12) in alpha/sigma notation:

        x' = alpha' D + sqrt(sigma'^2 - c^2) * (x - alpha D) / sigma + c z,
        c  = eta * (sigma' / sigma) * sqrt(1 - alpha^2 / alpha'^2)

    so A = sqrt(sigma'^2 - c^2) / sigma, B0 = alpha' - A alpha, C = c.  ``eta = 0`` is the
    deterministic sampler (= DPM-Solver++ first order); ``eta > 0`` needs a generator.
    """

    name = "ddim"

    def __init__(self, eta: float = 0.0):
        self.eta = check_number("eta", eta, 0.0, 1.0)
        self.stochastic = self.eta > 0

    def config(self) -> dict:
        return {"name": self.name, "eta": self.eta}

    def table(self, grid: Grid) -> SolverTable:
        a, s = grid.alpha[:-1], grid.sigma[:-1]
        a1, s1 = grid.alpha[1:], grid.sigma[1:]
        c = self.eta * (s1 / s) * np.sqrt(np.clip(1 - a ** 2 / a1 ** 2, 0, None))
        A = np.sqrt(np.clip(s1 ** 2 - c ** 2, 0, None)) / s
        B0 = a1 - A * a
        z = np.zeros_like(A)
        return SolverTable(A, B0, z, z.copy(), c, np.ones(len(A), np.int64))


class Euler(Sampler):
    """Euler's method on the probability-flow ODE.

    flow family: x' = x + (sigma' - sigma) v with velocity v = (x - D) / sigma
        -> A = sigma'/sigma, B0 = 1 - sigma'/sigma.
    vp family: Euler in the EDM variables u = x/alpha, k = sigma/alpha (k-diffusion's
        ``sample_euler``): u' = u + (k' - k)(u - D)/k  -> A = sigma'/sigma, B0 = alpha' (1 - k'/k).
    Both equal deterministic DDIM in exact arithmetic; they are kept as their own formulas.
    """

    name = "euler"

    def table(self, grid: Grid) -> SolverTable:
        a, s = grid.alpha[:-1], grid.sigma[:-1]
        a1, s1 = grid.alpha[1:], grid.sigma[1:]
        if grid.family == "flow":
            A = 1 + (s1 - s) / s
            B0 = -(s1 - s) / s
        else:
            k, k1 = s / a, s1 / a1
            A = (a1 / a) * (1 + (k1 - k) / k)
            B0 = -a1 * (k1 - k) / k
        z = np.zeros_like(A)
        return SolverTable(A, B0, z, z.copy(), z.copy(), np.ones(len(A), np.int64))


class DPMSolverPP(Sampler):
    """Multistep DPM-Solver++ (Lu et al. 2022, Algorithm 2 and its third-order extension).

    With phi1 = expm1(-h), A = sigma'/sigma, and past-step ratios r0 = h_{i-1}/h_i,
    r1 = h_{i-2}/h_i:

    * order 1:  x' = A x - alpha' phi1 D_i                                   (= DDIM)
    * order 2:  x' = A x - alpha' phi1 [(1 + 1/(2 r0)) D_i - 1/(2 r0) D_{i-1}]
    * order 3:  x' = A x - alpha' phi1 D_i + alpha' phi2 D1 - alpha' phi3 D2, with
        phi2 = phi1/h + 1, phi3 = phi2/h - 1/2,
        D1_0 = (D_i - D_{i-1}) / r0,  D1_1 = (D_{i-1} - D_{i-2}) / r1,
        D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r0 + r1).

    Orders follow diffusers' ``DPMSolverMultistepScheduler``: at step i min(order, i + 1)
    (warm-up); with ``lower_order_final`` and fewer than ``lower_order_below`` steps (diffusers:
    15) also min(., N - i), so the last steps fall back to lower order; ``euler_at_final`` makes
    the last step first order at any N.  A step that ends at sigma = 0 (h = inf) is always first
    order (diffusers' ``final_sigmas_type="zero"``, k-diffusion's rule).  ``lower_order_below=None``
    lowers the final orders at every N.
    """

    grid_rule = "dpm_solver"

    def __init__(self, order: int = 2, lower_order_final: bool = True, *, euler_at_final: bool = False,
                 lower_order_below: int | None = 15):
        if not is_integer(order) or order not in (1, 2, 3):
            raise ValueError(f"order must be the int 1, 2 or 3, got {order!r}")
        self.order = int(order)
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.euler_at_final = check_bool("euler_at_final", euler_at_final)
        if lower_order_below is not None and (not is_integer(lower_order_below) or lower_order_below < 1):
            raise ValueError(f"lower_order_below must be an int >= 1 (the step count below which the final steps "
                             f"lower their order) or None (at every step count), got {lower_order_below!r}")
        self.lower_order_below = None if lower_order_below is None else int(lower_order_below)
        self.name = f"dpmpp_{order}m"

    def config(self) -> dict:
        return {"name": self.name, "order": self.order, "lower_order_final": self.lower_order_final,
                "euler_at_final": self.euler_at_final, "lower_order_below": self.lower_order_below}

    def lowers_final(self, N: int) -> bool:
        """Whether the last steps of an N-step grid lower their order (diffusers' rule)."""
        return self.lower_order_final and (self.lower_order_below is None or N < self.lower_order_below)

    def table(self, grid: Grid) -> SolverTable:
        N = grid.steps
        lam = grid.log_snr
        coef = np.zeros((N, 3))
        orders = np.zeros(N, np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):  # lambda_0 = -inf on flow grids
            for i in range(N):
                orders[i], comb = self._combination(i, N, lam)
                coef[i] = grid.alpha[i + 1] * comb
        A = grid.sigma[1:] / grid.sigma[:-1]
        z = np.zeros(N)
        return SolverTable(A, coef[:, 0].copy(), coef[:, 1].copy(), coef[:, 2].copy(), z, orders)

    def _combination(self, i: int, N: int, lam: np.ndarray) -> tuple[int, np.ndarray]:
        """Order of step i and the weights of (D_i, D_{i-1}, D_{i-2}), divided by alpha'."""
        order = min(self.order, i + 1)
        if self.lowers_final(N):
            order = min(order, N - i)
        if self.euler_at_final and i == N - 1:
            order = 1
        h = lam[i + 1] - lam[i]
        if not np.isfinite(h):
            order, phi1 = 1, -1.0
        else:
            phi1 = np.expm1(-h)
        d0, d1, d2 = np.eye(3)
        if order == 1:
            return 1, -phi1 * d0
        r0 = (lam[i] - lam[i - 1]) / h
        if order == 2:
            return 2, -phi1 * ((1 + 0.5 / r0) * d0 - 0.5 / r0 * d1)
        r1 = (lam[i - 1] - lam[i - 2]) / h
        phi2 = phi1 / h + 1
        phi3 = phi2 / h - 0.5
        D1_0 = (d0 - d1) / r0
        D1_1 = (d1 - d2) / r1
        D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
        D2 = (D1_0 - D1_1) / (r0 + r1)
        return 3, -phi1 * d0 + phi2 * D1 - phi3 * D2


SAMPLER_NAMES = ("ddim", "euler", "dpmpp_1m", "dpmpp_2m", "dpmpp_3m")


def get_sampler(sampler) -> Sampler:
    """A :class:`Sampler` from a name in ``SAMPLER_NAMES`` or an instance (returned as is)."""
    if isinstance(sampler, Sampler):
        return sampler
    if not isinstance(sampler, str):
        hint = f"; pass an instance, e.g. {sampler.__name__}()" if isinstance(sampler, type) else ""
        if type(sampler).__module__.split(".")[0] == "diffusers" or hasattr(sampler, "set_timesteps"):
            hint = ("; for a diffusers scheduler use ltc.adapters.diffusers.sampler_from_diffusers(scheduler, steps) "
                    "as sampler= and schedule_from_diffusers(scheduler, steps) as the schedule")
        raise TypeError(f"sampler must be a name in {SAMPLER_NAMES} or a Sampler, got {type(sampler).__name__}{hint}")
    if sampler == "ddim":
        return DDIM()
    if sampler == "euler":
        return Euler()
    if sampler in ("dpmpp_1m", "dpmpp_2m", "dpmpp_3m"):
        return DPMSolverPP(order=int(sampler[6]))
    raise ValueError(f"sampler must be one of {SAMPLER_NAMES} or a Sampler instance, got {sampler!r}")
