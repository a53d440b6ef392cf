"""The demo (``python -m ltc demo``): its table, verdicts, advice, pictures and calibration files.

Runs use a few samples and repeats (``Settings``), so the whole file takes seconds; the default
run's length is measured, never asserted.
"""
import hashlib
import importlib.util
import os
import re

import pytest
import torch

from ltc import zoo
from ltc.cli import COMMANDS, parser
from ltc.demo import calibrations, pictures, report
from ltc.demo import zoo as demo

needs_torchmetrics = pytest.mark.skipif(importlib.util.find_spec("torchmetrics") is None,
                                        reason="torchmetrics is not installed (the 'metrics' extra)")
TINY = demo.Settings(batch=2, repeats=2, judge_batch=20)


@pytest.fixture
def ltc_home(tmp_path, monkeypatch):
    """An empty user calibration folder (LTC_HOME), so the shipped files are the ones found; one
    CPU thread, as the demo's ``main`` runs (restored afterwards)."""
    monkeypatch.setenv("LTC_HOME", str(tmp_path / "home"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path / "home"
    torch.set_num_threads(threads)


def package_calibrations() -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in zoo.CALIBRATIONS_DIR.iterdir()}


@needs_torchmetrics
def test_a_small_run_prints_the_table_the_verdicts_and_one_line_of_advice(ltc_home, tmp_path, capsys):
    threads = torch.get_num_threads()
    text = demo.main(out_dir=str(tmp_path / "out"), progress=False, settings=TINY)
    assert torch.get_num_threads() == threads  # the demo's one thread is restored
    printed = capsys.readouterr().out
    assert text in printed and (tmp_path / "out" / "samples.png").is_file()
    header = next(line for line in text.splitlines() if line.lstrip().startswith("method"))
    assert header.split()[:8] == ["method", "steps", "NFE", "small+large", "model", "cost", "speed-up", "(cost)"]
    # the shipped LTC calibration is refused by the refusal rule: never shown as calibrated
    assert "LTC (calibration refused)" in text and "LTC (calibrated)" not in text.replace("T-Stitch + LTC", "")
    assert "demo_ltc.safetensors (shipped); calibration REFUSED" in text
    assert text.splitlines()[-1].startswith("advice: for this model, use ")
    assert re.search(r"^  T-Stitch 40% small: FD \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\], .* at 0\.6\d of its model cost; "
                     r"stitching (wins|does not win|loses) here", text, re.M)
    assert re.search(r"^ *plain 13 steps +13 +0\+13 +0\.650 +1\.54x", text, re.M)


@needs_torchmetrics
def test_rows_cost_and_timing(ltc_home):
    rows, extra = demo.run(TINY, progress=False)
    by_name = {r["method"]: r for r in rows}
    tiny = float(zoo.info(zoo.TSTITCH_PAIR[0])["macs_per_sample"]) / float(zoo.info("unet_large")["macs_per_sample"])
    assert [r["kind"] for r in rows] == ["full", "accelerated", "plain", "accelerated", "plain", "accelerated", "plain",
                                         "reference"]
    assert by_name["full"]["model cost"] == 1.0 and by_name["plain 13 steps"]["model cost"] == 13 / 20
    assert by_name["T-Stitch 40% small"]["model cost"] == pytest.approx((8 * tiny + 12) / 20, rel=1e-12)
    assert by_name["T-Stitch 40% small"]["plain"] == "plain 12 steps"   # the most plain steps its cost buys
    assert by_name["unet_tiny alone"]["model cost"] == pytest.approx(tiny, rel=1e-12)
    judged = extra["distances"]  # T-Stitch's verdict: the distribution check, on rows of their own
    assert set(judged.point) == {"full", "T-Stitch 40% small", "plain 12 steps", "unet_tiny alone"}
    assert judged.samples == TINY.judge_batch
    assert by_name["T-Stitch 40% small"]["vs plain"] == judged.verdict("T-Stitch 40% small", "plain 12 steps")
    assert str(by_name["full"]["FD held-out"]) in demo.format_rows(rows) and "FD held-out" not in by_name["plain 13 steps"]
    assert all(len(r["walls"]) == TINY.repeats for r in rows)
    assert all(r["plain"] in by_name for r in rows if r["kind"] == "accelerated")
    assert set(extra["samples"]) == set(by_name) and extra["samples"]["full"].shape == (2, 1, 16, 16)
    assert re.search(r"\d+\.\d+-\d+\.\d+", demo.format_rows(rows))  # the range column


def rows_for_advice(verdicts):
    """Synthetic rows: full, then per (name, cost, vs plain, calibration) an accelerated row and its plain row."""
    rows = [{"method": "full", "kind": "full", "model cost": 1.0, "PSNR vs full": float("inf"), "walls": [3.0]}]
    for name, cost, vs, cal in verdicts:
        plain = f"plain {int(cost * 20)} steps"
        rows.append({"method": name, "kind": "accelerated", "model cost": cost, "vs plain": vs, "calibration": cal,
                     "plain": plain, "walls": [1.0], "PSNR vs full": 40.0})
        rows.append({"method": plain, "kind": "plain", "model cost": cost, "walls": [1.0], "PSNR vs full": 39.0})
    return rows


def test_advice_recommends_the_cheapest_accepted_method_that_beats_plain():
    rows = rows_for_advice([("A", 0.6, "better", "accepted"), ("B", 0.3, "better", None),
                            ("C", 0.2, "better", "REFUSED"), ("D", 0.1, "WORSE", "accepted")])
    line = report.advice(rows, "DPM")
    assert line.startswith("advice: for this model, use B: 3.3x fewer multiply-adds") and "plain 6 steps" in line
    assert "instead of C or D, use DPM with fewer steps" in line and "\n" not in line


def test_advice_falls_back_to_the_plain_sampler():
    line = report.advice(rows_for_advice([("A", 0.65, "WORSE", "REFUSED"), ("B", 0.35, "better", "REFUSED")]), "DPM")
    assert line.startswith("advice: for this model, use plain DPM with fewer steps (e.g. plain 7 steps")


def test_timing_notes_warn_exactly_where_the_spread_exceeds_the_difference():
    rows = rows_for_advice([("A", 0.5, "better", None)])
    rows[0]["walls"] = [2.0, 2.1, 2.2]            # full
    rows[1]["walls"] = [1.0, 1.05, 1.1]           # A: clearly faster than full
    rows[2]["walls"] = [0.9, 1.0, 1.3]            # plain 10 steps: median 1.0, spread 0.4 > |1.05 - 1.0|
    notes = report.timing_notes(rows)
    assert len(notes) == 1 and notes[0].startswith("timing: A vs plain 10 steps: medians 1.05 s and 1 s")
    rows[2]["walls"] = [1.3, 1.31, 1.32]          # now the difference (0.26 s) exceeds both spreads
    assert report.timing_notes(rows) == []


def test_sample_grid_pads_labels_and_upscales_without_smoothing():
    scale, gap = 3, 5
    dark = torch.full((4, 1, 16, 16), -1.0)
    dark[:, 0, 8, 8] = 1.0  # one white pixel: nearest-neighbour makes it a 3x3 white block
    image = pictures.sample_grid({"first row": dark, "second": dark}, [0, 1, 2], scale=scale, gap=gap, title="t")
    pixels = torch.frombuffer(bytearray(image.convert("L").tobytes()), dtype=torch.uint8)
    pixels = pixels.reshape(image.height, image.width).int()
    cell = 16 * scale
    dark_cols = (pixels < 20).float().mean(0) > 0.3
    runs = torch.diff(dark_cols.int()).nonzero().flatten()
    starts, ends = runs[::2] + 1, runs[1::2] + 1
    assert (ends - starts).tolist() == [cell] * 3                        # three columns of cells
    assert (starts[1:] - ends[:-1]).tolist() == [gap, gap]               # background between them
    left = int(starts[0])
    assert (pixels[:, :left] < 128).any()                                # row names, left of the cells
    rows_dark = ((pixels[:, left:left + cell] < 20).float().mean(1) > 0.9).nonzero().flatten()
    top = int(rows_dark[0])
    assert (pixels[:top, left:] < 128).any()                             # column labels above
    block = pixels[top + 8 * scale: top + 9 * scale, left + 8 * scale: left + 9 * scale]
    assert (block == 255).all() and pixels[top + 8 * scale - 1, left + 8 * scale] == 0  # sharp edges


@needs_torchmetrics
def test_recalibrate_writes_to_the_user_folder_with_the_umask_and_is_used_afterwards(ltc_home, monkeypatch):
    settings = demo.Settings(steps=8, batch=2, repeats=1, calib=2)
    shipped = package_calibrations()
    old = os.umask(0o027)
    try:
        with pytest.warns(UserWarning, match="LTC REFUSED"):  # 2 calibration noises: the rule refuses
            _, extra = demo.run(settings, progress=False, recalibrate=True)
    finally:
        os.umask(old)
    assert package_calibrations() == shipped                             # the installed package is untouched
    files = sorted(p.name for p in (ltc_home / "calibrations").iterdir())
    assert files == ["demo_ltc.safetensors", "demo_tstitch_ltc.safetensors"]
    for name in files:
        assert (ltc_home / "calibrations" / name).stat().st_mode & 0o777 == 0o640
    assert all("calibrated now and saved" in n for n in extra["notes"])
    _, extra = demo.run(settings, progress=False)                        # found in the user folder from now on
    assert all(str(ltc_home) in n and "yours, from --recalibrate" in n for n in extra["notes"])
    (ltc_home / "calibrations" / "demo_ltc.safetensors").write_bytes(b"not a calibration")
    with pytest.raises(ValueError, match="demo_ltc.safetensors cannot be used .*delete it or rerun with --recalibrate"):
        demo.run(settings, progress=False)


def test_the_user_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("LTC_HOME", str(tmp_path / "h"))
    assert calibrations.user_dir() == tmp_path / "h" / "calibrations"
    monkeypatch.delenv("LTC_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert calibrations.user_dir() == tmp_path / "c" / "ltc" / "calibrations"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "u"))
    assert calibrations.user_dir() == tmp_path / "u" / ".cache" / "ltc" / "calibrations"


def test_cli_help_lists_every_command_on_one_line_and_the_version(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for name, line in COMMANDS.items():
        assert re.search(rf"^  {name} +{re.escape(line)}$", out, re.M)
    assert set(COMMANDS) == set(parser()._subparsers._group_actions[0].choices)
    with pytest.raises(SystemExit):
        parser().parse_args(["--version"])
    assert re.fullmatch(r"ltc \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


@pytest.mark.parametrize("bad", [{"batch": 0}, {"repeats": 1.5}, {"calib": 1}, {"steps": True}, {"judge_batch": 19}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match=list(bad)[0]):
        demo.Settings(**bad)


def test_threads_are_checked_before_anything_runs():
    with pytest.raises(ValueError, match="threads must be an int >= 1, got 0"):
        demo.main(threads=0)
