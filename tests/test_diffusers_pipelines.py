"""ltc inside diffusers pipelines (tiny models built from configs with random weights, no downloads):
the drop-in scheduler reproduces diffusers' own scheduler of the same name and config, LTC makes the
pipeline call its model exactly NFE times with the latents of ``ltc.sample``, and the stitched
denoiser calls each model on its planned steps."""
import importlib.util

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import ltc  # noqa: E402
from ltc.adapters.diffusers import schedule_from_diffusers  # noqa: E402
from ltc.adapters.diffusers import Scheduler, StitchedDenoiser, scheduler  # noqa: E402
from ltc.policies import LTC, TStitch  # noqa: E402

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
ROUND_OFF = 1e-5


def tiny_dit(seed=0):
    torch.manual_seed(seed)
    return diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                           num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_zero").eval()


def tiny_vae(blocks=1):
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
                                   up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=(8,) * blocks,
                                   layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16).eval()


class Counted(torch.nn.Module):
    """A denoiser that counts its calls (and looks like the model it wraps to the pipeline)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)


def dit_latents(pipe, steps, guidance_scale=1.0):
    """The DiT pipeline's final latents (recorded at the VAE decode) for two class labels."""
    seen = []
    decode = pipe.vae.decode
    pipe.vae.decode = lambda z, *a, **k: (seen.append(z * pipe.vae.config.scaling_factor), decode(z, *a, **k))[1]
    try:
        pipe(class_labels=[1, 2], num_inference_steps=steps, guidance_scale=guidance_scale, output_type="np",
             generator=torch.Generator().manual_seed(0))
    finally:
        pipe.vae.decode = decode
    return seen[0]


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


DIT_CASES = [
    ("ddim", lambda: diffusers.DDIMScheduler(clip_sample=False), None),
    ("dpmpp_2m", lambda: diffusers.DPMSolverMultistepScheduler(), None),
    ("dpmpp_2m karras", lambda: diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True), None),
    ("euler", lambda: diffusers.EulerDiscreteScheduler(), None),
    ("unipc", lambda: diffusers.UniPCMultistepScheduler(), None),
]  # not Heun: DiT's loop hands step() the *scaled* model input, which Heun's stored first stage ignores


@pytest.mark.parametrize("name, make, sampler", DIT_CASES, ids=[c[0] for c in DIT_CASES])
@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_dit_pipeline_with_the_drop_in_scheduler_equals_diffusers_own(name, make, sampler, guidance_scale):
    base = make()
    pipe = diffusers.DiTPipeline(transformer=tiny_dit(), vae=tiny_vae(), scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    want = dit_latents(pipe, 6, guidance_scale)
    pipe.scheduler = scheduler(base, sampler=sampler)
    got = dit_latents(pipe, 6, guidance_scale)
    assert relative(got, want) < ROUND_OFF, name


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc"])
def test_ltc_in_a_pipeline_calls_the_model_nfe_times_with_the_latents_of_ltc_sample(sampler):
    base = diffusers.DPMSolverMultistepScheduler()
    net = Counted(tiny_dit())
    pipe = diffusers.DiTPipeline(transformer=net, vae=tiny_vae(), scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    policy = LTC(weights=1.0)
    pipe.scheduler = scheduler(base, sampler=sampler, policy=policy)
    got = dit_latents(pipe, 12)
    plan = pipe.scheduler.plan
    assert net.calls == plan.nfe < 12 and len(pipe.scheduler.timesteps) == plan.nfe
    labels = torch.tensor([1, 2])

    def model(x, t):
        return net.net(x, timestep=t, class_labels=labels).sample[:, :4]
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    want = ltc.sample(ltc.Model(model, "eps"), schedule_from_diffusers(base, 12), policy, sampler=sampler, noise=noise,
                      progress=False)
    assert relative(got, want) < ROUND_OFF
    dit_latents(pipe, 12)  # the pipeline called again: the scheduler restarts its plan
    assert net.calls == 2 * plan.nfe


def test_stitched_denoiser_calls_each_model_on_its_planned_steps_and_restarts():
    base = diffusers.DDIMScheduler(clip_sample=False)
    small, large = Counted(tiny_dit(1)), Counted(tiny_dit(2))
    sched = scheduler(base, sampler="ddim", policy=TStitch([0.4]))
    pipe = diffusers.DiTPipeline(transformer=large, vae=tiny_vae(), scheduler=base)
    pipe.set_progress_bar_config(disable=True)
    order = []
    small.register_forward_hook(lambda *a: order.append(0))
    large.register_forward_hook(lambda *a: order.append(1))
    pipe.scheduler, pipe.transformer = sched, StitchedDenoiser([small, large], sched)
    got = dit_latents(pipe, 10)
    assert order == list(sched.plan.models) == [0] * 4 + [1] * 6
    assert pipe.transformer.calls == sched.plan.nfe_per_model() == [small.calls, large.calls]
    labels = torch.tensor([1, 2])

    def model(net):
        return ltc.Model(lambda x, t: net.net(x, timestep=t, class_labels=labels[:len(x)]).sample[:, :4], "eps")
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    want = ltc.sample([model(small), model(large)], schedule_from_diffusers(base, 10), TStitch([0.4]), sampler="ddim",
                      noise=noise, progress=False)
    assert relative(got, want) < ROUND_OFF
    dit_latents(pipe, 10)
    assert order == 2 * ([0] * 4 + [1] * 6)


def test_the_scheduler_refuses_what_it_cannot_do_clearly():
    base = diffusers.DDIMScheduler(clip_sample=False)
    with pytest.raises(TypeError, match="policy must be"):
        Scheduler(base, policy="ltc")
    sched = scheduler(base, sampler="ddim")
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sched.step(torch.zeros(1, 4), 999, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="num_inference_steps"):
        sched.set_timesteps(timesteps=[999, 500, 1])
    with pytest.raises(ValueError, match="stitches 2 models"):
        StitchedDenoiser([tiny_dit(), tiny_dit()], sched)


# -- Stable Diffusion (UNet) and SD3 (flow matching) pipelines, given prompt embeddings ------------
def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                          layers_per_block=1, norm_num_groups=4,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                          cross_attention_dim=12, attention_head_dim=4).eval()


SD_CASES = [
    ("dpmpp_2m", lambda: diffusers.DPMSolverMultistepScheduler(**SD, steps_offset=1)),
    ("dpmpp_2m karras v", lambda: diffusers.DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True,
                                                                        prediction_type="v_prediction")),
    ("unipc", lambda: diffusers.UniPCMultistepScheduler(**SD)),
    ("euler", lambda: diffusers.EulerDiscreteScheduler(**SD)),
    ("heun", lambda: diffusers.HeunDiscreteScheduler(**SD)),
    ("euler_a (same generator draws)", lambda: diffusers.EulerAncestralDiscreteScheduler(**SD)),
    ("dpmpp_2m_sde (same generator draws)", lambda: diffusers.DPMSolverMultistepScheduler(
        **SD, algorithm_type="sde-dpmsolver++")),
    ("ddim", lambda: diffusers.DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1)),
]


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="StableDiffusionPipeline needs transformers")
@pytest.mark.parametrize("name, make", SD_CASES, ids=[c[0] for c in SD_CASES])
def test_stable_diffusion_pipeline_with_the_drop_in_scheduler_equals_diffusers_own(name, make):
    base = make()
    pipe = diffusers.StableDiffusionPipeline(vae=tiny_vae(2), text_encoder=None, tokenizer=None, unet=tiny_unet(),
                                             scheduler=base, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    emb = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(1))
    kw = dict(prompt_embeds=emb, negative_prompt_embeds=emb.flip(0), num_inference_steps=8, height=16, width=16,
              output_type="latent", guidance_scale=5.0)
    want = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    pipe.scheduler = scheduler(base)
    got = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert relative(got, want) < ROUND_OFF, name


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="StableDiffusion3Pipeline needs transformers")
def test_sd3_flow_pipeline_with_the_drop_in_scheduler_equals_diffusers_own_and_runs_ltc():
    torch.manual_seed(0)
    net = Counted(diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4,
                                                  num_layers=1, attention_head_dim=8, num_attention_heads=2,
                                                  joint_attention_dim=12, caption_projection_dim=16,
                                                  pooled_projection_dim=6, pos_embed_max_size=16).eval())
    base = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = diffusers.StableDiffusion3Pipeline(transformer=net, scheduler=base, vae=tiny_vae(2), text_encoder=None,
                                              tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                              text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(1)
    kw = dict(prompt_embeds=torch.randn(2, 5, 12, generator=gen), negative_prompt_embeds=torch.randn(2, 5, 12, generator=gen),
              pooled_prompt_embeds=torch.randn(2, 6, generator=gen),
              negative_pooled_prompt_embeds=torch.randn(2, 6, generator=gen), num_inference_steps=10, height=16,
              width=16, output_type="latent")
    want = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    pipe.scheduler = scheduler(base)
    assert relative(pipe(generator=torch.Generator().manual_seed(0), **kw).images, want) < ROUND_OFF
    net.calls = 0
    pipe.scheduler = scheduler(base, sampler="dpmpp_2m", policy=LTC(weights=1.0))
    out = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert net.calls == pipe.scheduler.plan.nfe < 10 and torch.isfinite(out).all()
