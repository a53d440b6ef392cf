"""A calibration of LTC weights: what :func:`ltc.calibrate` returns, saved as safetensors.

A :class:`Calibration` holds, for one (grid, sampler, LTC structure), the weight ``w_k`` of each of
the K extrapolated steps, the fit diagnostics and the comparison report, and is valid only for the
plans it was made for: its ``key`` (:func:`ltc.policies.ltc_accel.calibration_key`) fingerprints
the exact grid, the sampler, the extrapolated steps, the progress variable, the state and the base
policy.  ``LTC(weights=cal)`` / :meth:`Calibration.policy` check the key when the plan is
compiled; a mismatch is a ValueError naming what differs.

File format (no pickle): a safetensors file whose tensors are

    weights, weights_step, gamma, residual, w_mean, w_std   float64 [K]
    steps                                                   int64   [K]
    coherence                                               float64 [N-1]
    grid_t, grid_alpha, grid_sigma                          float64 [N+1]

and whose string metadata holds ``format`` (``"ltc-calibration"``), ``format_version``,
``ltc_version``, ``key``, ``family``, JSON fields (``sampler``, ``structure``, ``fit``, ``cost``,
``report``), ``accepted``, the printed ``summary`` and ``content_sha256`` (sha256 of every tensor's
name, dtype, shape and bytes).  :meth:`Calibration.load` rejects a missing file, a file that is not
safetensors (truncated, corrupted), missing or extra tensors or metadata, inconsistent shapes, a
digest mismatch and a key that does not match the stored grid and structure.

Two version numbers, two reasons to bump:

* ``FORMAT_VERSION`` (here): the file layout -- a tensor or metadata field added, removed or
  reinterpreted.  Older files then fail to load with a message naming both versions.
* ``CALIBRATION_FORMAT`` (:mod:`ltc.policies.ltc_accel`, inside every ``key``): what a weight
  means -- the formulas of ``LTC.rows`` / ``LTC.gammas``, the history rule, the choice of the
  extrapolated steps.  Changing any of them without a bump would load every saved calibration
  with stale weights; after a bump they are refused by the key check, and the shipped files must
  be regenerated (``python -m ltc demo --recalibrate``).  ``tests/test_calibration_files.py``
  re-derives the shipped calibrations under the current formula, so a missed bump fails there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..io import tensors_digest
from ..policies.ltc_accel import LTC, calibration_key
from ..schedule import Grid
from .report import format_summary

FORMAT = "ltc-calibration"
FORMAT_VERSION = 1
PER_STEP = ("weights", "weights_step", "gamma", "residual", "w_mean", "w_std")
TENSORS = PER_STEP + ("steps", "coherence", "grid_t", "grid_alpha", "grid_sigma")
METADATA = ("format", "format_version", "ltc_version", "key", "family", "sampler", "structure", "fit",
            "cost", "report", "accepted", "summary", "content_sha256")


def content_digest(tensors: dict) -> str:
    """sha256 over the sorted tensors' names, dtypes, shapes and bytes (``|``-separated)."""
    return tensors_digest(tensors, "|")


@dataclass(frozen=True, eq=False)
class Calibration:
    """Weights and diagnostics of one LTC calibration (see the module docstring).

    Per extrapolated step k (``[K]``): ``steps`` (indices), ``weights`` (the fitted w), ``weights_step``
    (the one-step least-squares fit), ``gamma``, ``residual`` (pooled relative residual of the
    one-step fit, sum_b |x* - x_ext|^2 / sum_b |x* - x_i|^2), ``w_mean`` / ``w_std`` (per-sample
    one-step optima across the batch).  ``coherence [N-1]``: mean over the batch of
    cos(Delta_{i-1}, Delta_i), i = 1..N-1, on the full-N trajectory.  ``report``: the comparison
    rows and the refusal decision (:mod:`ltc.calibration.report`).
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

    # -- decisions -------------------------------------------------------------------------------
    @property
    def accepted(self) -> bool | None:
        """The refusal rule's decision (None when no report was made)."""
        return self.report.get("decision", {}).get("accepted")

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
        return LTC(interval=tuple(s["interval"]), every=s["every"], skip=s["skip"], progress=s["progress"],
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
        for name in ("progress", "state", "base"):
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
        """Write the calibration to ``path`` (safetensors with metadata; see the module docstring)."""
        from safetensors.torch import save_file
        tensors = self._tensors()
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "ltc_version": self.version or __version__,
                "key": self.key, "family": self.grid.family, "sampler": json.dumps(self.sampler),
                "structure": json.dumps(self.structure), "fit": json.dumps(self.fit), "cost": json.dumps(self.cost),
                "report": json.dumps(self.report), "accepted": json.dumps(self.accepted),
                "summary": self.summary(), "content_sha256": content_digest(tensors)}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path, *, plan=None) -> "Calibration":
        """Read and verify a calibration file; with ``plan``, also check that it fits that plan."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file not found: {path}")
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as exc:  # the safetensors parser's errors: truncated header, bad offsets, ...
            raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupted?): {exc}") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not an ltc calibration file (metadata format={meta.get('format')!r})")
        if meta.get("format_version") != str(FORMAT_VERSION):
            raise ValueError(f"{path} has calibration format version {meta.get('format_version')!r}; this ltc "
                             f"reads version {FORMAT_VERSION}")
        missing = sorted(set(TENSORS) - set(tensors))
        extra = sorted(set(tensors) - set(TENSORS))
        if missing or extra:
            raise ValueError(f"{path}: calibration tensors do not match the format: missing {missing}, extra {extra}")
        missing_meta = sorted(set(METADATA) - set(meta))
        if missing_meta:
            raise ValueError(f"{path}: calibration metadata is missing {missing_meta}")
        if content_digest(tensors) != meta["content_sha256"]:
            raise ValueError(f"{path}: tensor contents do not match the stored digest (corrupted file)")
        cal = cls._from_parts(path, tensors, meta)
        if plan is not None:
            cal.check_plan(plan)
        return cal

    @classmethod
    def _from_parts(cls, path, tensors: dict, meta: dict) -> "Calibration":
        try:
            parsed = {k: json.loads(meta[k]) for k in ("sampler", "structure", "fit", "cost", "report")}
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: calibration metadata is not valid JSON: {exc}") from None
        arrays = {k: v.numpy() for k, v in tensors.items()}
        K = arrays["weights"].shape
        bad = [n for n in PER_STEP + ("steps",) if arrays[n].shape != K or arrays[n].ndim != 1]
        if bad or arrays["steps"].dtype != np.int64 or any(arrays[n].dtype != np.float64 for n in PER_STEP):
            raise ValueError(f"{path}: per-step tensors must all be 1-D of the same length (float64; steps int64)")
        try:
            grid = Grid(arrays["grid_t"], arrays["grid_alpha"], arrays["grid_sigma"], meta["family"])
        except ValueError as exc:
            raise ValueError(f"{path}: the stored grid is invalid: {exc}") from None
        if arrays["coherence"].shape != (max(grid.steps - 1, 0),):
            raise ValueError(f"{path}: coherence must have {grid.steps - 1} entries, got {arrays['coherence'].shape}")
        s = parsed["structure"]
        key = calibration_key(grid, parsed["sampler"], arrays["steps"].tolist(), s.get("progress"), s.get("state"),
                              s.get("base"))
        if key != meta["key"]:
            raise ValueError(f"{path}: the stored key does not match the stored grid and structure (corrupted file)")
        return cls(weights=arrays["weights"], weights_step=arrays["weights_step"], steps=arrays["steps"],
                   gamma=arrays["gamma"], residual=arrays["residual"], w_mean=arrays["w_mean"],
                   w_std=arrays["w_std"], coherence=arrays["coherence"], grid=grid, sampler=parsed["sampler"],
                   structure=s, key=key, fit=parsed["fit"], cost=parsed["cost"], report=parsed["report"],
                   version=meta["ltc_version"])
