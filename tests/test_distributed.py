"""ltc.distributed.generate: 2-process gloo (torchrun) equals one process; crashes and corruption are repaired."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import ltc
from ltc import distributed as D

N, SHARD, SHAPE, SEED, STEPS = 22, 3, (2, 4), 7, 6
SHARDS = -(-N // SHARD)

# The job both torchrun and the tests run: a label-conditioned exact oracle under guidance.
JOB = textwrap.dedent('''
    import sys
    import torch
    import ltc
    import ltc.distributed

    SCHEDULE = ltc.Schedule.vp("linear", spacing="trailing")
    ORACLE = ltc.oracles.GaussianMixture.random(SCHEDULE, dim=8, seed=1)


    def model(x, t, y):
        """An x0 model whose output depends on the label y (so conditioning matters)."""
        return ORACLE(x, t) + 0.05 * y.to(x.dtype)[:, None, None]


    def run(out_dir, **kw):
        labels = (torch.arange(22) % 3 + 1).to(torch.float32)
        return ltc.distributed.generate(
            ltc.Model(model, "x0", "labelled-oracle"), SCHEDULE, out_dir=out_dir, num_samples=22, shape=(2, 4),
            shard_size=3, seed=7, steps=6, guidance_scale=2.0, conditioning={"y": labels},
            unconditional={"y": torch.zeros(1)}, progress=False, **kw)


    if __name__ == "__main__":
        run(sys.argv[1])
''')


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The job script on disk, imported as a module for the in-process runs."""
    folder = tmp_path_factory.mktemp("job")
    (folder / "ltc_job.py").write_text(JOB)
    sys.path.insert(0, str(folder))
    import ltc_job
    yield folder / "ltc_job.py", ltc_job
    sys.path.remove(str(folder))
    sys.modules.pop("ltc_job", None)


def torchrun(script, out_dir, nproc=2, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(script), str(out_dir)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=240)


def expected_samples(ltc_job):
    """The reference: each shard sampled with ltc.sample from the per-sample seeds' noise."""
    labels = (torch.arange(N) % 3 + 1).to(torch.float32)
    model = ltc.Model(ltc_job.model, "x0")
    parts = []
    for a in range(0, N, SHARD):
        b = min(a + SHARD, N)
        noise = torch.stack([torch.randn(SHAPE, generator=torch.Generator().manual_seed(D.sample_seed(SEED, k)))
                             for k in range(a, b)])
        y = torch.cat([torch.zeros(b - a), labels[a:b]])
        parts.append(ltc.sample(model, ltc_job.SCHEDULE, steps=STEPS, noise=noise, guidance_scale=2.0,
                                model_kwargs={"y": y}, progress=False))
    return torch.cat(parts)


def shard_files(out_dir):
    return sorted(p.name for p in out_dir.glob("shard-*.safetensors"))


def test_single_process_run_equals_ltc_sample_from_per_sample_seeds(job, tmp_path):
    _, ltc_job = job
    manifest = ltc_job.run(tmp_path)
    data = D.load(tmp_path)
    assert torch.equal(data["samples"], expected_samples(ltc_job))
    assert torch.equal(data["indices"], torch.arange(N))
    assert data["seeds"].tolist() == [D.sample_seed(SEED, k) for k in range(N)]
    assert torch.equal(data["cond.y"], (torch.arange(N) % 3 + 1).float())
    assert len(manifest["shards"]) == SHARDS and shard_files(tmp_path) == [D.shard_name(j) for j in range(SHARDS)]
    assert json.loads((tmp_path / D.MANIFEST).read_text()) == manifest


def test_two_gloo_processes_equal_one_process(job, tmp_path):
    script, ltc_job = job
    single, double = tmp_path / "one", tmp_path / "two"
    ltc_job.run(single)
    proc = torchrun(script, double)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = D.load(single), D.load(double)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((single / D.MANIFEST).read_text()) == json.loads((double / D.MANIFEST).read_text())


def test_a_rank_killed_mid_run_is_completed_by_a_rerun_without_duplicates(job, tmp_path):
    script, ltc_job = job
    proc = torchrun(script, tmp_path, env={"LTC_FAIL_AFTER_SHARDS": "1", "LTC_FAIL_RANK": "1"})
    assert proc.returncode != 0 and re.search(r"exitcode\s*:\s*17", proc.stderr)  # the injected death
    assert not (tmp_path / D.MANIFEST).exists()
    left = shard_files(tmp_path)
    assert 1 <= len(left) < SHARDS                          # some work survived, some was lost
    assert list(tmp_path.glob(".shard-*.tmp-1-*"))          # the dying rank's partial write, never renamed
    kept = {name: (tmp_path / name).stat().st_mtime_ns for name in left}
    rerun = torchrun(script, tmp_path)                      # the same job again, both ranks healthy
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in left} == kept  # completed shards were skipped
    assert shard_files(tmp_path) == [D.shard_name(j) for j in range(SHARDS)]
    assert not list(tmp_path.glob(".*tmp*"))
    data = D.load(tmp_path)
    assert torch.equal(data["indices"], torch.arange(N))    # complete, no duplicates
    assert torch.equal(data["samples"], expected_samples(ltc_job))


def test_corrupted_truncated_and_missing_shards_are_regenerated(job, tmp_path):
    _, ltc_job = job
    ltc_job.run(tmp_path)
    reference = D.load(tmp_path)
    flipped, truncated, deleted = (tmp_path / D.shard_name(j) for j in (1, 4, 6))
    raw = bytearray(flipped.read_bytes())
    raw[-5] ^= 0xFF                                          # one bit pattern in the sample data
    flipped.write_bytes(bytes(raw))
    truncated.write_bytes(truncated.read_bytes()[:40])
    deleted.unlink()
    with pytest.raises(ValueError, match=r"missing \['shard-000006.safetensors'\]"):
        D.load(tmp_path)
    untouched = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*") if p not in (flipped, truncated)}
    ltc_job.run(tmp_path)
    assert {n: (tmp_path / n).stat().st_mtime_ns for n in untouched} == untouched
    data = D.load(tmp_path)
    assert all(torch.equal(data[k], reference[k]) for k in reference)


def test_a_directory_of_another_run_is_refused(job, tmp_path):
    _, ltc_job = job
    ltc_job.run(tmp_path)
    with pytest.raises(ValueError, match="different run"):
        ltc_job.run(tmp_path, tag="other weights")


def test_noise_depends_only_on_seed_and_index():
    a = D.sample_noise(3, [5, 6, 7], SHAPE)
    b = D.sample_noise(3, [7], SHAPE)
    assert torch.equal(a[2:], b) and not torch.equal(a[0], a[1])
    assert D.sample_seed(3, 5) != D.sample_seed(5, 3) and 0 <= D.sample_seed(0, 0) < 2 ** 63


def test_shard_size_does_not_change_deterministic_samples(tmp_path):
    schedule = ltc.Schedule.vp("linear", spacing="trailing")
    oracle = ltc.oracles.GaussianMixture.random(schedule, dim=8, seed=1)
    kw = dict(out_dir=None, num_samples=7, shape=SHAPE, seed=1, steps=5, progress=False)
    D.generate(oracle, schedule, **{**kw, "out_dir": tmp_path / "a"}, shard_size=2)
    D.generate(oracle, schedule, **{**kw, "out_dir": tmp_path / "b", "progress": True}, shard_size=7)
    assert torch.equal(D.load(tmp_path / "a")["samples"], D.load(tmp_path / "b")["samples"])


def test_load_refuses_an_unfinished_directory(tmp_path):
    with pytest.raises(ValueError, match="not finished"):
        D.load(tmp_path)


@pytest.mark.parametrize("change, error, match", [
    ({"num_samples": 0}, ValueError, "num_samples must be an int >= 1"),
    ({"shard_size": 2.5}, ValueError, "shard_size must be an int >= 1"),
    ({"shape": (2, 0)}, ValueError, "shape must be a tuple of positive ints"),
    ({"seed": "7"}, TypeError, "seed must be an int"),
    ({"dtype": torch.int32}, TypeError, "dtype must be one of"),
    ({"conditioning": {"y": torch.zeros(5)}}, ValueError, r"conditioning\['y'\] has 5 rows, expected num_samples = 4"),
    ({"conditioning": [1, 2]}, TypeError, "conditioning must be a dict"),
    ({"conditioning": {"y": torch.zeros(4)}, "guidance_scale": 2.0}, ValueError, "unconditional must give"),
    ({"unconditional": {"y": torch.zeros(1)}}, ValueError, "only used with guidance_scale"),
    ({"schedule": "vp"}, TypeError, "schedule must be an ltc.Schedule"),
    ({"policy": "full"}, TypeError, "policy must be"),
    ({"tag": 3}, TypeError, "tag must be a string"),
])
def test_bad_arguments_are_rejected_before_any_file_is_written(tmp_path, change, error, match):
    schedule = ltc.Schedule.vp("linear", spacing="trailing")
    oracle = ltc.oracles.GaussianMixture.random(schedule, dim=8, seed=1)
    args = dict(schedule=schedule, policy=None, out_dir=tmp_path / "out", num_samples=4, shape=SHAPE,
                shard_size=2, steps=3, progress=False)
    args.update(change)
    with pytest.raises(error, match=match):
        D.generate(oracle, args.pop("schedule"), args.pop("policy"), **args)
    assert not (tmp_path / "out").exists()


def test_verify_command_reports_a_complete_directory(job, tmp_path, capsys):
    _, ltc_job = job
    ltc_job.run(tmp_path)
    assert D._main([str(tmp_path)]) == 0
    assert f"{N} samples" in capsys.readouterr().out
