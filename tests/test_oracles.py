"""The exact oracles of ``ltc.zoo.oracles``, checked on their own against independent derivations.

Every accuracy number in the benchmarks and calibration tests is measured against these oracles, so
a wrong oracle would silently bless a wrong sampler.  Checked here, each time against a formula
written in this file rather than the oracle's own algebra:

* ``GaussianMixture`` obeys Tweedie's formula  E[x0 | x] = (x + sigma^2 grad_x log p_t(x)) / alpha,
  with p_t the closed-form marginal of x_t (a mixture of N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)),
  written here with logsumexp in float64 and differentiated by autograd.  On vp and flow schedules,
  at model times near both ends and in between (per-sample times in one batch), for several
  dimensions and mixture sizes with unequal weights and unequal stds (so the normalising
  -D/2 log v_k term and the weights matter), at random x, to ~1e-10 relative.
  Model times are integers so alpha, sigma come from the schedule's training tables here, not from
  ``Schedule.noise_at``.
* ``as_prediction``: eps = -sigma grad log p_t, v = alpha eps - sigma x0 (vp), flow = eps - x0
  (flow), and ``ltc.models.x0_coefficients`` maps each back to the same x0.
* ``EmpiricalData``: the softmax-weighted mean of the points (distances computed directly), Tweedie
  on its marginal (a mixture of N(alpha y_n, sigma^2 I)), and the limit of a GaussianMixture with
  tiny stds centred on the points.
* ``exact_endpoint``: for one Gaussian N(mu, s^2 I) the probability-flow ODE is linear and solvable
  (see :func:`test_exact_endpoint_matches_the_closed_form_single_gaussian_flow`), and the RK4
  endpoint must match it to 1e-8 on vp and flow grids, ending at sigma = 0 or before.
"""
import math

import numpy as np
import pytest
import torch

import ltc
from ltc.models import x0_coefficients
from ltc.zoo.oracles import EmpiricalData, GaussianMixture, exact_endpoint, rmse

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster

VP = ltc.Schedule.vp("scaled_linear")
VP_LINEAR = ltc.Schedule.vp("linear")
FLOW = ltc.Schedule.flow(1.0)
T = 1000
# integer model times: near the noise end, the middle, and near the clean end
VP_TIMES = [999, 998, 900, 600, 250, 40, 3, 1, 0]
FLOW_TIMES = [999, 990, 800, 500, 200, 20, 2, 1]


def exact_noise(schedule, t: torch.Tensor):
    """(alpha, sigma) at integer model times, from the schedule's definition (not ``noise_at``)."""
    if schedule.family == "vp":
        abar = torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float64)[t.long()]
        return abar.sqrt(), (1 - abar).sqrt()
    sigma = t.to(torch.float64) / T
    return 1 - sigma, sigma


def mixture_log_density(x, alpha, sigma, means, stds, weights):
    """log p_t(x) of sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I), per sample: [B]."""
    D = means.shape[1]
    v = alpha[:, None] ** 2 * stds[None, :] ** 2 + sigma[:, None] ** 2            # [B, K]
    d2 = ((x[:, None, :] - alpha[:, None, None] * means[None]) ** 2).sum(-1)       # [B, K]
    log_n = -0.5 * D * torch.log(2 * math.pi * v) - 0.5 * d2 / v
    return torch.logsumexp(torch.log(weights)[None] + log_n, dim=1)


def score(x, alpha, sigma, means, stds, weights):
    """grad_x log p_t(x) by autograd, [B, D]."""
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mixture_log_density(x, alpha, sigma, means, stds, weights).sum(), x)
    return g


def relative(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def random_mixture(dim, components, seed):
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(components, dim, generator=g, dtype=torch.float64)
    stds = 0.1 + torch.rand(components, generator=g, dtype=torch.float64)
    weights = 0.2 + torch.rand(components, generator=g, dtype=torch.float64)
    return means, stds, weights / weights.sum()


CASES = [(1, 1), (1, 3), (3, 2), (16, 5), (40, 4)]  # (dim, components)


@pytest.mark.parametrize("schedule,times", [(VP, VP_TIMES), (VP_LINEAR, VP_TIMES), (FLOW, FLOW_TIMES)],
                         ids=["vp-scaled_linear", "vp-linear", "flow"])
@pytest.mark.parametrize("dim,components", CASES)
def test_gaussian_mixture_is_tweedie_of_its_marginal(schedule, times, dim, components):
    means, stds, weights = random_mixture(dim, components, seed=dim * 10 + components)
    oracle = GaussianMixture(means, stds, schedule, weights=weights)
    g = torch.Generator().manual_seed(1)
    reps = 3
    t = torch.tensor(times * reps, dtype=torch.float64)
    alpha, sigma = exact_noise(schedule, t)
    # x from the marginal, and x far from every component (responsibilities saturate)
    k = torch.multinomial(weights, len(t), replacement=True, generator=g)
    x0 = means[k] + stds[k, None] * torch.randn(len(t), dim, generator=g, dtype=torch.float64)
    x = alpha[:, None] * x0 + sigma[:, None] * torch.randn(len(t), dim, generator=g, dtype=torch.float64)
    x[-len(times):] += 3 * torch.randn(len(times), dim, generator=g, dtype=torch.float64)
    want = (x + sigma[:, None] ** 2 * score(x, alpha, sigma, means, stds, weights)) / alpha[:, None]
    got = oracle(x, t)
    assert got.dtype == torch.float64 and got.shape == x.shape
    for i in range(len(t)):  # per sample: each has its own scale
        assert relative(got[i], want[i]) < 1e-10, (float(t[i]), relative(got[i], want[i]))


@pytest.mark.parametrize("schedule,preds", [(VP, ("x0", "eps", "v")), (FLOW, ("x0", "eps", "flow"))],
                         ids=["vp", "flow"])
def test_every_prediction_type_matches_the_score(schedule, preds):
    dim = 6
    means, stds, weights = random_mixture(dim, 3, seed=7)
    oracle = GaussianMixture(means, stds, schedule, weights=weights)
    times = VP_TIMES if schedule.family == "vp" else FLOW_TIMES
    t = torch.tensor(times, dtype=torch.float64)
    alpha, sigma = exact_noise(schedule, t)
    x = torch.randn(len(t), 2, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 1.5
    flat = x.reshape(len(t), dim)
    s = score(flat, alpha, sigma, means, stds, weights)
    a, sg = alpha[:, None], sigma[:, None]
    x0 = (flat + sg ** 2 * s) / a
    eps = -sg * s
    want = {"x0": x0, "eps": eps, "v": a * eps - sg * x0, "flow": eps - x0}
    for pred in preds:
        model = oracle.as_prediction(pred)
        assert model.prediction == pred
        out = model(x, t)
        assert out.shape == x.shape and out.dtype == x.dtype
        out = out.reshape(len(t), dim)
        assert relative(out, want[pred]) < 1e-10, pred
        for i in range(len(t)):  # the prediction maps back to the same x0
            px, pm = x0_coefficients(pred, float(alpha[i]), float(sigma[i]))
            assert relative(px * flat[i] + pm * out[i], x0[i]) < 1e-9, (pred, float(t[i]))


def test_float32_input_gives_float32_output_of_the_float64_computation():
    means, stds, weights = random_mixture(4, 2, seed=2)
    oracle = GaussianMixture(means, stds, VP, weights=weights)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([900.0, 500.0, 100.0, 10.0, 0.0])
    got = oracle(x, t)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), oracle(x.double(), t.double()), rtol=1e-6, atol=1e-6)


# -- EmpiricalData -----------------------------------------------------------------------------
def data_points(M, dim, seed):
    return torch.randn(M, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("schedule,times", [(VP, VP_TIMES), (FLOW, FLOW_TIMES)], ids=["vp", "flow"])
@pytest.mark.parametrize("M,dim", [(1, 3), (7, 2), (50, 16)])
def test_empirical_data_is_the_softmax_weighted_mean_of_the_points(schedule, times, M, dim):
    y = data_points(M, dim, seed=M + dim)
    oracle = EmpiricalData(y, schedule)
    t = torch.tensor(times, dtype=torch.float64)
    alpha, sigma = exact_noise(schedule, t)
    g = torch.Generator().manual_seed(5)
    pick = torch.randint(M, (len(t),), generator=g)
    x = alpha[:, None] * y[pick] + sigma[:, None] * torch.randn(len(t), dim, generator=g, dtype=torch.float64)
    got = oracle(x, t)
    d2 = ((x[:, None, :] - alpha[:, None, None] * y[None]) ** 2).sum(-1)             # [B, M], directly
    r = torch.softmax(-d2 / (2 * sigma[:, None] ** 2), dim=1)
    want = (r[:, :, None] * y[None]).sum(1)
    for i in range(len(t)):
        assert relative(got[i], want[i]) < 1e-9, float(t[i])
    # Tweedie on the empirical marginal sum_n N(alpha y_n, sigma^2 I) / M
    zero_stds, uniform = torch.zeros(M, dtype=torch.float64), torch.full((M,), 1.0 / M, dtype=torch.float64)
    s = score(x, alpha, sigma, y, zero_stds, uniform)
    tweedie = (x + sigma[:, None] ** 2 * s) / alpha[:, None]
    for i in range(len(t)):
        assert relative(got[i], tweedie[i]) < 1e-9, float(t[i])


@pytest.mark.parametrize("schedule,times", [(VP, VP_TIMES), (FLOW, FLOW_TIMES)], ids=["vp", "flow"])
def test_empirical_data_is_the_limit_of_a_narrow_gaussian_mixture(schedule, times):
    y = data_points(9, 5, seed=11)
    empirical = EmpiricalData(y, schedule)
    narrow = GaussianMixture(y, 1e-7, schedule)
    t = torch.tensor(times, dtype=torch.float64)
    alpha, sigma = exact_noise(schedule, t)
    x = alpha[:, None] * y[torch.arange(len(t)) % 9] + sigma[:, None] * \
        torch.randn(len(t), 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, b = empirical(x, t), narrow(x, t)
    for i in range(len(t)):
        assert relative(a[i], b[i]) < 1e-9, float(t[i])


# -- exact_endpoint ----------------------------------------------------------------------------
GRIDS = {
    "vp-trailing-to-zero": ltc.Schedule.vp("scaled_linear", spacing="trailing").discretize(10),
    "vp-linear-ends-at-first-training-step": ltc.Schedule.vp("linear", spacing="trailing", final="last").discretize(25),
    "flow-shift3-from-sigma-1": ltc.Schedule.flow(3.0).discretize(12),
    "flow-log-snr-keep": ltc.Schedule.log_snr(-3.0, 4.0, family="flow", final="keep").discretize(8),
    "vp-log-snr-keep": ltc.Schedule.log_snr(-5.0, 2.0, family="vp", final="keep").discretize(8),
}


@pytest.mark.parametrize("name", list(GRIDS))
def test_exact_endpoint_matches_the_closed_form_single_gaussian_flow(name):
    """Data N(mu, s^2 I).  With x = alpha x0 + sigma eps the marginal is N(alpha mu, v I),
    v = alpha^2 s^2 + sigma^2, and the posterior mean is D = mu + alpha s^2 / v (x - alpha mu).
    The probability-flow ODE moves x along x = alpha D + sigma eps_hat with D and
    eps_hat = (x - alpha D) / sigma frozen, i.e. dx/dt = alpha' D + sigma' eps_hat.  For
    z = x - alpha mu: eps_hat = sigma z / v, so

        dz/dt = (alpha alpha' s^2 + sigma sigma') / v * z = v' / (2 v) * z,

    a linear ODE with solution z_u = sqrt(v_u / v_t) z_t.  The map from grid point 0 to the last
    point is therefore  x_end = alpha_end mu + sqrt(v_end / v_0) (x_0 - alpha_0 mu);  at the clean
    end (alpha = 1, sigma = 0, v = s^2) x_end = mu + s (x_0 - alpha_0 mu) / sqrt(alpha_0^2 s^2 + sigma_0^2).
    Valid for vp and flow alike (only alpha, sigma enter), including a flow grid that starts at
    alpha = 0 (x_end = mu + s x_0)."""
    grid = GRIDS[name]
    dim, s = 5, 0.6
    mu = torch.tensor([[1.0, -0.5, 0.25, 2.0, 0.0]], dtype=torch.float64)
    oracle = GaussianMixture(mu, s, VP if grid.family == "vp" else FLOW)
    x_start = torch.randn(6, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a0, s0, a1, s1 = (float(v) for v in (grid.alpha[0], grid.sigma[0], grid.alpha[-1], grid.sigma[-1]))
    v0, v1 = a0 ** 2 * s ** 2 + s0 ** 2, a1 ** 2 * s ** 2 + s1 ** 2
    want = a1 * mu + math.sqrt(v1 / v0) * (x_start - a0 * mu)
    got = exact_endpoint(oracle, x_start, grid)
    assert got.shape == x_start.shape
    assert relative(got, want) < 1e-8, relative(got, want)
    assert rmse(got, want) < 1e-8
    # the map is a scaling of x - alpha mu: a non-trivial one (the test would notice a no-op ODE)
    assert relative(x_start, want) > 0.05


def test_exact_endpoint_keeps_the_noise_shape_and_converges_as_rk4():
    grid = ltc.Schedule.vp("scaled_linear", spacing="trailing").discretize(10)
    oracle = GaussianMixture.random(VP, dim=6, components=3, seed=4)
    noise = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fine, coarse = exact_endpoint(oracle, noise, grid, steps=1600), exact_endpoint(oracle, noise, grid, steps=400)
    assert fine.shape == noise.shape
    assert rmse(fine, coarse) < 1e-7


def test_rmse():
    a = torch.zeros(2, 3)
    assert rmse(a, a) == 0.0
    assert np.isclose(rmse(a, torch.full((2, 3), 2.0, dtype=torch.float64)), 2.0)
