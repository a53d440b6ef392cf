// The two fused step kernels (equations in ltc_ops.h and ltc/plan.py):
//
//   model step:        m = m_u + G (m_c - m_u) (cfg);  D_i = PX x + PM m
//                      out = A x + B0 D_i + B1 D_{i-1} + B2 D_{i-2} + B3 D_{i-3} + NOISE z;  hist[i % H] = D_i
//   extrapolated step: out = EX x + EXP x_prev + EH1 D_{i-1} + EH2 D_{i-2};  hist[i % H] = IN out + IC x
//
// Elementwise over numel elements, grid-stride, 16-byte vectors when every segment a vector touches
// is 16-byte aligned (then a scalar tail).  The arithmetic is the reference's, operation for
// operation, in the same order, each correctly rounded (no FMA contraction: *_rn), so results equal
// ltc.ops.reference bit for bit on the same device (denormals included: build without fast math).  Each thread loads all inputs of its elements before it
// stores, so `out` may be `x` (or `x_prev`) itself and the written history slot may be a read one.
#include "common.cuh"

namespace ltc_cuda {
namespace {

// Resident blocks per multiprocessor the step kernels of storage T are compiled for: ptxas keeps
// them within 65536 / (6 x kThreads) -> 40 registers per thread (fp64: 4 blocks, 64 registers),
// without spills (ptxas -v for sm_80 and sm_90, checked by compile_check.sh; unbounded, the fp32
// model step takes 50 registers: 4 blocks per SM).  The grid is one wave of resident blocks
// (grid_blocks, from the occupancy calculator), so it is right whatever ptxas allocates.
template <typename T> constexpr int kMinBlocksPerSM = sizeof(T) == 8 ? 4 : 6;
// The model step with both the finite word and a batch-strided model output (a 64-bit division per
// element) needs more: 5 blocks (48 registers) keep the fp32 instance free of spills.
template <typename T, bool FINITE, bool STRIDED>
constexpr int kModelStepMinBlocksPerSM = FINITE && STRIDED && sizeof(T) < 8 ? 5 : kMinBlocksPerSM<T>;

template <typename C> __device__ __forceinline__ C quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double quiet_nan<double>() {
  return __longlong_as_double(0x7ff8000000000000LL);
}

// out = NaN: the defined result of a device step index outside the table.
template <typename T>
__device__ void poison(T* out, int64_t n) {
  const T poisoned = Storage<T>::store(quiet_nan<compute_t<T>>());
  for (int64_t i = global_thread(); i < n; i += grid_threads()) out[i] = poisoned;
}

// Bits of what an element check found: the model output, or (only) what the step stored, not finite.
constexpr unsigned kModelBad = 1u, kWrittenBad = 2u;

// Whether v, once rounded to the storage type T (what is stored), is finite.
template <typename T>
__device__ __forceinline__ bool stored_finite(compute_t<T> v) {
  return isfinite(Storage<T>::load(Storage<T>::store(v)));
}

// word = min(word, 2 step + f) for this warp's threads' `bad` bits (f = 0 if any saw a non-finite
// model output, else 1), one atomic per warp with a bad element.  Every thread of the block calls it.
__device__ __forceinline__ void record_first_bad(void* word, bool is_int64, int64_t step, unsigned bad) {
  const bool model_bad = __any_sync(0xffffffffu, (bad & kModelBad) != 0);
  const bool any_bad = __any_sync(0xffffffffu, bad != 0);
  if (!any_bad || (threadIdx.x & 31) != 0) return;
  const int64_t code = 2 * step + (model_bad ? 0 : 1);
  if (is_int64) {
    atomicMin(static_cast<long long*>(word), static_cast<long long>(code));
  } else {
    atomicMin(static_cast<int*>(word), static_cast<int>(code));
  }
}

// op.apply<N>(i) on elements [i, i + N) for all of [0, n): 16-byte vectors first when VEC, then
// the scalar tail.  Returns the bits the applications returned, or-ed.
template <typename T, bool VEC, typename Op>
__device__ __forceinline__ unsigned for_each_element(const Op& op, int64_t n) {
  constexpr int N = VEC ? kVec<T> : 1;
  const int64_t nvec = n / N;
  unsigned bad = 0;
  for (int64_t v = global_thread(); v < nvec; v += grid_threads()) bad |= op.template apply<N>(v * N);
  if constexpr (VEC) {
    for (int64_t i = nvec * N + global_thread(); i < n; i += grid_threads()) bad |= op.template apply<1>(i);
  }
  return bad;
}

// FINITE: apply returns the kModelBad / kWrittenBad bits of its elements (else 0).  STRIDED:
// model_out's samples (`sample` elements each, contiguous) lie m_stride elements apart.
template <typename T, bool FINITE, bool STRIDED>
struct ModelStepOp {
  using C = compute_t<T>;
  const T *x, *m_u, *m_c, *z, *h1, *h2, *h3;
  T *h_out, *out;
  C px, pm, a, b0, b1, b2, b3, cz, g;
  int64_t sample, m_stride;
  int reads;
  bool cfg;

  __device__ ModelStepOp(const ModelStepArgs& args, int64_t step) {
    const int64_t n = args.numel;
    const C* row = static_cast<const C*>(args.coefs.data) + step * args.coefs.row_stride;
    px = row[PX]; pm = row[PM]; a = row[A]; b0 = row[B0];
    b1 = row[B1]; b2 = row[B2]; b3 = row[B3]; cz = row[NOISE]; g = row[GUIDANCE];
    x = static_cast<const T*>(args.x);
    sample = args.sample;
    m_stride = args.m_batch_stride;
    m_u = static_cast<const T*>(args.model_out);
    m_c = m_u + (STRIDED ? (n / sample) * m_stride : n);  // read only with cfg
    z = static_cast<const T*>(args.noise);
    T* hist = static_cast<T*>(args.hist);
    h1 = hist + history_slot(step, 1, args.slots) * n;
    h2 = hist + history_slot(step, 2, args.slots) * n;
    h3 = hist + history_slot(step, 3, args.slots) * n;
    h_out = hist + history_slot(step, 0, args.slots) * n;
    out = static_cast<T*>(args.out);
    reads = args.reads;
    cfg = args.cfg;
  }

  template <int N>
  __device__ __forceinline__ unsigned apply(int64_t i) const {
    C xv[N], m[N], d[N], nx[N];
    unsigned bad = 0;
    // element i's offset in model_out (a vector never crosses a sample: the launcher checks sample % N)
    const int64_t mi = STRIDED ? (i / sample) * m_stride + i % sample : i;
    load<T, N>(x + i, xv);
    load<T, N>(m_u + mi, m);
    if constexpr (FINITE) {
#pragma unroll
      for (int k = 0; k < N; ++k) bad |= isfinite(m[k]) ? 0u : kModelBad;
    }
    if (cfg) {
      C mc[N];
      load<T, N>(m_c + mi, mc);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        if constexpr (FINITE) bad |= isfinite(mc[k]) ? 0u : kModelBad;
        m[k] = add_rn(m[k], mul_rn(g, sub_rn(mc[k], m[k])));
      }
    }
#pragma unroll
    for (int k = 0; k < N; ++k) {
      d[k] = add_rn(mul_rn(px, xv[k]), mul_rn(pm, m[k]));
      nx[k] = add_rn(mul_rn(a, xv[k]), mul_rn(b0, d[k]));
    }
    if (reads >= 1) {
      C h[N];
      load<T, N>(h1 + i, h);
#pragma unroll
      for (int k = 0; k < N; ++k) nx[k] = add_rn(nx[k], mul_rn(b1, h[k]));
    }
    if (reads >= 2) {
      C h[N];
      load<T, N>(h2 + i, h);
#pragma unroll
      for (int k = 0; k < N; ++k) nx[k] = add_rn(nx[k], mul_rn(b2, h[k]));
    }
    if (reads >= 3) {
      C h[N];
      load<T, N>(h3 + i, h);
#pragma unroll
      for (int k = 0; k < N; ++k) nx[k] = add_rn(nx[k], mul_rn(b3, h[k]));
    }
    if (z != nullptr) {
      C zv[N];
      load<T, N>(z + i, zv);
#pragma unroll
      for (int k = 0; k < N; ++k) nx[k] = add_rn(nx[k], mul_rn(cz, zv[k]));
    }
    if constexpr (FINITE) {
#pragma unroll
      for (int k = 0; k < N; ++k) bad |= (stored_finite<T>(d[k]) && stored_finite<T>(nx[k])) ? 0u : kWrittenBad;
    }
    store<T, N>(h_out + i, d);
    store<T, N>(out + i, nx);
    return bad;
  }
};

template <typename T>
struct ExtrapolateStepOp {
  using C = compute_t<T>;
  const T *x, *x_prev, *h1, *h2;
  T *h_out, *out;
  C cx, cxp, ch1, ch2, cin, cic;
  int reads;

  __device__ ExtrapolateStepOp(const ExtrapolateStepArgs& args, int64_t step) {
    const int64_t n = args.numel;
    const C* row = static_cast<const C*>(args.coefs.data) + step * args.coefs.row_stride;
    cx = row[EX]; cxp = row[EXP]; ch1 = row[EH1]; ch2 = row[EH2]; cin = row[IN]; cic = row[IC];
    x = static_cast<const T*>(args.x);
    x_prev = static_cast<const T*>(args.x_prev);
    T* hist = static_cast<T*>(args.hist);
    h1 = hist + history_slot(step, 1, args.slots) * n;
    h2 = hist + history_slot(step, 2, args.slots) * n;
    h_out = hist + history_slot(step, 0, args.slots) * n;
    out = static_cast<T*>(args.out);
    reads = args.reads;
  }

  template <int N>
  __device__ __forceinline__ unsigned apply(int64_t i) const {
    C xv[N], xp[N], nx[N], d[N];
    load<T, N>(x + i, xv);
    load<T, N>(x_prev + i, xp);
#pragma unroll
    for (int k = 0; k < N; ++k) nx[k] = add_rn(mul_rn(cx, xv[k]), mul_rn(cxp, xp[k]));
    if (reads >= 1) {
      C h[N];
      load<T, N>(h1 + i, h);
#pragma unroll
      for (int k = 0; k < N; ++k) nx[k] = add_rn(nx[k], mul_rn(ch1, h[k]));
    }
    if (reads >= 2) {
      C h[N];
      load<T, N>(h2 + i, h);
#pragma unroll
      for (int k = 0; k < N; ++k) nx[k] = add_rn(nx[k], mul_rn(ch2, h[k]));
    }
#pragma unroll
    for (int k = 0; k < N; ++k) d[k] = add_rn(mul_rn(cin, nx[k]), mul_rn(cic, xv[k]));
    store<T, N>(h_out + i, d);
    store<T, N>(out + i, nx);
    return 0u;
  }
};

template <typename T, bool VEC, bool FINITE, bool STRIDED>
__global__ void __launch_bounds__(kThreads, kModelStepMinBlocksPerSM<T, FINITE, STRIDED>)
    model_step_kernel(ModelStepArgs args) {
  int64_t step;
  if (!read_step(args.step, args.coefs.rows, step)) {
    poison(static_cast<T*>(args.out), args.numel);
    if (FINITE) record_first_bad(args.finite, args.finite_is_int64, step, global_thread() == 0 ? kWrittenBad : 0u);
    return;
  }
  const ModelStepOp<T, FINITE, STRIDED> op(args, step);
  const unsigned bad = for_each_element<T, VEC>(op, args.numel);
  if constexpr (FINITE) record_first_bad(args.finite, args.finite_is_int64, step, bad);
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM<T>) extrapolate_step_kernel(ExtrapolateStepArgs args) {
  int64_t step;
  if (!read_step(args.step, args.coefs.rows, step)) {
    poison(static_cast<T*>(args.out), args.numel);
    return;
  }
  const ExtrapolateStepOp<T> op(args, step);
  for_each_element<T, VEC>(op, args.numel);
}

// 16-byte vectors are safe when every segment start is aligned: the base pointers, and, when a
// tensor holds several segments (cfg halves of model_out, history slots), the segment size too.
template <typename T>
bool segments_aligned(int64_t numel, bool several_segments) {
  return !several_segments || (static_cast<uint64_t>(numel) * sizeof(T)) % 16 == 0;
}

template <typename T>
int64_t threads_needed(int64_t numel, bool vec) {
  return vec ? numel / kVec<T> + numel % kVec<T> : numel;
}

// One instance of the model-step kernel: vectors or not, with the finite word or not, batch-strided
// model output or not.
template <typename T, bool VEC, bool FINITE, bool STRIDED>
cudaError_t launch_model_step_as(const ModelStepArgs& a, cudaStream_t stream) {
  int blocks = 0;
  const cudaError_t err =
      grid_blocks<model_step_kernel<T, VEC, FINITE, STRIDED>>(threads_needed<T>(a.numel, VEC), blocks);
  if (err != cudaSuccess) return err;
  model_step_kernel<T, VEC, FINITE, STRIDED><<<blocks, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, bool FINITE, bool STRIDED>
cudaError_t launch_model_step_vec(const ModelStepArgs& a, bool vec, cudaStream_t stream) {
  return vec ? launch_model_step_as<T, true, FINITE, STRIDED>(a, stream)
             : launch_model_step_as<T, false, FINITE, STRIDED>(a, stream);
}

template <typename T>
struct ModelStepLauncher {
  static cudaError_t run(const ModelStepArgs& a, cudaStream_t stream) {
    if (a.numel == 0) return cudaSuccess;
    const bool strided = a.m_batch_stride != a.sample;
    // a strided model output: every vector inside one sample, every sample start aligned
    const bool samples_aligned = !strided || ((static_cast<uint64_t>(a.sample) * sizeof(T)) % 16 == 0 &&
                                              (static_cast<uint64_t>(a.m_batch_stride) * sizeof(T)) % 16 == 0);
    const bool vec = aligned16(a.x) && aligned16(a.model_out) && aligned16(a.hist) && aligned16(a.out) &&
                     (a.noise == nullptr || aligned16(a.noise)) &&
                     segments_aligned<T>(a.numel, a.cfg || a.slots > 1) && samples_aligned;
    if (a.finite != nullptr) {
      return strided ? launch_model_step_vec<T, true, true>(a, vec, stream)
                     : launch_model_step_vec<T, true, false>(a, vec, stream);
    }
    return strided ? launch_model_step_vec<T, false, true>(a, vec, stream)
                   : launch_model_step_vec<T, false, false>(a, vec, stream);
  }
};

template <typename T>
struct ExtrapolateStepLauncher {
  static cudaError_t run(const ExtrapolateStepArgs& a, cudaStream_t stream) {
    if (a.numel == 0) return cudaSuccess;
    const bool vec = aligned16(a.x) && aligned16(a.x_prev) && aligned16(a.hist) && aligned16(a.out) &&
                     segments_aligned<T>(a.numel, a.slots > 1);
    int blocks = 0;
    const int64_t work = threads_needed<T>(a.numel, vec);
    const cudaError_t err = vec ? grid_blocks<extrapolate_step_kernel<T, true>>(work, blocks)
                                : grid_blocks<extrapolate_step_kernel<T, false>>(work, blocks);
    if (err != cudaSuccess) return err;
    if (vec) {
      extrapolate_step_kernel<T, true><<<blocks, kThreads, 0, stream>>>(a);
    } else {
      extrapolate_step_kernel<T, false><<<blocks, kThreads, 0, stream>>>(a);
    }
    return cudaGetLastError();
  }
};

}  // namespace

cudaError_t launch_model_step(const ModelStepArgs& args, cudaStream_t stream) {
  if (args.reads < 0 || args.reads > kMaxModelStepReads || args.slots <= args.reads || args.numel < 0 ||
      (args.numel > 0 && (args.sample < 1 || args.numel % args.sample != 0 || args.m_batch_stride < 0))) {
    return cudaErrorInvalidValue;
  }
  return dispatch_dtype<ModelStepLauncher>(args, stream);
}

cudaError_t launch_extrapolate_step(const ExtrapolateStepArgs& args, cudaStream_t stream) {
  if (args.reads < 0 || args.reads > kMaxExtrapolateStepReads || args.slots <= args.reads || args.numel < 0) {
    return cudaErrorInvalidValue;
  }
  return dispatch_dtype<ExtrapolateStepLauncher>(args, stream);
}

}  // namespace ltc_cuda
