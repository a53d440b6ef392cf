"""LTC calibration: the closed-form fit, the objectives against exact endpoints, the refusal rule on
held-out noises (each verdict checked against the exact endpoints), the calibration file (round trip
and every kind of bad file), cost accounting and ltc.calibration.auto (the best candidate, LTC or
plain).  The judge's statistics on synthetic rows: tests/test_calibration_judge.py."""
import json
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import ltc
from ltc.io import content_digest
from ltc.zoo.oracles import GaussianMixture, exact_endpoint
from ltc.plan import compile_plan
from ltc.calibration import auto
from ltc.policies import LTC, Full
from ltc.samplers import DDIM, get_sampler

VP = ltc.Schedule.vp("scaled_linear", spacing="trailing")
FLOW3 = ltc.Schedule.flow(3.0)
FLOW = ltc.Schedule.flow(1.0)
DIM, N = 16, 20


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster


def noises(seed, batch):
    return torch.randn(batch, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


CAL, HELD = noises(0, 32), noises(1, 64)


def quiet_calibrate(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ltc.calibrate(*args, verbose=False, **kwargs)


def per_sample(x, ref):
    return ((x - ref) ** 2).mean(1).sqrt()


def held_out_error(model, schedule, sampler, policy, exact, steps=N):
    x = ltc.sample(model, schedule, policy, sampler=sampler, steps=steps, noise=HELD, progress=False)
    return float(((x - exact) ** 2).mean().sqrt())


@pytest.fixture(scope="module")
def vp_case():
    gm = GaussianMixture.random(VP, dim=DIM, seed=0)
    exact = exact_endpoint(gm, HELD, VP.discretize(N), steps=400)
    step = quiet_calibrate(gm, VP, LTC(state="x"), sampler="ddim", steps=N, noise=CAL)
    return gm, exact, step


@pytest.fixture(scope="module")
def flow_case():
    gm = GaussianMixture.random(FLOW3, dim=DIM, seed=0)
    exact = exact_endpoint(gm, HELD, FLOW3.discretize(N), steps=400)
    # all of CAL fits (held_out given, not used without a report)
    step = quiet_calibrate(gm, FLOW3, LTC(state="x"), sampler="euler", steps=N, noise=CAL, held_out=HELD,
                           report=False)
    traj = quiet_calibrate(gm, FLOW3, LTC(state="x"), sampler="euler", steps=N, noise=CAL, held_out=HELD,
                           objective="trajectory", report=False)
    return gm, exact, step, traj


# -- the one-step fit ------------------------------------------------------------------------
def test_closed_form_weight_equals_the_brute_force_minimiser(vp_case):
    gm, _, cal = vp_case
    states = []
    ltc.sample(gm, VP, Full(), sampler="ddim", steps=N, noise=CAL, progress=False,
               callback=lambda d: states.append(d["x_next"].clone()))
    xs = [CAL] + states                      # the path before the first skip is the plain path
    xs = [x[:16] for x in xs]                # the first half of the noises fit (the last half judge)
    i, s = int(cal.steps[0]), VP.discretize(N).sigma
    gamma = (s[i + 1] - s[i]) / (s[i] - s[i - 1])
    d = gamma * (xs[i] - xs[i - 1])
    grid_w = np.linspace(0.0, 2.0, 20001)
    losses = [float(((xs[i] + w * d - xs[i + 1]) ** 2).sum()) for w in grid_w[::100]]
    coarse = grid_w[::100][int(np.argmin(losses))]
    fine = grid_w[(grid_w > coarse - 0.01) & (grid_w < coarse + 0.01)]
    best = fine[int(np.argmin([float(((xs[i] + w * d - xs[i + 1]) ** 2).sum()) for w in fine]))]
    assert abs(cal.weights_fit[0] - best) <= 1e-4
    assert cal.gamma[0] == pytest.approx(gamma)


def test_weights_are_one_and_the_fit_exact_for_a_trajectory_linear_in_sigma():
    c = torch.linspace(-1, 1, DIM, dtype=torch.float64)
    const = ltc.Model(lambda x, t: c.expand_as(x).clone(), "x0", "constant")
    cal = quiet_calibrate(const, FLOW3, LTC(state="x"), sampler="euler", steps=N, noise=CAL, report=False)
    np.testing.assert_allclose(cal.weights, 1.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cal.w_std, 0.0, atol=1e-6)
    assert np.all(cal.residual < 1e-20)
    np.testing.assert_allclose(cal.coherence, 1.0, atol=1e-12)


def test_weights_are_clamped_to_the_range():
    gm = GaussianMixture.random(VP, dim=DIM, seed=0)
    cal = quiet_calibrate(gm, VP, LTC(state="x"), sampler="ddim", steps=N, noise=CAL, clamp=(0.95, 0.97), report=False)
    assert np.all((cal.weights >= 0.95) & (cal.weights <= 0.97)) and np.any(cal.weights == 0.95)
    assert np.array_equal(cal.weights, cal.weights_fit)      # no report: nothing chose other weights


def test_diagnostics_have_one_entry_per_skip_and_a_coherence_curve(vp_case):
    cal = vp_case[2]
    K = len(cal.steps)
    assert cal.steps.tolist() == [7, 9, 11, 13, 15, 17, 19]          # the reference code's steps
    assert cal.structure["phase"] == "reference"
    for name in ("weights", "weights_fit", "weights_step", "gamma", "residual", "w_mean", "w_std"):
        assert getattr(cal, name).shape == (K,), name
    assert cal.coherence.shape == (N - 1,) and np.all(np.abs(cal.coherence) <= 1 + 1e-12)
    assert np.all(cal.w_std > 0) and np.all(cal.residual < 0.1)


# -- objectives against exact endpoints --------------------------------------------------------
def test_step_objective_beats_the_plain_sampler_at_the_same_nfe_on_vp_ddim(vp_case):
    gm, exact, cal = vp_case
    assert cal.nfe == 13
    ltc_error = held_out_error(gm, VP, "ddim", cal.policy(), exact)
    plain_error = held_out_error(gm, VP, "ddim", Full(), exact, steps=cal.nfe)
    assert ltc_error < 0.85 * plain_error


def test_trajectory_objective_beats_the_step_objective_on_flow_shift_3_euler(flow_case):
    gm, exact, step, traj = flow_case
    assert traj.fit["objective"] == "trajectory" and traj.fit["accepted_steps"] >= 1
    assert traj.fit["loss"][-1] < traj.fit["loss"][0]
    step_error = held_out_error(gm, FLOW3, "euler", step.policy(), exact)
    traj_error = held_out_error(gm, FLOW3, "euler", traj.policy(), exact)
    assert traj_error < 0.95 * step_error
    np.testing.assert_array_equal(traj.weights_step, step.weights)


def test_trajectory_cost_counts_every_model_call():
    gm = GaussianMixture.random(FLOW3, dim=DIM, seed=0)
    calls = []
    model = ltc.Model(lambda x, t: calls.append(1) or gm(x, t), "x0", "counted")
    cal = quiet_calibrate(model, FLOW3, LTC(), sampler="euler", steps=12, noise=CAL[:8], objective="trajectory",
                          teacher="full", max_iter=1, report=False)
    assert cal.cost["full_run"] == 12 and cal.cost["fit_walk"] == 12   # NFE 9 + 3 skips
    assert cal.cost["total"] == len(calls)


def test_a_teacher_plan_must_share_the_first_and_last_points():
    gm = GaussianMixture.random(VP, dim=DIM, seed=0)
    other = compile_plan(ltc.Schedule.vp("scaled_linear").discretize(40), get_sampler("dpmpp_2m"), Full(), ["x0"])
    with pytest.raises(ValueError, match="teacher plan must start and end"):
        ltc.calibrate(gm, VP, LTC(), sampler="ddim", steps=N, noise=CAL, objective="trajectory", teacher=other)
    with pytest.raises(ValueError, match="teacher must be one of"):
        ltc.calibrate(gm, VP, LTC(), sampler="ddim", steps=N, noise=CAL, teacher="heun")


# -- report and refusal rule ---------------------------------------------------------------------
def mean_error(x, exact):
    return float(per_sample(x, exact).mean())


def plain_endpoint(model, schedule, spec, sampler, noise=HELD):
    """The endpoints of a report's plain row ``spec`` (the recommended plain plan) of an LTC calibration
    with ``sampler`` (whose grid the "ltc" rows' points index)."""
    grid = get_sampler(sampler).grid(schedule, N)
    if spec["grid"] == "own":
        return ltc.sample(model, schedule, Full(), sampler=spec["sampler"], steps=spec["steps"], noise=noise,
                          progress=False)
    pts = spec["points"]
    sub = ltc.Schedule.explicit(grid.t[pts], grid.alpha[pts], grid.sigma[pts], family=grid.family)
    return ltc.sample(model, sub, Full(), sampler=spec["sampler"], noise=noise, progress=False)


def test_an_accepted_calibration_beats_the_best_plain_plan_on_exact_endpoints(vp_case):
    gm, exact, cal = vp_case
    d = cal.report["decision"]
    assert cal.accepted and cal.verdict == "accepted" and d["lower"] > 0 and d["margin"] > d["judge_bound"]
    assert "LTC ACCEPTED" in cal.summary() and cal.recommended() is None
    fast = ltc.sample(gm, VP, cal.policy(), sampler="ddim", steps=N, noise=HELD, progress=False)
    assert mean_error(fast, exact) < mean_error(plain_endpoint(gm, VP, d["best_plain"], "ddim"), exact)


def test_a_refused_calibration_names_a_plain_plan_that_is_better_on_exact_endpoints():
    gm = GaussianMixture.random(FLOW, dim=DIM, seed=0)             # flow + DPM-Solver++(2M) + state x: LTC loses
    exact = exact_endpoint(gm, HELD, get_sampler("dpmpp_2m").grid(FLOW, N), steps=400)
    cal = quiet_calibrate(gm, FLOW, LTC(state="x"), sampler="dpmpp_2m", steps=N, noise=CAL)
    assert cal.accepted is False and cal.verdict == "plain better" and cal.report["decision"]["upper"] < 0
    assert "LTC REFUSED (the plain plan is better)" in cal.summary()
    fast = ltc.sample(gm, FLOW, cal.policy(), sampler="dpmpp_2m", steps=N, noise=HELD, progress=False)
    assert mean_error(plain_endpoint(gm, FLOW, cal.recommended(), "dpmpp_2m"), exact) < mean_error(fast, exact)


def test_every_plain_row_is_what_its_recommended_plan_samples():
    # flow shift 3: Euler's grid and DPM-Solver++(2M)'s own grid differ (Sampler.grid_rule)
    from ltc.calibration.fit import Session
    gm = GaussianMixture.random(FLOW3, dim=DIM, seed=0)
    session = Session(gm, FLOW3, sampler="euler", steps=N, noise=CAL)
    cal = session.calibrate(LTC(), report=True)
    judge = session.runners["held_out"].run_plan(session.ladder(Full())[0])
    plain = [r for r in cal.report["rows"] if r["kind"] == "plain"]
    assert len(plain) == 4
    for r in plain:
        x = plain_endpoint(gm, FLOW3, r["spec"], "euler", noise=CAL[16:])
        assert float(per_sample(x, judge).mean()) == pytest.approx(r["mean"], rel=1e-9), r["name"]


def test_exact_ties_are_a_refusal_that_says_it_cannot_tell():
    # a constant clean estimate: every row, LTC and plain, reaches the exact endpoint (distance 0)
    c = torch.linspace(-1, 1, DIM, dtype=torch.float64)
    const = ltc.Model(lambda x, t: c.expand_as(x).clone(), "x0", "constant")
    cal = quiet_calibrate(const, FLOW3, LTC(state="x"), sampler="euler", steps=N, noise=CAL)
    rows = cal.report["rows"]
    assert max(r["mean"] for r in rows if r["kind"] != "full") < 1e-12
    assert cal.accepted is False and cal.verdict == "cannot tell"
    assert "LTC REFUSED (cannot tell)" in cal.summary()


def test_a_two_noise_calibration_is_refused_for_too_few_noises_with_a_warning():
    gm = GaussianMixture.random(VP, dim=DIM, seed=0)
    with pytest.warns(UserWarning, match=r"LTC REFUSED \(too few noises\): 1 held-out noises, the judge's interval "
                                         r"needs at least 8 \(calibrate with at least 16 noises"):
        cal = ltc.calibrate(gm, VP, LTC(state="x"), sampler="ddim", steps=N, noise=CAL[:2], verbose=False)
    assert cal.verdict == "too few noises" and cal.validation == {"held_out": "split", "fit_noises": 1,
                                                                  "judged_noises": 1, "judged_rows": [1, 2]}
    with pytest.raises(ValueError, match=r"report=True judges the fit on noises it did not see, but there are none: "
                                         r"1 calibration noise\(s\)"):
        ltc.calibrate(gm, VP, LTC(state="x"), sampler="ddim", steps=N, noise=CAL[:1], verbose=False)
    calls = []
    counted = ltc.Model(lambda x, t: calls.append(1) or gm(x, t), "x0", "counted")
    with pytest.raises(ValueError, match="no held_out"):
        auto(counted, VP, steps=N, nfe=13, sampler="ddim", noise=CAL[:1], verbose=False)
    assert calls == []                                                   # refused before any model call


def test_w_equal_1_is_chosen_and_said_when_it_beats_the_calibrated_weights():
    gm = GaussianMixture.random(VP, dim=DIM, seed=0)
    cal = quiet_calibrate(gm, VP, LTC(state="x"), sampler="ddim", steps=N, noise=CAL, clamp=(0.0, 0.0))
    d = cal.report["decision"]
    assert d["weights"] == "w = 1" and d["w1_mean"] <= d["calibrated_mean"]
    assert np.all(cal.weights == 1.0) and np.all(cal.weights_fit == 0.0)
    assert "this calibration uses w = 1" in cal.summary() and "fitted weights (not used)" in cal.summary()
    ones = ltc.sample(gm, VP, LTC(state="x"), sampler="ddim", steps=N, noise=HELD, progress=False)
    assert torch.equal(ltc.sample(gm, VP, cal.policy(), sampler="ddim", steps=N, noise=HELD, progress=False), ones)


def test_calibrate_says_plainly_when_ltc_is_refused(capsys, caplog):
    gm = GaussianMixture.random(VP, dim=DIM, seed=0)
    with pytest.warns(UserWarning, match="LTC REFUSED"), caplog.at_level("INFO", logger="ltc"):
        ltc.calibrate(gm, VP, LTC(state="x"), sampler="ddim", steps=N, noise=CAL[:8], clamp=(0.0, 0.0))
    assert "LTC REFUSED" in caplog.text  # the report is logged (INFO), never printed by the library
    assert capsys.readouterr().out == ""


def test_report_rows_cover_the_equal_nfe_comparisons_and_the_ladder(vp_case):
    rep = vp_case[2].report
    names = [r["name"] for r in rep["rows"]]
    assert names == ["full 20 steps (ddim)", "ddim, 13 steps (own grid)", "ddim on the LTC grid (13 points)",
                     "dpmpp_2m, 13 steps (own grid)", "dpmpp_2m on the LTC grid (13 points)",
                     "LTC calibrated (step, state x)", "LTC w = 1", "dpmpp_2m 40 steps (ladder T)",
                     "dpmpp_2m 80 steps (ladder J')"]
    assert rep["judge"] == "dpmpp_3m 80 steps" and rep["ladder"] == ["dpmpp_3m 80 steps", "dpmpp_2m 80 steps",
                                                                     "dpmpp_2m 40 steps"]
    assert all(len(r["d"]) == 16 and [len(o) for o in r["d_ladder"]] == [16, 16] for r in rep["rows"])


def test_the_noises_are_split_and_the_fit_never_sees_the_judged_half():
    gm = GaussianMixture.random(VP, dim=DIM, seed=0)
    split = quiet_calibrate(gm, VP, LTC(state="x"), sampler="ddim", steps=N, noise=CAL[:12])
    given = quiet_calibrate(gm, VP, LTC(state="x"), sampler="ddim", steps=N, noise=CAL[:6], held_out=CAL[6:12])
    alone = quiet_calibrate(gm, VP, LTC(state="x"), sampler="ddim", steps=N, noise=CAL[:12], report=False)
    assert split.validation == {"held_out": "split", "fit_noises": 6, "judged_noises": 6, "judged_rows": [6, 12]}
    assert given.validation == {"held_out": "given", "fit_noises": 6, "judged_noises": 6}
    np.testing.assert_array_equal(split.weights_fit, given.weights_fit)      # fitted on the first 6 only
    np.testing.assert_array_equal(split.weights_fit, alone.weights_fit)      # with or without a report
    assert split.report["rows"] == given.report["rows"]                      # judged on the last 6


def test_a_trajectory_fit_is_never_judged_by_its_own_teacher():
    from ltc.calibration.fit import Session
    gm = GaussianMixture.random(VP, dim=DIM, seed=0)
    session = Session(gm, VP, sampler="ddim", steps=N, noise=CAL[:4])
    J, J2, T = session.ladder(Full())
    assert (J.steps, J2.steps, T.steps) == (80, 80, 40) and J.sampler.config()["name"] == "dpmpp_3m"
    assert T.fingerprint == session.teacher_plan(Full()).fingerprint                # the default fit target
    moved = session.ladder(Full(), fit_target=J2)                                    # a user's teacher plan
    assert (moved[0].steps, moved[2].steps) == (160, 80) and J2.fingerprint not in {p.fingerprint for p in moved[:2]}


# -- the calibration file ----------------------------------------------------------------------
def test_save_load_round_trip_reproduces_identical_samples(vp_case, tmp_path):
    gm, _, cal = vp_case
    path = tmp_path / "cal.safetensors"
    cal.save(path)
    loaded = ltc.Calibration.load(path)
    assert loaded.key == cal.key and loaded.summary() == cal.summary()
    a = ltc.sample(gm, VP, cal.policy(), sampler="ddim", steps=N, noise=HELD, progress=False)
    b = ltc.sample(gm, VP, loaded.policy(), sampler="ddim", steps=N, noise=HELD, progress=False)
    assert torch.equal(a, b)


def test_a_calibration_for_another_plan_is_a_clear_error(vp_case, tmp_path):
    gm, _, cal = vp_case
    with pytest.raises(ValueError, match="made for another plan: steps 20"):
        ltc.sample(gm, VP, cal.policy(), sampler="ddim", steps=24, noise=HELD, progress=False)
    with pytest.raises(ValueError, match="made for another plan: sampler"):
        ltc.sample(gm, VP, cal.policy(), sampler="dpmpp_2m", steps=N, noise=HELD, progress=False)
    with pytest.raises(ValueError, match="grid points differ"):
        ltc.sample(gm, ltc.Schedule.vp("linear", spacing="trailing"), cal.policy(), sampler="ddim", steps=N,
                   noise=HELD, progress=False)
    path = tmp_path / "cal.safetensors"
    cal.save(path)
    other = compile_plan(VP.discretize(N), DDIM(), LTC(state="x", every=3), ["x0"])
    with pytest.raises(ValueError, match="extrapolated steps"):
        ltc.Calibration.load(path, plan=other)
    with pytest.raises(ValueError, match="not LTC"):
        ltc.Calibration.load(path, plan=compile_plan(VP.discretize(N), DDIM(), Full(), ["x0"]))


def _rewrite(src, dst, drop=(), add=None, meta_change=None, sign=True):
    """Edit a calibration file; ``sign``: recompute its content digest (as a well-meaning tool would), so
    that the checks behind the digest are reached."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
    tensors.update(add or {})
    meta.update(meta_change or {})
    if sign and "content_sha256" not in (meta_change or {}):
        meta["content_sha256"] = content_digest(tensors, meta)
    save_file(tensors, str(dst), metadata=meta)


@pytest.mark.parametrize("change, match", [
    ({"drop": ["gamma"]}, r"missing \['gamma'\], extra \[\]"),
    ({"add": {"extra_w": torch.zeros(3, dtype=torch.float64)}}, r"missing \[\], extra \['extra_w'\]"),
    ({"meta_change": {"format": "something-else"}}, "not an ltc-calibration file"),
    ({"meta_change": {"format_version": "99"}}, "format version"),
    ({"meta_change": {"content_sha256": "0" * 64}}, "corrupted"),
    ({"meta_change": {"structure": json.dumps({"interval": [0.25, 1.0], "every": 2, "skip": None,
                                               "progress": "t", "state": "x", "base": None})}},
     "key does not match"),
    ({"meta_change": {"report": "{not json"}}, "not valid JSON"),
])
def test_bad_calibration_files_are_clear_errors(vp_case, tmp_path, change, match):
    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    vp_case[2].save(good)
    _rewrite(good, bad, **change)
    with pytest.raises(ValueError, match=match):
        ltc.Calibration.load(bad)


def test_truncated_or_corrupted_files_are_clear_errors(vp_case, tmp_path):
    path = tmp_path / "cal.safetensors"
    vp_case[2].save(path)
    blob = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ltc.Calibration.load(tmp_path / "truncated.safetensors")
    flipped = bytearray(blob)
    flipped[-5] ^= 0xFF                      # a byte of the last tensor's data
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupted"):
        ltc.Calibration.load(tmp_path / "flipped.safetensors")
    with pytest.raises(FileNotFoundError):
        ltc.Calibration.load(tmp_path / "missing.safetensors")


# -- bad arguments -----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    ({"objective": "endpoint"}, ValueError, "objective must be one of"),
    ({"clamp": (1.0, 0.0)}, ValueError, "clamp must be a pair"),
    ({"policy": Full()}, TypeError, "policy must be an ltc.policies.LTC"),
    ({"sampler": DDIM(eta=1.0)}, ValueError, "deterministic sampler"),
    ({"held_out": torch.zeros(4, DIM + 1, dtype=torch.float64)}, ValueError, "held_out must have"),
])
def test_bad_calibrate_arguments_are_clear_errors(kwargs, error, match):
    gm = GaussianMixture.random(VP, dim=DIM, seed=0)
    args = {"policy": LTC(), "sampler": "ddim", **kwargs}
    policy = args.pop("policy")
    with pytest.raises(error, match=match):
        ltc.calibrate(gm, VP, policy, steps=N, noise=CAL[:4], verbose=False, **args)


# -- ltc.calibration.auto ----------------------------------------------------------------------------------
def test_auto_candidates_have_exactly_the_requested_skips_and_rank_by_coherence():
    from ltc.calibration.auto import candidate_structures
    coherence = np.linspace(0.5, 1.0, N - 1)          # coherence grows along the trajectory
    for phase in ("reference", "interval"):
        ranked = candidate_structures(coherence, N, 5, (2, 3), phase=phase)
        for score, start, end, every in ranked:
            skips = LTC(interval=(start, end), every=every, phase=phase).extrapolated_steps(N)
            assert len(skips) == 5 and score == pytest.approx(np.mean(coherence[np.array(skips) - 1]))
        assert [r[0] for r in ranked] == sorted((r[0] for r in ranked), reverse=True)
    assert candidate_structures(coherence, N, 5, (2, 3))[0][1:] == (10, 20, 2)   # steps 11..19: the latest, densest


def test_auto_returns_a_calibrated_ltc_policy_with_the_requested_nfe(caplog):
    gm = GaussianMixture.random(VP, dim=DIM, seed=0)
    with caplog.at_level("INFO", logger="ltc"):
        choice = auto(gm, VP, steps=N, speedup=20 / 13, sampler="ddim", noise=CAL, candidates=2, state="x",
                      objective="trajectory")
    assert choice.accepted and isinstance(choice.policy, LTC) and choice.nfe == 13
    assert "ACCEPTED" in caplog.text
    _, info = choice.sample(gm, noise=HELD, progress=False, return_info=True)
    assert info.nfe == 13 and choice.calibration.accepted and len(choice.candidates) == 2


def test_auto_falls_back_to_the_best_plain_plan_it_evaluated(caplog):
    gm = GaussianMixture.random(VP, dim=DIM, seed=0)
    with caplog.at_level("INFO", logger="ltc"):
        choice = auto(gm, VP, steps=N, nfe=13, sampler="ddim", noise=CAL, candidates=2, state="x")
    assert not choice.accepted and isinstance(choice.policy, Full)
    assert "no LTC structure is better than every plain plan evaluated" in caplog.text
    assert all(c["verdict"] != "accepted" for c in choice.candidates)
    # the plan returned is the plain row closest to the judge, over every candidate's report, and it is
    # the plan that was measured: sampled on the judged noises it has that row's mean distance to the judge
    best = min(choice.plain, key=lambda r: r["mean"])
    assert len(choice.plain) > 4 and best["name"] in choice.message
    x, info = choice.sample(gm, noise=CAL[16:], progress=False, return_info=True)
    judge = ltc.sample(gm, VP, Full(), sampler="dpmpp_3m", steps=4 * N, noise=CAL[16:], progress=False)
    assert info.nfe == 13 and float(per_sample(x, judge).mean()) == pytest.approx(best["mean"], rel=1e-12)


def test_calibrate_and_auto_give_one_answer_on_the_readme_settings():
    # the README's LTC snippet: flow shift 3, Euler, 20 steps, the trajectory objective, the same noises
    gm = GaussianMixture.random(FLOW3, dim=DIM, seed=0)
    noise = noises(7, 64)
    cal = quiet_calibrate(gm, FLOW3, LTC(), sampler="euler", steps=N, noise=noise, objective="trajectory")
    choice = auto(gm, FLOW3, steps=N, nfe=13, sampler="euler", noise=noise, objective="trajectory", candidates=1,
                  verbose=False)
    same = [c for c in choice.candidates if c["steps"] == cal.steps.tolist()]
    assert len(same) == 1 and same[0]["own_verdict"] == cal.verdict      # the default structure is always tried
    assert same[0]["ltc_mean"] == cal.report["decision"]["ltc_mean"]
    if not cal.accepted:                                                 # auto never accepts what calibrate refuses
        assert same[0]["verdict"] != "accepted"


@pytest.mark.parametrize("kwargs, match", [
    ({"nfe": 13, "speedup": 1.5}, "exactly one of nfe"),
    ({"nfe": 20}, "nfe must be in"),
    ({"nfe": 5}, "nfe must be in"),
    ({"speedup": 0.5}, "speedup must be a number > 1"),
    ({"nfe": 13, "everies": (1,)}, "everies must be a non-empty sequence of ints >= 2"),
])
def test_auto_bad_arguments_are_clear_errors(kwargs, match):
    gm = GaussianMixture.random(VP, dim=DIM, seed=0)
    with pytest.raises(ValueError, match=match):
        auto(gm, VP, steps=N, sampler="ddim", noise=CAL[:4], verbose=False, **kwargs)


@pytest.mark.skipif(not ltc.ops.available("triton"), reason="triton is not installed")
def test_triton_backend_fits_the_same_weights_as_the_reference():
    gm = GaussianMixture.random(VP, dim=DIM, seed=0)
    x = CAL[:8].to(torch.float32)
    fits = [quiet_calibrate(gm, VP, LTC(), sampler="dpmpp_2m", steps=12, noise=x, backend=b, report=False)
            for b in ("triton", "reference")]
    np.testing.assert_allclose(fits[0].weights, fits[1].weights, rtol=1e-5, atol=1e-6)


def test_teacher_grid_has_twice_the_steps_between_the_same_end_points():
    from ltc.calibration.runs import teacher_grid
    fine = teacher_grid(VP, VP.discretize(10))
    assert fine.digest() == VP.discretize(20).digest()           # trailing: every N starts at t = 999
    leading = ltc.Schedule.vp("scaled_linear")                   # leading: t[0] depends on N, so refine
    grid = leading.discretize(10)
    refined = teacher_grid(leading, grid)
    assert refined.steps == 19                                   # the clean-end step (t 0 -> -1) stays whole
    assert refined.sigma[0] == grid.sigma[0] and refined.sigma[-1] == grid.sigma[-1]
    assert set(grid.sigma.tolist()) <= set(refined.sigma.tolist())
