"""ltc.optimize: the grid space (ordering, range, locality), restartable runs, the call budget, the
judge's choice and refusal, the file format, and the plans in every executor."""
import numpy as np
import pytest
import torch

import ltc
from ltc.executor import graph as graphs
from ltc.executor.graph import RecordedGraphs
from ltc.io import read_checked, write_checked
from ltc.plan_search import OptimizedPlan
from ltc.plan_search.result import FILE_FORMAT
from ltc.plan_search.runs import Runs, calls_from
from ltc.plan_search.space import GridSpace, hand_grids, least_noisy_time
from ltc.policies import LTC, Full
from ltc.samplers import DPMSolverPP, get_sampler
from ltc.zoo.oracles import GaussianMixture, exact_endpoint

SCHEDULES = {"vp-trailing": lambda: ltc.Schedule.vp("scaled_linear", spacing="trailing"),
             "vp-leading-last": lambda: ltc.Schedule.vp("linear", spacing="leading", final="last"),
             "flow-shift3": lambda: ltc.Schedule.flow(3.0),
             "logsnr-zero": lambda: ltc.Schedule.log_snr(-5.0, 5.0),
             "logsnr-keep-flow": lambda: ltc.Schedule.log_snr(-4.0, 6.0, family="flow", final="keep")}


def space_of(name, steps=7, nfe=5, times="continuous"):
    schedule = SCHEDULES[name]()
    return GridSpace(schedule, DPMSolverPP(2).grid(schedule, nfe), steps, times)


def noises(n=32, dim=16, seed=1):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def oracle(schedule, dim=16):
    return GaussianMixture.random(schedule, dim=dim, components=4, std=0.3)


@pytest.fixture(scope="module")
def vp_result():
    """One search on a VP oracle at nfe 6 (accepted), with its oracle and noises."""
    schedule = ltc.Schedule.vp("scaled_linear", spacing="trailing")
    orc = oracle(schedule)
    x = noises(48)
    res = ltc.optimize(orc.as_prediction("eps"), schedule, nfe=6, noise=x, verbose=False)
    return res, orc, x, schedule


# -- the space ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_parameter_vector_gives_an_ordered_grid_inside_the_range_with_the_anchor_ends(name):
    space = space_of(name)
    sign = np.sign(space.t_lo - space.t0)
    rng = np.random.default_rng(0)
    for theta in [rng.normal(0, 3, space.size) for _ in range(20)] + [np.full(space.size, 30.0),
                                                                       np.full(space.size, -30.0)]:
        try:
            g = space.grid(theta)
        except ValueError:  # only where float64 makes two extreme points coincide
            assert np.max(np.abs(theta)) >= 20
            continue
        assert g.steps == space.steps and g.family == space.anchor.family
        assert np.all(np.diff(g.t[:-1]) * sign > 0)
        assert (g.t[-2] - space.t_lo) * sign <= 0
        for field in ("t", "alpha", "sigma"):
            assert getattr(g, field)[0] == getattr(space.anchor, field)[0]
            assert getattr(g, field)[-1] == getattr(space.anchor, field)[-1]
        alpha, sigma = space.schedule.noise_at(torch.tensor(g.t[1:-1]))
        np.testing.assert_allclose(g.alpha[1:-1], alpha.numpy(), rtol=1e-12)
        np.testing.assert_allclose(g.sigma[1:-1], sigma.numpy(), rtol=1e-12)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_a_parameter_moves_only_its_point_and_the_later_ones(name):
    space = space_of(name)
    theta = np.random.default_rng(1).normal(0, 1, space.size)
    base = space.grid(theta)
    for k in range(space.size):
        moved = theta.copy()
        moved[k] += 0.5
        g = space.grid(moved)
        np.testing.assert_array_equal(g.t[: k + 1], base.t[: k + 1])
        assert np.all(g.t[k + 1:-1] != base.t[k + 1:-1])


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_parameters_of_a_grid_give_the_grid_back(name):
    space = space_of(name)
    g = space.grid(np.random.default_rng(2).normal(0, 1, space.size))
    np.testing.assert_allclose(space.grid(space.theta_of(g)).t, g.t, rtol=1e-9, atol=1e-9)


def test_the_least_noisy_time_of_each_schedule():
    assert least_noisy_time(SCHEDULES["vp-trailing"](), space_of("vp-trailing").anchor) == 0.0  # training step 0
    assert least_noisy_time(SCHEDULES["flow-shift3"](), space_of("flow-shift3").anchor) == 0.0
    assert least_noisy_time(SCHEDULES["logsnr-zero"](), space_of("logsnr-zero").anchor) == 5.0
    for name in ("logsnr-keep-flow", "vp-leading-last"):  # the end is a model time: interior points stay before it
        space = space_of(name)
        assert abs(space.t_lo - space.anchor.t[-1]) < 1e-3
        assert space.schedule.noise_at(torch.tensor([space.t_lo], dtype=torch.float64))[1].item() > space.anchor.sigma[-1]


def test_interior_times_are_checked():
    space = space_of("vp-trailing", steps=4)
    with pytest.raises(ValueError, match="strictly ordered"):
        space.grid_at(np.array([500.0, 600.0, 100.0]))
    with pytest.raises(ValueError, match="strictly ordered"):
        space.grid_at(np.array([1200.0, 600.0, 100.0]))
    space.grid_at(np.array([700.0, 300.0, 0.0]))  # training step 0 itself: the clean end lies beyond it
    flow = space_of("flow-shift3", steps=4)
    with pytest.raises(ValueError, match="strictly ordered"):
        flow.grid_at(np.array([700.0, 300.0, 0.0]))  # sigma = 0 is the end, not an interior point
    integer = space_of("vp-trailing", steps=4, times="integer")
    with pytest.raises(ValueError, match="integer"):
        integer.grid_at(np.array([700.5, 300.0, 10.0]))
    with pytest.raises(ValueError, match="log_snr"):
        space_of("logsnr-zero", times="integer")


def test_hand_grids_are_uniform_in_log_snr_and_karras_and_the_schedule_rules():
    space = space_of("vp-trailing", steps=8)
    grids = hand_grids(space, ["dpm_solver"])
    assert {"logsnr", "karras"} <= set(grids) and any(k.startswith("rule:") for k in grids)
    lam = grids["logsnr"].log_snr[:-1]  # N points from t_0 to training step 0, then the clean end
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-3)
    k = (grids["karras"].sigma / grids["karras"].alpha)[:-1] ** (1 / 7)
    np.testing.assert_allclose(np.diff(k), np.diff(k)[0], rtol=1e-3)
    assert "logsnr" not in hand_grids(space_of("flow-shift3"), ["euler"])  # a flow grid starts at alpha = 0


# -- runs and budget ---------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", [Full(), LTC(skip=[3, 5], weights=[0.9, 1.2])])
def test_a_run_restarted_at_any_step_equals_the_whole_run(policy):
    schedule = SCHEDULES["vp-trailing"]()
    orc = oracle(schedule)
    model = ltc.models.as_models(orc.as_prediction("eps"), None)
    plan = ltc.compile_plan(DPMSolverPP(3).grid(schedule, 8), DPMSolverPP(3), policy, ["eps"])
    runs = Runs(model, noises(4), ops=ltc.ops.resolve(None, "cpu")[1])
    whole, states = runs.run(plan, keep=True)
    assert runs.calls == plan.nfe
    for s in range(plan.steps):
        before = runs.calls
        x, _ = runs.run(plan, states[s])
        assert runs.calls - before == calls_from(plan, s)
        torch.testing.assert_close(x, whole, rtol=0, atol=0)


@pytest.mark.parametrize("nfe", [4, 10])
def test_the_search_stays_within_max_calls_counted_by_the_model(nfe):
    schedule = SCHEDULES["vp-trailing"]()
    orc = oracle(schedule)
    calls = []
    inner = orc.as_prediction("eps")
    model = ltc.Model(lambda x, t, **kw: calls.append(1) or inner.fn(x, t), "eps", name="counted")
    res = ltc.optimize(model, schedule, nfe=nfe, noise=noises(32), verbose=False, break_even=False)
    assert len(calls) == res.cost["calls"] <= 100 * nfe == res.cost["max_calls"]


def test_max_calls_below_the_fixed_cost_is_refused_before_any_model_call():
    schedule = SCHEDULES["vp-trailing"]()
    calls = []
    inner = oracle(schedule).as_prediction("eps")
    model = ltc.Model(lambda x, t, **kw: calls.append(1) or inner.fn(x, t), "eps", name="counted")
    with pytest.raises(ValueError, match="max_calls=50 is below the search's fixed cost"):
        ltc.optimize(model, schedule, nfe=6, noise=noises(32), max_calls=50, verbose=False)
    assert not calls


@pytest.mark.parametrize("kwargs, match", [
    ({"nfe": 1}, "nfe must be an int >= 2"), ({"nfe": 6.0}, "nfe must be an int"),
    ({"samplers": ["euler_a"]}, "samplers: .* stochastic"), ({"samplers": ["heun"]}, "samplers: .* two-stage"),
    ({"samplers": []}, "samplers is empty"), ({"samplers": ["ddim", "ddim"]}, "repeats"),
    ({"times": "fractional"}, "times must be one of"), ({"optimize_top": 0}, "optimize_top"),
    ({"ltc_skips": 0}, "ltc_skips"), ({"state": "eps"}, "state must be one of"), ({"ridge": -1.0}, "ridge"),
    ({"max_calls": 0}, "max_calls must be a positive int"), ({"ltc": 1}, "ltc and break_even must be"),
])
def test_bad_arguments_are_refused_by_name(kwargs, match):
    schedule = SCHEDULES["vp-trailing"]()
    args = {"nfe": 6, "noise": noises(16), "verbose": False, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        ltc.optimize(oracle(schedule).as_prediction("eps"), schedule, **args)


def test_an_explicit_schedule_is_refused():
    g = ltc.Schedule.vp("linear").discretize(6)
    schedule = ltc.Schedule.explicit(g.t, g.alpha, g.sigma)
    with pytest.raises(TypeError, match="grids of any step count"):
        ltc.optimize(oracle(ltc.Schedule.vp("linear")).as_prediction("eps"), schedule, nfe=6, noise=noises(16))


# -- the choice -------------------------------------------------------------------------------------
def test_an_accepted_plan_beats_the_best_hand_plan_against_the_exact_endpoint(vp_result):
    res, orc, x, schedule = vp_result
    assert res.accepted and res.kind in ("grid", "ltc_hand", "ltc_grid")
    held = noises(64, seed=7)  # noises neither the fit nor the judge saw
    model = orc.as_prediction("eps")
    exact = exact_endpoint(orc, held, res.grid, steps=300)
    ours = res.sample(model, noise=held, progress=False)
    d = res.report["decision"]
    best = next(r for r in res.report["rows"] if r["name"] == d["best_plain"])
    smp = get_sampler(best["spec"]["sampler"]["name"])
    hand_plan = next(e for e in res.report["screening"] if f"{e['sampler']}, {e['grid']} grid" == d["best_plain"])
    anchor = DPMSolverPP(2).grid(schedule, 6)
    grid = hand_grids(GridSpace(schedule, anchor, 6), [smp.grid_rule])[hand_plan["grid"]]
    hand = ltc.sample(model, ltc.Schedule.explicit(grid.t, grid.alpha, grid.sigma,
                                                   alphas_cumprod=schedule.alphas_cumprod),
                      sampler=smp, steps=None, noise=held, progress=False)
    err = lambda y: float(((y - exact) ** 2).mean(1).sqrt().mean())  # noqa: E731
    assert err(ours) < 0.75 * err(hand)


def test_the_report_holds_every_candidate_against_every_plain_row(vp_result):
    res = vp_result[0]
    rep = res.report
    plain = [r for r in rep["rows"] if r["kind"] == "plain"]
    assert len(plain) == 4 and len(rep["candidates"]) >= 3
    chosen = min((v for v in rep["candidates"] if v["accepted"]), key=lambda v: v["mean"])
    assert rep["decision"]["chosen"] == chosen["name"]
    assert all(v["lower"] <= v["margin"] for v in rep["candidates"])
    assert res.cost["calls"] <= res.cost["max_calls"] and res.cost["wall_s"] > 0
    be = res.break_even
    assert be["plain_nfe_needed"] is None or be["plain_nfe_needed"] > 6


def test_without_optimisation_steps_the_search_refuses_and_returns_the_best_hand_plan():
    schedule = SCHEDULES["vp-trailing"]()
    orc = oracle(schedule)
    res = ltc.optimize(orc.as_prediction("eps"), schedule, nfe=6, noise=noises(32), max_iter=0, verbose=False)
    assert not res.accepted and res.kind == "plain" and not len(res.skip)
    plain = [r for r in res.report["rows"] if r["kind"] == "plain"]
    best = min(plain, key=lambda r: r["mean"])
    assert res.report["decision"]["chosen"] == best["name"]
    assert not any(v["accepted"] for v in res.report["candidates"])
    assert "REFUSED" in res.summary()


def test_too_few_judged_noises_refuse_whatever_the_numbers():
    schedule = SCHEDULES["vp-trailing"]()
    res = ltc.optimize(oracle(schedule).as_prediction("eps"), schedule, nfe=4, noise=noises(12), verbose=False)
    assert not res.accepted
    assert {v["verdict"] for v in res.report["candidates"]} == {"too few noises"}


def test_integer_times_feed_the_model_only_integer_times():
    schedule = ltc.Schedule.vp("scaled_linear", spacing="leading")
    inner = oracle(schedule).as_prediction("eps")
    seen = []
    model = ltc.Model(lambda x, t, **kw: seen.append(t.clone()) or inner.fn(x, t), "eps", name="integer-only")
    res = ltc.optimize(model, schedule, nfe=5, noise=noises(32), times="integer", verbose=False)
    t = torch.cat(seen)
    assert torch.equal(t, t.round()) and res.times == "integer"
    assert np.array_equal(res.grid.t[1:-1], np.round(res.grid.t[1:-1]))
    assert "integer model times" in res.summary()


def test_the_caller_noise_is_not_modified(vp_result):
    x = vp_result[2]
    torch.testing.assert_close(x, noises(48), rtol=0, atol=0)


# -- file and executors -----------------------------------------------------------------------------
def test_save_load_round_trip_samples_the_same(vp_result, tmp_path):
    res, orc, x, _ = vp_result
    path = tmp_path / "plan.safetensors"
    res.save(path)
    back = OptimizedPlan.load(path)
    assert back.fingerprint == res.fingerprint and back.kind == res.kind and back.nfe == res.nfe
    np.testing.assert_array_equal(back.grid.t, res.grid.t)
    np.testing.assert_array_equal(back.weights, res.weights)
    assert back.report == res.report and back.fitted_on == res.fitted_on
    model = orc.as_prediction("eps")
    torch.testing.assert_close(back.sample(model, noise=x[:4], progress=False),
                               res.sample(model, noise=x[:4], progress=False), rtol=0, atol=0)


def test_a_changed_byte_or_a_forged_field_is_refused(vp_result, tmp_path):
    res = vp_result[0]
    path = tmp_path / "plan.safetensors"
    res.save(path)
    data = bytearray(path.read_bytes())
    data[-9] ^= 1
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        OptimizedPlan.load(bad)
    tensors, meta = read_checked(path, FILE_FORMAT)
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "content_sha256")}
    for key, value, match in (("fingerprint", "0" * 64, "fingerprint"), ("accepted", "false", "contradicts"),
                              ("sampler", '{"name": "ddim", "eta": 7}', "sampler")):
        write_checked(bad, tensors, {**meta, key: value}, FILE_FORMAT)  # consistent digests, forged contents
        with pytest.raises(ValueError, match=match):
            OptimizedPlan.load(bad)
    with pytest.raises(ValueError, match="nfe"):
        OptimizedPlan(**{**{f: getattr(res, f) for f in res.__dataclass_fields__}, "nfe": res.nfe + 1})


def test_a_run_unlike_the_fit_is_refused(vp_result):
    res, orc, x, _ = vp_result
    with pytest.raises(ValueError, match="shape"):
        res.sample(orc.as_prediction("eps"), noise=torch.zeros(2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="guidance_scale"):
        res.sample([orc.as_prediction("eps")], noise=x[:2], guidance_scale=2.0)


def test_the_plan_runs_in_ltc_sample_the_stepper_and_the_graph_walk(vp_result):
    res, orc, x, _ = vp_result
    model = orc.as_prediction("eps")
    x = x[:4].float()
    eager = ltc.sample(model, res.schedule, res.policy, sampler=res.sampler(), steps=None, noise=x, progress=False)
    st = ltc.Stepper(res.schedule, res.policy, sampler=res.sampler(), noise=x, predictions=[model])
    while not st.done:
        req = st.request()
        st.step(model(req.x, req.t))
    torch.testing.assert_close(st.x, eager, rtol=0, atol=0)
    with graphs.use_backend(RecordedGraphs()):
        graphed = ltc.sample(model, res.schedule, res.policy, sampler=res.sampler(), steps=None, noise=x,
                             graph=True, progress=False)
    torch.testing.assert_close(graphed, eager, rtol=0, atol=0)
    plan = res.plan(["eps"])
    assert plan.nfe == res.nfe and plan.steps == res.grid.steps


def test_every_judged_row_can_be_run_again_and_gives_its_judged_endpoints(vp_result):
    res, orc, x, _ = vp_result
    model = orc.as_prediction("eps")
    rows = res.rows()
    assert {r["kind"] for r in rows} >= {"plain", "grid"} and len(rows) == len(res.report["rows"])
    chosen = next(r for r in rows if r["name"] == res.report["decision"]["chosen"])
    assert np.array_equal(chosen["grid"].t, res.grid.t)
    a = ltc.sample(model, res.schedule_of(chosen["grid"]), chosen["policy"], sampler=chosen["sampler"], steps=None,
                   noise=x[:4], progress=False)
    torch.testing.assert_close(a, res.sample(model, noise=x[:4], progress=False), rtol=0, atol=0)


def test_guidance_and_per_sample_conditioning_follow_their_noises():
    schedule = SCHEDULES["vp-trailing"]()
    inner = oracle(schedule).as_prediction("eps")
    seen = []

    def guided(x, t, y):
        assert y.shape[0] == x.shape[0]  # 2B rows under guidance, the split's rows of the caller's 2B
        seen.append(tuple(y.tolist()))  # values, not tensors: the plan fingerprints the tensors a model reads
        return inner.fn(x, t) * (1 + 0.01 * y[:, None])

    model = ltc.Model(guided, "eps", name="guided")
    x = noises(16)
    y = torch.cat([torch.zeros(16), torch.arange(16.0)]).double()  # unconditional half first
    res = ltc.optimize(model, schedule, nfe=4, noise=x, model_kwargs={"y": y}, guidance_scale=1.5, verbose=False)
    assert res.fitted_on["guidance_scale"] == 1.5
    judged = {v[len(v) // 2:] for v in seen if len(v) == 16}
    assert tuple(range(8, 16)) in judged and tuple(range(8)) in judged  # fit rows 0..7, judged rows 8..15
    out = res.sample(model, noise=x[:4], model_kwargs={"y": torch.cat([y[:4], y[16:20]])}, guidance_scale=1.5,
                     progress=False)
    assert out.shape == (4, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("name, prediction, times", [("flow-shift3", "flow", "continuous"),
                                                     ("logsnr-zero", "eps", "continuous"),
                                                     ("vp-leading-last", "eps", "integer")])
def test_plans_of_every_schedule_kind_round_trip_through_the_file(name, prediction, times, tmp_path):
    schedule = SCHEDULES[name]()
    model = oracle(schedule).as_prediction(prediction)
    x = noises(16)
    res = ltc.optimize(model, schedule, nfe=4, noise=x, times=times, verbose=False, break_even=False)
    path = tmp_path / "plan.safetensors"
    res.save(path)
    back = OptimizedPlan.load(path)
    assert back.fingerprint == res.fingerprint and back.times == times
    torch.testing.assert_close(back.sample(model, noise=x[:3], progress=False),
                               res.sample(model, noise=x[:3], progress=False), rtol=0, atol=0)


def test_a_hand_made_plan_is_checked_where_it_is_built(vp_result):
    res = vp_result[0]
    fields = {f: getattr(res, f) for f in res.__dataclass_fields__}
    with pytest.raises(ValueError, match="kind must be one of"):
        OptimizedPlan(**{**fields, "kind": "best"})
    with pytest.raises(ValueError, match="one entry per extrapolated step"):
        OptimizedPlan(**{**fields, "skip": [3], "weights": [1.0, 2.0]})


def test_given_held_out_noises_are_the_judged_ones():
    schedule = SCHEDULES["vp-trailing"]()
    res = ltc.optimize(oracle(schedule).as_prediction("eps"), schedule, nfe=4, noise=noises(12),
                       held_out=noises(10, seed=5), verbose=False, break_even=False)
    assert res.validation == {"held_out": "given", "fit_noises": 12, "judged_noises": 10}
    assert all(len(r["d"]) == 10 for r in res.report["rows"])
    with pytest.raises(ValueError, match="held_out must have the per-sample shape"):
        ltc.optimize(oracle(schedule).as_prediction("eps"), schedule, nfe=4, noise=noises(12),
                     held_out=torch.zeros(4, 3, dtype=torch.float64), verbose=False)
