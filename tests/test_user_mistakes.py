"""The mistakes users make most, caught before the first model call where they can be, each with the
fix in the message: conditioning for B rows under guidance, a raw diffusers network or scheduler, a
DiT's learned variance, wrong zoo inputs, meta tensors, callbacks and keyword arguments that cannot
work, calibration noise that requires grad."""
from __future__ import annotations

import diffusers
import pytest
import torch

import ltc
from ltc import Model, Schedule
from ltc.adapters.diffusers import model_fn_from_unet
from ltc.zoo.nets import UNet

VP = Schedule.vp("scaled_linear", spacing="trailing")


def noise(*shape, seed=0):
    return torch.randn(shape or (2, 3), generator=torch.Generator().manual_seed(seed))


class Conditioned:
    """An eps model with a conditioning input ``c`` that counts its calls."""

    prediction = "eps"

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t, c=None, extra=None):
        self.calls += 1
        return 0.1 * x


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()


# -- guidance with conditioning for B rows -------------------------------------------------------------
CFG_FIX = (r"under classifier-free guidance the model gets \[x; x\] \({rows} rows, unconditional half first\): "
           r"pass model_kwargs for {rows} rows, e.g. torch.cat\(\[uncond, cond\]\)")


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("kwargs", [lambda b: {"c": torch.zeros(b, 5)},
                                    lambda b: {"extra": {"text_embeds": torch.zeros(b, 5)}}], ids=["flat", "nested"])
def test_conditioning_for_b_rows_under_guidance_is_refused_before_the_first_call(batch, kwargs):
    model = Conditioned()
    with pytest.raises(ValueError, match=CFG_FIX.format(rows=2 * batch)):
        ltc.sample(model, VP, steps=3, noise=noise(batch, 3), guidance_scale=3.0, model_kwargs=kwargs(batch),
                   progress=False)
    assert model.calls == 0
    doubled = {"c": torch.zeros(2 * batch, 5)}
    ltc.sample(model, VP, steps=3, noise=noise(batch, 3), guidance_scale=3.0, model_kwargs=doubled, progress=False)
    ltc.sample(model, VP, steps=3, noise=noise(batch, 3), model_kwargs=kwargs(batch), progress=False)  # no guidance


def test_a_model_that_builds_the_unconditional_half_itself_may_take_b_rows():
    """The zoo nets declare ``half_batch_kwargs = ("y",)``: B labels label the conditional half."""
    net = UNet(channels=8, multipliers=(1, 2), emb_dim=16).eval()
    with torch.no_grad():
        x = ltc.sample(Model(net, "eps"), VP, steps=2, noise=noise(2, 1, 8, 8), guidance_scale=2.0,
                       model_kwargs={"y": torch.tensor([3, 4])}, progress=False)
    assert torch.isfinite(x).all()


# -- diffusers objects where ltc objects belong -----------------------------------------------------------
def test_a_raw_diffusers_network_points_to_the_adapter():
    unet = tiny_unet()
    with torch.no_grad(), pytest.raises(TypeError, match=r"returned UNet2DOutput, expected a torch.Tensor: "
                                                         r"UNet2DOutput looks like a diffusers model output; wrap the "
                                                         r"network with ltc.adapters.diffusers.model_fn_from_unet"):
        ltc.sample(Model(unet, "eps", "unet"), VP, steps=2, noise=noise(1, 2, 8, 8), progress=False)
    x = ltc.sample(model_fn_from_unet(unet, prediction="eps"), VP, steps=2, noise=noise(1, 2, 8, 8), progress=False)
    assert torch.isfinite(x).all()


def test_a_tuple_output_says_to_return_its_first_element():
    with pytest.raises(TypeError, match=r"returned tuple, expected a torch.Tensor: return out\[0\]"):
        ltc.sample(Model(lambda x, t: (0.1 * x,), "eps", "tupled"), VP, steps=2, noise=noise(), progress=False)


@pytest.mark.parametrize("where", ["sampler", "schedule"])
def test_a_diffusers_scheduler_points_to_the_adapter(where):
    model = Conditioned()
    scheduler = diffusers.DDIMScheduler()
    kw = {"sampler": scheduler, "schedule": VP} if where == "sampler" else {"schedule": scheduler}
    with pytest.raises(TypeError, match=rf"got DDIMScheduler; for a diffusers scheduler use "
                                        rf"ltc.adapters.diffusers.{where}_from_diffusers\(scheduler, steps\)"):
        ltc.sample(model, steps=3, noise=noise(), progress=False, **kw)
    assert model.calls == 0


def test_a_learned_variance_output_says_to_keep_the_first_c_channels():
    dit_like = Model(lambda x, t: torch.cat([0.1 * x, x.abs()], dim=1), "eps", "dit")
    with pytest.raises(ValueError, match=r"returned shape \(2, 8, 4, 4\), expected \(2, 4, 4, 4\) .* 2C = 8 channels "
                                         r"where C = 4 were expected.* keep out\[:, :4\]"):
        ltc.sample(dit_like, VP, steps=2, noise=noise(2, 4, 4, 4), progress=False)


# -- the zoo's networks check their inputs ------------------------------------------------------------------
def zoo_like():
    return UNet(channels=8, multipliers=(1, 2, 2), emb_dim=16).eval()


@pytest.mark.parametrize("labels, exc, match", [
    (torch.tensor([3, 11]), ValueError, r"y holds labels outside \[0, 10\] .* max 11"),
    (torch.tensor([-1, 2]), ValueError, r"y holds labels outside \[0, 10\] .* min -1"),
    (torch.tensor([1.0, 2.0]), TypeError, "y must be an integer tensor of class labels"),
    (torch.tensor([1, 2, 3]), ValueError, r"y must have shape \[2\]"),
])
def test_zoo_labels_are_checked_with_a_clear_message(labels, exc, match):
    with torch.no_grad(), pytest.raises(exc, match=match):
        ltc.sample(Model(zoo_like(), "eps"), VP, steps=2, noise=noise(2, 1, 16, 16), model_kwargs={"y": labels},
                   progress=False)


def test_zoo_unet_names_the_input_shape_it_expects():
    with torch.no_grad(), pytest.raises(ValueError, match=r"UNet expects x of shape \[B, 1, H, W\] with H and W "
                                                          r"divisible by 4 .* got \(2, 3, 16, 16\)"):
        ltc.sample(Model(zoo_like(), "eps"), VP, steps=2, noise=noise(2, 3, 16, 16), progress=False)
    with torch.no_grad(), pytest.raises(ValueError, match=r"t of shape \[B\] = \[2\]"):
        zoo_like()(noise(2, 1, 16, 16), torch.zeros(3))


# -- arguments that could only fail later -----------------------------------------------------------------
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(noise=torch.empty(2, 3, device="meta")), ValueError, "noise is a meta tensor"),
    (dict(shape=(2, 3), device="meta"), ValueError, "device='meta' holds no data"),
    (dict(noise=noise(), callback=5), TypeError, "callback must be callable .* got 5"),
    (dict(noise=noise(), model_kwargs={1: 2}), TypeError, "model_kwargs keys are keyword argument names, so strings; "
                                                          "got 1"),
])
def test_arguments_that_would_fail_mid_run_are_refused_before_any_work(kwargs, exc, match):
    model = Conditioned()
    with pytest.raises(exc, match=match):
        ltc.sample(model, VP, steps=3, progress=False, **kwargs)
    assert model.calls == 0


@pytest.mark.parametrize("which", ["noise", "held_out"])
def test_calibration_noise_that_requires_grad_is_refused_clearly(which):
    model = Conditioned()
    base = noise(4, 3)
    kw = {"noise": base.clone().requires_grad_(which == "noise"),
          "held_out": base.clone().requires_grad_(True) if which == "held_out" else None}
    with pytest.raises(ValueError, match=rf"{which} requires grad, but calibration does not differentiate through "
                                         rf"sampling: pass {which}.detach\(\)"):
        ltc.calibrate(model, VP, steps=8, verbose=False, **kw)
    assert model.calls == 0


@pytest.mark.parametrize("where, value, match", [
    ("policy", ltc.policies.TStitch, r"policy must be an ltc.policies.Policy, got ABCMeta; pass an instance, "
                                     r"e.g. TStitch\(...\)"),
    ("sampler", ltc.samplers.DDIM, r"got type; pass an instance, e.g. DDIM\(\)"),
])
def test_a_class_where_an_instance_belongs_says_so(where, value, match):
    with pytest.raises(TypeError, match=match):
        ltc.sample(Conditioned(), VP, steps=3, noise=noise(), progress=False, **{where: value})


def test_an_output_of_another_dtype_says_how_to_cast_it():
    with pytest.raises(ValueError, match=r"returned dtype torch.float64, expected torch.float32 \(the dtype of x\): "
                                         r"return out.to\(x.dtype\)"):
        ltc.sample(Model(lambda x, t: 0.1 * x.double(), "eps", "f64"), VP, steps=2, noise=noise(), progress=False)


def test_an_output_for_half_the_guided_batch_says_the_model_gets_both_halves():
    with pytest.raises(ValueError, match=r"returned shape \(2, 3\), expected \(4, 3\) .* under classifier-free "
                                         r"guidance the model gets \[x; x\] \(4 rows"):
        ltc.sample(Model(lambda x, t: 0.1 * x[: x.shape[0] // 2], "eps", "half"), VP, steps=2, noise=noise(),
                   guidance_scale=2.0, progress=False)


def test_non_finite_held_out_noise_is_blamed_on_itself_not_the_model():
    """It reached the report's walks, where the model got the blame (returned NaN at step 0)."""
    held_out = noise(4, 3)
    held_out[1, 2] = float("nan")
    model = Conditioned()
    with pytest.raises(ValueError, match="held_out: noise contains NaN or Inf"):
        ltc.calibrate(model, VP, steps=8, noise=noise(4, 3), held_out=held_out, verbose=False)
    assert model.calls == 0


def test_calibration_refuses_conditioning_for_b_rows_under_guidance_too():
    model = Conditioned()
    with pytest.raises(ValueError, match=CFG_FIX.format(rows=8)):
        ltc.calibrate(model, VP, steps=8, noise=noise(4, 3), guidance_scale=2.0, model_kwargs={"c": torch.zeros(4, 5)},
                      verbose=False)
    assert model.calls == 0
