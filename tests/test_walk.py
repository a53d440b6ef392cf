"""One walk: the eager executor, the graph walk, the Stepper and the LTC calibration walk take their
steps through :class:`ltc.executor.walk.Walk`, so they accept, refuse and report the same things.

These are the behaviours that had drifted while each walker carried its own copy of the step body.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import ltc
from ltc.calibration.walk import LTCWalk
from ltc.executor import NonFiniteError, Walk
from ltc.executor import graph as graphs
from ltc.executor import walk as walk_module
from ltc.executor.eager import run_eager
from ltc.executor.capture import RecordedGraphs
from ltc.models import as_models
from ltc.ops import reference
from ltc.ops.contract import HISTORY_SLOTS, OPS
from ltc.plan import EXTRAPOLATE, compile_plan
from ltc.policies import LTC, Full
from ltc.samplers import get_sampler
from ltc.zoo.oracles import GaussianMixture

SCHEDULE = ltc.Schedule.vp("scaled_linear", spacing="trailing")
ORACLE = GaussianMixture.random(SCHEDULE, dim=6, seed=3)
STEPS, BAD_STEP = 8, 5


def noise(batch=3, seed=0):
    return torch.randn(batch, 6, generator=torch.Generator().manual_seed(seed))


def nan_after(step: int):
    """The oracle, but NaN from model call number ``step`` on (eager counting)."""
    calls = {"n": 0}

    def fn(x, t):
        out = ORACLE(x, t)
        calls["n"] += 1
        return out if calls["n"] <= step else torch.full_like(out, float("nan"))
    fn.prediction, fn.name = ORACLE.prediction, "flaky"
    return fn


def stepper_run(model, x, **kwargs):
    st = ltc.Stepper(SCHEDULE, sampler="dpmpp_2m", steps=STEPS, noise=x, predictions=model, **kwargs)
    while not st.done:
        inp, t, _ = st.request()
        st.step(model(inp, t))
    return st.x


def test_stepper_refuses_nan_noise_like_sample():
    x = noise()
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="noise contains NaN or Inf") as from_sample:
        ltc.sample(ORACLE, SCHEDULE, steps=STEPS, noise=x, progress=False)
    with pytest.raises(ValueError, match="noise contains NaN or Inf") as from_stepper:
        ltc.Stepper(SCHEDULE, steps=STEPS, noise=x, predictions=ORACLE)
    assert str(from_sample.value) == str(from_stepper.value)


@pytest.mark.parametrize("check_finite", ["step", "end"])
def test_every_walker_names_the_same_model_and_step_for_nan(check_finite):
    expected = f"model 'flaky' returned NaN or Inf at step {BAD_STEP}"
    with pytest.raises(NonFiniteError) as eager:
        ltc.sample(nan_after(BAD_STEP), SCHEDULE, steps=STEPS, noise=noise(), progress=False,
                   check_finite=check_finite, graph=False)
    with pytest.raises(NonFiniteError) as stepper:
        stepper_run(nan_after(BAD_STEP), noise(), check_finite=check_finite)
    assert str(eager.value) == str(stepper.value) == expected


def test_graph_walk_reports_nan_like_the_eager_walk():
    """A replay repeats the captured device work, so the model is NaN at every step from the
    capture on: the first bad step recorded on the device is step 0 in both graph modes."""
    model = nan_after(0)
    with graphs.use_backend(RecordedGraphs()):
        for mode in ("whole", "step"):
            graphs.clear_cache()
            with pytest.raises(NonFiniteError, match="model 'flaky' returned NaN or Inf at step 0"):
                ltc.sample(model, SCHEDULE, steps=STEPS, noise=noise(), progress=False, check_finite="end",
                           graph=mode)
    graphs.clear_cache()


def test_eager_and_stepper_refuse_a_wrong_shape_with_one_message():
    def wrong(x, t):
        return ORACLE(x, t)[:, :3]
    wrong.prediction = "eps"
    with pytest.raises(ValueError) as eager:
        ltc.sample(wrong, SCHEDULE, steps=STEPS, noise=noise(), progress=False)
    with pytest.raises(ValueError) as stepper:
        stepper_run(wrong, noise())
    assert str(eager.value) == str(stepper.value)
    assert "model 'wrong' at step 0 returned shape (3, 3), expected (3, 6)" in str(eager.value)


def test_calibration_walk_uses_the_walks_history_ring():
    plan = compile_plan(SCHEDULE.discretize(STEPS), get_sampler("dpmpp_3m"), Full(), (ORACLE.prediction,))
    policy = LTC(skip=[4, 6], state="x")
    R0, R1 = policy.rows(plan.grid, plan.sampler, [4, 6])
    walk = LTCWalk(plan, [4, 6], R0, R1, as_models(ORACLE), ops=reference, dtype=torch.float32, device="cpu")
    a = walk.run(noise(), torch.ones(2)).x
    b = walk.run(noise(), torch.ones(2)).x  # the buffers are reused: results are copies
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    (inner,) = walk._walks.values()
    assert isinstance(inner, Walk) and inner.hist.shape[0] == HISTORY_SLOTS


def test_calibration_walk_with_unit_weights_equals_sampling_the_ltc_plan():
    """The calibration walk (base plan + extrapolation table) and ltc.sample (the compiled LTC plan)
    take the same steps."""
    policy = LTC(skip=[3, 5], state="x0")
    expected = ltc.sample(ORACLE, SCHEDULE, policy, sampler="dpmpp_2m", steps=STEPS, noise=noise(), progress=False)
    plan = compile_plan(SCHEDULE.discretize(STEPS), get_sampler("dpmpp_2m"), Full(), (ORACLE.prediction,))
    R0, R1 = policy.rows(plan.grid, plan.sampler, [3, 5])
    walk = LTCWalk(plan, [3, 5], R0, R1, as_models(ORACLE), ops=reference, dtype=torch.float32, device="cpu")
    torch.testing.assert_close(walk.run(noise(), torch.ones(2)).x, expected, rtol=1e-6, atol=1e-6)


def counting_reference(calls):
    """The reference backend with its ``unchecked`` entries, every call counted in ``calls`` under
    ``(entry, op)``, entry ``"checked"`` or ``"unchecked"``."""
    def counted(fn, key):
        def call(*args, **kwargs):
            calls[key] = calls.get(key, 0) + 1
            return fn(*args, **kwargs)
        return call
    fast = SimpleNamespace(**{op: counted(getattr(reference.unchecked, op), ("unchecked", op)) for op in OPS})
    return SimpleNamespace(**{op: counted(getattr(reference, op), ("checked", op)) for op in OPS}, unchecked=fast)


@pytest.mark.parametrize("check_finite", ["step", "end", "off"])
def test_the_walk_checks_each_op_once_then_launches_unchecked(check_finite):
    """A guided LTC plan (model and extrapolated steps): the checked entry of each op is called
    once (it validates the walk's buffers for the backend), every later step goes through the
    backend's ``unchecked`` entry, and the sample is the one the checked entries give."""
    plan = compile_plan(SCHEDULE.discretize(STEPS), get_sampler("dpmpp_2m"), LTC(skip=[3, 5], state="x0"),
                        (ORACLE.prediction,), 3.0)
    calls = {}
    got = run_eager(plan, as_models(ORACLE), noise(), ops=counting_reference(calls), check_finite=check_finite)
    checked_only = SimpleNamespace(**{op: getattr(reference, op) for op in OPS})
    want = run_eager(plan, as_models(ORACLE), noise(), ops=checked_only, check_finite=check_finite)
    assert torch.equal(got, want)
    extrapolated = plan.models.count(EXTRAPOLATE)
    assert extrapolated == 2 and plan.cfg
    assert calls == {("checked", "model_step"): 1, ("unchecked", "model_step"): plan.steps - extrapolated - 1,
                     ("checked", "extrapolate_step"): 1, ("unchecked", "extrapolate_step"): extrapolated - 1}


def test_end_mode_model_steps_launch_no_finite_checks_of_their_own(monkeypatch):
    """check_finite='end': a guided model step's NaN/Inf record is the op's first-bad-step word,
    so the walk runs no isfinite pass of its own over the model output or the state."""
    plan = compile_plan(SCHEDULE.discretize(STEPS), get_sampler("dpmpp_2m"), Full(), (ORACLE.prediction,), 3.0)
    passes = []
    real = walk_module.all_finite
    monkeypatch.setattr(walk_module, "all_finite", lambda *a, **k: passes.append(a) or real(*a, **k))
    got = run_eager(plan, as_models(ORACLE), noise(), ops=reference, check_finite="end")
    assert passes == []
    assert torch.equal(got, run_eager(plan, as_models(ORACLE), noise(), ops=reference, check_finite="off"))
    with pytest.raises(NonFiniteError, match=f"model 'flaky' returned NaN or Inf at step {BAD_STEP}"):
        run_eager(plan, as_models(nan_after(BAD_STEP)), noise(), ops=reference, check_finite="end")
    assert passes == []
