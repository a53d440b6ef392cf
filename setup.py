"""Builds the optional CUDA extension ``ltc._C`` from ``csrc/`` when asked: ``LTC_BUILD_CUDA=1``.

A plain ``pip install .`` never needs CUDA.  To build the extension, have a CUDA toolkit and a CUDA
build of torch, then ``LTC_BUILD_CUDA=1 pip install --no-build-isolation .``.

GPU architectures: ``TORCH_CUDA_ARCH_LIST`` as torch reads it.  When it is unset (or empty) the
build uses :data:`DEFAULT_CUDA_ARCH_LIST`, ``"8.0;9.0+PTX"``: SASS for sm_80 (A100; it also runs on
sm_86 / sm_89, RTX 30xx / 40xx, L4, L40) and sm_90 (H100, H200), plus sm_90 PTX that the driver
compiles for newer GPUs -- so a build host without a GPU builds a portable extension, instead of
torch's fallback of every architecture it knows without PTX.  Set the variable to choose others,
e.g. ``TORCH_CUDA_ARCH_LIST="10.0" LTC_BUILD_CUDA=1 pip install --no-build-isolation .`` for B200.

Paths are taken from this file's own directory, not the current one (``python /src/ltc/setup.py``
from elsewhere finds ``csrc/`` too).
"""
import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"

# ``kernels/`` is installed as ``ltc.kernels`` (never as a top-level ``kernels`` package).
PACKAGES = find_packages(where=str(ROOT), include=["ltc", "ltc.*"]) + ["ltc.kernels"]
PACKAGE_DIR = {"ltc": "ltc", "ltc.kernels": "kernels"}


def cuda_arch_list(environ) -> str:
    """The ``TORCH_CUDA_ARCH_LIST`` to build with: the environment's, or the default when it is
    unset or empty (torch treats an empty value as unset)."""
    return environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCH_LIST


def extension_sources(csrc: Path = CSRC) -> list:
    """Every ``.cpp`` and ``.cu`` in ``csrc`` (absolute paths, sorted; as ltc.ops.cuda_build)."""
    found = sorted(str(p) for p in [*csrc.glob("*.cpp"), *csrc.glob("*.cu")])
    if not found:
        raise RuntimeError(f"LTC_BUILD_CUDA=1 but {csrc} has no sources")
    return found


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
    arch_list = cuda_arch_list(os.environ)
    if arch_list != os.environ.get("TORCH_CUDA_ARCH_LIST"):
        print(f"ltc: TORCH_CUDA_ARCH_LIST is not set; building the CUDA extension for {arch_list}")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list  # read by torch's BuildExtension
    ext = CUDAExtension(
        "ltc._C", extension_sources(), include_dirs=[str(CSRC)],
        # no --use_fast_math: it flushes denormals, and the kernels round exactly like the reference
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension}


if __name__ == "__main__":  # pip (setuptools.build_meta) and ``python setup.py`` run it as __main__
    ext_modules, cmdclass = cuda_extensions()
    setup(packages=PACKAGES, package_dir=PACKAGE_DIR, ext_modules=ext_modules, cmdclass=cmdclass)
