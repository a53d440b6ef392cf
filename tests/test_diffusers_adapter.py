"""ltc.adapters.diffusers: grids, samplers and models taken from diffusers agree with diffusers' own loop.

Agreement is measured as max |ltc - diffusers| / max |diffusers| over the final samples (float32
round-off: ~1e-7 per step).  ``python tests/test_diffusers_adapter.py`` prints the figures.
"""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip(
    "diffusers", reason="diffusers is not installed (the 'diffusers' extra of the README's install command)")

import ltc  # noqa: E402
from ltc.adapters.diffusers import (model_fn_from_transformer, model_fn_from_unet,  # noqa: E402
                                    prediction_from_diffusers, sampler_from_diffusers, schedule_from_diffusers)
from ltc.zoo.oracles import GaussianMixture  # noqa: E402
from ltc.samplers import DDIM, DPMSolverPP, Euler  # noqa: E402
from ltc.schedule import Schedule  # noqa: E402

ROUND_OFF = 1e-5  # relative agreement of float32 samples (observed: 1e-7 .. 4e-6)
LINEAR = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

DDIM_TRAILING = dict(LINEAR, clip_sample=False, timestep_spacing="trailing")

# (name, scheduler class, config, steps, eta): settings where diffusers' and ltc's definitions agree
ORACLE_CASES = [
    ("ddim trailing", "DDIMScheduler", DDIM_TRAILING, 10, 0.0),
    ("ddim leading sd", "DDIMScheduler", dict(SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1), 20, 0.0),
    ("ddim eta=0.5", "DDIMScheduler", DDIM_TRAILING, 10, 0.5),
    ("ddim v", "DDIMScheduler", dict(DDIM_TRAILING, prediction_type="v_prediction"), 25, 0.0),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", LINEAR, 10, 0.0),
    ("dpmpp_2m sigma_min", "DPMSolverMultistepScheduler", dict(LINEAR, final_sigmas_type="sigma_min"), 20, 0.0),
    ("dpmpp_2m karras", "DPMSolverMultistepScheduler", dict(SD, use_karras_sigmas=True), 20, 0.0),
    ("dpmpp_2m x0", "DPMSolverMultistepScheduler", dict(LINEAR, prediction_type="sample"), 10, 0.0),
    ("dpmpp_3m", "DPMSolverMultistepScheduler", dict(LINEAR, solver_order=3), 10, 0.0),
    ("dpmpp_3m sigma_min", "DPMSolverMultistepScheduler", dict(LINEAR, solver_order=3, final_sigmas_type="sigma_min"),
     20, 0.0),
    ("dpmpp_2m flow sigmas", "DPMSolverMultistepScheduler",
     dict(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"), 12, 0.0),
    ("flow euler shift 3", "FlowMatchEulerDiscreteScheduler", dict(shift=3.0), 10, 0.0),
    ("flow euler", "FlowMatchEulerDiscreteScheduler", {}, 28, 0.0),
    ("euler leading", "EulerDiscreteScheduler", dict(LINEAR, timestep_spacing="leading", steps_offset=1), 15, 0.0),
    ("euler linspace v", "EulerDiscreteScheduler", dict(LINEAR, prediction_type="v_prediction"), 15, 0.0),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster


def diffusers_loop(scheduler, model, latents, steps, *, eta=None, generator=None, guidance_scale=None):
    """diffusers' own pipeline loop (scale_model_input, model call, optional CFG, scheduler.step)."""
    scheduler = type(scheduler).from_config(scheduler.config)
    scheduler.set_timesteps(steps)
    x = latents * getattr(scheduler, "init_noise_sigma", 1.0)  # flow matching has neither
    scale_input = getattr(scheduler, "scale_model_input", lambda sample, t: sample)
    with torch.no_grad():
        for t in scheduler.timesteps:
            inp = scale_input(x, t)
            if guidance_scale is not None:
                inp = torch.cat([inp, inp])
            out = model(inp, t.to(torch.float32).expand(inp.shape[0]))
            if guidance_scale is not None:
                u, c = out.chunk(2)
                out = u + guidance_scale * (c - u)
            kwargs = {} if eta is None else {"eta": eta, "generator": generator}
            x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


def ltc_start(scheduler, latents, steps):
    """ltc's initial state for diffusers' latents: alpha_0 * init_noise_sigma * latents for
    EulerDiscrete (its state is x / alpha), the latents otherwise."""
    if not isinstance(scheduler, diffusers.EulerDiscreteScheduler):
        return latents
    s = type(scheduler).from_config(scheduler.config)
    s.set_timesteps(steps)
    return latents * s.init_noise_sigma * schedule_from_diffusers(scheduler, steps).discretize(None).alpha[0]


def agreement(scheduler, model, latents, steps, *, eta=0.0, guidance_scale=None, model_diffusers=None):
    """(max abs, max rel) difference of ltc.sample vs diffusers' loop from the same latents."""
    kind_ddim = isinstance(scheduler, diffusers.DDIMScheduler)
    gen = (lambda: torch.Generator().manual_seed(11)) if eta else (lambda: None)
    x_ltc = ltc.sample(model, schedule_from_diffusers(scheduler, steps), sampler=sampler_from_diffusers(
        scheduler, steps, eta=eta), noise=ltc_start(scheduler, latents, steps), guidance_scale=guidance_scale,
        generator=gen(), progress=False)
    x_dif = diffusers_loop(scheduler, model_diffusers or model, latents, steps, eta=eta if kind_ddim else None,
                           generator=gen(), guidance_scale=guidance_scale)
    diff = float((x_ltc.double() - x_dif.double()).abs().max())
    return diff, diff / float(x_dif.double().abs().max())


def oracle_for(scheduler, steps, dim=16):
    schedule = schedule_from_diffusers(scheduler, steps)
    return GaussianMixture.random(schedule, dim=dim, seed=3).as_prediction(prediction_from_diffusers(scheduler))


def latents(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name, cls, config, steps, eta", ORACLE_CASES, ids=[c[0] for c in ORACLE_CASES])
def test_oracle_samples_agree_with_diffusers_loop(name, cls, config, steps, eta):
    scheduler = getattr(diffusers, cls)(**config)
    _, rel = agreement(scheduler, oracle_for(scheduler, steps), latents(4, 16), steps, eta=eta)
    assert rel < ROUND_OFF


# -- tiny randomly initialised diffusers models (built in code, no downloads) --------------------
def tiny_unet(seed=0, cross_attention=False):
    torch.manual_seed(seed)
    common = dict(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
                  norm_num_groups=4)
    if cross_attention:
        return diffusers.UNet2DConditionModel(**common, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                              cross_attention_dim=12, attention_head_dim=4).eval()
    return diffusers.UNet2DModel(**common, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def tiny_sd3(seed=0):
    torch.manual_seed(seed)
    return diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=2, out_channels=2, num_layers=1,
                                           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
                                           caption_projection_dim=16, pooled_projection_dim=6,
                                           pos_embed_max_size=16).eval()


UNET_CASES = [
    ("ddim", lambda: diffusers.DDIMScheduler(**SD, clip_sample=False, steps_offset=1), 10),
    ("dpmpp_2m", lambda: diffusers.DPMSolverMultistepScheduler(**SD), 10),
    ("dpmpp_2m karras v", lambda: diffusers.DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True,
                                                                        prediction_type="v_prediction"), 10),
]


@pytest.mark.parametrize("name, make, steps", UNET_CASES, ids=[c[0] for c in UNET_CASES])
def test_tiny_unet_samples_agree_with_diffusers_loop(name, make, steps):
    scheduler, unet = make(), tiny_unet()
    model = model_fn_from_unet(unet, prediction=prediction_from_diffusers(scheduler))
    _, rel = agreement(scheduler, model, latents(2, 2, 8, 8), steps)
    assert rel < ROUND_OFF


def test_tiny_conditional_unet_with_guidance_agrees_with_diffusers_loop():
    scheduler, unet = diffusers.DPMSolverMultistepScheduler(**SD), tiny_unet(cross_attention=True)
    cond, uncond = latents(2, 5, 12), torch.zeros(1, 5, 12)
    model = model_fn_from_unet(unet, prediction="eps", encoder_hidden_states=cond,
                               negative={"encoder_hidden_states": uncond})

    def by_hand(x, t):  # what a diffusers pipeline does: [uncond; cond] embeddings
        emb = torch.cat([uncond.expand(2, 5, 12), cond])
        return unet(x, t, encoder_hidden_states=emb).sample

    _, rel = agreement(scheduler, model, latents(2, 2, 8, 8), 10, guidance_scale=4.0, model_diffusers=by_hand)
    assert rel < ROUND_OFF


def test_tiny_sd3_transformer_flow_euler_agrees_with_diffusers_loop():
    scheduler, net = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), tiny_sd3()
    model = model_fn_from_transformer(net, prediction="flow", encoder_hidden_states=latents(2, 3, 12),
                                      pooled_projections=latents(2, 6))
    _, rel = agreement(scheduler, model, latents(2, 2, 8, 8), 10)
    assert rel < ROUND_OFF


# -- the recipe: ltc policies inside a diffusers-style pipeline loop ------------------------------
def test_recipe_ltc_and_tstitch_in_a_diffusers_style_loop():
    """The README recipe: the pipeline keeps its loop and calls its own unets; the Stepper decides
    which unet runs (T-Stitch) and which steps are extrapolated (LTC).  Same numbers as ltc.sample."""
    scheduler = diffusers.DPMSolverMultistepScheduler(**SD)
    steps, guidance = 12, 3.0
    small, large = tiny_unet(seed=1, cross_attention=True), tiny_unet(seed=2, cross_attention=True)
    cond, uncond = latents(2, 5, 12), torch.zeros(2, 5, 12)
    emb = torch.cat([uncond, cond])                     # unconditional first, as diffusers pipelines do
    schedule = schedule_from_diffusers(scheduler, steps)
    sampler = sampler_from_diffusers(scheduler, steps)
    prediction = prediction_from_diffusers(scheduler)
    unets = [small, large]
    models = [model_fn_from_unet(u, prediction=prediction) for u in unets]
    lat = latents(2, 2, 8, 8)
    policies = {"tstitch": ltc.policies.TStitch(0.4)}
    if hasattr(ltc.policies, "LTC"):
        policies["ltc"] = ltc.policies.LTC(base=ltc.policies.Full())
        policies["tstitch|ltc"] = ltc.policies.TStitch(0.4) | ltc.policies.LTC()
    for name, policy in policies.items():
        st = ltc.Stepper(schedule, policy, sampler=sampler, noise=lat, predictions=[prediction] * 2,
                         guidance_scale=guidance)
        calls = [0, 0]
        with torch.no_grad():
            while not st.done:                          # the pipeline's own loop
                x_in, t, k = st.request()
                noise_pred = unets[k](x_in, t, encoder_hidden_states=emb).sample
                calls[k] += 1
                st.step(noise_pred)
        expected, info = ltc.sample(models, schedule, policy, sampler=sampler, noise=lat, guidance_scale=guidance,
                                    model_kwargs={"encoder_hidden_states": emb}, progress=False, return_info=True)
        assert torch.equal(st.x, expected), name
        assert calls == info.nfe_per_model, name
    assert sum(calls) < steps  # the last policy skipped model calls


# -- grids, samplers and predictions ------------------------------------------------------------
def test_ddim_grid_equals_ltc_vp_schedule_to_float32_alphas():
    for spacing, steps, offset in [("leading", 20, 1), ("trailing", 10, 0)]:
        scheduler = diffusers.DDIMScheduler(**SD, timestep_spacing=spacing, steps_offset=offset)
        got = schedule_from_diffusers(scheduler, steps).discretize(None)
        ref = Schedule.vp("scaled_linear", spacing=spacing, steps_offset=offset).discretize(steps)
        np.testing.assert_array_equal(got.t, ref.t)
        np.testing.assert_allclose(got.alpha, ref.alpha, rtol=1e-5)  # diffusers' cumprod is float32
        np.testing.assert_allclose(got.sigma, ref.sigma, rtol=1e-5)


def test_flow_match_grid_is_ltc_flow_with_sigma_min_shifted_twice():
    """FlowMatchEuler shifts sigma_min = 1/T twice: ltc's default; sigma_min=1/T is the single shift."""
    shift, T = 3.0, 1000
    got = schedule_from_diffusers(diffusers.FlowMatchEulerDiscreteScheduler(shift=shift), 10).discretize(None)
    shifted_min = shift * (1 / T) / (1 + (shift - 1) * (1 / T))
    for ref in (Schedule.flow(shift, sigma_min=shifted_min).discretize(10), Schedule.flow(shift).discretize(10)):
        np.testing.assert_allclose(got.sigma, ref.sigma, rtol=1e-6, atol=1e-7)
    assert np.abs(Schedule.flow(shift, sigma_min=1 / T).discretize(10).sigma - got.sigma).max() > 1e-3
    assert got.family == "flow" and got.alpha[0] == 0.0


def test_ddim_off_grid_spacing_warns_and_differs_from_diffusers():
    scheduler = diffusers.DDIMScheduler(**LINEAR, clip_sample=False, timestep_spacing="linspace")  # leaves the grid
    with pytest.warns(UserWarning, match="not the next timestep"):
        schedule = schedule_from_diffusers(scheduler, 10)
    oracle = GaussianMixture.random(schedule, dim=16, seed=3).as_prediction("eps")
    with pytest.warns(UserWarning):
        _, rel = agreement(scheduler, oracle, latents(4, 16), 10)
    assert rel > 100 * ROUND_OFF


class RecordingDPM(diffusers.DPMSolverMultistepScheduler):
    """Records the order of every update diffusers takes."""

    orders: list

    def dpm_solver_first_order_update(self, *a, **k):
        self.orders.append(1)
        return super().dpm_solver_first_order_update(*a, **k)

    def multistep_dpm_solver_second_order_update(self, *a, **k):
        self.orders.append(2)
        return super().multistep_dpm_solver_second_order_update(*a, **k)

    def multistep_dpm_solver_third_order_update(self, *a, **k):
        self.orders.append(3)
        return super().multistep_dpm_solver_third_order_update(*a, **k)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [6, 14, 15, 20])
@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("euler_at_final", [False, True])
def test_dpm_solver_orders_follow_diffusers_rules(order, steps, lower_order_final, final, euler_at_final):
    scheduler = RecordingDPM(**LINEAR, solver_order=order, lower_order_final=lower_order_final,
                             final_sigmas_type=final, euler_at_final=euler_at_final)
    scheduler.orders = []
    scheduler.set_timesteps(steps)
    x = torch.zeros(1, 2)
    for t in scheduler.timesteps:
        x = scheduler.step(torch.zeros(1, 2), t, x).prev_sample
    sampler = sampler_from_diffusers(scheduler, steps)
    table = sampler.table(schedule_from_diffusers(scheduler, steps).discretize(None))
    assert table.order.tolist() == scheduler.orders


def test_samplers_and_predictions_map_by_class_and_prediction_type():
    assert isinstance(sampler_from_diffusers(diffusers.DDIMScheduler(clip_sample=False), 10), DDIM)
    assert sampler_from_diffusers(diffusers.DDIMScheduler(clip_sample=False), 10, eta=0.3).eta == 0.3
    assert isinstance(sampler_from_diffusers(diffusers.FlowMatchEulerDiscreteScheduler(), 10), Euler)
    assert isinstance(sampler_from_diffusers(diffusers.EulerDiscreteScheduler(), 10), Euler)
    assert isinstance(sampler_from_diffusers(diffusers.DPMSolverMultistepScheduler(), 10), DPMSolverPP)
    for diffusers_name, ltc_name in [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v")]:
        assert prediction_from_diffusers(diffusers.DDIMScheduler(prediction_type=diffusers_name)) == ltc_name
    assert prediction_from_diffusers(diffusers.FlowMatchEulerDiscreteScheduler()) == "flow"


def test_config_dicts_work_and_the_callers_scheduler_is_not_touched():
    scheduler = diffusers.DPMSolverMultistepScheduler(**SD)
    scheduler.set_timesteps(7)
    before = scheduler.timesteps.clone()
    from_object = schedule_from_diffusers(scheduler, 10).discretize(None)
    config = json.loads(scheduler.to_json_string())  # as in a pipeline's scheduler_config.json
    from_dict = schedule_from_diffusers(config, 10).discretize(None)
    assert torch.equal(scheduler.timesteps, before)
    np.testing.assert_array_equal(from_object.sigma, from_dict.sigma)
    assert from_object.steps == 10


@pytest.mark.parametrize("make, match", [
    (lambda: diffusers.DDIMScheduler(clip_sample=True), "clip_sample"),
    (lambda: diffusers.DDIMScheduler(thresholding=True, clip_sample=False), "thresholding"),
    (lambda: diffusers.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver"), "algorithm_type"),
    (lambda: diffusers.DPMSolverMultistepScheduler(solver_type="heun"), "solver_type"),
    (lambda: diffusers.DPMSolverMultistepScheduler(variance_type="learned_range"), "learned_variance"),
    (lambda: diffusers.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), "stochastic_sampling"),
])
def test_options_without_an_ltc_equivalent_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        sampler_from_diffusers(make(), 10)


def test_bad_arguments_name_what_was_expected():
    with pytest.raises(ValueError, match="not supported"):
        schedule_from_diffusers(diffusers.PNDMScheduler(), 10)
    with pytest.raises(ValueError, match="_class_name"):
        schedule_from_diffusers({"num_train_timesteps": 1000}, 10)
    with pytest.raises(TypeError, match="scheduler_or_config"):
        schedule_from_diffusers("ddim", 10)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        schedule_from_diffusers(diffusers.DDIMScheduler(), 0)
    with pytest.raises(ValueError, match="prediction_type"):
        prediction_from_diffusers(diffusers.DPMSolverMultistepScheduler(prediction_type="flow_prediction").config
                                  | {"_class_name": "DDIMScheduler", "prediction_type": "noise"})
    with pytest.raises(ValueError, match="invert_sigmas"):
        schedule_from_diffusers(diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True), 10)


# -- model functions ------------------------------------------------------------------------------
def test_unet_model_fn_builds_the_guidance_batch_unconditional_first():
    unet = tiny_unet(cross_attention=True)
    cond, uncond = latents(2, 5, 12), torch.zeros(1, 5, 12)
    model = model_fn_from_unet(unet, prediction="eps", encoder_hidden_states=cond,
                               negative={"encoder_hidden_states": uncond}, name="tiny")
    assert model.prediction == "eps" and model.name == "tiny"
    x, t = latents(4, 2, 8, 8), torch.full((4,), 500.0)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=torch.cat([uncond.expand(2, 5, 12), cond])).sample
    assert torch.equal(model(x, t), ref)
    with pytest.raises(ValueError, match="doubled batch"):
        model(x[:3], t[:3])
    with pytest.raises(ValueError, match="without a conditional value"):
        model_fn_from_unet(unet, prediction="eps", negative={"encoder_hidden_states": uncond})


def test_model_fn_runs_in_the_models_dtype_and_keeps_the_first_channels_of_learned_variance():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=4, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).eval().to(torch.float64)
    model = model_fn_from_unet(unet, prediction="eps", learned_variance=True)
    x, t = latents(2, 2, 8, 8), torch.full((2,), 10.0)
    out = model(x, t)
    with torch.no_grad():
        ref = unet(x.double(), t).sample[:, :2].float()
    assert out.dtype == torch.float32 and torch.equal(out, ref)


def test_model_fn_rejects_non_modules_and_bad_timestep_scale():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        model_fn_from_unet(lambda x, t: x, prediction="eps")
    with pytest.raises(ValueError, match="timestep_scale"):
        model_fn_from_transformer(tiny_sd3(), prediction="flow", timestep_scale=float("inf"))


def report():
    """Print the agreement figures (max abs / max rel difference per case)."""
    print(f"{'case':32s} {'ltc sampler':45s} {'max abs':>9s} {'max rel':>9s}")
    rows = [(n, getattr(diffusers, c)(**k), s, e, None) for n, c, k, s, e in ORACLE_CASES]
    rows += [(f"tiny UNet2DModel {n}", m(), s, 0.0, "unet") for n, m, s in UNET_CASES]
    for name, scheduler, steps, eta, kind in rows:
        model = oracle_for(scheduler, steps) if kind is None else \
            model_fn_from_unet(tiny_unet(), prediction=prediction_from_diffusers(scheduler))
        x = latents(4, 16) if kind is None else latents(2, 2, 8, 8)
        a, r = agreement(scheduler, model, x, steps, eta=eta)
        print(f"oracle {name:25s} {sampler_from_diffusers(scheduler, steps, eta=eta)!r:45s} {a:9.2e} {r:9.2e}"
              if kind is None else f"{name:32s} {sampler_from_diffusers(scheduler, steps)!r:45s} {a:9.2e} {r:9.2e}")
    scheduler, unet = diffusers.DPMSolverMultistepScheduler(**SD), tiny_unet(cross_attention=True)
    cond, uncond = latents(2, 5, 12), torch.zeros(1, 5, 12)
    model = model_fn_from_unet(unet, prediction="eps", encoder_hidden_states=cond,
                               negative={"encoder_hidden_states": uncond})
    a, r = agreement(scheduler, model, latents(2, 2, 8, 8), 10, guidance_scale=4.0, model_diffusers=lambda x, t: unet(
        x, t, encoder_hidden_states=torch.cat([uncond.expand(2, 5, 12), cond])).sample)
    print(f"{'tiny UNet2DCondition CFG=4':32s} {sampler_from_diffusers(scheduler, 10)!r:45s} {a:9.2e} {r:9.2e}")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    model = model_fn_from_transformer(tiny_sd3(), prediction="flow", encoder_hidden_states=latents(2, 3, 12),
                                      pooled_projections=latents(2, 6))
    a, r = agreement(scheduler, model, latents(2, 2, 8, 8), 10)
    print(f"{'tiny SD3Transformer flow euler':32s} {sampler_from_diffusers(scheduler, 10)!r:45s} {a:9.2e} {r:9.2e}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    report()
