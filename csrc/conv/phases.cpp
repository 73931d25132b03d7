// Interleaving of stride phases: the input gradient of a strided convolution
// is computed as sh*sw stride-1 convolutions, one per phase of the input
// grid (pyconv/_grad.py); this writes them into their places, or zeros for
// a phase no kernel tap reaches.  Memory-bound: one pass, planes (NCHW) or
// image rows (NHWC) split over threads.
#include "conv/conv.hpp"

#include <cstring>
#include <vector>

namespace pyconv {

namespace {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One row of `w` outputs of an NCHW plane from the row's sw phase rows.
template <class T>
void interleave_row(T* dst, const T* const* src, int64_t w, int64_t sw) {
  if (sw == 1) {
    if (src[0])
      std::memcpy(dst, src[0], w * sizeof(T));
    else
      std::memset(dst, 0, w * sizeof(T));
    return;
  }
  if (sw == 2 && src[0] && src[1]) {
    const int64_t pairs = w / 2;
    const T* a = src[0];
    const T* b = src[1];
    for (int64_t v = 0; v < pairs; ++v) {
      dst[2 * v] = a[v];
      dst[2 * v + 1] = b[v];
    }
    if (w % 2) dst[w - 1] = a[pairs];
    return;
  }
  for (int64_t f = 0; f < sw && f < w; ++f) {
    const T* s = src[f];
    const int64_t count = ceil_div(w - f, sw);
    for (int64_t v = 0; v < count; ++v) dst[v * sw + f] = s ? s[v] : T(0);
  }
}

}  // namespace

template <class T>
void interleave_phases(const PhaseLayout& p, const T* const* phases, T* dx, int nthreads) {
  const int64_t pw = p.sw < p.w ? p.sw : p.w;
  // A memory-bound copy: a thread per 64K elements at most (waking a
  // second thread costs more than copying a small gradient).
  const int64_t useful = p.n * p.c * p.h * p.w >> 16;
  if (useful < nthreads) nthreads = useful < 1 ? 1 : static_cast<int>(useful);
  if (p.layout == Layout::NCHW) {
    const int64_t planes = p.n * p.c;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t q = 0; q < planes; ++q) {
      std::vector<const T*> row_src(static_cast<size_t>(pw));
      for (int64_t ih = 0; ih < p.h; ++ih) {
        const int64_t a = ih % p.sh, u = ih / p.sh;
        for (int64_t b = 0; b < pw; ++b) {
          const T* base = phases[a * pw + b];
          const int64_t ua = ceil_div(p.h - a, p.sh), vb = ceil_div(p.w - b, p.sw);
          row_src[b] = base ? base + (q * ua + u) * vb : nullptr;
        }
        interleave_row(dx + (q * p.h + ih) * p.w, row_src.data(), p.w, pw);
      }
    }
    return;
  }
  // NHWC: per image row, each of the pw phase rows' pixels (C values) to
  // every pw-th pixel; a few channels are copied inline (a memcpy call per
  // 3-channel pixel cost more than the copy: 8x160x160x3 0.5 -> 0.1 ms).
  const int64_t rows = p.n * p.h, C = p.c;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = r / p.h, ih = r % p.h, a = ih % p.sh, u = ih / p.sh;
    const int64_t ua = ceil_div(p.h - a, p.sh);
    T* row = dx + (n * p.h + ih) * p.w * C;
    for (int64_t b = 0; b < pw; ++b) {
      const int64_t vb = ceil_div(p.w - b, p.sw);  // pixels of this phase in the row
      const T* base = phases[a * pw + b];
      T* dst = row + b * C;
      const int64_t step = p.sw * C;
      if (!base) {
        for (int64_t v = 0; v < vb; ++v) std::memset(dst + v * step, 0, C * sizeof(T));
        continue;
      }
      const T* src = base + (n * ua + u) * vb * C;
      if (C >= 16) {
        for (int64_t v = 0; v < vb; ++v) std::memcpy(dst + v * step, src + v * C, C * sizeof(T));
      } else {
        for (int64_t v = 0; v < vb; ++v)
          for (int64_t c = 0; c < C; ++c) dst[v * step + c] = src[v * C + c];
      }
    }
  }
}

template void interleave_phases<float>(const PhaseLayout&, const float* const*, float*, int);
template void interleave_phases<double>(const PhaseLayout&, const double* const*, double*, int);

}  // namespace pyconv
