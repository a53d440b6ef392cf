// Calibration reduction: per sample b, [<d, r>, <d, d>] with d = x - x_prev, r = x_target - x,
// accumulated in fp32 (fp64 for fp64 storage).
//
// Deterministic, no atomics: pass 1 splits every row into chunks of chunk_len(row_len) elements;
// one block sums a chunk (each thread a fixed strided subset in order, then a fixed shared-memory
// tree) into partials[b, chunk]; pass 2 sums a row's partials the same way.  The chunking depends
// on the row length only, so the summation order is the same on every run and every GPU.  A row
// that fits one chunk is written straight to the output (one pass).  Chunks are as short as
// kMinChunk until a row has kTargetChunks of them, so one sample of 4M elements is 1024 blocks
// (it was 256 with fixed 16384-element chunks: too few to reach the copy bandwidth).
#include "common.cuh"

namespace ltc_cuda {
namespace {

constexpr int64_t kMinChunk = 2048;      // elements per block of pass 1: a power of two, a multiple of
constexpr int64_t kMaxChunk = 16384;     // every kVec (vectors stay 16-byte aligned), between these
constexpr int64_t kTargetChunks = 1024;  // chunks per row before a chunk grows beyond kMinChunk
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridX = 1 << 20;

// Elements per chunk of a row of row_len: the power of two nearest above row_len / kTargetChunks,
// within [kMinChunk, kMaxChunk].
int64_t chunk_len(int64_t row_len) {
  const int64_t want = (row_len + kTargetChunks - 1) / kTargetChunks;
  int64_t len = kMinChunk;
  while (len < want && len < kMaxChunk) len *= 2;
  return len;
}

// (a, b) summed over the block by a fixed tree; every thread gets the sums.
template <typename C>
__device__ __forceinline__ void block_sum2(C& a, C& b) {
  __shared__ C sa[kThreads];
  __shared__ C sb[kThreads];
  const int t = threadIdx.x;
  sa[t] = a;
  sb[t] = b;
  __syncthreads();
#pragma unroll
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) {
      sa[t] += sa[t + s];
      sb[t] += sb[t + s];
    }
    __syncthreads();
  }
  a = sa[0];
  b = sb[0];
  __syncthreads();  // the arrays are reused by the next call
}

template <typename T, int N>
__device__ __forceinline__ void accumulate(const T* x, const T* xp, const T* xt, int64_t i,
                                           compute_t<T>& dr, compute_t<T>& dd) {
  using C = compute_t<T>;
  C xv[N], pv[N], tv[N];
  load<T, N>(x + i, xv);
  load<T, N>(xp + i, pv);
  load<T, N>(xt + i, tv);
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const C d = xv[k] - pv[k];
    const C r = tv[k] - xv[k];
    dr += d * r;
    dd += d * d;
  }
}

// dst[b, c] = sums over chunk c of row b ([batch, chunks, 2]).
template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads)
dots_partial_kernel(TransitionDotsArgs args, int64_t chunk_len, int64_t chunks, compute_t<T>* dst) {
  using C = compute_t<T>;
  constexpr int N = VEC ? kVec<T> : 1;
  const int64_t len_row = args.row_len;
  for (int64_t b = blockIdx.y; b < args.batch; b += gridDim.y) {
    const T* x = static_cast<const T*>(args.x) + b * len_row;
    const T* xp = static_cast<const T*>(args.x_prev) + b * len_row;
    const T* xt = static_cast<const T*>(args.x_target) + b * len_row;
    for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
      const int64_t begin = c * chunk_len;
      const int64_t end = begin + chunk_len < len_row ? begin + chunk_len : len_row;
      const int64_t nvec = (end - begin) / N;
      C dr = 0, dd = 0;
      for (int64_t v = threadIdx.x; v < nvec; v += kThreads) accumulate<T, N>(x, xp, xt, begin + v * N, dr, dd);
      for (int64_t i = begin + nvec * N + threadIdx.x; i < end; i += kThreads) {
        accumulate<T, 1>(x, xp, xt, i, dr, dd);
      }
      block_sum2(dr, dd);
      if (threadIdx.x == 0) {
        dst[(b * chunks + c) * 2] = dr;
        dst[(b * chunks + c) * 2 + 1] = dd;
      }
    }
  }
}

// out[b] = sums of partials[b, :] ([batch, chunks, 2] -> [batch, 2]).
template <typename C>
__global__ void __launch_bounds__(kThreads)
dots_final_kernel(const C* partials, int64_t chunks, int64_t batch, C* out) {
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {
    C dr = 0, dd = 0;
    for (int64_t c = threadIdx.x; c < chunks; c += kThreads) {
      dr += partials[(b * chunks + c) * 2];
      dd += partials[(b * chunks + c) * 2 + 1];
    }
    block_sum2(dr, dd);
    if (threadIdx.x == 0) {
      out[b * 2] = dr;
      out[b * 2 + 1] = dd;
    }
  }
}

template <typename T>
struct TransitionDotsLauncher {
  static cudaError_t run(const TransitionDotsArgs& a, cudaStream_t stream) {
    using C = compute_t<T>;
    if (a.batch == 0) return cudaSuccess;
    if (a.row_len == 0) return cudaMemsetAsync(a.out, 0, static_cast<size_t>(a.batch) * 2 * sizeof(C), stream);
    const int64_t len = chunk_len(a.row_len);
    const int64_t chunks = transition_dots_chunks(a.row_len);
    if (chunks > 1 && a.partials == nullptr) return cudaErrorInvalidValue;
    C* dst = static_cast<C*>(chunks > 1 ? a.partials : a.out);
    // Rows start 16-byte aligned when the bases are and a row is a whole number of vectors.
    const bool vec = aligned16(a.x) && aligned16(a.x_prev) && aligned16(a.x_target) &&
                     (a.batch == 1 || (static_cast<uint64_t>(a.row_len) * sizeof(T)) % 16 == 0);
    const dim3 grid(static_cast<unsigned>(chunks < kMaxGridX ? chunks : kMaxGridX),
                    static_cast<unsigned>(a.batch < kMaxGridY ? a.batch : kMaxGridY));
    if (vec) {
      dots_partial_kernel<T, true><<<grid, kThreads, 0, stream>>>(a, len, chunks, dst);
    } else {
      dots_partial_kernel<T, false><<<grid, kThreads, 0, stream>>>(a, len, chunks, dst);
    }
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess || chunks == 1) return err;
    int blocks = 0;
    err = grid_blocks<dots_final_kernel<C>>(a.batch * kThreads, blocks);
    if (err != cudaSuccess) return err;
    dots_final_kernel<C><<<blocks, kThreads, 0, stream>>>(dst, chunks, a.batch, static_cast<C*>(a.out));
    return cudaGetLastError();
  }
};

}  // namespace

int64_t transition_dots_chunks(int64_t row_len) {
  const int64_t len = chunk_len(row_len);
  return row_len <= len ? 1 : (row_len + len - 1) / len;
}

cudaError_t launch_transition_dots(const TransitionDotsArgs& args, cudaStream_t stream) {
  if (args.batch < 0 || args.row_len < 0) return cudaErrorInvalidValue;
  return dispatch_dtype<TransitionDotsLauncher>(args, stream);
}

}  // namespace ltc_cuda
