"""LTC policy: exact NFE, no model call at extrapolated steps, the extrapolation math, composition
with T-Stitch, every sampler, guidance and batch independence, and the bad-input errors."""
import numpy as np
import pytest
import torch

import ltc
from ltc.zoo.oracles import GaussianMixture
from ltc.plan import EXTRAPOLATE, compile_plan
from ltc.policies import LTC, Full, TStitch
from ltc.samplers import DDIM, get_sampler

VP = ltc.Schedule.vp("scaled_linear", spacing="trailing")
FLOW = ltc.Schedule.flow(3.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster


class Counting:
    """x0-predicting model that records the model time of every sampling call (batch > 1:
    T-Stitch's one-sample compatibility probe is not counted)."""

    prediction = "x0"

    def __init__(self, fn=None, name="counting"):
        self.fn, self.name, self.times = fn, name, []

    def __call__(self, x, t, **kw):
        if x.shape[0] > 1:
            self.times.append(float(t[0]))
        return self.fn(x, t) if self.fn is not None else 0.5 * x


def noise(batch=4, dim=8, seed=0):
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def draw(model, policy, schedule=VP, steps=20, sampler="ddim", x=None, **kw):
    x = noise() if x is None else x
    return ltc.sample(model, schedule, policy, sampler=sampler, steps=steps, noise=x, progress=False,
                      return_info=True, **kw)


@pytest.mark.parametrize("steps, kwargs, expected_skips", [
    (40, {}, list(range(11, 40, 2))),                                  # the reference default: 25 calls of 40
    (20, {}, [7, 9, 11, 13, 15, 17, 19]),                              # the reference's odd steps above N/4
    (20, {"phase": "interval"}, [6, 8, 10, 12, 14, 16, 18]),           # ltc 0.1: counted from floor(N/4) = 5
    (20, {"interval": (0.5, 1.0), "every": 3}, [11, 14, 17]),
    (20, {"interval": (0.5, 1.0), "every": 3, "phase": "interval"}, [12, 15, 18]),
    (20, {"interval": (4, 12), "every": 2}, [5, 7, 9, 11]),
    (20, {"interval": (4, None), "every": 4}, [7, 11, 15, 19]),
    (20, {"skip": [3, 9, 10 + 2]}, [3, 9, 12]),
])
def test_planned_nfe_is_exact_and_skipped_steps_never_call_the_model(steps, kwargs, expected_skips):
    model = Counting()
    _, info = draw(model, LTC(**kwargs), steps=steps)
    grid = VP.discretize(steps)
    assert [i for i, m in enumerate(info.plan.models) if m == EXTRAPOLATE] == expected_skips
    assert info.nfe == steps - len(expected_skips) == len(model.times)
    called = [t for i, t in enumerate(grid.t[:-1]) if i not in expected_skips]
    assert model.times == called


def reference_skips(N: int) -> list[int]:
    """The reference code's rule, transcribed: the odd i with N/4 < i < N."""
    return [i for i in range(N) if i % 2 == 1 and N / 4 < i < N]


@pytest.mark.parametrize("N", list(range(8, 41)) + [50, 51, 100])
def test_default_extrapolated_steps_are_the_reference_codes(N):
    assert LTC().extrapolated_steps(N) == reference_skips(N)
    old = [i for i in range(N // 4, N) if (i - N // 4) % 2 == 1]          # ltc 0.1's rule
    assert LTC(phase="interval").extrapolated_steps(N) == old
    assert (old == reference_skips(N)) == (N // 4 % 2 == 0)              # they differ iff floor(N/4) is odd


def test_the_phase_is_part_of_the_structure_the_key_and_the_repr():
    grid = VP.discretize(24)                                             # floor(24/4) = 6: the same steps
    ref, old = LTC(), LTC(phase="interval")
    assert ref.extrapolated_steps(24) == old.extrapolated_steps(24)
    assert ref.structure()["phase"] == "reference" and old.structure()["phase"] == "interval"
    assert ref.calibration_key(grid, DDIM()) != old.calibration_key(grid, DDIM())
    assert "phase='interval'" in repr(old) and old.replace(every=3).phase == "interval"


def test_interval_fractions_and_indices_give_the_same_plan():
    grid = VP.discretize(40)
    a = LTC(interval=(0.25, 1.0)).decide(grid, DDIM(), 1)
    b = LTC(interval=(10, 40)).decide(grid, DDIM(), 1)
    assert np.array_equal(a.models, b.models) and np.array_equal(a.extrapolation, b.extrapolation)


def test_extrapolated_step_is_x_plus_w_gamma_times_the_last_transition():
    grid, w = VP.discretize(20), 0.7
    states = []
    x, info = draw(GaussianMixture.random(VP, dim=8, seed=1), LTC(state="x", weights=w),
                   callback=lambda d: states.append(d["x_next"].clone()))
    sigma = grid.sigma
    states = [noise()] + states
    for i in [7, 13, 19]:
        gamma = (sigma[i + 1] - sigma[i]) / (sigma[i] - sigma[i - 1])
        expected = states[i] + w * gamma * (states[i] - states[i - 1])
        torch.testing.assert_close(states[i + 1], expected, rtol=0, atol=1e-12)


def test_history_after_a_skip_is_the_x0_implied_by_the_first_order_step():
    grid = VP.discretize(20)
    A, B0 = get_sampler("dpmpp_2m").first_order(grid)
    seen = []
    draw(GaussianMixture.random(VP, dim=8, seed=1), LTC(), sampler="dpmpp_2m",
         callback=lambda d: seen.append((d["x_next"].clone(), d["denoised"].clone())))
    xs = [noise()] + [s[0] for s in seen]
    for i in [7, 11, 19]:
        implied = seen[i][1]
        torch.testing.assert_close(A[i] * xs[i] + B0[i] * implied, xs[i + 1], rtol=0, atol=1e-12)


def test_state_x_is_exact_for_a_trajectory_linear_in_sigma():
    # flow + a model whose x0 is a constant: x(s) = (1 - s) c + s eps is linear in sigma, so
    # Euler and the extrapolation (w = 1) are both exact and agree.
    c = torch.linspace(-1, 1, 8, dtype=torch.float64)
    model = Counting(lambda x, t: c.expand_as(x).clone())
    full, _ = draw(model, Full(), schedule=FLOW, sampler="euler")
    fast, info = draw(model, LTC(state="x"), schedule=FLOW, sampler="euler")
    assert info.nfe == 13
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-12)


def test_state_x_over_alpha_extrapolates_the_scaled_state():
    grid, w = VP.discretize(20), 0.8
    seen = []
    draw(GaussianMixture.random(VP, dim=8, seed=1), LTC(state="x/alpha", weights=w),
         callback=lambda d: seen.append(d["x_next"].clone()))
    u = [x / a for x, a in zip([noise()] + seen, grid.alpha)]
    s = grid.sigma
    for i in [7, 13, 19]:
        gamma = (s[i + 1] - s[i]) / (s[i] - s[i - 1])
        torch.testing.assert_close(u[i + 1], u[i] + w * gamma * (u[i] - u[i - 1]), rtol=0, atol=1e-12)


def test_state_x0_extrapolates_the_model_output_then_takes_a_first_order_step():
    grid, w = VP.discretize(20), 0.8
    A, B0 = DDIM().first_order(grid)
    seen = []
    draw(GaussianMixture.random(VP, dim=8, seed=1), LTC(state="x0", weights=w), sampler="dpmpp_2m",
         callback=lambda d: seen.append((d["x_next"].clone(), d["denoised"].clone())))
    xs, D = [noise()] + [v[0] for v in seen], [v[1] for v in seen]
    s = grid.sigma
    for i in [7, 13, 19]:
        gamma = (s[i] - s[i - 1]) / (s[i - 1] - s[i - 2])   # the ratio of the points of D_{i-2}, D_{i-1}, D_i
        d_i = D[i - 1] + w * gamma * (D[i - 1] - D[i - 2])
        torch.testing.assert_close(D[i], d_i, rtol=0, atol=1e-12)
        torch.testing.assert_close(xs[i + 1], A[i] * xs[i] + B0[i] * d_i, rtol=0, atol=1e-12)


def test_state_x0_is_exact_when_the_model_output_is_constant():
    c = torch.linspace(-1, 1, 8, dtype=torch.float64)
    model = Counting(lambda x, t: c.expand_as(x).clone())
    full, _ = draw(model, Full(), sampler="ddim")
    fast, info = draw(model, LTC(state="x0"), sampler="ddim")
    assert info.nfe == 13
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m", "dpmpp_3m"])
@pytest.mark.parametrize("schedule", [VP, FLOW], ids=["vp", "flow"])
def test_every_deterministic_sampler_runs_with_the_planned_nfe(sampler, schedule):
    gm = GaussianMixture.random(schedule, dim=8, seed=2)
    full, _ = draw(gm, Full(), schedule=schedule, sampler=sampler)
    fast, info = draw(gm, LTC(), schedule=schedule, sampler=sampler)
    assert info.nfe == 13 and torch.isfinite(fast).all()
    assert float((fast - full).pow(2).mean().sqrt()) < 0.5  # the same sample, approximately


def test_guidance_fuses_into_ltc_like_a_premixed_model():
    uncond = GaussianMixture.random(VP, dim=8, seed=3)
    cond = GaussianMixture.random(VP, dim=8, seed=4)
    g = 2.5

    def pair(x, t):
        B = x.shape[0] // 2
        return torch.cat([uncond(x[:B], t[:B]), cond(x[B:], t[B:])])

    def mixed(x, t):
        return uncond(x, t) + g * (cond(x, t) - uncond(x, t))

    a, info = draw(Counting(pair), LTC(), guidance_scale=g)
    b, _ = draw(Counting(mixed), LTC())
    assert info.plan.cfg and info.nfe == 13
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_samples_do_not_depend_on_the_batch():
    gm = GaussianMixture.random(VP, dim=8, seed=5)
    x = noise(batch=5)
    together, _ = draw(gm, LTC(weights=0.9), x=x, sampler="dpmpp_2m")
    for b in range(5):
        alone, _ = draw(gm, LTC(weights=0.9), x=x[b:b + 1], sampler="dpmpp_2m")
        torch.testing.assert_close(alone, together[b:b + 1], rtol=0, atol=1e-12)


def test_composes_with_tstitch_either_way():
    small, large = Counting(name="small"), Counting(name="large")
    for policy in (TStitch(0.4) | LTC(), LTC(base=TStitch(0.4))):
        small.times, large.times = [], []
        _, info = draw([small, large], policy)
        models = info.plan.models
        assert models[:9] == (0,) * 7 + (EXTRAPOLATE, 1)
        assert [i for i, m in enumerate(models) if m == EXTRAPOLATE] == [7, 9, 11, 13, 15, 17, 19]
        assert info.nfe_per_model == [7, 6] and len(small.times) == 7 and len(large.times) == 6


def test_per_step_weights_enter_the_plan():
    grid = VP.discretize(20)
    w = np.linspace(0.5, 1.5, 7)
    a = compile_plan(grid, DDIM(), LTC(weights=w), ["x0"])
    b = compile_plan(grid, DDIM(), LTC(), ["x0"])
    assert a.fingerprint != b.fingerprint and a.nfe == b.nfe == 13


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"interval": (0.25, 1.5)}, "interval end"),
    ({"interval": (-1, 10)}, "interval start"),
    ({"interval": (0.5, 0.5)}, None),
    ({"every": 1}, "every must be >= 2"),
    ({"every": 2.0}, "every must be an int"),
    ({"skip": [0, 5]}, "first step cannot be extrapolated"),
    ({"skip": [4, 5]}, "consecutive"),
    ({"progress": "time"}, "progress must be one of"),
    ({"state": "eps"}, "state must be one of"),
    ({"phase": "odd"}, "phase must be one of"),
    ({"skip": [3, 5], "phase": "interval"}, "give either skip .* or phase .*phase='interval' would be ignored"),
    ({"weights": "x"}, "weights"),
    ({"interval": 0.25}, "interval must be a pair"),
    ({"interval": (12, 10)}, "start must be below end"),
])
def test_bad_constructor_arguments_are_clear_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        policy = LTC(**kwargs)
        policy.decide(VP.discretize(20), DDIM(), 1)


@pytest.mark.parametrize("policy, match", [
    (LTC(interval=(0, 30)), "outside the 20-step trajectory"),
    (LTC(interval=(15, 16)), "too short for one extrapolation"),
    (LTC(skip=[3, 25]), "outside the 20 steps"),
    (LTC(weights=[1.0, 1.0]), "2 weights but the plan extrapolates 7"),
    (LTC(state="x0", skip=[1, 5]), "too early"),
    (LTC(state="x", progress="lambda", skip=[5, 19]), "progress 'lambda' is not finite"),
])
def test_plans_the_policy_cannot_make_are_clear_errors(policy, match):
    with pytest.raises(ValueError, match=match):
        compile_plan(VP.discretize(20), DDIM(), policy, ["x0"])


def test_stochastic_samplers_are_refused():
    with pytest.raises(ValueError, match="deterministic sampler"):
        draw(Counting(), LTC(), sampler=DDIM(eta=0.5), generator=torch.Generator().manual_seed(0))


def test_x_over_alpha_needs_a_positive_alpha_before_the_step():
    with pytest.raises(ValueError, match="alpha at point 0"):
        compile_plan(FLOW.discretize(20), get_sampler("euler"), LTC(state="x/alpha", skip=[1]), ["x0"])


def test_base_policy_must_call_a_model_every_step():
    with pytest.raises(ValueError, match="base must not itself be an LTC"):
        LTC(base=LTC())
