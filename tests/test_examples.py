"""The README's recipes as runnable scripts (examples/): each runs as ``__main__``, in seconds on a CPU.

They run in this process (``runpy``, with ``sys.argv`` as a shell would set it) in a temporary
working directory, so the files they write stay there, on one CPU thread (on a busy 2-core machine
torch's two threads made the zoo models ~3x slower, not faster).
"""
import importlib.util
import logging
import runpy
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = {  # script -> the arguments the test passes, and a module it needs
    "custom_loop_diffusers_unet.py": ([], "diffusers"),
    "stepper_foreign_loop.py": ([], None),
    "calibrate_save_load.py": (["."], None),
    "tstitch_two_models.py": ([], None),
    "distributed_generate.py": (["samples"], None),
    "diffusers_pipeline_one_line.py": ([], "diffusers"),
    "optimize_plan.py": (["."], None),
}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(SCRIPTS)


@pytest.fixture
def as_a_script(tmp_path, monkeypatch):
    """Run from an empty directory on one thread, with the root logger and the thread count
    restored afterwards (a script may configure logging)."""
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level, threads = list(root.handlers), root.level, torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    root.handlers[:], root.level = handlers, level
    torch.set_num_threads(threads)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_example_runs(script, as_a_script, monkeypatch, capsys):
    args, needs = SCRIPTS[script]
    if needs is not None and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{needs} is not installed")
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / script), *args])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip(), f"{script} printed nothing"
    if script == "calibrate_save_load.py":
        assert (as_a_script / "ltc_flow3_euler_20.safetensors").is_file()
    if script == "optimize_plan.py":
        assert (as_a_script / "vp_dpm_nfe6.safetensors").is_file() and "(this plan)" in out
    if script == "distributed_generate.py":
        assert (as_a_script / "samples" / "manifest.json").is_file() and "(20, 1, 16, 16)" in out
