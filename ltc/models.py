"""The model contract: ``prediction = fn(x, t, **model_kwargs)``, with a declared prediction type.

``x`` is ``[B, *S]`` (``[2B, *S]`` under classifier-free guidance, unconditional half first),
``t`` is ``[B]`` (resp. ``[2B]``) model times, and the result has the shape, dtype and device of
``x``.  The prediction type (``eps``, ``x0``, ``v``, ``flow``; see :mod:`ltc.predictions`) comes
from a :class:`Model` wrapper, a ``prediction`` attribute of the callable, or the ``prediction``
argument of :func:`ltc.sample`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import predictions as P


class Model:
    """A model function with its prediction type and a name used in error messages."""

    def __init__(self, fn: Callable, prediction: str, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.prediction = P.canonical(prediction)
        self.name = name or _default_name(fn)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fn(x, t, **kwargs)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, prediction={self.prediction!r})"


def _default_name(fn) -> str:
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
        if prediction is not None and declared is not None and P.canonical(prediction) != P.canonical(declared):
            raise ValueError(f"prediction={prediction!r} contradicts model_fns[{k}], which declares {declared!r}")
        chosen = declared if declared is not None else prediction
        if chosen is None:
            raise TypeError(f"model_fns[{k}] has no prediction type: wrap it as ltc.Model(fn, prediction=...) "
                            f"or pass prediction= to ltc.sample (one of {P.PREDICTIONS})")
        if isinstance(fn, Model):
            models.append(fn)
        else:
            models.append(Model(fn, chosen, _default_name(fn)))
    names = [m.name for m in models]
    for k, m in enumerate(models):
        if names.count(m.name) > 1:
            m.name = f"{m.name}[{k}]"
    return models


def check_output(out, expected: torch.Tensor, step: int, model: Model) -> None:
    """Shape/dtype/device checks of one model output (host metadata only: no device sync)."""
    where = f"model {model.name!r} at step {step}"
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{where} returned {type(out).__name__}, expected a torch.Tensor")
    if out.shape != expected.shape:
        raise ValueError(f"{where} returned shape {tuple(out.shape)}, expected {tuple(expected.shape)} "
                         "(the shape of its input x)")
    if out.dtype != expected.dtype:
        raise ValueError(f"{where} returned dtype {out.dtype}, expected {expected.dtype} (the dtype of x)")
    if out.device != expected.device:
        raise ValueError(f"{where} returned a tensor on {out.device}, expected {expected.device}")
