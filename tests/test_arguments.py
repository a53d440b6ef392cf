"""Arguments are refused where they are given, naming the parameter, the value and what was expected --
never coerced into something else (``x or default``, ``bool("no")``, ``int(1.5)``), never ignored.
Numbers are numbers whatever their type (numpy scalars included); bools are not numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ltc
from ltc import Model, Schedule
from ltc.policies import LTC, Full, TStitch
from ltc.samplers import DDIM, DPMSolverPP
from ltc.schedule import SPACINGS, timestep_spacing


def noise(batch=2, dim=3, seed=0):
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))


class Calls:
    """An x0 model that counts its calls."""

    prediction = "x0"

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t, **kwargs):
        self.calls += 1
        return 0.5 * x


# -- every valid step count of every spacing ------------------------------------------------------
@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_step_count_up_to_the_training_steps_discretizes(spacing):
    """trailing used a float arange that holds N + 1 points for 62 of the counts 1..1000 (61, 103, ...)."""
    schedule = Schedule.vp("scaled_linear", spacing=spacing)
    for steps in range(1, 1001):
        ts = timestep_spacing(spacing, steps, 1000)
        assert len(ts) == steps and np.all(np.diff(ts) < 0) and ts[-1] >= 0 and ts[0] <= 999, (spacing, steps)
        assert schedule.discretize(steps).steps == steps


def test_trailing_spacing_keeps_diffusers_timesteps():
    """The first N points of diffusers' arange, so every count it got right is unchanged."""
    for steps in (10, 20, 61, 103, 999):
        reference = (np.round(np.arange(1000, 0, -1000 / steps)) - 1)[:steps]
        np.testing.assert_array_equal(timestep_spacing("trailing", steps, 1000), reference)


def test_leading_with_an_offset_names_the_counts_it_cannot_take():
    schedule = Schedule.vp(spacing="leading", steps_offset=1)
    assert schedule.discretize(999).steps == 999
    with pytest.raises(ValueError, match=r"steps_offset=1 puts the 1000 steps at training steps 1000\.\.1"):
        schedule.discretize(1000)


# -- schedules: validated in the constructor, by name ---------------------------------------------
@pytest.mark.parametrize("make, exc, match", [
    (lambda: Schedule.vp(beta_start=0.0), ValueError, r"beta_start must be a finite number in \(0.0, 1.0\), got 0.0"),
    (lambda: Schedule.vp(beta_end=1.5), ValueError, r"beta_end must be .* got 1.5"),
    (lambda: Schedule.vp(beta_start=-0.1), ValueError, r"beta_start must be .* got -0.1"),
    (lambda: Schedule.vp(beta_start=float("nan")), ValueError, "beta_start must be a finite number"),
    (lambda: Schedule.vp(beta_end="0.02"), TypeError, "beta_end must be a finite number"),
    (lambda: Schedule.vp("squaredcos_cap_v2", beta_end=0.02), ValueError, "do not apply to"),
    (lambda: Schedule.vp(steps_offset=1.5), ValueError, r"steps_offset must be an int in \[0, 999\].*got 1.5"),
    (lambda: Schedule.vp(steps_offset=-1), ValueError, "steps_offset must be an int"),
    (lambda: Schedule.vp(spacing="trailing", steps_offset=1), ValueError, "only shifts spacing='leading'"),
    (lambda: Schedule.vp(karras=True, steps_offset=1), ValueError, "only shifts spacing='leading'"),
    (lambda: Schedule.vp(karras="no"), TypeError, "karras must be True or False, got 'no'"),
    (lambda: Schedule.vp(karras=1), TypeError, "karras must be True or False"),
    (lambda: Schedule.vp(final="last").discretize(10, rule="ddim"), ValueError, "final='last' lands on training step 0"),
    (lambda: Schedule.vp(spacing="linspace", final="last").discretize(10, rule="ddim"), ValueError,
     "final='last' lands on training step 0"),
    (lambda: Schedule.vp(karras=True, final="last"), ValueError, "final='last' lands on training step 0"),
    (lambda: Schedule.vp(num_train_timesteps=0), ValueError, "num_train_timesteps must be an int >= 2 .*got 0"),
    (lambda: Schedule.vp(num_train_timesteps=1000.0), ValueError, "num_train_timesteps must be an int"),
    (lambda: Schedule.flow(shift=1e300), ValueError, r"shift=1e\+300 .* do not decrease strictly"),
    (lambda: Schedule.flow(shift=1e-300), ValueError, r"shift=1e-300 .* do not decrease strictly"),
    (lambda: Schedule.flow(shift=True), TypeError, "shift must be a finite number"),
    (lambda: Schedule.flow(shift=float("inf")), ValueError, "shift must be a finite number"),
    (lambda: Schedule.flow(sigma_min="0.1"), TypeError, "sigma_min must be a finite number"),
    (lambda: Schedule.flow(num_train_timesteps=0), ValueError, "num_train_timesteps must be an int >= 2"),
    (lambda: Schedule.log_snr(lambda_min=-float("inf")), ValueError, "lambda_min must be a finite number, got -inf"),
    (lambda: Schedule.log_snr(lambda_max=float("nan")), ValueError, "lambda_max must be a finite number"),
    (lambda: Schedule.log_snr(lambda_min=-800.0), ValueError, r"lambda_min=-800.0 gives alpha = 0.0"),
    (lambda: Schedule.log_snr(lambda_max=800.0), ValueError, r"lambda_max=800.0 gives .* sigma = 0.0"),
    (lambda: Schedule.log_snr(-40.0, 5.0, family="flow"), ValueError, "lambda_min=-40.0 gives alpha = 0.0"),
    (lambda: Schedule.explicit(["a", "b"], [0.5, 1.0], [0.9, 0.0]), TypeError, "t must be a 1-D sequence"),
    (lambda: Schedule.explicit([2.0, 1.0], [0.5, 1.0], [0.9, 0.0], family="ve"), ValueError, "family must be one"),
])
def test_schedule_constructors_refuse_bad_arguments_by_name(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_an_explicit_beta_is_used_as_given():
    """``beta_start or default`` turned an explicit value into the default while config() kept it."""
    schedule = Schedule.vp("linear", beta_start=2e-4, beta_end=0.03)
    abar = schedule.alphas_cumprod
    assert abar[0] == pytest.approx(1 - 2e-4) and schedule.config()["beta_start"] == 2e-4


def test_final_last_with_trailing_names_the_step_counts_that_end_at_step_zero():
    schedule = Schedule.vp(spacing="trailing", final="last")
    assert schedule.discretize(600).steps == 600
    with pytest.raises(ValueError, match="final='last' lands on training step 0, where spacing='trailing' "
                                         "with steps=800"):
        schedule.discretize(800)


def test_numpy_numbers_are_numbers_for_every_constructor():
    assert Schedule.vp(beta_start=np.float32(1e-3), num_train_timesteps=np.int64(500)).config()["beta_start"] \
        == pytest.approx(1e-3)
    assert Schedule.flow(shift=np.float32(3.0)).shift == 3.0
    assert Schedule.log_snr(np.float64(-3), np.int32(3)).lambda_max == 3.0
    assert DDIM(eta=np.float32(0.5)).eta == 0.5
    assert DPMSolverPP(order=np.int64(3)).name == "dpmpp_3m"
    assert Full(np.int64(0)).model == 0
    x = ltc.sample(Calls(), Schedule.vp(), steps=3, noise=noise(), guidance_scale=np.float32(2), progress=False)
    assert torch.isfinite(x).all()


# -- samplers and policies ---------------------------------------------------------------------------
@pytest.mark.parametrize("make, exc, match", [
    (lambda: DDIM(eta=float("nan")), ValueError, r"eta must be a finite number in \[0.0, 1.0\]"),
    (lambda: DDIM(eta=True), TypeError, "eta must be a finite number"),
    (lambda: DDIM(eta="0.5"), TypeError, "eta must be a finite number"),
    (lambda: DPMSolverPP(order=2.0), ValueError, "order must be the int 1, 2 or 3, got 2.0"),
    (lambda: DPMSolverPP(order=True), ValueError, "order must be the int 1, 2 or 3, got True"),
    (lambda: DPMSolverPP(lower_order_final="no"), TypeError, "lower_order_final must be True or False, got 'no'"),
    (lambda: Full(1.0), TypeError, "model must be an int index"),
    (lambda: TStitch(0.5, by=None), ValueError, "by must be one of"),
    (lambda: LTC(interval=(0.5, 1.0), skip=[3, 7]), ValueError, r"give either skip .* or interval/every, not both: "
                                                                r"interval=\(0.5, 1.0\)"),
    (lambda: LTC(every=3, skip=[3, 7]), ValueError, "not both: .*every=3 would be ignored"),
    (lambda: LTC(interval=(0.75, 0.5)), ValueError, "start must be below end"),
    (lambda: LTC(weights=[1.0, True]), ValueError, r"weights\[1\] must be a finite number, got True"),
    (lambda: LTC(weights=["1.5"]), ValueError, r"weights\[0\] must be a finite number, got '1.5'"),
    (lambda: LTC(weights="1.5"), TypeError, "weights must be None, a number"),
    (lambda: LTC(weights=[[1.0]]), TypeError, "weights must be None, a number, a 1-D sequence"),
])
def test_sampler_and_policy_arguments_are_refused_by_name(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_ltc_with_skip_keeps_working_through_replace_and_base():
    policy = LTC(skip=[4, 7])
    assert policy.replace(state="x").skip == (4, 7)
    assert (TStitch(0.5) | policy).skip == (4, 7)
    assert LTC(interval=(0.25, 1.0), every=2, skip=[4, 7]).skip == (4, 7)  # the defaults, as a saved file gives them


def test_tstitch_by_time_refuses_a_grid_whose_times_turn_back():
    """It stitched the models 0, 1, 0, 1 along a grid whose model times go back and forth."""
    schedule = Schedule.explicit([1.0, 3.0, 2.0, 4.0, 0.5], [0.5, 0.6, 0.7, 0.8, 1.0], [0.9, 0.8, 0.7, 0.6, 0.0])
    small, large = Calls(), Calls()
    with pytest.raises(ValueError, match="turns back between points 0 and 1 .* use by='step'"):
        ltc.sample([small, large], schedule, TStitch(0.5, by="time"), noise=noise(), progress=False)
    assert small.calls == large.calls == 0
    ltc.sample([small, large], schedule, TStitch(0.5, by="step"), noise=noise(), progress=False)


def test_guidance_scale_refuses_bools_and_tensors():
    for bad in (True, np.bool_(True), torch.tensor(2.0), "2"):
        with pytest.raises(ValueError, match="guidance_scale must be a finite number or None"):
            ltc.sample(Calls(), Schedule.vp(), steps=3, noise=noise(), guidance_scale=bad, progress=False)


def test_a_model_name_must_be_a_string():
    with pytest.raises(TypeError, match="name must be a string or None, got int"):
        Model(lambda x, t: x, "x0", 5)


@pytest.mark.parametrize("name", ["progress", "return_info"])
def test_sample_flags_are_bools_not_truthy_values(name):
    """``progress="no"`` turned the progress bar on, ``return_info="no"`` returned the info."""
    model = Calls()
    with pytest.raises(TypeError, match=f"{name} must be True or False, got 'no'"):
        ltc.sample(model, Schedule.vp(), steps=3, noise=noise(), **{"progress": False, name: "no"})
    assert model.calls == 0


@pytest.mark.parametrize("call, exc, match", [
    (lambda: ltc.sample(Calls(), Schedule.vp(), steps=3, shape=(2, 3), device="nope", progress=False), ValueError,
     "device must be a torch.device or a string such as 'cpu' or 'cuda:0', got 'nope'"),
    (lambda: ltc.compile_plan(Schedule.vp().discretize(4), "ddim", Full(), ["eps"]), TypeError,
     r"sampler must be an ltc.samplers.Sampler \(e.g. get_sampler\('dpmpp_2m'\)\), got str"),
    (lambda: ltc.compile_plan(Schedule.vp(), DDIM(), Full(), ["eps"]), TypeError,
     r"grid must be an ltc.Grid \(schedule.discretize\(steps\)\), got VPSchedule"),
    (lambda: ltc.compile_plan(Schedule.vp().discretize(4), DDIM(), "full", ["eps"]), TypeError,
     "policy must be an ltc.policies.Policy, got str"),
    (lambda: ltc.compile_plan(Schedule.vp().discretize(4), DDIM(), Full(), "eps"), TypeError,
     "predictions must be a sequence of prediction types"),
    (lambda: Schedule.vp().noise_at([1.0]), TypeError, "t must be a torch.Tensor of model times, got list"),
    (lambda: Schedule.flow().noise_at(1.0), TypeError, "t must be a torch.Tensor of model times, got float"),
])
def test_public_entry_points_name_a_wrong_argument_type(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
