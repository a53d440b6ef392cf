"""The main demo: the shipped digit models, every policy beside the plain sampler, honestly.

Two class-conditional eps-prediction UNets trained on 16x16 digits (:mod:`ltc.zoo`; the large one
costs ~6x the small one's multiply-adds), classifier-free guidance, DPM-Solver++(2M).  Rows:

* full          -- the large model at every one of the N steps (the reference samples)
* LTC           -- LTC-Accel, weights calibrated on other noises (:func:`ltc.calibrate`)
* T-Stitch      -- the small model for the first ``fraction`` of the steps
* T-Stitch+LTC  -- both, calibrated on the composed plan
* plain rows    -- the plain sampler with the large model at the *same model cost* as each
  accelerated row (fewer steps): the baseline an acceleration has to beat.

Quality: PSNR against the full samples from the same noise (higher is closer), the Frechet distance
to the data in the zoo classifier's feature space (lower is better; noisy at this sample count) and
classifier confidence.  Model cost counts multiply-adds: 1.0 = N large-model calls.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from .. import zoo
from ..api import sample
from ..calibration import Calibration, calibrate
from ..plan import compile_plan
from ..policies import LTC, Full, TStitch

from ..samplers import get_sampler
from .table import format_table

SAMPLER = "dpmpp_2m"


def _macs(name: str) -> float:
    return float(zoo.info(name)["macs_per_sample"])


def _run(models, schedule, policy, steps, noise, kwargs, guidance, progress):
    start = time.perf_counter()
    x, info = sample(models, schedule, policy, sampler=SAMPLER, steps=steps, noise=noise,
                         model_kwargs=kwargs, guidance_scale=guidance, return_info=True, progress=progress)
    return x, info, time.perf_counter() - start


CALIBRATIONS = zoo.CALIBRATIONS_DIR


def run(steps: int = 20, batch: int = 50, fraction: float = 0.4, guidance: float = 2.0, calib: int = 20,
        seed: int = 0, progress: bool = True, recalibrate: bool = False,
        timing_repeats: int = 3) -> tuple[list[dict], dict]:
    """All rows of the demo table, and the samples of each row (``[batch, 1, 16, 16]``).

    LTC weights come from the calibration files shipped in ``ltc/zoo/calibrations`` (made by
    ``python -m ltc demo --recalibrate``, which runs :func:`ltc.calibrate` on ``calib`` other noises
    and saves them); a file that does not match the plan is an error, never silently used.
    Wall times are medians of ``timing_repeats`` interleaved runs of every row.
    """
    small, large = zoo.load("unet_small"), zoo.load("unet_large")
    schedule = zoo.schedule("unet_large")
    cost = [_macs("unet_small") / _macs("unet_large"), 1.0]

    def cfg_kwargs(n):
        labels = torch.arange(n) % 10
        return {"y": torch.cat([torch.full_like(labels, zoo.NULL_CLASS), labels])}, labels

    kwargs, labels = cfg_kwargs(batch)
    noise = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    calib_kwargs, _ = cfg_kwargs(calib)
    calib_noise = torch.randn(calib, 1, 16, 16, generator=torch.Generator().manual_seed(seed + 1))

    def calibrated(name, models, policy):
        path = CALIBRATIONS / f"{name}.safetensors"
        if recalibrate or not path.is_file():
            cal = calibrate(models, schedule, policy, steps=steps, noise=calib_noise, model_kwargs=calib_kwargs,
                                guidance_scale=guidance, verbose=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            cal.save(path)
            print(f"calibrated {name} on {calib} other noises: saved {path}")
        else:
            cal = Calibration.load(path)
        return policy.replace(weights=cal), cal

    stitch = TStitch([fraction])
    ltc_policy, ltc_cal = calibrated("demo_ltc", large, LTC(state="x"))  # the shipped files use state x
    both_policy, both_cal = calibrated("demo_tstitch_ltc", [small, large], stitch | LTC(state="x"))
    setups = [("full", [small, large], Full(), steps),
              ("LTC (calibrated)", [small, large], ltc_policy, steps),
              (f"T-Stitch {fraction:.0%} small", [small, large], stitch, steps),
              ("T-Stitch + LTC", [small, large], both_policy, steps)]
    # every accelerated setup is followed by the plain sampler (large model) at the same model cost
    runs = []
    for name, models, policy, n in setups:
        runs.append((name, models, policy, n))
        if name != "full":
            plan = compile_plan(schedule.discretize(n), get_sampler(SAMPLER), policy,
                                    [m.prediction for m in models], guidance)
            rel = sum(k * c for k, c in zip(plan.nfe_per_model(), cost)) / steps
            plain = max(1, int(rel * steps + 1e-9))
            if all(r[0] != f"plain {plain} steps" for r in runs):
                runs.append((f"plain {plain} steps", [small, large], Full(), plain))
    rows, samples, walls = [], {}, {}
    for name, models, policy, n in runs:
        x, info, wall = _run(models, schedule, policy, n, noise, kwargs, guidance, progress)
        rows.append({"method": name, "steps": n, "NFE small+large": "+".join(map(str, info.nfe_per_model)),
                     "model cost": sum(k * c for k, c in zip(info.nfe_per_model, cost)) / steps})
        samples[name], walls[name] = x, [wall]
    for _ in range(timing_repeats - 1):  # interleaved repeats: machine noise hits every row alike
        for name, models, policy, n in runs:
            walls[name].append(_run(models, schedule, policy, n, noise, kwargs, guidance, False)[2])
    reference = samples["full"]
    for row in rows:
        row["wall_s"] = statistics.median(walls[row["method"]])
    for row in rows:
        x = samples[row["method"]]
        row["speed-up"] = rows[0]["wall_s"] / row["wall_s"]
        row["PSNR vs full"] = zoo.metrics.psnr_rmse(x, reference)["psnr"] if row["method"] != "full" else float("inf")
        row["FD"] = zoo.metrics.frechet_distance(x)
        row["confidence"] = zoo.metrics.confidence(x, labels)["confidence"]
    by_name = {r["method"]: r for r in rows}
    for row in rows:  # the honest verdict: closer to full than the plain sampler at the same cost?
        if row["method"] != "full" and not row["method"].startswith("plain"):
            plain = by_name[f"plain {max(1, int(row['model cost'] * steps + 1e-9))} steps"]
            row["vs plain"] = "better" if row["PSNR vs full"] > plain["PSNR vs full"] else "WORSE"
    calibrations = {"LTC": ltc_cal, "T-Stitch + LTC": both_cal}
    return rows, {"samples": samples, "calibrations": calibrations}


def _save_pictures(rows, samples, out_dir: Path) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'ltc[demo]'): no PNG written")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [r["method"] for r in rows]
    grid = torch.cat([torch.cat(list(samples[n][:10, 0].clamp(-1, 1)), dim=1) for n in names], dim=0)
    fig, ax = plt.subplots(figsize=(8, 0.85 * len(names) + 0.4))
    ax.imshow(grid.numpy(), cmap="gray", vmin=-1, vmax=1)
    ax.set_yticks([8 + 16 * k for k in range(len(names))], names)
    ax.set_xticks([])
    ax.set_title("same noise, same labels 0-9: one row per method")
    fig.tight_layout()
    paths = [out_dir / "samples.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    plain = sorted((r for r in rows if r["method"].startswith("plain") or r["method"] == "full"),
                   key=lambda r: r["model cost"])
    ax.plot([r["model cost"] for r in plain], [min(r["PSNR vs full"], 60) for r in plain], "o-", color="gray",
            label="plain DPM-Solver++(2M), large model")
    for r in rows:
        if not (r["method"].startswith("plain") or r["method"] == "full"):
            ax.plot(r["model cost"], r["PSNR vs full"], "s", label=r["method"])
    ax.set_xlabel("model cost (1 = full large-model run)")
    ax.set_ylabel("PSNR vs full samples (dB; full capped at 60)")
    ax.set_title("speed/quality trade-off")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "tradeoff.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def main(out_dir: str = "demo_out", progress: bool = True, recalibrate: bool = False) -> str:
    torch.manual_seed(0)
    rows, extra = run(progress=progress, recalibrate=recalibrate)
    columns = ["method", "steps", "NFE small+large", "model cost", "wall_s", "speed-up", "PSNR vs full",
               "vs plain", "FD", "confidence"]
    decisions = []
    for name, cal in extra["calibrations"].items():
        verdict = {True: "accepted", False: "REFUSED (a plain sampler is better at equal NFE)",
                   None: "no verdict"}[cal.accepted]
        decisions.append(f"{name}: calibration {verdict}")
    text = ("ltc demo: zoo digit UNets (small ~1/6 the multiply-adds of large), CFG 2.0, DPM-Solver++(2M), "
            "20 steps, 50 samples.\nPSNR is against the full run from the same noise; FD to the data in the zoo "
            "classifier's features (noisy with 50 samples).\nEach accelerated row is followed by the plain sampler "
            "at the same model cost; 'vs plain' says whether the accelerated row is closer to full.\n\n" + format_table(rows, columns) + "\n\n" + "\n".join(decisions))
    print(text)
    for path in _save_pictures(rows, extra["samples"], Path(out_dir)):
        print(f"wrote {path}")
    return text
