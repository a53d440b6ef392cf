"""Plan search (``ltc.optimize``): for a budget of model calls, the sampler, the step grid and the
LTC weights fitted together on calibration noises, chosen on held-out noises by the calibration
judge, refused where they lose to the best hand-designed plan.

* :mod:`.space`  -- grids as parameters (ordered, inside the schedule's range) and the hand grids
* :mod:`.runs`   -- walks that restart at any step (what a probe of one parameter costs)
* :mod:`.fit`    -- the objective, Levenberg-Marquardt and the integer-time pattern search
* :mod:`.search` -- :func:`optimize`: screening, candidates, judge, break-even
* :mod:`.result` -- :class:`OptimizedPlan` and its safetensors format
"""
from .result import OptimizedPlan
from .search import optimize

__all__ = ["optimize", "OptimizedPlan"]
