"""What the demo concludes from its rows: timing that cannot be trusted, and one line of advice.

A row is a dict with ``method``, ``kind`` (``"full"``, ``"plain"``, ``"accelerated"`` or
``"reference"`` -- the small model alone, shown beside T-Stitch and never advised),
``model cost`` (multiply-adds relative to the full run), ``walls`` (seconds of each timed repeat),
``PSNR vs full``, and for accelerated rows ``plain`` (the name of the plain row at the same model
cost), ``vs plain`` (``"better"`` / ``"WORSE"``: closer to the full samples than that plain row?
For T-Stitch, judged on the distribution by :mod:`.distribution`: ``"better"`` / ``"same"`` /
``"WORSE"``) and ``calibration`` (``"accepted"``, ``"REFUSED"`` or None when the method is not
calibrated).
"""
from __future__ import annotations

import statistics


def wall_stats(walls: list[float]) -> tuple[float, float, float]:
    """``(median, min, max)`` of the timed repeats."""
    return statistics.median(walls), min(walls), max(walls)


def timing_notes(rows: list[dict]) -> list[str]:
    """One warning per comparison the table invites (each accelerated row against the full run
    and against its plain row) whose wall-time medians differ by less than the spread (max - min)
    of either row's repeats: on this machine, wall time cannot rank them; model cost can."""
    by_name = {r["method"]: r for r in rows}
    full = next(r for r in rows if r["kind"] == "full")
    notes = []
    for row in rows:
        if row["kind"] != "accelerated":
            continue
        for other in (full, by_name.get(row.get("plain"))):
            if other is None:
                continue
            (ma, lo_a, hi_a), (mb, lo_b, hi_b) = wall_stats(row["walls"]), wall_stats(other["walls"])
            spread = max(hi_a - lo_a, hi_b - lo_b)
            if abs(ma - mb) < spread:
                notes.append(f"timing: {row['method']} vs {other['method']}: medians {ma:.3g} s and {mb:.3g} s differ "
                             f"by less than the repeats' spread ({spread:.3g} s): wall time cannot rank them here; "
                             "model cost can")
    return notes


def advice(rows: list[dict], sampler_name: str) -> str:
    """One line: the cheapest accelerated method that is closer to the full samples than the plain
    sampler at the same model cost and whose calibration (if any) was accepted; else the plain
    sampler with fewer steps."""
    accelerated = [r for r in rows if r["kind"] == "accelerated"]
    good = [r for r in accelerated if r["vs plain"] == "better" and r.get("calibration") != "REFUSED"]
    if good:
        best = min(good, key=lambda r: r["model cost"])
        line = (f"advice: for this model, use {best['method']}: {1 / best['model cost']:.2g}x fewer multiply-adds "
                f"than the full run, and closer to it than {best['plain']}")
        rest = [r["method"] for r in accelerated if r not in good]
        if rest:
            line += f"; instead of {' or '.join(rest)}, use {sampler_name} with fewer steps"
        return line + "."
    plain = [r for r in rows if r["kind"] == "plain"]
    cheapest = min(plain, key=lambda r: r["model cost"]) if plain else None
    example = f" (e.g. {cheapest['method']}, model cost {cheapest['model cost']:.2g})" if cheapest else ""
    return (f"advice: for this model, use plain {sampler_name} with fewer steps{example}: no acceleration "
            "here beat it at equal model cost.")
