// Launch API of the fused step kernels: raw pointers and the CUDA runtime only (no torch), so the
// .cu files compile with nothing but the CUDA toolkit.  The torch binding (binding.cpp) checks
// every tensor and fills these structs; the equations are those of ltc/plan.py and
// ltc/ops/reference.py (the specification):
//
//   model step:        m = m_u + G (m_c - m_u)   (cfg only);   D_i = PX x + PM m
//                      out = A x + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + B3 D_{i-3} + NOISE z;   hist[i % H] = D_i
//   extrapolated step: out = EX x + EXP x_prev + EH1 D_{i-1} + EH2 D_{i-2};   hist[i % H] = IN out + IC x
//   transition dots:   per sample b, [<d, r>, <d, d>] with d = x - x_prev, r = x_target - x
//
// Storage is fp32, fp16, bf16 or fp64; arithmetic is fp32 (fp64 for fp64 storage) and results are
// rounded once when stored.  D_j lives in history slot j mod H (slots computed in-kernel from the
// step index, which is read in-kernel from a device scalar when given, so CUDA graphs can replay).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace ltc_cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// Columns of the plan's coefficient table: must equal ltc.ops.contract.Col (a test compares them).
enum Col : int {
  PX = 0, PM = 1, A = 2, B0 = 3, B1 = 4, B2 = 5, NOISE = 6, GUIDANCE = 7,
  EX = 8, EXP = 9, EH1 = 10, EH2 = 11, IN = 12, IC = 13, B3 = 14,
  kNumCols = 15,
};

// Past clean estimates a step can read (D_{i-1} ... D_{i-k}): UniPC-3's corrector reads three.
constexpr int kMaxModelStepReads = 3;
constexpr int kMaxExtrapolateStepReads = 2;

// The step index: read from `device` (a 0-d int64, or int32 when device_is_int32) when non-null,
// else `host`.  A device index outside [0, rows) makes the kernel write NaN to `out` and leave the
// history untouched (the host index is range-checked by the binding).
struct StepIndex {
  const void* device;
  bool device_is_int32;
  int64_t host;
};

// Coefficient table [rows, row_stride] (row_stride >= kNumCols), float (double for kFloat64).
struct CoefTable {
  const void* data;
  int64_t rows;
  int64_t row_stride;
};

struct ModelStepArgs {
  DType dtype;
  const void* x;          // [numel]
  const void* model_out;  // [batch (2 batch with cfg, unconditional half first), sample], samples
                          // m_batch_stride elements apart (== sample: contiguous)
  const void* noise;      // [numel], or nullptr (no noise term)
  void* hist;             // [slots, numel]
  void* out;              // [numel]; may be x itself
  void* finite;           // the "first bad step" word (int32, int64 when finite_is_int64), or nullptr:
                          // word = min(word, 2 i + f) when a model output element (f = 0) or else a
                          // stored x_{i+1} / D_i element (f = 1) is NaN or Inf (atomicMin)
  CoefTable coefs;
  StepIndex step;
  int64_t numel;
  int64_t sample;          // elements per sample (numel / batch)
  int64_t m_batch_stride;  // elements between consecutive samples of model_out
  int64_t slots;
  int reads;  // past D used: 0 to kMaxModelStepReads (< slots)
  bool cfg;
  bool finite_is_int64;
};

struct ExtrapolateStepArgs {
  DType dtype;
  const void* x;       // [numel]
  const void* x_prev;  // [numel]
  void* hist;          // [slots, numel]
  void* out;           // [numel]; may be x or x_prev itself
  CoefTable coefs;
  StepIndex step;
  int64_t numel;
  int64_t slots;
  int reads;  // past D used: 0 to kMaxExtrapolateStepReads (< slots)
};

struct TransitionDotsArgs {
  DType dtype;
  const void* x;         // [batch, row_len]
  const void* x_prev;    // [batch, row_len]
  const void* x_target;  // [batch, row_len]
  void* out;             // [batch, 2], float (double for kFloat64)
  void* partials;        // [batch, chunks, 2] workspace when chunks > 1, else unused
  int64_t batch;
  int64_t row_len;
};

// Chunks per sample of the first reduction pass (depends on row_len only, so the summation order,
// hence the result, is the same on every run and every device).
int64_t transition_dots_chunks(int64_t row_len);

// Each launcher enqueues its kernel(s) on `stream` and returns the launch status
// (cudaGetLastError after every launch).
cudaError_t launch_model_step(const ModelStepArgs& args, cudaStream_t stream);
cudaError_t launch_extrapolate_step(const ExtrapolateStepArgs& args, cudaStream_t stream);
cudaError_t launch_transition_dots(const TransitionDotsArgs& args, cudaStream_t stream);

}  // namespace ltc_cuda
