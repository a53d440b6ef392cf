"""The README's result tables are generated from the committed JSON files: the generator must
keep working as the result files evolve."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_render_from_the_committed_results():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "readme_tables.py")], capture_output=True,
                         text=True, check=True).stdout
    for source in ("convergence.json", "loop_overhead_cpu.json", "tstitch_tradeoff.json",
                   "ltc_calibration_cost.json"):
        assert f"bench/results/{source}" in out
    assert "| vp, ends at positive noise |" in out and "| 0.4 | 8/12 |" in out
