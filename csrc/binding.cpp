// Torch binding of the fused step kernels (launch API in ltc_ops.h).  Checks every tensor before
// any work (device, dtype, contiguity, shape, aliasing; ValueError / TypeError in Python naming the
// argument), launches on the current stream and checks the launch.  Registered with the dispatcher
// as torch.ops.ltc_cuda.{model_step, extrapolate_step, transition_dots}; ltc/ops/cuda.py wraps
// them into the signatures of ltc/ops/reference.py (the specification).
#include <Python.h>

#include <cstdint>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ltc_ops.h"

namespace {

using at::Tensor;

ltc_cuda::DType storage_dtype(const Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return ltc_cuda::DType::kFloat32;
    case at::kHalf: return ltc_cuda::DType::kFloat16;
    case at::kBFloat16: return ltc_cuda::DType::kBFloat16;
    case at::kDouble: return ltc_cuda::DType::kFloat64;
    default: break;
  }
  TORCH_CHECK_TYPE(false, name, " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
}

at::ScalarType compute_dtype(const Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// x itself: the device, dtype and shape every other tensor is checked against.
void check_x(const Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.is_cuda(), name, " must be a CUDA tensor, got one on ", x.device());
  TORCH_CHECK_VALUE(x.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK_VALUE(x.dim() >= 1, name, " must be [B, *S] with at least one dim, got a 0-d tensor");
  storage_dtype(x, name);
}

void check_on_device_of_x(const Tensor& t, const char* name, const Tensor& x) {
  TORCH_CHECK_VALUE(t.is_cuda() && t.device() == x.device(), name, " must be on ", x.device(),
                    " (the device of x), got ", t.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous");
}

void check_dtype_of_x(const Tensor& t, const char* name, const Tensor& x) {
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), name, " has dtype ", t.scalar_type(),
                   " but x has dtype ", x.scalar_type(), " (all state tensors share one storage dtype)");
}

// A tensor of x's device, dtype and shape.
void check_like_x(const Tensor& t, const char* name, const Tensor& x) {
  check_on_device_of_x(t, name, x);
  check_dtype_of_x(t, name, x);
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), name, " has shape ", t.sizes(), " but x has shape ", x.sizes());
}

// hist: [H, *x.shape], H >= 1.
void check_hist(const Tensor& hist, const Tensor& x) {
  check_on_device_of_x(hist, "hist", x);
  check_dtype_of_x(hist, "hist", x);
  TORCH_CHECK_VALUE(hist.dim() == x.dim() + 1 && hist.size(0) >= 1 && hist.sizes().slice(1) == x.sizes(),
                    "hist must be [H, *x.shape] with H >= 1 and x.shape = ", x.sizes(), ", got shape ",
                    hist.sizes());
}

// coefs: the plan's [N, NCOLS] table in the compute dtype.
ltc_cuda::CoefTable check_coefs(const Tensor& coefs, const Tensor& x) {
  check_on_device_of_x(coefs, "coefs", x);
  TORCH_CHECK_TYPE(coefs.scalar_type() == compute_dtype(x), "coefs must have dtype ", compute_dtype(x),
                   " (the compute dtype of x's ", x.scalar_type(), "), got ", coefs.scalar_type());
  TORCH_CHECK_VALUE(coefs.dim() == 2 && coefs.size(0) >= 1 && coefs.size(1) >= ltc_cuda::kNumCols,
                    "coefs must be the plan's [N, NCOLS] table with N >= 1 and NCOLS >= ",
                    static_cast<int>(ltc_cuda::kNumCols), ", got shape ", coefs.sizes());
  return {coefs.data_ptr(), coefs.size(0), coefs.stride(0)};
}

// step: a 0-d int32/int64 tensor on x's device (read in-kernel), else the host index step_host.
ltc_cuda::StepIndex check_step(const std::optional<Tensor>& step_tensor, int64_t step_host,
                               const ltc_cuda::CoefTable& coefs, const Tensor& x) {
  if (!step_tensor.has_value()) {
    TORCH_CHECK_VALUE(step_host >= 0 && step_host < coefs.rows, "step must be in [0, ", coefs.rows,
                      ") (rows of coefs), got ", step_host);
    return {nullptr, false, step_host};
  }
  const Tensor& s = *step_tensor;
  TORCH_CHECK_VALUE(s.dim() == 0, "step must be a Python int or a 0-d tensor, got shape ", s.sizes());
  TORCH_CHECK_TYPE(s.scalar_type() == at::kLong || s.scalar_type() == at::kInt,
                   "step tensor must be int64 or int32, got ", s.scalar_type());
  TORCH_CHECK_VALUE(s.is_cuda() && s.device() == x.device(), "step tensor must be on ", x.device(),
                    " (the device of x), got ", s.device());
  return {s.data_ptr(), s.scalar_type() == at::kInt, 0};
}

// reads past clean estimates, 0 to `most` (the op's maximum); the written slot must not be one of
// them (H > reads).  The message is ltc/ops/checks.py's: "reads must be 0, 1 or 2, got 5".
void check_reads(int64_t reads, int most, const Tensor& hist) {
  if (reads < 0 || reads > most) {
    std::string allowed;
    for (int r = 0; r < most; ++r) allowed += std::to_string(r) + (r + 1 < most ? ", " : "");
    TORCH_CHECK_VALUE(false, "reads must be ", allowed, " or ", most, ", got ", reads);
  }
  TORCH_CHECK_VALUE(hist.size(0) > reads, "hist has ", hist.size(0), " slot(s) but the step reads ", reads,
                    " past clean estimate(s): need at least ", reads + 1, " slots");
}

// One past the last byte t spans (non-negative strides; data_ptr + nbytes when contiguous).
uintptr_t span_end(const Tensor& t) {
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return reinterpret_cast<uintptr_t>(t.data_ptr()) + static_cast<uintptr_t>((last + 1) * t.element_size());
}

bool overlap(const Tensor& a, const Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const auto a0 = reinterpret_cast<uintptr_t>(a.data_ptr());
  const auto b0 = reinterpret_cast<uintptr_t>(b.data_ptr());
  return a0 < span_end(b) && b0 < span_end(a);
}

// Whether each sample t[b] is one contiguous block (size-1 dims may have any stride): the layout
// the model-step kernel reads with a batch stride (ltc/ops/checks.py: sample_contiguous).
bool sample_contiguous(const Tensor& t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

// The "first bad step" word: a 1-element int32/int64 tensor on x's device.
void check_finite_word(const Tensor& w, const Tensor& x) {
  TORCH_CHECK_TYPE((w.scalar_type() == at::kInt || w.scalar_type() == at::kLong) && w.numel() == 1,
                   "finite must be a 1-element int32 or int64 tensor (the first-bad-step word), got a ",
                   w.scalar_type(), " tensor of shape ", w.sizes());
  TORCH_CHECK_VALUE(w.is_cuda() && w.device() == x.device(), "finite is on ", w.device(), " but x is on ",
                    x.device());
}

// A written tensor may share memory with an input only by being the very same tensor, and only
// where the op allows it (each element is read before it is written, by the same thread).
void check_written(const Tensor& w, const char* w_name, const Tensor& r, const char* r_name, bool may_be_same) {
  if (!overlap(w, r)) return;
  const bool same = w.data_ptr() == r.data_ptr() && w.nbytes() == r.nbytes();
  TORCH_CHECK_VALUE(may_be_same && same, w_name, " overlaps ", r_name,
                    may_be_same ? " without being the very same tensor" : "; they must be separate memory");
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "ltc_cuda::", op, " failed to launch: ", cudaGetErrorString(err));
}

void model_step(const Tensor& x, const Tensor& model_out, const Tensor& hist, const Tensor& coefs,
                const std::optional<Tensor>& step_tensor, int64_t step, const Tensor& out, int64_t reads,
                bool cfg, const std::optional<Tensor>& noise, const std::optional<Tensor>& finite) {
  check_x(x, "x");
  TORCH_CHECK_VALUE(model_out.is_cuda() && model_out.device() == x.device(), "model_out must be on ", x.device(),
                    " (the device of x), got ", model_out.device());
  TORCH_CHECK_VALUE(model_out.is_contiguous() || (model_out.dim() >= 1 && sample_contiguous(model_out)),
                    "model_out must be contiguous or have each sample contiguous (a batch stride), got strides ",
                    model_out.strides(), " for shape ", model_out.sizes());
  check_dtype_of_x(model_out, "model_out", x);
  if (cfg) {
    TORCH_CHECK_VALUE(model_out.dim() == x.dim() && model_out.size(0) == 2 * x.size(0) &&
                          model_out.sizes().slice(1) == x.sizes().slice(1),
                      "with cfg, model_out must be [2B, *S] (unconditional half first) for x of shape ",
                      x.sizes(), ", got ", model_out.sizes());
  } else {
    TORCH_CHECK_VALUE(model_out.sizes() == x.sizes(), "model_out has shape ", model_out.sizes(),
                      " but x has shape ", x.sizes(), " (without cfg they must match)");
  }
  check_hist(hist, x);
  const ltc_cuda::CoefTable table = check_coefs(coefs, x);
  const ltc_cuda::StepIndex index = check_step(step_tensor, step, table, x);
  check_like_x(out, "out", x);
  if (noise.has_value()) check_like_x(*noise, "noise", x);
  check_reads(reads, ltc_cuda::kMaxModelStepReads, hist);
  check_written(out, "out", x, "x", true);
  check_written(out, "out", model_out, "model_out", false);
  check_written(out, "out", hist, "hist", false);
  check_written(hist, "hist", x, "x", false);
  check_written(hist, "hist", model_out, "model_out", false);
  if (noise.has_value()) {
    check_written(out, "out", *noise, "noise", false);
    check_written(hist, "hist", *noise, "noise", false);
  }
  if (step_tensor.has_value()) {
    check_written(out, "out", *step_tensor, "step", false);
    check_written(hist, "hist", *step_tensor, "step", false);
  }
  if (finite.has_value()) {
    check_finite_word(*finite, x);
    check_written(out, "out", *finite, "finite", false);
    check_written(hist, "hist", *finite, "finite", false);
    check_written(*finite, "finite", x, "x", false);
    check_written(*finite, "finite", model_out, "model_out", false);
    check_written(*finite, "finite", coefs, "coefs", false);
    if (noise.has_value()) check_written(*finite, "finite", *noise, "noise", false);
    if (step_tensor.has_value()) check_written(*finite, "finite", *step_tensor, "step", false);
  }

  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t sample = x.size(0) == 0 ? 0 : x.numel() / x.size(0);
  ltc_cuda::ModelStepArgs args{};
  args.dtype = storage_dtype(x, "x");
  args.x = x.data_ptr();
  args.model_out = model_out.data_ptr();
  args.noise = noise.has_value() ? noise->data_ptr() : nullptr;
  args.hist = hist.data_ptr();
  args.out = out.data_ptr();
  args.coefs = table;
  args.step = index;
  args.numel = x.numel();
  args.sample = sample;
  args.m_batch_stride = model_out.is_contiguous() || model_out.size(0) <= 1 ? sample : model_out.stride(0);
  args.finite = finite.has_value() ? finite->data_ptr() : nullptr;
  args.finite_is_int64 = finite.has_value() && finite->scalar_type() == at::kLong;
  args.slots = hist.size(0);
  args.reads = static_cast<int>(reads);
  args.cfg = cfg;
  check_launch(ltc_cuda::launch_model_step(args, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
               "model_step");
}

void extrapolate_step(const Tensor& x, const Tensor& x_prev, const Tensor& hist, const Tensor& coefs,
                      const std::optional<Tensor>& step_tensor, int64_t step, const Tensor& out, int64_t reads) {
  check_x(x, "x");
  check_like_x(x_prev, "x_prev", x);
  check_hist(hist, x);
  const ltc_cuda::CoefTable table = check_coefs(coefs, x);
  const ltc_cuda::StepIndex index = check_step(step_tensor, step, table, x);
  check_like_x(out, "out", x);
  check_reads(reads, ltc_cuda::kMaxExtrapolateStepReads, hist);
  check_written(out, "out", x, "x", true);
  check_written(out, "out", x_prev, "x_prev", true);
  check_written(out, "out", hist, "hist", false);
  check_written(hist, "hist", x, "x", false);
  check_written(hist, "hist", x_prev, "x_prev", false);
  if (step_tensor.has_value()) {
    check_written(out, "out", *step_tensor, "step", false);
    check_written(hist, "hist", *step_tensor, "step", false);
  }

  const c10::cuda::CUDAGuard guard(x.device());
  ltc_cuda::ExtrapolateStepArgs args{};
  args.dtype = storage_dtype(x, "x");
  args.x = x.data_ptr();
  args.x_prev = x_prev.data_ptr();
  args.hist = hist.data_ptr();
  args.out = out.data_ptr();
  args.coefs = table;
  args.step = index;
  args.numel = x.numel();
  args.slots = hist.size(0);
  args.reads = static_cast<int>(reads);
  check_launch(ltc_cuda::launch_extrapolate_step(args, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
               "extrapolate_step");
}

Tensor transition_dots(const Tensor& x, const Tensor& x_prev, const Tensor& x_target) {
  check_x(x, "x");
  check_like_x(x_prev, "x_prev", x);
  check_like_x(x_target, "x_target", x);

  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0);
  const int64_t row_len = batch == 0 ? 0 : x.numel() / batch;
  const auto options = x.options().dtype(compute_dtype(x));
  Tensor out = at::empty({batch, 2}, options);
  const int64_t chunks = ltc_cuda::transition_dots_chunks(row_len);
  Tensor partials = chunks > 1 ? at::empty({batch, chunks, 2}, options) : Tensor();

  ltc_cuda::TransitionDotsArgs args{};
  args.dtype = storage_dtype(x, "x");
  args.x = x.data_ptr();
  args.x_prev = x_prev.data_ptr();
  args.x_target = x_target.data_ptr();
  args.out = out.data_ptr();
  args.partials = partials.defined() ? partials.data_ptr() : nullptr;
  args.batch = batch;
  args.row_len = row_len;
  check_launch(ltc_cuda::launch_transition_dots(args, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()),
               "transition_dots");
  return out;
}

}  // namespace

TORCH_LIBRARY(ltc_cuda, m) {
  m.def("model_step(Tensor x, Tensor model_out, Tensor(a!) hist, Tensor coefs, Tensor? step_tensor, "
        "int step, Tensor(b!) out, int reads, bool cfg, Tensor? noise, Tensor(c!)? finite=None) -> ()");
  m.def("extrapolate_step(Tensor x, Tensor x_prev, Tensor(a!) hist, Tensor coefs, Tensor? step_tensor, "
        "int step, Tensor(b!) out, int reads) -> ()");
  m.def("transition_dots(Tensor x, Tensor x_prev, Tensor x_target) -> Tensor");
}

TORCH_LIBRARY_IMPL(ltc_cuda, CUDA, m) {
  m.impl("model_step", &model_step);
  m.impl("extrapolate_step", &extrapolate_step);
  m.impl("transition_dots", &transition_dots);
}

// `import ltc._C` runs the registrations above; the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                               "CUDA kernels of ltc's step operations (registered as torch.ops.ltc_cuda)",
                               -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
