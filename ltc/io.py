"""Checked safetensors files: string metadata and a digest of the tensors (no pickle anywhere).

The zoo's weight files carry ``tensors_sha256``: the sha256 over ``name \\0 dtype \\0 shape \\0 bytes``
of each tensor in sorted name order (:func:`tensors_digest`; calibration files use the same digest
with ``|`` as the separator).  Reading re-computes it, so a corrupted (bit-flipped) file is
refused as well as a truncated one.  No pickle is involved anywhere.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def tensors_digest(tensors: dict, separator: str = "\0") -> str:
    """sha256 of the tensors' names, dtypes, shapes and bytes (sorted by name), each field
    followed by ``separator``."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}{separator}{t.dtype}{separator}{tuple(t.shape)}{separator}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_weights(path, tensors: dict, metadata: dict) -> Path:
    """Write ``tensors`` (contiguous CPU copies) with ``metadata`` (values stringified) and the digest."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in metadata.items()}
    meta["tensors_sha256"] = tensors_digest(tensors)
    save_file(tensors, str(path), metadata=meta)
    return path


def read_weights(path) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a weight file; ValueError naming the path if it is unreadable,
    truncated, has no metadata or fails its digest."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error type (or OSError) for bad files
        raise ValueError(f"{path} is not a readable safetensors file (corrupted or truncated?): {err}") from err
    if not metadata:
        raise ValueError(f"{path} has no metadata; zoo weight files carry their architecture in it")
    expected = metadata.get("tensors_sha256")
    if expected is None:
        raise ValueError(f"{path} metadata has no 'tensors_sha256' digest")
    if tensors_digest(tensors) != expected:
        raise ValueError(f"{path} is corrupted: its tensors do not match the recorded tensors_sha256")
    return tensors, metadata
