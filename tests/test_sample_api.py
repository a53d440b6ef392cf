"""ltc.sample: parameterisations, determinism, stochastic DDIM statistics, CFG, info, bad input."""
import numpy as np
import pytest
import torch

import ltc
from ltc import Model, Schedule
from ltc.zoo.oracles import EmpiricalData, GaussianMixture
from ltc.samplers import DDIM

VP = Schedule.vp("scaled_linear", spacing="trailing")
FLOW = Schedule.flow(shift=3.0)


def noise(shape=(8, 2, 3), seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_3m"])
def test_eps_x0_v_parameterisations_give_the_same_samples(sampler):
    oracle = GaussianMixture.random(VP, dim=6)
    outs = [ltc.sample(oracle.as_prediction(p), VP, sampler=sampler, steps=12, noise=noise(), progress=False)
            for p in ("x0", "eps", "v")]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-9, atol=1e-9)


def test_flow_and_x0_parameterisations_give_the_same_samples():
    oracle = GaussianMixture.random(FLOW, dim=6)
    a = ltc.sample(oracle.as_prediction("flow"), FLOW, sampler="euler", steps=12, noise=noise(), progress=False)
    b = ltc.sample(oracle, FLOW, sampler="euler", steps=12, noise=noise(), progress=False)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_eps_prediction_on_a_flow_grid_starting_at_pure_noise_is_refused():
    oracle = GaussianMixture.random(FLOW, dim=6)
    with pytest.raises(ValueError, match="PX of step 0 is not finite"):
        ltc.sample(oracle.as_prediction("eps"), FLOW, sampler="euler", steps=5, noise=noise(), progress=False)


def test_same_seed_same_result():
    oracle = GaussianMixture.random(VP, dim=6)
    run = lambda: ltc.sample(oracle, VP, sampler=DDIM(eta=1.0), steps=10, shape=(4, 6),
                             generator=torch.Generator().manual_seed(3), dtype=torch.float64, progress=False)
    torch.testing.assert_close(run(), run(), rtol=0, atol=0)
    other = ltc.sample(oracle, VP, sampler=DDIM(eta=1.0), steps=10, shape=(4, 6),
                       generator=torch.Generator().manual_seed(4), dtype=torch.float64, progress=False)
    assert not torch.equal(run(), other)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_stochastic_ddim_has_the_marginals_of_the_forward_process(eta):
    """For data = a single point mu the denoiser is exact (D = mu) and DDIM(eta) keeps
    x_i ~ N(alpha_i mu, sigma_i^2) at every point: check mean and variance at the end."""
    sched = Schedule.log_snr(-4, 2, final="keep")
    mu = torch.tensor([[0.7, -1.2]], dtype=torch.float64)
    oracle = EmpiricalData(mu, sched)
    grid = sched.discretize(10)
    x_T = noise((20000, 2), seed=1) * grid.sigma[0] + grid.alpha[0] * mu
    out = ltc.sample(oracle, sched, sampler=DDIM(eta=eta), steps=10, noise=x_T,
                     generator=torch.Generator().manual_seed(0), progress=False)
    np.testing.assert_allclose(out.mean(0).numpy(), (grid.alpha[-1] * mu)[0].numpy(), atol=0.01)
    np.testing.assert_allclose(out.var(0).numpy(), grid.sigma[-1] ** 2, rtol=0.05)


def test_cfg_combines_the_two_halves_in_the_step():
    sched = Schedule.log_snr(-3, 3, final="keep")
    oracle = GaussianMixture.random(sched, dim=4)
    shift = 0.3

    def guided(x, t):  # unconditional half: oracle; conditional half: oracle + shift
        B = x.shape[0] // 2
        out = oracle(x, t)
        return torch.cat([out[:B], out[B:] + shift])

    x = noise((4, 4))
    g = 2.5
    got, info = ltc.sample(Model(guided, "x0"), sched, sampler="dpmpp_2m", steps=8, noise=x,
                           guidance_scale=g, return_info=True, progress=False)
    want = ltc.sample(Model(lambda x, t: oracle(x, t) + g * shift, "x0"), sched, sampler="dpmpp_2m",
                      steps=8, noise=x, progress=False)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert info.nfe == 8 and info.plan.cfg


def test_info_callback_and_progress():
    oracle = GaussianMixture.random(VP, dim=6)
    seen = []
    x, info = ltc.sample(oracle, VP, steps=7, noise=noise(), return_info=True, progress=True,
                         callback=lambda d: seen.append(d["step"]))
    assert seen == list(range(7)) and info.nfe == 7 and info.nfe_per_model == [7]
    assert info.backend == "reference" and info.model_names == ["gaussian-mixture"]
    assert len(info.plan.fingerprint) == 64 and x.shape == noise().shape


def test_fingerprint_changes_with_what_the_plan_is_compiled_from():
    oracle = GaussianMixture.random(VP, dim=6)
    fp = lambda **kw: ltc.sample(oracle, VP, noise=noise(), return_info=True, progress=False,
                                 **{"steps": 6, **kw})[1].plan.fingerprint
    base = fp()
    assert base == fp()
    assert len({base, fp(steps=7), fp(sampler="ddim"), fp(guidance_scale=None, sampler="dpmpp_3m")}) == 4


def test_float32_noise_gives_float32_samples_close_to_float64():
    oracle = GaussianMixture.random(VP, dim=6)
    x64 = ltc.sample(oracle, VP, steps=10, noise=noise(), progress=False)
    x32 = ltc.sample(oracle, VP, steps=10, noise=noise().float(), progress=False)
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), x64, rtol=1e-4, atol=1e-4)


# -- bad input ----------------------------------------------------------------------------
def model(x, t):
    return torch.zeros_like(x)


def call(**kw):
    args = dict(model_fns=Model(model, "eps"), schedule=VP, steps=4, noise=noise(), progress=False)
    args.update(kw)
    return ltc.sample(**args)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(model_fns=[]), ValueError, "model_fns is empty"),
    (dict(model_fns=3), TypeError, "model_fns must be"),
    (dict(model_fns=model), TypeError, "has no prediction type"),
    (dict(model_fns=Model(model, "eps"), prediction="x0"), ValueError, "contradicts"),
    (dict(prediction="score", model_fns=model), ValueError, "prediction must be one of"),
    (dict(schedule="scaled_linear"), TypeError, "schedule must be an ltc.Schedule"),
    (dict(sampler="rk4"), ValueError, "sampler must be one of"),
    (dict(steps=0), ValueError, "steps must be >= 1"),
    (dict(steps=1001), ValueError, "steps must be <="),
    (dict(noise=None), ValueError, "give noise"),
    (dict(noise=None, shape=(0, 3)), ValueError, "shape must be"),
    (dict(noise=noise().int()), TypeError, "floating dtype"),
    (dict(noise=torch.randn(5)), ValueError, "at least 2 dims"),
    (dict(noise=torch.full((2, 3), float("nan"))), ValueError, "NaN"),
    (dict(dtype=torch.float32), ValueError, "noise has dtype"),
    (dict(device="meta"), ValueError, "noise is on"),
    (dict(guidance_scale=float("inf")), ValueError, "guidance_scale"),
    (dict(model_kwargs=[1]), TypeError, "model_kwargs"),
    (dict(check_finite="always"), ValueError, "check_finite"),
    (dict(policy="full"), TypeError, "policy must be"),
    (dict(sampler=DDIM(eta=0.5)), ValueError, "generator"),
    (dict(backend="cuda-graph"), ValueError, "backend must be one of"),
    (dict(model_fns=Model(model, "flow")), ValueError, "requires a flow schedule"),
])
def test_bad_arguments_are_named(kw, exc, match):
    with pytest.raises(exc, match=match):
        call(**kw)


@pytest.mark.parametrize("check_finite", ["step", "end"])
def test_nan_from_a_model_names_the_step_and_the_model(check_finite):
    def flaky(x, t):
        return torch.full_like(x, float("nan")) if float(t[0]) < 500 else torch.zeros_like(x)
    with pytest.raises(ltc.NonFiniteError, match=r"model 'flaky' returned NaN or Inf at step 2"):
        call(model_fns=Model(flaky, "eps"), check_finite=check_finite)


@pytest.mark.parametrize("bad, match", [
    (lambda x, t: x[:, :1], r"model 'bad' at step 0 returned shape"),
    (lambda x, t: x.float(), "returned dtype"),
    (lambda x, t: x.numpy(), "returned ndarray"),
])
def test_wrong_model_output_is_reported_with_step_and_model(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(model_fns=Model(bad, "eps", name="bad"))


def test_cfg_model_returning_a_single_batch_is_reported():
    with pytest.raises(ValueError, match=r"returned shape \(8, 2, 3\), expected \(16, 2, 3\)"):
        call(model_fns=Model(lambda x, t: x[: x.shape[0] // 2], "eps"), guidance_scale=3.0)


def test_compiled_plans_are_cached_by_what_they_are_compiled_from():
    oracle = GaussianMixture.random(VP, dim=6)
    plan = lambda **kw: ltc.sample(oracle, VP, noise=noise(), return_info=True, progress=False,
                                   **{"steps": 6, **kw})[1].plan
    first = plan()
    assert plan() is first
    assert plan(steps=7) is not first and plan(sampler="ddim") is not first
    assert plan(policy=ltc.policies.Full(0)) is not first  # another config, even if the same decision
