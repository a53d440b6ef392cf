"""bench/README.md is generated from the committed result files by bench/report.py: the generator
must keep working as the result files evolve, and the committed file must be what it writes."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_readme_is_what_the_generator_writes():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), "--check"], capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    text = (ROOT / "bench" / "README.md").read_text()
    for result in sorted((ROOT / "bench" / "results").glob("*.json")):   # every result file has its place
        assert f"`bench/results/{result.name}`" in text, result.name
    for source in ("convergence.json", "loop_overhead_cpu.json", "tstitch_tradeoff.json", "ltc_calibration_cost.json",
                   "ltc_evidence.json", "zoo_training.json"):
        assert f"_Source: `bench/results/{source}`" in text
    assert "| vp, ends at positive noise |" in text and "| 0.4 | 8/12 |" in text and "| gmm | vp-ddim | 10 | 6 |" in text
