// Small helpers shared by the kernel families, compiled into each ISA's
// namespace (like vec.hpp) so every ISA object has its own copies.
#pragma once
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/problem.hpp"
#include "simd/vec.hpp"

namespace pyconv {
namespace PYCONV_ISA_NS {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Every workspace region starts on a cache line.
constexpr int64_t kAlign = 64;

// Index of the calling thread in the current OpenMP team (0 without OpenMP):
// picks the thread's own scratch buffer.
inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

#if defined(PYCONV_ISA_avx2) || defined(PYCONV_ISA_avx512)
// 8x8 float / 4x4 double block transposed in ymm registers: rows i < B of
// s (stride ss), columns j < nc; column j leaves as one vector through
// store(j, v).  Columns past nc are not read (masked loads).
template <class Store>
__attribute__((always_inline)) inline void transpose_block_with(const float* s, int64_t ss, int64_t nc,
                                                                Store&& store) {
  __m256 r[8];
  if (nc == 8) {
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(s + i * ss);
  } else {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(nc)),
                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int i = 0; i < 8; ++i) r[i] = _mm256_maskload_ps(s + i * ss, m);
  }
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);      // a0 b0 a1 b1 | a4 b4 a5 b5
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);  // a2 b2 a3 b3 | a6 b6 a7 b7
  }
  for (int h = 0; h < 8; h += 4) {  // rows h..h+3: columns (0,4) (1,5) (2,6) (3,7) per lane half
    u[h] = _mm256_shuffle_ps(t[h], t[h + 2], 0x44);
    u[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], 0xEE);
    u[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0x44);
    u[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0xEE);
  }
  auto column = [&](int j) {
    const int q = j & 3;
    return j < 4 ? _mm256_permute2f128_ps(u[q], u[q + 4], 0x20) : _mm256_permute2f128_ps(u[q], u[q + 4], 0x31);
  };
  if (nc == 8) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) store(j, column(j));
  } else {
    for (int j = 0; j < nc; ++j) store(j, column(j));
  }
}

template <class Store>
__attribute__((always_inline)) inline void transpose_block_with(const double* s, int64_t ss, int64_t nc,
                                                                Store&& store) {
  __m256d r[4];
  if (nc == 4) {
    for (int i = 0; i < 4; ++i) r[i] = _mm256_loadu_pd(s + i * ss);
  } else {
    const __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(nc), _mm256_setr_epi64x(0, 1, 2, 3));
    for (int i = 0; i < 4; ++i) r[i] = _mm256_maskload_pd(s + i * ss, m);
  }
  const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
  const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
  const __m256d o[4] = {_mm256_permute2f128_pd(t0, t2, 0x20), _mm256_permute2f128_pd(t1, t3, 0x20),
                        _mm256_permute2f128_pd(t0, t2, 0x31), _mm256_permute2f128_pd(t1, t3, 0x31)};
  for (int j = 0; j < nc; ++j) store(j, o[j]);
}

inline void store_block_column(float* d, __m256 v) { _mm256_storeu_ps(d, v); }
inline void store_block_column(double* d, __m256d v) { _mm256_storeu_pd(d, v); }

// The block into d: column j to d[j * ds + i] (i < B), columns past nc
// neither read nor written.
inline void transpose_block(const float* s, int64_t ss, float* d, int64_t ds, int64_t nc) {
  transpose_block_with(s, ss, nc, [&](int j, __m256 v) { _mm256_storeu_ps(d + j * ds, v); });
}

inline void transpose_block(const double* s, int64_t ss, double* d, int64_t ds, int64_t nc) {
  transpose_block_with(s, ss, nc, [&](int j, __m256d v) { _mm256_storeu_pd(d + j * ds, v); });
}
#endif

// dst[j * ds + i] = src[i * ss + j] for i < rows, j < cols: a strided
// matrix transposed into another (the NCHW <-> NHWC layout changes).  Blocks
// of 32 bytes square go through registers on AVX2/AVX-512; the rows left
// over (and every row on the generic path) are copied eight at a time, so
// the writes stay contiguous.
template <class T>
inline void transpose_copy(const T* src, int64_t ss, T* dst, int64_t ds, int64_t rows, int64_t cols) {
  int64_t i = 0;
#if defined(PYCONV_ISA_avx2) || defined(PYCONV_ISA_avx512)
  // Rows in groups of one cache line of dst (two blocks for float): the
  // blocks of a group are written back to back, so each dst line is
  // completed at once (2.3x faster than row blocks outermost on 1024x14).
  constexpr int64_t B = 32 / sizeof(T), L = 64 / sizeof(T);
  const int64_t full = rows - rows % B;
  for (; i < full; i += L) {
    const int64_t i1 = min64(i + L, full);
    for (int64_t j = 0; j < cols; j += B)
      for (int64_t k = i; k < i1; k += B)
        transpose_block(src + k * ss + j, ss, dst + j * ds + k, ds, min64(B, cols - j));
  }
  i = full;
#endif
  for (; i < rows; i += 8) {
    const int64_t i1 = min64(i + 8, rows);
    for (int64_t j = 0; j < cols; ++j)
      for (int64_t k = i; k < i1; ++k) dst[j * ds + k] = src[k * ss + j];
  }
}

// NCHW planes (planes x h x w) -> planes of hp x wp, the input at row pt,
// column pl, zeros around it, then `slack` zeros after the last plane.
template <class T>
void pad_planes(const T* x, int64_t planes, int64_t h, int64_t w, int64_t hp, int64_t wp, int64_t pt,
                int64_t pl, int64_t slack, T* dst, int nt) {
  const int64_t plane = hp * wp;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < planes; ++i) {
    const T* src = x + i * h * w;
    for (int64_t r = 0; r < hp; ++r) {
      T* d = dst + i * plane + r * wp;
      const int64_t ih = r - pt;
      if (ih < 0 || ih >= h) {
        for (int64_t j = 0; j < wp; ++j) d[j] = T(0);
        continue;
      }
      for (int64_t j = 0; j < pl; ++j) d[j] = T(0);
      for (int64_t j = 0; j < w; ++j) d[pl + j] = src[ih * w + j];
      for (int64_t j = pl + w; j < wp; ++j) d[j] = T(0);
    }
  }
  for (int64_t j = 0; j < slack; ++j) dst[planes * plane + j] = T(0);
}

// NHWC images (n x h x w x c) -> NCHW planes of hp x wp, as pad_planes:
// each plane's margins zeroed, then each input row transposed into its c
// planes in register blocks (transpose_copy).
template <class T>
void pad_planes_nhwc(const T* x, int64_t n, int64_t h, int64_t w, int64_t c, int64_t hp, int64_t wp, int64_t pt,
                     int64_t pl, int64_t slack, T* dst, int nt) {
  const int64_t plane = hp * wp;
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n * c; ++i)
      for (int64_t r = 0; r < hp; ++r) {
        T* d = dst + i * plane + r * wp;
        const bool inside = r >= pt && r < pt + h;
        for (int64_t j = 0; j < (inside ? pl : wp); ++j) d[j] = T(0);
        if (inside)
          for (int64_t j = pl + w; j < wp; ++j) d[j] = T(0);
      }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n * h; ++r) {
      const int64_t img = r / h, ih = r % h;
      transpose_copy(x + r * w * c, c, dst + img * c * plane + (ih + pt) * wp + pl, plane, w, c);
    }
  }
  for (int64_t j = 0; j < slack; ++j) dst[n * c * plane + j] = T(0);
}

// Threads in the current OpenMP team (1 without OpenMP).
inline int thread_count() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// The lanes of v summed in lane order, lane 0 first (the rounding of a
// scalar loop over them, so a result does not depend on how it is called).
template <class T, class V = Vec<T>>
inline T sum_lanes(typename V::R v) {
  alignas(64) T lanes[V::N];
  V::store(lanes, v);
  T sum = lanes[0];
  for (int l = 1; l < V::N; ++l) sum += lanes[l];
  return sum;
}

// The first n (<= 2N) values of (a0 b0 a1 b1 ...) to p, through a stack
// pair and masked stores: a row's last, partial pair of vectors.
template <class T>
inline void store_interleaved_n(T* p, typename Vec<T>::R a, typename Vec<T>::R b, int n) {
  using V = Vec<T>;
  alignas(64) T pair[2 * V::N];
  V::store_interleaved(pair, a, b);
  V::store_n(p, V::load(pair), n < V::N ? n : V::N);
  if (n > V::N) V::store_n(p + V::N, V::load(pair + V::N), n - V::N);
}

// The fused activation on a vector of type V (NaN stays NaN: see vec.hpp).
template <class V>
inline typename V::R activate_in(typename V::R v, Activation act) {
  if (act == Activation::Relu) return V::relu(v);
  if (act == Activation::Relu6) return V::relu6(v);
  return v;
}

template <class T>
inline typename Vec<T>::R activate(typename Vec<T>::R v, Activation act) {
  return activate_in<Vec<T>>(v, act);
}

}  // namespace PYCONV_ISA_NS
}  // namespace pyconv
