"""What :func:`ltc.optimize` returns: a plan (grid, sampler, LTC steps and weights), its judged
report and its cost, saved as safetensors.

An :class:`OptimizedPlan` is an ordinary plan: :attr:`OptimizedPlan.schedule` (an explicit
schedule of its grid), :meth:`OptimizedPlan.sampler` and :attr:`OptimizedPlan.policy` go to
:func:`ltc.sample`, :class:`ltc.Stepper` or the graph executor like any others;
:meth:`OptimizedPlan.sample` first checks the run's models, guidance scale and sample shape against
what it was fitted on (``fitted_on``, as :class:`ltc.Calibration` does).  When the judge refused
every optimised candidate (``accepted`` False) it holds the best hand-designed plain plan.

File format (no pickle): an :mod:`ltc.io` file of format ``ltc-optimized-plan``, tensors

    grid_t, grid_alpha, grid_sigma     float64 [N+1]   the plan's grid
    skip                               int64   [K]     extrapolated steps (K = 0: no LTC)
    weights                            float64 [K]     their LTC weights
    alphas_cumprod                     float64 [T]     the vp training table (T = 0 for others)

and string metadata ``ltc_version``, ``family``, ``kind``, ``times``, ``state``, ``progress``,
``nfe``, ``fingerprint`` (sha256 of the grid, sampler and policy), the JSON fields ``sampler``,
``schedule``, ``report``, ``cost``, ``fit``, ``fitted_on``, ``validation``, ``break_even``,
``accepted`` and the printed ``summary``; ``content_sha256`` covers all of it.
:meth:`OptimizedPlan.load` verifies the whole file (:func:`ltc.io.read_checked`) and then its
contents: shapes, finiteness, the grid, K consistent with the steps and NFE, the fingerprint
recomputed, ``accepted`` agreeing with the report's decision.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..api import sample
from ..calibration.file import check_run
from ..io import FileFormat, read_checked, write_checked
from ..models import as_models
from ..plan import EXTRAPOLATE, compile_plan, fingerprint_of
from ..policies import LTC, Full
from ..samplers import Sampler, get_sampler
from ..schedule import Grid, Schedule

FORMAT = "ltc-optimized-plan"
FORMAT_VERSION = 1
TENSORS = ("grid_t", "grid_alpha", "grid_sigma", "skip", "weights", "alphas_cumprod")
JSON_FIELDS = ("sampler", "schedule", "report", "cost", "fit", "fitted_on", "validation", "break_even")
METADATA = ("ltc_version", "family", "kind", "times", "state", "progress", "nfe", "fingerprint") + JSON_FIELDS + \
    ("accepted", "summary")
FILE_FORMAT = FileFormat(FORMAT, FORMAT_VERSION, tensors=TENSORS, metadata=METADATA,
                         regenerate="Run ltc.optimize again and save its result.")
KINDS = ("plain", "grid", "ltc_hand", "ltc_grid")


def sampler_from_config(config: dict) -> Sampler:
    """The sampler whose ``config()`` is ``config`` (ValueError when none is)."""
    try:
        smp = get_sampler(config["name"])
        if smp.config() != config:
            smp = type(smp)(**{k: v for k, v in config.items() if k != "name"})
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"no sampler has the config {config!r}: {err}") from None
    if smp.config() != config:
        raise ValueError(f"no sampler has the config {config!r} (closest: {smp.config()!r})")
    return smp


@dataclass(frozen=True, eq=False)
class OptimizedPlan:
    """A plan found by :func:`ltc.optimize` (see the module docstring).

    ``grid`` (N steps), ``sampler`` (its config), ``skip [K]`` / ``weights [K]`` (the LTC steps and
    weights; K = 0 for a plain plan), ``kind`` (``"plain"``: the best hand plan, the search's own
    plans refused; ``"grid"``: an optimised grid; ``"ltc_hand"``: LTC weights on a hand grid;
    ``"ltc_grid"``: grid and LTC weights optimised together), ``nfe`` (model calls per sample),
    ``times``, the LTC ``state`` and ``progress``, the source schedule's config (and vp training
    table, for what model times mean), ``report`` (rows, verdicts and decision on the judged
    noises), ``cost`` (model calls, wall seconds, sample evaluations), ``fit`` (the optimiser's
    record), ``fitted_on``, ``validation`` and ``break_even``.
    """

    grid: Grid
    sampler_config: dict
    skip: np.ndarray
    weights: np.ndarray
    kind: str
    nfe: int
    times: str
    state: str
    progress: str
    schedule_config: dict
    alphas_cumprod: np.ndarray | None
    report: dict
    cost: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    fitted_on: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    break_even: dict = field(default_factory=dict)
    version: str = __version__

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        skip = np.array(self.skip, dtype=np.int64).reshape(-1)
        weights = np.array(self.weights, dtype=np.float64).reshape(-1)
        if skip.shape != weights.shape:
            raise ValueError(f"skip and weights must have one entry per extrapolated step, got {skip.shape}, "
                             f"{weights.shape}")
        object.__setattr__(self, "skip", skip)
        object.__setattr__(self, "weights", weights)
        if self.grid.steps - len(skip) != self.nfe:
            raise ValueError(f"the grid's {self.grid.steps} steps less {len(skip)} extrapolated ones are not nfe="
                             f"{self.nfe}")

    # -- the plan ----------------------------------------------------------------------------------
    @property
    def accepted(self) -> bool:
        """Whether the judge accepted one of the search's own plans (else this is the best hand plan)."""
        return bool(self.report["decision"]["accepted"])

    @property
    def schedule(self) -> Schedule:
        """An explicit schedule of the plan's grid (model times mean what they meant in the source schedule)."""
        return self.schedule_of(self.grid)

    def sampler(self) -> Sampler:
        return sampler_from_config(self.sampler_config)

    @property
    def policy(self):
        """``Full()`` or the LTC policy of the plan's extrapolated steps and weights."""
        if not len(self.skip):
            return Full()
        return LTC(skip=self.skip.tolist(), weights=self.weights.tolist(), state=self.state, progress=self.progress)

    @property
    def fingerprint(self) -> str:
        """sha256 of the grid, the sampler and the policy (what sampling with the plan depends on)."""
        return fingerprint_of("ltc-optimized-plan", self.grid.digest(), self.sampler_config, self.policy.config())

    def rows(self) -> list[dict]:
        """Every judged plan of the search (the plain rows and the candidates, as in ``report["rows"]``):
        ``name``, ``kind``, ``mean`` distance to the judge, ``verdict`` (candidates), and ``grid``,
        ``sampler``, ``policy`` to run it (e.g. to measure it otherwise)."""
        verdicts = {v["name"]: v["verdict"] for v in self.report.get("candidates", [])}
        out = []
        for r in self.report["rows"]:
            spec = r["spec"]
            p = spec["points"]
            grid = Grid(*(np.array([float.fromhex(v) for v in p[k]]) for k in ("t", "alpha", "sigma")), p["family"])
            policy = Full() if not spec["skip"] else LTC(skip=spec["skip"], weights=spec["weights"], state=self.state,
                                                          progress=self.progress)
            out.append({"name": r["name"], "kind": r["kind"], "mean": r["mean"], "verdict": verdicts.get(r["name"]),
                        "grid": grid, "sampler": sampler_from_config(spec["sampler"]), "policy": policy})
        return out

    def schedule_of(self, grid: Grid) -> Schedule:
        """An explicit schedule of ``grid`` on this plan's source (its vp training table, if any)."""
        return Schedule.explicit(grid.t, grid.alpha, grid.sigma, family=grid.family,
                                 alphas_cumprod=self.alphas_cumprod)

    def plan(self, predictions, guidance_scale=None):
        """The compiled :class:`ltc.Plan` for models with ``predictions``."""
        return compile_plan(self.grid, self.sampler(), self.policy, predictions, guidance_scale)

    def sample(self, model_fns, *, prediction=None, guidance_scale=None, noise=None, shape=None, **kwargs):
        """:func:`ltc.sample` with this plan, after checking the run against what it was fitted on."""
        models = as_models(model_fns, prediction)
        x_shape = tuple(noise.shape) if isinstance(noise, torch.Tensor) else tuple(shape) if shape is not None else None
        if x_shape is not None:
            plan = self.plan([m.prediction for m in models], guidance_scale)
            used = [models[k] for k in sorted({int(m) for m in plan.models if m != EXTRAPOLATE})]
            check_run(self.fitted_on, used, x_shape[1:], guidance_scale, "this optimised plan", "optimise again")
        return sample(models, self.schedule, self.policy, sampler=self.sampler(), steps=None, noise=noise,
                      shape=shape, guidance_scale=guidance_scale, **kwargs)

    def summary(self) -> str:
        """The decision, the judged rows and the cost, as text."""
        rep, d = self.report, self.report["decision"]
        lines = [f"ltc.optimize at nfe={self.nfe}: {'ACCEPTED' if self.accepted else 'REFUSED'} -> {d['chosen']}",
                 f"  judged on {self.validation.get('judged_noises', '?')} held-out noises by {rep['judge']} "
                 f"(ladder {rep['ladder']}); fitted on {self.validation.get('fit_noises', '?')}"
                 + ("; integer model times (times='integer': a pattern search over the integer grid)"
                    if self.times == "integer" else "; fractional model times")]
        lines.append(f"  {'plan':<78}{'NFE':>5}{'mean dist. to judge':>21}  verdict")
        verdicts = {v["name"]: v for v in rep.get("candidates", [])}
        for r in rep["rows"]:
            v = verdicts.get(r["name"])
            text = "" if v is None else f"  {v['verdict']} (margin {v['margin']:.3g}, bound {v['judge_bound']:.3g}, " \
                f"lower {v['lower']:.3g})"
            lines.append(f"  {r['name'][:78]:<78}{r['nfe']:>5}{r['mean']:>21.4g}{text}")
        c = self.cost
        lines.append(f"  cost: {c.get('calls')} model calls (of max_calls={c.get('max_calls')}), "
                     f"{c.get('wall_s', float('nan')):.1f} s, {c.get('sample_evaluations')} sample evaluations")
        be = self.break_even
        if be.get("samples") is not None:
            lines.append(f"  break-even: the best plain plan needs {be['plain_nfe_needed']} calls to match; the search "
                         f"pays for itself after {be['samples']:.0f} samples")
        elif be.get("samples_at_most") is not None:
            lines.append(f"  break-even: the best plain plan does not match it even at {be['tried'][-1]['nfe']} calls; "
                         f"the search pays for itself after fewer than {be['samples_at_most']:.0f} samples")
        for note in rep.get("notes", []):
            lines.append(f"  note: {note}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"OptimizedPlan({self.kind}, {self.sampler_config.get('name')}, nfe={self.nfe}, steps={self.grid.steps}, "
                f"skip={self.skip.tolist()}, accepted={self.accepted})")

    # -- file ------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the plan to ``path`` (an :mod:`ltc.io` file, atomically; see the module docstring)."""
        def f64(a):
            return torch.tensor(np.array(a, dtype=np.float64))
        table = np.zeros(0) if self.alphas_cumprod is None else self.alphas_cumprod
        tensors = {"grid_t": f64(self.grid.t), "grid_alpha": f64(self.grid.alpha), "grid_sigma": f64(self.grid.sigma),
                   "skip": torch.tensor(np.array(self.skip, dtype=np.int64)), "weights": f64(self.weights),
                   "alphas_cumprod": f64(table)}
        meta = {"ltc_version": self.version, "family": self.grid.family, "kind": self.kind, "times": self.times,
                "state": self.state, "progress": self.progress, "nfe": str(self.nfe), "fingerprint": self.fingerprint,
                "sampler": json.dumps(self.sampler_config), "schedule": json.dumps(self.schedule_config),
                **{k: json.dumps(getattr(self, k)) for k in JSON_FIELDS[2:]},
                "accepted": json.dumps(self.accepted), "summary": self.summary()}
        write_checked(path, tensors, meta, FILE_FORMAT)

    @classmethod
    def load(cls, path) -> "OptimizedPlan":
        """Read and verify a saved plan (the whole file, then its contents; see the module docstring)."""
        path = Path(path)
        tensors, meta = read_checked(path, FILE_FORMAT)
        try:
            parsed = {k: json.loads(meta[k]) for k in JSON_FIELDS + ("accepted",)}
            nfe = int(meta["nfe"])
        except (json.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"{path}: optimised-plan metadata is not valid: {exc}") from None
        arrays = {k: v.numpy() for k, v in tensors.items()}
        floats = ("grid_t", "grid_alpha", "grid_sigma", "weights", "alphas_cumprod")
        if any(arrays[k].dtype != np.float64 or arrays[k].ndim != 1 for k in floats) or \
                arrays["skip"].dtype != np.int64 or arrays["skip"].ndim != 1:
            raise ValueError(f"{path}: tensors must be 1-D float64 (skip: int64)")
        bad = [k for k in ("grid_alpha", "grid_sigma", "weights", "alphas_cumprod")
               if not np.all(np.isfinite(arrays[k]))]
        if bad:
            raise ValueError(f"{path}: tensors {bad} hold NaN or Inf values")
        decision = parsed["report"].get("decision", {}) if isinstance(parsed["report"], dict) else {}
        if parsed["accepted"] != decision.get("accepted"):
            raise ValueError(f"{path}: metadata accepted={meta['accepted']} contradicts the report's decision "
                             f"{decision.get('accepted')}")
        try:
            grid = Grid(arrays["grid_t"], arrays["grid_alpha"], arrays["grid_sigma"], meta["family"])
            table = arrays["alphas_cumprod"] if arrays["alphas_cumprod"].size else None
            plan = cls(grid=grid, sampler_config=parsed["sampler"], skip=arrays["skip"], weights=arrays["weights"],
                       kind=meta["kind"], nfe=nfe, times=meta["times"], state=meta["state"], progress=meta["progress"],
                       schedule_config=parsed["schedule"], alphas_cumprod=table, report=parsed["report"],
                       cost=parsed["cost"], fit=parsed["fit"], fitted_on=parsed["fitted_on"],
                       validation=parsed["validation"], break_even=parsed["break_even"], version=meta["ltc_version"])
            plan.sampler()
            plan.schedule  # noqa: B018 -- validates the grid against the table
            fingerprint = plan.fingerprint
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: the stored plan is invalid: {exc}") from None
        if fingerprint != meta["fingerprint"]:
            raise ValueError(f"{path}: the stored fingerprint does not match the stored grid, sampler and policy "
                             "(corrupted file)")
        return plan
