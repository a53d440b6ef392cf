"""ltc.Stepper: the caller-driven walk gives ltc.sample's numbers bit for bit, for every policy."""
import numpy as np
import pytest
import torch

import ltc
from ltc import policies
from ltc.zoo.oracles import GaussianMixture
from ltc.plan import EXTRAPOLATE, Decision
from ltc.policies import Full, Policy, no_extrapolation
from ltc.schedule import Schedule

SCHEDULE = Schedule.vp("linear", spacing="trailing")
STEPS = 10


class ExtrapolateSome(Policy):
    """Test policy: model 0 everywhere except ``skip`` steps, which extrapolate the state linearly
    (x' = (1+c) x - c x_prev) plus a pull on the history (EH1, EH2), with D_i = IN x' + IC x."""

    def __init__(self, skip=(3, 6, 8), c=0.7):
        self.skip, self.c = tuple(skip), c

    def config(self):
        return {"policy": "test-extrapolate", "skip": list(self.skip), "c": self.c}

    def decide(self, grid, sampler, n_models):
        models = np.zeros(grid.steps, np.int64)
        extrap = no_extrapolation(grid.steps)
        A, B0 = sampler.first_order(grid)
        for i in self.skip:
            models[i] = EXTRAPOLATE
            extrap[i] = [1 + self.c, -self.c, 0.01, -0.005, 1 / B0[i], -A[i] / B0[i]]
        return Decision(models, extrap)


def mixture(schedule=SCHEDULE, prediction="eps"):
    return GaussianMixture.random(schedule, dim=8, seed=1).as_prediction(prediction)


def noise(dtype=torch.float32, batch=3):
    return torch.randn(batch, 2, 4, generator=torch.Generator().manual_seed(5)).to(dtype)


def walk(models, schedule, policy, x_init, *, guidance_scale=None, model_kwargs=None, **kw):
    """Drive a Stepper the way a foreign loop would; returns (sample, requests)."""
    st = ltc.Stepper(schedule, policy, noise=x_init, predictions=models, guidance_scale=guidance_scale, **kw)
    requests = []
    while not st.done:
        req = st.request()
        requests.append((st.step_index, req.model_index, float(req.t[0])))
        st.step(models[req.model_index](req.x, req.t, **(model_kwargs or {})))
    return st.x, requests


def every_policy():
    """One instance of every policy class in ltc.policies, plus the test policy above."""
    found = {"Full": Full(), "ExtrapolateSome": ExtrapolateSome()}
    if hasattr(policies, "TStitch"):
        found["TStitch"] = policies.TStitch(0.4)
    if hasattr(policies, "LTC"):
        found["LTC"] = policies.LTC()
        found["LTC-x0"] = policies.LTC(state="x0", every=3)
        if hasattr(policies, "TStitch"):
            found["TStitch|LTC"] = policies.TStitch(0.3) | policies.LTC(interval=(0.5, 1.0))
    return found


def test_every_policy_class_of_ltc_policies_is_covered():
    covered = {type(p) for p in every_policy().values()}
    classes = {v for v in vars(policies).values() if isinstance(v, type) and issubclass(v, Policy) and v is not Policy}
    assert classes <= covered


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m", "dpmpp_3m"])
@pytest.mark.parametrize("name", sorted(every_policy()))
def test_stepper_equals_sample_bit_for_bit(name, sampler):
    policy = every_policy()[name]
    two = name.startswith("TStitch")
    models = [mixture(), GaussianMixture.random(SCHEDULE, dim=8, seed=1).as_prediction("eps")] if two else [mixture()]
    expected = ltc.sample(models, SCHEDULE, policy, sampler=sampler, steps=STEPS, noise=noise(), progress=False)
    got, requests = walk(models, SCHEDULE, policy, noise(), sampler=sampler, steps=STEPS)
    assert torch.equal(got, expected)
    plan = ltc.compile_plan(SCHEDULE.discretize(STEPS), ltc.samplers.get_sampler(sampler), policy,
                            [m.prediction for m in models])
    model_steps = [i for i, k in enumerate(plan.models) if k != EXTRAPOLATE]
    assert [r[0] for r in requests] == model_steps               # extrapolated steps are never requested
    assert [r[1] for r in requests] == [plan.models[i] for i in model_steps]
    assert [r[2] for r in requests] == [float(np.float32(plan.grid.t[i])) for i in model_steps]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_stepper_equals_sample_in_other_dtypes(dtype):
    models = [mixture()]
    expected = ltc.sample(models, SCHEDULE, ExtrapolateSome(), steps=STEPS, noise=noise(dtype), progress=False)
    got, _ = walk(models, SCHEDULE, ExtrapolateSome(), noise(dtype), steps=STEPS)
    assert got.dtype == dtype and torch.equal(got, expected)


def test_guidance_requests_the_doubled_batch_and_matches_sample():
    cond, uncond = mixture(), GaussianMixture.random(SCHEDULE, dim=8, seed=2).as_prediction("eps")

    def guided(x, t):  # unconditional half first
        B = x.shape[0] // 2
        return torch.cat([uncond(x[:B], t[:B]), cond(x[B:], t[B:])])

    model = ltc.Model(guided, "eps", "guided")
    expected = ltc.sample(model, SCHEDULE, steps=STEPS, noise=noise(), guidance_scale=3.0, progress=False)
    st = ltc.Stepper(SCHEDULE, steps=STEPS, noise=noise(), predictions=model, guidance_scale=3.0)
    req = st.request()
    assert req.x.shape == (6, 2, 4) and req.t.shape == (6,)
    assert torch.equal(req.x[:3], req.x[3:])
    got, _ = walk([model], SCHEDULE, None, noise(), steps=STEPS, guidance_scale=3.0)
    assert torch.equal(got, expected)


def test_stochastic_sampler_draws_the_same_noise_as_sample():
    sampler = ltc.samplers.DDIM(eta=0.6)
    expected = ltc.sample(mixture(), SCHEDULE, sampler=sampler, steps=STEPS, noise=noise(), progress=False,
                          generator=torch.Generator().manual_seed(9))
    got, _ = walk([mixture()], SCHEDULE, None, noise(), sampler=sampler, steps=STEPS,
                  generator=torch.Generator().manual_seed(9))
    assert torch.equal(got, expected)


def test_flow_schedule_with_explicit_grid_and_steps_none():
    grid = Schedule.flow(shift=3.0).discretize(6)
    schedule = Schedule.explicit(grid.t, grid.alpha, grid.sigma, family="flow")
    model = GaussianMixture.random(schedule, dim=8).as_prediction("flow")
    expected = ltc.sample(model, schedule, sampler="euler", noise=noise(), progress=False)
    got, _ = walk([model], schedule, None, noise(), sampler="euler")
    assert torch.equal(got, expected)


def test_request_has_no_side_effects_and_the_noise_is_not_modified():
    x_init = noise()
    keep = x_init.clone()
    st = ltc.Stepper(SCHEDULE, steps=STEPS, noise=x_init, predictions="eps")
    a, b = st.request(), st.request()
    assert torch.equal(a.x, b.x) and torch.equal(a.t, b.t) and st.step_index == 0
    st.step(mixture()(a.x, a.t))
    assert torch.equal(x_init, keep) and st.step_index == 1


def test_step_returns_the_state_after_the_following_extrapolations():
    st = ltc.Stepper(SCHEDULE, ExtrapolateSome(skip=(3, 4 + 1)), steps=STEPS, noise=noise(), predictions="eps")
    calls = 0
    while not st.done:
        req = st.request()
        assert st.plan.models[st.step_index] != EXTRAPOLATE
        out = st.step(mixture()(req.x, req.t))
        calls += 1
        assert out is st.x
    assert calls == st.plan.nfe == STEPS - 2 and st.model_calls_left == 0


def test_model_calls_left_counts_down():
    st = ltc.Stepper(SCHEDULE, ExtrapolateSome(), steps=STEPS, noise=noise(), predictions="eps")
    left = [st.model_calls_left]
    while not st.done:
        req = st.request()
        st.step(mixture()(req.x, req.t))
        left.append(st.model_calls_left)
    assert left == list(range(STEPS - 3, -1, -1))


def test_wrong_output_shape_dtype_or_device_names_the_step():
    st = ltc.Stepper(SCHEDULE, steps=STEPS, noise=noise(), predictions=ltc.Model(mixture(), "eps", "mine"))
    req = st.request()
    st.step(mixture()(req.x, req.t))
    with pytest.raises(ValueError, match=r"'mine' at step 1 returned shape \(3, 8\)"):
        st.step(torch.zeros(3, 8))
    with pytest.raises(ValueError, match="step 1 returned dtype torch.float64"):
        st.step(torch.zeros(3, 2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="step 1 returned ndarray"):
        st.step(np.zeros((3, 2, 4), np.float32))
    assert st.step_index == 1  # a rejected output takes no step


def test_nonfinite_output_raises_at_its_step():
    st = ltc.Stepper(SCHEDULE, steps=STEPS, noise=noise(), predictions="eps")
    st.step(torch.zeros(3, 2, 4))
    bad = torch.zeros(3, 2, 4)
    bad[1, 0, 2] = float("nan")
    with pytest.raises(ltc.NonFiniteError, match="step 1"):
        st.step(bad)


def test_nonfinite_output_with_check_finite_end_raises_once_the_walk_ends():
    st = ltc.Stepper(SCHEDULE, steps=4, noise=noise(), predictions="eps", check_finite="end")
    st.step(torch.zeros(3, 2, 4))
    st.step(torch.full((3, 2, 4), float("inf")))
    st.step(torch.zeros(3, 2, 4))
    with pytest.raises(ltc.NonFiniteError, match="step 1"):
        st.step(torch.zeros(3, 2, 4))


def test_stepping_a_finished_stepper_is_an_error():
    st = ltc.Stepper(SCHEDULE, steps=1, noise=noise(), predictions="x0")
    st.step(torch.zeros(3, 2, 4))
    assert st.done and torch.equal(st.x, torch.zeros(3, 2, 4))
    with pytest.raises(RuntimeError, match="done"):
        st.request()
    with pytest.raises(RuntimeError, match="done"):
        st.step(torch.zeros(3, 2, 4))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"noise": np.zeros((2, 3))}, TypeError, "noise must be a torch.Tensor"),
    ({"noise": torch.zeros(3)}, ValueError, "at least 2 dims"),
    ({"noise": torch.zeros(2, 3, dtype=torch.int64)}, TypeError, "floating dtype"),
    ({"predictions": 3}, TypeError, "predictions must be"),
    ({"predictions": []}, TypeError, "predictions must be"),
    ({"predictions": "noise"}, ValueError, "prediction must be one of"),
    ({"predictions": ["eps", 3]}, TypeError, r"predictions\[1\]"),
    ({"check_finite": "never"}, ValueError, "check_finite must be one of"),
    ({"guidance_scale": float("nan")}, ValueError, "guidance_scale"),
    ({"sampler": ltc.samplers.DDIM(eta=0.5)}, ValueError, "pass generator="),
    ({"policy": "full"}, TypeError, "policy must be"),
    ({"policy": Full(model=1)}, ValueError, "only 1 model"),
    ({"schedule": "vp"}, TypeError, "schedule must be"),
    ({"steps": 0}, ValueError, "steps must be >= 1"),
])
def test_bad_arguments_are_rejected_before_any_step(kwargs, error, match):
    args = {"schedule": SCHEDULE, "policy": None, "noise": noise(), "predictions": "eps", "steps": STEPS, **kwargs}
    schedule, policy = args.pop("schedule"), args.pop("policy")
    with pytest.raises(error, match=match):
        ltc.Stepper(schedule, policy, **args)


@pytest.mark.gpu
def test_the_walk_makes_no_host_sync_on_cuda():
    models = [GaussianMixture.random(SCHEDULE, dim=8, seed=1).as_prediction("x0")]
    x_init = noise().cuda()
    st = ltc.Stepper(SCHEDULE, ExtrapolateSome(), steps=STEPS, noise=x_init, predictions=models, check_finite="end")
    outputs = [torch.randn(3, 2, 4, device="cuda") for _ in range(st.plan.nfe)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for out in outputs[:-1]:   # the last step reads the device-side finite flag once, by design
            st.request()
            st.step(out)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    st.step(outputs[-1])
    assert st.done
