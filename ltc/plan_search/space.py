"""Step grids as parameters, and the hand-designed grids a search starts from and is judged against.

**The space.**  Every grid of a search has ``N`` steps, the start point (``t_0``) and the end point
of the *anchor* grid (the schedule's own grid at the budget), and interior points ``t_1 .. t_{N-1}``
(model times) strictly between ``t_0`` and ``t_lo``, the least noisy model time the schedule takes
(:func:`least_noisy_time`: just before the anchor's end when it is a model time, sigma > 0; else training
step 0 of a vp table, the clean end t = 0 of a flow schedule, lambda_max of a log-SNR one).  With
``theta`` in R^{N-1} (stick-breaking),

    c_0 = 0,   c_k = c_{k-1} + (1 - c_{k-1}) sigmoid(theta_k),   t_k = t_0 + (t_lo - t_0) c_k,

so every ``theta`` gives ordered points inside the range (0 < c_1 < ... < c_{N-1} < 1), and
``theta_k`` moves the points k .. N-1 only: the steps before step k - 1 do not change (the
optimiser restarts its probes of ``theta_k`` there, :mod:`ltc.plan_search.fit`).  Each point's
``(alpha, sigma)`` is ``schedule.noise_at(t_k)`` -- what the model time means.  Models trained on
integer time steps that cannot take fractional times use ``times="integer"``: points are then
integers, searched directly (:func:`ltc.plan_search.fit.pattern_search`).

**Hand grids** (:func:`hand_grids`): the schedule's own grid under each diffusers rule
(:data:`ltc.schedule.GRID_RULES`) with the anchor's end points, and, where the start has a finite
log-SNR (vp and log-SNR schedules; a flow grid starts at alpha = 0), the grids uniform in
lambda = log(alpha / sigma) and Karras' (rho = 7, uniform in k^(1/rho) with k = sigma / alpha), both
from t_0 to t_lo (then the anchor's clean end if it has one).
"""
from __future__ import annotations

import numpy as np
import torch

from ..schedule import GRID_RULES, FlowSchedule, Grid, LogSNRSchedule, Schedule, VPSchedule

TIMES = ("continuous", "integer")
KARRAS_RHO = 7.0
DENSE = 8193  # table points of the lambda -> t inversion


def check_schedule(schedule) -> None:
    """A schedule that can be discretised at any step count and maps any model time to (alpha, sigma)."""
    if not isinstance(schedule, (VPSchedule, FlowSchedule, LogSNRSchedule)):
        raise TypeError(f"schedule must be an ltc.Schedule.vp, .flow or .log_snr schedule (the search needs grids "
                        f"of any step count), got {type(schedule).__name__}")


def least_noisy_time(schedule: Schedule, anchor: Grid) -> float:
    """``t_lo``: the least noisy model time interior points may approach (see the module docstring).
    Where the anchor ends at sigma > 0, the model time whose noise is just above that end's (the end
    of a diffusers rule may be its float32 sigma, a little off ``noise_at`` of its time)."""
    if anchor.sigma[-1] > 0:
        return _time_above_sigma(schedule, float(anchor.sigma[-1]), float(anchor.t[0]), float(anchor.t[-1]))
    if isinstance(schedule, VPSchedule):
        return 0.0
    if isinstance(schedule, FlowSchedule):
        return 0.0
    return float(schedule.lambda_max)


def _time_above_sigma(schedule: Schedule, sigma_end: float, t_noisy: float, t_end: float) -> float:
    """The model time closest to ``t_end`` (by bisection towards ``t_noisy``) whose sigma is > ``sigma_end``."""
    if noise_at(schedule, np.array([t_end]))[1][0] > sigma_end:
        return t_end
    a, b = t_noisy, t_end
    for _ in range(100):
        mid = 0.5 * (a + b)
        if mid in (a, b):
            break
        if noise_at(schedule, np.array([mid]))[1][0] > sigma_end:
            a = mid
        else:
            b = mid
    return a


def noise_at(schedule: Schedule, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    alpha, sigma = schedule.noise_at(torch.tensor(np.array(t, np.float64)))
    return alpha.numpy(), sigma.numpy()


class GridSpace:
    """The ``steps``-step grids sharing the anchor's end points (see the module docstring)."""

    def __init__(self, schedule: Schedule, anchor: Grid, steps: int, times: str = "continuous"):
        if times not in TIMES:
            raise ValueError(f"times must be one of {TIMES}, got {times!r}")
        if times == "integer" and isinstance(schedule, LogSNRSchedule):
            raise ValueError("times='integer' is for models trained on integer time steps (vp and flow schedules); a "
                             "log_snr schedule's model time is lambda itself: use times='continuous'")
        self.schedule, self.anchor, self.steps, self.times = schedule, anchor, int(steps), times
        self.t0, self.t_lo = float(anchor.t[0]), least_noisy_time(schedule, anchor)
        self.end = (float(anchor.t[-1]), float(anchor.alpha[-1]), float(anchor.sigma[-1]))
        self.inclusive = self.end[2] == 0 and self.t_lo != self.end[0]  # t_lo is a model time before the clean end

    @property
    def size(self) -> int:
        """Number of parameters: the N - 1 interior points."""
        return self.steps - 1

    def fractions(self, theta: np.ndarray) -> np.ndarray:
        """``c_1 .. c_{N-1}`` of ``theta [N-1]``."""
        c, out = 0.0, []
        for v in np.asarray(theta, np.float64):
            c = c + (1.0 - c) / (1.0 + np.exp(-v))
            out.append(c)
        return np.array(out)

    def theta_of(self, grid: Grid) -> np.ndarray:
        """The parameters of (a grid close to) ``grid``, which has this space's N steps: its interior
        points' fractions, kept strictly inside (0, 1)."""
        c = (grid.t[1:-1] - self.t0) / (self.t_lo - self.t0)
        c = np.clip(c, 1e-9, 1 - 1e-9)
        c = np.maximum.accumulate(c)
        theta, prev = [], 0.0
        for ck in c:
            q = np.clip((ck - prev) / (1.0 - prev), 1e-9, 1 - 1e-9)
            theta.append(np.log(q) - np.log1p(-q))
            prev = ck
        return np.array(theta)

    def times_of(self, theta: np.ndarray) -> np.ndarray:
        return self.t0 + (self.t_lo - self.t0) * self.fractions(theta)

    def grid(self, theta: np.ndarray) -> Grid:
        """The grid of ``theta`` (raises ValueError when rounding makes two points coincide)."""
        return self.grid_at(self.times_of(theta))

    def grid_at(self, interior: np.ndarray) -> Grid:
        """The grid with interior model times ``interior [N-1]`` (checked: ordered, inside the range,
        integers when ``times="integer"``)."""
        t = np.asarray(interior, np.float64)
        if t.shape != (self.size,):
            raise ValueError(f"expected {self.size} interior times, got shape {t.shape}")
        if self.times == "integer" and not np.array_equal(t, np.round(t)):
            raise ValueError(f"times='integer' needs integer model times, got {t.tolist()}")
        full = np.concatenate([[self.t0], t])
        beyond = (t[-1] - self.t_lo) * np.sign(self.t0 - self.t_lo)  # t_lo itself is allowed when the end lies past it
        inside = np.all(np.diff(full) * np.sign(self.t_lo - self.t0) > 0) and \
            (beyond > 0 or (beyond == 0 and self.inclusive))
        if not inside:
            raise ValueError(f"interior times {t.tolist()} are not strictly ordered inside ({self.t0}, {self.t_lo})")
        alpha, sigma = noise_at(self.schedule, t)
        a0, s0 = self.anchor.alpha[0], self.anchor.sigma[0]
        te, ae, se = self.end
        return Grid(np.concatenate([full, [te]]), np.concatenate([[a0], alpha, [ae]]),
                    np.concatenate([[s0], sigma, [se]]), self.anchor.family)

    def rounded(self, grid: Grid) -> Grid | None:
        """``grid`` with its interior times rounded to integers (None where two coincide or leave the range)."""
        try:
            return self.grid_at(np.round(grid.t[1:-1]))
        except ValueError:
            return None


def same_ends(a: Grid, b: Grid) -> bool:
    """Whether two grids start and end at the same noise levels."""
    return bool(np.isclose(a.sigma[0], b.sigma[0], rtol=1e-9, atol=0) and np.isclose(a.alpha[0], b.alpha[0],
                rtol=1e-9, atol=1e-12) and np.isclose(a.sigma[-1], b.sigma[-1], rtol=1e-9, atol=1e-12))


def _lambda_table(space: GridSpace) -> tuple[np.ndarray, np.ndarray]:
    """Dense ``(lambda, t)`` between t_0 and t_lo, lambda increasing (for the inverse lambda -> t)."""
    t = np.linspace(space.t0, space.t_lo, DENSE)
    alpha, sigma = noise_at(space.schedule, t)
    lam = np.log(alpha) - np.log(sigma)
    order = np.argsort(lam)
    return lam[order], t[order]


def spaced_grid(space: GridSpace, kind: str) -> Grid | None:
    """The log-SNR-uniform (``"logsnr"``) or Karras (``"karras"``) grid of the space (None where the
    start has no finite log-SNR)."""
    a0, s0 = float(space.anchor.alpha[0]), float(space.anchor.sigma[0])
    a_lo, s_lo = (float(v[0]) for v in noise_at(space.schedule, np.array([space.t_lo])))
    if not (a0 > 0 and s_lo > 0):
        return None
    N = space.steps
    count = N + 1 if space.end[2] > 0 else N  # points from t_0 to t_lo inclusive
    u = np.linspace(0.0, 1.0, count)
    if kind == "logsnr":
        lam0, lam1 = np.log(a0 / s0), np.log(a_lo / s_lo)
        lam = lam0 + (lam1 - lam0) * u
    else:
        k0, k1 = (s0 / a0) ** (1 / KARRAS_RHO), (s_lo / a_lo) ** (1 / KARRAS_RHO)
        lam = -KARRAS_RHO * np.log(k0 + (k1 - k0) * u)
    lam_tab, t_tab = _lambda_table(space)
    interior = np.interp(lam[1:N], lam_tab, t_tab)
    if space.times == "integer":
        interior = np.round(interior)
    try:
        return space.grid_at(interior)
    except ValueError:
        return None


def hand_grids(space: GridSpace, sampler_rules) -> dict[str, Grid]:
    """Name -> grid of every distinct hand-designed grid of the space (see the module docstring):
    ``rule:<rule>`` for the schedule's own grids (those with the anchor's end points; rounded to
    integer times when ``times="integer"``), ``logsnr`` and ``karras``.  Identical grids keep the
    first name."""
    found: dict[str, Grid] = {}
    candidates = []
    for rule in dict.fromkeys(list(sampler_rules) + list(GRID_RULES)):
        try:
            g = space.schedule.discretize(space.steps, rule=rule)
        except ValueError:
            continue
        if not same_ends(g, space.anchor):
            continue
        if space.times == "integer" and not np.array_equal(g.t[1:-1], np.round(g.t[1:-1])):
            g = space.rounded(g)
        candidates.append((f"rule:{rule}", g))
    candidates += [(kind, spaced_grid(space, kind)) for kind in ("logsnr", "karras")]
    seen = set()
    for name, g in candidates:
        if g is None:
            continue
        key = tuple(np.round(g.sigma, 12))
        if key not in seen:
            seen.add(key)
            found[name] = g
    return found
