"""The CUDA extension's sources (``csrc/``) without a GPU: they compile with nvcc for sm_90 and the
binding against torch's headers (csrc/compile_check.sh), the kernels' column numbers are the
contract's (:class:`ltc.ops.contract.Col`), and setup.py finds its sources from any directory and
defaults the GPU architectures."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ltc.ops.contract import NCOLS, Col

CSRC = Path(__file__).resolve().parents[2] / "csrc"


@pytest.fixture(scope="module")
def compile_check():
    """csrc/compile_check.sh run once: its result (stdout: "ok: <file>" lines, and one
    "registers: <n> <kernel>" line per kernel from ptxas -v)."""
    if shutil.which(os.environ.get("NVCC", "nvcc")) is None:
        pytest.skip("nvcc not found: the compile check needs a CUDA toolkit")
    return subprocess.run(["bash", str(CSRC / "compile_check.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=900)


def test_sources_compile_with_nvcc_for_sm90_and_the_binding_against_torch_headers(compile_check):
    result = compile_check
    assert result.returncode == 0, result.stdout + result.stderr
    for source in sorted([*CSRC.glob("*.cu"), *CSRC.glob("*.cpp")]):
        assert f"ok: {source.name} " in result.stdout, result.stdout
    assert "ltc_cuda:: calls are defined by the .cu objects" in result.stdout


THREADS, REGISTERS_PER_SM = 256, 65536  # kThreads of csrc/common.cuh; an sm_80 / sm_90 multiprocessor


def test_step_kernels_fit_six_blocks_per_multiprocessor_without_spills(compile_check):
    """ptxas for sm_90: no kernel spills registers, and every step kernel but fp64 uses at most
    65536 / (6 x 256) registers per thread (rounded down to ptxas's granule of 8): 6 resident
    blocks per SM (__launch_bounds__), the grid being one wave of them (the occupancy API).  The
    model step with both the finite word and a batch-strided model output gets 5 blocks."""
    assert compile_check.returncode == 0, compile_check.stdout + compile_check.stderr
    kernels = dict((name, int(n)) for n, name in re.findall(r"^registers: (\d+) (.+)$", compile_check.stdout, re.M))
    assert not [k for k in kernels if k.endswith("SPILLS")], kernels
    steps = {k: n for k, n in kernels.items() if re.search(r"(model|extrapolate)_step_kernel<", k)}
    # extrapolate: 4 storage dtypes x (vector, scalar); model: x (finite word or not) x (batch-strided or not)
    assert len(steps) == 8 + 32, kernels
    for kernel, registers in steps.items():
        blocks = 4 if "<double," in kernel else 5 if kernel.endswith("true, true>(ltc_cuda::ModelStepArgs)") else 6
        assert registers <= REGISTERS_PER_SM // (blocks * THREADS) // 8 * 8, (kernel, registers)


def test_kernel_column_numbers_are_the_contract_columns():
    header = (CSRC / "ltc_ops.h").read_text()
    enum = re.search(r"enum Col : int \{(.*?)\};", header, re.S).group(1)
    columns = dict(re.findall(r"(\w+) = (\d+)", enum))
    assert {name: int(v) for name, v in columns.items() if name != "kNumCols"} == {c.name: int(c) for c in Col}
    assert int(columns["kNumCols"]) == NCOLS


def test_transition_dots_gives_one_large_sample_a_thousand_blocks(compile_check):
    """The host arithmetic of the extension, run without a GPU: chunks of 2048 elements until a
    row has 1024 of them (4M elements: 1024 blocks in pass 1, not 256), at most 16384 elements."""
    assert compile_check.returncode == 0, compile_check.stdout + compile_check.stderr
    chunks = {int(n): int(c) for n, c in re.findall(r"^chunks: (\d+) (\d+)$", compile_check.stdout, re.M)}
    assert chunks == {1: 1, 2048: 1, 2049: 2, 16384: 8, 65537: 33, 1 << 22: 1024, 1 << 24: 1024, 1 << 26: 4096}


# ---------------------------------------------------------------- setup.py

ROOT = CSRC.parent


def setup_namespace(cwd: Path) -> dict:
    """The globals of ``setup.py`` loaded (not run: setup() runs only as __main__) from ``cwd``,
    in a subprocess: ``PACKAGES``, ``extension_sources()``, the arch defaults."""
    code = ("import json, runpy, sys\n"
            f"ns = runpy.run_path({str(ROOT / 'setup.py')!r})\n"
            "print(json.dumps(dict(packages=ns['PACKAGES'], sources=ns['extension_sources'](),\n"
            "    default=ns['cuda_arch_list']({}), empty=ns['cuda_arch_list']({'TORCH_CUDA_ARCH_LIST': ''}),\n"
            "    chosen=ns['cuda_arch_list']({'TORCH_CUDA_ARCH_LIST': '8.6'}))))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_setup_finds_its_sources_and_packages_from_any_directory(tmp_path):
    """Run from another directory, setup.py still lists every csrc/ source (absolute paths) and
    every ltc package: paths come from setup.py's own directory, not the current one."""
    ns = setup_namespace(tmp_path)
    assert ns["sources"] == sorted(str(p) for p in [*CSRC.glob("*.cpp"), *CSRC.glob("*.cu")])
    assert all(Path(s).is_absolute() and Path(s).exists() for s in ns["sources"])
    assert {"ltc", "ltc.ops", "ltc.executor", "ltc.kernels"} <= set(ns["packages"])


def test_setup_defaults_the_cuda_arch_list_when_unset(tmp_path, monkeypatch):
    """Unset or empty TORCH_CUDA_ARCH_LIST: sm_80 and sm_90 SASS plus sm_90 PTX (what torch's
    builder turns it into is checked too); a value the user sets is kept."""
    ns = setup_namespace(tmp_path)
    assert ns["default"] == ns["empty"] == "8.0;9.0+PTX"
    assert ns["chosen"] == "8.6"
    cpp_extension = pytest.importorskip("torch.utils.cpp_extension")
    arch_flags = getattr(cpp_extension, "_get_cuda_arch_flags", None)
    if arch_flags is None:
        pytest.skip("this torch has no torch.utils.cpp_extension._get_cuda_arch_flags")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", ns["default"])
    assert set(arch_flags()) == {"-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                     "-gencode=arch=compute_90,code=compute_90"}
