// One table of kernel entry points per instruction set.  Each ISA's object
// library defines its table; dispatch.cpp is the only place that knows which
// ISAs exist, in priority order, and which one is active.
#pragma once
#include <cstdint>

#include "core/problem.hpp"

namespace pyconv {

// Entry points of one convolution algorithm (direct, or the packed GEMM
// behind im2col and pointwise), all with the same shape:
//  - workspace_bytes: scratch the call needs with `nthreads` threads (per-
//    thread buffers), without the weight area when the weight is prepacked;
//  - packed_weight_bytes / pack: the weight in the kernel's own layout,
//    which depends on the weight's shape, groups, layout and the ISA only
//    (only those fields of s are read), so it can be made once and reused;
//  - conv: the convolution; x, w, bias, y are C-contiguous in s.layout,
//    `prepacked` is null or made by pack, `workspace` is 64-byte aligned.
template <class T>
using ConvFn = void (*)(const ConvShape& s, const T* x, const T* w, const T* prepacked, const T* bias, T* y,
                        void* workspace, int nthreads);
template <class T>
using PackWeightFn = void (*)(const ConvShape& s, const T* w, T* packed, int nthreads);

struct AlgoKernels {
  int64_t (*workspace_bytes)(const ConvShape& s, int elem_bytes, int nthreads, bool prepacked);
  int64_t (*packed_weight_bytes)(const ConvShape& s, int elem_bytes);
  PackWeightFn<float> pack_f32;
  PackWeightFn<double> pack_f64;
  ConvFn<float> conv_f32;
  ConvFn<double> conv_f64;
};

// Pooling (csrc/pool): forward with optional int64 indices of the winners
// (flat H*W positions, max only) or the winners' keys (one byte per
// output, row tap * 16 + column tap: windows up to 16x16, max only);
// backward writes the whole input gradient (max pooling reads x, or the
// forward's keys instead when they are given).  Arrays are C-contiguous in
// s.layout.
template <class T>
using PoolForwardFn = void (*)(const PoolShape& s, const T* x, T* y, int64_t* indices, uint8_t* keys,
                               void* workspace, int nthreads);
template <class T>
using PoolBackwardFn = void (*)(const PoolShape& s, const T* x, const uint8_t* keys, const T* grad_y, T* grad_x,
                                void* workspace, int nthreads);

struct PoolKernels {
  int64_t (*workspace_bytes)(const PoolShape& s, int elem_bytes, int nthreads, bool backward);
  PoolForwardFn<float> forward_f32;
  PoolForwardFn<double> forward_f64;
  PoolBackwardFn<float> backward_f32;
  PoolBackwardFn<double> backward_f64;
};

// Fused depthwise-separable convolution (csrc/separable): dw is the
// depthwise step (no bias, no activation), pw the 1x1 step over dw's output
// (bias and activation); weights in the layout's plain format.
template <class T>
using SeparableFn = void (*)(const ConvShape& dw, const ConvShape& pw, const T* x, const T* dw_weight,
                             const T* pw_weight, const T* bias, T* y, void* workspace, int nthreads);

struct SeparableKernels {
  int64_t (*workspace_bytes)(const ConvShape& dw, const ConvShape& pw, int elem_bytes, int nthreads);
  SeparableFn<float> run_f32;
  SeparableFn<double> run_f64;
};

// Weight gradient of a convolution (csrc/gemm/grad_weight_kernels.cpp, and
// csrc/depthwise for NCHW depthwise layers): x
// and grad_y C-contiguous in s.layout, grad_w written whole in the weight's
// layout (s.act and s.has_bias are ignored).
template <class T>
using GradWeightFn = void (*)(const ConvShape& s, const T* x, const T* grad_y, T* grad_w, void* workspace,
                              int nthreads);

struct GradWeightKernels {
  int64_t (*workspace_bytes)(const ConvShape& s, int elem_bytes, int nthreads);
  GradWeightFn<float> run_f32;
  GradWeightFn<double> run_f64;
};

// Input gradient of a convolution: grad_x written whole from the weight
// (plain, in s.layout) and grad_y.  NCHW depthwise layers (csrc/depthwise),
// and GEMM + col2im for groups == 1 (csrc/gemm/grad_input_kernels.cpp).
template <class T>
using GradInputFn = void (*)(const ConvShape& s, const T* w, const T* grad_y, T* grad_x, void* workspace,
                             int nthreads);

struct GradInputKernels {
  int64_t (*workspace_bytes)(const ConvShape& s, int elem_bytes, int nthreads);
  GradInputFn<float> run_f32;
  GradInputFn<double> run_f64;
};

// The weight of a convolution's transposed problem (the input gradient's
// phases): input and output channels swapped within each group, kernel
// taps picked by index lists.  NCHW (OIHW): out (groups*cg, og, nr, nc)
// from w (groups*og, cg, kh, kw); NHWC (HWIO): out (nr, nc, og, groups*cg)
// from w (kh, kw, cg, groups*og); out[.., a, b, ..] = w[.., rows[a], cols[b], ..].
struct TapsTranspose {
  Layout layout;
  int64_t groups, og, cg, kh, kw, nr, nc;
  const int64_t* rows;
  const int64_t* cols;
};

template <class T>
using TransposeTapsFn = void (*)(const TapsTranspose& t, const T* w, T* out, int nthreads);

struct WeightKernels {
  TransposeTapsFn<float> transpose_taps_f32;
  TransposeTapsFn<double> transpose_taps_f64;
};

struct IsaKernels {
  const char* name;
  const AlgoKernels* direct;
  const AlgoKernels* gemm;
  const AlgoKernels* depthwise;
  const PoolKernels* pool;
  const SeparableKernels* separable;
  const GradWeightKernels* grad_weight;            // any convolution (packed GEMM)
  const GradWeightKernels* depthwise_grad_weight;  // groups == C_in, NCHW
  const GradInputKernels* depthwise_grad_input;    // groups == C_in, NCHW
  const GradInputKernels* col2im_grad_input;       // groups == 1
  const WeightKernels* weights;
  // FLOP/s of `iters` rounds of independent FMAs on the calling thread.
  double (*peak_flops)(int elem_bytes, int64_t iters);
};

enum class Isa : int { Generic = 0, Avx2 = 1, Avx512 = 2 };
constexpr int kNumIsas = 3;

// Tables compiled into this build (null where an ISA was not compiled).
const IsaKernels* compiled_kernels(Isa isa);
// True if the running CPU (and OS) supports the ISA.
bool cpu_supports(Isa isa);
const char* isa_name(Isa isa);

// The active table; set_active_isa caps the choice at `cap` and returns the
// ISA actually selected (the best compiled and supported one <= cap).
const IsaKernels& active_kernels();
Isa active_isa();
Isa set_active_isa(Isa cap);
Isa best_isa();

}  // namespace pyconv

// Defined by each ISA's object library.
namespace pyconv {
namespace generic { extern const IsaKernels kKernels; extern const AlgoKernels kDirect, kGemm, kDepthwise; extern const PoolKernels kPool; extern const SeparableKernels kSeparable; extern const GradWeightKernels kGradWeight, kDepthwiseGradWeight; extern const GradInputKernels kDepthwiseGradInput, kCol2imGradInput; extern const WeightKernels kWeights; double peak_flops(int, int64_t); }
namespace avx2 { extern const IsaKernels kKernels; extern const AlgoKernels kDirect, kGemm, kDepthwise; extern const PoolKernels kPool; extern const SeparableKernels kSeparable; extern const GradWeightKernels kGradWeight, kDepthwiseGradWeight; extern const GradInputKernels kDepthwiseGradInput, kCol2imGradInput; extern const WeightKernels kWeights; double peak_flops(int, int64_t); }
namespace avx512 { extern const IsaKernels kKernels; extern const AlgoKernels kDirect, kGemm, kDepthwise; extern const PoolKernels kPool; extern const SeparableKernels kSeparable; extern const GradWeightKernels kGradWeight, kDepthwiseGradWeight; extern const GradInputKernels kDepthwiseGradInput, kCol2imGradInput; extern const WeightKernels kWeights; double peak_flops(int, int64_t); }
}  // namespace pyconv
