"""The main demo: the shipped digit models, every policy beside the plain sampler, honestly.

Class-conditional eps-prediction UNets trained on 16x16 digits (:mod:`ltc.zoo`; the large one costs
~6x the small one's multiply-adds and ~16x the tiny one's), classifier-free guidance,
DPM-Solver++(2M).  Rows:

* full          -- the large model at every one of the N steps (the reference samples)
* LTC           -- LTC-Accel, weights calibrated on other noises (:func:`ltc.calibrate`); named
  "(calibrated)" only when the calibration passed the refusal rule, "(calibration refused)" else
* T-Stitch      -- the small model of :data:`ltc.zoo.TSTITCH_PAIR` (``unet_tiny``) for the first
  ``fraction`` of the steps, the large one for the rest; judged on the distribution (:mod:`.distribution`)
* small alone   -- that small model for every step (kind ``"reference"``): what stitching improves on
* T-Stitch+LTC  -- both, calibrated on the composed plan (``unet_small`` then ``unet_large``: the
  pair its shipped calibration was fitted on)
* plain rows    -- the plain sampler with the large model at the *same model cost* as each
  accelerated row (fewer steps): the baseline an acceleration has to beat.

Speed: *model cost* (model calls x multiply-adds per call, 1.0 = N large-model calls) is the
primary column -- it does not depend on the machine; wall time is the median and range of
``repeats`` interleaved timed runs, and the report warns where the range exceeds a difference the
table invites (:mod:`.report`).  Quality: PSNR against the full samples from the same noise (higher
is closer), classifier confidence, and for the rows of the T-Stitch check the Frechet distance to
the held-out digits with its 95% bootstrap interval, from ``judge_batch`` further samples
(:mod:`.distribution`).

The default run (:data:`QUICK`: 20 samples, 3 timed repeats, 100 samples per row for the T-Stitch
check) is sized for about a minute on a 2-core CPU; ``--full`` (:data:`FULL`: 100 samples, 5 repeats,
500 for the check) for steadier numbers.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import zoo
from ..api import sample
from ..plan import compile_plan
from ..policies import LTC, Full, TStitch
from ..samplers import get_sampler
from . import calibrations, distribution, pictures, report
from .table import format_table

SAMPLER = "dpmpp_2m"
SAMPLER_NAME = "DPM-Solver++(2M)"


@dataclass(frozen=True)
class Settings:
    """One demo run: ``steps`` per trajectory, ``batch`` samples (labels 0..9 repeated), ``repeats``
    timed runs of every row, T-Stitch's small-model ``fraction``, the guidance scale, the
    number of calibration noises (``calib``, for ``--recalibrate``), and the samples per row of the
    T-Stitch check on the distribution (``judge_batch``, at least two per label)."""

    steps: int = 20
    batch: int = 20
    repeats: int = 3
    fraction: float = 0.4
    guidance: float = 2.0
    calib: int = 20
    seed: int = 0
    judge_batch: int = 100

    def __post_init__(self):
        for name, least in {"steps": 1, "batch": 1, "repeats": 1, "calib": 2, "judge_batch": 20}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


QUICK = Settings()
FULL = Settings(batch=100, repeats=5, judge_batch=500)


def _macs(name: str) -> float:
    return float(zoo.info(name)["macs_per_sample"])


def _plain_name(steps: int) -> str:
    return f"plain {steps} steps"


def _setups(s: Settings, small, large, schedule, recalibrate: bool, cost: list[float], stitched: dict):
    """``(rows, notes)``: each row's name, kind, models (with their cost per call relative to the
    large model), policy, steps, calibration verdict, and the plain row at its model cost; notes say
    where each calibration came from.  ``stitched``: ``{"models": [tiny, large], "cost": [...]}``,
    the pair of the T-Stitch row and of the small-alone row."""
    def conditioning(n):
        labels = torch.arange(n) % 10
        return {"y": torch.cat([torch.full_like(labels, zoo.NULL_CLASS), labels])}

    calib_noise = torch.randn(s.calib, 1, 16, 16, generator=torch.Generator().manual_seed(s.seed + 1))
    notes = []

    def calibrated(name, title, models, policy):
        cal, source = calibrations.load_or_calibrate(name, recalibrate, dict(
            model_fns=models, schedule=schedule, policy=policy, sampler=SAMPLER, steps=s.steps,
            noise=calib_noise, model_kwargs=conditioning(s.calib), guidance_scale=s.guidance))
        verdict = {True: "accepted", False: "REFUSED", None: None}[cal.accepted]
        notes.append(f"{title} weights: {source}; calibration {calibrations.verdict_note(cal)}")
        return policy.replace(weights=cal), verdict

    stitch = TStitch([s.fraction])
    ltc_policy, ltc_verdict = calibrated("demo_ltc", "LTC", large, LTC(state="x"))  # the shipped files use state x
    both_policy, both_verdict = calibrated("demo_tstitch_ltc", "T-Stitch + LTC", [small, large],
                                           stitch | LTC(state="x"))
    def named(method, verdict):  # only an accepted calibration is called calibrated
        state = {"accepted": "calibrated", "REFUSED": "calibration refused", None: "calibration not judged"}
        return f"{method} ({state[verdict]})"

    pair = {"models": [small, large], "cost": cost}
    accelerated = [(named("LTC", ltc_verdict), ltc_policy, ltc_verdict, pair, {}),
                   (f"T-Stitch {s.fraction:.0%} small", stitch, None, stitched, {"judge": "distribution"}),
                   (named("T-Stitch + LTC", both_verdict), both_policy, both_verdict, pair, {})]
    rows = [{"method": "full", "kind": "full", "policy": Full(), "steps": s.steps, **pair}]
    for name, policy, verdict, models, extra in accelerated:
        plan = compile_plan(get_sampler(SAMPLER).grid(schedule, s.steps), get_sampler(SAMPLER), policy,
                            [m.prediction for m in models["models"]], s.guidance)
        rel = sum(k * c for k, c in zip(plan.nfe_per_model(), models["cost"])) / s.steps
        plain = max(1, int(rel * s.steps + 1e-9))  # the most plain steps the same cost buys
        rows.append({"method": name, "kind": "accelerated", "policy": policy, "steps": s.steps,
                     "calibration": verdict, "plain": _plain_name(plain), **models, **extra})
        if all(r["method"] != _plain_name(plain) for r in rows):
            rows.append({"method": _plain_name(plain), "kind": "plain", "policy": Full(), "steps": plain, **pair})
    alone = {"models": stitched["models"][:1], "cost": stitched["cost"][:1]}
    rows.append({"method": f"{stitched['models'][0].name} alone", "kind": "reference", "policy": Full(),
                 "steps": s.steps, **alone})
    return rows, notes


def run(settings: Settings = QUICK, *, progress: bool = True, recalibrate: bool = False) -> tuple[list[dict], dict]:
    """All rows of the demo table and ``{"samples": {method: [batch, 1, 16, 16]}, "labels", "notes"}``.

    LTC weights: see :mod:`.calibrations` (the user's ``--recalibrate`` files, else the shipped
    ones; a file that does not fit the plan is an error, never silently used).  Every row is
    sampled once for the metrics, then timed ``settings.repeats`` times, interleaved (machine noise
    hits every row alike).
    """
    s = settings
    small, large = zoo.load("unet_small"), zoo.load("unet_large")
    tiny = zoo.load(zoo.TSTITCH_PAIR[0])
    schedule = zoo.schedule("unet_large")
    cost = [_macs("unet_small") / _macs("unet_large"), 1.0]
    stitched = {"models": [tiny, large], "cost": [_macs(tiny.name) / _macs("unet_large"), 1.0]}
    rows, notes = _setups(s, small, large, schedule, recalibrate, cost, stitched)

    def conditioning(labels):
        return {"y": torch.cat([torch.full_like(labels, zoo.NULL_CLASS), labels])}

    labels = torch.arange(s.batch) % 10
    kwargs = conditioning(labels)
    noise = torch.randn(s.batch, 1, 16, 16, generator=torch.Generator().manual_seed(s.seed))

    def draw(row, noise=noise, kwargs=kwargs):
        start = time.perf_counter()
        x, info = sample(row["models"], schedule, row["policy"], sampler=SAMPLER, steps=row["steps"], noise=noise,
                         model_kwargs=kwargs, guidance_scale=s.guidance, return_info=True, progress=False)
        return x, info, time.perf_counter() - start

    judged = len(distribution.ROLES)  # the rows the T-Stitch check draws again
    bar = tqdm(total=len(rows) * (1 + s.repeats) + judged, desc="ltc demo", leave=False, disable=not progress)
    samples = {}
    for row in rows:  # the metrics pass (it also warms every shape up)
        x, info, _ = draw(row)
        samples[row["method"]] = x
        row["NFE small+large"] = "+".join(map(str, info.nfe_per_model))
        row["model cost"] = sum(k * c for k, c in zip(info.nfe_per_model, row["cost"])) / s.steps
        row["walls"] = []
        bar.update(1)
    for _ in range(s.repeats):
        for row in rows:
            row["walls"].append(draw(row)[2])
            bar.update(1)

    def judged_draw(row, noise, labels):
        x = draw(row, noise, conditioning(labels))[0]
        bar.update(1)
        return x

    distances = distribution.check(rows, judged_draw, s.judge_batch, s.seed + 2)
    bar.close()
    _quality(rows, samples, labels)
    return rows, {"samples": samples, "labels": labels, "notes": notes, "distances": distances}


def _quality(rows: list[dict], samples: dict, labels: torch.Tensor) -> None:
    """PSNR against the full samples, confidence and the 'vs plain' verdict of every row not judged
    on the distribution (:mod:`.distribution` gave the T-Stitch row its verdict)."""
    reference = samples["full"]
    for row in rows:
        x = samples[row["method"]]
        row["PSNR vs full"] = zoo.metrics.psnr_rmse(x, reference)["psnr"] if row["kind"] != "full" else float("inf")
        row["confidence"] = zoo.metrics.confidence(x, labels)["confidence"]
    by_name = {r["method"]: r for r in rows}
    for row in rows:  # closer to full than the plain sampler at the same cost?
        if row["kind"] == "accelerated" and row.get("judge") != "distribution":
            row["vs plain"] = "better" if row["PSNR vs full"] > by_name[row["plain"]]["PSNR vs full"] else "WORSE"


COLUMNS = ["method", "steps", "NFE small+large", "model cost", "speed-up (cost)", "wall s (median)",
           "wall s (range)", "PSNR vs full", "vs plain", "FD held-out [95%]", "confidence"]


def format_rows(rows: list[dict]) -> str:
    """The table: model cost and the speed-up it gives first, then wall time (median, range)."""
    table = []
    for r in rows:
        median, lo, hi = report.wall_stats(r["walls"])
        table.append({**r, "model cost": f"{r['model cost']:.3f}", "speed-up (cost)": f"{1 / r['model cost']:.2f}x",
                      "wall s (median)": f"{median:.3g}", "wall s (range)": f"{lo:.3g}-{hi:.3g}",
                      "PSNR vs full": "(ref)" if r["kind"] == "full" else f"{r['PSNR vs full']:.2f}",
                      "FD held-out [95%]": r.get("FD held-out"), "confidence": f"{r['confidence']:.4f}"})
    return format_table(table, COLUMNS)


def machine_line(threads: int) -> str:
    """How busy the machine is while timing (wall times are only comparable on a quiet one)."""
    cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return f"{threads} CPU thread(s) of {cpus}"
    busy = " -- busy: wall times are noisy, model cost is not" if load > 0.75 * cpus else ""
    return f"{threads} CPU thread(s); load average {load:.1f} on {cpus} CPUs{busy}"


def describe(settings: Settings, rows: list[dict], extra: dict) -> str:
    """The demo's text: what was run, the table, where the calibrations came from, timing
    warnings and one line of advice (last)."""
    s = settings
    more = "" if s == FULL else f" (--full: {FULL.batch} samples, {FULL.repeats} repeats)"
    small = next(r for r in rows if r["kind"] == "full")["cost"][0]
    alone = next(r for r in rows if r["kind"] == "reference")
    head = [f"ltc demo: the zoo's digit UNets (small = ~1/{1 / small:.0f} and {alone['models'][0].name} = "
            f"~1/{1 / alone['cost'][0]:.0f} the multiply-adds of large), CFG {s.guidance:g}, "
            f"{SAMPLER_NAME}, {s.steps} steps, {s.batch} samples{more}.",
            "model cost = model calls x multiply-adds (1 = the full run): the speed measure that does not depend "
            "on the machine.",
            f"wall s: median and range of {s.repeats} interleaved repeats; {extra.get('machine', '')}.",
            "PSNR vs full: from the same noise, higher is closer.  Each accelerated row is followed by the plain "
            "sampler at its model cost;",
            "'vs plain': is the accelerated row closer to full?  T-Stitch's is judged on the distribution instead: "
            "FD held-out = Frechet distance to the",
            f"held-out digits with its 95% interval, from {s.judge_batch} further samples per row (lower is better; "
            "see below)."]
    lines = head + ["", format_rows(rows), ""]
    lines += distribution.summary(rows, extra["distances"])
    lines += extra["notes"] + report.timing_notes(rows)
    lines.append(report.advice(rows, SAMPLER_NAME))
    return "\n".join(lines)


def save_pictures(rows: list[dict], samples: dict, labels: torch.Tensor, out_dir: Path) -> list[str]:
    """Write ``samples.png`` (Pillow) and ``tradeoff.png`` (matplotlib); lines saying what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    said = []
    columns = labels[:min(10, labels.shape[0])].tolist()
    try:
        grid = pictures.sample_grid({r["method"]: samples[r["method"]] for r in rows}, columns,
                                    title="same noise, same labels: one row per method")
    except ImportError:
        said.append("Pillow is not installed (see the README's install command): no samples.png")
    else:
        grid.save(out_dir / "samples.png")
        said.append(f"wrote {out_dir / 'samples.png'}")
    if pictures.tradeoff_plot(rows, out_dir / "tradeoff.png", SAMPLER_NAME):
        said.append(f"wrote {out_dir / 'tradeoff.png'}")
    else:
        said.append("matplotlib is not installed (see the README's install command): no tradeoff.png")
    return said


def main(out_dir: str = "demo_out", progress: bool = True, recalibrate: bool = False, full: bool = False,
         threads: int = 1, settings: Settings | None = None) -> str:
    """Run the demo on ``threads`` CPU threads (restored afterwards), print its report and the
    pictures written; returns the report.

    One thread by default: on a 2-core machine shared with other work, torch's two threads made
    these small models ~3x slower (threads wait for each other), and one thread keeps the timed
    repeats steadier; ``--threads 2`` on a quiet machine."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    s = settings or (FULL if full else QUICK)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        rows, extra = run(s, progress=progress, recalibrate=recalibrate)
        extra["machine"] = machine_line(threads)
    finally:
        torch.set_num_threads(before)
    text = describe(s, rows, extra)
    print(text)
    for line in save_pictures(rows, extra["samples"], extra["labels"], Path(out_dir)):
        print(line)
    return text


__all__ = ["Settings", "QUICK", "FULL", "run", "describe", "format_rows", "save_pictures", "main"]
