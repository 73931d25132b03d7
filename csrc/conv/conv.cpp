// Driver of every convolution algorithm: checks the problem, owns the
// workspace, and calls the active ISA's kernel.  Compiled for the baseline
// target only (no ISA flags), like everything outside the kernel objects.
#include "conv/conv.hpp"

#include <cstdlib>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#include "core/checked.hpp"
#include "core/workspace.hpp"

namespace pyconv {

namespace {

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("conv2d: " + msg);
}

// The Python layer already normalised and checked everything; this re-checks
// the invariants the kernels rely on, so a bad call from C++ or a bug in the
// Python layer raises instead of reading out of bounds.
void validate(const ConvShape& s) {
  require(s.n >= 1 && s.c >= 1 && s.h >= 1 && s.w >= 1, "input dimensions must be >= 1");
  require(s.oc >= 1 && s.kh >= 1 && s.kw >= 1, "weight dimensions must be >= 1");
  require(s.sh >= 1 && s.sw >= 1 && s.dh >= 1 && s.dw >= 1, "stride and dilation must be >= 1");
  require(s.pt >= 0 && s.pb >= 0 && s.pl >= 0 && s.pr >= 0, "padding must be >= 0");
  require(s.groups >= 1 && s.c % s.groups == 0 && s.oc % s.groups == 0,
          "groups must divide input and output channels");
  const int64_t hp = checked_add(checked_add(s.h, s.pt, "conv2d"), s.pb, "conv2d");
  const int64_t wp = checked_add(checked_add(s.w, s.pl, "conv2d"), s.pr, "conv2d");
  const int64_t ekh = checked_add(checked_mul(s.kh - 1, s.dh, "conv2d"), 1, "conv2d");
  const int64_t ekw = checked_add(checked_mul(s.kw - 1, s.dw, "conv2d"), 1, "conv2d");
  require(ekh <= hp && ekw <= wp, "dilated kernel is larger than the padded input");
  require(s.oh == (hp - ekh) / s.sh + 1 && s.ow == (wp - ekw) / s.sw + 1,
          "output size does not match the input, kernel, stride and padding");
  // Every buffer the kernel touches, with generous lane padding (32 covers
  // two AVX-512 vectors), must be addressable in 64-bit byte offsets.
  checked_product("conv2d", s.n, hp, wp, s.c, 8);
  checked_product("conv2d", s.n, s.oh, s.ow, s.oc, 8);
  checked_product("conv2d", s.groups, s.oc / s.groups + 32, s.kh, s.kw, s.c / s.groups + 32, 8);
}

void require_algo(const ConvShape& s, Algo algo) {
  if (algo == Algo::Pointwise)
    require(s.kh == 1 && s.kw == 1 && s.groups == 1 && !(s.pt || s.pb || s.pl || s.pr),
            "algo='pointwise' serves 1x1 kernels with groups=1 and no padding only");
  if (algo == Algo::Depthwise) require(s.groups == s.c, "algo='depthwise' serves groups == C_in only");
}

}  // namespace

// Threads worth waking for a problem: below ~1 MFLOP per thread the fork/join
// and barrier cost more than they save (and a preempted thread stalls the
// whole team).  Results do not depend on the thread count, so this is free.
constexpr int64_t kMinFlopsPerThread = int64_t(1) << 20;

// Depthwise layers do ~2 FLOP per byte: their cost is memory traffic, so
// they get a thread per kMinElemsPerThread elements of input and output
// (128 KiB of float32) even when their FLOPs alone would not justify one.
constexpr int64_t kMinElemsPerThread = int64_t(1) << 15;

int useful_threads(const ConvShape& s, int nthreads) {
  const int64_t flops = 2 * s.n * s.oc * s.oh * s.ow * (s.c / s.groups) * s.kh * s.kw;
  int64_t useful = flops / kMinFlopsPerThread;
  if (s.groups == s.c) {
    const int64_t elems = s.n * (s.c * s.h * s.w + s.oc * s.oh * s.ow);
    useful = elems / kMinElemsPerThread > useful ? elems / kMinElemsPerThread : useful;
  }
  return static_cast<int>(useful < 1 ? 1 : (useful < nthreads ? useful : nthreads));
}

namespace {

const AlgoKernels& algo_kernels(const IsaKernels& k, Algo algo) {
  switch (algo) {
    case Algo::Direct: return *k.direct;
    case Algo::Depthwise: return *k.depthwise;
    default: return *k.gemm;  // im2col and pointwise
  }
}

}  // namespace

int64_t workspace_bytes(const IsaKernels& k, const ConvShape& s, int elem_bytes, Algo algo, int nthreads,
                        bool prepacked) {
  validate(s);
  require_algo(s, algo);
  return algo_kernels(k, algo).workspace_bytes(s, elem_bytes, useful_threads(s, nthreads), prepacked);
}

int64_t packed_weight_bytes(const IsaKernels& k, const ConvShape& s, int elem_bytes, Algo algo) {
  require(s.oc >= 1 && s.kh >= 1 && s.kw >= 1 && s.groups >= 1 && s.c % s.groups == 0 && s.oc % s.groups == 0,
          "inconsistent weight shape");
  require_algo(s, algo);
  checked_product("conv2d", s.groups, s.oc / s.groups + 32, s.kh, s.kw, s.c / s.groups + 32, 8);
  return algo_kernels(k, algo).packed_weight_bytes(s, elem_bytes);
}

template <class T>
void pack_weight(const IsaKernels& k, const ConvShape& s, const T* w, T* packed, Algo algo, int nthreads) {
  const AlgoKernels& a = algo_kernels(k, algo);
  if constexpr (sizeof(T) == 4)
    a.pack_f32(s, w, packed, nthreads);
  else
    a.pack_f64(s, w, packed, nthreads);
}

template <class T>
void conv2d(const IsaKernels& k, const ConvShape& s, const T* x, const T* w, const T* prepacked, const T* bias,
            T* y, Algo algo, int nthreads) {
  const int nt = useful_threads(s, nthreads);
  const int64_t bytes = workspace_bytes(k, s, sizeof(T), algo, nt, prepacked != nullptr);
  thread_local Workspace cache;
  std::unique_ptr<void, FreeDeleter> oneoff;
  void* ws = acquire_workspace(cache, oneoff, bytes);
  const AlgoKernels& a = algo_kernels(k, algo);
  if constexpr (sizeof(T) == 4)
    a.conv_f32(s, x, w, prepacked, bias, y, ws, nt);
  else
    a.conv_f64(s, x, w, prepacked, bias, y, ws, nt);
}

void validate_separable(const ConvShape& dw, const ConvShape& pw) {
  validate(dw);
  validate(pw);
  require(dw.groups == dw.c && !dw.has_bias && dw.act == Activation::None, "bad depthwise step of a separable conv");
  require(pw.kh == 1 && pw.kw == 1 && pw.sh == 1 && pw.sw == 1 && pw.groups == 1 &&
              !(pw.pt || pw.pb || pw.pl || pw.pr),
          "bad pointwise step of a separable conv");
  require(pw.n == dw.n && pw.c == dw.oc && pw.h == dw.oh && pw.w == dw.ow && pw.layout == dw.layout,
          "the pointwise step must read the depthwise step's output");
}

template <class T>
void separable_conv2d(const IsaKernels& k, const ConvShape& dw, const ConvShape& pw, const T* x, const T* dw_weight,
                      const T* pw_weight, const T* bias, T* y, int nthreads) {
  validate_separable(dw, pw);
  // Threads: by the whole call's work (both steps).
  const int64_t flops = 2 * dw.n * dw.oh * dw.ow * (dw.oc * dw.kh * dw.kw + pw.oc * pw.c);
  const int64_t useful = flops / kMinFlopsPerThread;
  const int nt = static_cast<int>(useful < 1 ? 1 : (useful < nthreads ? useful : nthreads));
  thread_local Workspace cache;
  std::unique_ptr<void, FreeDeleter> oneoff;
  void* ws = acquire_workspace(cache, oneoff, k.separable->workspace_bytes(dw, pw, sizeof(T), nt));
  if constexpr (sizeof(T) == 4)
    k.separable->run_f32(dw, pw, x, dw_weight, pw_weight, bias, y, ws, nt);
  else
    k.separable->run_f64(dw, pw, x, dw_weight, pw_weight, bias, y, ws, nt);
}

void validate_conv(const ConvShape& s) { validate(s); }

template <class T>
void conv2d_grad_weight(const IsaKernels& k, const ConvShape& s, const T* x, const T* grad_y, T* grad_w,
                        int nthreads) {
  validate(s);
  const int nt = useful_threads(s, nthreads);
  thread_local Workspace cache;
  std::unique_ptr<void, FreeDeleter> oneoff;
  // Depthwise layers have a reduction of a few taps per filter: a GEMM
  // would be mostly padding, so they have their own kernel (NCHW planes;
  // NHWC operands are transposed to them first).  A single channel with
  // NHWC operands is a plain GEMM (its planes are its images), and with
  // NCHW ones and stride 1 the pixel-lane kernel (LeNet's first layer:
  // 0.38 -> 0.15 ms).
  const bool depthwise = s.groups == s.c && !pixel_lane_grad_weight(s) && (s.layout == Layout::NCHW || s.c > 1);
  const GradWeightKernels& gk = depthwise ? *k.depthwise_grad_weight : *k.grad_weight;
  void* ws = acquire_workspace(cache, oneoff, gk.workspace_bytes(s, sizeof(T), nt));
  if constexpr (sizeof(T) == 4)
    gk.run_f32(s, x, grad_y, grad_w, ws, nt);
  else
    gk.run_f64(s, x, grad_y, grad_w, ws, nt);
}

template <class T>
void conv2d_grad_input(const IsaKernels& k, const ConvShape& s, const T* w, const T* grad_y, T* grad_x,
                       GradInputAlgo algo, int nthreads) {
  validate(s);
  if (algo == GradInputAlgo::Depthwise)
    require(s.groups == s.c && s.layout == Layout::NCHW, "the depthwise input gradient serves NCHW groups == C_in only");
  else
    require(s.groups == 1, "the col2im input gradient serves groups == 1 only");
  const int nt = useful_threads(s, nthreads);
  thread_local Workspace cache;
  std::unique_ptr<void, FreeDeleter> oneoff;
  const GradInputKernels& gk = algo == GradInputAlgo::Depthwise ? *k.depthwise_grad_input : *k.col2im_grad_input;
  void* ws = acquire_workspace(cache, oneoff, gk.workspace_bytes(s, sizeof(T), nt));
  if constexpr (sizeof(T) == 4)
    gk.run_f32(s, w, grad_y, grad_x, ws, nt);
  else
    gk.run_f64(s, w, grad_y, grad_x, ws, nt);
}

#define PYCONV_INSTANTIATE(T)                                                                          \
  template void pack_weight<T>(const IsaKernels&, const ConvShape&, const T*, T*, Algo, int);         \
  template void conv2d<T>(const IsaKernels&, const ConvShape&, const T*, const T*, const T*, const T*, \
                          T*, Algo, int);                                                              \
  template void separable_conv2d<T>(const IsaKernels&, const ConvShape&, const ConvShape&, const T*,  \
                                    const T*, const T*, const T*, T*, int);                  \
  template void conv2d_grad_weight<T>(const IsaKernels&, const ConvShape&, const T*, const T*, T*, int); \
  template void conv2d_grad_input<T>(const IsaKernels&, const ConvShape&, const T*, const T*, T*,       \
                                     GradInputAlgo, int);
PYCONV_INSTANTIATE(float)
PYCONV_INSTANTIATE(double)
#undef PYCONV_INSTANTIATE

}  // namespace pyconv
