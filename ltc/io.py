"""Checked files: every ltc file is verified whole when read and written atomically (no pickle anywhere).

The library's files -- zoo weights and data, calibrations, the shards of
:func:`ltc.distributed.generate` -- are safetensors files described by a :class:`FileFormat`.  Their
string metadata holds ``format`` (the format's name), ``format_version`` and ``content_sha256``,
the digest of everything else in the file (:func:`content_digest`)::

    sha256( F("ltc-content") F(#metadata) [F(key) F(value)  for each metadata key but the digest, sorted]
            F(#tensors) [F(name) F(dtype) F(shape) F(bytes)  for each tensor, sorted by name] )

where ``F(b)`` is the 8-byte little-endian length of ``b`` followed by ``b`` (so no two contents
share a byte stream).  The format name and version are metadata, so they are inside the digest:
changing one metadata byte, one tensor byte, adding or removing either is a digest mismatch.

:func:`read_checked` reads the file's bytes once and refuses, naming the path: a missing file; a
shipped file whose whole-file sha256 differs from the one pinned in ``ltc/zoo/pinned.json``
(every ``*.safetensors`` under ``ltc/zoo`` must be pinned); bytes that are not one complete
safetensors file (truncated, trailing bytes, duplicate header keys); another format; another
format version (the message names both versions and how to regenerate the file); missing or
extra tensors or metadata; a digest mismatch.  User files elsewhere are checked by their embedded
digest only -- which proves the file is intact, not who wrote it.

:func:`write_checked` adds format, version and digest and :func:`write_atomic` writes: a temporary
file in the destination's directory, named ``.{name}.tmp-{owner}-{pid}-{random}`` so that it
belongs to the one writer that made it, flushed and fsync-ed, then ``os.replace``-d over the
destination (a file is complete or absent, never partial).  Files are created with mode
``0o666`` filtered by the process umask, like any file ``open()`` creates.

:func:`model_fingerprint` is the digest of a model's weights (calibrations and distributed runs
record it, and refuse another model).
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from ._version import __version__

FORMAT_KEY, VERSION_KEY, DIGEST_KEY = "format", "format_version", "content_sha256"
RESERVED = (FORMAT_KEY, VERSION_KEY, DIGEST_KEY)
SHIPPED_DIR = Path(__file__).resolve().parent / "zoo"  # the package's shipped files, pinned below
PINS_FILE = SHIPPED_DIR / "pinned.json"
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own bound on the JSON header


@dataclass(frozen=True)
class FileFormat:
    """What a file of one format holds.

    ``tensors``: the exact tensor names (None: the reader checks them).  ``metadata``: the
    metadata keys every file has, besides ``format``, ``format_version`` and ``content_sha256``;
    ``extra_metadata``: whether other keys may follow (they are covered by the digest as well).
    ``regenerate``: how to remake a file of another version (put into that error).
    ``legacy_version_key``: the metadata key that files written before ``format`` existed kept
    their version in (for the message), if any."""

    name: str
    version: int
    tensors: tuple | None = None
    metadata: tuple = ()
    extra_metadata: bool = False
    regenerate: str = ""
    legacy_version_key: str | None = None


class FormatError(ValueError):
    """A readable file of another format or format version than the reader's."""


# -- digests -------------------------------------------------------------------------------------
def _field(h, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _update_tensor(h, t: torch.Tensor) -> None:
    """Feed dtype, shape and raw bytes of ``t`` (a contiguous CPU copy when needed) into ``h``."""
    t = t.detach().cpu().contiguous()
    _field(h, str(t.dtype).encode())
    _field(h, json.dumps(list(t.shape)).encode())
    nbytes = t.numel() * t.element_size()
    h.update(nbytes.to_bytes(8, "little"))
    if nbytes:
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def content_digest(tensors: dict, metadata: dict) -> str:
    """sha256 over every metadata entry but ``content_sha256`` and every tensor's name, dtype,
    shape and bytes (see the module docstring)."""
    h = hashlib.sha256()
    _field(h, b"ltc-content")
    meta = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    _field(h, str(len(meta)).encode())
    for key in sorted(meta):
        _field(h, key.encode())
        _field(h, meta[key].encode())
    _field(h, str(len(tensors)).encode())
    for name in sorted(tensors):
        _field(h, name.encode())
        _update_tensor(h, tensors[name])
    return h.hexdigest()


def tensors_digest(tensors: dict) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes (sorted by name), length-prefixed
    like :func:`content_digest` (for tensors that are not in a file, e.g. conditioning inputs)."""
    return content_digest(tensors, {})


def file_sha256(data: bytes) -> str:
    """sha256 of a whole file's bytes (what ``sha256sum`` prints)."""
    return hashlib.sha256(data).hexdigest()


# -- pins of the shipped files ---------------------------------------------------------------------
def _pins() -> dict:
    try:
        pins = json.loads(PINS_FILE.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"the pin file of the shipped files {PINS_FILE} is unreadable ({err}); "
                         "reinstall ltc") from None
    if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
        raise ValueError(f"{PINS_FILE} must map file names (relative to {SHIPPED_DIR}) to sha256 hex digests")
    return pins


def shipped_name(path) -> str | None:
    """The name of ``path`` relative to the package's shipped files (``ltc/zoo``), or None."""
    try:
        return Path(path).resolve().relative_to(SHIPPED_DIR).as_posix()
    except ValueError:
        return None


def pinned_sha256(path) -> str | None:
    """The whole-file sha256 pinned for a shipped file (a ``*.safetensors`` under ``ltc/zoo``);
    None for any other file.  A shipped file without a pin is an error."""
    name = shipped_name(path)
    if name is None or not name.endswith(".safetensors"):
        return None
    pins = _pins()
    if name not in pins:
        raise ValueError(f"{path} lies in the package's shipped files ({SHIPPED_DIR}) but has no sha256 pinned in "
                         f"{PINS_FILE.name}: it did not ship with ltc {__version__}. Keep files of your own in "
                         "another folder, or (developers) pin it: python -m ltc.zoo.train pin")
    return pins[name]


def pin_shipped_files() -> dict:
    """Developers: verify every shipped ``*.safetensors`` by its embedded digest and (re)write
    ``pinned.json`` with their whole-file sha256s.  Returns the pins."""
    pins = {}
    for path in sorted(SHIPPED_DIR.rglob("*.safetensors")):
        data = path.read_bytes()
        tensors, meta = _parse(path, data)
        if meta.get(DIGEST_KEY) != content_digest(tensors, meta):
            raise ValueError(f"{path} fails its own content_sha256; not pinning it")
        pins[path.relative_to(SHIPPED_DIR).as_posix()] = file_sha256(data)
    write_atomic(PINS_FILE, (json.dumps(pins, indent=1, sort_keys=True) + "\n").encode())
    return pins


# -- reading -------------------------------------------------------------------------------------
def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})} in the header")
    return dict(pairs)


def _parse(path, data: bytes) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of safetensors bytes; ValueError naming ``path`` otherwise."""
    from safetensors.torch import load

    try:
        if len(data) < 8:
            raise ValueError(f"{len(data)} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(data[:8], "little")
        if n > min(len(data) - 8, _HEADER_LIMIT):
            raise ValueError(f"the header claims {n} bytes, the file has {len(data) - 8} after the length")
        header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError("__metadata__ is not a map of strings")
        tensors = load(data)  # validates offsets, dtypes and that the data is covered exactly
    except Exception as err:  # the safetensors parser's own errors, JSON and UTF-8 errors, ours
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupted?): {err}") from None
    return tensors, dict(metadata)


def _check_format(path, meta: dict, fmt: FileFormat) -> None:
    legacy = meta.get(fmt.legacy_version_key) if fmt.legacy_version_key else None
    found = meta.get(FORMAT_KEY)
    how = f" {fmt.regenerate}" if fmt.regenerate else ""
    if found is None and legacy is not None:
        raise FormatError(f"{path} is an {fmt.name} file of format version {legacy}; this ltc ({__version__}) reads "
                         f"version {fmt.version} only (the digest now covers the metadata too).{how}")
    if found is None:
        raise FormatError(f"{path} has no 'format' in its metadata: it is not an {fmt.name} file, or one written "
                          f"before ltc files named their format (version 1); this ltc ({__version__}) reads version "
                          f"{fmt.version} only.{how}")
    if found != fmt.name:
        raise FormatError(f"{path} is not an {fmt.name} file (its metadata format is {found!r})")
    version = meta.get(VERSION_KEY)
    if version != str(fmt.version):
        raise FormatError(f"{path} is an {fmt.name} file of format version {version}; this ltc ({__version__}) reads "
                         f"version {fmt.version} only.{how}")


def _check_contents(path, tensors: dict, meta: dict, fmt: FileFormat) -> None:
    if fmt.tensors is not None:
        missing, extra = sorted(set(fmt.tensors) - set(tensors)), sorted(set(tensors) - set(fmt.tensors))
        if missing or extra:
            raise ValueError(f"{path}: the tensors do not match the {fmt.name} format: missing {missing}, "
                             f"extra {extra}")
    wanted = set(fmt.metadata) | set(RESERVED)
    missing = sorted(wanted - set(meta))
    extra = [] if fmt.extra_metadata else sorted(set(meta) - wanted)
    if missing or extra:
        raise ValueError(f"{path}: the metadata does not match the {fmt.name} format: missing {missing}, "
                         f"extra {extra}")


def read_checked(path, fmt: FileFormat, *, verify: bool = True) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a file of format ``fmt``, verified whole (see the module
    docstring).  FileNotFoundError for a missing file, ValueError naming the path for anything
    else.  ``verify=False`` skips only the content digest (never the pin of a shipped file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{fmt.name} file not found: {path}")
    pin = pinned_sha256(path)
    data = path.read_bytes()
    if pin is not None and file_sha256(data) != pin:
        raise ValueError(f"{path} does not match the sha256 pinned for it in {PINS_FILE} (expected {pin}, got "
                         f"{file_sha256(data)}): it was modified after installation. Reinstall ltc (or, developers "
                         "who regenerated it on purpose: python -m ltc.zoo.train pin)")
    tensors, meta = _parse(path, data)
    _check_format(path, meta, fmt)
    _check_contents(path, tensors, meta, fmt)
    if verify and content_digest(tensors, meta) != meta[DIGEST_KEY]:
        raise ValueError(f"{path} is corrupted or was modified: its content does not match its {DIGEST_KEY}")
    return tensors, meta


def read_json(path, what: str):
    """The JSON document at ``path``; FileNotFoundError / ValueError naming the path and ``what`` it is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path} is not a valid {what} (not JSON: {err})") from None


# -- writing -------------------------------------------------------------------------------------
def temp_path(path, owner: str = "") -> Path:
    """A temporary name next to ``path`` that belongs to this writer: ``owner``, the process id and
    a random part (two writers never share one)."""
    path = Path(path)
    tag = f"{owner}-" if owner else ""
    return path.with_name(f".{path.name}.tmp-{tag}{os.getpid()}-{uuid.uuid4().hex[:12]}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, data: bytes, *, owner: str = "", before_replace=None) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); ``before_replace(tmp)``
    is a testing hook called after the temporary file is synced, before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, owner)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_checked(path, tensors: dict, metadata: dict, fmt: FileFormat, *, owner: str = "",
                  before_replace=None) -> str:
    """Write ``tensors`` (CPU copies) and ``metadata`` (strings) as a file of format ``fmt`` with
    its digest, atomically (:func:`write_atomic`).  Returns the digest."""
    from safetensors.torch import save

    bad = [k for k in metadata if k in RESERVED]
    if bad:
        raise ValueError(f"metadata keys {bad} are written by ltc.io itself")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("metadata must map strings to strings")
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    meta = {**metadata, FORMAT_KEY: fmt.name, VERSION_KEY: str(fmt.version)}
    meta[DIGEST_KEY] = content_digest(tensors, meta)
    _check_contents(path, tensors, meta, fmt)
    write_atomic(path, save(tensors, metadata=meta), owner=owner, before_replace=before_replace)
    return meta[DIGEST_KEY]


# -- model fingerprints ----------------------------------------------------------------------------
SEARCH_DEPTH = 4  # object links followed from a callable to the modules and tensors it reads
_ATOMS = (str, bytes, int, float, complex, bool, type(None), type)


def _children(obj) -> list:
    if isinstance(obj, functools.partial):
        return [obj.func, *obj.args, *obj.keywords.values()]
    if inspect.ismethod(obj):
        return [obj.__self__, obj.__func__]
    if inspect.isfunction(obj):
        cells = []
        for cell in obj.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # an empty cell
                pass
        names = [obj.__globals__[n] for n in obj.__code__.co_names if n in obj.__globals__]
        return cells + names + [getattr(obj, "__wrapped__", None)]
    if isinstance(obj, (list, tuple)):
        return list(obj)
    if isinstance(obj, dict):
        return list(obj.values())
    if inspect.isroutine(obj) or not hasattr(obj, "__dict__"):
        return []
    return list(vars(obj).values())


def weight_holders(fn) -> list:
    """The ``torch.nn.Module`` objects and loose tensors that ``fn`` reads, in a canonical order:
    ``fn`` itself, the instance of a bound method, an :class:`ltc.Model`'s function, the function,
    arguments and keywords of a ``functools.partial``, closure cells, ``__wrapped__``, the globals
    a function's code names and the attributes of plain objects, depth first, ``SEARCH_DEPTH``
    links deep; a module's submodules are part of it."""
    found, seen = [], set()

    def visit(obj, depth):
        if depth < 0 or id(obj) in seen or isinstance(obj, _ATOMS) or inspect.ismodule(obj):
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            seen.update(id(m) for m in obj.modules())
            found.append(obj)
        elif isinstance(obj, torch.Tensor):
            found.append(obj)
        else:
            for child in _children(obj):
                visit(child, depth - 1)

    visit(fn, SEARCH_DEPTH)
    return found


_MODULE_DIGESTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_TENSOR_DIGESTS: dict = {}  # id -> (weakref, state, digest), bounded


def _version(t: torch.Tensor):
    try:
        return t._version
    except RuntimeError:  # an inference tensor keeps no version counter: never cached
        return object()


def _state(tensors) -> tuple:
    return tuple((id(t), t.data_ptr(), _version(t), t.dtype, tuple(t.shape), t.device) for t in tensors)


def _module_digest(module: torch.nn.Module) -> str:
    """sha256 of the module's ``state_dict`` tensors in order (dtypes, shapes, bytes; names are
    left out, so a ``torch.compile`` wrapper has its module's digest); cached until a parameter or
    buffer is replaced, moved or changed in place (its version counter)."""
    state = _state([*module.parameters(), *module.buffers()])
    cached = _MODULE_DIGESTS.get(module)
    if cached is not None and cached[0] == state:
        return cached[1]
    h = hashlib.sha256()
    _field(h, b"module")
    for value in module.state_dict(keep_vars=True).values():
        if isinstance(value, torch.Tensor):
            _update_tensor(h, value)
    digest = h.hexdigest()
    _MODULE_DIGESTS[module] = (state, digest)
    return digest


def _tensor_digest(t: torch.Tensor) -> str:
    state = _state([t])
    cached = _TENSOR_DIGESTS.get(id(t))
    if cached is not None and cached[0]() is t and cached[1] == state:
        return cached[2]
    h = hashlib.sha256()
    _field(h, b"tensor")
    _update_tensor(h, t)
    digest = h.hexdigest()
    if len(_TENSOR_DIGESTS) >= 4096:
        _TENSOR_DIGESTS.pop(next(iter(_TENSOR_DIGESTS)))
    _TENSOR_DIGESTS[id(t)] = (weakref.ref(t), state, digest)
    return digest


def model_fingerprint(fn) -> str | None:
    """sha256 of the weights ``fn`` reads (:func:`weight_holders`: each module's ``state_dict``
    tensors, then each loose tensor, by dtype, shape and bytes, copied to the CPU), or None when
    it reads none (a plain function: then only a user's tag can identify it).

    The same weights give the same fingerprint in any process and on any device; another dtype
    is other bytes.  Digests are cached per module / tensor object until a tensor is replaced,
    moved or changed in place; an in-place change through ``.data`` bypasses the version counter
    and is not seen until the module's tensors change otherwise."""
    holders = weight_holders(fn)
    if not holders:
        return None
    h = hashlib.sha256()
    _field(h, b"ltc-model-weights")
    for holder in holders:
        digest = _module_digest(holder) if isinstance(holder, torch.nn.Module) else _tensor_digest(holder)
        _field(h, digest.encode())
    return h.hexdigest()
