"""Multistep DPM-Solver++ (ODE) and SDE-DPM-Solver++, with diffusers' order rules."""
from __future__ import annotations

import numpy as np

from ..schedule import Grid, check_bool, is_integer
from .base import Sampler, SolverTable


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
    lowers the final orders at every N.  ``order_caps``: an upper bound on the order of each step
    (one int in {1, 2, 3} per step; the table refuses a grid of another length), applied on top of
    these rules; :mod:`ltc.adapters.diffusers` uses it to keep diffusers' orders where ltc drops
    diffusers' zero-length last step.
    """

    grid_rule = "dpm_solver"

    def __init__(self, order: int = 2, lower_order_final: bool = True, *, euler_at_final: bool = False,
                 lower_order_below: int | None = 15, order_caps=None):
        if not is_integer(order) or order not in (1, 2, 3):
            raise ValueError(f"order must be the int 1, 2 or 3, got {order!r}")
        self.order = int(order)
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.euler_at_final = check_bool("euler_at_final", euler_at_final)
        if lower_order_below is not None and (not is_integer(lower_order_below) or lower_order_below < 1):
            raise ValueError(f"lower_order_below must be an int >= 1 (the step count below which the final steps "
                             f"lower their order) or None (at every step count), got {lower_order_below!r}")
        self.lower_order_below = None if lower_order_below is None else int(lower_order_below)
        self.order_caps = None if order_caps is None else self._checked_caps(order_caps)
        self.name = f"dpmpp_{order}m"

    def config(self) -> dict:
        caps = {} if self.order_caps is None else {"order_caps": list(self.order_caps)}
        return {"name": self.name, "order": self.order, "lower_order_final": self.lower_order_final,
                "euler_at_final": self.euler_at_final, "lower_order_below": self.lower_order_below, **caps}

    @staticmethod
    def _checked_caps(caps) -> tuple[int, ...]:
        """``order_caps`` as a tuple of ints in {1, 2, 3}, one per step."""
        if isinstance(caps, (str, bytes)) or not hasattr(caps, "__len__") or len(caps) < 1:
            raise TypeError(f"order_caps must be a non-empty sequence of ints in {{1, 2, 3}} (one per step), "
                            f"got {caps!r}")
        bad = [(k, c) for k, c in enumerate(caps) if not is_integer(c) or c not in (1, 2, 3)]
        if bad:
            raise ValueError(f"order_caps[{bad[0][0]}] must be the int 1, 2 or 3, got {bad[0][1]!r}")
        return tuple(int(c) for c in caps)

    def lowers_final(self, N: int) -> bool:
        """Whether the last steps of an N-step grid lower their order (diffusers' rule)."""
        return self.lower_order_final and (self.lower_order_below is None or N < self.lower_order_below)

    def table(self, grid: Grid) -> SolverTable:
        N = grid.steps
        if self.order_caps is not None and len(self.order_caps) != N:
            raise ValueError(f"order_caps has {len(self.order_caps)} entries (one per step) but the grid has {N} steps")
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
        if self.order_caps is not None:
            order = min(order, self.order_caps[i])
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


class DPMSolverSDE(Sampler):
    """Multistep SDE-DPM-Solver++ (Lu et al. 2022, diffusers' ``algorithm_type="sde-dpmsolver++"``,
    k-diffusion's ``sample_dpmpp_2m_sde``/``3m_sde``), with fresh noise z every step:

    * order 1: x' = (sigma'/sigma) e^{-h} x + alpha' (1 - e^{-2h}) D_i + sigma' sqrt(1 - e^{-2h}) z
    * order 2 (midpoint): + 0.5 alpha' (1 - e^{-2h}) D1,  D1 = (D_i - D_{i-1}) / r0
    * order 3: + alpha' ((1 - e^{-2h})/(-2h) + 1) D1 + alpha' ((1 - e^{-2h} - 2h)/(2h)^2 - 0.5) D2,
      with D1, D2 of :class:`DPMSolverPP`'s third order.

    Orders follow :class:`DPMSolverPP` (diffusers' rules).  A step to sigma = 0 is order 1 and
    adds no noise.  Needs ``generator=`` (or ``step_noise=`` to replay given draws).
    """

    grid_rule = "dpm_solver"
    stochastic = True

    def __init__(self, order: int = 2, lower_order_final: bool = True, *, euler_at_final: bool = False,
                 lower_order_below: int | None = 15):
        self._orders = DPMSolverPP(order, lower_order_final, euler_at_final=euler_at_final,
                                   lower_order_below=lower_order_below)
        self.order = self._orders.order
        self.name = f"dpmpp_{order}m_sde"

    def config(self) -> dict:
        return {**self._orders.config(), "name": self.name}

    def table(self, grid: Grid) -> SolverTable:
        base = self._orders.table(grid)  # for the orders (and D1, D2 of order 3 via its weights)
        N, lam = grid.steps, grid.log_snr
        B = np.zeros((N, 3))
        A, C = np.zeros(N), np.zeros(N)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for i in range(N):
                h = lam[i + 1] - lam[i]
                a1, s1 = grid.alpha[i + 1], grid.sigma[i + 1]
                if not np.isfinite(h):  # sigma' = 0: x' = alpha' D_i
                    A[i], B[i, 0] = 0.0, a1
                    continue
                e = -np.expm1(-2 * h)  # 1 - e^{-2h}
                A[i] = s1 / grid.sigma[i] * np.exp(-h)
                C[i] = s1 * np.sqrt(e)
                B[i, 0] = a1 * e
                order = int(base.order[i])
                if order == 1:
                    continue
                r0 = (lam[i] - lam[i - 1]) / h
                d1 = np.array([1.0, -1.0, 0.0]) / r0
                if order == 2:
                    B[i] += 0.5 * a1 * e * d1
                    continue
                r1 = (lam[i - 1] - lam[i - 2]) / h
                d1_0, d1_1 = d1, np.array([0.0, 1.0, -1.0]) / r1
                D1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                D2 = (d1_0 - d1_1) / (r0 + r1)
                B[i] += a1 * (e / (-2 * h) + 1) * D1 + a1 * ((e - 2 * h) / (2 * h) ** 2 - 0.5) * D2
        return SolverTable(A, B[:, 0].copy(), B[:, 1].copy(), B[:, 2].copy(), C, base.order.copy())
