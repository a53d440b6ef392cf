"""ltc: fast, exact sampling for pretrained diffusion and flow-matching models.

    import ltc
    x = ltc.sample(model_fns, ltc.Schedule.vp("scaled_linear"), policy=None, sampler="dpmpp_2m", steps=20,
                   shape=(4, 4, 64, 64), generator=torch.Generator().manual_seed(0))
"""
from . import ops, oracles, policies, samplers
from .api import sample
from .calibration import Calibration
from .calibration_fit import calibrate
from .executor import NonFiniteError, SampleInfo
from .models import Model
from .plan import Plan, compile_plan
from .schedule import Grid, Schedule
from .stepper import Stepper, StepRequest

__version__ = "0.1.0"

__all__ = ["sample", "Schedule", "Grid", "Model", "Plan", "compile_plan", "SampleInfo",
           "NonFiniteError", "policies", "samplers", "oracles", "ops", "__version__"]
__all__ += ["Stepper", "StepRequest"]
__all__ += ["calibrate", "Calibration"]
