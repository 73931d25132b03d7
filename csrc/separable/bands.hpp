// Band entry points of the depthwise and GEMM kernels, for the fused
// separable convolution (csrc/separable): each computes a band of output
// rows of one image on the calling thread only, from prepacked weights, into
// caller-provided scratch.  Declared in the ISA namespace: every ISA object
// has its own definitions (see core/problem.hpp on cross-ISA ODR).
#pragma once
#include <cstdint>

#include "core/problem.hpp"

namespace pyconv {
namespace PYCONV_ISA_NS {

// Depthwise conv `s` (groups == C_in, no bias, no activation), image n,
// output rows [oh0, oh1), written to `mid`: NCHW (C_out, oh1-oh0, OW), NHWC
// (oh1-oh0, OW, C_out).  `packed` is the depthwise kernel's packed weight.
int64_t depthwise_band_scratch_bytes(const ConvShape& s, int elem_bytes);
template <class T>
void depthwise_band(const ConvShape& s, const T* x, const T* packed, int64_t n, int64_t oh0, int64_t oh1, T* mid,
                    void* scratch);

// 1x1 convolution `s` (n = 1, input = a band of `mid` rows, packed weight of
// the GEMM), written to y with an output plane stride of `ldy` elements in
// NCHW (the whole image's plane, so a band lands in place); NHWC rows are
// contiguous anyway.  Bias and activation as in s.
int64_t pointwise_band_scratch_bytes(const ConvShape& s, int elem_bytes);
template <class T>
void pointwise_band(const ConvShape& s, const T* mid, const T* packed, const T* bias, T* y, int64_t ldy,
                    void* scratch);

// GEMM of convolution `s` (groups 1, no bias, no activation) for output
// pixels [p0, p0 + np) of image n only, on the calling thread, written to
// c: NCHW a row per output channel, NHWC a row per pixel, rows ldc apart.
// `packed` is the GEMM's packed weight of s.
int64_t gemm_pixels_scratch_bytes(const ConvShape& s, int elem_bytes);
template <class T>
void gemm_pixels(const ConvShape& s, const T* x, const T* packed, int64_t n, int64_t p0, int64_t np, T* c,
                 int64_t ldc, void* scratch);

}  // namespace PYCONV_ISA_NS
}  // namespace pyconv
