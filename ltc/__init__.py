"""ltc: fast, exact sampling for pretrained diffusion and flow-matching models.

    import ltc
    x = ltc.sample(model_fns, ltc.Schedule.vp("scaled_linear"), policy=None, sampler="dpmpp_2m", steps=20,
                   shape=(4, 4, 64, 64), generator=torch.Generator().manual_seed(0))

The pipeline, one layer per module or package (each imports only those above it in this list):
:mod:`.schedule`, :mod:`.models` -> :mod:`.samplers` -> :mod:`.policies` -> :mod:`.plan` ->
:mod:`.ops`, :mod:`.executor` -> :mod:`.api` -> :mod:`.stepper`, :mod:`.calibration`,
:mod:`.adapters`, :mod:`.distributed`, :mod:`.demo`.
"""
from . import ops, policies, samplers
from ._version import __version__
from .api import SampleInfo, sample
from .calibration import Calibration, calibrate
from .executor import NonFiniteError
from .models import Model
from .plan import Plan, compile_plan
from .schedule import Grid, Schedule
from .stepper import Stepper, StepRequest
from .zoo import oracles

__all__ = ["sample", "Schedule", "Grid", "Model", "Plan", "compile_plan", "SampleInfo",
           "NonFiniteError", "policies", "samplers", "oracles", "ops", "__version__",
           "Stepper", "StepRequest", "calibrate", "Calibration"]
