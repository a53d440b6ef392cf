"""Development build of the CUDA extension: compile ``csrc/`` on the fly with
:func:`torch.utils.cpp_extension.load` and register ``torch.ops.ltc_cuda.*`` in this process.

    LTC_CUDA_JIT=1 python -c "import ltc.ops; print(ltc.ops.available('cuda'))"   # via ltc.ops.cuda
    python -m ltc.ops.cuda_build                                                       # build (cached) and report

The sources are those ``setup.py`` builds into ``ltc._C`` (every ``csrc/*.cpp`` and ``csrc/*.cu``)
with the same flags; torch caches the build under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) and rebuilds only when a source changes.  Needs a source checkout
(``csrc/`` next to the ``ltc`` package), a CUDA toolkit and a CUDA build of torch.
"""
from __future__ import annotations

from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parents[2] / "csrc"
NAME = "ltc_cuda_jit"
CXX_FLAGS = ["-O3"]
NVCC_FLAGS = ["-O3", "-lineinfo"]  # no fast math: it would flush denormals, unlike the reference


def sources() -> list[str]:
    """The extension's sources, sorted (as in setup.py)."""
    found = sorted(str(p) for p in [*CSRC.glob("*.cpp"), *CSRC.glob("*.cu")])
    if not found:
        raise FileNotFoundError(f"no CUDA extension sources in {CSRC}: the JIT build needs a source checkout")
    return found


def load(verbose: bool = False) -> None:
    """Compile (or reuse the cached build) and load the extension, registering ``torch.ops.ltc_cuda``.

    A no-op when the operators are already registered (by ``ltc._C`` or an earlier call)."""
    try:
        torch.ops.ltc_cuda.model_step  # noqa: B018
        return
    except (AttributeError, RuntimeError):
        pass
    from torch.utils.cpp_extension import CUDA_HOME, load as cpp_load
    if CUDA_HOME is None or torch.version.cuda is None:
        raise RuntimeError(f"the JIT build needs a CUDA toolkit (CUDA_HOME={CUDA_HOME}) and a CUDA build of "
                           f"torch (torch.version.cuda={torch.version.cuda})")
    cpp_load(name=NAME, sources=sources(), extra_cflags=CXX_FLAGS, extra_cuda_cflags=NVCC_FLAGS,
             extra_include_paths=[str(CSRC)], is_python_module=False, verbose=verbose)


if __name__ == "__main__":
    load(verbose=True)
    print("registered:", [op for op in ("model_step", "extrapolate_step", "transition_dots")
                          if hasattr(torch.ops.ltc_cuda, op)])
