"""The LTC calibrations shipped in ``ltc/zoo/calibrations`` still reproduce under the current LTC.

A calibration stores weights w_k fitted to the numbers they multiply (``LTC.rows`` / ``LTC.gammas``,
the history rule, which steps are extrapolated).  If that formula changes, stored weights go stale
silently unless ``CALIBRATION_FORMAT`` (in ``ltc/policies/ltc_accel.py``, part of every calibration
key) is bumped, which makes the old files fail their key check.  This file catches a missed bump:

* cheap checks: every shipped file loads, is one the demo uses, and its key equals the current
  ``LTC(...).calibration_key(grid, sampler)`` of the demo's plan (which steps are extrapolated, the
  grid, the sampler, the structure); its stored gamma equals the current ``LTC.gammas`` (float64,
  deterministic, to 1e-12); the demo's plan compiles with it; the demo reads this folder.
* the refit: each file is re-calibrated exactly as ``python -m ltc demo --recalibrate`` makes it
  (the zoo models, the demo's calibration noises, labels, guidance and steps -- taken from the
  demo's default settings :data:`ltc.demo.zoo.QUICK` -- and the objective and clamp recorded in the file's ``fit``)
  but with ``report=False``: the report does not touch the fitted weights (``weights_fit``; the
  noises are split the same way with or without it).  The fitted weights and fit diagnostics must
  equal the stored ones, and the stored ``weights`` are the ones the stored decision chose.  The fit is a one-step closed
  form per extrapolated step, so the weights depend on ``rows`` (R0 + w R1), the history rule
  (IN, IC) and gamma.
  Tolerances: the models run in float32; the refit here differs from the stored files by 2e-6
  (weights, relative) and 2e-5 (residual, w_std), with 1 or 2 threads alike.  We allow 1e-4 for the
  weights and w_mean, 1e-3 for residual and w_std, 1e-5 absolute for the coherence curve.  Measured
  power: gamma or the R1 rows times 1.01 move the weights by 1e-2, R1 times 1.001 by 1e-3, the
  history coefficients IN, IC times 1.001 by 5e-4, the reference code's shifted gamma by 5e-2;
  a change of the extrapolated steps changes the key.  Every one of them fails this file.

Cost on 2 CPU cores: ~3 s for both refits when the machine is otherwise idle (40 model calls each,
batch 20 under guidance), more when other jobs share the cores; a full
``python -m ltc demo --recalibrate`` takes ~130 s.
"""
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import ltc.zoo as zoo
from ltc.calibration import Calibration, calibrate
from ltc.demo import calibrations as demo_calibrations
from ltc.demo import zoo as demo_zoo
from ltc.plan import compile_plan
from ltc.policies import LTC, TStitch
from ltc.samplers import get_sampler

SHIPPED_DIR = Path(zoo.__file__).parent / "calibrations"
DEMO = dataclasses.asdict(demo_zoo.QUICK)
SAMPLER = demo_zoo.SAMPLER


def demo_policy(name: str) -> LTC:
    """The policy the demo calibrates for each shipped file (see ltc/demo/zoo.py)."""
    if name == "demo_ltc":
        return LTC(state="x")
    if name == "demo_tstitch_ltc":
        return TStitch([DEMO["fraction"]]) | LTC(state="x")
    raise KeyError(name)


SHIPPED = ("demo_ltc", "demo_tstitch_ltc")


@pytest.fixture(scope="module")
def setup():
    """The demo's models, schedule, grid and calibration inputs (as ``ltc.demo.zoo.run`` builds them)."""
    small, large = zoo.load("unet_small"), zoo.load("unet_large")
    schedule = zoo.schedule("unet_large")
    n = DEMO["calib"]
    labels = torch.arange(n) % 10
    kwargs = {"y": torch.cat([torch.full_like(labels, zoo.NULL_CLASS), labels])}
    noise = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(DEMO["seed"] + 1))
    models = {"demo_ltc": large, "demo_tstitch_ltc": [small, large]}
    return {"schedule": schedule, "grid": schedule.discretize(DEMO["steps"]), "sampler": get_sampler(SAMPLER),
            "noise": noise, "kwargs": kwargs, "models": models, "pair": [small, large]}


def load(name: str) -> Calibration:
    return Calibration.load(SHIPPED_DIR / f"{name}.safetensors")


def test_the_shipped_files_are_the_demos_and_the_demo_reads_them():
    assert sorted(p.stem for p in SHIPPED_DIR.glob("*.safetensors")) == sorted(SHIPPED)
    assert Path(demo_calibrations.SHIPPED_DIR).resolve() == SHIPPED_DIR.resolve()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_key_matches_the_current_ltc(setup, name):
    cal, policy = load(name), demo_policy(name)
    grid, sampler = setup["grid"], setup["sampler"]
    assert cal.key == policy.calibration_key(grid, sampler)
    assert cal.structure == policy.structure() and cal.sampler == sampler.config()
    assert cal.grid.digest() == grid.digest()
    assert cal.steps.tolist() == policy.extrapolated_steps(grid.steps)
    np.testing.assert_allclose(cal.gamma, policy.gammas(grid, cal.steps.tolist()), rtol=1e-12, atol=0)
    # the demo's use: the calibrated policy compiles for the demo's plan, with the stored weights
    plan = compile_plan(grid, sampler, policy.replace(weights=cal), [m.prediction for m in setup["pair"]],
                        DEMO["guidance"])
    cal.check_plan(plan)
    assert plan.nfe == grid.steps - len(cal.steps)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_reproduce_under_the_current_ltc(setup, name):
    stored = load(name)
    assert stored.fit["objective"] == "step", "a trajectory fit needs its teacher run too; extend this test"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the refusal warning (no report here anyway)
        fresh = calibrate(setup["models"][name], setup["schedule"], demo_policy(name), sampler=SAMPLER,
                          steps=DEMO["steps"], noise=setup["noise"], model_kwargs=setup["kwargs"],
                          guidance_scale=DEMO["guidance"], objective=stored.fit["objective"],
                          clamp=tuple(stored.fit["clamp"]), report=False, verbose=False)
    assert fresh.key == stored.key
    assert fresh.steps.tolist() == stored.steps.tolist()
    np.testing.assert_allclose(fresh.gamma, stored.gamma, rtol=1e-12, atol=0)
    np.testing.assert_allclose(fresh.weights_fit, stored.weights_fit, rtol=1e-4, atol=0, err_msg="weights_fit")
    chose_ones = stored.report["decision"]["weights"] == "w = 1"
    np.testing.assert_array_equal(stored.weights, np.ones_like(stored.weights_fit) if chose_ones else stored.weights_fit)
    np.testing.assert_allclose(fresh.weights_step, stored.weights_step, rtol=1e-4, atol=0, err_msg="weights_step")
    np.testing.assert_allclose(fresh.w_mean, stored.w_mean, rtol=1e-4, atol=0, err_msg="w_mean")
    np.testing.assert_allclose(fresh.residual, stored.residual, rtol=1e-3, atol=0, err_msg="residual")
    np.testing.assert_allclose(fresh.w_std, stored.w_std, rtol=1e-3, atol=0, err_msg="w_std")
    np.testing.assert_allclose(fresh.coherence, stored.coherence, rtol=0, atol=1e-5, err_msg="coherence")
    assert fresh.cost["fit_walk"] == stored.cost["fit_walk"]
