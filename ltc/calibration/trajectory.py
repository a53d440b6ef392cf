"""The trajectory objective: fit all LTC weights so the accelerated endpoint matches a teacher.

With x_end(w) the endpoint of the LTC walk from the calibration noises, T the teacher's endpoints
from the same noises, w0 the one-step fit and n the number of endpoint entries,

    L(w) = |x_end(w) - T|^2 / E0  +  rho |w - w0|^2,        E0 = |x_end(w0) - T|^2

(the data term is relative, so rho is dimensionless; rho = 1e-2 by default).  Levenberg-Marquardt
on the residual vector r(w) = [(x_end(w) - T) / sqrt(E0);  sqrt(rho) (w - w0)]:

    (J^T J + mu diag(J^T J)) delta = -J^T r,      w <- w + delta

accepting a step only when it lowers L by more than a relative 1e-4 (else mu *= 10 and retry;
mu /= 10 after an accepted step).  J is the forward-difference Jacobian of x_end in each w_k with
step h; the probe for skip k restarts from the checkpoint taken just before skip k on the current
path, so it costs only the model calls after that step (:meth:`ltc.calibration.walk.LTCWalk.calls_from`).
The ridge keeps w near the one-step fit where the endpoint is nearly flat in some w_k.
"""
from __future__ import annotations

import numpy as np
import torch

from ..executor.walk import NonFiniteError
from .walk import LTCWalk


def fit_trajectory(walk: LTCWalk, noise: torch.Tensor, teacher: torch.Tensor, w0: np.ndarray, *,
                   ridge: float = 1e-2, max_iter: int = 3, fd_step: float | None = None,
                   min_decrease: float = 1e-4, damping: float = 1e-2, max_tries: int = 6) -> tuple:
    """Returns ``(w [K], endpoint x_end(w), info)`` with ``info``: iterations, loss history, model calls."""
    device, ct = walk.device, walk.ct
    h = fd_step if fd_step is not None else (1e-4 if ct == torch.float64 else 1e-2)
    target = teacher.to(torch.float64).reshape(-1)
    calls0 = walk.calls

    def as_dev(w):
        return torch.as_tensor(w, dtype=ct, device=device)

    def residual(x):
        return x.to(torch.float64).reshape(-1) - target

    w0 = np.asarray(w0, dtype=np.float64)
    cur = walk.run(noise, as_dev(w0), keep_checkpoints=True)
    r = residual(cur.x)
    E0 = float((r ** 2).sum())
    if E0 == 0.0:
        return w0, cur.x, {"iterations": 0, "loss": [0.0], "calls": walk.calls - calls0, "accepted_steps": 0}
    scale = 1.0 / np.sqrt(E0)

    def loss(w, rr):
        return float((rr ** 2).sum()) / E0 + ridge * float(((w - w0) ** 2).sum())

    w, L = w0.copy(), 1.0
    history, mu, accepted = [L], damping, 0
    for _ in range(max_iter):
        J = torch.empty((r.numel(), len(w)), dtype=torch.float64, device=r.device)
        for k in range(len(w)):
            wk = w.copy()
            wk[k] += h
            probe = walk.run(None, as_dev(wk), start=cur.checkpoints[k])
            J[:, k] = (residual(probe.x) - r) * (scale / h)
        Jn = J.cpu().numpy()
        g = Jn.T @ (r.cpu().numpy() * scale) + ridge * (w - w0)
        H = Jn.T @ Jn + ridge * np.eye(len(w))
        step_taken = False
        for _ in range(max_tries):
            delta = np.linalg.solve(H + mu * np.diag(np.diag(H)), -g)
            w_try = w + delta
            try:
                trial = walk.run(noise, as_dev(w_try), keep_checkpoints=True)
                r_try = residual(trial.x)
                L_try = loss(w_try, r_try)
            except NonFiniteError:
                L_try = np.inf
            if (L - L_try) / L > min_decrease:
                w, cur, r, L = w_try, trial, r_try, L_try
                mu, step_taken = mu / 10, True
                accepted += 1
                break
            mu *= 10
        history.append(L)
        if not step_taken:
            break
    info = {"iterations": len(history) - 1, "loss": history, "calls": walk.calls - calls0,
            "accepted_steps": accepted, "ridge": ridge, "fd_step": h}
    return w, cur.x, info
