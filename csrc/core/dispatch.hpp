// One table of kernel entry points per instruction set.  Each ISA's object
// library defines its table; dispatch.cpp is the only place that knows which
// ISAs exist, in priority order, and which one is active.
#pragma once
#include <cstdint>

#include "core/problem.hpp"

namespace pyconv {

// Direct convolution.  `workspace` holds at least direct_workspace_bytes()
// bytes, 64-byte aligned; x, w, bias, y are C-contiguous in s.layout.
template <class T>
using DirectConvFn = void (*)(const ConvShape& s, const T* x, const T* w, const T* bias, T* y,
                              void* workspace, int nthreads);
using DirectWorkspaceFn = int64_t (*)(const ConvShape& s, int elem_bytes);

// Convolution lowered to the packed GEMM (im2col and pointwise).  The
// workspace depends on the thread count (one packing buffer per thread) and
// holds the packed weight too unless the caller passes it prepacked.
template <class T>
using GemmConvFn = void (*)(const ConvShape& s, const T* x, const T* w, const T* prepacked, const T* bias, T* y,
                            void* workspace, int nthreads);
template <class T>
using PackWeightFn = void (*)(const ConvShape& s, const T* w, T* packed, int nthreads);

struct GemmKernels {
  int64_t (*workspace_bytes)(const ConvShape& s, int elem_bytes, int nthreads, bool prepacked);
  // Packed weight: depends on the weight's shape, groups, layout and the ISA.
  int64_t (*packed_weight_bytes)(const ConvShape& s, int elem_bytes);
  PackWeightFn<float> pack_f32;
  PackWeightFn<double> pack_f64;
  GemmConvFn<float> conv_f32;
  GemmConvFn<double> conv_f64;
  // FLOP/s of `iters` rounds of independent FMAs on the calling thread.
  double (*peak_flops)(int elem_bytes, int64_t iters);
};

struct IsaKernels {
  const char* name;
  int lanes_f32;  // SIMD width the kernels use, for plan()/config()
  DirectWorkspaceFn direct_workspace_bytes;
  DirectConvFn<float> direct_f32;
  DirectConvFn<double> direct_f64;
  const GemmKernels* gemm;
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
namespace generic { extern const IsaKernels kKernels; extern const GemmKernels kGemmKernels; }
namespace avx2 { extern const IsaKernels kKernels; extern const GemmKernels kGemmKernels; }
namespace avx512 { extern const IsaKernels kKernels; extern const GemmKernels kGemmKernels; }
}  // namespace pyconv
