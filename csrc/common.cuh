// Shared device helpers of the step kernels: storage <-> compute conversion, 16-byte vector
// loads/stores, the in-kernel step index and history slot, and the grid size of a grid-stride loop
// (one wave of resident blocks, from the occupancy calculator).
#pragma once

#include <atomic>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "ltc_ops.h"

namespace ltc_cuda {

constexpr int kThreads = 256;  // threads per block of every kernel

// Storage type T -> compute type (float, or double for double) and the two conversions.
template <typename T> struct Storage;
template <> struct Storage<float> {
  using compute = float;
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};
template <> struct Storage<double> {
  using compute = double;
  static __device__ __forceinline__ double load(double v) { return v; }
  static __device__ __forceinline__ double store(double v) { return v; }
};
template <> struct Storage<__half> {
  using compute = float;
  static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};
template <> struct Storage<__nv_bfloat16> {
  using compute = float;
  static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

template <typename T> using compute_t = typename Storage<T>::compute;

// Correctly rounded +, -, * that the compiler never contracts into an FMA, whatever the flags: the
// step kernels round exactly where the torch reference does, so their results equal it bit for bit.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// Elements of T in one 16-byte vector.
template <typename T> constexpr int kVec = static_cast<int>(16 / sizeof(T));

// Loads N consecutive elements at p as compute values; N == kVec<T> is one 16-byte load
// (p must then be 16-byte aligned), any other N is N scalar loads.
template <typename T, int N>
__device__ __forceinline__ void load(const T* p, compute_t<T> (&v)[N]) {
  if constexpr (N == kVec<T>) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = Storage<T>::load(e[k]);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = Storage<T>::load(p[k]);
  }
}

// Stores N compute values at p, rounded once to T; 16-byte store when N == kVec<T>.
template <typename T, int N>
__device__ __forceinline__ void store(T* p, const compute_t<T> (&v)[N]) {
  if constexpr (N == kVec<T>) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int k = 0; k < N; ++k) e[k] = Storage<T>::store(v[k]);
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) p[k] = Storage<T>::store(v[k]);
  }
}

// The step index (device scalar or host value); false when a device index is outside [0, rows).
__device__ __forceinline__ bool read_step(const StepIndex& s, int64_t rows, int64_t& step) {
  if (s.device == nullptr) {
    step = s.host;
  } else if (s.device_is_int32) {
    step = *static_cast<const int32_t*>(s.device);
  } else {
    step = *static_cast<const int64_t*>(s.device);
  }
  return step >= 0 && step < rows;
}

// History slot of D_{step - back}: (step - back) mod slots, non-negative as in Python.
__device__ __forceinline__ int64_t history_slot(int64_t step, int64_t back, int64_t slots) {
  const int64_t r = (step - back) % slots;
  return r < 0 ? r + slots : r;
}

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Blocks of `Kernel` (kThreads threads each, no dynamic shared memory) resident on the whole
// current device at once: multiprocessors x the occupancy calculator's blocks per multiprocessor,
// which accounts for the kernel's registers and shared memory (ptxas gives the step kernels 33-50
// registers, so fewer than 2048 / kThreads blocks fit an SM).  Cached per kernel and device: the
// queries run once, never inside a CUDA graph capture after the first launch.
template <auto Kernel>
cudaError_t resident_blocks(int& blocks) {
  constexpr int kMaxDevices = 128;
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  blocks = cache[device].load(std::memory_order_relaxed);
  if (blocks > 0) return cudaSuccess;
  int sms = 0, per_sm = 0;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, kThreads, 0);
  if (err != cudaSuccess) return err;
  blocks = sms * (per_sm > 0 ? per_sm : 1);
  cache[device].store(blocks, std::memory_order_relaxed);
  return cudaSuccess;
}

// Blocks of a grid-stride loop of `Kernel` over `work` items of one thread each: one full wave
// (every block resident at once, resident_blocks), never more than the work needs.
template <auto Kernel>
cudaError_t grid_blocks(int64_t work, int& blocks) {
  int resident = 0;
  const cudaError_t err = resident_blocks<Kernel>(resident);
  if (err != cudaSuccess) return err;
  const int64_t needed = (work + kThreads - 1) / kThreads;
  blocks = static_cast<int>(needed < 1 ? 1 : (needed < resident ? needed : resident));
  return cudaSuccess;
}

// Launcher<T>::run(args, stream) for the storage type named by args.dtype.
template <template <typename> class Launcher, typename Args>
cudaError_t dispatch_dtype(const Args& args, cudaStream_t stream) {
  switch (args.dtype) {
    case DType::kFloat32: return Launcher<float>::run(args, stream);
    case DType::kFloat16: return Launcher<__half>::run(args, stream);
    case DType::kBFloat16: return Launcher<__nv_bfloat16>::run(args, stream);
    case DType::kFloat64: return Launcher<double>::run(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace ltc_cuda
