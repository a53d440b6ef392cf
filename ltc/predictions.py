"""Model parameterisations and every conversion between them (the only place they are defined).

With ``x = alpha * x0 + sigma * eps``:

* ``eps``  -- the noise:             x0 = (x - sigma * m) / alpha
* ``x0``   -- the clean sample:      x0 = m
* ``v``    -- v = alpha*eps - sigma*x0 (vp only, alpha^2 + sigma^2 = 1):  x0 = alpha * x - sigma * m
* ``flow`` -- velocity v = eps - x0 = dx/dsigma (flow only, alpha = 1 - sigma):  x0 = x - sigma * m

Each is affine in ``(x, m)``, so the samplers only need the two numbers ``(px, pm)`` with
``x0 = px * x + pm * m``; the fused step kernels take them from the plan's coefficient table.
diffusers' names (``epsilon``, ``sample``, ``v_prediction``) are accepted as documented aliases.
"""
from __future__ import annotations

import torch

PREDICTIONS = ("eps", "x0", "v", "flow")
ALIASES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "velocity": "flow"}


def canonical(prediction) -> str:
    """The canonical prediction name; raises for anything else."""
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a string, one of {PREDICTIONS}, got {type(prediction).__name__}")
    name = ALIASES.get(prediction, prediction)
    if name not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS} (or {tuple(ALIASES)}), got {prediction!r}")
    return name


def check_family(prediction: str, family: str) -> None:
    """``v`` needs a vp schedule and ``flow`` a flow schedule: their x0 formulas assume it."""
    if prediction == "v" and family != "vp":
        raise ValueError("prediction 'v' requires a vp schedule (alpha^2 + sigma^2 = 1), "
                         f"got a {family!r} schedule")
    if prediction == "flow" and family != "flow":
        raise ValueError(f"prediction 'flow' requires a flow schedule (alpha = 1 - sigma), got a {family!r} schedule")


def x0_coefficients(prediction: str, alpha: float, sigma: float) -> tuple[float, float]:
    """``(px, pm)`` such that ``x0 = px * x + pm * m`` for a model output ``m``."""
    if prediction == "eps":
        if alpha == 0:  # pure noise: eps carries no information about x0
            return float("inf"), float("-inf")
        return 1.0 / alpha, -sigma / alpha
    if prediction == "x0":
        return 0.0, 1.0
    if prediction == "v":
        return alpha, -sigma
    if prediction == "flow":
        return 1.0, -sigma
    raise ValueError(f"unknown prediction {prediction!r}")


def from_x0(prediction: str, x: torch.Tensor, x0: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The model output of type ``prediction`` that corresponds to the clean estimate ``x0``.

    eps = (x - alpha x0) / sigma;  v = alpha eps - sigma x0;  flow = eps - x0 = (x - x0) / sigma.
    ``alpha`` and ``sigma`` broadcast against ``x`` (e.g. shape [B, 1, ...]).
    """
    if prediction == "x0":
        return x0
    eps = (x - alpha * x0) / sigma
    if prediction == "eps":
        return eps
    if prediction == "v":
        return alpha * eps - sigma * x0
    if prediction == "flow":
        return eps - x0
    raise ValueError(f"unknown prediction {prediction!r}")
