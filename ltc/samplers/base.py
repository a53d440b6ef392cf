"""The sampler contract: :class:`Sampler` and the per-step table it returns, :class:`SolverTable`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..schedule import Grid


@dataclass(frozen=True)
class SolverTable:
    """Per-step coefficients of (*), each ``[N]`` float64, with ``B3`` (of D_{i-3}, read only by
    UniPC-3's corrector; zeros otherwise) and ``order[i]``: 1 + the past clean estimates step i
    reads (the solver order of a multistep method; UniPC's corrector reads one more)."""

    A: np.ndarray
    B0: np.ndarray
    B1: np.ndarray
    B2: np.ndarray
    C: np.ndarray
    order: np.ndarray
    B3: np.ndarray | None = None

    def __post_init__(self):
        if self.B3 is None:
            object.__setattr__(self, "B3", np.zeros_like(self.A))


class Sampler:
    """Base class: ``table(grid)`` returns the :class:`SolverTable`; ``config()`` identifies it.

    ``grid_rule``: whose ``set_timesteps`` spaces a hand-built schedule's grid for this sampler
    (:data:`ltc.schedule.GRID_RULES`: ``"ddim"``, ``"dpm_solver"`` or ``"euler"``, the diffusers
    scheduler family of the same name), so ``Schedule.vp(...)`` with ``sampler="dpmpp_2m"`` takes
    the steps of ``DPMSolverMultistepScheduler`` with the same config.  ``stages``: model calls per
    step of the user's grid (Heun: 2, as rows of :meth:`rows`).
    """

    name: str = "sampler"
    stochastic: bool = False
    grid_rule: str = "ddim"
    stages: int = 1

    def grid(self, schedule, steps) -> Grid:
        """``schedule``'s grid of ``steps`` steps under this sampler's :attr:`grid_rule`."""
        return schedule.discretize(steps, rule=self.grid_rule)

    def rows(self, grid: Grid) -> Grid:
        """The grid of the plan's rows (one model call each): ``grid`` itself for one-stage samplers."""
        return grid

    def table(self, grid: Grid) -> SolverTable:  # pragma: no cover - abstract
        raise NotImplementedError

    def first_order(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """``(A, B0)`` of the deterministic first-order step x' = A x + B0 D (DDIM, eta = 0): A =
        sigma'/sigma, B0 = alpha' - A alpha, per step.  Used to turn a state update into the model
        output it implies."""
        A = grid.sigma[1:] / grid.sigma[:-1]
        return A, grid.alpha[1:] - A * grid.alpha[:-1]

    def config(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"
