"""The CUDA extension's sources (``csrc/``) without a GPU: they compile with nvcc for sm_90 and the
binding against torch's headers (csrc/compile_check.sh), and the kernels' column numbers are the
contract's (:class:`ltc.ops.contract.Col`)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ltc.ops.contract import NCOLS, Col

CSRC = Path(__file__).resolve().parents[2] / "csrc"


def test_sources_compile_with_nvcc_for_sm90_and_the_binding_against_torch_headers():
    if shutil.which(os.environ.get("NVCC", "nvcc")) is None:
        pytest.skip("nvcc not found: the compile check needs a CUDA toolkit")
    result = subprocess.run(["bash", str(CSRC / "compile_check.sh")], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    for source in sorted([*CSRC.glob("*.cu"), *CSRC.glob("*.cpp")]):
        assert f"ok: {source.name} " in result.stdout, result.stdout
    assert "ltc_cuda:: calls are defined by the .cu objects" in result.stdout


def test_kernel_column_numbers_are_the_contract_columns():
    header = (CSRC / "ltc_ops.h").read_text()
    enum = re.search(r"enum Col : int \{(.*?)\};", header, re.S).group(1)
    columns = dict(re.findall(r"(\w+) = (\d+)", enum))
    assert {name: int(v) for name, v in columns.items() if name != "kNumCols"} == {c.name: int(c) for c in Col}
    assert int(columns["kNumCols"]) == NCOLS
