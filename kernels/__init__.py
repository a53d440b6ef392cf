"""Fused Triton kernels of the step operations (installed as ``ltc.kernels``)."""
