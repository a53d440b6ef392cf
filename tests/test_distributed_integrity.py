"""ltc.distributed output directories: the manifest is checked against its configuration and the files
on disk, a resumed run refuses another configuration (model weights included), and a refused start --
or a second job while one is running -- touches nothing."""
import json
import os
import shutil
import threading
import warnings

import pytest
import torch

import ltc
from ltc import distributed as D
from ltc.zoo.oracles import GaussianMixture

N, SHARD, SHAPE, SEED, STEPS = 22, 3, (2, 4), 7, 4
SHARDS = -(-N // SHARD)
SCHEDULE = ltc.Schedule.vp("linear", spacing="trailing")

pytestmark = pytest.mark.usefixtures("one_thread")


def oracle(seed=1, name="oracle"):
    return ltc.Model(GaussianMixture.random(SCHEDULE, dim=8, seed=seed), "x0", name)


def generate(out, model=None, **kw):
    args = dict(out_dir=out, num_samples=N, shape=SHAPE, shard_size=SHARD, seed=SEED, steps=STEPS, progress=False)
    args.update(kw)
    return D.generate(model if model is not None else oracle(), SCHEDULE, **args)


def snapshot(directory):
    """Every file (hidden ones too) with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    generate(out)
    return out


@pytest.fixture
def copy(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def edit_manifest(out, change):
    manifest = json.loads((out / D.MANIFEST).read_text())
    change(manifest)
    (out / D.MANIFEST).write_text(json.dumps(manifest))


# -- the manifest against its configuration and the files on disk ------------------------------------
def test_a_finished_directory_verifies(finished, capsys):
    data = D.load(finished)
    assert torch.equal(data["indices"], torch.arange(N))
    assert D._main([str(finished)]) == 0 and f"{N} samples" in capsys.readouterr().out


def test_a_removed_manifest_entry_is_refused_by_load_and_the_verify_command(copy):
    edit_manifest(copy, lambda m: m["shards"].pop(4))
    with pytest.raises(ValueError, match=rf"lists {SHARDS - 1} shards; its configuration \({N} samples, {SHARD} per "
                                         rf"shard\) has {SHARDS}"):
        D.load(copy)
    with pytest.raises(SystemExit, match="NOT verified"):
        D._main([str(copy)])


def test_a_duplicated_manifest_entry_is_refused(copy):
    edit_manifest(copy, lambda m: m["shards"].__setitem__(2, dict(m["shards"][1])))
    with pytest.raises(ValueError, match="shard entry 2 must be"):
        D.load(copy)


def test_an_entry_outside_the_directory_is_refused(copy):
    outside = copy.parent / "y"
    outside.mkdir()
    shutil.copy(copy / D.shard_name(1), outside / D.shard_name(1))
    edit_manifest(copy, lambda m: m["shards"][1].update(file=f"../y/{D.shard_name(1)}"))
    with pytest.raises(ValueError, match="shard entry 1 must be"):
        D.load(copy)


def test_a_symlinked_shard_pointing_outside_is_refused(copy):
    outside = copy.parent / "elsewhere.safetensors"
    shutil.move(copy / D.shard_name(3), outside)
    os.symlink(outside, copy / D.shard_name(3))
    with pytest.raises(ValueError, match="outside"):
        D.load(copy)


def test_a_shard_file_the_manifest_does_not_list_is_refused(copy):
    shutil.copy(copy / D.shard_name(0), copy / D.shard_name(SHARDS))
    with pytest.raises(ValueError, match=rf"not listed \['{D.shard_name(SHARDS)}'\]"):
        D.load(copy)


def test_an_edited_configuration_is_refused(copy):
    edit_manifest(copy, lambda m: m["config"].update(num_samples=N - 1))
    with pytest.raises(ValueError, match="run fingerprint does not match its configuration"):
        D.load(copy)


def test_a_manifest_that_is_not_json_is_refused_naming_its_path(copy):
    (copy / D.MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match=rf"{copy / D.MANIFEST} is not a valid ltc.distributed manifest"):
        D.load(copy)


def test_a_manifest_of_another_format_version_is_refused(copy):
    edit_manifest(copy, lambda m: m.update(format_version=1))
    with pytest.raises(ValueError, match="format version 1; this ltc .* reads version 2"):
        D.load(copy)


def test_a_shard_of_another_run_under_a_listed_name_is_refused(copy, tmp_path):
    other = tmp_path / "other"
    generate(other, seed=SEED + 1)
    shutil.copy(other / D.shard_name(2), copy / D.shard_name(2))
    with pytest.raises(ValueError, match=r"shard-000002.safetensors does not match its entry"):
        D.load(copy)


# -- resuming: the configuration includes the model's weights ----------------------------------------
def test_resuming_with_other_weights_under_the_same_name_is_refused_and_touches_nothing(copy):
    for j in range(3, SHARDS):
        (copy / D.shard_name(j)).unlink()
    (copy / D.MANIFEST).unlink()
    before = snapshot(copy)
    with pytest.raises(ValueError, match="different run .*model weights"):
        generate(copy, oracle(seed=2))                     # same name "oracle", other weights
    assert snapshot(copy) == before
    generate(copy)                                         # the same model completes it
    assert torch.equal(D.load(copy)["indices"], torch.arange(N))


def test_a_finished_directory_refuses_another_model_instead_of_returning_old_samples(copy):
    before = snapshot(copy)
    with pytest.raises(ValueError, match="different run"):
        generate(copy, oracle(seed=2))
    assert snapshot(copy) == before
    assert generate(copy) == json.loads((copy / D.MANIFEST).read_text())


class Scaled(torch.nn.Module):
    """An nn.Module model: the oracle's x0 times a learnable scale."""

    prediction = "x0"

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()), requires_grad=False)
        self.oracle = GaussianMixture.random(SCHEDULE, dim=8, seed=1)

    def forward(self, x, t):
        return self.oracle(x, t) * self.scale


def test_module_weights_changed_in_place_are_another_run(tmp_path):
    model = Scaled()
    generate(tmp_path, ltc.Model(model, "x0", "scaled"))
    with torch.no_grad():
        model.scale.mul_(1.01)
    with pytest.raises(ValueError, match="different run"):
        generate(tmp_path, ltc.Model(model, "x0", "scaled"))


def plain_x0(x, t):
    return 0.5 * x


def test_resuming_a_plain_function_without_a_tag_warns(tmp_path):
    model = ltc.Model(plain_x0, "x0", "plain")
    generate(tmp_path, model)
    with pytest.warns(UserWarning, match="no weights ltc can fingerprint.*pass tag="):
        generate(tmp_path, model)
    tagged = tmp_path / "tagged"
    generate(tagged, model, tag="v1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(tagged, model, tag="v1")
    with pytest.raises(ValueError, match="different run"):
        generate(tagged, model, tag="v2")


# -- one job at a time; temporary files belong to their writer ----------------------------------------
RUNNING = ".shard-000005.safetensors.tmp-0-0123456789abcdef-4242-aaaaaaaaaaaa"


def test_a_refused_start_deletes_nobody_s_temporary_files(copy):
    (copy / RUNNING).write_bytes(b"a running job's partial shard")
    before = snapshot(copy)
    with pytest.raises(ValueError, match="different run"):
        generate(copy, seed=SEED + 1)
    assert snapshot(copy) == before


def test_a_second_job_while_one_holds_the_directory_is_refused_and_touches_nothing(copy):
    import fcntl
    (copy / RUNNING).write_bytes(b"a running job's partial shard")
    (copy / D.shard_name(6)).unlink()
    before = snapshot(copy)
    fd = os.open(copy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # what a running job holds
        with pytest.raises(RuntimeError, match="another ltc.distributed.generate job is writing"):
            generate(copy)                                 # even the same configuration
        assert snapshot(copy) == before
    finally:
        os.close(fd)
    generate(copy)                                         # once it is gone, the job resumes
    assert torch.equal(D.load(copy)["indices"], torch.arange(N))
    assert (copy / RUNNING).exists()                       # another run's temporary file is left alone


class Blocking:
    """The oracle, pausing inside its ``pause_at``-th call until released."""

    prediction = "x0"

    def __init__(self, pause_at):
        self.oracle = GaussianMixture.random(SCHEDULE, dim=8, seed=1)
        self.pause_at, self.calls = pause_at, 0
        self.paused, self.release = threading.Event(), threading.Event()

    def __call__(self, x, t):
        self.calls += 1
        if self.calls == self.pause_at:
            self.paused.set()
            self.release.wait(60)
        return self.oracle(x, t)


def test_a_running_job_survives_a_second_start_into_its_directory(tmp_path, finished):
    first = Blocking(pause_at=2 * STEPS + 2)              # inside shard 2, after two shards were written
    errors = []

    def job():
        try:
            generate(tmp_path, ltc.Model(first, "x0", "oracle"))
        except Exception as err:  # reported below
            errors.append(err)

    thread = threading.Thread(target=job)
    thread.start()
    try:
        assert first.paused.wait(60)
        for model in (oracle(), oracle(seed=2)):
            with pytest.raises(RuntimeError, match="another ltc.distributed.generate job"):
                generate(tmp_path, model)
    finally:
        first.release.set()
        thread.join(60)
    assert not errors
    assert torch.equal(D.load(tmp_path)["samples"], D.load(finished)["samples"])


def test_stale_temporary_files_of_this_run_are_removed_on_resume(copy):
    run = json.loads((copy / D.MANIFEST).read_text())["run"]
    mine = copy / f".{D.shard_name(4)}.tmp-1-{run[:16]}-999-bbbbbbbbbbbb"
    mine.write_bytes(b"left by a killed process of this run")
    (copy / D.shard_name(4)).unlink()
    generate(copy)
    assert not mine.exists() and torch.equal(D.load(copy)["indices"], torch.arange(N))


def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        generate(tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert set(modes.values()) == {0o644} and len(modes) == SHARDS + 1


# -- the processes of one job must agree ---------------------------------------------------------------
DISAGREEING_JOB = '''
import os, sys
import torch
import ltc, ltc.distributed
from ltc.zoo.oracles import GaussianMixture

SCHEDULE = ltc.Schedule.vp("linear", spacing="trailing")
rank = int(os.environ["RANK"])
model = ltc.Model(GaussianMixture.random(SCHEDULE, dim=8, seed=1 + rank), "x0", "oracle")  # rank 1: other weights
ltc.distributed.generate(model, SCHEDULE, out_dir=sys.argv[1], num_samples=6, shape=(2, 4), shard_size=3, steps=3,
                         progress=False)
'''


def test_processes_with_different_model_weights_all_refuse_before_writing(tmp_path):
    import subprocess
    import sys
    script = tmp_path / "job.py"
    script.write_text(DISAGREEING_JOB)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode != 0
    assert "rank 1 differs from rank 0" in proc.stderr and "rank 0: another process differs" in proc.stderr
    assert not list(out.iterdir())
