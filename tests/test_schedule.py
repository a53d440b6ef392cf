"""Schedules: spacings, grids, Karras and flow sigmas, noise_at, bad input."""
import numpy as np
import pytest
import torch

from ltc import Schedule
from ltc.schedule import Grid, timestep_spacing, train_alphas_cumprod


def test_spacings_match_their_definitions():
    assert timestep_spacing("leading", 10, 1000).tolist() == list(range(900, -1, -100))
    assert timestep_spacing("leading", 10, 1000, steps_offset=1)[0] == 901
    assert timestep_spacing("trailing", 10, 1000).tolist() == list(range(999, 0, -100))
    assert timestep_spacing("linspace", 10, 1000).tolist() == np.linspace(0, 999, 10).round()[::-1].tolist()


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [7, 13, 50])
def test_ddim_grid_stays_on_its_own_timesteps(spacing, steps):
    """Every point of the grid is one of the spacing's timesteps with its own alpha_bar, even when
    1000 is not divisible by N (unlike t -> t - 1000 // N)."""
    sched = Schedule.vp("scaled_linear", spacing=spacing)
    grid = sched.discretize(steps)
    ts = timestep_spacing(spacing, steps, 1000)
    abar = train_alphas_cumprod("scaled_linear")
    np.testing.assert_array_equal(grid.t[:-1], ts)
    np.testing.assert_allclose(grid.alpha[:-1] ** 2, abar[ts.astype(int)], rtol=1e-12)
    assert grid.sigma[-1] == 0 and grid.alpha[-1] == 1


def test_final_last_ends_at_first_training_step():
    grid = Schedule.vp("linear", spacing="trailing", final="last").discretize(10)
    abar = train_alphas_cumprod("linear")
    assert grid.alpha[-1] ** 2 == pytest.approx(abar[0])


def test_beta_schedules_are_decreasing_and_known():
    for name in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        abar = train_alphas_cumprod(name)
        assert abar.shape == (1000,) and np.all(np.diff(abar) < 0) and 0 < abar[-1] < abar[0] < 1
    # scaled_linear: Stable Diffusion's first and last alpha_bar
    abar = train_alphas_cumprod("scaled_linear")
    assert abar[0] == pytest.approx(1 - 0.00085) and abar[-1] == pytest.approx(0.0046, rel=0.02)


def test_karras_sigmas_follow_the_rho_ramp_and_times_invert():
    sched = Schedule.vp("scaled_linear", karras=True)
    grid = sched.discretize(12)
    k = grid.sigma[:-1] / grid.alpha[:-1]
    rho = 7.0
    ramp = (k ** (1 / rho) - k[0] ** (1 / rho)) / (k[-1] ** (1 / rho) - k[0] ** (1 / rho))
    np.testing.assert_allclose(ramp, np.linspace(0, 1, 12), atol=1e-12)
    alpha, sigma = sched.noise_at(torch.tensor(grid.t[:-1]))
    np.testing.assert_allclose(alpha.numpy(), grid.alpha[:-1], rtol=1e-10)
    np.testing.assert_allclose(sigma.numpy(), grid.sigma[:-1], rtol=1e-10)


def test_flow_shift_formula():
    """Default: FlowMatchEuler's sigma_min, 1/T shifted once before the linspace and again after;
    sigma_min=1/T is a single shift."""
    grid = Schedule.flow(shift=3.0).discretize(5)
    s = np.linspace(1, 3e-3 / (1 + 2e-3), 5)
    np.testing.assert_allclose(grid.sigma[:-1], 3 * s / (1 + 2 * s), rtol=1e-14)
    s = np.linspace(1, 1e-3, 5)
    np.testing.assert_allclose(Schedule.flow(shift=3.0, sigma_min=1e-3).discretize(5).sigma[:-1], 3 * s / (1 + 2 * s),
                               rtol=1e-14)
    np.testing.assert_allclose(grid.alpha, 1 - grid.sigma)
    np.testing.assert_allclose(grid.t, grid.sigma * 1000)
    assert grid.sigma[0] == 1 and grid.alpha[0] == 0 and grid.sigma[-1] == 0


@pytest.mark.parametrize("sched", [
    Schedule.vp("linear", spacing="trailing"), Schedule.flow(shift=2.0),
    Schedule.log_snr(-4, 4, final="keep"), Schedule.log_snr(-4, 4, family="flow"),
    Schedule.explicit([3.0, 2.0, 1.0], [0.6, 0.8, 0.96], [0.8, 0.6, 0.28]),
], ids=["vp", "flow", "logsnr-vp", "logsnr-flow", "explicit"])
def test_noise_at_reproduces_the_grid(sched):
    grid = sched.discretize(None if sched.config()["class"] == "explicit" else 9)
    alpha, sigma = sched.noise_at(torch.tensor(grid.t[:-1]))
    np.testing.assert_allclose(alpha.numpy(), grid.alpha[:-1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sigma.numpy(), grid.sigma[:-1], rtol=1e-12, atol=1e-14)


def test_log_snr_grid_is_uniform_in_lambda():
    grid = Schedule.log_snr(-5, 5, final="keep").discretize(10)
    np.testing.assert_allclose(grid.log_snr, np.linspace(-5, 5, 11), atol=1e-12)
    np.testing.assert_allclose(grid.alpha ** 2 + grid.sigma ** 2, 1, atol=1e-14)


def test_progress_variables():
    grid = Schedule.vp("scaled_linear").discretize(4)
    np.testing.assert_array_equal(grid.progress("sigma"), grid.sigma)
    np.testing.assert_array_equal(grid.progress("t"), grid.t)
    assert np.isinf(grid.progress("lambda")[-1])
    with pytest.raises(ValueError, match="progress variable"):
        grid.progress("snr")


@pytest.mark.parametrize("make, match", [
    (lambda: Schedule.vp("cosine"), "beta_schedule"),
    (lambda: Schedule.vp(spacing="uniform"), "spacing"),
    (lambda: Schedule.vp(final="none"), "final"),
    (lambda: Schedule.flow(shift=0), "shift"),
    (lambda: Schedule.flow(sigma_min=1.5), "sigma_min"),
    (lambda: Schedule.log_snr(3, -3), "lambda_min"),
    (lambda: Schedule.explicit([2, 1], [0.5, 0.9], [0.9, 0.95]), "strictly decreasing"),
    (lambda: Schedule.explicit([2, 1], [0.5], [0.9, 0.5]), "same length"),
])
def test_bad_schedule_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("steps, exc, match", [
    (0, ValueError, "steps must be >= 1"), (1001, ValueError, "steps must be <="),
    (2.5, TypeError, "steps must be an int"), (True, TypeError, "steps must be an int"),
    (None, ValueError, "steps is required"),
])
def test_bad_steps(steps, exc, match):
    with pytest.raises(exc, match=match):
        Schedule.vp().discretize(steps)


def test_explicit_steps_must_match():
    sched = Schedule.explicit([2.0, 1.0, 0.0], [0.6, 0.8, 1.0], [0.8, 0.6, 0.0])
    assert sched.discretize(None).steps == 2
    with pytest.raises(ValueError, match="does not match"):
        sched.discretize(3)


def test_grid_is_immutable():
    grid = Grid([2.0, 1.0], [0.6, 0.8], [0.8, 0.6], "vp")
    with pytest.raises(ValueError):
        grid.sigma[0] = 0.1


def test_spacing_rules_follow_their_diffusers_schedulers():
    """DPM-Solver / UniPC take N of N + 1 points for linspace and leading; Euler's linspace is fractional."""
    assert timestep_spacing("leading", 10, 1000, 1, rule="dpm_solver").tolist() == list(range(901, 90, -90))
    assert timestep_spacing("linspace", 5, 1000, rule="dpm_solver").tolist() == [999, 799, 599, 400, 200]
    assert timestep_spacing("trailing", 10, 1000, rule="dpm_solver").tolist() == list(range(999, 0, -100))
    assert timestep_spacing("linspace", 5, 1000, rule="euler").tolist() == [999, 749.25, 499.5, 249.75, 0]
    assert timestep_spacing("leading", 10, 1000, 1, rule="euler").tolist() == list(range(901, 0, -100))
    with pytest.raises(ValueError, match="rule must be one of"):
        timestep_spacing("leading", 10, 1000, rule="unipc")
    with pytest.raises(ValueError, match="rule must be one of"):
        Schedule.vp().discretize(10, rule="karras")


def test_euler_rule_interpolates_k_linearly_at_fractional_times():
    sched = Schedule.vp("linear", spacing="linspace")
    grid = sched.discretize(5, rule="euler")
    abar = train_alphas_cumprod("linear")
    k = np.sqrt((1 - abar) / abar)
    k_mid = 0.75 * k[749] + 0.25 * k[750]                               # t = 749.25
    assert grid.sigma[1] / grid.alpha[1] == pytest.approx(k_mid, rel=1e-5)   # diffusers' float32 table
    alpha, sigma = sched.noise_at(torch.tensor([749.25], dtype=torch.float64))   # the model's time: log k
    assert float(sigma / alpha) == pytest.approx(np.exp(0.75 * np.log(k[749]) + 0.25 * np.log(k[750])), rel=1e-12)


def test_explicit_schedule_with_a_training_table_allows_repeated_times():
    """diffusers' rounded Karras grids feed t = 1 at two noise levels: allowed when noise_at reads the
    training table, refused (naming the fix) when it would interpolate over the points."""
    vp = Schedule.vp("scaled_linear", karras=True)
    grid = vp.discretize(50, rule="dpm_solver")
    assert grid.t[-4:-1].tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match=r"must not repeat a value \(t = 1.0 twice\).*alphas_cumprod="):
        Schedule.explicit(grid.t, grid.alpha, grid.sigma)
    table = vp.alphas_cumprod
    sched = Schedule.explicit(grid.t, grid.alpha, grid.sigma, alphas_cumprod=table)
    assert sched.discretize(None) is sched.discretize(50) and sched.config()["log_k_table_sha256"]
    t = torch.tensor([-1.0, 0.0, 1.0, 1.5, 999.0], dtype=torch.float64)
    for got, ref in zip(sched.noise_at(t), vp.noise_at(t)):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert table is not vp.alphas_cumprod and np.array_equal(table, vp.alphas_cumprod)   # not kept or written


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(alphas_cumprod=[0.9, 0.5], family="flow"), ValueError, "family='flow' takes none"),
    (dict(alphas_cumprod="abc"), TypeError, "alphas_cumprod must be a 1-D sequence"),
    (dict(alphas_cumprod=[[0.9, 0.5]]), ValueError, r"1-D with >= 2 training steps, got shape \(1, 2\)"),
    (dict(alphas_cumprod=[0.9, 1.0]), ValueError, r"lie in \(0, 1\).*alphas_cumprod\[1\] = 1.0"),
    (dict(alphas_cumprod=[0.9, 0.5, 0.1]), ValueError, r"model time t\[:-1\] must lie in \[0, 2\]; t\[0\] = 3.0"),
])
def test_explicit_training_table_is_checked(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Schedule.explicit([3.0, 1.0, 0.0], [0.6, 0.8, 1.0], [0.8, 0.6, 0.0], **kwargs)


def test_flow_dpm_solver_rule_is_dpm_solvers_flow_sigmas():
    grid = Schedule.flow(3.0).discretize(4, rule="dpm_solver")
    s = 3 * np.array([0.999, 0.74925, 0.4995, 0.24975]) / (1 + 2 * np.array([0.999, 0.74925, 0.4995, 0.24975]))
    np.testing.assert_allclose(grid.sigma[:-1], s, rtol=1e-12)
    assert grid.t[:-1].tolist() == np.trunc(s * 1000).tolist() and grid.sigma[-1] == 0
    with pytest.raises(ValueError, match="sigma_min=0.01 has no counterpart under rule 'dpm_solver'"):
        Schedule.flow(3.0, sigma_min=0.01).discretize(4, rule="dpm_solver")


def test_default_rule_keeps_the_ddim_grid_bit_for_bit():
    """The 'ddim' rule (the default) is the grid ltc always built: stored calibrations still match."""
    sched = Schedule.vp("scaled_linear", spacing="leading", steps_offset=1)
    abar = train_alphas_cumprod("scaled_linear")
    grid = sched.discretize(20)
    np.testing.assert_array_equal(grid.alpha[:-1], np.sqrt(abar[grid.t[:-1].astype(int)]))
    karras = Schedule.vp("scaled_linear", karras=True).discretize(12)
    log_k = 0.5 * np.log((1 - abar) / abar)
    k = (np.exp(log_k[-1]) ** (1 / 7) + np.linspace(0, 1, 12) * (np.exp(log_k[0]) ** (1 / 7)
                                                                  - np.exp(log_k[-1]) ** (1 / 7))) ** 7
    np.testing.assert_array_equal(karras.t[:-1], np.interp(np.log(k), log_k, np.arange(1000.0)))
