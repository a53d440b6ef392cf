"""The caller's tensors and objects are never modified, and a model that writes the inputs ltc gives it
(the walk's own state buffer and the plan's times) is refused at the step it does so -- detected by
the tensors' version counters, without a copy per step."""
from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

import ltc
from ltc import Model, Schedule
from ltc.policies import TStitch, tstitch

VP = Schedule.vp("scaled_linear", spacing="trailing")


def noise(batch=3, dim=4, seed=0):
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))


def halves_its_input(x, t):
    x.mul_(0.5)  # in place
    return 0.1 * x


def shifts_its_times(x, t):
    t.add_(100.0)  # in place
    return 0.1 * x


def clean(x, t):
    return 0.1 * x + 1e-4 * t[:, None]


@pytest.mark.parametrize("guidance_scale", [None, 2.0])
def test_a_model_that_writes_its_input_is_refused_with_and_without_guidance(guidance_scale):
    """Without guidance the model got the live state buffer, so the same model gave different samples
    with and without CFG (which hands it a concatenated copy)."""
    x = noise()
    before = x.clone()
    with pytest.raises(ValueError, match=r"model 'halves_its_input' modified its input x in place at step 0: "
                                         r"ltc passes its own buffers"):
        ltc.sample(Model(halves_its_input, "eps"), VP, steps=4, noise=x, guidance_scale=guidance_scale,
                   progress=False)
    assert torch.equal(x, before)


def test_a_model_that_writes_its_times_is_refused_and_the_plan_cache_stays_clean():
    """t is a view of the plan's cached time table: a write used to change every later run of the plan."""
    x = noise(batch=1)
    expected = ltc.sample(Model(clean, "eps"), VP, steps=4, noise=x, progress=False)
    with pytest.raises(ValueError, match="model 'shifts_its_times' modified its input t in place at step 0"):
        ltc.sample(Model(shifts_its_times, "eps"), VP, steps=4, noise=x, progress=False)
    assert torch.equal(ltc.sample(Model(clean, "eps"), VP, steps=4, noise=x, progress=False), expected)


def test_the_stepper_refuses_a_state_written_between_request_and_step():
    st = ltc.Stepper(VP, steps=4, noise=noise(), predictions="eps")
    x, t, _ = st.request()
    x.mul_(0.5)
    with pytest.raises(ValueError, match="modified its input x in place at step 0"):
        st.step(0.1 * x)
    st = ltc.Stepper(VP, steps=4, noise=noise(), predictions="eps")  # reading it is fine
    while not st.done:
        x, t, _ = st.request()
        st.step(clean(x, t))
    assert torch.equal(st.x, ltc.sample(Model(clean, "eps"), VP, steps=4, noise=noise(), progress=False))


def test_the_tstitch_probe_never_writes_the_callers_noise():
    """The compatibility probe passed a view of the caller's noise: an in-place model changed it."""
    x = noise()
    before = x.clone()
    small, large = Model(halves_its_input, "eps", "small"), Model(clean, "eps", "large")
    with pytest.raises(ValueError, match="stitched model 'small' modified its input x in place during T-Stitch's "
                                         "compatibility probe"):
        ltc.sample([small, large], VP, TStitch(0.5), steps=4, noise=x, progress=False)
    assert torch.equal(x, before)


def test_the_tstitch_probe_cuts_batched_kwargs_into_copies():
    seen = []

    def keeps(x, t, c):
        seen.append(c)
        return 0.1 * x
    c = torch.arange(3.0)[:, None].expand(3, 4).contiguous()
    ltc.sample([Model(keeps, "eps", "a"), Model(keeps, "eps", "b")], VP, TStitch(0.5), steps=2, noise=noise(),
               model_kwargs={"c": c}, progress=False)
    probe = seen[0]
    assert probe.shape == (1, 4) and probe.data_ptr() != c.data_ptr()


def test_a_compatibility_record_is_not_reused_for_another_object_with_the_same_id():
    """The probe's cache was keyed by id(fn) alone; an id is reused once its object is gone."""
    calls = []

    def a(x, t):
        calls.append(x.shape[0])
        return 0.1 * x
    models = [Model(a, "eps", "a"), Model(clean, "eps", "b")]
    policy = TStitch(0.5)
    policy.check_models(models, noise(), 500.0)
    policy.check_models(models, noise(), 500.0)
    assert calls == [1]  # probed once, then remembered

    class Gone:
        pass
    dead = weakref.ref(Gone())
    for key in list(tstitch._CHECKED):  # as if every remembered function had been freed and its id reused
        tstitch._CHECKED[key] = tuple(dead for _ in tstitch._CHECKED[key])
    policy.check_models(models, noise(), 500.0)
    assert calls == [1, 1]


def test_models_named_alike_are_renamed_as_copies_not_in_place():
    a, b = Model(clean, "eps", "m"), Model(clean, "eps", "m")
    _, info = ltc.sample([a, b], VP, TStitch(0.5), steps=4, noise=noise(), progress=False, return_info=True)
    assert info.model_names == ["m[0]", "m[1]"]
    assert (a.name, b.name) == ("m", "m")
    _, info = ltc.sample([a, b], VP, TStitch(0.5), steps=4, noise=noise(), progress=False, return_info=True)
    assert info.model_names == ["m[0]", "m[1]"]  # not "m[0][0]" on the second call


@pytest.mark.parametrize("make", [lambda v: np.array(v, dtype=np.float64),
                                  lambda v: torch.tensor(v, dtype=torch.float64)], ids=["numpy", "torch"])
def test_an_explicit_schedule_copies_the_callers_arrays(make):
    """The grid kept the caller's float64 array (and made it read-only): later edits changed the schedule."""
    t, alpha, sigma = make([3.0, 2.0, 1.0]), make([0.6, 0.8, 0.96]), make([0.8, 0.6, 0.28])
    schedule = Schedule.explicit(t, alpha, sigma)
    t[0] = 100.0
    sigma[1] = 0.7
    grid = schedule.discretize(None)
    assert grid.t[0] == 3.0 and grid.sigma[1] == 0.6
    if isinstance(t, np.ndarray):
        assert t.flags.writeable
