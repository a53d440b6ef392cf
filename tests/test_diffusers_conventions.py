"""diffusers' conventions: ltc samples equal diffusers' own loop for the schedulers people use.

(a) Through ``ltc.adapters.diffusers`` (the grid read from the scheduler), and (b) with the schedule
built by hand, ``Schedule.vp(...)`` + a sampler name, whose grid follows the sampler's
``grid_rule`` (:meth:`ltc.schedule.VPSchedule.discretize`): DDIM, Euler and DPM-Solver++ 1M/2M/3M
for every spacing, final sigma type, Karras (and, through the adapter, Lu lambdas and exponential
sigmas), N in {5, 10, 20, 50}, eps / x0 / v.  Model: the exact Gaussian-mixture oracle on the same
training table, in float32; agreement = max |ltc - diffusers| / max |diffusers| <= 1e-5.
"""
import itertools

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip(
    "diffusers", reason="diffusers is not installed (the 'diffusers' extra of the README's install command)")

import ltc  # noqa: E402
from ltc.adapters.diffusers import sampler_from_diffusers, schedule_from_diffusers  # noqa: E402
from ltc.samplers import DPMSolverPP  # noqa: E402
from ltc.schedule import Schedule  # noqa: E402
from ltc.zoo.oracles import GaussianMixture  # noqa: E402
from test_diffusers_adapter import RecordingDPM, diffusers_loop, latents  # noqa: E402

ROUND_OFF = 1e-5
STEPS = (5, 10, 20, 50)
PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
BETAS = {"linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
         "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)}
ORACLES = {name: GaussianMixture.random(Schedule.vp(name), dim=16, seed=3) for name in BETAS}

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster


def rotate(options, steps):
    """One prediction type per (option, N), cycling so that each option meets all three over STEPS."""
    return [(*o, n, list(PREDICTIONS)[(i + j) % 3]) for i, o in enumerate(options) for j, n in enumerate(steps)]


def run_diffusers(scheduler, model, noise, steps):
    """diffusers' loop from ``noise``; EulerDiscrete's state u = x / alpha is returned as x = alpha u."""
    u = diffusers_loop(scheduler, model, noise, steps)
    if isinstance(scheduler, diffusers.EulerDiscreteScheduler):
        s = type(scheduler).from_config(scheduler.config)
        s.set_timesteps(steps)
        return u / (1 + s.sigmas[-1].double() ** 2).sqrt().float()
    return u


def ltc_noise(scheduler, noise, steps):
    """ltc's start for diffusers' latents: EulerDiscrete's x = alpha_0 * init_noise_sigma * latents."""
    if not isinstance(scheduler, diffusers.EulerDiscreteScheduler):
        return noise
    s = type(scheduler).from_config(scheduler.config)
    s.set_timesteps(steps)
    return noise * (s.init_noise_sigma / (1 + s.sigmas[0].double() ** 2).sqrt()).float()


def relative(x, ref):
    assert torch.isfinite(ref).all()
    return float((x.double() - ref.double()).abs().max() / ref.double().abs().max())


def adapter_relative(scheduler, pred, steps):
    model = ORACLES[scheduler.config.beta_schedule].as_prediction(pred)
    noise = latents(4, 16)
    x = ltc.sample(model, schedule_from_diffusers(scheduler, steps), sampler=sampler_from_diffusers(scheduler, steps),
                   noise=ltc_noise(scheduler, noise, steps), progress=False)
    return relative(x, run_diffusers(scheduler, model, noise, steps))


# -- (a) through the adapter -----------------------------------------------------------------------
SIGMAS = {"linspace": dict(timestep_spacing="linspace"), "leading": dict(timestep_spacing="leading", steps_offset=1),
          "trailing": dict(timestep_spacing="trailing"), "karras": dict(use_karras_sigmas=True),
          "lu": dict(use_lu_lambdas=True), "exponential": dict(use_exponential_sigmas=True)}
FINALS = ("zero", "sigma_min")


def dpm_nan(order, sigmas, final, steps):
    """diffusers' own 3rd-order update divides 0 by 0 on the zero-length last step of these settings."""
    return order == 3 and final == "sigma_min" and sigmas in ("karras", "lu", "exponential") and steps >= 15


DPM_CASES = [c for c in rotate(list(itertools.product((1, 2, 3), SIGMAS, FINALS)), STEPS) if not dpm_nan(*c[:4])]
EULER_CASES = rotate(list(itertools.product(("linspace", "leading", "trailing"), ("plain", "karras", "exponential"),
                                            FINALS)), STEPS)
DDIM_CASES = rotate(list(itertools.product((("leading", 1), ("leading", 0), ("trailing", 0)), (True, False))), STEPS)


@pytest.mark.parametrize("order, sigmas, final, steps, pred", DPM_CASES)
def test_adapter_dpm_solver_agrees_with_diffusers(order, sigmas, final, steps, pred):
    scheduler = diffusers.DPMSolverMultistepScheduler(**BETAS["scaled_linear"], **SIGMAS[sigmas], solver_order=order,
                                                      final_sigmas_type=final, prediction_type=PREDICTIONS[pred])
    assert adapter_relative(scheduler, pred, steps) <= ROUND_OFF


@pytest.mark.parametrize("spacing, sigmas, final, steps, pred", EULER_CASES)
def test_adapter_euler_agrees_with_diffusers(spacing, sigmas, final, steps, pred):
    scheduler = diffusers.EulerDiscreteScheduler(**BETAS["linear"], timestep_spacing=spacing, final_sigmas_type=final,
                                                 use_karras_sigmas=sigmas == "karras",
                                                 use_exponential_sigmas=sigmas == "exponential",
                                                 prediction_type=PREDICTIONS[pred])
    assert adapter_relative(scheduler, pred, steps) <= ROUND_OFF


@pytest.mark.parametrize("spacing_offset, alpha_to_one, steps, pred", DDIM_CASES)
def test_adapter_ddim_agrees_with_diffusers(spacing_offset, alpha_to_one, steps, pred):
    spacing, offset = spacing_offset
    scheduler = diffusers.DDIMScheduler(**BETAS["scaled_linear"], timestep_spacing=spacing, steps_offset=offset,
                                        set_alpha_to_one=alpha_to_one, clip_sample=False,
                                        prediction_type=PREDICTIONS[pred])
    assert adapter_relative(scheduler, pred, steps) <= ROUND_OFF


def test_dpm_solver_karras_with_repeated_timesteps_is_sampled():
    """DPM++ 2M Karras, 50 steps, SD betas: diffusers feeds t = 1 twice; the adapter used to refuse it."""
    scheduler = diffusers.DPMSolverMultistepScheduler(**BETAS["scaled_linear"], use_karras_sigmas=True)
    scheduler.set_timesteps(50)
    assert scheduler.timesteps[-3:].tolist() == [1, 1, 0]
    grid = schedule_from_diffusers(scheduler, 50).discretize(None)
    assert grid.t[-4:-1].tolist() == [1.0, 1.0, 0.0] and grid.steps == 50
    assert adapter_relative(scheduler, "eps", 50) <= ROUND_OFF


@pytest.mark.parametrize("order, steps", [(1, 10), (2, 10), (2, 20), (3, 10)])
def test_zero_length_last_step_is_dropped_with_diffusers_orders(order, steps):
    """Karras + final_sigmas_type='sigma_min': diffusers' last step goes from sigma_min to sigma_min.
    ltc drops it (one model call fewer) and takes diffusers' orders on the other steps."""
    scheduler = diffusers.DPMSolverMultistepScheduler(**BETAS["scaled_linear"], use_karras_sigmas=True,
                                                      final_sigmas_type="sigma_min", solver_order=order)
    RecordingDPM.orders = []                      # in the class: the loop steps a fresh instance
    diffusers_loop(RecordingDPM.from_config(scheduler.config), ORACLES["scaled_linear"].as_prediction("eps"),
                   latents(4, 16), steps)
    grid = schedule_from_diffusers(scheduler, steps).discretize(None)
    table = sampler_from_diffusers(scheduler, steps).table(grid)
    assert grid.steps == steps - 1 and grid.sigma[-1] > 0
    assert table.order.tolist() == RecordingDPM.orders[:-1]
    assert adapter_relative(scheduler, "eps", steps) <= ROUND_OFF


def test_third_order_zero_length_step_is_refused_as_diffusers_gives_nan():
    config = dict(BETAS["scaled_linear"], use_karras_sigmas=True, final_sigmas_type="sigma_min", solver_order=3)
    scheduler = diffusers.DPMSolverMultistepScheduler(**config)
    x = diffusers_loop(scheduler, ORACLES["scaled_linear"].as_prediction("eps"), latents(4, 16), 20)
    assert torch.isnan(x).all()                                  # diffusers' own samples
    with pytest.raises(ValueError, match=r"third order.*NaN.*euler_at_final=True"):
        sampler_from_diffusers(scheduler, 20)
    fixed = diffusers.DPMSolverMultistepScheduler(**config, euler_at_final=True)
    assert adapter_relative(fixed, "eps", 20) <= ROUND_OFF


def test_ddim_no_op_last_step_is_dropped():
    """set_alpha_to_one=False with a last timestep of 0: diffusers' last step goes from alpha_bar_0
    to alpha_bar_0; ltc drops it (it used to refuse the scheduler)."""
    scheduler = diffusers.DDIMScheduler(**BETAS["linear"], set_alpha_to_one=False, steps_offset=0, clip_sample=False)
    grid = schedule_from_diffusers(scheduler, 10).discretize(None)
    assert grid.steps == 9 and grid.t[-1] == 0
    assert adapter_relative(scheduler, "eps", 10) <= ROUND_OFF


# -- (b) hand-built schedules with sampler names ----------------------------------------------------
def hand_built_relative(schedule, sampler, scheduler, pred, steps):
    model = ORACLES[scheduler.config.beta_schedule].as_prediction(pred)
    noise = latents(4, 16)
    x = ltc.sample(model, schedule, sampler=sampler, steps=steps, noise=ltc_noise(scheduler, noise, steps),
                   progress=False)
    return relative(x, run_diffusers(scheduler, model, noise, steps))


VP_OPTIONS = [("scaled_linear", "leading", 1, False), ("linear", "linspace", 0, False),
              ("scaled_linear", "trailing", 0, False), ("scaled_linear", "leading", 0, True)]
HAND_DPM = rotate([(o, *v, f) for o in (1, 2, 3) for v in VP_OPTIONS for f in ("zero", "last")
                   if not (f == "last" and v[3])], STEPS)
HAND_EULER = rotate([(*v, f) for v in [("linear", "linspace", 0, False), ("scaled_linear", "leading", 1, False),
                                       ("linear", "trailing", 0, False), ("linear", "linspace", 0, True),
                                       ("scaled_linear", "trailing", 0, True)] for f in ("zero", "last")
                     if not (f == "last" and (v[3] or v[1] == "linspace"))], STEPS)
HAND_DDIM = rotate([(*v, f) for v in [("scaled_linear", "leading", 1), ("linear", "trailing", 0)]
                    for f in ("zero", "last")], STEPS)


@pytest.mark.parametrize("order, beta, spacing, offset, karras, final, steps, pred", HAND_DPM)
def test_hand_built_dpm_solver_equals_dpm_solver_multistep(order, beta, spacing, offset, karras, final, steps, pred):
    schedule = Schedule.vp(beta, spacing=spacing, steps_offset=offset, karras=karras, final=final)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **BETAS[beta], timestep_spacing=spacing, steps_offset=offset, use_karras_sigmas=karras, solver_order=order,
        final_sigmas_type="zero" if final == "zero" else "sigma_min", prediction_type=PREDICTIONS[pred])
    assert hand_built_relative(schedule, f"dpmpp_{order}m", scheduler, pred, steps) <= ROUND_OFF


@pytest.mark.parametrize("beta, spacing, offset, karras, final, steps, pred", HAND_EULER)
def test_hand_built_euler_equals_euler_discrete(beta, spacing, offset, karras, final, steps, pred):
    schedule = Schedule.vp(beta, spacing=spacing, steps_offset=offset, karras=karras, final=final)
    scheduler = diffusers.EulerDiscreteScheduler(
        **BETAS[beta], timestep_spacing=spacing, steps_offset=offset, use_karras_sigmas=karras,
        final_sigmas_type="zero" if final == "zero" else "sigma_min", prediction_type=PREDICTIONS[pred])
    assert hand_built_relative(schedule, "euler", scheduler, pred, steps) <= ROUND_OFF


@pytest.mark.parametrize("beta, spacing, offset, final, steps, pred", HAND_DDIM)
def test_hand_built_ddim_equals_ddim_scheduler(beta, spacing, offset, final, steps, pred):
    schedule = Schedule.vp(beta, spacing=spacing, steps_offset=offset, final=final)
    scheduler = diffusers.DDIMScheduler(**BETAS[beta], timestep_spacing=spacing, steps_offset=offset,
                                        set_alpha_to_one=final == "zero", clip_sample=False,
                                        prediction_type=PREDICTIONS[pred])
    assert hand_built_relative(schedule, "ddim", scheduler, pred, steps) <= ROUND_OFF


@pytest.mark.parametrize("steps", [5, 50])
def test_readme_first_example_is_stable_diffusions_dpm_solver(steps):
    """The README's schedule with "dpmpp_2m" is SD's DPMSolverMultistepScheduler: [901, 811, ...]."""
    schedule = Schedule.vp("scaled_linear", spacing="leading", steps_offset=1)
    scheduler = diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear", timestep_spacing="leading",
                                                      steps_offset=1, beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(steps)
    grid = ltc.samplers.get_sampler("dpmpp_2m").grid(schedule, steps)
    np.testing.assert_array_equal(grid.t[:-1], scheduler.timesteps.double().numpy())
    assert hand_built_relative(schedule, "dpmpp_2m", scheduler, "eps", steps) <= ROUND_OFF


def test_hand_built_flow_equals_flow_match_euler_and_dpm_solver_flow_sigmas():
    model = GaussianMixture.random(Schedule.flow(3.0), dim=16, seed=3).as_prediction("flow")
    noise = latents(4, 16)
    for sampler, scheduler, steps in [
            ("euler", diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), 10),
            ("dpmpp_2m", diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0,
                                                               prediction_type="flow_prediction"), 12)]:
        x = ltc.sample(model, Schedule.flow(3.0), sampler=sampler, steps=steps, noise=noise, progress=False)
        assert relative(x, diffusers_loop(scheduler, model, noise, steps)) <= ROUND_OFF, sampler


# -- the grids themselves ---------------------------------------------------------------------------
GRID_CASES = [("dpm_solver", diffusers.DPMSolverMultistepScheduler), ("euler", diffusers.EulerDiscreteScheduler)]


@pytest.mark.parametrize("rule, cls", GRID_CASES, ids=[c[0] for c in GRID_CASES])
@pytest.mark.parametrize("beta", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_grid_rules_place_diffusers_points_for_every_step_count(rule, cls, beta):
    """Model times equal diffusers' float32 timesteps exactly (Karras rounding included: it needs
    diffusers' float32 table), alpha and sigma to diffusers' float32 round-off (its cumulative product
    of betas in float32: <= 3e-6), N = 1..100 and a few large N."""
    config = BETAS.get(beta, dict(beta_schedule=beta))
    karras = dict(karras=True, spacing="linspace" if rule == "euler" else "leading")
    options = [dict(spacing=s) for s in ("linspace", "leading", "trailing")] + [dict(spacing="leading", steps_offset=1),
                                                                                  karras]
    for opt in options:
        scheduler = cls(**config, timestep_spacing=opt["spacing"], steps_offset=opt.get("steps_offset", 0),
                        use_karras_sigmas=opt.get("karras", False))
        schedule = Schedule.vp(beta, **opt)
        for steps in [*range(1, 101), 250, 500, 998]:
            if opt["spacing"] == "trailing" and len(np.arange(1000, 0, -1000 / steps)) != steps:
                continue                               # diffusers' trailing arange holds N + 1 points (last t = -1)
            scheduler.set_timesteps(steps)
            grid = schedule.discretize(steps, rule=rule)
            np.testing.assert_array_equal(grid.t[:-1].astype(np.float32), scheduler.timesteps.float().numpy(),
                                          err_msg=f"{opt} {steps}")
            k = scheduler.sigmas.double().numpy()
            a, sig = 1 / np.sqrt(1 + k ** 2), k / np.sqrt(1 + k ** 2)
            np.testing.assert_allclose(grid.alpha, a, rtol=0, atol=3e-6, err_msg=f"{opt} {steps}")
            np.testing.assert_allclose(grid.sigma, sig, rtol=0, atol=3e-6, err_msg=f"{opt} {steps}")


def test_dpm_solver_rule_takes_n_of_n_plus_one_points_and_rounds_karras_times():
    sd = Schedule.vp("scaled_linear", spacing="leading", steps_offset=1)
    assert sd.discretize(10, rule="dpm_solver").t[:3].tolist() == [901.0, 811.0, 721.0]
    assert sd.discretize(10, rule="ddim").t[:3].tolist() == [901.0, 801.0, 701.0]
    karras = Schedule.vp("scaled_linear", karras=True)
    grid = karras.discretize(50, rule="dpm_solver")
    assert grid.t[-6:].tolist() == [4.0, 2.0, 1.0, 1.0, 0.0, -1.0]           # t = 1 fed at two noise levels
    assert np.all(grid.t[:-1] == np.round(grid.t[:-1])) and np.all(np.diff(grid.sigma) < 0)
    own = karras.discretize(50, rule="ddim").t[:-1]                              # ltc's own Karras: fractional t
    assert not np.all(own == np.round(own))
    np.testing.assert_allclose(karras.discretize(50, rule="ddim").sigma, grid.sigma, rtol=1e-4)  # float64 table


def test_final_last_refuses_zero_length_steps_by_rule():
    """final='last' is set_alpha_to_one=False / final_sigmas_type='sigma_min'; where the N-th point is
    training step 0 already, diffusers' last step has zero length: refused with the reason."""
    linspace = Schedule.vp("linear", spacing="linspace", final="last")
    assert linspace.discretize(10, rule="dpm_solver").t[-2] == 100.0      # round(999 / 10)
    for rule in ("ddim", "euler"):
        with pytest.raises(ValueError, match=f"training step 0, where spacing='linspace' with steps=10 ends already "
                                             f"\\(rule '{rule}'\\).*zero-length step"):
            linspace.discretize(10, rule=rule)
    with pytest.raises(ValueError, match="zero-length last step.*ltc.adapters.diffusers"):
        Schedule.vp(karras=True, final="last")


def test_order_caps_bound_each_steps_order_and_are_checked():
    grid = Schedule.log_snr(-3, 3, final="keep").discretize(6)
    assert DPMSolverPP(3, lower_order_final=False).table(grid).order.tolist() == [1, 2, 3, 3, 3, 3]
    capped = DPMSolverPP(3, lower_order_final=False, order_caps=[3, 3, 3, 1, 2, 3])
    assert capped.table(grid).order.tolist() == [1, 2, 3, 1, 2, 3]
    assert capped.config()["order_caps"] == [3, 3, 3, 1, 2, 3]
    with pytest.raises(ValueError, match="order_caps has 5 entries .* the grid has 6 steps"):
        DPMSolverPP(2, order_caps=[2] * 5).table(grid)
    with pytest.raises(ValueError, match=r"order_caps\[1\] must be the int 1, 2 or 3, got 4"):
        DPMSolverPP(2, order_caps=[1, 4])
    with pytest.raises(TypeError, match="order_caps must be a non-empty sequence"):
        DPMSolverPP(2, order_caps=3)


def test_trailing_step_counts_with_a_timestep_of_minus_one_are_refused():
    """diffusers' trailing arange holds N + 1 points at N = 61 (of T = 1000), the last timestep -1."""
    scheduler = diffusers.DPMSolverMultistepScheduler(timestep_spacing="trailing")
    with pytest.raises(ValueError, match="steps=61 gives 62 timesteps, the last -1"):
        schedule_from_diffusers(scheduler, 61)
    assert Schedule.vp(spacing="trailing").discretize(61, rule="dpm_solver").steps == 61   # the first 61 points


# -- the samplers added with issue 16: UniPC, Heun, Euler ancestral, SDE-DPM-Solver++ --------------
K_SPACE = (diffusers.EulerDiscreteScheduler, diffusers.EulerAncestralDiscreteScheduler, diffusers.HeunDiscreteScheduler)
NEW_OPTIONS = {"linspace": dict(timestep_spacing="linspace"), "leading": dict(timestep_spacing="leading", steps_offset=1),
               "trailing": dict(timestep_spacing="trailing"), "karras": dict(use_karras_sigmas=True)}
NEW_SCHEDULERS = {
    "unipc_1m": ("UniPCMultistepScheduler", dict(solver_order=1)),
    "unipc": ("UniPCMultistepScheduler", {}),
    "unipc_3m": ("UniPCMultistepScheduler", dict(solver_order=3)),
    "unipc bh1 sigma_min": ("UniPCMultistepScheduler", dict(solver_type="bh1", final_sigmas_type="sigma_min")),
    "heun": ("HeunDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++")),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++", solver_order=3)),
}
NEW_CASES = [(n, o, steps, "eps" if n == "euler_a" and pred == "x0" else pred)  # diffusers' Euler-A: no x0, Karras
             for n, o, steps, pred in rotate(list(itertools.product(NEW_SCHEDULERS, NEW_OPTIONS)), STEPS)
             if not (n == "unipc bh1 sigma_min" and o in ("linspace", "karras"))  # zero-length end: refused
             and not (n == "euler_a" and o == "karras")]


def draws(shape, dtype=torch.float32):
    """diffusers' per-step noise, in order, from one seed: what both loops are fed."""
    gen = torch.Generator().manual_seed(11)
    return lambda i=None: torch.randn(shape, generator=gen, dtype=dtype)


@pytest.mark.parametrize("name, option, steps, pred", NEW_CASES)
def test_new_samplers_agree_with_diffusers_through_the_adapter(name, option, steps, pred):
    cls, config = NEW_SCHEDULERS[name]
    scheduler = getattr(diffusers, cls)(**BETAS["scaled_linear"], **NEW_OPTIONS[option], **config,
                                        prediction_type=PREDICTIONS[pred])
    model = ORACLES["scaled_linear"].as_prediction(pred)
    noise = latents(4, 16)
    sampler = sampler_from_diffusers(scheduler, steps)
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(steps)
    k_space = isinstance(scheduler, K_SPACE)
    u = noise * fresh.init_noise_sigma
    x0 = u / (1 + fresh.sigmas[0].double() ** 2).sqrt().float() if k_space else u
    extra = {"generator": torch.Generator().manual_seed(11)} if sampler.stochastic else {}
    with torch.no_grad():
        for t in fresh.timesteps:
            out = model(fresh.scale_model_input(u, t), t.to(torch.float32).expand(4))
            u = fresh.step(out, t, u, **extra).prev_sample
    want = u / (1 + fresh.sigmas[-1].double() ** 2).sqrt().float() if k_space else u
    x = ltc.sample(model, schedule_from_diffusers(scheduler, steps), sampler=sampler, noise=x0, progress=False,
                   step_noise=draws((4, 16)) if sampler.stochastic else None)
    assert relative(x, want) <= ROUND_OFF


def test_samplers_diffusers_cannot_be_reproduced_by_are_refused_by_name():
    with pytest.raises(ValueError, match="zero-length step .* corrector"):
        sampler_from_diffusers(diffusers.UniPCMultistepScheduler(use_karras_sigmas=True, final_sigmas_type="sigma_min"), 10)
    with pytest.raises(ValueError, match="predict_x0=False"):
        sampler_from_diffusers(diffusers.UniPCMultistepScheduler(predict_x0=False), 10)
    with pytest.raises(ValueError, match="solver_type='heun'"):
        sampler_from_diffusers(diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_type="heun"),
                               10)
