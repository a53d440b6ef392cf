"""A small zoo of trained models on real data, shipped with the package (no downloads).

Denoisers (class-conditional eps-prediction UNets on 16x16 digits, one noise schedule)::

    import ltc, ltc.zoo
    small, large = ltc.zoo.load("unet_small"), ltc.zoo.load("unet_large")
    x = ltc.sample([small, large], ltc.zoo.schedule("unet_large"), ltc.policies.TStitch([0.4]),
                   steps=20, shape=(10, 1, 16, 16), model_kwargs={"y": torch.arange(10)},
                   guidance_scale=2.0)

``load(name)`` returns an :class:`ltc.Model` (prediction type from the file) calling the network
under ``torch.no_grad``: ``fn(x [B,1,16,16], t [B], y=labels [B] int64)``; label 10 (or
``y=None``) is the null class; under guidance a ``y`` of half the batch labels the conditional half.
``load_classifier()`` gives the feature classifier of :mod:`ltc.zoo.metrics`.
Data helpers: :func:`digits` (see :mod:`ltc.zoo.data`).
Exact oracles (closed-form denoisers and the exact ODE endpoint): :mod:`ltc.zoo.oracles`;
reference networks for benchmarks (DiT-S..XL, a small UNet): :mod:`ltc.zoo.reference_nets`.
Every weight file is checked when loaded (:mod:`ltc.zoo.loader`).
"""
from . import metrics, oracles
from .data import data_digest, digits, raw_digits, to_model_space
from .loader import CALIBRATIONS_DIR, WEIGHTS_DIR, info, load, load_classifier, names, schedule
from .nets import NULL_CLASS

__all__ = ["WEIGHTS_DIR", "CALIBRATIONS_DIR", "load", "load_classifier", "names", "schedule", "info", "digits", "raw_digits",
           "to_model_space", "data_digest", "metrics", "oracles", "NULL_CLASS"]
