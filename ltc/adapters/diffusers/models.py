"""diffusers networks as ltc models: :func:`model_fn_from_unet`, :func:`model_fn_from_transformer`.

Each returns an :class:`ltc.Model` calling the network under ``torch.no_grad`` in its own dtype
(output cast back to the state's), with classifier-free guidance on the doubled batch
(unconditional first) when ``negative`` inputs are given.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ...models import Model


class _DiffusersModel:
    """``fn(x, t, **kwargs)`` calling a diffusers network; see :func:`model_fn_from_unet`."""

    def __init__(self, net, input_name: str, negative: dict | None, forward_kwargs: dict,
                 timestep_scale: float, learned_variance: bool):
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"expected a diffusers model (a torch.nn.Module), got {type(net).__name__}")
        if negative is not None:
            if not isinstance(negative, Mapping):
                raise TypeError(f"negative must be a dict of unconditional inputs, got {type(negative).__name__}")
            missing = [k for k in negative if k not in forward_kwargs]
            if missing:
                raise ValueError(f"negative has keys {missing} without a conditional value among the keyword arguments")
        if isinstance(timestep_scale, bool) or not isinstance(timestep_scale, (int, float)) \
                or not math.isfinite(timestep_scale):
            raise ValueError(f"timestep_scale must be a finite number, got {timestep_scale!r}")
        self.net, self.input_name, self.negative = net, input_name, dict(negative or {})
        self.forward_kwargs, self.timestep_scale = dict(forward_kwargs), float(timestep_scale)
        self.learned_variance = bool(learned_variance)

    def _inputs(self, rows: int, call_kwargs: dict) -> dict:
        out = {}
        for key, value in {**self.forward_kwargs, **call_kwargs}.items():
            if key in self.negative and key not in call_kwargs:
                if rows % 2:
                    raise ValueError(f"with negative inputs the model expects the doubled batch [2B, ...] "
                                     f"(ltc.sample(..., guidance_scale=...)), got {rows} rows")
                value = torch.cat([_rows(self.negative[key], rows // 2), _rows(value, rows // 2)])
            elif isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == 1 and rows > 1:
                value = value.expand(rows, *value.shape[1:])
            out[key] = value
        return out

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **call_kwargs) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype
        kwargs = self._inputs(x.shape[0], call_kwargs)
        with torch.no_grad():
            out = self.net(**{self.input_name: x.to(dtype)}, timestep=t * self.timestep_scale,
                           return_dict=False, **kwargs)[0]
        if self.learned_variance:
            out = out[:, : x.shape[1]]
        return out.to(x.dtype)


def _rows(value, rows: int):
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == 1 and rows > 1:
        return value.expand(rows, *value.shape[1:])
    return value


def model_fn_from_unet(unet, *, prediction: str, negative: dict | None = None, learned_variance: bool = False,
                       name: str | None = None, **forward_kwargs) -> Model:
    """An :class:`ltc.Model` calling ``unet(x, timestep=t, **forward_kwargs)`` (UNet2DModel,
    UNet2DConditionModel, ...), under ``torch.no_grad``, in the unet's dtype (output cast back to x's).

    Args:
        prediction: the ltc prediction type (e.g. ``prediction_from_diffusers(scheduler)``).
        forward_kwargs: the model's inputs, e.g. ``encoder_hidden_states=[B|1, L, C]``,
            ``class_labels=[B]``; tensors with one row are broadcast to the batch.
        negative: for classifier-free guidance, the unconditional values of some of those keys
            (e.g. ``{"encoder_hidden_states": uncond_embeds}``): the model then expects the doubled
            batch ``[x; x]`` of ``ltc.sample(..., guidance_scale=g)`` and passes
            ``cat([negative[k], forward_kwargs[k]])`` (unconditional first).
        learned_variance: keep the first C output channels of a model that also predicts its variance.
        Keyword arguments given at call time (``ltc.sample``'s ``model_kwargs``) override these;
        per-sample conditioning of a batch is best passed there (T-Stitch's compatibility probe
        cuts ``model_kwargs`` to its one-sample batch, but not the values bound here).
    """
    fn = _DiffusersModel(unet, "sample", negative, forward_kwargs, 1.0, learned_variance)
    return Model(fn, prediction, name or type(unet).__name__)


def model_fn_from_transformer(transformer, *, prediction: str, negative: dict | None = None,
                              timestep_scale: float = 1.0, learned_variance: bool = False,
                              name: str | None = None, **forward_kwargs) -> Model:
    """An :class:`ltc.Model` calling ``transformer(hidden_states=x, timestep=t * timestep_scale,
    **forward_kwargs)`` (SD3Transformer2DModel with ``encoder_hidden_states`` and
    ``pooled_projections``, DiTTransformer2DModel with ``class_labels`` and ``learned_variance=True``,
    ...).  ``timestep_scale=1/1000`` for models fed sigma instead of t (Flux).  Arguments as in
    :func:`model_fn_from_unet`."""
    fn = _DiffusersModel(transformer, "hidden_states", negative, forward_kwargs, timestep_scale, learned_variance)
    return Model(fn, prediction, name or type(transformer).__name__)
