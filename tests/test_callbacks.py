"""Callbacks that steer an eager walk: replace the state, stop early; under graphs they force eager."""
import warnings

import pytest
import torch

import ltc
from ltc.executor import graph as graphs
from ltc.executor.graph import RecordedGraphs
from ltc.policies import LTC

SCHEDULE = ltc.Schedule.vp("linear", spacing="trailing")
STEPS = 10


class Recording:
    """An eps oracle that records the inputs it is called on."""

    def __init__(self):
        self.model = ltc.oracles.GaussianMixture.random(SCHEDULE, dim=8).as_prediction("eps")
        self.prediction, self.name, self.inputs = "eps", "recording", []

    def __call__(self, x, t):
        self.inputs.append(x.clone())
        return self.model(x, t)


def noise(seed=0):
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def replacement():
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def run(model, callback, sampler="dpmpp_2m", policy=None, **kw):
    return ltc.sample(model, SCHEDULE, policy, sampler=sampler, steps=STEPS, noise=noise(), callback=callback,
                      progress=False, **kw)


def replace_after(k, new, as_dict=False):
    def callback(info):
        if info["step"] == k:
            return {"x": new} if as_dict else new
        return None
    return callback


@pytest.mark.parametrize("as_dict", [False, True], ids=["tensor", "dict"])
def test_a_returned_tensor_is_the_state_the_walk_continues_from(as_dict):
    """After step 3 the walk continues from the replacement: a DDIM walk then equals sampling the
    rest of the grid (points 4..N) from it, bit for bit, and the model is called on it."""
    new = replacement()
    kept = new.clone()
    model = Recording()
    x = run(model, replace_after(3, new, as_dict), sampler="ddim")
    assert torch.equal(model.inputs[4], new) and torch.equal(new, kept)  # copied, never written
    grid = SCHEDULE.discretize(STEPS)
    rest = ltc.Schedule.explicit(grid.t[4:], grid.alpha[4:], grid.sigma[4:])
    assert torch.equal(x, ltc.sample(Recording(), rest, sampler="ddim", noise=new, progress=False))
    assert not torch.equal(x, run(Recording(), None, sampler="ddim"))


@pytest.mark.parametrize("policy", [None, LTC(state="x")], ids=["full", "ltc"])
def test_a_replacement_keeps_the_walks_past(policy):
    """A multistep sampler keeps its past clean estimates and LTC its previous state: the result is
    the Stepper's when its state is overwritten at the same point."""
    new = replacement()
    x = run(Recording(), replace_after(5, new), policy=policy)
    st = ltc.Stepper(SCHEDULE, policy, sampler="dpmpp_2m", steps=STEPS, noise=noise(), predictions="eps")
    model, replaced = Recording(), False
    while not st.done:
        x_in, t, _ = st.request()
        st.step(model(x_in, t))
        if st.step_index == 6:  # x_6 is the state after plan step 5 (extrapolated under this LTC)
            st.x.copy_(new)
            replaced = True
    assert replaced and torch.equal(x, st.x)
    assert not torch.equal(x, run(Recording(), None, policy=policy))


def test_a_callback_that_returns_the_state_unchanged_changes_nothing():
    assert torch.equal(run(Recording(), lambda info: info["x_next"]), run(Recording(), None))


@pytest.mark.parametrize("answer", [{"stop": True}, {"stop": True, "x": "new"}], ids=["stop", "stop+x"])
def test_stop_ends_the_walk_and_returns_the_state_after_that_step(answer):
    seen, model = [], Recording()
    new = replacement()

    def callback(info):
        seen.append(info)
        if info["step"] == 4:
            return {k: (new if v == "new" else v) for k, v in answer.items()}
        return None

    x = run(model, callback)
    assert len(model.inputs) == 5 and [s["step"] for s in seen] == [0, 1, 2, 3, 4]
    assert seen[-1]["steps"] == STEPS
    assert torch.equal(x, new if "x" in answer else seen[-1]["x_next"])


def test_stop_false_continues():
    model = Recording()
    assert torch.equal(run(model, lambda info: {"stop": False}), run(Recording(), None))
    assert len(model.inputs) == STEPS


@pytest.mark.parametrize("answer, error, match", [
    ("stop", TypeError, "returned str after step 0; expected None, a tensor"),
    ({"halt": True}, ValueError, r"unknown keys \['halt'\] after step 0"),
    ({"stop": 1}, TypeError, "'stop' after step 0 must be True or False"),
    ({"x": [0.0]}, TypeError, "after step 0 is a list, expected a torch.Tensor"),
    (torch.zeros(4, 9, dtype=torch.float64), ValueError, r"shape \(4, 9\).*walk's state has shape \(4, 8\)"),
    (torch.zeros(4, 8), ValueError, "dtype torch.float32"),
    (torch.full((4, 8), float("nan"), dtype=torch.float64), ValueError, "after step 0 contains NaN"),
])
def test_a_bad_answer_is_refused_naming_the_step(answer, error, match):
    with pytest.raises(error, match=match):
        run(Recording(), lambda info: answer)


def test_a_callback_that_is_not_callable_is_refused_before_any_model_call():
    model = Recording()
    with pytest.raises(TypeError, match="callback must be callable"):
        run(model, 3)
    assert model.inputs == []


def test_under_graphs_a_steering_callback_forces_eager_and_still_steers():
    """graph='auto' samples eagerly with a callback (and says so); graph=True refuses it before any work."""
    new = replacement()
    with graphs.use_backend(RecordedGraphs()):
        model = Recording()
        with pytest.raises(ValueError, match="callback"):
            run(model, replace_after(3, new), graph=True)
        assert model.inputs == []
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(2):  # the second call with the same key would capture without a callback
                x, info = run(Recording(), replace_after(3, new), return_info=True)
                assert info.executor == "eager" and "callback" in info.extra["graph"]
    assert torch.equal(x, run(Recording(), replace_after(3, new)))
    assert not torch.equal(x, run(Recording(), None))
