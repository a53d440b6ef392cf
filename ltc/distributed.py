"""Generate many samples across processes (torch.distributed / torchrun): sharded, atomic, resumable.

    # gen.py -- run with: torchrun --nproc_per_node 8 gen.py   (or plain python for one process)
    import torch, ltc, ltc.zoo, ltc.distributed
    model = ltc.zoo.load("unet_large", device=ltc.distributed.local_device())
    ltc.distributed.generate(model, ltc.zoo.schedule("unet_large"), out_dir="samples", num_samples=50_000,
                             shape=(1, 16, 16), shard_size=500, seed=0, steps=20, guidance_scale=2.0,
                             conditioning={"y": torch.arange(50_000) % 10},
                             unconditional={"y": torch.tensor([ltc.zoo.NULL_CLASS])})
    samples = ltc.distributed.load("samples")["samples"]      # [50000, 1, 16, 16], index order

Determinism.  Sample k's initial noise is ``torch.randn(shape, generator=Generator().manual_seed(s_k))``
(float32, CPU, then cast to ``dtype`` and moved to the device) with the per-sample seed
``s_k = sample_seed(seed, k)`` (63 bits of sha256("ltc-sample:{seed}:{k}")), so it depends on
neither the rank, nor the number of processes, nor the shard size.  A stochastic sampler's per-step
noise comes from one generator per shard, seeded by ``shard_seed(seed, shard)`` (results then also
depend on ``shard_size``).  Shards are contiguous index ranges ``[j * shard_size, ...)``; every
run assigns the shards still missing to ranks round-robin, so the same directory always ends with
the same bytes as a single-process run (for a model whose rows do not depend on the batch).

Files in ``out_dir``:

* ``shard-{j:06d}.safetensors`` -- an :mod:`ltc.io` file of format ``ltc-generate-shard``: tensors
  ``samples [n, *shape]`` (``dtype``), ``indices [n]`` and ``seeds [n]`` (int64), and
  ``cond.<name> [n, ...]`` for each conditioning input; string metadata ``ltc_version``, ``run``
  (the run fingerprint), ``plan`` (the plan fingerprint), ``shard``, ``start``, ``stop``, and
  ``format``, ``format_version``, ``content_sha256`` (the digest of every tensor and every other
  metadata field).  Written atomically (:func:`ltc.io.write_atomic`: a temporary file
  ``.shard-....tmp-{rank}-{run}-{pid}-{random}`` that belongs to its writer, fsync-ed, then
  ``os.replace``-d): a shard file is complete or absent, never partial.
* ``manifest.json`` -- written (atomically) by rank 0 once every shard is verified: the run
  fingerprint and configuration and one entry per shard (file, start, stop, sha256 = the shard's
  ``content_sha256``).

The run fingerprint covers the configuration: schedule, sampler, policy, steps, seed, shape, dtype,
num_samples, shard size, conditioning, ``tag`` and, for each model, its name and the sha256 of its
weights (:func:`ltc.io.model_fingerprint`: the state of every ``torch.nn.Module`` and the tensors
the callable reads; None for a plain function, which only ``tag`` can identify).

One job at a time.  Rank 0 holds an exclusive ``flock`` on ``out_dir`` for the whole run; a job
started while another one holds it is refused before it reads or changes anything.  The processes
of a job must run the same configuration: rank 0's run fingerprint is broadcast, and a process with
another one (e.g. other model weights) makes every process raise.

Resuming.  Rank 0 checks every existing shard (a complete file of this format, its digest, run,
indices); missing, unreadable or corrupted shards are (re)generated, verified ones are kept, and
temporary files left by a killed process of *this* run are deleted.  A shard or manifest of a
*different* run (any part of the configuration above, including the model weights) is an error
before anything is written or deleted: use a new ``out_dir``.  Resuming with a plain function
as a model and no ``tag`` warns: nothing tells whether its code changed.

Reading (:func:`load`, ``python -m ltc.distributed DIR``): the manifest must be valid JSON of this
format whose run fingerprint matches its configuration; its entries must be exactly the shards the
configuration implies (count, names, ranges -- so no entry is missing, repeated or outside
``out_dir``), every ``shard-*.safetensors`` in ``out_dir`` must be one of them, and each shard is
verified whole against its entry (run, range, indices, seeds, digest).

Testing hook: with ``LTC_FAIL_AFTER_SHARDS=k`` (and ``LTC_FAIL_RANK=r``, default 0) rank r dies
abruptly (``os._exit``) after writing k shards, leaving a partial temporary file, as a killed
process would.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import warnings
from contextlib import contextmanager

from ._version import __version__
from .io import FileFormat, FormatError, model_fingerprint, read_checked, read_json, tensors_digest, write_atomic, \
    write_checked
from .api import sample, sampling_arguments
from .models import as_models
from .ops.contract import FLOAT_DTYPES
from .plan import compile_plan, fingerprint_of
from .policies import Policy
from .schedule import Schedule

SHARD_FORMAT = "ltc-generate-shard"
MANIFEST_FORMAT = "ltc-generate"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
TODO, DONE, FOREIGN = 0, 1, 2
READY, BUSY, OTHER_RUN = 0, 1, 2  # rank 0's verdict on the directory
SHARD_FILE = FileFormat(SHARD_FORMAT, FORMAT_VERSION, metadata=("ltc_version", "run", "plan", "shard", "start", "stop"),
                        regenerate="Rerun ltc.distributed.generate into a new out_dir.")
MANIFEST_KEYS = {"format", "format_version", "ltc_version", "run", "config", "seed_rule", "shards"}


def sample_seed(seed: int, index: int) -> int:
    """The 63-bit seed of sample ``index``'s initial noise."""
    digest = hashlib.sha256(f"ltc-sample:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def shard_seed(seed: int, shard: int) -> int:
    """The 63-bit seed of shard ``shard``'s per-step noise (stochastic samplers only)."""
    digest = hashlib.sha256(f"ltc-shard:{int(seed)}:{int(shard)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_noise(seed: int, indices, shape, dtype=torch.float32) -> torch.Tensor:
    """``[len(indices), *shape]`` initial noise: row r is sample ``indices[r]``'s (see the module docstring)."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(sample_seed(seed, int(k))))
            for k in indices]
    return torch.stack(rows).to(dtype)


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.safetensors"


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# -- arguments ---------------------------------------------------------------------------------
def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_conditioning(name: str, cond, rows: int, allow_one: bool = False) -> dict:
    """``{key: [rows, ...]}`` (a one-row tensor broadcast to ``rows`` when ``allow_one``)."""
    if cond is None:
        return {}
    if not isinstance(cond, dict):
        raise TypeError(f"{name} must be a dict of tensors (model keyword arguments), got {type(cond).__name__}")
    out = {}
    for key, value in cond.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"{name} keys must be keyword-argument names, got {key!r}")
        if not isinstance(value, torch.Tensor) or value.ndim < 1:
            raise TypeError(f"{name}[{key!r}] must be a tensor with a leading sample dimension")
        if allow_one and value.shape[0] == 1:
            value = value.expand(rows, *value.shape[1:])
        if value.shape[0] != rows:
            raise ValueError(f"{name}[{key!r}] has {value.shape[0]} rows, expected num_samples = {rows}"
                             + (" (or 1)" if allow_one else ""))
        out[key] = value
    return out


def _shards(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, num_samples)) for s in range(0, num_samples, shard_size)]


# -- the process group ---------------------------------------------------------------------------
def _process_group(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether we initialised the group): an existing group, torchrun's
    environment (gloo on CPU, NCCL on CUDA), or a single process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _broadcast_status(status: list[int], world: int, device: torch.device) -> list[int]:
    if world == 1:
        return status
    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(status, dtype=torch.int64, device=comm)
    dist.broadcast(t, src=0)
    return t.cpu().tolist()


# -- shard files ---------------------------------------------------------------------------------
def read_shard(path, *, verify: bool = True) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a shard file, verified whole (:func:`ltc.io.read_checked`;
    ``verify=False`` skips the digest)."""
    return read_checked(path, SHARD_FILE, verify=verify)


def _shard_ok(tensors: dict, meta: dict, run: str, shard: int, start: int, stop: int, seed) -> bool:
    """Whether a verified shard file holds shard ``shard`` (rows ``start..stop``) of ``run``."""
    idx, samples, seeds = tensors.get("indices"), tensors.get("samples"), tensors.get("seeds")
    return (meta["run"] == run and meta["shard"] == str(shard) and meta["start"] == str(start)
            and meta["stop"] == str(stop) and idx is not None and samples is not None and seeds is not None
            and torch.equal(idx, torch.arange(start, stop, dtype=torch.int64)) and samples.shape[0] == stop - start
            and (seed is None or seeds.tolist() == [sample_seed(seed, k) for k in range(start, stop)]))


def _shard_state(path: Path, run: str, shard: int, start: int, stop: int) -> tuple[int, str | None]:
    """(DONE, digest) for a verified shard of this run, (FOREIGN, None) for a complete file of
    another run or format version, (TODO, None) for a missing, unreadable or corrupted one."""
    if not path.is_file():
        return TODO, None
    try:
        tensors, meta = read_shard(path)
    except FormatError:
        return FOREIGN, None
    except ValueError:  # truncated, garbled or failing its digest: regenerate it
        return TODO, None
    if meta["run"] != run:
        return FOREIGN, None
    ok = _shard_ok(tensors, meta, run, shard, start, stop, None)
    return (DONE, meta["content_sha256"]) if ok else (TODO, None)


@contextmanager
def _directory_lock(out: Path, enabled: bool):
    """Hold an exclusive ``flock`` on the directory ``out`` (yields False if another job holds it)."""
    if not enabled:
        yield True
        return
    try:
        import fcntl
    except ImportError:  # no flock on this platform
        warnings.warn(f"cannot lock {out} on this platform: make sure no other job writes into it", stacklevel=3)
        yield True
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        held = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = False
        except OSError as err:  # a file system without flock
            warnings.warn(f"cannot lock {out} ({err}): make sure no other job writes into it", stacklevel=3)
        yield held
    finally:
        os.close(fd)  # releases the lock


def _temp_owner(rank: int, run: str) -> str:
    return f"{rank}-{run[:16]}"


def _other_run_reason(out: Path, run: str) -> str | None:
    """Why ``out`` holds another run's manifest (None if it holds none or this run's)."""
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = read_json(path, "ltc.distributed manifest")
    except ValueError as err:
        return f"{err}; delete it to regenerate this directory"
    if not isinstance(manifest, dict) or manifest.get("run") != run:
        return f"{path} belongs to a different run"
    return None


def _scan(out: Path, run: str, shards) -> tuple[int, list[int], dict, str]:
    """Rank 0: (verdict, shard states, verified digests, reason) for ``out``; reads only."""
    status, digests = [TODO] * len(shards), {}
    reason = _other_run_reason(out, run)
    if reason is not None:
        return OTHER_RUN, status, digests, reason
    for j, (a, b) in enumerate(shards):
        status[j], digests[j] = _shard_state(out / shard_name(j), run, j, a, b)
        if status[j] == FOREIGN:
            return OTHER_RUN, status, digests, f"{out / shard_name(j)} belongs to a different run"
    return READY, status, digests, ""


def _model_records(models) -> list[dict]:
    """Name and weights fingerprint (None for a plain function) of each model."""
    return [{"name": m.name, "weights_sha256": model_fingerprint(m.fn)} for m in models]


# -- generate ------------------------------------------------------------------------------------
def generate(model_fns, schedule: Schedule, policy: Policy | None = None, *, out_dir, num_samples: int, shape,
             shard_size: int, seed: int = 0, conditioning: dict | None = None, unconditional: dict | None = None,
             sampler="dpmpp_2m", steps: int | None = None, guidance_scale: float | None = None,
             prediction: str | None = None, dtype: torch.dtype = torch.float32, device=None,
             backend: str | None = None, tag: str = "", progress: bool = True) -> dict:
    """Generate samples ``0 .. num_samples - 1`` into ``out_dir`` (see the module docstring).

    Run it in every process of a torchrun job (or in one plain process); each process passes its
    own ``model_fns`` (on its device).  Returns the manifest (also in ``out_dir/manifest.json``).

    Args:
        model_fns, schedule, policy, sampler, steps, guidance_scale, prediction, backend: as in
            :func:`ltc.sample`.
        shape: the shape ``S`` of one sample; noise is ``[n, *S]``.
        shard_size: samples per shard file (and per ``ltc.sample`` batch).
        seed: the run's seed (per-sample seeds derive from it).
        conditioning: model keyword arguments per sample, ``{name: [num_samples, ...]}`` (class
            labels, prompt embeddings); each shard passes its rows.
        unconditional: with ``guidance_scale``, the unconditional values of the conditioning
            keys, ``{name: [num_samples | 1, ...]}``; the model gets ``cat([uncond, cond])`` rows.
        device: default :func:`local_device`.
        tag: extra fingerprint text -- what identifies a model whose weights ltc cannot see (a plain
            function, a remote service); module weights are fingerprinted anyway.
        progress: a tqdm bar on rank 0 (shards present in ``out_dir`` / total).
    """
    models = as_models(model_fns, prediction)
    policy, solver, guidance_scale = sampling_arguments(schedule, policy, sampler, guidance_scale)
    num_samples = _positive_int("num_samples", num_samples)
    shard_size = _positive_int("shard_size", shard_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not (isinstance(shape, (tuple, list, torch.Size)) and len(shape) >= 1
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ValueError(f"shape must be a tuple of positive ints (one sample's shape S), got {shape!r}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
    if not isinstance(tag, str):
        raise TypeError(f"tag must be a string, got {type(tag).__name__}")
    cond = _check_conditioning("conditioning", conditioning, num_samples)
    uncond = _check_conditioning("unconditional", unconditional, num_samples, allow_one=True)
    if guidance_scale is not None and set(uncond) != set(cond):
        raise ValueError(f"with guidance_scale, unconditional must give the unconditional value of every "
                         f"conditioning key {sorted(cond)}, got {sorted(uncond)}")
    if guidance_scale is None and uncond:
        raise ValueError("unconditional is only used with guidance_scale")
    out = Path(out_dir)
    device = torch.device(device) if device is not None else local_device()

    grid = solver.grid(schedule, steps)
    plan = compile_plan(grid, solver, policy, [m.prediction for m in models], guidance_scale)
    shards = _shards(num_samples, shard_size)
    cond_digest = tensors_digest({f"c.{k}": v for k, v in cond.items()} | {f"u.{k}": v for k, v in uncond.items()})
    config = {"plan": plan.fingerprint, "schedule": schedule.config(), "sampler": solver.config(),
              "policy": policy.config(), "steps": grid.steps, "guidance_scale": guidance_scale,
              "models": _model_records(models), "num_samples": num_samples, "shard_size": shard_size,
              "shape": list(shape), "dtype": str(dtype), "seed": seed, "conditioning": cond_digest,
              "conditioning_keys": sorted(cond), "tag": tag}
    run = fingerprint_of(MANIFEST_FORMAT, FORMAT_VERSION, config)

    rank, world, own_group = _process_group(device)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with _directory_lock(out, rank == 0) as locked:
            verdict, status, digests, reason = READY, [TODO] * len(shards), {}, ""
            if rank == 0:
                if not locked:
                    verdict, reason = BUSY, f"another ltc.distributed.generate job is writing into {out}"
                else:
                    verdict, status, digests, reason = _scan(out, run, shards)
            verdict, status = _agree(run, verdict, status, rank, world, device)
            if not reason:  # ranks other than 0 learn the verdict only
                reason = (f"another ltc.distributed.generate job is writing into {out}" if verdict == BUSY
                          else f"{out} holds files of a different run")
            if verdict == BUSY:
                raise RuntimeError(f"{reason}: wait for it to finish or use another out_dir (nothing was changed)")
            if verdict == OTHER_RUN:
                raise ValueError(f"{reason} (another schedule, sampler, policy, seed, shape, conditioning, model "
                                 "weights or tag); use a new out_dir (nothing was changed)")
            if rank == 0:
                _remove_own_temp_files(out, run)
                if DONE in status:
                    _warn_unidentified(models, tag, out)
            return _generate_missing(out, run, config, shards, status, digests, models, schedule, policy, solver,
                                     grid.steps, guidance_scale, backend, seed, shape, dtype, device, cond, uncond,
                                     plan, rank, world, progress)
    finally:
        if own_group:
            dist.destroy_process_group()


def _agree(run: str, verdict: int, status: list[int], rank: int, world: int, device) -> tuple[int, list[int]]:
    """Broadcast rank 0's verdict, shard states and run fingerprint; every process raises if any
    process runs another configuration."""
    if world == 1:
        return verdict, status
    mine = list(bytes.fromhex(run))
    shared = _broadcast_status([verdict, *mine, *status], world, device)
    differs = shared[1:1 + len(mine)] != mine
    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([int(differs)], dtype=torch.int64, device=comm)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if int(flag.item()):
        who = f"rank {rank} differs from rank 0" if differs else f"rank {rank}: another process differs from rank 0"
        raise ValueError(f"the processes of this job run different configurations ({who}): every process must pass "
                         "the same models (same weights), schedule, policy and arguments; nothing was written")
    return shared[0], shared[1 + len(mine):]


def _remove_own_temp_files(out: Path, run: str) -> None:
    """Temporary files of this run left by a killed process (no other job can be running: rank 0
    holds the directory lock)."""
    for stale in out.glob(f".shard-*.tmp-*-{run[:16]}-*"):
        stale.unlink(missing_ok=True)


def _warn_unidentified(models, tag: str, out: Path) -> None:
    if tag:
        return
    plain = [m.name for m in models if model_fingerprint(m.fn) is None]
    if plain:
        warnings.warn(f"resuming {out} with model(s) {plain} that read no weights ltc can fingerprint: if their code "
                      "changed since the kept shards were written, the rows mix two models; pass tag= (e.g. a "
                      "version) to have it checked", stacklevel=3)


def _generate_missing(out, run, config, shards, status, digests, models, schedule, policy, solver, steps,
                      guidance_scale, backend, seed, shape, dtype, device, cond, uncond, plan, rank, world,
                      progress) -> dict:
    todo = [j for j, s in enumerate(status) if s != DONE]
    mine = todo[rank::world]
    bar = _progress_bar(progress and rank == 0, len(shards), len(shards) - len(todo))
    fail_after = int(os.environ.get("LTC_FAIL_AFTER_SHARDS", "-1"))
    fail_rank = int(os.environ.get("LTC_FAIL_RANK", "0"))
    for written, j in enumerate(mine):
        a, b = shards[j]
        tensors = _generate_shard(models, schedule, policy, solver, steps, guidance_scale, backend,
                                  seed, j, a, b, shape, dtype, device, cond, uncond)
        meta = {"ltc_version": __version__, "run": run, "plan": plan.fingerprint, "shard": str(j), "start": str(a),
                "stop": str(b)}
        hook = _die_mid_write if rank == fail_rank and written == fail_after else None
        write_checked(out / shard_name(j), tensors, meta, SHARD_FILE, owner=_temp_owner(rank, run),
                      before_replace=hook)
        if bar is not None:
            bar.n = sum(1 for _ in out.glob("shard-*.safetensors"))
            bar.refresh()
    if bar is not None:
        bar.close()
    _barrier(world)
    manifest = None
    if rank == 0:
        manifest = _finish(out, run, config, shards, digests)
    _barrier(world)
    if manifest is None:
        manifest = load_manifest(out)
    return manifest


def _die_mid_write(tmp: Path) -> None:
    """Testing hook: die like a killed process, mid-write (a partial temporary file stays)."""
    with open(tmp, "r+b") as f:
        f.truncate(max(1, os.path.getsize(tmp) // 2))
    os._exit(17)


def _progress_bar(enabled: bool, total: int, done: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=done, desc="ltc.generate shards", unit="shard")


def _generate_shard(models, schedule, policy, solver, steps, guidance_scale, backend, seed, j, a, b, shape, dtype,
                    device, cond, uncond) -> dict:
    indices = torch.arange(a, b, dtype=torch.int64)
    noise = sample_noise(seed, indices.tolist(), shape, dtype).to(device)
    kwargs = {}
    for key, value in cond.items():
        rows = value[a:b].to(device)
        kwargs[key] = torch.cat([uncond[key][a:b].to(device), rows]) if guidance_scale is not None else rows
    generator = torch.Generator(device).manual_seed(shard_seed(seed, j)) if solver.stochastic else None
    x = sample(models, schedule, policy, sampler=solver, steps=steps, noise=noise, model_kwargs=kwargs or None,
               guidance_scale=guidance_scale, generator=generator, backend=backend, progress=False)
    tensors = {"samples": x.detach().cpu().contiguous(), "indices": indices,
               "seeds": torch.tensor([sample_seed(seed, k) for k in range(a, b)], dtype=torch.int64)}
    tensors.update({f"cond.{k}": v[a:b].detach().cpu().contiguous() for k, v in cond.items()})
    return tensors


def _finish(out: Path, run: str, config: dict, shards, digests: dict) -> dict:
    """Verify every shard (those not verified before this run's generation) and write the manifest."""
    entries = []
    for j, (a, b) in enumerate(shards):
        digest = digests.get(j)
        if digest is None:
            state, digest = _shard_state(out / shard_name(j), run, j, a, b)
            if state != DONE:
                raise RuntimeError(f"shard {j} ({out / shard_name(j)}) is missing or corrupted after generation")
        entries.append({"file": shard_name(j), "start": a, "stop": b, "sha256": digest})
    manifest = {"format": MANIFEST_FORMAT, "format_version": FORMAT_VERSION, "ltc_version": __version__,
                "run": run, "config": config, "seed_rule": "sample_seed(seed, k) = sha256('ltc-sample:{seed}:{k}')"
                "[:8] little-endian >> 1", "shards": entries}
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode(),
                 owner=_temp_owner(0, run))
    return manifest


# -- reading a finished directory ------------------------------------------------------------------
def load_manifest(out_dir) -> dict:
    """The manifest of a finished ``out_dir``, checked against its configuration and the files on
    disk (see the module docstring; the shards themselves are checked by :func:`load`)."""
    out = Path(out_dir)
    path = out / MANIFEST
    if not path.is_file():
        raise ValueError(f"{out} has no {MANIFEST}: the run is not finished (rerun generate to complete it)")
    manifest = read_json(path, "ltc.distributed manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not an ltc.distributed manifest (format {MANIFEST_FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is an ltc.distributed manifest of format version {manifest.get('format_version')}; "
                         f"this ltc ({__version__}) reads version {FORMAT_VERSION} only. Rerun "
                         "ltc.distributed.generate into a new out_dir.")
    if set(manifest) != MANIFEST_KEYS:
        raise ValueError(f"{path} must have the keys {sorted(MANIFEST_KEYS)}, got {sorted(manifest)}")
    config = manifest["config"]
    if not isinstance(config, dict) or fingerprint_of(MANIFEST_FORMAT, FORMAT_VERSION, config) != manifest["run"]:
        raise ValueError(f"{path}: its run fingerprint does not match its configuration (edited or corrupted)")
    try:
        expected = _shards(_positive_int("num_samples", config.get("num_samples")),
                           _positive_int("shard_size", config.get("shard_size")))
    except ValueError as err:
        raise ValueError(f"{path}: its configuration is invalid: {err}") from None
    entries = manifest["shards"]
    if not isinstance(entries, list) or len(entries) != len(expected):
        count = len(entries) if isinstance(entries, list) else entries
        raise ValueError(f"{path} lists {count} shards; its configuration ({config['num_samples']} samples, "
                         f"{config['shard_size']} per shard) has {len(expected)}")
    for j, ((a, b), entry) in enumerate(zip(expected, entries)):
        want = {"file": shard_name(j), "start": a, "stop": b}
        if not (isinstance(entry, dict) and set(entry) == {*want, "sha256"} and isinstance(entry["sha256"], str)
                and {k: entry[k] for k in want} == want):
            raise ValueError(f"{path}: shard entry {j} must be {want} with its sha256, got {entry!r} (entries must "
                             "be the configuration's shards, once each, in order, inside the directory)")
    on_disk = sorted(p.name for p in out.glob("shard-*.safetensors"))
    listed = [shard_name(j) for j in range(len(expected))]
    if on_disk != listed:
        raise ValueError(f"{out}: the shard files on disk do not match the manifest: missing "
                         f"{sorted(set(listed) - set(on_disk))}, not listed {sorted(set(on_disk) - set(listed))}")
    return manifest


def load(out_dir, *, verify: bool = True) -> dict:
    """All samples of a finished ``out_dir`` in index order: ``{"samples", "indices", "seeds",
    "cond.<name>"...}``, after checking the manifest (:func:`load_manifest`) and every shard against
    it.  ``verify=False`` skips only the digests (the content hashing)."""
    out = Path(out_dir)
    manifest = load_manifest(out)
    config, root = manifest["config"], out.resolve()
    names = {"samples", "indices", "seeds", *(f"cond.{k}" for k in config.get("conditioning_keys", []))}
    parts: dict[str, list] = {}
    for j, entry in enumerate(manifest["shards"]):
        path = out / entry["file"]
        if path.resolve().parent != root:
            raise ValueError(f"{path} resolves to {path.resolve()}, outside {root}")
        tensors, meta = read_shard(path, verify=verify)
        if (set(tensors) != names or meta["content_sha256"] != entry["sha256"]
                or not _shard_ok(tensors, meta, manifest["run"], j, entry["start"], entry["stop"], config["seed"])):
            raise ValueError(f"{path} does not match its entry in the manifest (run, range, indices, seeds, tensors "
                             "or checksum): rerun generate")
        for k, v in tensors.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def _main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m ltc.distributed",
                                     description="verify an ltc.distributed.generate output directory")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    try:
        data = load(args.out_dir)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"{args.out_dir}: NOT verified: {err}") from None
    idx = data["indices"]
    print(f"{args.out_dir}: {len(idx)} samples (indices 0..{len(idx) - 1}, each once) of shape "
          f"{tuple(data['samples'].shape[1:])}, as its configuration says; every shard verified")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
