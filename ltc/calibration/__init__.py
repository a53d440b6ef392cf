"""LTC calibration: fit the weights of an LTC plan on calibration noises, judge the result on
held-out noises, and save it (no pickle).

* :mod:`.walk`       -- the executor in calibration mode (model also called on extrapolated steps)
* :mod:`.fit`        -- :func:`calibrate`: one-step closed form, then the trajectory objective
* :mod:`.trajectory` -- Levenberg-Marquardt on the endpoint, with checkpointed probes
* :mod:`.runs`       -- plain and teacher runs shared by a calibration session
* :mod:`.report`     -- the comparison rows and the refusal rule
* :mod:`.file`       -- :class:`Calibration`, its safetensors format and checks
* :mod:`.auto`       -- :func:`auto`: choose the LTC interval and cadence for a requested NFE
"""
from .auto import AutoChoice, auto
from .file import Calibration
from .fit import calibrate

__all__ = ["calibrate", "Calibration", "auto", "AutoChoice"]
