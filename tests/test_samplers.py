"""Samplers: convergence order against the exact probability-flow ODE endpoint, and identities."""
import numpy as np
import pytest
import torch

import ltc
from ltc import Schedule
from ltc.zoo.oracles import GaussianMixture, exact_endpoint, rmse
from ltc.samplers import DDIM, DPMSolverPP, Euler, get_sampler

STEPS = [8, 16, 32, 64]


@pytest.fixture(scope="module", params=["vp", "flow"])
def setting(request):
    """A grid uniform in log-SNR that ends at positive noise, the mixture oracle, its exact endpoint."""
    sched = Schedule.log_snr(-3.0, 3.0, family=request.param, final="keep")
    oracle = GaussianMixture.random(sched, dim=4, components=3, seed=0)
    noise = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = exact_endpoint(oracle, noise, sched.discretize(8), steps=400)
    coarser = exact_endpoint(oracle, noise, sched.discretize(8), steps=200)
    assert rmse(exact, coarser) < 1e-6, "the reference solve has not converged"
    return sched, oracle, noise, exact


def slope(sampler, setting):
    sched, oracle, noise, exact = setting
    errs = [rmse(ltc.sample(oracle, sched, sampler=sampler, steps=n, noise=noise, progress=False), exact)
            for n in STEPS]
    return -np.polyfit(np.log(STEPS), np.log(errs), 1)[0], errs


@pytest.mark.parametrize("sampler, low, high", [
    ("ddim", 0.9, 1.15), ("euler", 0.9, 1.15),
    (DPMSolverPP(2, lower_order_final=False), 1.8, 2.2),
])
def test_convergence_order(sampler, low, high, setting):
    order, errs = slope(sampler, setting)
    assert low < order < high, (order, errs)


def test_third_order_multistep_is_at_least_as_accurate_as_second(setting):
    o2, e2 = slope(DPMSolverPP(2, lower_order_final=False), setting)
    o3, e3 = slope(DPMSolverPP(3, lower_order_final=False), setting)
    assert o3 >= 2.0 and all(a <= b for a, b in zip(e3[1:], e2[1:])), (o3, e3, e2)


def test_a_final_jump_to_zero_noise_makes_every_solver_look_first_order():
    sched = Schedule.log_snr(-3.0, 3.0, final="zero")
    oracle = GaussianMixture.random(sched, dim=4, components=3, seed=0)
    noise = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = exact_endpoint(oracle, noise, sched.discretize(8), steps=300)
    errs = [rmse(ltc.sample(oracle, sched, sampler="dpmpp_2m", steps=n, noise=noise, progress=False), exact)
            for n in STEPS]
    assert -np.polyfit(np.log(STEPS), np.log(errs), 1)[0] < 1.3


@pytest.mark.parametrize("sched", [Schedule.vp("scaled_linear", spacing="trailing"), Schedule.flow(shift=3.0),
                                   Schedule.vp("linear", karras=True)], ids=["vp", "flow", "karras"])
def test_euler_dpmpp1_and_ddim_are_the_same_update(sched):
    grid = sched.discretize(17)
    ref = DDIM().table(grid)
    for other in (Euler().table(grid), DPMSolverPP(1).table(grid)):
        np.testing.assert_allclose(other.A, ref.A, rtol=1e-12)
        np.testing.assert_allclose(other.B0, ref.B0, rtol=1e-9, atol=1e-12)


def test_multistep_orders_warm_up_and_lower_at_the_end():
    grid = Schedule.log_snr(-3, 3, final="keep").discretize(6)
    assert DPMSolverPP(3).table(grid).order.tolist() == [1, 2, 3, 3, 2, 1]
    assert DPMSolverPP(3, lower_order_final=False).table(grid).order.tolist() == [1, 2, 3, 3, 3, 3]
    zero = Schedule.log_snr(-3, 3).discretize(6)
    assert DPMSolverPP(2, lower_order_final=False).table(zero).order.tolist() == [1, 2, 2, 2, 2, 1]


def test_multistep_weights_are_consistent():
    """The D-weights of a multistep step sum to the first-order weight (exact for constant D)."""
    grid = Schedule.log_snr(-3, 3, final="keep").discretize(9)
    first = DDIM().table(grid)
    for order in (2, 3):
        t = DPMSolverPP(order).table(grid)
        np.testing.assert_allclose(t.B0 + t.B1 + t.B2, first.B0, rtol=1e-10)


def test_flow_grid_starting_at_pure_noise_is_handled():
    grid = Schedule.flow(shift=3.0).discretize(10)
    for order in (2, 3):
        t = DPMSolverPP(order).table(grid)
        assert np.all(np.isfinite(t.B0)) and np.all(np.isfinite(t.B1)) and np.all(np.isfinite(t.B2))


def test_sampler_names_and_errors():
    assert isinstance(get_sampler("dpmpp_3m"), DPMSolverPP) and get_sampler("dpmpp_3m").order == 3
    with pytest.raises(ValueError, match="sampler must be one of"):
        get_sampler("heun")
    with pytest.raises(TypeError, match="sampler must be"):
        get_sampler(3)
    with pytest.raises(ValueError, match="order must be"):
        DPMSolverPP(4)
    with pytest.raises(ValueError, match="eta must be"):
        DDIM(eta=-0.1)
