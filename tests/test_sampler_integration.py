"""The new samplers (UniPC, DPM++ SDE, Euler ancestral, Heun) through every entry point: ltc.sample,
the Stepper, T-Stitch and LTC (or LTC's clear refusal), and the diffusers adapter's own loop."""
import numpy as np
import pytest
import torch

import ltc
from ltc import Schedule
from ltc.policies import LTC, TStitch
from ltc.zoo.oracles import GaussianMixture

SCHED = Schedule.vp("scaled_linear", spacing="trailing")
ORACLE = GaussianMixture.random(SCHED, dim=4, components=3, seed=0)
NOISE = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def stepper_run(sampler, policy=None, steps=8, step_noise=None):
    st = ltc.Stepper(SCHED, policy, sampler=sampler, steps=steps, noise=NOISE, predictions="x0", step_noise=step_noise)
    calls = 0
    while not st.done:
        x, t, _ = st.request()
        st.step(ORACLE(x, t))
        calls += 1
    return st.x, calls


@pytest.mark.parametrize("sampler", ["unipc", "unipc_3m", "heun", "dpmpp_3m"])
def test_stepper_equals_sample_bit_for_bit_and_counts_the_calls(sampler):
    x, info = ltc.sample(ORACLE, SCHED, sampler=sampler, steps=8, noise=NOISE, progress=False, return_info=True)
    y, calls = stepper_run(sampler)
    assert torch.equal(x, y) and calls == info.nfe
    assert info.nfe == (15 if sampler == "heun" else 8)


def test_stochastic_samplers_in_the_stepper_replay_the_same_noise():
    z = torch.randn(8, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for sampler in ("dpmpp_2m_sde", "euler_a"):
        x = ltc.sample(ORACLE, SCHED, sampler=sampler, steps=8, noise=NOISE, progress=False, step_noise=z)
        assert torch.equal(x, stepper_run(sampler, step_noise=z)[0])


def test_tstitch_runs_the_new_samplers_with_the_planned_model_per_row():
    calls = {"small": 0, "large": 0}

    def counted(name):
        def fn(x, t):
            calls[name] += 1
            return ORACLE(x, t)
        return ltc.Model(fn, "x0", name)
    x, info = ltc.sample([counted("small"), counted("large")], SCHED, TStitch([0.4]), sampler="heun", steps=6,
                         noise=NOISE, progress=False, return_info=True)
    # each model also answers T-Stitch's compatibility probe once, before sampling
    assert [calls["small"] - 1, calls["large"] - 1] == info.nfe_per_model and sum(info.nfe_per_model) == 11
    assert info.plan.models[:5] == (0,) * 5 and set(info.plan.models[5:]) == {1}


def test_ltc_extrapolates_unipc_and_refuses_two_stage_and_stochastic_samplers():
    x, info = ltc.sample(ORACLE, SCHED, LTC(weights=1.0), sampler="unipc", steps=12, noise=NOISE, progress=False,
                         return_info=True)
    assert info.nfe < 12 and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="2 model calls per step"):
        ltc.sample(ORACLE, SCHED, LTC(weights=1.0), sampler="heun", steps=12, noise=NOISE, progress=False)
    with pytest.raises(ValueError, match="deterministic sampler"):
        ltc.sample(ORACLE, SCHED, LTC(weights=1.0), sampler="euler_a", steps=12, noise=NOISE, progress=False,
                   generator=torch.Generator())


def test_callback_gets_kdiffusion_keys_for_the_same_point():
    seen = []
    ltc.sample(ORACLE, SCHED, sampler="heun", steps=4, noise=NOISE, progress=False, callback=lambda info: seen.append(info))
    plan_grid = ltc.samplers.Heun().rows(ltc.samplers.Heun().grid(SCHED, 4))
    assert [s["i"] for s in seen] == list(range(7))
    assert torch.equal(seen[0]["x"], NOISE) and torch.equal(seen[1]["x"], seen[0]["x_next"])
    for s in seen:
        assert s["sigma"] == s["sigma_hat"] == plan_grid.sigma[s["i"]] and s["sigma_next"] == plan_grid.sigma[s["i"] + 1]
        # denoised is the clean estimate at (x, sigma): the oracle's own output there
        t = torch.full((3,), plan_grid.t[s["i"]], dtype=torch.float64)
        torch.testing.assert_close(s["denoised"], ORACLE(s["x"], t))
