"""A calibration of LTC weights: what :func:`ltc.calibrate` returns, saved as safetensors.

A :class:`Calibration` holds, for one (grid, sampler, LTC structure), the weight ``w_k`` of each of
the K extrapolated steps (the fitted ones, or 1 where the judge found w = 1 at least as good), the
fit diagnostics, the comparison report and which noises fitted and judged (``validation``), and is
valid only for the plans it was made for: its ``key`` (:func:`ltc.policies.ltc_accel.calibration_key`)
fingerprints the exact grid, the sampler, the extrapolated steps and the rule that chose them
(``phase``), the progress variable, the state and the base policy.  ``LTC(weights=cal)`` /
:meth:`Calibration.policy` check the key when the plan is compiled; a mismatch is a ValueError
naming what differs.

What a calibration was fitted on (``fitted_on``): the guidance scale, the shape ``[*S]`` of one
sample, and for each model its plan calls (in model-index order) the model's name, the sha256 of
its weights (:func:`ltc.io.model_fingerprint`; None for a plain callable that reads no tensors)
and the user's ``model_tag`` (``ltc.calibrate(..., model_tag=...)``).  :meth:`Calibration.check_models`
compares them with a run before its first model call (``ltc.sample`` and graph runs through
``LTC.check_sampling``; ``ltc.Stepper`` for guidance and shape, and for the models when its
``predictions`` are the models themselves):
another guidance scale, sample shape, number of models or other weights is a ValueError; a plain
callable is checked by its tag, which must then be the run's model name
(``ltc.Model(fn, prediction, name=tag)``); one without a tag cannot be told apart, and that is a
warning.

File format (no pickle): an :mod:`ltc.io` file of format ``ltc-calibration``, whose tensors are

    weights, weights_fit, weights_step, gamma, residual,
    w_mean, w_std                                           float64 [K]
    steps                                                   int64   [K]
    coherence                                               float64 [N-1]
    grid_t, grid_alpha, grid_sigma                          float64 [N+1]

and whose string metadata holds ``format`` (``"ltc-calibration"``), ``format_version``,
``ltc_version``, ``key``, ``family``, JSON fields (``sampler``, ``structure``, ``fit``, ``cost``,
``report``, ``fitted_on``, ``validation``), ``accepted``, the printed ``summary`` and ``content_sha256`` (the
:func:`ltc.io.content_digest` of every tensor *and* every other metadata field).
:meth:`Calibration.load` rejects a missing file, a file that is not safetensors (truncated,
corrupted), another format version, missing or extra tensors or metadata, a digest mismatch (one
changed byte anywhere), a shipped file that differs from its pinned sha256, inconsistent shapes,
non-finite weights, gammas or grid, an ``accepted`` or ``weights`` that contradict the report's
decision (``weights`` must be 1 where it chose w = 1, else ``weights_fit``), and a key that does not
match the stored grid and structure.

Two version numbers, two reasons to bump:

* ``FORMAT_VERSION`` (here): the file layout -- a tensor or metadata field added, removed or
  reinterpreted, or the digest's definition.  Older files then fail to load with a message naming
  both versions.  (Version 2: the digest covers the metadata, ``fitted_on`` was added.  Version 3:
  ``weights_fit`` and ``validation``, the report of the judge with uncertainty on held-out noises,
  :mod:`ltc.calibration.report`; version 2 files were judged by a rule that could be fooled and
  are refused.)
* ``CALIBRATION_FORMAT`` (:mod:`ltc.policies.ltc_accel`, inside every ``key``): what a weight
  means -- the formulas of ``LTC.rows`` / ``LTC.gammas``, the history rule, the choice of the
  extrapolated steps.  Changing any of them without a bump would load every saved calibration
  with stale weights; after a bump they are refused by the key check, and the shipped files must
  be regenerated (``LTC_HOME=/tmp/ltc python -m ltc demo --recalibrate``, copy ``/tmp/ltc/calibrations/*.safetensors`` into
  ``ltc/zoo/calibrations/``, then ``python -m ltc.zoo.train pin``: the
  shipped files are pinned by their sha256).  ``tests/test_calibration_files.py``
  re-derives the shipped calibrations under the current formula, so a missed bump fails there.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..io import FileFormat, model_fingerprint, read_checked, write_checked
from ..policies.ltc_accel import LTC, calibration_key
from ..schedule import Grid
from .report import format_summary

FORMAT = "ltc-calibration"
FORMAT_VERSION = 3
PER_STEP = ("weights", "weights_fit", "weights_step", "gamma", "residual", "w_mean", "w_std")
TENSORS = PER_STEP + ("steps", "coherence", "grid_t", "grid_alpha", "grid_sigma")
JSON_FIELDS = ("sampler", "structure", "fit", "cost", "report", "fitted_on", "validation")
METADATA = ("ltc_version", "key", "family") + JSON_FIELDS + ("accepted", "summary")
FILE_FORMAT = FileFormat(FORMAT, FORMAT_VERSION, tensors=TENSORS, metadata=METADATA,
                         regenerate="Recalibrate (ltc.calibrate) and save it again; the shipped demo files: "
                                    "LTC_HOME=/tmp/ltc python -m ltc demo --recalibrate, copy /tmp/ltc/calibrations/*.safetensors "
                                    "into ltc/zoo/calibrations/, then python -m ltc.zoo.train pin.")
FINITE = ("weights", "weights_fit", "weights_step", "gamma")  # the numbers sampling uses (diagnostics may be NaN)


@dataclass(frozen=True, eq=False)
class Calibration:
    """Weights and diagnostics of one LTC calibration (see the module docstring).

    Per extrapolated step k (``[K]``): ``steps`` (indices), ``weights`` (what sampling uses: the fitted
    w, or 1 where the report chose w = 1), ``weights_fit`` (the fitted w; None: ``weights``),
    ``weights_step`` (the one-step least-squares fit), ``gamma``, ``residual`` (pooled relative residual of the
    one-step fit, sum_b |x* - x_ext|^2 / sum_b |x* - x_i|^2), ``w_mean`` / ``w_std`` (per-sample
    one-step optima across the batch).  ``coherence [N-1]``: mean over the batch of
    cos(Delta_{i-1}, Delta_i), i = 1..N-1, on the full-N trajectory.  ``report``: the comparison
    rows and the refusal decision (:mod:`ltc.calibration.report`).  ``fitted_on``: the models,
    guidance scale and sample shape it was fitted on (see the module docstring; empty for a
    calibration made by hand, which then cannot be checked against a run).  ``validation``: how
    many noises fitted and how many judged, and where the judged ones came from
    (:mod:`ltc.calibration.split`).
    """

    weights: np.ndarray
    weights_step: np.ndarray
    steps: np.ndarray
    gamma: np.ndarray
    residual: np.ndarray
    w_mean: np.ndarray
    w_std: np.ndarray
    coherence: np.ndarray
    grid: Grid
    sampler: dict
    structure: dict
    key: str
    fit: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    version: str = ""
    fitted_on: dict = field(default_factory=dict)
    weights_fit: np.ndarray | None = None
    validation: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.weights_fit is None:
            object.__setattr__(self, "weights_fit", np.array(self.weights, dtype=np.float64))
        for name in ("weights", "weights_fit"):
            w = np.asarray(getattr(self, name), dtype=np.float64)
            if w.ndim != 1 or w.shape != np.shape(self.steps):
                raise ValueError(f"a calibration needs one weight per extrapolated step: {name} have shape {w.shape}, "
                                 f"steps {np.shape(self.steps)}")
            bad = [int(s) for s, v in zip(np.asarray(self.steps).tolist(), w) if not math.isfinite(v)]
            if bad:
                raise ValueError(f"the calibration's {name} are not finite at extrapolated steps {bad}: "
                                 f"{w.tolist()}")

    # -- decisions -------------------------------------------------------------------------------
    @property
    def accepted(self) -> bool | None:
        """The refusal rule's decision (None when no report was made)."""
        return self.report.get("decision", {}).get("accepted")

    @property
    def verdict(self) -> str | None:
        """``"accepted"``, ``"plain better"``, ``"cannot tell"`` or ``"too few noises"``
        (:mod:`ltc.calibration.report`); None when no report was made."""
        return self.report.get("decision", {}).get("verdict")

    @property
    def nfe(self) -> int:
        return self.grid.steps - len(self.steps)

    def summary(self) -> str:
        """The comparison table, the decision and the fitted weights, as text."""
        return format_summary(self)

    def policy(self, base=None) -> LTC:
        """The calibrated :class:`ltc.policies.LTC` (``base``: the base policy it was made with)."""
        s = self.structure
        if s.get("base") is not None and (base is None or base.config() != s["base"]):
            raise ValueError(f"this calibration was made on top of the base policy {s['base']}; pass that policy "
                             "as base=")
        if s["skip"] is not None:
            return LTC(skip=s["skip"], progress=s["progress"], state=s["state"], weights=self, base=base)
        return LTC(interval=tuple(s["interval"]), every=s["every"], phase=s["phase"], progress=s["progress"],
                   state=s["state"], weights=self, base=base)

    def check(self, grid: Grid, sampler, policy: LTC) -> None:
        """Raise ValueError naming what differs if this calibration is not for (grid, sampler, policy)."""
        if policy.calibration_key(grid, sampler) == self.key:
            return
        diffs = []
        if grid.steps != self.grid.steps:
            diffs.append(f"steps {self.grid.steps} (plan: {grid.steps})")
        elif grid.digest() != self.grid.digest():
            diffs.append("the schedule's grid points differ")
        if sampler.config() != self.sampler:
            diffs.append(f"sampler {self.sampler} (plan: {sampler.config()})")
        mine = policy.structure()
        for name in ("phase", "progress", "state", "base"):
            if mine[name] != self.structure[name]:
                diffs.append(f"{name} {self.structure[name]!r} (plan: {mine[name]!r})")
        if not diffs and grid.steps == self.grid.steps:
            diffs.append(f"extrapolated steps {self.steps.tolist()} (plan: {policy.extrapolated_steps(grid.steps)})")
        raise ValueError("this LTC calibration was made for another plan: " + "; ".join(diffs or ["fingerprint"]))

    def check_plan(self, plan) -> None:
        """Raise ValueError unless ``plan`` (an :class:`ltc.Plan`) is an LTC plan this calibration fits."""
        if not isinstance(plan.policy, LTC):
            raise ValueError(f"the plan's policy is {plan.policy!r}, not LTC: a calibration applies to LTC plans")
        self.check(plan.grid, plan.sampler, plan.policy)

    def check_models(self, models, sample_shape, guidance_scale) -> None:
        """Raise ValueError if a run differs from what this calibration was fitted on (see the module
        docstring): ``models`` (the :class:`ltc.Model` objects its plan calls, in model-index
        order, or None when the caller does not see them), the shape ``[*S]`` of one sample and the
        guidance scale (None: no guidance).  Warns where it cannot tell."""
        check_run(self.fitted_on, models, sample_shape, guidance_scale, "this LTC calibration", "recalibrate")

    def recommended(self) -> dict | None:
        """The better plain plan when the refusal rule rejected LTC, else None."""
        d = self.report.get("decision", {})
        return None if d.get("accepted", True) else d.get("best_plain")

    # -- file ------------------------------------------------------------------------------------
    def _tensors(self) -> dict:
        def f64(a):  # an owned copy: safetensors refuses tensors that share memory
            return torch.tensor(np.array(a, dtype=np.float64))
        out = {name: f64(getattr(self, name)) for name in PER_STEP}
        out["steps"] = torch.tensor(np.array(self.steps, dtype=np.int64))
        out["coherence"] = f64(self.coherence)
        for name in ("t", "alpha", "sigma"):
            out[f"grid_{name}"] = f64(getattr(self.grid, name))
        return out

    def save(self, path) -> None:
        """Write the calibration to ``path`` (an :mod:`ltc.io` file, written atomically; see the
        module docstring)."""
        meta = {"ltc_version": self.version or __version__, "key": self.key, "family": self.grid.family,
                **{name: json.dumps(getattr(self, name)) for name in JSON_FIELDS},
                "accepted": json.dumps(self.accepted), "summary": self.summary()}
        write_checked(path, self._tensors(), meta, FILE_FORMAT)

    @classmethod
    def load(cls, path, *, plan=None) -> "Calibration":
        """Read and verify a calibration file (whole: :func:`ltc.io.read_checked`, then its
        contents); with ``plan``, also check that it fits that plan."""
        path = Path(path)
        tensors, meta = read_checked(path, FILE_FORMAT)
        cal = cls._from_parts(path, tensors, meta)
        if plan is not None:
            cal.check_plan(plan)
        return cal

    @classmethod
    def _from_parts(cls, path, tensors: dict, meta: dict) -> "Calibration":
        try:
            parsed = {k: json.loads(meta[k]) for k in JSON_FIELDS + ("accepted",)}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: calibration metadata is not valid JSON: {exc}") from None
        decision = parsed["report"].get("decision", {}) if isinstance(parsed["report"], dict) else {}
        if parsed["accepted"] != decision.get("accepted"):
            raise ValueError(f"{path}: metadata accepted={meta['accepted']} contradicts the report's decision "
                             f"{decision.get('accepted')}")
        _check_fitted_on(path, parsed["fitted_on"])
        _check_validation(path, parsed["validation"])
        arrays = {k: v.numpy() for k, v in tensors.items()}
        K = arrays["weights"].shape
        bad = [n for n in PER_STEP + ("steps",) if arrays[n].shape != K or arrays[n].ndim != 1]
        if bad or arrays["steps"].dtype != np.int64 or any(arrays[n].dtype != np.float64 for n in PER_STEP):
            raise ValueError(f"{path}: per-step tensors must all be 1-D of the same length (float64; steps int64)")
        bad = [n for n in FINITE + ("grid_t", "grid_alpha", "grid_sigma") if not np.all(np.isfinite(arrays[n]))]
        if bad:
            raise ValueError(f"{path}: calibration tensors {bad} hold NaN or Inf values")
        try:
            grid = Grid(arrays["grid_t"], arrays["grid_alpha"], arrays["grid_sigma"], meta["family"])
        except ValueError as exc:
            raise ValueError(f"{path}: the stored grid is invalid: {exc}") from None
        if arrays["coherence"].shape != (max(grid.steps - 1, 0),):
            raise ValueError(f"{path}: coherence must have {grid.steps - 1} entries, got {arrays['coherence'].shape}")
        _check_chosen_weights(path, arrays["weights"], arrays["weights_fit"], decision)
        s = parsed["structure"]
        key = calibration_key(grid, parsed["sampler"], arrays["steps"].tolist(), s.get("progress"), s.get("state"),
                              s.get("base"), s.get("phase"))
        if key != meta["key"]:
            raise ValueError(f"{path}: the stored key does not match the stored grid and structure (corrupted file)")
        return cls(weights=arrays["weights"], weights_fit=arrays["weights_fit"], weights_step=arrays["weights_step"],
                   steps=arrays["steps"], validation=parsed["validation"],
                   gamma=arrays["gamma"], residual=arrays["residual"], w_mean=arrays["w_mean"],
                   w_std=arrays["w_std"], coherence=arrays["coherence"], grid=grid, sampler=parsed["sampler"],
                   structure=s, key=key, fit=parsed["fit"], cost=parsed["cost"], report=parsed["report"],
                   version=meta["ltc_version"], fitted_on=parsed["fitted_on"])


def fitted_on_record(models, fingerprints, tags, sample_shape, guidance_scale) -> dict:
    """``fitted_on`` of a calibration whose plan calls ``models`` (with their weight
    fingerprints and user tags, each None when there is none)."""
    return {"guidance_scale": guidance_scale, "sample_shape": [int(s) for s in sample_shape],
            "models": [{"name": m.name, "weights_sha256": fp, "tag": tag}
                       for m, fp, tag in zip(models, fingerprints, tags)]}


def _check_validation(path, validation) -> None:
    """The structure of a stored ``validation`` (:func:`ltc.calibration.split.split`; {} when made by hand)."""
    ok = isinstance(validation, dict) and (not validation or (
        validation.get("held_out") in ("split", "given")
        and all(isinstance(validation.get(k), int) and validation[k] >= 0 for k in ("fit_noises", "judged_noises"))))
    if not ok:
        raise ValueError(f"{path}: metadata validation must be {{}} or {{'held_out': 'split' | 'given', 'fit_noises': "
                         f"int, 'judged_noises': int, ...}}, got {validation!r}")


def _check_chosen_weights(path, weights, weights_fit, decision: dict) -> None:
    """``weights`` are what the decision chose: 1 where it chose w = 1, else the fitted ones."""
    ones = decision.get("weights") == "w = 1"
    expected = np.ones_like(weights_fit) if ones else weights_fit
    if not np.array_equal(weights, expected):
        raise ValueError(f"{path}: weights {weights.tolist()} contradict the report's decision "
                         f"({'w = 1' if ones else 'the fitted weights ' + str(weights_fit.tolist())})")


def _check_fitted_on(path, fitted) -> None:
    """The structure of a stored ``fitted_on`` (see :func:`fitted_on_record`)."""
    def optional_str(v):
        return v is None or isinstance(v, str)
    ok = (isinstance(fitted, dict) and set(fitted) == {"guidance_scale", "sample_shape", "models"}
          and (fitted["guidance_scale"] is None or isinstance(fitted["guidance_scale"], (int, float)))
          and isinstance(fitted["sample_shape"], list) and all(isinstance(v, int) for v in fitted["sample_shape"])
          and isinstance(fitted["models"], list) and len(fitted["models"]) >= 1
          and all(isinstance(r, dict) and set(r) == {"name", "weights_sha256", "tag"} and isinstance(r["name"], str)
                  and optional_str(r["weights_sha256"]) and optional_str(r["tag"]) for r in fitted["models"]))
    if not ok:
        raise ValueError(f"{path}: metadata fitted_on must be {{'guidance_scale': number | null, 'sample_shape': "
                         f"[ints], 'models': [{{'name', 'weights_sha256', 'tag'}}, ...]}}, got {fitted!r}")


def check_run(fitted: dict, models, sample_shape, guidance_scale, what: str, redo: str) -> None:
    """Raise ValueError if a run differs from the ``fitted_on`` record (:func:`fitted_on_record`) of
    ``what`` (e.g. "this LTC calibration"; ``redo``: what to do then, e.g. "recalibrate"): the
    models its plan calls (None: not seen), the sample shape ``[*S]`` and the guidance scale.
    Warns where it cannot tell."""
    if not fitted:
        warnings.warn(f"{what} records nothing about the models, guidance and sample shape it was fitted on (made "
                      "by hand?): ltc cannot check that it fits this run", stacklevel=4)
        return
    if fitted["guidance_scale"] != guidance_scale:
        raise ValueError(f"{what} was fitted with guidance_scale={fitted['guidance_scale']}; this run uses "
                         f"guidance_scale={guidance_scale} (what was fitted depends on it: {redo})")
    if list(sample_shape) != fitted["sample_shape"]:
        raise ValueError(f"{what} was fitted on samples of shape {fitted['sample_shape']} (without the batch); this "
                         f"run's are {list(sample_shape)} ({redo} for this shape)")
    if models is None:
        return
    records = fitted["models"]
    if len(models) != len(records):
        raise ValueError(f"{what} was fitted on {len(records)} model(s) {[r['name'] for r in records]}; this run's "
                         f"plan calls {len(models)}: {[getattr(m, 'name', m) for m in models]}")
    for record, model in zip(records, models):
        _check_model(record, model, what, redo)


def _check_model(record: dict, model, what: str, redo: str) -> None:
    """One model of a run against the record of the model the calibration was fitted on."""
    name = getattr(model, "name", repr(model))
    if record["weights_sha256"] is not None:
        found = model_fingerprint(getattr(model, "fn", model))
        if found is None:
            warnings.warn(f"{what} was fitted on model {record['name']!r} (weights sha256 "
                          f"{record['weights_sha256'][:16]}...); ltc finds no weights in this run's model {name!r} "
                          "and cannot tell whether it is the same model", stacklevel=5)
        elif found != record["weights_sha256"]:
            raise ValueError(f"{what} was fitted on model {record['name']!r} with weights sha256 "
                             f"{record['weights_sha256'][:16]}...; this run's model {name!r} has other weights "
                             f"({found[:16]}...). What was fitted is valid for the exact model weights (and dtype) "
                             f"it was fitted on: {redo}")
    elif record["tag"] is not None:
        if name != record["tag"]:
            raise ValueError(f"{what} was fitted on a model tagged {record['tag']!r} (a callable without "
                             f"weights ltc can fingerprint); this run's model is named {name!r}. If it is the same "
                             f"model, name it so: ltc.Model(fn, prediction, name={record['tag']!r})")
    else:
        warnings.warn(f"{what} was fitted on {record['name']!r}, a callable without weights ltc can "
                      f"fingerprint, and without a model_tag: ltc cannot tell whether this run's model {name!r} is "
                      "the same (pass model_tag=... when fitting to have it checked)", stacklevel=5)
