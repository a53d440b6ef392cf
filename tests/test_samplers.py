"""Samplers: convergence order against the exact probability-flow ODE endpoint, and identities."""
import numpy as np
import pytest
import torch

import ltc
from ltc import Schedule
from ltc.zoo.oracles import GaussianMixture, exact_endpoint, rmse
from ltc.samplers import SAMPLER_NAMES, DDIM, DPMSolverPP, DPMSolverSDE, Euler, EulerAncestral, Heun, UniPC, get_sampler

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
    # the corrector (UniC) raises UniP-p's order by one
    (UniPC(2, "bh2", lower_order_final=False), 2.5, 3.4), (UniPC(2, "bh1", lower_order_final=False), 2.5, 3.4),
    (UniPC(1, lower_order_final=False), 1.8, 2.3),
    (Heun(), 1.8, 2.2),
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
        get_sampler("rk4")
    with pytest.raises(TypeError, match="sampler must be"):
        get_sampler(3)
    with pytest.raises(ValueError, match="order must be"):
        DPMSolverPP(4)
    with pytest.raises(ValueError, match="eta must be"):
        DDIM(eta=-0.1)


def test_unipc_3_reaches_third_order_territory_and_beats_unipc_2(setting):
    o2, e2 = slope(UniPC(2, lower_order_final=False), setting)
    o3, e3 = slope(UniPC(3, lower_order_final=False), setting)
    assert o3 >= 2.0 and e3[-1] < e2[-1], (o3, e3, e2)


@pytest.mark.parametrize("sampler", [UniPC(1), UniPC(2), UniPC(3), UniPC(2, "bh1"), UniPC(3, disable_corrector=[1, 2]),
                                     DPMSolverSDE(1), DPMSolverSDE(2), DPMSolverSDE(3), Heun(), EulerAncestral(0.5)])
def test_every_row_is_exact_for_a_constant_clean_estimate(sampler):
    """If D_j = c for every j, each row's D-weights sum to what a first-order step gives c: the same
    x -> x' relation as DDIM at the row's points (A stays the sampler's own; the rest goes to c)."""
    grid = sampler.rows(Schedule.log_snr(-3, 3, final="keep").discretize(9))
    t = sampler.table(grid)
    ddim_eta = DDIM().table(grid)
    weight = t.B0 + t.B1 + t.B2 + t.B3
    # x' = A x + weight c must map the exact state of c (x = alpha c) onto the next one (alpha' c) in expectation
    np.testing.assert_allclose(t.A * grid.alpha[:-1] + weight, grid.alpha[1:], rtol=1e-9, atol=1e-12)
    assert np.all(np.isfinite(ddim_eta.A))


def test_unipc_3_corrector_reads_three_past_estimates_and_the_plan_keeps_four():
    t = UniPC(3, lower_order_final=False).table(Schedule.log_snr(-3, 3, final="keep").discretize(8))
    assert t.order.tolist() == [1, 2, 3, 4, 4, 4, 4, 4] and np.all(t.B3[:3] == 0) and np.all(t.B3[3:] != 0)
    assert ltc.plan.HISTORY_SLOTS >= 4


def test_heun_rows_repeat_every_interior_point_and_end_with_euler_at_zero():
    zero = Schedule.log_snr(-3, 3).discretize(4)  # 4 steps, the last to sigma = 0
    rows = Heun().rows(zero)
    assert rows.steps == 7 and rows.repeated and np.array_equal(rows.sigma, zero.sigma[[0, 1, 1, 2, 2, 3, 3, 4]])
    keep = Heun().rows(Schedule.log_snr(-3, 3, final="keep").discretize(4))
    assert keep.steps == 8  # the last step ends at sigma > 0: it keeps its corrector
    with pytest.raises(ValueError, match="expands a grid"):
        Heun().rows(rows)
    with pytest.raises(ValueError, match="zero-length rows"):
        ltc.plan.compile_plan(rows, Heun(), ltc.policies.Full(), ["x0"])
    with pytest.raises(ValueError, match="strictly decreasing"):
        ltc.schedule.Grid(rows.t, rows.alpha, rows.sigma, rows.family)


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m_sde"])
def test_stochastic_samplers_draw_the_data_distribution(sampler):
    """An exact denoiser of one Gaussian N(mu, s^2 I): the samples' mean is mu and their spread the
    posterior mean's at the last noisy point k (the final step returns D there): s^2 / sqrt(s^2 + k^2)."""
    sched = Schedule.vp("scaled_linear", spacing="trailing")
    oracle = GaussianMixture(torch.tensor([[0.7, -0.4]], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64),
                             sched)
    gen = torch.Generator().manual_seed(0)
    x = ltc.sample(oracle, sched, sampler=sampler, steps=200, shape=(4000, 2), dtype=torch.float64, generator=gen,
                   progress=False)
    grid = sched.discretize(200)
    k = grid.sigma[-2] / grid.alpha[-2]
    np.testing.assert_allclose(x.mean(0).numpy(), [0.7, -0.4], atol=0.02)
    np.testing.assert_allclose(x.std(0).numpy(), [0.09 / np.sqrt(0.09 + k ** 2)] * 2, rtol=0.05)


def test_stochastic_samplers_replay_given_noise_exactly_and_check_it():
    sched = Schedule.vp("scaled_linear", spacing="trailing")
    oracle = GaussianMixture.random(sched, dim=3, components=2, seed=1)
    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = torch.randn(6, 5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kw = dict(sampler="euler_a", steps=6, noise=noise, progress=False)
    a = ltc.sample(oracle, sched, step_noise=z, **kw)
    b = ltc.sample(oracle, sched, step_noise=lambda i: z[i], **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, ltc.sample(oracle, sched, step_noise=z.flip(0), **kw))
    with pytest.raises(ValueError, match=r"step_noise must be \[N, B, \*S\]"):
        ltc.sample(oracle, sched, step_noise=z[:5], **kw)
    with pytest.raises(ValueError, match="draws no noise"):
        ltc.sample(oracle, sched, step_noise=z, **{**kw, "sampler": "dpmpp_2m"})
    with pytest.raises(ValueError, match=r"step_noise\(0\) returned has shape \(2, 3\)"):
        ltc.sample(oracle, sched, step_noise=lambda i: z[i, :2], **kw)
    with pytest.raises(ValueError, match="draws noise every step"):
        ltc.sample(oracle, sched, **kw)


@pytest.mark.parametrize("name", [n for n in SAMPLER_NAMES if not get_sampler(n).stochastic])
def test_every_named_sampler_samples_the_oracle_closely(name):
    sched = Schedule.vp("scaled_linear", spacing="trailing")
    oracle = GaussianMixture.random(sched, dim=4, components=3, seed=0)
    noise = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = exact_endpoint(oracle, noise, sched.discretize(30), steps=300)
    x = ltc.sample(oracle, sched, sampler=name, steps=30, noise=noise, progress=False)
    assert rmse(x, exact) < 0.06, name  # DDIM: 0.050; the final jump to sigma = 0 dominates
