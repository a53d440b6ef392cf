"""Held-out validation: which calibration noises fit the weights and which ones judge them.

By default (``held_out=None``) the B calibration noises are split in two: the first
``B - B // 2`` fit the weights, the last ``B // 2`` are *judged* (:mod:`ltc.calibration.report`
decides on them, never on a noise the fit saw).  With ``held_out`` noises given, all B fit and the
held-out ones are judged.  The split is the same with or without a report, so the fitted weights
never depend on ``report=``; it is recorded in ``Calibration.validation``.

``model_kwargs`` follow their noises: a tensor (also inside dicts, lists and tuples) with the B
rows of the noises keeps the rows of its part; under classifier-free guidance one with 2B rows
(unconditional half first) keeps the same rows of both halves; any other tensor (a broadcast one,
e.g. ``[1, L, C]``) and any other value is passed whole to both parts.
"""
from __future__ import annotations

import torch


def split_rows(value, rows: torch.Tensor, batch: int, cfg: bool):
    """``value`` (model_kwargs, nested) restricted to the noises ``rows`` of ``batch`` (see the module
    docstring)."""
    if isinstance(value, torch.Tensor):
        if value.ndim >= 1 and cfg and value.shape[0] == 2 * batch:
            idx = rows.to(value.device)
            return value[torch.cat([idx, idx + batch])]
        if value.ndim >= 1 and value.shape[0] == batch:
            return value[rows.to(value.device)]
        return value
    if isinstance(value, dict):
        return {k: split_rows(v, rows, batch, cfg) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(split_rows(v, rows, batch, cfg) for v in value)
    return value


def split(noise: torch.Tensor, model_kwargs, held_out, held_out_kwargs, cfg: bool) -> tuple:
    """``(fit noise, fit kwargs, judged noise, judged kwargs, record)`` (see the module docstring);
    ``record`` is what ``Calibration.validation`` stores."""
    B = noise.shape[0]
    if held_out is not None:
        record = {"held_out": "given", "fit_noises": B, "judged_noises": int(held_out.shape[0])}
        return noise, model_kwargs, held_out, held_out_kwargs, record
    judged = B // 2
    fit_rows, judged_rows = torch.arange(B - judged), torch.arange(B - judged, B)
    record = {"held_out": "split", "fit_noises": B - judged, "judged_noises": judged,
              "judged_rows": [B - judged, B]}
    return (noise[: B - judged].clone(), split_rows(model_kwargs, fit_rows, B, cfg),
            noise[B - judged:].clone(), split_rows(model_kwargs, judged_rows, B, cfg), record)
