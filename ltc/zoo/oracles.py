"""Exact denoisers in closed form, and the exact endpoint of their probability-flow ODE.

For data x0 ~ p and x = alpha x0 + sigma eps the optimal denoiser is the posterior mean
D(x; alpha, sigma) = E[x0 | x].  Two data distributions where it is known exactly:

* :class:`GaussianMixture` -- sum_k w_k N(mu_k, s_k^2 I).  With v_k = alpha^2 s_k^2 + sigma^2,
      r_k(x) = softmax_k(log w_k - D/2 log v_k - |x - alpha mu_k|^2 / (2 v_k)),
      E[x0 | x] = sum_k r_k (mu_k + alpha s_k^2 / v_k (x - alpha mu_k)).
* :class:`EmpiricalData` -- the empirical distribution of points y_n:
      E[x0 | x] = sum_n softmax_n(-|x - alpha y_n|^2 / (2 sigma^2)) y_n.

Both are callables ``fn(x, t) -> x0`` with ``prediction = "x0"`` for a given schedule (which maps
the model time t to (alpha, sigma)); :meth:`as_prediction` gives the same oracle as an eps / v /
flow model.  Samples ``x`` are ``[B, *S]`` with ``prod(S) = dim``.
"""
from __future__ import annotations

import math

import torch

from ..models import Model, canonical, from_x0
from ..schedule import Grid, Schedule


class _Oracle:
    prediction = "x0"
    name = "oracle"

    def __init__(self, schedule: Schedule):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be an ltc.Schedule, got {type(schedule).__name__}")
        self.schedule = schedule

    def denoise(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``E[x0 | x]`` for ``x [B, D]`` and per-sample ``alpha, sigma [B, 1]``."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **unused) -> torch.Tensor:
        return self._x0(x, t)

    def _x0(self, x, t):
        B = x.shape[0]
        alpha, sigma = self.schedule.noise_at(t.to(torch.float64))
        flat = x.reshape(B, -1).to(torch.float64)
        if flat.shape[1] != self.dim:
            raise ValueError(f"{self.name}: x has {flat.shape[1]} features per sample, expected {self.dim}")
        x0 = self.denoise(flat, alpha.reshape(B, 1), sigma.reshape(B, 1))
        return x0.reshape(x.shape).to(x.dtype)

    def as_prediction(self, prediction: str) -> Model:
        """This oracle as a model predicting ``eps``, ``x0``, ``v`` or ``flow``."""
        pred = canonical(prediction)

        def fn(x, t, **unused):
            alpha, sigma = self.schedule.noise_at(t.to(torch.float64))
            shape = (-1,) + (1,) * (x.dim() - 1)
            x64 = x.to(torch.float64)
            x0 = self._x0(x64, t)
            out = from_x0(pred, x64, x0, alpha.reshape(shape), sigma.reshape(shape))
            return out.to(x.dtype)

        return Model(fn, pred, f"{self.name}-{pred}")


class GaussianMixture(_Oracle):
    """Isotropic Gaussian mixture: ``means [K, D]``, ``stds`` scalar or ``[K]``, ``weights [K]``."""

    name = "gaussian-mixture"

    def __init__(self, means, stds, schedule: Schedule, weights=None):
        super().__init__(schedule)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.dim() != 2:
            raise ValueError(f"means must be [K, D], got shape {tuple(self.means.shape)}")
        K, self.dim = self.means.shape
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(K).clone()
        if torch.any(self.stds <= 0):
            raise ValueError("stds must be > 0")
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (K,) or torch.any(w <= 0):
            raise ValueError(f"weights must be [K] = [{K}] positive numbers")
        self.log_w = torch.log(w / w.sum())

    @classmethod
    def random(cls, schedule: Schedule, dim: int = 16, components: int = 4, std: float = 0.3,
               seed: int = 0) -> "GaussianMixture":
        """A reproducible mixture: means uniform on the sphere of radius 1.5, equal weights."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=g, dtype=torch.float64)
        means = 1.5 * means / means.norm(dim=1, keepdim=True)
        return cls(means, std, schedule)

    def denoise(self, x, alpha, sigma):
        mu = self.means.to(x.device)
        s2 = (self.stds.to(x.device) ** 2)[None, :]                       # [1, K]
        var = alpha ** 2 * s2 + sigma ** 2                               # [B, K]
        diff = x[:, None, :] - alpha[:, :, None] * mu[None]              # [B, K, D]
        logits = self.log_w.to(x.device)[None] - 0.5 * self.dim * torch.log(var) \
            - 0.5 * (diff ** 2).sum(-1) / var
        r = torch.softmax(logits, dim=1)                                 # [B, K]
        cond = mu[None] + (alpha * s2 / var)[:, :, None] * diff          # [B, K, D]
        return (r[:, :, None] * cond).sum(1)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n, D]`` draws from the mixture."""
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * eps


class EmpiricalData(_Oracle):
    """Posterior mean of the empirical distribution of ``data [M, D]``."""

    name = "empirical-data"

    def __init__(self, data, schedule: Schedule):
        super().__init__(schedule)
        self.data = torch.as_tensor(data, dtype=torch.float64)
        if self.data.dim() != 2 or self.data.shape[0] < 1:
            raise ValueError(f"data must be [M, D] with M >= 1, got shape {tuple(self.data.shape)}")
        self.dim = self.data.shape[1]

    def denoise(self, x, alpha, sigma):
        y = self.data.to(x.device)
        d2 = (x ** 2).sum(1, keepdim=True) - 2 * alpha * (x @ y.T) + alpha ** 2 * (y ** 2).sum(1)[None]
        r = torch.softmax(-d2 / (2 * sigma ** 2), dim=1)
        return r @ y


def _sigma_of_lambda(lam: float, family: str) -> tuple[float, float]:
    if family == "vp":
        sigma = math.sqrt(1 / (1 + math.exp(2 * lam)))
        return sigma * math.exp(lam), sigma
    sigma = 1 / (1 + math.exp(lam))
    return 1 - sigma, sigma


def _rk4(f, u0: float, u1: float, y: torch.Tensor, steps: int) -> torch.Tensor:
    h = (u1 - u0) / steps
    for k in range(steps):
        u = u0 + k * h
        k1 = f(u, y)
        k2 = f(u + h / 2, y + h / 2 * k1)
        k3 = f(u + h / 2, y + h / 2 * k2)
        k4 = f(u + h, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def exact_endpoint(oracle: _Oracle, noise: torch.Tensor, grid: Grid, *, steps: int = 2000,
                   lambda_cap: float = 12.0) -> torch.Tensor:
    """The endpoint of the probability-flow ODE from ``noise`` at grid point 0 to the last point.

    Solves d(x / sigma)/d lambda = e^lambda D(x; alpha, sigma) (the data-prediction form of the
    PF-ODE, valid for vp and flow) with classical RK4 in lambda, float64, ``steps`` uniform steps.
    A flow grid that starts at sigma = 1 (lambda = -inf) first integrates dx/dsigma = (x - D)/sigma
    from sigma = 1 to 1/2 (``steps // 4`` RK4 steps in sigma).  A grid that ends at sigma = 0 is
    integrated to ``lambda_cap`` and finished with x0 = D(x).
    Check convergence by comparing two ``steps``; RK4's error falls as steps^-4.
    """
    lam = grid.log_snr
    lam0, lam1 = float(lam[0]), float(lam[-1])
    to_zero = not math.isfinite(lam1)
    if to_zero:
        lam1 = max(lambda_cap, lam0 + 1.0)
    B = noise.shape[0]
    x = noise.reshape(B, -1).to(torch.float64)
    ones = torch.ones(B, 1, dtype=torch.float64, device=x.device)

    if not math.isfinite(lam0):  # flow grid starting at alpha = 0: regular in sigma
        def velocity(s, x):
            return (x - oracle.denoise(x, (1 - s) * ones, s * ones)) / s
        x = _rk4(velocity, float(grid.sigma[0]), 0.5, x, max(steps // 4, 1))
        lam0 = 0.0

    def f(lmb, y):
        a, s = _sigma_of_lambda(lmb, grid.family)
        return math.exp(lmb) * oracle.denoise(s * y, a * ones, s * ones)

    y = _rk4(f, lam0, lam1, x / _sigma_of_lambda(lam0, grid.family)[1], steps)
    a1, s1 = _sigma_of_lambda(lam1, grid.family)
    x = s1 * y
    if to_zero:
        x = oracle.denoise(x, a1 * ones, s1 * ones)
    return x.reshape(noise.shape)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference over all elements (float64)."""
    return float(((a.to(torch.float64) - b.to(torch.float64)) ** 2).mean().sqrt())

