"""What users see: reprs that read, the Stepper's progress bar, docstrings on the public
constructors, the typing marker, the version, install hints, and a library that logs instead of printing."""
import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ltc
from ltc.policies import LTC, TStitch

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = ltc.Schedule.vp("linear", spacing="trailing")


def oracle():
    return ltc.oracles.GaussianMixture.random(SCHEDULE, dim=4).as_prediction("eps")


def test_print_info_is_one_line_with_a_readable_plan():
    weights = [1.1, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0]
    _, info = ltc.sample(oracle(), SCHEDULE, LTC(weights=weights), steps=20, shape=(2, 4), return_info=True,
                         generator=torch.Generator().manual_seed(0), progress=False)
    text = repr(info)
    assert "\n" not in text and len(text) < 600 and "array(" not in text and "tensor(" not in text
    assert ("step models 0000000x0x0x0x0x0x0x (k: model k, x: extrapolated)" in text
            and "nfe=13 (per model 13)" in text)
    assert repr(info.plan) == info.plan.describe()


def test_plan_describe_separates_model_indices_beyond_ten_models():
    plan = ltc.compile_plan(SCHEDULE.discretize(3), ltc.samplers.DDIM(), ltc.policies.Full(11), ["eps"] * 12)
    assert "step models 11 11 11 (k: model k" in plan.describe()


def test_ltc_repr_shows_decimal_weights_and_config_keeps_hex():
    policy = TStitch(0.4) | LTC(weights=[1.1, 0.93333333333])
    assert repr(policy) == ("LTC(interval=(0.25, 1.0), every=2, progress='sigma', state='x0', "
                            "weights=[1.1, 0.933333], base=TStitch(fractions=[0.4], by='step'))")
    assert policy.config()["weights"] == [float(1.1).hex(), float(0.93333333333).hex()]
    assert repr(LTC(skip=[3, 5], weights=0.5)) == "LTC(skip=[3, 5], progress='sigma', state='x0', weights=0.5)"


def test_stepper_progress_bar_counts_model_calls(capsys):
    noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    results = []
    for progress in (False, True):
        st = ltc.Stepper(SCHEDULE, LTC(), steps=20, noise=noise, predictions="eps", progress=progress)
        model = oracle()
        while not st.done:
            x, t, _ = st.request()
            st.step(model(x, t))
        results.append(st.x.clone())
        err = capsys.readouterr().err
        assert ("ltc.Stepper" in err) == progress
    assert "0/13" in err and st._bar.n == st.plan.nfe == 13  # one tick per model call, 20 steps
    assert torch.equal(results[0], results[1])
    with pytest.raises(TypeError, match="progress must be True or False, got 'yes'"):
        ltc.Stepper(SCHEDULE, steps=20, noise=noise, predictions="eps", progress="yes")


def public_constructors():
    for cls in (ltc.Schedule, ltc.Stepper, ltc.Model, ltc.Calibration, ltc.policies.LTC, ltc.policies.TStitch,
                ltc.policies.Full, ltc.samplers.DDIM, ltc.samplers.Euler, ltc.samplers.DPMSolverPP,
                ltc.oracles.GaussianMixture, ltc.oracles.EmpiricalData):
        yield cls.__qualname__, cls
        for name, member in vars(cls).items():
            if isinstance(member, (staticmethod, classmethod)) and not name.startswith("_"):
                yield f"{cls.__qualname__}.{name}", member.__func__


@pytest.mark.parametrize("name, obj", list(public_constructors()), ids=lambda v: v if isinstance(v, str) else "")
def test_public_constructors_have_docstrings(name, obj):
    assert inspect.getdoc(obj), f"{name} has no docstring"


def test_the_package_is_marked_typed_and_ships_the_marker():
    assert (ROOT / "ltc" / "py.typed").is_file()
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["ltc"]
    extras = config["project"]["optional-dependencies"]
    assert any(d.startswith("torchmetrics") for d in extras["metrics"])
    assert {"pillow", "matplotlib"} <= set(extras["demo"]) and any(d.startswith("torchmetrics") for d in extras["demo"])


def test_python_m_ltc_version():
    out = subprocess.run([sys.executable, "-m", "ltc", "--version"], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    assert out == f"ltc {ltc.__version__}\n"


def test_no_install_hint_names_the_unpublished_package():
    """Installing ltc with extras from an index cannot work before ltc is on PyPI: hints point at the
    README's install command instead."""
    pattern = re.compile(r"pip install ['\"]?ltc\[")
    offenders = [f"{p.relative_to(ROOT)}:{i + 1}" for top in ("ltc", "tests", "examples", "bench")
                 for p in sorted((ROOT / top).rglob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines()) if pattern.search(line)]
    assert offenders == [], offenders


def test_library_modules_log_instead_of_printing():
    """print() only in the command-line entry points (the demo, ``__main__`` blocks, training script)."""
    allowed = {"ltc/cli.py", "ltc/zoo/train.py"}
    offenders = []
    for path in sorted((ROOT / "ltc").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel in allowed or rel.startswith("ltc/demo/"):
            continue
        tree = ast.parse(path.read_text())
        main_blocks = {n for node in tree.body if _is_main_block(node) for n in ast.walk(node)}
        cli_functions = {n for node in tree.body if getattr(node, "name", "") == "_main"
                         for n in ast.walk(node)}
        for node in ast.walk(tree):
            if (getattr(getattr(node, "func", None), "id", None) == "print" and node not in main_blocks
                    and node not in cli_functions):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == [], offenders


def _is_main_block(node) -> bool:
    test = getattr(node, "test", None)
    return test is not None and "__main__" in ast.unparse(test)
