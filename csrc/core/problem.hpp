// Plain data shared by the driver, the dispatch layer and every ISA's
// kernels.  Only data and `static inline` helpers live here: kernel TUs are
// compiled with different -m flags, so any non-static inline function in a
// shared header could be merged by the linker with an AVX-512 copy and then
// run on a CPU without AVX-512 (an ODR trap).
#pragma once
#include <cstdint>

namespace pyconv {

enum class Layout : int { NCHW = 0, NHWC = 1 };
enum class Activation : int { None = 0, Relu = 1, Relu6 = 2 };

// A fully normalised 2-D convolution: explicit asymmetric pads, the output
// size already derived and checked by the Python layer (and re-checked by
// the driver in 64-bit arithmetic).
struct ConvShape {
  int64_t n, c, h, w;       // input batch, channels, height, width
  int64_t oc, oh, ow;       // output channels, height, width
  int64_t kh, kw;           // kernel
  int64_t sh, sw;           // stride
  int64_t dh, dw;           // dilation
  int64_t pt, pb, pl, pr;   // pads: top, bottom, left, right
  int64_t groups;
  Layout layout;
  Activation act;
  bool has_bias;
};

// A fully normalised 2-D pooling (window kh x kw, explicit asymmetric pads,
// output size derived by the Python layer and re-checked by the driver).
// Global pools are the window H x W with one output pixel.
enum class PoolOp : int { Max = 0, Avg = 1 };

struct PoolShape {
  int64_t n, c, h, w;       // input (= output channels)
  int64_t oh, ow;           // output
  int64_t kh, kw;           // window
  int64_t sh, sw;           // stride
  int64_t dh, dw;           // dilation (1 for average pooling)
  int64_t pt, pb, pl, pr;   // pads: top, bottom, left, right
  Layout layout;
  PoolOp op;
  bool count_include_pad;   // average pooling: divide by the window clipped to the padded input
};

static inline int64_t icg(const ConvShape& s) { return s.c / s.groups; }
static inline int64_t ocg(const ConvShape& s) { return s.oc / s.groups; }

// The weight gradient with pixels in the vector lanes over padded planes
// (grad_weight_kernels.cpp): one group, stride 1, a kernel larger than 1x1
// and at most 16 output channels (a dW with few rows, where a GEMM's im2col
// packing costs as much as its products), either layout.  Single-channel
// NCHW layers included (groups == C_in == 1 would otherwise be depthwise).
static inline bool pixel_lane_grad_weight(const ConvShape& s) {
  return s.groups == 1 && s.sh == 1 && s.sw == 1 && s.kh * s.kw > 1 && s.oc <= 16;
}

}  // namespace pyconv
