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
    grid = Schedule.flow(shift=3.0).discretize(5)
    s = np.linspace(1, 1e-3, 5)
    np.testing.assert_allclose(grid.sigma[:-1], 3 * s / (1 + 2 * s))
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
