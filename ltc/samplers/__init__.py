"""Samplers as pure functions of the grid: per-step linear update coefficients.

Every sampler here is written in data-prediction form.  With ``D_j`` the clean estimate (x0) of
the model at point ``j`` and ``z`` fresh standard noise, step ``i`` (point i -> i+1) is

    x_{i+1} = A_i x_i + B0_i D_i + B1_i D_{i-1} + B2_i D_{i-2} + B3_i D_{i-3} + C_i z    (*)

so a sampler is just the table ``(A, B0, B1, B2, B3, C)`` plus the order used at each step (how
many past D it reads; only UniPC-3's corrector reads D_{i-3}).  A step is a row of the plan; a
sampler that calls the model twice a step (Heun) has two rows a step (:meth:`Sampler.rows`).

Modules: :mod:`.base` (the contract), :mod:`.ddim`, :mod:`.euler` (Euler, Euler ancestral, Heun),
:mod:`.dpm_solver` (DPM-Solver++ multistep, ODE and SDE), :mod:`.unipc`.  Symbols: alpha_i, sigma_i from :mod:`ltc.schedule`, lambda_i = log(alpha_i /
sigma_i), h_i = lambda_{i+1} - lambda_i.  Primes denote point i+1.

The tables are computed once on the host in float64 and compiled into the plan.
"""
from __future__ import annotations

from .base import Sampler, SolverTable
from .ddim import DDIM
from .dpm_solver import DPMSolverPP, DPMSolverSDE
from .euler import Euler, EulerAncestral, Heun
from .unipc import UniPC

__all__ = ["Sampler", "SolverTable", "DDIM", "Euler", "EulerAncestral", "Heun", "DPMSolverPP", "DPMSolverSDE", "UniPC",
           "SAMPLER_NAMES", "get_sampler"]


SAMPLER_NAMES = ("ddim", "euler", "euler_a", "heun", "dpmpp_1m", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde",
                 "dpmpp_3m_sde", "unipc", "unipc_1m", "unipc_2m", "unipc_3m")


def get_sampler(sampler) -> Sampler:
    """A :class:`Sampler` from a name in ``SAMPLER_NAMES`` or an instance (returned as is)."""
    if isinstance(sampler, Sampler):
        return sampler
    if not isinstance(sampler, str):
        hint = f"; pass an instance, e.g. {sampler.__name__}()" if isinstance(sampler, type) else ""
        if type(sampler).__module__.split(".")[0] == "diffusers" or hasattr(sampler, "set_timesteps"):
            hint = ("; for a diffusers scheduler use ltc.adapters.diffusers.sampler_from_diffusers(scheduler, steps) "
                    "as sampler= and schedule_from_diffusers(scheduler, steps) as the schedule")
        raise TypeError(f"sampler must be a name in {SAMPLER_NAMES} or a Sampler, got {type(sampler).__name__}{hint}")
    if sampler == "ddim":
        return DDIM()
    if sampler == "euler":
        return Euler()
    if sampler in ("dpmpp_1m", "dpmpp_2m", "dpmpp_3m"):
        return DPMSolverPP(order=int(sampler[6]))
    if sampler in ("dpmpp_2m_sde", "dpmpp_3m_sde"):
        return DPMSolverSDE(order=int(sampler[6]))
    if sampler == "unipc":  # diffusers' UniPCMultistepScheduler default: order 2, bh2
        return UniPC()
    if sampler in ("unipc_1m", "unipc_2m", "unipc_3m"):
        return UniPC(order=int(sampler[6]))
    if sampler == "euler_a":
        return EulerAncestral()
    if sampler == "heun":
        return Heun()
    raise ValueError(f"sampler must be one of {SAMPLER_NAMES} or a Sampler instance, got {sampler!r}")
