"""Loading the zoo's weight files: every file is checked when loaded.

A weight file is an :mod:`ltc.io` file of format :data:`WEIGHTS_FORMAT` (``ltc-zoo-weights``,
version 2): it must exist, be one complete safetensors file whose ``content_sha256`` matches its
tensors *and* metadata, the shipped ones must also match their whole-file sha256 pinned in
``ltc/zoo/pinned.json``, and it must hold exactly the tensors (names, shapes, float dtypes,
finite values) of the architecture recorded in its metadata.  Version-1 files (``ltc_zoo_format``
= 1, a digest of the tensors only) are refused with a message saying how to regenerate them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..io import FileFormat, read_checked
from ..models import Model
from ..schedule import Schedule
from .nets import build

WEIGHTS_DIR = Path(__file__).parent / "weights"
CALIBRATIONS_DIR = Path(__file__).parent / "calibrations"  # the demo's LTC calibrations
CLASSIFIER = "classifier"
REQUIRED = {"denoiser": ("kind", "architecture", "schedule", "prediction", "null_class"),
            "classifier": ("kind", "architecture")}
WEIGHTS_FORMAT = FileFormat(
    "ltc-zoo-weights", 2, metadata=("kind", "architecture"), extra_metadata=True, legacy_version_key="ltc_zoo_format",
    regenerate="Regenerate it: retrain (python -m ltc.zoo.train), or re-save its tensors and metadata (without "
               "'ltc_zoo_format' and 'tensors_sha256') with ltc.io.write_checked(path, tensors, metadata, "
               "ltc.zoo.loader.WEIGHTS_FORMAT).")


def _available(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.safetensors"))


def _path(name, directory) -> Path:
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    directory = Path(directory) if directory is not None else WEIGHTS_DIR
    path = directory / f"{name}.safetensors"
    if not path.is_file():
        raise ValueError(f"no zoo model named {name!r} in {directory}; available: {_available(directory)}")
    return path


def _read_checked(name: str, directory=None) -> tuple[torch.nn.Module, dict, Path]:
    path = _path(name, directory)
    tensors, meta = read_checked(path, WEIGHTS_FORMAT)
    kind = meta.get("kind")
    if kind not in REQUIRED:
        raise ValueError(f"{path} metadata 'kind' must be one of {tuple(REQUIRED)}, got {kind!r}")
    for key in REQUIRED[kind]:
        if key not in meta:
            raise ValueError(f"{path} metadata lacks {key!r}")
    try:
        config = json.loads(meta["architecture"])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} metadata 'architecture' is not valid JSON: {err}") from err
    net = build(config)
    expected = net.state_dict()
    for key in expected:
        if key not in tensors:
            raise ValueError(f"{path} lacks tensor {key!r} of its architecture {config}")
    for key, value in tensors.items():
        if key not in expected:
            raise ValueError(f"{path} has tensor {key!r} that its architecture does not use")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{path} tensor {key!r} has shape {tuple(value.shape)}, "
                             f"the architecture expects {tuple(expected[key].shape)}")
        if not value.is_floating_point():
            raise ValueError(f"{path} tensor {key!r} has dtype {value.dtype}, expected a float dtype")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{path} tensor {key!r} holds NaN or Inf values")
    net.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    return net.eval().requires_grad_(False), meta, path


def names(kind: str = "denoiser", directory=None) -> list[str]:
    """Names of the shipped models of ``kind`` (``"denoiser"`` or ``"classifier"``); denoisers
    ordered by cost (MACs per sample), small to large, as :class:`ltc.policies.TStitch` expects."""
    if kind not in REQUIRED:
        raise ValueError(f"kind must be one of {tuple(REQUIRED)}, got {kind!r}")
    found = []
    for name in _available(Path(directory) if directory is not None else WEIGHTS_DIR):
        meta = info(name, directory)
        if meta.get("kind") == kind:
            found.append((int(meta.get("macs_per_sample", 0)), name))
    return [name for _, name in sorted(found)]


def info(name: str, directory=None) -> dict:
    """The metadata of a weight file (strings; JSON fields decoded), after verifying the whole file."""
    path = _path(name, directory)
    _, meta = read_checked(path, WEIGHTS_FORMAT)
    for key in ("architecture", "schedule"):
        if key in meta:
            try:
                meta[key] = json.loads(meta[key])
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} metadata {key!r} is not valid JSON: {err}") from err
    return meta


class ZooDenoiser:
    """Callable ``fn(x, t, y=None)`` around a zoo network, run without autograd."""

    def __init__(self, net: torch.nn.Module, name: str, metadata: dict):
        self.net, self.name, self.metadata = net, name, metadata
        self.prediction = metadata["prediction"]
        self.macs_per_sample = int(metadata.get("macs_per_sample", 0))

    def to(self, device=None, dtype=None) -> "ZooDenoiser":
        self.net.to(device=device, dtype=dtype)
        return self

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x, t, y=y)

    def __repr__(self) -> str:
        return f"ZooDenoiser({self.name!r}, {self.macs_per_sample / 1e6:.1f}M MACs/sample)"


def load(name: str, *, device=None, directory=None) -> Model:
    """The zoo denoiser ``name`` as an :class:`ltc.Model` (eval mode, no autograd).

    ``model.fn`` is the :class:`ZooDenoiser` (``.net``, ``.metadata``, ``.macs_per_sample``).
    ``directory`` overrides the package's weight folder (for files of your own)."""
    net, meta, path = _read_checked(name, directory)
    if meta["kind"] != "denoiser":
        raise ValueError(f"{name!r} is a {meta['kind']}, not a denoiser (use load_classifier())")
    if device is not None:
        net.to(device)
    return Model(ZooDenoiser(net, name, meta), meta["prediction"], name)


def load_classifier(name: str = CLASSIFIER, *, device=None, directory=None) -> torch.nn.Module:
    """The feature classifier (a :class:`ltc.zoo.nets.Classifier` in eval mode, no grad)."""
    net, meta, path = _read_checked(name, directory)
    if meta["kind"] != "classifier":
        raise ValueError(f"{name!r} is a {meta['kind']}, not a classifier")
    net.metadata = meta
    return net.to(device) if device is not None else net


def schedule(name: str, directory=None):
    """The :class:`ltc.Schedule` the denoiser ``name`` was trained with (sampling spacing: the
    schedule's default, change it with ``dataclasses.replace`` or build your own)."""
    config = dict(info(name, directory).get("schedule") or {})
    if config.pop("class", None) != "vp":
        raise ValueError(f"{name!r} records no vp schedule in its metadata")
    return Schedule.vp(**config)
