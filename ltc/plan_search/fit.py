"""The search's objective and its two optimisers: Levenberg-Marquardt over continuous parameters
(interior grid points, LTC weights) and a pattern search over integer model times.

With ``x_end(p)`` the endpoint of the plan of parameters ``p`` from the fit noises, ``T`` the
teacher's endpoints, ``p_0`` the start and ``E_0 = |x_end(p_0) - T|^2``,

    L(p) = |x_end(p) - T|^2 / E_0  +  rho |p - p_0|^2

(relative data term, so rho is dimensionless).  Levenberg-Marquardt on the residual vector
r(p) = [(x_end(p) - T) / sqrt(E_0);  sqrt(rho) (p - p_0)] as in :mod:`ltc.calibration.trajectory`:
solve (J^T J + mu diag(J^T J)) delta = -J^T r, accept a step only when L falls by more than a
relative 1e-4 (mu /= 10), else mu *= 10 and retry.  J is the forward-difference Jacobian with step
h; the probe of parameter j restarts from the current path's state at ``starts[j]``, the first
step the parameter changes (:mod:`ltc.plan_search.runs`), so it costs the model calls from there
on.  A parameter vector whose plan is invalid (two points rounding together) or whose endpoint is
not finite has L = inf.

Every run is charged to a :class:`Budget`; an iteration starts only when its Jacobian and one
trial fit in what is left, so a search never exceeds its share of model calls.

The pattern search (``times="integer"``, models that take only integer time steps): for step
sizes d = d_0, d_0 / 2, ..., 1, each interior point in turn is moved by +-d model-time units when
the grid stays strictly ordered and L falls; a probe of point k restarts at step k - 1.
"""
from __future__ import annotations

import numpy as np
import torch

from ..executor.walk import NonFiniteError
from .runs import Runs, calls_from


class Budget:
    """Model calls left to a search (``calls`` is the number allowed)."""

    def __init__(self, calls: int):
        self.left = int(calls)

    def spend(self, calls: int) -> None:
        self.left -= int(calls)

    def allows(self, calls: int) -> bool:
        return calls <= self.left


class Objective:
    """L(p) of plans ``build(p)`` from ``runs`` against ``target`` (see the module docstring)."""

    def __init__(self, build, runs: Runs, target: torch.Tensor, p0, ridge: float, budget: Budget):
        self.build, self.runs, self.budget, self.ridge = build, runs, budget, float(ridge)
        self.target = target.to(torch.float64).reshape(-1)
        self.p0 = np.asarray(p0, np.float64)
        self.scale = 1.0

    def plan(self, p):
        try:
            return self.build(p)
        except ValueError:
            return None

    def evaluate(self, p, start=None, keep=True):
        """``(loss, residual, states)`` of ``p`` (loss inf when invalid), charged to the budget."""
        plan = self.plan(p)
        if plan is None or not self.budget.allows(calls_from(plan, 0 if start is None else start.step)):
            return np.inf, None, None
        before = self.runs.calls
        try:
            x, states = self.runs.run(plan, start, keep=keep)
        except NonFiniteError:
            return np.inf, None, None
        finally:
            self.budget.spend(self.runs.calls - before)
        r = (x.to(torch.float64).reshape(-1) - self.target) * self.scale
        return self.loss(p, r), r, states

    def loss(self, p, r) -> float:
        return float((r ** 2).sum()) + self.ridge * float(((np.asarray(p) - self.p0) ** 2).sum())

    def start(self):
        """Evaluate ``p0`` and fix the data term's scale 1 / sqrt(E_0): ``(scaled residual, states)``,
        or None when ``p0`` matches the teacher exactly (E_0 = 0)."""
        loss, r, states = self.evaluate(self.p0)
        if not np.isfinite(loss):
            raise ValueError("the starting plan is invalid, does not give a finite endpoint, or does not fit in the "
                             "model calls left")
        E0 = float((r ** 2).sum())
        if E0 == 0.0:
            return None
        self.scale = 1.0 / np.sqrt(E0)
        return r * self.scale, states


def levenberg_marquardt(objective: Objective, starts, *, max_iter: int = 4, fd_step: float = 1e-2,
                        min_decrease: float = 1e-4, damping: float = 1e-2, max_tries: int = 4) -> tuple:
    """Minimise the objective from its ``p0``; ``starts[j]``: the first step parameter j changes.
    Returns ``(p, loss, info)`` (``info``: iterations, loss history, accepted steps, why it stopped)."""
    p = objective.p0.copy()
    started = objective.start()
    if started is None:
        return p, 0.0, {"iterations": 0, "loss": [0.0], "accepted_steps": 0, "stopped": "exact"}
    r, states = started
    L, mu, history, accepted, stopped = 1.0, damping, [1.0], 0, "max_iter"
    for _ in range(max_iter):
        plan = objective.plan(p)
        cost = sum(calls_from(plan, s) for s in starts) + calls_from(plan, 0)
        if not objective.budget.allows(cost):
            stopped = "budget"
            break
        J = np.zeros((r.numel(), len(p)))
        for j, s in enumerate(starts):
            for h in (fd_step, -fd_step):
                q = p.copy()
                q[j] += h
                Lq, rq, _ = objective.evaluate(q, states[s], keep=False)
                if np.isfinite(Lq):
                    J[:, j] = ((rq - r) / h).cpu().numpy()
                    break
        rn = r.cpu().numpy()
        g = J.T @ rn + objective.ridge * (p - objective.p0)
        H = J.T @ J + objective.ridge * np.eye(len(p))
        taken = False
        for _ in range(max_tries):
            if not objective.budget.allows(calls_from(plan, 0)):
                stopped = "budget"
                break
            delta = np.linalg.solve(H + mu * np.diag(np.diag(H)) + 1e-12 * np.eye(len(p)), -g)
            q = p + delta
            Lq, rq, sq = objective.evaluate(q)
            if np.isfinite(Lq) and (L - Lq) / L > min_decrease:
                p, L, r, states, mu, taken = q, Lq, rq, sq, mu / 10, True
                accepted += 1
                break
            mu *= 10
        history.append(L)
        if not taken:
            stopped = stopped if stopped == "budget" else "converged"
            break
    return p, L, {"iterations": len(history) - 1, "loss": history, "accepted_steps": accepted, "stopped": stopped}


def pattern_search(objective: Objective, space, *, max_rounds: int = 8) -> tuple:
    """Integer interior times (``objective.p0``, ``[N-1]``) by the pattern search of the module
    docstring.  Returns ``(times, loss, info)``."""
    t = objective.p0.copy()
    started = objective.start()
    if started is None:
        return t, 0.0, {"rounds": 0, "loss": [0.0], "moves": 0, "stopped": "exact"}
    states = started[1]
    L = 1.0
    full = np.concatenate([[space.t0], t])
    d = max(1, int(np.median(np.abs(np.diff(full))) // 4))
    history, moves, stopped, rounds = [L], 0, "converged", 0
    direction = np.sign(space.t_lo - space.t0)
    while d >= 1 and rounds < max_rounds:
        rounds += 1
        improved = False
        for k in range(len(t)):
            for sign in (1, -1):
                q = t.copy()
                q[k] += sign * d * direction
                plan = objective.plan(q)
                if plan is None:
                    continue
                if not objective.budget.allows(calls_from(plan, k)):
                    return t, L, {"rounds": rounds, "loss": history, "moves": moves, "stopped": "budget"}
                Lq, _, sq = objective.evaluate(q, states[k], keep=True)
                if Lq < L * (1 - 1e-4):
                    t, L, improved = q, Lq, True
                    states = {**{i: v for i, v in states.items() if i < k}, **sq}  # earlier steps unchanged
                    moves += 1
                    break
        history.append(L)
        if not improved:
            d //= 2
    return t, L, {"rounds": rounds, "loss": history, "moves": moves, "stopped": stopped}
