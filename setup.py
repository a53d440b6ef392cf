"""Builds the optional CUDA extension ``ltc._C`` from ``csrc/`` when asked: ``LTC_BUILD_CUDA=1``.

A plain ``pip install .`` never needs CUDA.  To build the extension, have a CUDA toolkit and a CUDA
build of torch, then ``LTC_BUILD_CUDA=1 pip install --no-build-isolation .``.
"""
import glob
import os

from setuptools import find_packages, setup

# ``kernels/`` is installed as ``ltc.kernels`` (never as a top-level ``kernels`` package).
PACKAGES = find_packages(include=["ltc", "ltc.*"]) + ["ltc.kernels"]
PACKAGE_DIR = {"ltc": "ltc", "ltc.kernels": "kernels"}


def cuda_extensions():
    if os.environ.get("LTC_BUILD_CUDA", "0") != "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as exc:
        raise RuntimeError("LTC_BUILD_CUDA=1 needs torch importable at build time: "
                           "use pip install --no-build-isolation") from exc
    if CUDA_HOME is None or torch.version.cuda is None:
        raise RuntimeError(f"LTC_BUILD_CUDA=1 needs a CUDA toolkit (CUDA_HOME={CUDA_HOME}) "
                           f"and a CUDA build of torch (torch.version.cuda={torch.version.cuda})")
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*.cu"))
    if not sources:
        raise RuntimeError("LTC_BUILD_CUDA=1 but csrc/ has no sources")
    ext = CUDAExtension(
        "ltc._C", sources,
        # no --use_fast_math: it flushes denormals, and the kernels round exactly like the reference
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = cuda_extensions()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR, ext_modules=ext_modules, cmdclass=cmdclass)
