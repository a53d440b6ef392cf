"""UniPC: the UniP predictor and the UniC corrector folded into one row per step."""
from __future__ import annotations

import numpy as np

from ..schedule import Grid, check_bool, is_integer
from .base import Sampler, SolverTable


def _log_snr_steps(lam: np.ndarray, i: int, back: int, h: float) -> np.ndarray:
    """``r_k = (lambda_{i-k} - lambda_i) / h`` for k = 1..back (UniPC's rks): negative, -inf where
    lambda_{i-k} = -inf (a flow grid's first point), which zeroes that difference's weight."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.array([(lam[i - k] - lam[i]) / h for k in range(1, back + 1)])


class UniPC(Sampler):
    """UniPC multistep (Zhao et al. 2023), data prediction, as diffusers' ``UniPCMultistepScheduler``.

    With lambda as in :mod:`ltc.schedule`, h = lambda_t - lambda_s for a step s -> t, hh = -h,
    ``B(h) = hh`` (``variant="bh1"``) or ``expm1(hh)`` (``"bh2"``), phi_1 = expm1(hh) and past-point
    ratios r_k = (lambda_{s-k} - lambda_s) / h:

    * predictor of order p (UniP) from the state x_s:
        x_t = (sigma_t/sigma_s) x_s - alpha_t phi_1 D_s - alpha_t B(h) sum_k rho^p_k (D_{s-k} - D_s) / r_k
    * corrector (UniC) of the state x_t once the model has given D_t at x_t, with the order p of
      the predictor that produced x_t:
        x_t^c = (sigma_t/sigma_s) x_s - alpha_t phi_1 D_s
                - alpha_t B(h) [sum_k rho^c_k (D_{s-k} - D_s) / r_k + rho^c_p (D_t - D_s)]

    where rho^p solves the order conditions R[:-1, :-1] rho = b[:-1] (rho^p = 1/2 at order 2),
    rho^c solves R rho = b (rho^c = 1/2 at order 1), R[j] = r^j with r = (r_1..r_{p-1}, 1) and
    b_j = (j+1)! h phi_{j+1}(hh) / B(h).  The corrector starts from the same x_s as the predictor,
    so x_t^c = x_t + Delta_t with Delta_t a combination of D_t .. D_{t-p}: the state the walk holds
    (the predictor's output) is corrected by Delta and the next predictor applied, all in one row:

        x_{i+1} = A_i (x_i + Delta_i) + sum_k P_ik D_{i-k}                     (reads up to D_{i-3})

    The model's D_i is the one at the uncorrected x_i, as in diffusers.  Orders: min(order, i + 1)
    (warm-up), and with ``lower_order_final`` min(., N - i) at every N (diffusers' UniPC rule).  A
    step that ends at sigma = 0 (h = inf) is first order, x' = alpha' D_i: where diffusers' own
    update is NaN there (``bh1``, or order > 1 without ``lower_order_final``) ltc takes that limit.
    ``disable_corrector``: step indices i whose *next* step skips the corrector (diffusers' list).
    After an LTC-extrapolated step the corrector adds its Delta to the extrapolated state.
    """

    grid_rule = "dpm_solver"
    VARIANTS = ("bh1", "bh2")

    def __init__(self, order: int = 2, variant: str = "bh2", lower_order_final: bool = True,
                 disable_corrector=()):
        if not is_integer(order) or order not in (1, 2, 3):
            raise ValueError(f"order must be the int 1, 2 or 3, got {order!r}")
        if variant not in self.VARIANTS:
            raise ValueError(f"variant must be one of {self.VARIANTS} (the B(h) of UniPC), got {variant!r}")
        self.order, self.variant = int(order), variant
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        if isinstance(disable_corrector, (str, bytes)) or not hasattr(disable_corrector, "__iter__") or \
                not all(is_integer(k) and k >= 0 for k in disable_corrector):
            raise ValueError(f"disable_corrector must be a sequence of step indices (ints >= 0), got "
                             f"{disable_corrector!r}")
        self.disable_corrector = tuple(sorted({int(k) for k in disable_corrector}))
        self.name = f"unipc_{order}m"

    def config(self) -> dict:
        return {"name": self.name, "order": self.order, "variant": self.variant,
                "lower_order_final": self.lower_order_final, "disable_corrector": list(self.disable_corrector)}

    def _orders(self, N: int) -> np.ndarray:
        orders = np.minimum(self.order, np.arange(N) + 1)
        return np.minimum(orders, N - np.arange(N)) if self.lower_order_final else orders

    def _phi(self, h: float, order: int) -> tuple[float, float, np.ndarray]:
        """``(phi_1, B(h), b)`` for a step of log-SNR length h: b_j = (j+1)! h phi_{j+1}(hh) / B(h)."""
        hh = -h
        phi1 = np.expm1(hh)
        B = hh if self.variant == "bh1" else phi1
        b, phi_k, fact = [], phi1 / hh - 1, 1
        for j in range(1, order + 1):
            b.append(phi_k * fact / B)
            fact *= j + 1
            phi_k = phi_k / hh - 1 / fact
        return phi1, B, np.array(b)

    def _rhos(self, r: np.ndarray, b: np.ndarray, order: int, corrector: bool) -> np.ndarray:
        """The predictor's (``order - 1`` weights) or the corrector's (``order`` weights) rho."""
        if not corrector and order == 2:
            return np.array([0.5])
        if corrector and order == 1:
            return np.array([0.5])
        rks = np.append(r, 1.0)
        R = np.stack([rks ** j for j in range(order)])
        if corrector:
            return np.linalg.solve(R, b)
        return np.linalg.solve(R[:-1, :-1], b[:-1])

    def _differences(self, lam, s: int, order: int, h: float, weights: np.ndarray) -> np.ndarray:
        """sum_k weights_k (D_{s-k} - D_s) / r_k as weights of (D_s, D_{s-1}, ..., D_{s-3})."""
        out = np.zeros(4)
        r = _log_snr_steps(lam, s, order - 1, h)
        for k in range(1, order):
            inv = 1.0 / r[k - 1]  # 0 where r = -inf (lambda = -inf at a flow grid's first point)
            out[k] += weights[k - 1] * inv
            out[0] -= weights[k - 1] * inv
        return out

    def table(self, grid: Grid) -> SolverTable:
        N, lam = grid.steps, grid.log_snr
        orders = self._orders(N)
        A = grid.sigma[1:] / grid.sigma[:-1]
        D = np.zeros((N, 4))  # weights of D_i, D_{i-1}, D_{i-2}, D_{i-3} in x_{i+1}
        reads = np.zeros(N, np.int64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for i in range(N):
                p = int(orders[i])
                corr = np.zeros(4)
                if i > 0 and (i - 1) not in self.disable_corrector:
                    corr = self._correction(grid, lam, i, int(orders[i - 1]))
                pred = self._predictor(grid, lam, i, p)
                D[i] = A[i] * corr + pred
                used = np.flatnonzero(np.concatenate([corr, pred]).reshape(2, 4).any(0))
                reads[i] = int(used.max()) if len(used) else 0
        z = np.zeros(N)
        return SolverTable(A, D[:, 0].copy(), D[:, 1].copy(), D[:, 2].copy(), z, reads + 1, D[:, 3].copy())

    def _predictor(self, grid: Grid, lam, i: int, p: int) -> np.ndarray:
        """Weights of (D_i .. D_{i-3}) in the UniP update from point i to i + 1, beside A x_i."""
        h = lam[i + 1] - lam[i]
        alpha_t = grid.alpha[i + 1]
        if not np.isfinite(h):  # a step to sigma = 0 is first order: x_t = alpha_t D_i (phi_1 = -1)
            out = np.zeros(4)
            out[0] = alpha_t
            return out
        phi1, B, b = self._phi(h, p)
        out = np.zeros(4)
        out[0] = -alpha_t * phi1
        if p > 1:
            rho = self._rhos(_log_snr_steps(lam, i, p - 1, h), b, p, corrector=False)
            out -= alpha_t * B * self._differences(lam, i, p, h, rho)
        return out

    def _correction(self, grid: Grid, lam, i: int, p: int) -> np.ndarray:
        """Delta_i = x_i^c - x_i (the UniC correction of the predictor's x_i) as weights of D_i .. D_{i-3}."""
        s = i - 1
        h = lam[i] - lam[s]
        alpha_t = grid.alpha[i]
        phi1, B, b = self._phi(h, p)
        rho_c = self._rhos(_log_snr_steps(lam, s, p - 1, h), b, p, corrector=True)
        rho_p = self._rhos(_log_snr_steps(lam, s, p - 1, h), b, p, corrector=False) if p > 1 else np.zeros(0)
        # x^c - x^p = -alpha_t B [sum_k (rho^c_k - rho^p_k)(D_{s-k} - D_s)/r_k + rho^c_p (D_i - D_s)]
        past = self._differences(lam, s, p, h, rho_c[:-1] - rho_p) if p > 1 else np.zeros(4)
        shifted = np.zeros(4)
        shifted[1:] = past[:3]  # weights of D_s, D_{s-1}, ... are those of D_{i-1}, D_{i-2}, ...
        if past[3] != 0:
            raise AssertionError("UniPC corrector reads past D_{i-3}")  # order <= 3 reads D_{s-2} at most
        shifted[0] += rho_c[-1]
        shifted[1] -= rho_c[-1]
        return -alpha_t * B * shifted
