"""Sampling policies: which model runs at each step, or whether the step is extrapolated."""
from .base import Full, Policy, no_extrapolation
from .ltc_accel import LTC
from .tstitch import TStitch, check_compatible

__all__ = ["Full", "Policy", "no_extrapolation", "TStitch", "check_compatible", "LTC"]
