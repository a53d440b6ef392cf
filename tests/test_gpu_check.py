"""The one-shot GPU check parses, lists its parts, skips every GPU part cleanly without CUDA, and
round-trips its report into bench/results (``bench/gpu_check.py``, ``bench/gpu_probes.py``)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")


def test_the_shell_entry_point_is_valid_bash():
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")], check=True)


def test_dry_run_lists_every_part_within_the_budget(capsys):
    gpu_check.main(["--dry-run", "--out", "unused"])
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line and not line[0].isspace()]
    names = [p["name"] for p in gpu_check.parts(Path("x"))]
    assert names[:4] == ["install", "env", "cuda_build", "tests"] and set(names) <= set(listed)


def test_unknown_parts_are_refused():
    with pytest.raises(SystemExit):
        gpu_check.main(["--parts", "nonsense"])


def test_without_cuda_every_gpu_part_is_skipped_with_the_reason(tmp_path, capsys):
    report = gpu_check.check(tmp_path, budget=120, only=None, dry_run=False)
    assert report["parts"]["env"]["status"] == "ok" and report["env"]["torch"] == torch.__version__
    skipped = {k: v for k, v in report["parts"].items() if k != "env"}
    assert skipped and all(v == {"status": "skipped", "why": "no CUDA device"} for v in skipped.values())
    assert json.loads((tmp_path / "gpu_check.json").read_text())["parts"] == report["parts"]
    assert "no CUDA device" in capsys.readouterr().out


def test_a_part_that_does_not_fit_the_budget_is_skipped(tmp_path):
    report = gpu_check.check(tmp_path, budget=5, only=["env"], dry_run=False)
    assert report["parts"]["env"]["status"] == "skipped" and "budget" in report["parts"]["env"]["why"]


def test_unpack_writes_the_result_files(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "RESULTS", tmp_path / "results")
    fetched = tmp_path / "gpu_check.json"
    fetched.write_text(json.dumps({"env": {"devices": ["NVIDIA H100 80GB HBM3"]}, "parts": {},
                                   "results": {"step_kernels_cuda.json": {"rows": [1]}}}))
    gpu_check.unpack(fetched)
    assert json.loads((tmp_path / "results" / "step_kernels_cuda.json").read_text()) == {"rows": [1]}
    assert "results" not in json.loads((tmp_path / "results" / "gpu_check_nvidia_h100_80gb_hbm3.json").read_text())


def test_the_probes_exit_cleanly_without_cuda():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_probes.py")], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "no CUDA device" in out.stdout
