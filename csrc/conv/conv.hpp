#pragma once
#include <cstdint>

#include "core/dispatch.hpp"
#include "core/problem.hpp"

namespace pyconv {

// The convolution algorithms of the API (algo= in Python); "auto" is resolved
// in Python (pyconv/_conv.py), which knows the whole registry.
enum class Algo : int { Direct = 0, Im2col = 1, Pointwise = 2, Depthwise = 3 };

// Validates the shape in checked 64-bit arithmetic (std::invalid_argument on
// inconsistency, overflow, or an algorithm that cannot serve it) and returns
// the workspace bytes `algo` of `k` needs for it with `nthreads` threads.
int64_t workspace_bytes(const IsaKernels& k, const ConvShape& s, int elem_bytes, Algo algo, int nthreads,
                        bool prepacked = false);

// Bytes of a weight prepacked for `algo` (im2col and pointwise share the
// GEMM's format), and the packing itself.  Only the weight-related fields of
// s are used.
int64_t packed_weight_bytes(const IsaKernels& k, const ConvShape& s, int elem_bytes, Algo algo);
template <class T>
void pack_weight(const IsaKernels& k, const ConvShape& s, const T* w, T* packed, Algo algo, int nthreads);

// Threads a call actually uses: fewer than asked for tiny problems.
int useful_threads(const ConvShape& s, int nthreads);

// Runs `algo`; allocates its workspace (std::bad_alloc on failure, before
// anything is written to y).
// `prepacked`: null, or a weight packed by pack_weight() with the same k and
// algo.
template <class T>
void conv2d(const IsaKernels& k, const ConvShape& s, const T* x, const T* w, const T* prepacked, const T* bias,
            T* y, Algo algo, int nthreads);

// Fused depthwise-separable convolution: `dw` (groups == C_in, no bias,
// no activation) then `pw` (1x1, stride 1, no padding, groups 1, over dw's
// output, with the bias and activation).  Validates both and their chaining.
template <class T>
void separable_conv2d(const IsaKernels& k, const ConvShape& dw, const ConvShape& pw, const T* x, const T* dw_weight,
                      const T* pw_weight, const T* bias, T* y, int nthreads);
void validate_separable(const ConvShape& dw, const ConvShape& pw);

// Weight gradient: grad_w (the weight's shape and layout) from x and grad_y
// (s's input and output); deterministic for any thread count.
template <class T>
void conv2d_grad_weight(const IsaKernels& k, const ConvShape& s, const T* x, const T* grad_y, T* grad_w,
                        int nthreads);
void validate_conv(const ConvShape& s);

// Input gradient of a convolution by a native kernel: Depthwise (NCHW,
// groups == C_in) or Col2im (groups == 1, either layout: one GEMM and a
// col2im, for few input channels); std::invalid_argument for a layer the
// kernel cannot serve.
enum class GradInputAlgo : int { Depthwise = 0, Col2im = 1 };
template <class T>
void conv2d_grad_input(const IsaKernels& k, const ConvShape& s, const T* w, const T* grad_y, T* grad_x,
                       GradInputAlgo algo, int nthreads);

// An input-gradient grid split into stride phases (csrc/conv/phases.cpp):
// phase (a, b), a < min(sh, h), b < min(sw, w), holds positions a + sh*u,
// b + sw*v, an array of ceil((h-a)/sh) x ceil((w-b)/sw) pixels in `layout`.
struct PhaseLayout {
  int64_t n, c, h, w, sh, sw;
  Layout layout;
};
// Writes the phases (row-major in (a, b); null = zeros) into dx (n, c, h, w
// in `layout`).
template <class T>
void interleave_phases(const PhaseLayout& p, const T* const* phases, T* dx, int nthreads);

}  // namespace pyconv
