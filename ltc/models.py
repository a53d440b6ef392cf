"""The model contract: ``prediction = fn(x, t, **model_kwargs)``, with a declared prediction type.

``x`` is ``[B, *S]`` (``[2B, *S]`` under classifier-free guidance, unconditional half first),
``t`` is ``[B]`` (resp. ``[2B]``) model times, and the result has the shape, dtype and device of
``x``.  The prediction type (``eps``, ``x0``, ``v``, ``flow``; see below) comes
from a :class:`Model` wrapper, a ``prediction`` attribute of the callable, or the ``prediction``
argument of :func:`ltc.sample`.

``x`` and ``t`` are ltc's own buffers (the sampling state, the plan's times): a model must not
write them in place (refused at the step it does, see :mod:`ltc.executor.walk`).  Under guidance
every batched tensor of ``model_kwargs`` has the 2B rows of ``x``; a model that builds the
unconditional half itself from B rows declares those keywords (:func:`half_batch_kwargs`).

Prediction types, and every conversion between them (the only place they are defined).  With ``x = alpha * x0 + sigma * eps``:

* ``eps``  -- the noise:             x0 = (x - sigma * m) / alpha
* ``x0``   -- the clean sample:      x0 = m
* ``v``    -- v = alpha*eps - sigma*x0 (vp only, alpha^2 + sigma^2 = 1):  x0 = alpha * x - sigma * m
* ``flow`` -- velocity v = eps - x0 = dx/dsigma (flow only, alpha = 1 - sigma):  x0 = x - sigma * m

Each is affine in ``(x, m)``, so the samplers only need the two numbers ``(px, pm)`` with
``x0 = px * x + pm * m``; the fused step kernels take them from the plan's coefficient table.
diffusers' names (``epsilon``, ``sample``, ``v_prediction``) are accepted as documented aliases.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch

PREDICTIONS = ("eps", "x0", "v", "flow")
ALIASES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "velocity": "flow"}


def canonical(prediction) -> str:
    """The canonical prediction name; raises for anything else."""
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a string, one of {PREDICTIONS}, got {type(prediction).__name__}")
    name = ALIASES.get(prediction, prediction)
    if name not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS} (or {tuple(ALIASES)}), got {prediction!r}")
    return name


def check_family(prediction: str, family: str) -> None:
    """``v`` needs a vp schedule and ``flow`` a flow schedule: their x0 formulas assume it."""
    if prediction == "v" and family != "vp":
        raise ValueError("prediction 'v' requires a vp schedule (alpha^2 + sigma^2 = 1), "
                         f"got a {family!r} schedule")
    if prediction == "flow" and family != "flow":
        raise ValueError(f"prediction 'flow' requires a flow schedule (alpha = 1 - sigma), got a {family!r} schedule")


def x0_coefficients(prediction: str, alpha: float, sigma: float) -> tuple[float, float]:
    """``(px, pm)`` such that ``x0 = px * x + pm * m`` for a model output ``m``."""
    if prediction == "eps":
        if alpha == 0:  # pure noise: eps carries no information about x0
            return float("inf"), float("-inf")
        return 1.0 / alpha, -sigma / alpha
    if prediction == "x0":
        return 0.0, 1.0
    if prediction == "v":
        return alpha, -sigma
    if prediction == "flow":
        return 1.0, -sigma
    raise ValueError(f"unknown prediction {prediction!r}")


def from_x0(prediction: str, x: torch.Tensor, x0: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The model output of type ``prediction`` that corresponds to the clean estimate ``x0``.

    eps = (x - alpha x0) / sigma;  v = alpha eps - sigma x0;  flow = eps - x0 = (x - x0) / sigma.
    ``alpha`` and ``sigma`` broadcast against ``x`` (e.g. shape [B, 1, ...]).
    """
    if prediction == "x0":
        return x0
    eps = (x - alpha * x0) / sigma
    if prediction == "eps":
        return eps
    if prediction == "v":
        return alpha * eps - sigma * x0
    if prediction == "flow":
        return eps - x0
    raise ValueError(f"unknown prediction {prediction!r}")


class Model:
    """A model function with its prediction type and a name used in error messages."""

    def __init__(self, fn: Callable, prediction: str, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None, got {type(name).__name__}")
        self.fn = fn
        self.prediction = canonical(prediction)
        self.name = name or default_name(fn)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fn(x, t, **kwargs)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, prediction={self.prediction!r})"


def default_name(fn) -> str:
    """The name a model is reported by: its ``name`` attribute, else its ``__name__``, else its type."""
    name = getattr(fn, "name", None)
    if isinstance(name, str):
        return name
    return getattr(fn, "__name__", None) or type(fn).__name__


def as_models(model_fns, prediction: str | None = None) -> list[Model]:
    """Normalise ``model_fns`` (one callable or a non-empty sequence) to a list of :class:`Model`."""
    if callable(model_fns) and not isinstance(model_fns, (list, tuple)):
        fns = [model_fns]
    elif isinstance(model_fns, Sequence) and not isinstance(model_fns, (str, bytes)):
        fns = list(model_fns)
        if not fns:
            raise ValueError("model_fns is empty: give one callable or a sequence of them")
    else:
        raise TypeError(f"model_fns must be a callable or a sequence of callables, got {type(model_fns).__name__}")
    models = []
    for k, fn in enumerate(fns):
        if isinstance(fn, Model):
            declared = fn.prediction
        elif callable(fn):
            declared = getattr(fn, "prediction", None)
        else:
            raise TypeError(f"model_fns[{k}] is not callable ({type(fn).__name__})")
        if prediction is not None and declared is not None and canonical(prediction) != canonical(declared):
            raise ValueError(f"prediction={prediction!r} contradicts model_fns[{k}], which declares {declared!r}")
        chosen = declared if declared is not None else prediction
        if chosen is None:
            raise TypeError(f"model_fns[{k}] has no prediction type: wrap it as ltc.Model(fn, prediction=...) "
                            f"or pass prediction= to ltc.sample (one of {PREDICTIONS})")
        if isinstance(fn, Model):
            models.append(fn)
        else:
            models.append(Model(fn, chosen, default_name(fn)))
    names = [m.name for m in models]
    for k, m in enumerate(models):
        if names.count(m.name) > 1:  # a renamed copy: the caller's Model keeps its name
            models[k] = copy.copy(m)
            models[k].name = f"{m.name}[{k}]"
    return models


INPLACE_FIX = ("ltc passes its own buffers (the sampling state and the plan's times) to the model, so a write "
               "into them would change the samples: copy before modifying (x = x.clone()) or use "
               "out-of-place operations")


def half_batch_kwargs(model) -> frozenset:
    """Names of ``model_kwargs`` the model accepts with ``B`` rows under classifier-free guidance,
    where every other batched tensor must have the ``2B`` rows of the doubled input.  A model that
    builds the unconditional half itself (the zoo and reference nets: B labels for the conditional
    half, the null class for the other) declares them as a ``half_batch_kwargs`` attribute, on the
    callable or on what it wraps (attributes ``fn``, ``net``, ``model``, ``module``, ``__wrapped__``,
    up to six levels deep)."""
    seen, todo = set(), [model]
    for _ in range(7):
        found, nxt = None, []
        for obj in todo:
            if obj is None or id(obj) in seen:
                continue
            seen.add(id(obj))
            names = getattr(obj, "half_batch_kwargs", None)
            if names is not None:
                found = frozenset(names)
                break
            nxt += [getattr(obj, a, None) for a in ("fn", "net", "model", "module", "__wrapped__")]
        if found is not None:
            return found
        todo = nxt
    return frozenset()


def output_hint(out) -> str:
    """A sentence for a model output that is not a tensor but holds one (diffusers' outputs)."""
    if isinstance(getattr(out, "sample", None), torch.Tensor):
        return (f": {type(out).__name__} looks like a diffusers model output; wrap the network with "
                "ltc.adapters.diffusers.model_fn_from_unet(unet, prediction=...) or model_fn_from_transformer"
                "(transformer, prediction=...), or return its .sample")
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return f": return out[0] (a model called with return_dict=False returns a {type(out).__name__})"
    return ""


def check_output(out, expected: torch.Tensor, step: int, model: Model) -> None:
    """Shape/dtype/device checks of one model output (host metadata only: no device sync)."""
    where = f"model {model.name!r} at step {step}"
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{where} returned {type(out).__name__}, expected a torch.Tensor" + output_hint(out))
    if out.shape != expected.shape:
        shape, want = tuple(out.shape), tuple(expected.shape)
        hint = ""
        if len(shape) == len(want) >= 2 and shape[0] == want[0] and shape[2:] == want[2:] and shape[1] == 2 * want[1]:
            hint = (f"; it returns 2C = {shape[1]} channels where C = {want[1]} were expected, as a model with "
                    f"learned variance does (e.g. DiT): keep out[:, :{want[1]}] (model_fn_from_transformer(..., "
                    "learned_variance=True) does)")
        if len(shape) == len(want) and 2 * shape[0] == want[0] and shape[1:] == want[1:]:
            hint = (f"; under classifier-free guidance the model gets [x; x] ({want[0]} rows, unconditional half "
                    "first) and returns an output for every row")
        raise ValueError(f"{where} returned shape {shape}, expected {want} (the shape of its input x){hint}")
    if out.dtype != expected.dtype:
        raise ValueError(f"{where} returned dtype {out.dtype}, expected {expected.dtype} (the dtype of x): "
                         f"return out.to(x.dtype)")
    if out.device != expected.device:
        raise ValueError(f"{where} returned a tensor on {out.device}, expected {expected.device}")
