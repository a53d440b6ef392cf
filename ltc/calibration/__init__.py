"""LTC calibration: fit the weights of an LTC plan on calibration noises, judge the result on
noises the fit did not see, and save it (no pickle).

* :mod:`.split`      -- which noises fit and which are judged (by default: half and half)
* :mod:`.walk`       -- the executor in calibration mode (model also called on extrapolated steps)
* :mod:`.fit`        -- :func:`calibrate`: one-step closed form, then the trajectory objective
* :mod:`.trajectory` -- Levenberg-Marquardt on the endpoint, with checkpointed probes
* :mod:`.runs`       -- plain and teacher runs shared by a calibration session
* :mod:`.report`     -- the comparison rows, the judge's teacher ladder and the refusal rule
* :mod:`.file`       -- :class:`Calibration`, its safetensors format and checks
* :mod:`.auto`       -- :func:`auto`: the best plan for a requested NFE, LTC or plain
"""
from .auto import AutoChoice, auto
from .file import Calibration
from .fit import calibrate

__all__ = ["calibrate", "Calibration", "auto", "AutoChoice"]
