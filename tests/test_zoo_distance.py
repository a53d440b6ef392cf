"""The distribution judge of T-Stitch (ltc.zoo.distance): FD to the held-out digits with paired,
label-stratified bootstrap intervals, on real digits (training split) clean and degraded."""
import importlib.util

import pytest
import torch

import ltc.zoo as zoo
from ltc.zoo import distance as D
from ltc.zoo import metrics as M

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchmetrics") is None,
                                reason="torchmetrics is not installed (the 'metrics' extra)")


def balanced_training_digits(per_label: int = 30):
    """``per_label`` training digits of each label, ordered label 0..9 repeated (as the demo draws)."""
    x, y = zoo.digits("train")
    picks = [torch.nonzero(y == k).flatten()[:per_label] for k in range(10)]
    order = torch.stack(picks, dim=1).flatten()  # 0, 1, ..., 9, 0, 1, ...
    return x[order], y[order]


def noisy(x, sigma, seed=1):
    return (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(-1, 1)


def test_the_point_value_is_the_zoo_frechet_distance_to_the_held_out_digits():
    x, y = balanced_training_digits()
    result = D.judge({"digits": x}, y, resamples=10)
    assert result.point["digits"] == pytest.approx(M.frechet_distance(x, reference="heldout"), rel=1e-9)
    assert result.samples == 300 and result.draws["digits"].shape == (10,)


def test_identical_rows_differ_by_exactly_zero_and_are_the_same():
    x, y = balanced_training_digits()
    result = D.judge({"a": x, "b": x.clone()}, y, resamples=20)
    diff = result.difference("a", "b")
    assert (diff.value, diff.low, diff.high) == (0.0, 0.0, 0.0) and result.verdict("a", "b") == "same"


def test_degraded_samples_are_worse_and_barely_touched_ones_the_same():
    """Noise of sigma 0.3 on real digits is clearly worse; 0.002 is not separable at n = 300."""
    x, y = balanced_training_digits()
    result = D.judge({"clean": x, "noisy": noisy(x, 0.3), "touched": noisy(x, 0.002)}, y, resamples=50)
    assert result.verdict("noisy", "clean") == "WORSE" and result.verdict("clean", "noisy") == "better"
    assert result.difference("touched", "clean").low > 0  # a real, tiny difference: significant when paired
    assert result.verdict("touched", "clean") == "same"  # but within the clean row's own interval
    clean, bad = result.interval("clean"), result.interval("noisy")
    assert clean.low <= clean.value <= clean.high and clean.high < bad.low  # separated intervals
    assert str(clean) == f"{clean.value:.3f} [{clean.low:.3f}, {clean.high:.3f}]"


def test_the_same_seed_gives_the_same_intervals_and_another_seed_others():
    x, y = balanced_training_digits(10)
    rows = {"a": x, "b": noisy(x, 0.1)}
    first, again, other = (D.judge(rows, y, resamples=10, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(first.draws[k], again.draws[k]) for k in rows)
    assert not torch.equal(first.draws["a"], other.draws["a"])


def test_resampling_keeps_every_label_in_its_place():
    """Sample i is redrawn among the samples of its own label: the label counts are those of the rows."""
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 5])
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([D.stratified_resample(labels, gen) for _ in range(50)])
    assert torch.equal(labels[draws], labels.expand(50, -1))
    assert (draws[:, 9] == 9).all() and len(set(draws[:, 0].tolist())) == 3  # alone: itself; else any of its label


@pytest.mark.parametrize("call, match", [
    (lambda x, y: D.judge({}, y), "samples must be a non-empty dict"),
    (lambda x, y: D.judge({"a": x[:, 0]}, y), r"samples\['a'\] must be a tensor \[n, 1, 16, 16\], got \(20, 16, 16\)"),
    (lambda x, y: D.judge({"a": x, "b": x[:10]}, y), "the same number of samples in every row"),
    (lambda x, y: D.judge({"a": x[:1]}, y[:1]), "at least 2"),
    (lambda x, y: D.judge({"a": x}, y[:5]), r"labels must be an integer tensor \[20\]"),
    (lambda x, y: D.judge({"a": x}, y.float()), r"labels must be an integer tensor \[20\].*float32"),
    (lambda x, y: D.judge({"a": x}, y, resamples=5), "resamples must be an int >= 10, got 5"),
    (lambda x, y: D.judge({"a": x}, y, level=95), "level must be a float in \\(0, 1\\), got 95"),
    (lambda x, y: D.judge({"a": x}, y, seed=None), "seed must be an int, got None"),
])
def test_bad_arguments_are_refused_by_name(call, match):
    x, y = balanced_training_digits(2)
    with pytest.raises(ValueError, match=match):
        call(x, y)


def test_unknown_rows_are_named():
    x, y = balanced_training_digits(2)
    result = D.judge({"a": x}, y, resamples=10)
    with pytest.raises(KeyError, match="no row named 'b'; rows: \\['a'\\]"):
        result.difference("a", "b")


def test_the_interval_is_the_basic_bootstrap_around_the_bias_corrected_value():
    """value = 2 raw - median, [2 raw - q_hi, 2 raw - q_lo]: draws biased above raw move the value below it."""
    draws = torch.arange(1, 102, dtype=torch.float64) / 100 + 1.0        # 1.01 .. 2.01, median 1.51
    i = D.basic_interval(1.4, draws, 0.9)
    q_lo, q_hi = torch.quantile(draws, torch.tensor([0.05, 0.95], dtype=torch.float64)).tolist()
    assert (i.raw, i.level) == (1.4, 0.9) and i.value == pytest.approx(2 * 1.4 - 1.51, abs=1e-12)
    assert (i.low, i.high) == pytest.approx((2 * 1.4 - q_hi, 2 * 1.4 - q_lo), abs=1e-12)
    assert i.low < i.value < i.raw < i.high


def test_the_correction_moves_few_samples_towards_many():
    """FD of 100 random training digits is far above FD of all 1500; the corrected value is closer
    (part of the bias, not all of it), and lies in its interval."""
    x, y = zoo.digits("train")
    pick = torch.randperm(1500, generator=torch.Generator().manual_seed(0))[:100]
    many, few = D.judge({"all": x}, y, resamples=50), D.judge({"few": x[pick]}, y[pick], resamples=100)
    raw_gap = few.point["few"] - many.point["all"]
    corrected_gap = few.interval("few").value - many.interval("all").value
    assert raw_gap > 1.0 and 0 < corrected_gap < raw_gap - 0.2
    assert few.interval("few").contains(few.interval("few").value)


def test_resampled_distances_are_torchmetrics_on_the_repeated_rows():
    """The batched weighted moments give the FD torchmetrics computes on the resampled rows themselves."""
    x, y = balanced_training_digits(20)
    feats, reference = M.features(noisy(x, 0.05)), M.data_features("heldout")
    gen = torch.Generator().manual_seed(3)
    picks = [D.stratified_resample(y, gen) for _ in range(3)]
    counts = torch.stack([torch.bincount(p, minlength=200) for p in picks]).double()
    batched = D.resampled_frechet(feats, torch.cat([torch.ones(1, 200, dtype=torch.float64), counts]), reference)
    expected = [M.frechet_distance_from_features(feats, reference)]
    expected += [M.frechet_distance_from_features(feats[p], reference) for p in picks]
    assert batched.tolist() == pytest.approx(expected, rel=1e-9)
