"""The demo's T-Stitch verdict (ltc.demo.distribution): judged on the distribution, said in plain words.

Synthetic rows and bootstrap draws (no sampling): each case fixes the FD of the four judged rows and
their paired draws, and checks the verdict the T-Stitch row gets and the sentence the demo prints.
"""
import pytest
import torch

from ltc.demo import distribution
from ltc.zoo.distance import Distances


def rows():
    return [{"method": "full", "kind": "full", "model cost": 1.0},
            {"method": "T-Stitch 40% small", "kind": "accelerated", "judge": "distribution", "plain": "plain 12 steps",
             "model cost": 0.62},
            {"method": "plain 12 steps", "kind": "plain", "model cost": 0.6},
            {"method": "LTC", "kind": "accelerated", "plain": "plain 12 steps", "model cost": 0.6},
            {"method": "unet_tiny alone", "kind": "reference", "model cost": 0.04}]


def distances(stitch_fd: float, plain_fd: float, full_fd: float = 1.4, alone_fd: float = 7.0) -> Distances:
    """Draws: a common noise (shared by every row, as paired resamples are) plus a small row-own one."""
    gen = torch.Generator().manual_seed(0)
    common = 0.05 * torch.randn(200, generator=gen, dtype=torch.float64)
    fds = {"full": full_fd, "T-Stitch 40% small": stitch_fd, "plain 12 steps": plain_fd, "unet_tiny alone": alone_fd}
    draws = {k: v + common + 0.005 * torch.randn(200, generator=gen, dtype=torch.float64) for k, v in fds.items()}
    return Distances(point=fds, draws=draws, level=0.95, samples=100)


@pytest.mark.parametrize("stitch_fd, plain_fd, verdict, says", [
    (1.41, 1.40, "same", "stitching does not win here: plain 12 steps is as good at the same model cost"),
    (1.40, 2.00, "better", "stitching wins here: closer to the data than plain 12 steps at the same model cost, by 0.600 FD"),
    (2.00, 1.40, "WORSE", "stitching loses here: plain 12 steps is closer to the data at the same model cost"),
])
def test_the_stitch_row_is_judged_against_its_plain_row_and_said_so(stitch_fd, plain_fd, verdict, says):
    table = rows()
    d = distances(stitch_fd, plain_fd)
    assert d.verdict("T-Stitch 40% small", "plain 12 steps") == verdict
    lines = distribution.summary(table, d)
    assert lines[0].startswith("T-Stitch judged on the distribution: FD to the 297 held-out digits, 100 further samples")
    assert says in lines[1] and "at 0.62 of its model cost" in lines[1]
    assert lines[2].startswith("  unet_tiny alone: FD ") and ", WORSE than the full run (difference +5.5" in lines[2]


def test_as_good_as_full_means_within_the_full_runs_interval():
    d = distances(1.41, 1.40)
    full = d.interval("full")
    assert full.contains(d.interval("T-Stitch 40% small").value) and d.verdict("T-Stitch 40% small", "full") == "same"
    assert "as good as the full run" in distribution.summary(rows(), d)[1]
    assert "WORSE than the full run" in distribution.summary(rows(), distances(2.0, 1.4))[1]
    alone_as_full = distribution.summary(rows(), distances(1.41, 1.40, alone_fd=1.41))[2]
    assert "not told apart from the full run at this n" in alone_as_full


def test_check_annotates_only_the_judged_rows_and_sets_the_stitch_verdict(monkeypatch):
    table = rows()
    drawn = []

    def draw(row, noise, labels):
        drawn.append(row["method"])
        assert noise.shape == (30, 1, 16, 16) and labels.tolist() == (torch.arange(30) % 10).tolist()
        return torch.zeros(30, 1, 16, 16)

    fake = distances(2.0, 1.4)
    monkeypatch.setattr(distribution, "judge", lambda samples, labels: fake)
    assert distribution.check(table, draw, 30, seed=5) is fake
    assert drawn == ["full", "T-Stitch 40% small", "plain 12 steps", "unet_tiny alone"]
    by_name = {r["method"]: r for r in table}
    assert by_name["T-Stitch 40% small"]["vs plain"] == "WORSE" and "vs plain" not in by_name["LTC"]
    assert "FD held-out" not in by_name["LTC"] and str(by_name["full"]["FD held-out"]) == str(fake.interval("full"))


def test_the_check_needs_its_rows():
    with pytest.raises(ValueError, match="one reference row"):
        distribution.judged_rows([r for r in rows() if r["kind"] != "reference"])
