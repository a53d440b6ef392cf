"""Where the demo's LTC calibrations live: the user's own (``--recalibrate``) before the shipped ones.

``python -m ltc demo --recalibrate`` runs :func:`ltc.calibrate` and writes its files into a user
folder, never into the installed package:

    $LTC_HOME/calibrations                 when LTC_HOME is set
    $XDG_CACHE_HOME/ltc/calibrations       else, when XDG_CACHE_HOME is set
    ~/.cache/ltc/calibrations              else

A run loads ``<name>.safetensors`` from that folder when it exists, else the file shipped in
``ltc/zoo/calibrations``, else calibrates and writes it to the user folder.  Files are written by
:meth:`ltc.Calibration.save` (its permissions follow the umask, as for any file the user creates).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..calibration import Calibration, calibrate
from ..samplers import get_sampler
from ..zoo import CALIBRATIONS_DIR

SHIPPED_DIR = CALIBRATIONS_DIR  # the files shipped in the package (read only)


def user_dir() -> Path:
    """The user's calibration folder (see the module docstring); not created here."""
    home = os.environ.get("LTC_HOME")
    if home:
        return Path(home).expanduser() / "calibrations"
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "ltc" / "calibrations"


def verdict_note(cal: Calibration) -> str:
    """What the refusal rule said about ``cal`` (:mod:`ltc.calibration.report`), in a few words."""
    d = cal.report.get("decision")
    if not d:
        return "not judged (made without the report)"
    where = f"on {d['noises']} held-out noises, against a judge with its error bound"
    text = {"accepted": f"accepted: closer than the best plain sampler at equal NFE {where}",
            "plain better": f"REFUSED: the best plain sampler at equal NFE is closer {where}",
            "cannot tell": f"REFUSED (cannot tell): LTC's margin over the best plain sampler at equal NFE does not "
                           f"exceed what the judge can resolve {where}",
            "too few noises": f"REFUSED (too few noises): {d['noises']} held-out noises, the judge needs at least "
                              f"{d['min_noises']}"}[d["verdict"]]
    return text + ("; it uses w = 1, at least as close as the fitted weights" if d["weights"] == "w = 1" else "")


def load_or_calibrate(name: str, recalibrate: bool, calibrate_args: dict) -> tuple[Calibration, str]:
    """The calibration ``name`` and where it came from (a sentence naming the file).

    ``calibrate_args``: the arguments of :func:`ltc.calibrate` (``model_fns``, ``schedule``,
    ``policy``, ``sampler``, ``steps``, ...): a file is checked against that plan when loaded, and
    the calibration is made with them when there is none."""
    mine, shipped = user_dir() / f"{name}.safetensors", SHIPPED_DIR / f"{name}.safetensors"
    if not recalibrate:
        for path, whose in ((mine, "yours, from --recalibrate"), (shipped, "shipped")):
            if path.is_file():
                try:
                    cal = Calibration.load(path)
                    solver = get_sampler(calibrate_args["sampler"])
                    cal.check(solver.grid(calibrate_args["schedule"], calibrate_args["steps"]), solver,
                              calibrate_args["policy"])
                    return cal, f"{path} ({whose})"
                except ValueError as err:
                    hint = ("delete it or rerun with --recalibrate" if path == mine else "reinstall ltc or "
                            "run the demo with --recalibrate")
                    raise ValueError(f"the demo's calibration {path} cannot be used ({err}); {hint}") from err
    args = {"verbose": False, **calibrate_args}
    cal = calibrate(**args)
    mine.parent.mkdir(parents=True, exist_ok=True)
    cal.save(mine)
    return cal, f"{mine} (calibrated now and saved)"
