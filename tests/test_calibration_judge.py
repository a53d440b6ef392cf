"""The refusal rule's statistics on synthetic report rows (ltc.calibration.report), the noise split
(ltc.calibration.split) and the minimum number of noises: exact, fast, no model calls."""
import numpy as np
import pytest
import torch

from ltc.calibration import report
from ltc.calibration.split import split, split_rows

N_JUDGED = 32


def plain_row(d, name="plain", ladder=None):
    d = np.asarray(d, dtype=np.float64)
    ladder = [d, d] if ladder is None else ladder
    return {"name": name, "kind": "plain", "mean": float(d.mean()), "spec": {"name": name},
            "d": d.tolist(), "d_ladder": [np.asarray(v).tolist() for v in ladder]}


def ltc_row(d, kind="ltc", ladder=None):
    row = plain_row(d, kind, ladder)
    row["kind"] = kind
    return row


def rng(seed=0):
    return np.random.default_rng(seed)


def zero_floor(n=N_JUDGED):
    return np.zeros(n)


# -- the bootstrap ------------------------------------------------------------------------------
def test_mean_bounds_are_deterministic_and_agree_with_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    values = rng(1).normal(0.3, 1.0, size=40)
    lo, hi = report.mean_bounds(values)
    assert (lo, hi) == report.mean_bounds(values)                         # fixed seed: the same decision
    ref = scipy_stats.bootstrap((values,), np.mean, confidence_level=0.90, method="percentile",
                                n_resamples=20000, random_state=0).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.02) and hi == pytest.approx(ref.high, abs=0.02)
    assert lo < values.mean() < hi


def test_mean_bounds_refuse_an_empty_sample():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        report.mean_bounds([])


# -- verdicts ------------------------------------------------------------------------------------
def test_a_clear_margin_beyond_the_judge_bound_is_accepted():
    d_plain = 0.10 + 0.01 * rng(2).random(N_JUDGED)
    test = report.compare(ltc_row(d_plain - 0.03), [plain_row(d_plain)], zero_floor())
    assert test["verdict"] == "accepted" and test["lower"] > 0 and test["margin"] == pytest.approx(0.03)


def test_the_same_margin_is_refused_when_the_ladder_says_the_judge_cannot_resolve_it():
    d_plain = 0.10 + 0.01 * rng(2).random(N_JUDGED)
    # measured by the 2N teacher T the margin is gone: the judge's bound e = |m(J') - m(T)| = 0.03
    ltc = ltc_row(d_plain - 0.03, ladder=[d_plain - 0.03, d_plain])
    test = report.compare(ltc, [plain_row(d_plain)], zero_floor())
    assert test["verdict"] == "cannot tell" and test["judge_bound"] == pytest.approx(0.03)


def test_zero_distances_and_ties_never_decide():
    zeros = np.zeros(N_JUDGED)
    for floor in (zero_floor(), np.full(N_JUDGED, 1e-15)):
        test = report.compare(ltc_row(zeros), [plain_row(zeros)], floor)
        assert test["verdict"] == "cannot tell" and not test["accepted"]
    # rounding-level differences of either sign are ties within the rounding floor
    jitter = 1e-17 * rng(3).standard_normal(N_JUDGED)
    assert report.compare(ltc_row(1e-3 + jitter), [plain_row(np.full(N_JUDGED, 1e-3))],
                          np.full(N_JUDGED, 1e-15))["verdict"] == "cannot tell"


def test_finite_data_where_most_samples_tie_is_decided_by_the_samples_that_differ():
    # samples snap onto data points: 20 of 32 distances are exactly 0 for both rows, so both medians
    # are 0 (the old rule, median < median, could only refuse); the mean of the paired margins decides
    d_plain, d_ltc = np.zeros(N_JUDGED), np.zeros(N_JUDGED)
    d_plain[20:], d_ltc[20:] = 0.5, 0.2
    assert np.median(d_plain) == np.median(d_ltc) == 0.0
    assert report.compare(ltc_row(d_ltc), [plain_row(d_plain)], zero_floor())["verdict"] == "accepted"


def test_a_plain_row_clearly_closer_is_said_so():
    d_plain = 0.05 + 0.01 * rng(4).random(N_JUDGED)
    test = report.compare(ltc_row(d_plain + 0.02), [plain_row(d_plain)], zero_floor())
    assert test["verdict"] == "plain better" and test["upper"] < 0


def test_ltc_must_beat_every_plain_row_not_only_the_one_the_judge_ranks_best():
    base = 0.10 + 0.01 * rng(5).random(N_JUDGED)
    best = plain_row(base, "best by the judge")
    # the judge ranks this row second, but within its error bound: by T it is the closest
    close = plain_row(base + 0.005, "close second", ladder=[base + 0.005, base - 0.05])
    ltc = ltc_row(base - 0.02)
    assert report.compare(ltc, [best], zero_floor())["verdict"] == "accepted"
    test = report.compare(ltc, [best, close], zero_floor())
    assert test["verdict"] == "cannot tell" and test["against"] == "close second"


@pytest.mark.parametrize("n", [1, 2, 7])
def test_fewer_noises_than_the_minimum_are_refused_whatever_the_margin(n):
    d_plain = np.full(n, 0.5)
    test = report.compare(ltc_row(d_plain - 0.4), [plain_row(d_plain)], np.zeros(n))
    assert test["verdict"] == "too few noises" and not test["accepted"] and report.MIN_NOISES == 8
    assert report.compare(ltc_row(np.full(8, 0.1)), [plain_row(np.full(8, 0.5))], np.zeros(8))["accepted"]


def test_w_equal_1_is_used_unless_the_calibrated_weights_are_strictly_closer():
    d = np.full(N_JUDGED, 0.1)
    rows = [plain_row(d + 0.05), ltc_row(d, "ltc"), ltc_row(d, "ltc_w1")]
    decision = report.decide(rows, zero_floor())
    assert decision["weights"] == "w = 1" and "this calibration uses w = 1" in report.decision_line(decision)
    rows[1] = ltc_row(d - 0.01, "ltc")
    assert report.decide(rows, zero_floor())["weights"] == "calibrated"


def test_the_decision_line_names_each_verdict_and_the_deciding_row():
    d = 0.1 + 0.01 * rng(6).random(N_JUDGED)
    lines = {}
    for name, shift in (("accepted", -0.03), ("plain better", 0.03), ("cannot tell", 0.0)):
        rows = [plain_row(d, "P"), plain_row(d + 0.1, "Q"), ltc_row(d + shift, "ltc"), ltc_row(d + 1, "ltc_w1")]
        decision = report.decide(rows, zero_floor())
        assert decision["verdict"] == name
        lines[name] = report.decision_line(decision)
    assert lines["accepted"].startswith("LTC ACCEPTED: mean distance to the judge")
    assert lines["plain better"].startswith("LTC REFUSED (the plain plan is better)")
    assert lines["cannot tell"].startswith("LTC REFUSED (cannot tell)") and "{'name': 'P'}" in lines["cannot tell"]


def test_the_rounding_floor_scales_with_the_dtype_and_the_steps():
    judge = torch.ones(3, 4, dtype=torch.float64)
    f64 = report.rounding_floor(judge, 16, torch.float64)
    f32 = report.rounding_floor(judge, 16, torch.float32)
    np.testing.assert_allclose(f64, 8 * 4 * torch.finfo(torch.float64).eps)
    np.testing.assert_allclose(f32 / f64, torch.finfo(torch.float32).eps / torch.finfo(torch.float64).eps)


# -- the split -----------------------------------------------------------------------------------
def test_split_keeps_the_rows_of_each_noise_with_it_under_guidance():
    noise = torch.arange(5.0)[:, None].repeat(1, 3)
    labels = torch.arange(5)
    kwargs = {"y": torch.cat([torch.full((5,), 10), labels]),        # 2B rows, unconditional half first
              "nested": [{"emb": torch.arange(10.0)[:, None]}],
              "shared": torch.zeros(1, 7), "scale": 2.0}
    fit, fit_kw, judged, judged_kw, record = split(noise, kwargs, None, None, cfg=True)
    assert fit[:, 0].tolist() == [0, 1, 2] and judged[:, 0].tolist() == [3, 4]
    assert fit_kw["y"].tolist() == [10, 10, 10, 0, 1, 2] and judged_kw["y"].tolist() == [10, 10, 3, 4]
    assert judged_kw["nested"][0]["emb"].flatten().tolist() == [3, 4, 8, 9]
    assert judged_kw["shared"] is kwargs["shared"] and judged_kw["scale"] == 2.0
    assert record == {"held_out": "split", "fit_noises": 3, "judged_noises": 2, "judged_rows": [3, 5]}
    fit.add_(1.0)                                                      # copies: the caller's noise is untouched
    assert noise[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_split_without_guidance_takes_b_row_tensors_and_given_held_out_noises_are_all_judged():
    rows = split_rows({"c": torch.arange(4.0)}, torch.tensor([2, 3]), 4, cfg=False)
    assert rows["c"].tolist() == [2.0, 3.0]
    noise, held = torch.zeros(4, 2), torch.ones(6, 2)
    fit, _, judged, _, record = split(noise, None, held, None, cfg=False)
    assert fit is noise and judged is held and record == {"held_out": "given", "fit_noises": 4, "judged_noises": 6}
