"""Validation of the arguments that every entry point shares (``ltc.sample``, ``ltc.Stepper``,
``ltc.calibrate``, ``ltc.distributed.generate``), so all of them accept and refuse the same inputs
with the same messages, before any work starts."""
from __future__ import annotations

import math

import torch

from .policies import Full, Policy
from .samplers import Sampler, get_sampler
from .schedule import Schedule

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def sampling_arguments(schedule, policy, sampler, guidance_scale) -> tuple[Policy, Sampler, float | None]:
    """``(policy, sampler, guidance_scale)`` checked and normalised: ``policy=None`` is
    :class:`~ltc.policies.Full`, a sampler name becomes a :class:`~ltc.samplers.Sampler`, the
    guidance scale a float (or None)."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be an ltc.Schedule (e.g. Schedule.vp(...)), got {type(schedule).__name__}")
    policy = Full() if policy is None else policy
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be an ltc.policies.Policy, got {type(policy).__name__}")
    solver = get_sampler(sampler)
    if guidance_scale is not None:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number or None, got {guidance_scale!r}")
        guidance_scale = float(guidance_scale)
    return policy, solver, guidance_scale


def check_generator(generator, solver: Sampler) -> None:
    """A generator is a ``torch.Generator`` or None; a stochastic sampler needs one."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if solver.stochastic and generator is None:
        raise ValueError(f"sampler {solver!r} draws noise every step: pass generator= for reproducible samples")


def initial_state(noise, shape, generator, dtype, device):
    """The validated initial state ``[B, *S]``: ``noise`` as given, or drawn with ``shape`` from
    ``generator`` (``dtype`` default float32, ``device`` default CPU).  Shared by :func:`sample`
    and :func:`ltc.calibrate` so both accept and refuse the same inputs."""
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if noise is not None:
        if shape is not None:
            raise ValueError("give either noise or shape, not both")
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
        if noise.dtype not in FLOAT_DTYPES:
            raise TypeError(f"noise must have a floating dtype in {FLOAT_DTYPES}, got {noise.dtype}")
        if dtype is not None and noise.dtype != dtype:
            raise ValueError(f"noise has dtype {noise.dtype} but dtype={dtype} was requested")
        if device is not None and noise.device != torch.device(device):
            raise ValueError(f"noise is on {noise.device} but device={device} was requested")
        if noise.dim() < 2:
            raise ValueError(f"noise must be [B, *S] with at least 2 dims, got shape {tuple(noise.shape)}")
        if not bool(torch.isfinite(noise).all()):
            raise ValueError("noise contains NaN or Inf")
        return noise
    if shape is None:
        raise ValueError("give noise (a tensor) or shape (and a generator for reproducibility)")
    if not (isinstance(shape, (tuple, list, torch.Size)) and len(shape) >= 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ValueError(f"shape must be a tuple of >= 2 positive ints [B, *S], got {shape!r}")
    dtype = dtype or torch.float32
    device = torch.device(device) if device is not None else torch.device("cpu")
    gen_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)
