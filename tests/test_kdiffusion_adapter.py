"""The k-diffusion adapter: a k-diffusion denoiser and sigmas sampled by ltc give k-diffusion's samples.

k-diffusion itself is not imported: it pulls in scipy, torchsde, torchdiffeq, kornia, clip, wandb
and more (``pip download k-diffusion --no-deps`` shows its requirements), which is not cheap.  The
references below are k-diffusion's ``sample_dpmpp_2m`` and ``sample_euler`` (s_churn = 0) as
published in ``k_diffusion/sampling.py`` (v0.1.1), written out in float64 without the progress bar
and callback.  The denoiser is an exact oracle (the posterior mean of a Gaussian mixture) in
k-diffusion's variance-exploding convention ``x = x0 + sigma eps``.
"""
import math

import pytest
import torch

import ltc
from ltc.adapters.kdiffusion import SAMPLERS, from_kdiffusion, schedule_from_sigmas
from ltc.zoo.oracles import GaussianMixture

DIM = 16


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0):
    """k-diffusion's ``get_sigmas_karras`` (float64 here)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def dpmpp_2m_step(model, x, sigmas, i, old_denoised, extra_args):
    """One step of k-diffusion's ``sample_dpmpp_2m`` (DPM-Solver++(2M)): ``(x_next, denoised)``."""
    s_in = x.new_ones([x.shape[0]])
    sigma_fn = lambda t: t.neg().exp()  # noqa: E731 (as published)
    t_fn = lambda sigma: sigma.log().neg()  # noqa: E731
    denoised = model(x, sigmas[i] * s_in, **extra_args)
    t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
    h = t_next - t
    if old_denoised is None or sigmas[i + 1] == 0:
        return (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised, denoised
    h_last = t - t_fn(sigmas[i - 1])
    r = h_last / h
    denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
    return (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d, denoised


def euler_step(model, x, sigmas, i, old_denoised, extra_args):
    """One step of k-diffusion's ``sample_euler`` with ``s_churn = 0`` (sigma_hat = sigma)."""
    denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]), **extra_args)
    d = (x - denoised) / sigmas[i]  # to_d
    return x + d * (sigmas[i + 1] - sigmas[i]), denoised


REFERENCE_STEPS = {"sample_dpmpp_2m": dpmpp_2m_step, "sample_euler": euler_step}


def k_sample(k_sampler, model, x, sigmas, extra_args):
    """k-diffusion's sampling loop: ``old_denoised`` is the previous step's model output."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        x, old_denoised = REFERENCE_STEPS[k_sampler](model, x, sigmas, i, old_denoised, extra_args)
    return x


class Denoiser:
    """A k-diffusion denoiser ``model(x, sigma, scale=1.0) -> x0``: the exact posterior mean of a
    Gaussian mixture under x = x0 + sigma eps (alpha = 1); ``scale`` is an extra argument (it
    multiplies the mixture means) so ``extra_args`` are exercised too."""

    def __init__(self):
        self.mixture = GaussianMixture.random(ltc.Schedule.vp(), dim=DIM, components=4, std=0.3, seed=3)
        self.means = self.mixture.means.clone()
        self.calls = 0

    def __call__(self, x, sigma, scale=1.0):
        self.calls += 1
        assert sigma.shape == (x.shape[0],)
        self.mixture.means = self.means * scale
        B = x.shape[0]
        alpha = torch.ones(B, 1, dtype=torch.float64)
        x0 = self.mixture.denoise(x.reshape(B, -1).double(), alpha, sigma.reshape(B, 1).double())
        return x0.reshape(x.shape).to(x.dtype)


def noise(sigmas, batch=32):
    return torch.randn(batch, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]


def ltc_trajectory(model, schedule, sampler, x_T, extra_args):
    """ltc's states x_0..x_N and model outputs D_0..D_{N-1}, read through the step callback."""
    states, denoised = [x_T], []

    def record(info):
        states.append(info["x_next"])
        denoised.append(info["denoised"])

    ltc.sample(model, schedule, sampler=sampler, noise=x_T, model_kwargs=extra_args, callback=record,
               progress=False)
    return states, denoised


@pytest.mark.parametrize("steps", [5, 20])
@pytest.mark.parametrize("k_sampler", sorted(SAMPLERS))
def test_every_step_matches_kdiffusion_to_1e_15_in_float64(k_sampler, steps):
    """From ltc's state x_i (and, for 2M, the previous model output), k-diffusion's step lands on
    ltc's x_{i+1} to 1e-15 of the magnitudes entering the step: the two differ only in the order
    of float64 operations (k-diffusion's sigma'/sigma is exp(log sigma - log sigma'), and it sums
    the two model outputs before scaling them), a few units in the last place."""
    sigmas = get_sigmas_karras(steps, 0.03, 14.6)
    den = Denoiser()
    model, schedule = from_kdiffusion(den, sigmas)
    states, denoised = ltc_trajectory(model, schedule, SAMPLERS[k_sampler], noise(sigmas), {"scale": 1.2})
    assert len(states) == steps + 1
    old = None
    for i in range(steps):
        x_next, d = REFERENCE_STEPS[k_sampler](den, states[i], sigmas, i, old, {"scale": 1.2})
        assert torch.equal(d, denoised[i])  # the denoiser saw exactly k-diffusion's input
        entering = [states[i], states[i + 1], d] + ([old] if old is not None else [])
        scale = torch.stack([v.abs().amax(1) for v in entering]).amax(0)
        err = float(((x_next - states[i + 1]).abs().amax(1) / scale).max())
        assert err <= 1e-15, (i, err)
        old = d


@pytest.mark.parametrize("steps", [5, 20])
@pytest.mark.parametrize("k_sampler", sorted(SAMPLERS))
def test_ltc_samples_are_kdiffusion_samples_in_float64(k_sampler, steps):
    """The whole trajectory: the same noise gives k-diffusion's samples, to the per-step round-off
    above carried along the flow.  The flow amplifies it near the mixture's decision boundaries
    (measured: at most 1.5e-14 of max|x0| at 20 steps over 256 samples, 9e-14 at 100 steps), so
    the bound is 1e-13; the other samplers differ by more than 1e-3."""
    sigmas = get_sigmas_karras(steps, 0.03, 14.6)
    den = Denoiser()
    x_T = noise(sigmas)
    expected = k_sample(k_sampler, den, x_T, sigmas, {"scale": 1.2})
    model, schedule = from_kdiffusion(den, sigmas)
    den.calls = 0
    x = ltc.sample(model, schedule, sampler=SAMPLERS[k_sampler], noise=x_T, model_kwargs={"scale": 1.2},
                   progress=False)
    assert den.calls == steps
    assert x.dtype == torch.float64 and torch.equal(x_T, noise(sigmas))  # the caller's noise is untouched
    scale = float(expected.abs().max())
    assert float((x - expected).abs().max()) <= 1e-13 * scale
    for other in ("dpmpp_3m" if k_sampler == "sample_dpmpp_2m" else "dpmpp_2m", "ddim"):
        if SAMPLERS[k_sampler] == "euler" and other == "ddim":
            continue  # Euler equals deterministic DDIM in exact arithmetic (ltc.samplers.Euler)
        y = ltc.sample(model, schedule, sampler=other, noise=x_T, model_kwargs={"scale": 1.2}, progress=False)
        assert float((y - expected).abs().max()) > 1e-3 * scale


def test_the_sigmas_become_the_grid_and_the_model_sees_them():
    sigmas = get_sigmas_karras(6, 0.1, 10.0).to(torch.float32)  # k-diffusion's default dtype
    seen = []

    def denoiser(x, sigma):
        seen.append(sigma.clone())
        return torch.zeros_like(x)

    model, schedule = from_kdiffusion(denoiser, sigmas, name="kd")
    grid = schedule.discretize(None)
    assert grid.steps == 6 and model.prediction == "x0" and model.name == "kd"
    assert (grid.sigma == sigmas.double().numpy()).all() and (grid.alpha == 1).all()
    assert (grid.t == grid.sigma).all()
    ltc.sample(model, schedule, sampler="dpmpp_2m", noise=torch.randn(3, 4) * sigmas[0], progress=False)
    assert [s.shape for s in seen] == [(3,)] * 6
    assert all(torch.equal(s, sigmas[i].expand(3)) for i, s in enumerate(seen))  # float32, exactly k-diffusion's


@pytest.mark.parametrize("sigmas, match", [
    ([10.0, 1.0, 0.0], "torch.Tensor"),
    (torch.tensor([[10.0, 0.0]]), "1-D floating"),
    (torch.tensor([10, 0]), "1-D floating"),
    (torch.tensor([10.0]), "1-D floating"),
    (torch.tensor([10.0, math.nan, 0.0]), "finite"),
    (torch.tensor([10.0, 0.0, 0.0]), "> 0 except the last"),
    (torch.tensor([1.0, 2.0, 0.0]), r"strictly decreasing; sigmas\[0\] = 1.0"),
])
def test_bad_sigmas_are_refused_naming_the_argument(sigmas, match):
    with pytest.raises((TypeError, ValueError), match=match):
        schedule_from_sigmas(sigmas)
    with pytest.raises((TypeError, ValueError), match="sigmas"):
        from_kdiffusion(lambda x, s: x, sigmas)


def test_a_model_that_is_not_callable_is_refused():
    with pytest.raises(TypeError, match="model must be a callable denoiser"):
        from_kdiffusion("unet", get_sigmas_karras(4, 0.1, 10.0))
