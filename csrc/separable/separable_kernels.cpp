// Fused depthwise-separable convolution, compiled once per ISA: the
// depthwise output is produced one band of output rows of one image at a
// time into a per-thread buffer that stays in cache, and consumed there by
// the pointwise GEMM, which writes the band of the final output in place.
// The intermediate tensor never goes to memory.  Each band is one thread's
// work unit (depthwise band, then GEMM band, both single-threaded), so the
// band partition does not depend on the thread count and results are
// bitwise identical for any number of threads.
#include <cstdint>

#include "core/dispatch.hpp"
#include "core/problem.hpp"
#include "separable/bands.hpp"
#include "simd/kernel_util.hpp"

namespace pyconv {
namespace PYCONV_ISA_NS {
namespace {

// Intermediate band budget (rows x OW x C_mid of depthwise output per
// thread).  The 1x1 GEMM does almost all the work and re-reads its packed
// weight once per band, so bands are as big as the last-level cache allows:
// measured on MobileNet blocks (AVX2, 2 threads), 160 KiB bands (L2-sized)
// ran 0.66x the unfused pair, 512 KiB 1.03-1.57x, 2 MiB 1.16-1.50x.  Most
// MobileNet images fit one band; large ones are cut into several.
constexpr int64_t kBandBytes = int64_t(2048) << 10;

struct Plan {
  int64_t band_rows, bands, units;
  int64_t mid_bytes, dw_scratch, pw_scratch, per_thread;
  int64_t off_dw_w, off_pw_w, off_threads, total;
};

ConvShape band_shape(const ConvShape& pw, int64_t rows) {
  ConvShape b = pw;
  b.n = 1;
  b.h = b.oh = rows;
  return b;
}

Plan make_plan(const ConvShape& dw, const ConvShape& pw, int elem, int nt) {
  Plan p{};
  const int64_t row_bytes = dw.ow * dw.oc * elem;
  p.band_rows = min64(dw.oh, max64(1, kBandBytes / row_bytes));
  p.bands = ceil_div(dw.oh, p.band_rows);
  p.band_rows = ceil_div(dw.oh, p.bands);  // even bands
  p.units = dw.n * p.bands;
  p.mid_bytes = round_up(p.band_rows * row_bytes, kAlign);
  p.dw_scratch = round_up(depthwise_band_scratch_bytes(dw, elem), kAlign);
  // Bands have two heights (the last may be shorter), and the GEMM's
  // balanced blocking can give the shorter one the larger packing block.
  const int64_t last_rows = dw.oh - (p.bands - 1) * p.band_rows;
  p.pw_scratch = round_up(max64(pointwise_band_scratch_bytes(band_shape(pw, p.band_rows), elem),
                                pointwise_band_scratch_bytes(band_shape(pw, last_rows), elem)),
                          kAlign);
  p.per_thread = p.mid_bytes + p.dw_scratch + p.pw_scratch;
  int64_t off = 0;
  p.off_dw_w = off;
  off += round_up(kDepthwise.packed_weight_bytes(dw, elem), kAlign);
  p.off_pw_w = off;
  off += round_up(kGemm.packed_weight_bytes(pw, elem), kAlign);
  p.off_threads = off;
  p.total = off + nt * p.per_thread;
  return p;
}

int64_t separable_workspace_bytes(const ConvShape& dw, const ConvShape& pw, int elem_bytes, int nt) {
  return make_plan(dw, pw, elem_bytes, nt).total;
}

template <class T>
void separable(const ConvShape& dw, const ConvShape& pw, const T* x, const T* dw_w, const T* pw_w, const T* bias,
               T* y, void* workspace, int nt) {
  const Plan p = make_plan(dw, pw, sizeof(T), nt);
  char* ws = static_cast<char*>(workspace);
  T* dwp = reinterpret_cast<T*>(ws + p.off_dw_w);
  T* pwp = reinterpret_cast<T*>(ws + p.off_pw_w);
  if constexpr (sizeof(T) == 4) {
    kDepthwise.pack_f32(dw, dw_w, dwp, 1);
    kGemm.pack_f32(pw, pw_w, pwp, nt);
  } else {
    kDepthwise.pack_f64(dw, dw_w, dwp, 1);
    kGemm.pack_f64(pw, pw_w, pwp, nt);
  }
  const bool nchw = dw.layout == Layout::NCHW;
  const int64_t plane = dw.oh * dw.ow;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t u = 0; u < p.units; ++u) {
    const int64_t n = u / p.bands, oh0 = (u % p.bands) * p.band_rows, oh1 = min64(dw.oh, oh0 + p.band_rows);
    char* mine = ws + p.off_threads + thread_index() * p.per_thread;
    T* mid = reinterpret_cast<T*>(mine);
    depthwise_band(dw, x, dwp, n, oh0, oh1, mid, mine + p.mid_bytes);
    T* yb = nchw ? y + n * pw.oc * plane + oh0 * dw.ow : y + (n * dw.oh + oh0) * dw.ow * pw.oc;
    pointwise_band(band_shape(pw, oh1 - oh0), mid, pwp, bias, yb, plane, mine + p.mid_bytes + p.dw_scratch);
  }
}

}  // namespace

const SeparableKernels kSeparable = {&separable_workspace_bytes, &separable<float>, &separable<double>};

}  // namespace PYCONV_ISA_NS
}  // namespace pyconv
