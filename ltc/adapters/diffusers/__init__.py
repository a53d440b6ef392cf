"""diffusers adapter (needs the ``diffusers`` extra; the rest of ltc never imports it).

* :mod:`.grids` -- :func:`schedule_from_diffusers`, :func:`sampler_from_diffusers`,
  :func:`prediction_from_diffusers`: the grid, sampler and prediction type of a diffusers scheduler
  (its conventions and quirks are in that module's docstring).
* :mod:`.models` -- :func:`model_fn_from_unet`, :func:`model_fn_from_transformer`: a diffusers
  network as an :class:`ltc.Model`, guidance on the doubled batch.
* :mod:`.pipeline` -- :func:`scheduler` (a drop-in :class:`Scheduler` for a pipeline: one line) and
  :class:`StitchedDenoiser` (T-Stitch inside a pipeline).
"""
from .grids import SCHEDULERS, prediction_from_diffusers, sampler_from_diffusers, schedule_from_diffusers
from .models import model_fn_from_transformer, model_fn_from_unet
from .pipeline import Scheduler, StitchedDenoiser, scheduler

__all__ = ["SCHEDULERS", "prediction_from_diffusers", "sampler_from_diffusers", "schedule_from_diffusers",
           "model_fn_from_transformer", "model_fn_from_unet", "Scheduler", "StitchedDenoiser", "scheduler"]
