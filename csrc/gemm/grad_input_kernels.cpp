// Input gradient of a convolution (groups 1) as one GEMM and a col2im,
// compiled once per ISA: for layers with few input channels (a network's
// first layer: RGB in, 7x7 stride 2), where the transposed problem's stride
// phases have C_in output channels each and the direct kernel, which
// vectorises over output channels, would fill 3 of 16 lanes.
//
// NCHW: cols (C_in*KH*KW x OH*OW) = W^T (C_in*KH*KW x C_out) * grad_y[n] (C_out x OH*OW)
// NHWC: cols (OH*OW x KH*KW*C_in) = grad_y[n] (OH*OW x C_out) * W^T (C_out x KH*KW*C_in)
// is a 1x1 convolution over grad_y read in place; each value of cols,
// (c, kh, kw) at output pixel (oh, ow), then adds into grad_x[n] at
// (oh*sh + kh*dh - pt, ow*sw + kw*dw - pl) of channel c.  Both run one band
// of output rows at a time on one thread, so cols stays in L2 (kBandBytes).
//
// Determinism: bands of kBandRows(s) output rows, whatever the thread count.
// A band adds into the input rows it reaches; bands are at least as tall as
// the kernel's reach over the stride, so a band shares input rows with its
// neighbours only, and the even bands run (in parallel) before the odd
// ones.  Every grad_x element therefore receives its band sums in a fixed
// order, and each band sum is taken in a fixed order (NCHW: per input row,
// kh then kw; NHWC: oh, kh, ow, kw): results are bitwise identical for any
// thread count.
#include <cstdint>
#include <cstring>

#include "core/dispatch.hpp"
#include "core/problem.hpp"
#include "separable/bands.hpp"
#include "simd/kernel_util.hpp"
#include "simd/vec.hpp"

namespace pyconv {
namespace PYCONV_ISA_NS {
namespace {

// cols band per thread: written by the GEMM and read once by col2im, so
// it should stay in L2 next to the GEMM's packing buffer.
constexpr int64_t kBandBytes = int64_t(256) << 10;

struct Plan {
  ConvShape pw;              // the 1x1 GEMM: C_out -> C_in*KH*KW over grad_y's pixels
  int64_t rows;              // C_in*KH*KW
  int64_t band, bands;       // output rows per band, bands per image
  int64_t margin, row_len;   // phase-split row buffer: per column phase, row_len elements
  int64_t cols_bytes, gemm_scratch, row_bytes, per_thread;
  int64_t off_wt, off_packed, off_threads, total;
};

Plan make_plan(const ConvShape& s, int elem, int nt) {
  Plan p{};
  p.rows = s.c * s.kh * s.kw;
  ConvShape& pw = p.pw;
  pw = s;
  pw.c = s.oc;
  pw.h = pw.oh = s.oh;
  pw.w = pw.ow = s.ow;
  pw.oc = p.rows;
  pw.kh = pw.kw = pw.sh = pw.sw = pw.dh = pw.dw = 1;
  pw.pt = pw.pb = pw.pl = pw.pr = 0;
  pw.groups = 1;
  pw.act = Activation::None;
  pw.has_bias = false;
  // Shortest band whose input rows meet its neighbours' only: band*sh >
  // (kh-1)*dh.  Taller while cols fits kBandBytes.
  const int64_t shortest = (s.kh - 1) * s.dh / s.sh + 1;
  const int64_t fits = kBandBytes / max64(1, p.rows * s.ow * elem);
  p.band = min64(s.oh, max64(shortest, fits));
  p.bands = ceil_div(s.oh, p.band);
  // Row buffer: input column iw = sw*j + phase; a kernel column kw puts
  // output column ow at j = ow + floor((kw*dw - pl) / sw) >= -margin.
  p.margin = ceil_div(s.pl, s.sw);
  const int64_t reach = ((s.kw - 1) * s.dw) / s.sw + 1;
  p.row_len = round_up(p.margin + max64(s.ow + reach, ceil_div(s.w, s.sw)) + 1, 16);
  p.cols_bytes = round_up(p.rows * p.band * s.ow * elem, kAlign);
  p.gemm_scratch = round_up(gemm_pixels_scratch_bytes(pw, elem), kAlign);
  p.row_bytes = s.layout == Layout::NCHW ? round_up(s.sw * p.row_len * elem, kAlign) : 0;
  p.per_thread = p.cols_bytes + p.gemm_scratch + p.row_bytes;
  int64_t off = 0;
  p.off_wt = off;
  off += round_up(p.rows * s.oc * elem, kAlign);
  p.off_packed = off;
  off += round_up(kGemm.packed_weight_bytes(pw, elem), kAlign);
  p.off_threads = off;
  p.total = off + nt * p.per_thread;
  return p;
}

template <class T>
inline void add_into(T* dst, const T* src, int64_t n) {
  using V = Vec<T>;
  int64_t i = 0;
  for (; i + V::N <= n; i += V::N) V::store(dst + i, V::add(V::load(dst + i), V::load(src + i)));
  if (i < n) {
    const int r = static_cast<int>(n - i);
    V::store_n(dst + i, V::add(V::load_n(dst + i, r), V::load_n(src + i, r)), r);
  }
}

// Adds band [oh0, oh1) of cols (rows (c, kh, kw), each (oh1-oh0) x OW,
// `ld` apart) into grad_x[n]: per input row, the contributions gathered in
// a buffer split by column phase (unit-stride adds at any stride), then
// added into the row in one pass.
template <class T>
void col2im_band(const ConvShape& s, const Plan& p, const T* cols, int64_t ld, int64_t n, int64_t oh0,
                 int64_t oh1, T* dx, T* rowbuf) {
  const int64_t ih_lo = max64(0, oh0 * s.sh - s.pt);
  const int64_t ih_hi = min64(s.h, (oh1 - 1) * s.sh + (s.kh - 1) * s.dh - s.pt + 1);
  const int64_t L = p.row_len, M = p.margin;
  for (int64_t c = 0; c < s.c; ++c) {
    T* plane = dx + (n * s.c + c) * s.h * s.w;
    for (int64_t ih = ih_lo; ih < ih_hi; ++ih) {
      bool any = false;
      for (int64_t kh = 0; kh < s.kh; ++kh) {
        const int64_t t = ih + s.pt - kh * s.dh;
        if (t < 0 || t % s.sh) continue;
        const int64_t oh = t / s.sh;
        if (oh < oh0 || oh >= oh1) continue;
        if (!any) std::memset(rowbuf, 0, s.sw * L * sizeof(T));
        any = true;
        for (int64_t kw = 0; kw < s.kw; ++kw) {
          const T* src = cols + ((c * s.kh + kh) * s.kw + kw) * ld + (oh - oh0) * s.ow;
          const int64_t off = kw * s.dw - s.pl;
          const int64_t phase = ((off % s.sw) + s.sw) % s.sw;
          add_into(rowbuf + phase * L + M + (off - phase) / s.sw, src, s.ow);
        }
      }
      if (!any) continue;
      T* row = plane + ih * s.w;
      if (s.sw == 1) {
        add_into(row, rowbuf + M, s.w);
      } else {
        for (int64_t iw = 0; iw < s.w; ++iw) row[iw] += rowbuf[(iw % s.sw) * L + M + iw / s.sw];
      }
    }
  }
}

// The col2im of NHWC: a pixel's row of cols holds (kh, kw, c) like the
// weight, so for each kh its KW*C values land on one input row, contiguous
// when dw == 1 (the columns a window covers), C apart per kw otherwise.
// Added straight into dx in (oh, kh, ow, kw) order.
template <class T>
void col2im_band_nhwc(const ConvShape& s, const Plan& p, const T* cols, int64_t n, int64_t oh0, int64_t oh1,
                      T* dx) {
  const int64_t C = s.c, KW = s.kw;
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    for (int64_t kh = 0; kh < s.kh; ++kh) {
      const int64_t ih = oh * s.sh + kh * s.dh - s.pt;
      if (ih < 0 || ih >= s.h) continue;
      T* row = dx + (n * s.h + ih) * s.w * C;
      for (int64_t ow = 0; ow < s.ow; ++ow) {
        const T* src = cols + ((oh - oh0) * s.ow + ow) * p.rows + kh * KW * C;
        const int64_t iw0 = ow * s.sw - s.pl;  // input column of kw = 0
        // kw with 0 <= iw0 + kw*dw < W
        const int64_t lo = iw0 >= 0 ? 0 : ceil_div(-iw0, s.dw);
        const int64_t hi = min64(KW, iw0 >= s.w ? 0 : (s.w - 1 - iw0) / s.dw + 1);
        if (lo >= hi) continue;
        if (s.dw == 1) {
          add_into(row + (iw0 + lo) * C, src + lo * C, (hi - lo) * C);
        } else {
          for (int64_t kw = lo; kw < hi; ++kw) add_into(row + (iw0 + kw * s.dw) * C, src + kw * C, C);
        }
      }
    }
  }
}

int64_t col2im_workspace_bytes(const ConvShape& s, int elem_bytes, int nt) {
  return make_plan(s, elem_bytes, nt).total;
}

template <class T>
void col2im_grad_input(const ConvShape& s, const T* w, const T* dy, T* dx, void* workspace, int nt) {
  const Plan p = make_plan(s, sizeof(T), nt);
  char* ws = static_cast<char*>(workspace);
  T* wt = reinterpret_cast<T*>(ws + p.off_wt);
  T* packed = reinterpret_cast<T*>(ws + p.off_packed);
  // W^T: NCHW's A is (C_in*KH*KW) x C_out, from OIHW's (C_out, C_in*KH*KW);
  // NHWC's B is C_out x (KH*KW*C_in), from HWIO's (KH*KW*C_in, C_out).
  if (s.layout == Layout::NCHW)
    transpose_copy(w, p.rows, wt, s.oc, s.oc, p.rows);
  else
    transpose_copy(w, s.oc, wt, p.rows, p.rows, s.oc);
  if constexpr (sizeof(T) == 4)
    kGemm.pack_f32(p.pw, wt, packed, 1);
  else
    kGemm.pack_f64(p.pw, wt, packed, 1);
  const bool nchw = s.layout == Layout::NCHW;
  const int64_t image = s.c * s.h * s.w;
  const int64_t per_parity[2] = {s.n * ceil_div(p.bands, 2), s.n * (p.bands / 2)};
#pragma omp parallel num_threads(nt)
  {
    char* mine = ws + p.off_threads + thread_index() * p.per_thread;
    T* cols = reinterpret_cast<T*>(mine);
    T* rowbuf = reinterpret_cast<T*>(mine + p.cols_bytes + p.gemm_scratch);
#pragma omp for schedule(static)
    for (int64_t q = 0; q < s.n; ++q) std::memset(dx + q * image, 0, image * sizeof(T));
    for (int parity = 0; parity < 2; ++parity) {
      const int64_t half = ceil_div(p.bands - parity, 2);
#pragma omp for schedule(static)
      for (int64_t u = 0; u < per_parity[parity]; ++u) {
        const int64_t n = u / half, b = 2 * (u % half) + parity;
        const int64_t oh0 = b * p.band, oh1 = min64(s.oh, oh0 + p.band);
        const int64_t np = (oh1 - oh0) * s.ow;
        gemm_pixels(p.pw, dy, packed, n, oh0 * s.ow, np, cols, nchw ? np : p.rows, mine + p.cols_bytes);
        if (nchw)
          col2im_band(s, p, cols, np, n, oh0, oh1, dx, rowbuf);
        else
          col2im_band_nhwc(s, p, cols, n, oh0, oh1, dx);
      }
    }
  }
}

}  // namespace

const GradInputKernels kCol2imGradInput = {&col2im_workspace_bytes, &col2im_grad_input<float>,
                                           &col2im_grad_input<double>};

}  // namespace PYCONV_ISA_NS
}  // namespace pyconv
