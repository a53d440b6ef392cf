"""T-Stitch: exact switch points, validation, and the model-compatibility check before sampling."""
import json

import numpy as np
import pytest
import torch

import ltc
from ltc.policies import TStitch, check_compatible
from ltc.schedule import Schedule

B = 3  # the compatibility probe runs on one sample, so calls on B rows are sampling calls


class Counting:
    """A cheap x0-predicting model that records the model times of its sampling calls."""

    def __init__(self, name, scale=0.5, prediction="x0", out_shape=None):
        self.name, self.scale, self.prediction, self.out_shape = name, scale, prediction, out_shape
        self.times, self.probes = [], 0

    def __call__(self, x, t, y=None):
        if x.shape[0] in (B, 2 * B):
            self.times.append(float(t[0]))
        else:
            self.probes += 1
        out = self.scale * x
        return out if self.out_shape is None else out.new_zeros(x.shape[0], *self.out_shape)


def run(models, policy, steps=20, schedule=None, **kw):
    schedule = schedule or Schedule.vp("linear", spacing="trailing")
    noise = torch.randn(B, 2, 4, generator=torch.Generator().manual_seed(0))
    return ltc.sample(models, schedule, policy, steps=steps, noise=noise, progress=False, return_info=True, **kw)


def test_two_models_switch_after_the_first_fraction_of_steps():
    small, large = Counting("small"), Counting("large")
    _, info = run([small, large], TStitch(0.4), steps=20)
    grid = Schedule.vp("linear", spacing="trailing").discretize(20)
    assert small.times == list(grid.t[:8]) and large.times == list(grid.t[8:20])
    assert info.nfe_per_model == [8, 12]


def test_three_models_run_consecutive_blocks():
    models = [Counting("s"), Counting("m"), Counting("l")]
    _, info = run(models, TStitch([0.25, 0.25]), steps=8)
    assert [len(m.times) for m in models] == [2, 2, 4]
    assert info.plan.models == (0, 0, 1, 1, 2, 2, 2, 2)


@pytest.mark.parametrize("fraction, steps, small_steps", [(0.0, 10, 0), (1.0, 10, 10), (0.33, 10, 4),
                                                          (0.5, 7, 4), (0.6, 10, 6), (0.7, 10, 7)])
def test_small_model_runs_ceil_of_fraction_times_steps(fraction, steps, small_steps):
    small, large = Counting("small"), Counting("large")
    run([small, large], TStitch(fraction), steps=steps)
    assert (len(small.times), len(large.times)) == (small_steps, steps - small_steps)


def test_fraction_rounding_does_not_move_a_switch():
    # 0.1 + 0.2 = 0.30000000000000004 in floating point: the second switch stays at step 3
    policy = TStitch([0.1, 0.2])
    grid = Schedule.vp("linear").discretize(10)
    assert policy.decide(grid, None, 3).models.tolist() == [0, 1, 1] + [2] * 7
    assert policy.switch_steps(grid) == [0, 1, 3]


def test_by_time_switches_at_the_fraction_of_the_time_span():
    schedule = Schedule.vp("linear", karras=True)
    grid = schedule.discretize(12)
    small, large = Counting("small"), Counting("large")
    run([small, large], TStitch(0.5, by="time"), steps=12, schedule=schedule)
    threshold = grid.t[0] - 0.5 * (grid.t[0] - grid.t[-1])
    assert small.times and large.times
    assert all(t > threshold for t in small.times) and all(t <= threshold for t in large.times)
    assert len(small.times) != 6  # Karras times are not uniform: by time differs from by step


def test_by_time_equals_by_step_on_a_grid_uniform_in_t():
    grid = Schedule.vp("linear", spacing="trailing").discretize(10)  # t = 999, 899, ..., 99, then -1
    for f in (0.0, 0.3, 0.45, 1.0):
        by_time = TStitch(f, by="time").decide(grid, None, 2).models
        assert by_time.tolist() == TStitch(f).decide(grid, None, 2).models.tolist()


def test_decision_has_no_extrapolation_and_config_is_json():
    policy = TStitch([0.2, 0.3], by="time")
    decision = policy.decide(Schedule.vp("linear").discretize(10), None, 3)
    assert np.all(decision.models >= 0) and not np.any(decision.extrapolation)
    config = json.loads(json.dumps(policy.config()))
    assert config == {"policy": "tstitch", "fractions": [0.2, 0.3], "by": "time"}
    assert TStitch(config["fractions"], by=config["by"]).config() == config


def test_switch_is_static_in_the_plan():
    small, large = Counting("small"), Counting("large")
    _, a = run([small, large], TStitch(0.5), steps=10)
    _, b = run([small, large], TStitch(0.5), steps=10)
    assert a.plan.fingerprint == b.plan.fingerprint and a.plan.models == (0,) * 5 + (1,) * 5


@pytest.mark.parametrize("fractions, error", [(-0.1, ValueError), (1.5, ValueError), ([0.6, 0.5], ValueError),
                                              ([], ValueError), ("0.5", TypeError), (True, TypeError),
                                              ([0.2, None], TypeError), (float("nan"), ValueError)])
def test_bad_fractions_are_refused(fractions, error):
    with pytest.raises(error, match="fractions"):
        TStitch(fractions)


def test_bad_by_is_refused():
    with pytest.raises(ValueError, match="by must be one of"):
        TStitch(0.5, by="sigma")


def test_model_count_must_match_fractions():
    models = [Counting("a"), Counting("b"), Counting("c")]
    with pytest.raises(ValueError, match="needs 2 models"):
        run(models, TStitch(0.5), steps=4)
    assert all(not m.times for m in models)


def test_prediction_type_mismatch_is_refused_before_sampling():
    small, large = Counting("small", prediction="eps"), Counting("large", prediction="x0")
    with pytest.raises(ValueError, match="prediction type.*'small'.*'eps'.*'large'.*'x0'"):
        run([small, large], TStitch(0.5), steps=6)
    assert not small.times and not large.times


def test_shape_mismatch_is_refused_before_sampling():
    small, large = Counting("small"), Counting("large", out_shape=(4, 2))
    with pytest.raises(ValueError, match="'large' returned shape"):
        run([small, large], TStitch(0.5), steps=6)
    assert not small.times and not large.times and large.probes == 1


def test_probe_cuts_batched_kwargs_to_one_sample_also_under_guidance():
    seen = []

    def model(x, t, y=None):
        seen.append((x.shape[0], t.shape[0], y.tolist(), t.dtype))
        return torch.zeros_like(x)

    models = [ltc.Model(model, "eps", "a"), ltc.Model(model, "eps", "b")]
    x = torch.zeros(4, 1, 2, 2)
    check_compatible(models, x, 999.0, {"y": torch.tensor([5, 6, 7, 8])})
    assert seen == [(1, 1, [5], torch.float32)] * 2
    seen.clear()
    check_compatible(models, x, 999.0, {"y": torch.tensor([10] * 4 + [5, 6, 7, 8])}, cfg=True)
    assert seen == [(2, 2, [10, 5], torch.float32)] * 2


def test_composed_with_ltc_the_mismatch_is_still_refused_before_sampling():
    small, large = Counting("small"), Counting("large", out_shape=(4, 2))
    with pytest.raises(ValueError, match="'large' returned shape"):
        run([small, large], TStitch(0.5) | ltc.policies.LTC(), steps=8)
    assert not small.times and not large.times


def test_the_probe_runs_once_per_model_set_and_shape():
    small, large = Counting("small"), Counting("large")
    for _ in range(3):
        run([small, large], TStitch(0.5), steps=4)
    assert small.probes == 1 and large.probes == 1
