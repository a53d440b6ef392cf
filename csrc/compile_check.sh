#!/usr/bin/env bash
# Compile check of csrc/ without a GPU (CI):
#   1. every .cu with nvcc for sm_90 (-c, warnings are errors, torch's half/bf16 no-conversion
#      defines), so syntax and type errors in the kernels are caught; ptxas -v prints
#      "registers: <n> <kernel>" per kernel, and a register spill fails the check;
#   2. the torch binding (.cpp) with the host compiler against torch's headers, when torch is
#      importable.  A CPU torch wheel ships c10/cuda headers but not the generated
#      c10/cuda/impl/cuda_cmake_macros.h, which C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips;
#   3. every ltc_cuda:: symbol the binding calls is defined by the .cu objects;
#   4. the host-side launch arithmetic (transition_dots_chunks), linked and run without a GPU.
# Prints "ok: <file>" per file checked.  Env: NVCC, CXX, PYTHON, CUDA_HOME (default: nvcc's toolkit),
# LTC_CHECK_ARCH (default sm_90).  Exit status: 0 ok, 1 compile/link error, 2 no nvcc, 3 no torch.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nvcc_bin="${NVCC:-nvcc}"
cxx_bin="${CXX:-c++}"
python_bin="${PYTHON:-python}"
arch="${LTC_CHECK_ARCH:-sm_90}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

command -v "$nvcc_bin" >/dev/null || { echo "compile_check: nvcc not found (set NVCC)" >&2; exit 2; }
# The toolkit nvcc belongs to (nvcc may be a wrapper script): its TOP in a dry run.
nvcc_top="$("$nvcc_bin" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
cuda_home="${CUDA_HOME:-$nvcc_top}"
cuda_include="$cuda_home/include"

for src in "$here"/*.cu; do
  ptxas_log="$work/$(basename "$src").ptxas"
  "$nvcc_bin" -std=c++17 -arch="$arch" -O3 -lineinfo -Werror all-warnings \
    -Xcompiler -Wall,-Wextra -Xptxas -v \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
    -c "$src" -o "$work/$(basename "$src").o" 2> "$ptxas_log" || { cat "$ptxas_log" >&2; exit 1; }
  # ptxas -v: one "registers: <n> <kernel>" line per kernel; a spill fails the check (the grids are
  # sized for the registers ptxas reports, and a spill in the grid-stride loop costs bandwidth).
  awk '/Compiling entry function/ { match($0, /\047[^\047]+\047/); name = substr($0, RSTART + 1, RLENGTH - 2) }
       /bytes spill stores/ { spills = ($5 + $9 > 0) }
       /Used [0-9]+ registers/ { match($0, /Used [0-9]+/)
                                  registers = substr($0, RSTART + 5, RLENGTH - 5)
                                  print "registers: " registers " " name (spills ? " SPILLS" : "") }' \
    "$ptxas_log" \
    | { command -v c++filt >/dev/null && c++filt || cat; } | sed 's/(anonymous namespace):://'
  if grep -E '[1-9][0-9]* bytes spill (stores|loads)' "$ptxas_log" >/dev/null; then
    echo "compile_check: ptxas spills registers in $(basename "$src") (see SPILLS above)" >&2
    exit 1
  fi
  echo "ok: $(basename "$src") (nvcc -arch=$arch, no register spills)"
done

if ! torch_includes="$("$python_bin" - <<'EOF' 2>/dev/null
import sysconfig
from torch.utils.cpp_extension import include_paths
print(" ".join(include_paths() + [sysconfig.get_paths()["include"]]))
EOF
)"; then
  echo "compile_check: torch is not importable with $python_bin: binding not checked" >&2
  exit 3
fi
flags=(-std=c++20 -O0 -Wall -Wextra -Werror -fPIC -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -isystem "$cuda_include")
for inc in $torch_includes; do flags+=(-isystem "$inc"); done
for src in "$here"/*.cpp; do
  "$cxx_bin" "${flags[@]}" -c "$src" -o "$work/$(basename "$src").o"
  echo "ok: $(basename "$src") (torch headers)"
done

# Full demangled signatures, so a declaration/definition mismatch is caught too.
needed="$(nm -C --undefined-only -j "$work"/*.cpp.o | grep '^ltc_cuda::' | sort -u)"
defined="$(nm -C --defined-only -j "$work"/*.cu.o | grep '^ltc_cuda::' | sort -u)"
missing="$(comm -23 <(echo "$needed") <(echo "$defined"))"
if [ -z "$needed" ] || [ -n "$missing" ]; then
  echo "compile_check: the binding calls launch functions the .cu files do not define: ${missing:-none found}" >&2
  exit 1
fi
echo "ok: the binding's $(echo "$needed" | wc -l) ltc_cuda:: calls are defined by the .cu objects"

# 4. The host-side launch arithmetic, run here (no GPU needed: it makes no CUDA call): chunks per
#    sample of transition_dots' first pass, "chunks: <row_len> <chunks>" per row length.
cat > "$work/host_probe.cpp" <<'CPP'
#include <cstdint>
#include <cstdio>
#include "ltc_ops.h"
int main() {
  const int64_t lens[] = {1, 2048, 2049, 16384, 65537, 1 << 22, 1 << 24, 1 << 26};
  for (const int64_t n : lens) std::printf("chunks: %lld %lld\n", static_cast<long long>(n),
                                           static_cast<long long>(ltc_cuda::transition_dots_chunks(n)));
  return 0;
}
CPP
"$nvcc_bin" -std=c++17 -arch="$arch" -I "$here" "$work/host_probe.cpp" "$work/dots_kernel.cu.o" -o "$work/host_probe"
"$work/host_probe"
echo "ok: host launch arithmetic"
