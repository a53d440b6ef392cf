"""The Euler family in k-diffusion's variables: Euler, Euler ancestral, Heun (two rows a step)."""
from __future__ import annotations

import numpy as np

from ..schedule import Grid, check_number
from .base import Sampler, SolverTable


class Euler(Sampler):
    """Euler's method on the probability-flow ODE (diffusers' ``EulerDiscreteScheduler`` and
    ``FlowMatchEulerDiscreteScheduler``, k-diffusion's ``sample_euler``).

    flow family: x' = x + (sigma' - sigma) v with velocity v = (x - D) / sigma
        -> A = sigma'/sigma, B0 = 1 - sigma'/sigma.
    vp family: Euler in the EDM variables u = x/alpha, k = sigma/alpha (k-diffusion's
        ``sample_euler``): u' = u + (k' - k)(u - D)/k  -> A = sigma'/sigma, B0 = alpha' (1 - k'/k).
    Both equal deterministic DDIM in exact arithmetic; they are kept as their own formulas.
    """

    name = "euler"
    grid_rule = "euler"

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


def _edm(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The EDM noise level k = sigma / alpha of every point (vp grids; Euler-type samplers step in
    u = x / alpha, k) -- or, on flow grids, sigma itself (those step in x, sigma)."""
    return (grid.sigma, np.ones_like(grid.sigma)) if grid.family == "flow" else (grid.sigma / grid.alpha, grid.alpha)


class EulerAncestral(Sampler):
    """Euler ancestral (k-diffusion's ``sample_euler_ancestral``, diffusers'
    ``EulerAncestralDiscreteScheduler``) on vp grids, in u = x / alpha and k = sigma / alpha:

        k_up = min(k', eta sqrt(k'^2 (k^2 - k'^2) / k^2)),   k_down = sqrt(k'^2 - k_up^2)
        u' = u + (k_down - k)(u - D) / k + k_up z

    so A = alpha' k_down / (alpha k), B0 = alpha' (1 - k_down / k), C = alpha' k_up.  ``eta = 0`` is
    :class:`Euler`.  Needs ``generator=`` (or ``step_noise=``).
    """

    name = "euler_a"
    grid_rule = "euler"

    def __init__(self, eta: float = 1.0):
        self.eta = check_number("eta", eta, 0.0, 1.0)
        self.stochastic = self.eta > 0

    def config(self) -> dict:
        return {"name": self.name, "eta": self.eta}

    def table(self, grid: Grid) -> SolverTable:
        if grid.family != "vp":
            raise ValueError("euler_a (Euler ancestral) is defined on vp grids (k-diffusion, diffusers); this grid is "
                             f"{grid.family!r}: use 'euler' or 'dpmpp_2m_sde' on flow schedules")
        k, a = _edm(grid)
        k0, k1, a0, a1 = k[:-1], k[1:], a[:-1], a[1:]
        up = np.minimum(k1, self.eta * np.sqrt(k1 ** 2 * (k0 ** 2 - k1 ** 2) / k0 ** 2))
        down = np.sqrt(k1 ** 2 - up ** 2)
        A = a1 * down / (a0 * k0)
        B0 = a1 * (1 - down / k0)
        z = np.zeros_like(A)
        return SolverTable(A, B0, z, z.copy(), a1 * up, np.ones(len(A), np.int64))


class Heun(Sampler):
    """Heun's second-order method (Karras et al. 2022, Alg. 1 without churn; diffusers'
    ``HeunDiscreteScheduler``, k-diffusion's ``sample_heun``): two model calls per step, as two
    rows of the plan.  In u = x / alpha, k = sigma / alpha (vp; x and sigma on flow grids), a step
    k -> k' with d = (u - D)/k:

        predictor row (model at k):     u~ = u + (k' - k) d                      (= Euler)
        corrector row (model at k', u~): u' = u + (k' - k)(d + d~)/2 = u~ + (k' - k)/(2k') (D - D~)

    The corrector is a zero-length row at point k' (``rows`` repeats every interior point): A = 1,
    B0 = -alpha' (k' - k)/(2k'), B1 = +alpha' (k' - k)/(2k'), reading D of the predictor row.  A
    step that ends at sigma = 0 is Euler alone (no second call), so N steps ending at the clean end
    take 2N - 1 model calls, as in diffusers.
    """

    name = "heun"
    grid_rule = "euler"
    stages = 2

    def rows(self, grid: Grid) -> Grid:
        if grid.repeated:
            raise ValueError("heun expands a grid into its two-stage rows once; this grid has zero-length steps already")
        keep = [0]
        for p in range(1, grid.steps + 1):  # step p-1 -> p: predictor, then (if sigma_p > 0) corrector at p
            keep += [p, p] if grid.sigma[p] > 0 else [p]
        idx = np.array(keep)
        return Grid(grid.t[idx], grid.alpha[idx], grid.sigma[idx], grid.family, repeated=True)

    def table(self, grid: Grid) -> SolverTable:
        k, a = _edm(grid)
        R = grid.steps
        A, B0, B1 = np.zeros(R), np.zeros(R), np.zeros(R)
        order = np.ones(R, np.int64)
        for r in range(R):
            if grid.sigma[r + 1] == grid.sigma[r]:  # corrector row: its predictor is row r - 1
                if r == 0 or grid.sigma[r - 1] == grid.sigma[r]:
                    raise ValueError(f"heun: zero-length row {r} does not follow a predictor row")
                step = (k[r] - k[r - 1]) / (2 * k[r])
                A[r], B0[r], B1[r], order[r] = 1.0, -a[r] * step, a[r] * step, 2
            else:  # Euler predictor (or the last step, to sigma = 0)
                A[r] = a[r + 1] * k[r + 1] / (a[r] * k[r])
                B0[r] = a[r + 1] * (1 - k[r + 1] / k[r])
        z = np.zeros(R)
        return SolverTable(A, B0, B1, z, z.copy(), order)
