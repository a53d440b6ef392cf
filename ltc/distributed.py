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

* ``shard-{j:06d}.safetensors`` -- tensors ``samples [n, *shape]`` (``dtype``), ``indices [n]``
  and ``seeds [n]`` (int64), and ``cond.<name> [n, ...]`` for each conditioning input; string
  metadata ``format`` (``"ltc-generate-shard"``), ``format_version``, ``run`` (the run fingerprint),
  ``plan`` (the plan fingerprint), ``shard``, ``start``, ``stop``, ``sha256`` (over every tensor's
  name, dtype, shape and bytes).  Written to a temporary file, flushed, then ``os.replace``-d: a
  shard file is complete or absent, never partial.
* ``manifest.json`` -- written by rank 0 once every shard is verified: the run fingerprint and
  configuration and one entry per shard (file, start, stop, sha256).

Resuming.  Rank 0 checks every existing shard (readable, its metadata, indices and checksum);
missing, unreadable or corrupted shards are (re)generated, verified ones are kept, leftover
temporary files of a killed run are deleted.  A shard of a *different* run (another fingerprint:
schedule, sampler, policy, steps, seed, shape, dtype, shard size, conditioning, model names or
``tag``) is an error: use a new ``out_dir``.  Model weights are not fingerprinted -- change ``tag``
when they change.

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
from safetensors import safe_open
from safetensors.torch import save_file

from ._version import __version__
from .io import tensors_digest
from .api import sample, sampling_arguments
from .models import as_models
from .ops.contract import FLOAT_DTYPES
from .plan import compile_plan, fingerprint_of
from .policies import Policy
from .schedule import Schedule

SHARD_FORMAT = "ltc-generate-shard"
MANIFEST_FORMAT = "ltc-generate"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TODO, DONE, FOREIGN = 0, 1, 2


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


def content_sha256(tensors: dict) -> str:
    """sha256 over the tensors sorted by name: name, dtype, shape and raw bytes of each."""
    return tensors_digest(tensors, "|")


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
def _write_atomic(path: Path, tensors: dict, metadata: dict, rank: int, fail_now: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{rank}-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    if fail_now:  # testing hook: die like a killed process, mid-write
        with open(tmp, "r+b") as f:
            f.truncate(max(1, os.path.getsize(tmp) // 2))
        os._exit(17)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_shard(path) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a shard file (no checks)."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _shard_state(path: Path, run: str, shard: int, start: int, stop: int) -> tuple[int, str | None]:
    """(DONE, sha256) for a verified shard of this run, (FOREIGN, None) for one of another run,
    (TODO, None) for a missing, unreadable or corrupted one."""
    if not path.is_file():
        return TODO, None
    try:
        tensors, meta = read_shard(path)
    except Exception:  # truncated or garbled: regenerate it
        return TODO, None
    if meta.get("format") != SHARD_FORMAT:
        return TODO, None
    if meta.get("run") != run:
        return FOREIGN, None
    idx = tensors.get("indices")
    ok = (meta.get("shard") == str(shard) and meta.get("start") == str(start) and meta.get("stop") == str(stop)
          and idx is not None and torch.equal(idx, torch.arange(start, stop, dtype=torch.int64))
          and "samples" in tensors and tensors["samples"].shape[0] == stop - start
          and content_sha256(tensors) == meta.get("sha256"))
    return (DONE, meta["sha256"]) if ok else (TODO, None)


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
        device: default :func:`local_device`.  ``tag``: extra fingerprint text (e.g. the weights' name).
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

    grid = schedule.discretize(steps)
    plan = compile_plan(grid, solver, policy, [m.prediction for m in models], guidance_scale)
    shards = _shards(num_samples, shard_size)
    cond_digest = content_sha256({f"c.{k}": v for k, v in cond.items()} | {f"u.{k}": v for k, v in uncond.items()})
    config = {"plan": plan.fingerprint, "schedule": schedule.config(), "sampler": solver.config(),
              "policy": policy.config(), "steps": grid.steps, "guidance_scale": guidance_scale,
              "models": [m.name for m in models], "num_samples": num_samples, "shard_size": shard_size,
              "shape": list(shape), "dtype": str(dtype), "seed": seed, "conditioning": cond_digest, "tag": tag}
    run = fingerprint_of(MANIFEST_FORMAT, FORMAT_VERSION, config)

    rank, world, own_group = _process_group(device)
    try:
        out.mkdir(parents=True, exist_ok=True)
        status, digests = [TODO] * len(shards), {}
        if rank == 0:
            for stale in out.glob(".shard-*.tmp-*"):
                stale.unlink(missing_ok=True)
            for j, (a, b) in enumerate(shards):
                status[j], digests[j] = _shard_state(out / shard_name(j), run, j, a, b)
        status = _broadcast_status(status, world, device)
        if FOREIGN in status:
            j = status.index(FOREIGN)
            raise ValueError(f"{out / shard_name(j)} belongs to a different run (another schedule, sampler, "
                             "policy, seed, shape, conditioning, models or tag); use a new out_dir")
        todo = [j for j, s in enumerate(status) if s != DONE]
        mine = todo[rank::world]
        bar = _progress_bar(progress and rank == 0, len(shards), len(shards) - len(todo))
        fail_after = int(os.environ.get("LTC_FAIL_AFTER_SHARDS", "-1"))
        fail_rank = int(os.environ.get("LTC_FAIL_RANK", "0"))
        for written, j in enumerate(mine):
            a, b = shards[j]
            tensors = _generate_shard(models, schedule, policy, solver, grid.steps, guidance_scale, backend,
                                      seed, j, a, b, shape, dtype, device, cond, uncond)
            meta = {"format": SHARD_FORMAT, "format_version": str(FORMAT_VERSION), "ltc_version": __version__,
                    "run": run, "plan": plan.fingerprint, "shard": str(j), "start": str(a), "stop": str(b),
                    "sha256": content_sha256(tensors)}
            fail = rank == fail_rank and written == fail_after
            _write_atomic(out / shard_name(j), tensors, meta, rank, fail_now=fail)
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
            manifest = json.loads((out / MANIFEST).read_text())
        return manifest
    finally:
        if own_group:
            dist.destroy_process_group()


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
    tmp = out / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, out / MANIFEST)
    return manifest


# -- reading a finished directory ------------------------------------------------------------------
def load(out_dir, *, verify: bool = True) -> dict:
    """All samples of a finished ``out_dir`` in index order: ``{"samples", "indices", "seeds",
    "cond.<name>"...}``.  With ``verify`` every shard's checksum is checked against the manifest."""
    out = Path(out_dir)
    path = out / MANIFEST
    if not path.is_file():
        raise ValueError(f"{out} has no {MANIFEST}: the run is not finished (rerun generate to complete it)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not an ltc.generate manifest")
    parts: dict[str, list] = {}
    for entry in manifest["shards"]:
        tensors, meta = read_shard(out / entry["file"])
        if verify and (meta.get("sha256") != entry["sha256"] or content_sha256(tensors) != entry["sha256"]):
            raise ValueError(f"{out / entry['file']} does not match its checksum in the manifest: rerun generate")
        for k, v in tensors.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def _main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m ltc.distributed",
                                     description="verify an ltc.distributed.generate output directory")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    data = load(args.out_dir)
    idx = data["indices"]
    if not torch.equal(idx, torch.arange(len(idx))):
        raise SystemExit(f"{args.out_dir}: indices are not 0..{len(idx) - 1} exactly once")
    print(f"{args.out_dir}: {len(idx)} samples of shape {tuple(data['samples'].shape[1:])}, all checksums match")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
