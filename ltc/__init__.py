"""ltc: fast, exact sampling for pretrained diffusion and flow-matching models.

    import ltc
    x = ltc.sample(model_fns, ltc.Schedule.vp("scaled_linear"), policy=None, sampler="dpmpp_2m", steps=20,
                   shape=(4, 4, 64, 64), generator=torch.Generator().manual_seed(0))

The pipeline, bottom layer first; each module imports only its own layer or those before it
(``tests/test_layering.py``): :mod:`.schedule`, :mod:`.models`, :mod:`.ops.contract` ->
:mod:`.samplers` -> :mod:`.plan` -> :mod:`.policies` -> :mod:`.ops` backends -> :mod:`.executor`
-> :mod:`.api` -> :mod:`.stepper`, :mod:`.calibration`, :mod:`.plan_search`, :mod:`.adapters`, :mod:`.distributed`,
:mod:`.zoo` -> :mod:`.demo`, :mod:`.cli`.
"""
from . import ops, policies, samplers
from ._version import __version__
from .api import SampleInfo, sample
from .calibration import Calibration, calibrate
from .executor import NonFiniteError
from .models import Model
from .plan import Plan, compile_plan
from .plan_search import OptimizedPlan, optimize
from .schedule import Grid, Schedule
from .stepper import Stepper, StepRequest
from .zoo import oracles

__all__ = ["sample", "Schedule", "Grid", "Model", "Plan", "compile_plan", "SampleInfo",
           "NonFiniteError", "policies", "samplers", "oracles", "ops", "__version__",
           "Stepper", "StepRequest", "calibrate", "Calibration", "optimize", "OptimizedPlan"]
