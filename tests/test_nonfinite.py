"""NaN and Inf: refused where they can be foreseen (the plan's tables in the walk's compute dtype, the
schedule's times), caught at every step of a walk -- extrapolated steps too -- and blamed on their
actual source: the model's output, the guidance combine, an LTC weight / extrapolation of step k,
or the schedule's coefficients."""
from __future__ import annotations

import pytest
import torch

import ltc
from ltc.samplers import DPMSolverPP
from ltc import Model, Schedule
from ltc.executor import graph as graphs
from ltc.executor.capture import RecordedGraphs
from ltc.policies import LTC

VP = Schedule.vp("scaled_linear", spacing="trailing")
STEPS, SKIP = 10, [5, 8]


def noise(batch=2, dim=3, dtype=torch.float32, seed=0):
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed)).to(dtype)


class Counting:
    """Counts its calls; ``fn(x, t)`` gives the output (default: an x0 model 0.5 x)."""

    def __init__(self, fn=None, prediction="x0", name="counting"):
        self.fn, self.prediction, self.name, self.calls = fn, prediction, name, 0

    def __call__(self, x, t):
        self.calls += 1
        return 0.5 * x if self.fn is None else self.fn(x, t)


def conditional(x, t):
    """An eps model under guidance: the conditional half differs from the unconditional one by 1."""
    half = x.shape[0] // 2
    return torch.cat([0.1 * x[:half], 0.1 * x[:half] + 1])


def time_ramp(x, t):
    """An x0 model whose output grows with t (1e10 scale): its transitions do not cancel."""
    return 1e10 * (t[:, None] / 1000).to(x.dtype).expand_as(x).clone()


class StubCalibration:
    """What LTC accepts as a calibration (e.g. ltc.Calibration loaded from a file): weights + check."""

    def __init__(self, weights):
        self.weights = list(weights)

    def check(self, grid, sampler, policy):
        pass


def run(model, *, dtype=torch.float32, check_finite="step", **kw):
    kw.setdefault("steps", STEPS)
    return ltc.sample(model, VP, noise=noise(dtype=dtype), progress=False, check_finite=check_finite, graph=False, **kw)


# -- foreseen: coefficients and times the walk's dtype cannot hold ------------------------------------
@pytest.mark.parametrize("check_finite", ["step", "end", "off"])
def test_a_guidance_scale_beyond_float32_is_refused_before_any_model_call(check_finite):
    """1e39 was inf in the float32 coefficient table (only the float64 one was checked)."""
    model = Counting(conditional, "eps")
    with pytest.raises(ValueError, match=r"GUIDANCE = 1e\+39 of step 0 does not fit in torch.float32.*"
                                         r"guidance_scale=1e\+39 is too large"):
        run(model, guidance_scale=1e39, check_finite=check_finite)
    assert model.calls == 0
    assert torch.isfinite(run(model, guidance_scale=1e39, dtype=torch.float64)).all()  # fits float64


@pytest.mark.parametrize("weights", [[1.0, 1e39], StubCalibration([1.0, 1e39])], ids=["given", "calibration"])
@pytest.mark.parametrize("check_finite", ["step", "end"])
def test_an_ltc_weight_beyond_float32_names_its_extrapolated_step(weights, check_finite):
    """The last extrapolated step's coefficient was inf in the float32 table: inf samples, even with
    check_finite='step', since extrapolated steps were never checked."""
    model = Counting()
    with pytest.raises(ValueError, match=r"coefficient EH1 = .* of step 8 does not fit in torch.float32.*"
                                         r"LTC weight .* of extrapolated step 8 is too large"):
        run(model, policy=LTC(skip=SKIP, weights=weights), check_finite=check_finite)
    assert model.calls == 0


def test_a_model_time_beyond_float32_is_refused_before_any_model_call():
    schedule = Schedule.explicit([1e39, 5.0, 1.0], [0.5, 0.8, 1.0], [0.9, 0.6, 0.0])
    model = Counting()
    with pytest.raises(ValueError, match=r"model time t = 1e\+39 of step 0 does not fit in torch.float32"):
        ltc.sample(model, schedule, noise=noise(), progress=False)
    assert model.calls == 0


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_an_explicit_schedule_with_a_non_finite_interior_time_is_refused_in_the_constructor(bad):
    """t = inf / NaN at a point given to a model used to reach the model (and the model got the blame)."""
    with pytest.raises(ValueError, match=r"t\[1\] = (inf|nan) is not a model time"):
        Schedule.explicit([3.0, bad, 1.0, 0.0], [0.5, 0.6, 0.8, 1.0], [0.9, 0.8, 0.6, 0.0])
    with pytest.raises(ValueError, match=r"t\[3\] = nan is not a model time"):
        Schedule.explicit([3.0, 2.0, 1.0, float("nan")], [0.5, 0.6, 0.8, 1.0], [0.9, 0.8, 0.6, 0.0])
    end_at_inf = Schedule.explicit([3.0, 2.0, 1.0, float("inf")], [0.5, 0.6, 0.8, 1.0], [0.9, 0.8, 0.6, 0.0])
    assert end_at_inf.discretize(None).steps == 3  # the last point is never given to a model


# -- caught while walking: every step, blamed on its source --------------------------------------------
EXTRAPOLATION = r"^extrapolated step 8 \(no model call\) produced NaN or Inf .* LTC weight of step 8"


@pytest.mark.parametrize("check_finite", ["step", "end"])
@pytest.mark.parametrize("dtype, model, weight", [
    (torch.float16, Counting(), 1e6),          # the state overflows float16 storage
    (torch.float32, Counting(time_ramp), 1e30),  # the coefficient fits float32, the state does not
], ids=["float16", "float32"])
def test_an_extrapolated_step_that_overflows_is_blamed_on_its_ltc_weight(check_finite, dtype, model, weight):
    """Extrapolated steps were never checked: inf samples, or the model of the next step was blamed."""
    with pytest.raises(ltc.NonFiniteError, match=EXTRAPOLATION):
        run(model, dtype=dtype, policy=LTC(skip=SKIP, weights=[1.0, weight]), sampler="ddim",
            check_finite=check_finite)
    with pytest.raises(ltc.NonFiniteError, match=r"^extrapolated step 5 "):
        run(model, dtype=dtype, policy=LTC(skip=SKIP, weights=[1e3 * weight, 1.0]), sampler="ddim",
            check_finite=check_finite)


@pytest.mark.parametrize("check_finite", ["step", "end"])
@pytest.mark.parametrize("dtype, scale", [(torch.float32, 3e38), (torch.float16, 1e5)])
def test_a_guidance_overflow_is_blamed_on_guidance_scale_not_the_model(check_finite, dtype, scale):
    with pytest.raises(ltc.NonFiniteError) as err:
        run(Model(conditional, "eps", "cond"), dtype=dtype, guidance_scale=scale, check_finite=check_finite)
    message = str(err.value)
    assert message.startswith("step 0: model 'cond' returned finite values, but the step operation")
    assert f"classifier-free guidance m_u + G (m_c - m_u) with guidance_scale={scale!r}" in message
    assert "lower guidance_scale" in message or "lower it" in message


def test_step_mode_tells_guidance_from_the_update_it_feeds():
    """With check_finite='step' the failing step is re-run with m_c alone: a small guidance scale is
    cleared, and the prediction conversion / sampler update at the schedule's noise levels is named."""
    big = Model(lambda x, t: 0.1 * x + 60000, "eps", "big")
    with pytest.raises(ltc.NonFiniteError) as err:
        run(big, dtype=torch.float16, guidance_scale=1.5)
    message = str(err.value)
    assert "guidance_scale=1.5 is not the cause" in message
    assert f"the prediction conversion and {DPMSolverPP(2)!r} update" in message
    with pytest.raises(ltc.NonFiniteError, match="update at the schedule's noise levels .* check the schedule"):
        run(big, dtype=torch.float16)


@pytest.mark.parametrize("check_finite", ["step", "end"])
def test_a_model_that_returns_nan_is_still_blamed_and_its_extrapolated_input_named(check_finite):
    calls = {"n": 0}

    def after_extrapolation(x, t):
        calls["n"] += 1
        return torch.full_like(x, float("nan")) if calls["n"] > 5 else 0.5 * x
    model = Model(after_extrapolation, "x0", "fragile")
    with pytest.raises(ltc.NonFiniteError, match=r"^model 'fragile' returned NaN or Inf at step 6 \(its input x came "
                                                 r"from extrapolated step 5"):
        run(model, policy=LTC(skip=SKIP), check_finite=check_finite)


@pytest.mark.parametrize("check_finite", ["step", "end"])
def test_the_stepper_checks_its_extrapolated_steps_too(check_finite):
    st = ltc.Stepper(VP, LTC(skip=SKIP, weights=[1.0, 1e6]), sampler="ddim", steps=STEPS,
                     noise=noise(dtype=torch.float16), predictions="x0", check_finite=check_finite)
    with pytest.raises(ltc.NonFiniteError, match=EXTRAPOLATION):
        while not st.done:
            x, t, _ = st.request()
            st.step(0.5 * x)


@pytest.mark.parametrize("mode", ["whole", "step"])
def test_captured_walks_record_extrapolated_steps_without_a_host_sync(mode):
    """RecordedGraphs refuses any host synchronisation while capturing, like CUDA graphs: the "end"
    record covers extrapolated steps on the device and is read once, after the replay."""
    policy = LTC(skip=SKIP, weights=[1.0, 1e6])
    with pytest.raises(ltc.NonFiniteError) as eager:
        run(Counting(), dtype=torch.float16, policy=policy, sampler="ddim", check_finite="end")
    graphs.clear_cache()
    try:
        with graphs.use_backend(RecordedGraphs()), pytest.raises(ltc.NonFiniteError) as captured:
            ltc.sample(Counting(), VP, policy, sampler="ddim", steps=STEPS, noise=noise(dtype=torch.float16),
                       progress=False, check_finite="end", graph=mode)
    finally:
        graphs.clear_cache()
    assert str(captured.value) == str(eager.value)
    assert str(eager.value).startswith("extrapolated step 8")
