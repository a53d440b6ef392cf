"""The demo's T-Stitch verdict, on the distribution (:mod:`ltc.zoo.distance`), not on closeness to the full run.

Stitching changes the model that takes the first steps, so its samples are not meant to equal the
full run's (PSNR against the full run stays in the table, as a secondary column); they are meant to
be as good.  The check draws ``n`` further samples (noises of their own, labels 0..9 repeated) for
four rows of the table -- the full run, the T-Stitch row, the plain sampler at the T-Stitch row's
model cost, and the small model alone -- and measures their Frechet distance to the 297 held-out
digits with paired 95% bootstrap intervals (:func:`ltc.zoo.distance.judge`).  The T-Stitch row's
'vs plain' is the verdict of :meth:`ltc.zoo.distance.Distances.verdict` against its plain row:
``better`` / ``same`` / ``WORSE`` (``same``: the two cannot be told apart at this ``n``).

A row of the table is a dict (see :mod:`.report`); the rows judged here get ``"FD held-out"`` (an
:class:`ltc.zoo.distance.Interval`).  ``draw(row, noise, labels)`` samples one row.
"""
from __future__ import annotations

import torch

from ..zoo.distance import Distances, judge

ROLES = ("full", "stitch", "plain", "alone")


def judged_rows(rows: list[dict]) -> dict:
    """The method names of the four judged rows by role: the full run, the T-Stitch row (the one
    accelerated row marked ``"judge": "distribution"``), its plain row and the small model alone
    (kind ``"reference"``)."""
    stitch = [r for r in rows if r.get("judge") == "distribution"]
    alone = [r for r in rows if r["kind"] == "reference"]
    full = [r for r in rows if r["kind"] == "full"]
    if len(stitch) != 1 or len(alone) != 1 or len(full) != 1:
        raise ValueError("the T-Stitch check needs one full row, one T-Stitch row marked judge='distribution' and "
                         f"one reference row (the small model alone); got {[r['method'] for r in rows]}")
    return {"full": full[0]["method"], "stitch": stitch[0]["method"], "plain": stitch[0]["plain"],
            "alone": alone[0]["method"]}


def check(rows: list[dict], draw, n: int, seed: int) -> Distances:
    """Draw ``n`` samples of each judged row from noises seeded by ``seed`` and judge them (paired);
    the rows get ``"FD held-out"`` and the T-Stitch row its ``"vs plain"`` verdict."""
    names = judged_rows(rows)
    by_name = {r["method"]: r for r in rows}
    noise = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(n) % 10
    samples = {name: draw(by_name[name], noise, labels) for name in dict.fromkeys(names.values())}
    distances = judge(samples, labels)
    for name in samples:
        by_name[name]["FD held-out"] = distances.interval(name)
    by_name[names["stitch"]]["vs plain"] = distances.verdict(names["stitch"], names["plain"])
    return distances


def _signed(d) -> str:
    return f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"


def summary(rows: list[dict], distances: Distances) -> list[str]:
    """Plain sentences: is the T-Stitch row as good as the full run, does it beat the plain sampler
    at its model cost (by how much), and how far the small model alone is from the data."""
    names = judged_rows(rows)
    by_name = {r["method"]: r for r in rows}
    full, stitch, plain, alone = (names[k] for k in ROLES)
    cost = by_name[stitch]["model cost"]
    to_full, to_plain = distances.difference(stitch, full), distances.difference(stitch, plain)
    alone_diff = distances.difference(alone, full)
    against_full = {"same": "not told apart from the full run at this n", "better": "better than the full run",
                    "WORSE": "WORSE than the full run"}
    as_full = {**against_full, "same": "as good as the full run"}[distances.verdict(stitch, full)]
    against_plain = distances.verdict(stitch, plain)
    win = {"better": f"stitching wins here: closer to the data than {plain} at the same model cost, by "
                     f"{-to_plain.value:.3f} FD [{-to_plain.high:.3f}, {-to_plain.low:.3f}]",
           "same": f"stitching does not win here: {plain} is as good at the same model cost "
                   f"(difference {_signed(to_plain)})",
           "WORSE": f"stitching loses here: {plain} is closer to the data at the same model cost "
                    f"(difference {_signed(to_plain)})"}[against_plain]
    width = distances.interval(full)
    return [f"T-Stitch judged on the distribution: FD to the 297 held-out digits, {distances.samples} further samples "
            f"per row, 95% paired bootstrap intervals (the full run's own interval is {width.high - width.low:.2f} "
            "wide at this n; bench/README.md has the trade-off with 2000):",
            f"  {stitch}: FD {distances.interval(stitch)}, {as_full} (FD {distances.interval(full)}; difference "
            f"{_signed(to_full)}) at {cost:.2f} of its model cost; {win}.",
            f"  {alone}: FD {distances.interval(alone)}, {against_full[distances.verdict(alone, full)]} (difference "
            f"{_signed(alone_diff)})."]
