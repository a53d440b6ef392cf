"""The digits data set shipped with the zoo, and its fixed train / held-out split.

``data/digits.safetensors`` holds the 1797 8x8 handwritten digits of the UCI "Optical
Recognition of Handwritten Digits" data set (CC BY 4.0) as distributed by scikit-learn
(BSD-3): ``images`` uint8 ``[1797, 8, 8]`` with values 0..16 and ``labels`` int64 ``[1797]``
(see ``data/README.md``).  Nothing is downloaded and scikit-learn is not needed at run time.
The file is an :mod:`ltc.io` file of format :data:`DATA_FORMAT`, verified whole (its digest and
the sha256 pinned in ``ltc/zoo/pinned.json``) every time it is read.

Images given to the models are upsampled to 16x16 (bilinear, ``align_corners=False``) and
scaled from [0, 16] to [-1, 1]:

    x = 2 * upsample(img) / 16 - 1,        shape [B, 1, 16, 16], float32

Split: the first 1500 images are the training set, the last 297 the held-out set.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from ..io import FileFormat, read_checked

DATA_PATH = Path(__file__).parent / "data" / "digits.safetensors"
NUM_IMAGES = 1797
NUM_TRAIN = 1500
NUM_CLASSES = 10
IMAGE_SIZE = 16
SPLITS = ("train", "heldout", "all")
DATA_FORMAT = FileFormat("ltc-zoo-data", 2, tensors=("images", "labels"),
                         metadata=("source", "licence", "layout", "split"),
                         regenerate="Reinstall ltc (developers: python -m ltc.zoo.train export-data).")


def _read() -> dict:
    if not DATA_PATH.is_file():
        raise FileNotFoundError(f"the zoo data file is missing: {DATA_PATH} (reinstall the package)")
    tensors, _ = read_checked(DATA_PATH, DATA_FORMAT)
    images, labels = tensors["images"], tensors["labels"]
    if (images.shape != (NUM_IMAGES, 8, 8) or images.dtype != torch.uint8 or labels.shape != (NUM_IMAGES,)
            or labels.dtype != torch.int64):
        raise ValueError(f"{DATA_PATH} does not hold images uint8 [{NUM_IMAGES}, 8, 8] and labels int64 [{NUM_IMAGES}]")
    return {"images": images, "labels": labels}


def raw_digits(split: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """The stored uint8 ``[n, 8, 8]`` images (0..16) and int64 ``[n]`` labels of ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = _read()
    rows = {"train": slice(0, NUM_TRAIN), "heldout": slice(NUM_TRAIN, NUM_IMAGES), "all": slice(None)}[split]
    return data["images"][rows], data["labels"][rows]


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[n, 8, 8]`` in 0..16 -> float32 ``[n, 1, 16, 16]`` in [-1, 1] (bilinear upsampling)."""
    x = images.to(torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x * 2.0 - 1.0


def digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[n, 1, 16, 16]`` (float32, [-1, 1]) and labels ``[n]`` (int64) of ``split``
    (``"train"``: first 1500, ``"heldout"``: last 297, ``"all"``)."""
    images, labels = raw_digits(split)
    return to_model_space(images), labels


def data_digest() -> str:
    """sha256 of the stored image and label bytes (recorded in every weight file)."""
    data = _read()
    h = hashlib.sha256()
    h.update(data["images"].contiguous().numpy().tobytes())
    h.update(data["labels"].contiguous().numpy().tobytes())
    return h.hexdigest()
