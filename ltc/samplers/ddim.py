"""DDIM (deterministic and with eta > 0)."""
from __future__ import annotations

import numpy as np

from ..schedule import Grid, check_number
from .base import Sampler, SolverTable


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
