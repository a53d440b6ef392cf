"""k-diffusion adapter: a k-diffusion denoiser and its ``sigmas`` as an ltc model and schedule.

k-diffusion (Karras et al. 2022, ``crowsonkb/k-diffusion``) samples the variance-exploding process

    x = x0 + sigma * eps,        denoised = model(x, sigma * s_in, **extra_args)  ~  E[x0 | x]

along a decreasing ``sigmas`` tensor ``[N + 1]`` (usually ending at 0, e.g. ``get_sigmas_karras``),
starting from ``x = randn * sigmas[0]``.  That is ltc's forward process with ``alpha = 1`` at
every point, so :func:`from_kdiffusion` returns, in one call,

* the model: ``ltc.Model(model, prediction="x0")`` -- called exactly as k-diffusion calls it,
  ``model(x, sigma [B], **model_kwargs)`` (ltc hands the grid's model time ``t``, which is sigma);
* the schedule: :meth:`ltc.Schedule.explicit` with ``t = sigma = sigmas``, ``alpha = 1`` (a grid of
  the ``"vp"`` family: ltc's samplers read alpha and sigma as given and never assume
  alpha^2 + sigma^2 = 1; only the ``v`` prediction does, and the model here predicts x0).

ltc's state is then k-diffusion's ``x`` itself, so the same noise gives the same samples:
DPM-Solver++(2M) (``sampler="dpmpp_2m"``) is ``sample_dpmpp_2m`` and Euler (``"euler"``) is
``sample_euler`` with ``s_churn = 0``, to float64 round-off (``tests/test_kdiffusion_adapter.py``)::

    import torch, ltc
    from ltc.adapters.kdiffusion import from_kdiffusion

    model, schedule = from_kdiffusion(denoiser, sigmas)          # denoiser(x, sigma, **extra) -> x0
    x_T = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    x0 = ltc.sample(model, schedule, sampler="dpmpp_2m", noise=x_T, model_kwargs=extra_args)

(``steps`` is not passed: an explicit schedule has exactly ``len(sigmas) - 1`` steps.)  ltc's
classifier-free guidance (``guidance_scale``) doubles the batch as for any model; a k-diffusion
CFG wrapper (a denoiser that already combines two predictions) is used as it is, without it.

Nothing here imports k-diffusion: the adapter only needs the denoiser's calling convention.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models import Model
from ..schedule import ExplicitSchedule, Schedule

# k-diffusion's deterministic samplers and the ltc sampler that takes the same steps on this grid
SAMPLERS = {"sample_dpmpp_2m": "dpmpp_2m", "sample_euler": "euler"}

__all__ = ["from_kdiffusion", "schedule_from_sigmas", "SAMPLERS"]


def _check_sigmas(sigmas) -> np.ndarray:
    """``sigmas`` as float64 host values (exactly: float32/16 widen without rounding), checked."""
    if not isinstance(sigmas, torch.Tensor):
        raise TypeError(f"sigmas must be a 1-D torch.Tensor of noise levels (as k-diffusion's get_sigmas_*), "
                        f"got {type(sigmas).__name__}")
    if not sigmas.is_floating_point() or sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D floating tensor of N + 1 >= 2 noise levels, got dtype "
                         f"{sigmas.dtype} and shape {tuple(sigmas.shape)}")
    s = sigmas.detach().to("cpu", torch.float64).numpy().copy()
    if not np.all(np.isfinite(s)):
        raise ValueError(f"sigmas must be finite, got {s.tolist()}")
    if np.any(s[:-1] <= 0) or s[-1] < 0:
        raise ValueError(f"sigmas must be > 0 except the last, which may be 0; got {s.tolist()}")
    if np.any(np.diff(s) >= 0):
        i = int(np.argmax(np.diff(s) >= 0))
        raise ValueError(f"sigmas must be strictly decreasing; sigmas[{i}] = {s[i]} is followed by {s[i + 1]}")
    return s


def schedule_from_sigmas(sigmas: torch.Tensor) -> ExplicitSchedule:
    """The ltc schedule of k-diffusion's ``sigmas [N + 1]``: model time ``t = sigma``, ``alpha = 1``,
    ``sigma = sigmas`` (an explicit schedule of N steps; sample it with ``steps=None``)."""
    s = _check_sigmas(sigmas)
    return Schedule.explicit(s, np.ones_like(s), s, family="vp")


def from_kdiffusion(model, sigmas: torch.Tensor, *, name: str | None = None) -> tuple[Model, ExplicitSchedule]:
    """``(ltc_model, schedule)`` for a k-diffusion denoiser ``model(x, sigma, **extra_args) -> x0``
    and its noise levels ``sigmas [N + 1]`` (see the module docstring).

    ``name`` names the model in ltc's messages (default: the callable's name).  The model is not
    wrapped: ltc calls ``model`` itself, with ``sigma`` of shape ``[B]`` in the state's dtype."""
    if not callable(model):
        raise TypeError(f"model must be a callable denoiser model(x, sigma, **extra_args) -> x0, "
                        f"got {type(model).__name__}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string or None, got {type(name).__name__}")
    schedule = schedule_from_sigmas(sigmas)
    return Model(model, "x0", name), schedule
