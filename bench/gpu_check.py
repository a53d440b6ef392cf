"""The one-shot GPU check: every test and benchmark that needs a CUDA device, in one command.

    bash bench/gpu_check.sh [OUT_DIR]          # or: python bench/gpu_check.py --out OUT_DIR

Run from the project root on a fresh H100/H200 with no internet (torch, triton, pytest, numpy,
safetensors and tqdm installed; ``nvcc`` and ``ninja`` for the CUDA extension).  Parts, in order of
priority, each under its own timeout, continuing past failures:

    install      pip install -e . (no deps, no index): makes ``ltc.kernels`` importable
    env          GPU, driver, torch, triton, CUDA versions
    cuda_build   the CUDA extension, compiled by ``python -m ltc.ops.cuda_build`` (LTC_CUDA_JIT=1)
    tests        every ``@pytest.mark.gpu`` test (kernels, graphs, stepper, extension)
    probes       bench/gpu_probes.py: RNG after a failed capture, replaced weights, peak memory of
                 whole-trajectory capture vs eager (DiT-XL/2, batch 8), the cuda:1 device guard
    step_ops     bench/step_ops.py --device cuda (every op, two aligned sizes and 16M + 8, n % 16 != 0)
    graph_overhead, graph_policies   bench/graph_executor.py (DiT-S and DiT-XL/2, batch 1 and 8)
    cuda_ext     bench/cuda_ext.py (two sizes)
    memcheck     compute-sanitizer memcheck over the extension's tests

The whole run keeps to ``--budget`` seconds (default 450: a lent GPU is held at most 15 minutes,
start-up included, and the check must leave time to run it again); a part that no longer fits is
skipped and says so.  Everything lands in two files: ``OUT/gpu_check.json`` (device info, each
part's status, exit code, time and output tail, the parsed test report, and the content of every
``bench/results/*.json`` written during the run) and ``OUT/gpu_check.log``; a one-screen summary is
printed last.  ``python bench/gpu_check.py --unpack OUT/gpu_check.json`` copies the result files
into ``bench/results/`` (plus ``gpu_check_<device>.json``) to commit them.  Without a CUDA device
every part but ``env`` is skipped with that reason.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable


def _env_probe() -> list[str]:
    code = ("import json, platform, torch; d = {'python': platform.python_version(), 'torch': torch.__version__, "
            "'cuda': torch.version.cuda, 'devices': [torch.cuda.get_device_name(i) for i in "
            "range(torch.cuda.device_count())]}\n"
            "try:\n import triton; d['triton'] = triton.__version__\nexcept Exception as e: d['triton'] = repr(e)\n"
            "print('ENV ' + json.dumps(d))")
    return [PY, "-c", code]


def parts(junit: Path) -> list[dict]:
    """The parts in order: name, command, timeout (s), whether it needs CUDA, extra environment."""
    jit = {"LTC_CUDA_JIT": "1"}
    return [
        dict(name="install", cmd=[PY, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                                  "--no-index", "-e", "."], timeout=60, cuda=True),
        dict(name="env", cmd=_env_probe(), timeout=30, cuda=False, shell_extra=["nvidia-smi"]),
        dict(name="cuda_build", cmd=[PY, "-m", "ltc.ops.cuda_build"], timeout=180, cuda=True, env=jit),
        dict(name="tests", cmd=[PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests",
                                f"--junitxml={junit}"], timeout=200, cuda=True, env=jit),
        dict(name="probes", cmd=[PY, "bench/gpu_probes.py"], timeout=120, cuda=True),
        dict(name="step_ops", cmd=[PY, "bench/step_ops.py", "--device", "cuda", "--sizes", "1048576", "16777216",
                                   "16777224", "--repeats", "20"], timeout=90, cuda=True),
        dict(name="graph_overhead", cmd=[PY, "bench/graph_executor.py", "--part", "overhead", "--models", "S", "XL",
                                         "--batches", "1", "8", "--repeats", "5", "--no-compile"],
             timeout=150, cuda=True),
        dict(name="graph_policies", cmd=[PY, "bench/graph_executor.py", "--part", "policies", "--batches", "1", "8",
                                         "--repeats", "5", "--no-compile"], timeout=120, cuda=True),
        dict(name="cuda_ext", cmd=[PY, "bench/cuda_ext.py", "--sizes", "1048576", "16777216", "--repeats", "20"],
             timeout=90, cuda=True, env=jit),
        dict(name="memcheck", cmd=["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "1", PY, "-m",
                                   "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "gpu", "tests/ops",
                                   "-k", "cuda"], timeout=120, cuda=True, env=jit),
    ]


def has_cuda() -> bool:
    try:
        out = subprocess.run([PY, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.strip().endswith("True")


def run_part(part: dict, timeout: float, log) -> dict:
    """Run one part; never raises.  Returns status ok/failed/timeout, rc, seconds and the output tail."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **part.get("env", {})}
    start = time.monotonic()
    log.write(f"\n===== {part['name']}: {' '.join(part['cmd'])} (timeout {timeout:.0f} s)\n")
    log.flush()
    try:
        proc = subprocess.run(part["cmd"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        output, rc = proc.stdout + proc.stderr, proc.returncode
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired as err:
        output = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        output += (err.stderr or b"").decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        rc, status = None, "timeout"
    except OSError as err:  # e.g. compute-sanitizer not on the PATH
        output, rc, status = f"{type(err).__name__}: {err}", None, "failed"
    for extra in part.get("shell_extra", []):
        try:
            output += subprocess.run([extra], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError) as err:
            output += f"\n{extra}: {err}"
    log.write(output)
    log.flush()
    return {"status": status, "rc": rc, "seconds": round(time.monotonic() - start, 1), "tail": output[-3000:]}


def junit_report(path: Path) -> dict:
    """Counts and failing test ids from a pytest junit file (empty if there is none)."""
    if not path.is_file():
        return {}
    root = ET.parse(path).getroot()
    counts, failures = {"passed": 0, "failed": 0, "skipped": 0}, []
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            node = case.find("failure") if case.find("failure") is not None else case.find("error")
            failures.append({"test": name, "message": (node.get("message") or "")[:500]})
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failures": failures}


def new_results(since: float) -> dict:
    """The content of every bench/results/*.json written since ``since`` (wall clock)."""
    found = {}
    for path in sorted(RESULTS.glob("*.json")):
        if path.stat().st_mtime >= since:
            try:
                found[path.name] = json.loads(path.read_text())
            except ValueError as err:
                found[path.name] = {"unreadable": str(err)}
    return found


def summary(report: dict) -> str:
    lines = [f"GPU check on {report['env'].get('devices') or 'no CUDA device'} "
             f"(torch {report['env'].get('torch')}, triton {report['env'].get('triton')}), "
             f"{report['seconds']:.0f} s of a {report['budget']} s budget"]
    for name, res in report["parts"].items():
        lines.append(f"  {name:15s} {res['status']:8s} {res.get('seconds', 0):6.1f} s  {res.get('why', '')}")
    tests = report.get("tests", {})
    if tests:
        lines.append(f"  gpu tests: {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped")
        lines += [f"    FAILED {f['test']}: {f['message'][:150]}" for f in tests["failures"][:15]]
    return "\n".join(lines)


def check(out: Path, budget: float, only: list[str] | None, dry_run: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "junit.xml"
    plan = [p for p in parts(junit) if only is None or p["name"] in only]
    if dry_run:
        for p in plan:
            print(f"{p['name']:15s} {p['timeout']:4d} s  {' '.join(p['cmd'])}")
        return {}
    start, wall = time.monotonic(), time.time()
    cuda = has_cuda()
    report = {"budget": budget, "env": {}, "parts": {}}
    with open(out / "gpu_check.log", "w") as log:
        for part in plan:
            left = budget - (time.monotonic() - start)
            if part["cuda"] and not cuda:
                report["parts"][part["name"]] = {"status": "skipped", "why": "no CUDA device"}
                continue
            if left < min(part["timeout"], 30):
                report["parts"][part["name"]] = {"status": "skipped", "why": f"budget: {left:.0f} s left"}
                continue
            res = run_part(part, min(part["timeout"], left), log)
            report["parts"][part["name"]] = res
            if part["name"] == "env":
                match = re.search(r"^ENV (.*)$", res["tail"], re.M)
                report["env"] = json.loads(match.group(1)) if match else {}
    report["tests"] = junit_report(junit)
    report["results"] = new_results(wall)
    report["seconds"] = time.monotonic() - start
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    junit.unlink(missing_ok=True)
    print(summary(report))
    return report


def unpack(path: Path) -> None:
    """Copy a fetched gpu_check.json's result files into bench/results/ (to commit them)."""
    report = json.loads(path.read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, content in report.get("results", {}).items():
        (RESULTS / name).write_text(json.dumps(content, indent=2) + "\n")
        print("wrote", RESULTS / name)
    device = re.sub(r"[^A-Za-z0-9]+", "_", (report.get("env", {}).get("devices") or ["cpu"])[0]).strip("_").lower()
    kept = {k: v for k, v in report.items() if k != "results"}
    (RESULTS / f"gpu_check_{device}.json").write_text(json.dumps(kept, indent=1) + "\n")
    print("wrote", RESULTS / f"gpu_check_{device}.json")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"),
                   help="output folder (default $OUT, else ./gpu_check_out)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run (default 450)")
    p.add_argument("--parts", nargs="+", help="run only these parts")
    p.add_argument("--dry-run", action="store_true", help="list the parts and their commands, run nothing")
    p.add_argument("--unpack", type=Path, help="copy the result files of a fetched gpu_check.json into bench/results")
    args = p.parse_args(argv)
    if args.unpack:
        unpack(args.unpack)
        return 0
    names = [q["name"] for q in parts(Path("x"))]
    unknown = sorted(set(args.parts or ()) - set(names))
    if unknown:
        p.error(f"unknown parts {unknown}; the parts are {names}")
    check(args.out, args.budget, args.parts, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
