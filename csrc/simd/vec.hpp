// Minimal SIMD vector wrappers, one set per ISA, selected by the
// PYCONV_ISA_<name> macro of the object library being compiled.  Everything
// lives in pyconv::PYCONV_ISA_NS so that the copies compiled with different
// -m flags are distinct entities (no cross-ISA ODR merging by the linker).
//
// NaN rule for the activations: max/min intrinsics return their second
// operand when either is NaN, so the value under test goes second and a NaN
// pre-activation stays NaN, exactly like np.maximum/np.minimum.
#pragma once
#include <cstdint>
#if defined(PYCONV_ISA_avx2) || defined(PYCONV_ISA_avx512)
#include <immintrin.h>
#endif

namespace pyconv {
namespace PYCONV_ISA_NS {

template <class T>
struct Vec;

#if defined(PYCONV_ISA_generic)
// Portable fallback: fixed-size arrays the compiler may auto-vectorise for
// the baseline target (SSE2 on x86-64, NEON on aarch64).  No FMA contraction
// (ISO mode), so results are the same on every CPU.
template <class T>
struct Vec {
  static constexpr int N = 16 / sizeof(T);
  struct R { T v[N]; };
  static R zero() { R r; for (int i = 0; i < N; ++i) r.v[i] = T(0); return r; }
  static R set1(T a) { R r; for (int i = 0; i < N; ++i) r.v[i] = a; return r; }
  static R load(const T* p) { R r; for (int i = 0; i < N; ++i) r.v[i] = p[i]; return r; }
  static R load_n(const T* p, int n) { R r = zero(); for (int i = 0; i < n; ++i) r.v[i] = p[i]; return r; }
  static void store(T* p, R a) { for (int i = 0; i < N; ++i) p[i] = a.v[i]; }
  static void store_n(T* p, R a, int n) { for (int i = 0; i < n; ++i) p[i] = a.v[i]; }
  // Lanes exchanged in groups of w (a power of two below N): lane i gets
  // lane i ^ w.  The steps of a horizontal reduction tree.
  static R swap(R a, int w) { R r; for (int i = 0; i < N; ++i) r.v[i] = a.v[i ^ w]; return r; }
  static T first(R a) { return a.v[0]; }
  // Small non-negative integers (0..255) as bytes: the first n lanes stored
  // to / loaded from p[0..n) (nothing else touched), other lanes zero.
  static void store_u8(uint8_t* p, R a, int n) { for (int i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(a.v[i]); }
  static R load_u8(const uint8_t* p, int n) { R r = zero(); for (int i = 0; i < n; ++i) r.v[i] = T(p[i]); return r; }
  // Lanes [lo, hi) from p[lo..hi), the others `fill`; lanes outside are not
  // read (p itself may point before the data).  0 <= lo <= hi <= N.
  static R load_fill(const T* p, int lo, int hi, T fill) {
    R r;
    for (int i = 0; i < N; ++i) r.v[i] = i >= lo && i < hi ? p[i] : fill;
    return r;
  }
  static R fma(R a, R b, R c) { R r; for (int i = 0; i < N; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i]; return r; }
  static R add(R a, R b) { R r; for (int i = 0; i < N; ++i) r.v[i] = a.v[i] + b.v[i]; return r; }
  static R div(R a, R b) { R r; for (int i = 0; i < N; ++i) r.v[i] = a.v[i] / b.v[i]; return r; }
  static R mul(R a, R b) { R r; for (int i = 0; i < N; ++i) r.v[i] = a.v[i] * b.v[i]; return r; }
  static R load_even(const T* p) { R r; for (int i = 0; i < N; ++i) r.v[i] = p[2 * i]; return r; }
  // The even lanes of a then those of b (load_even of registers).
  static R even(R a, R b) { R r; for (int i = 0; i < N; ++i) r.v[i] = i < N / 2 ? a.v[2 * i] : b.v[2 * i - N]; return r; }
  // Max pooling's step over NaN-free values: v where v > acc, else acc (so
  // the first of equal values stays, as with take/blend).
  static R max_step(R v, R acc) { R r; for (int i = 0; i < N; ++i) r.v[i] = v.v[i] > acc.v[i] ? v.v[i] : acc.v[i]; return r; }
  // Max pooling's step: lanes where v beats acc (v > acc, or v is NaN and
  // acc is not: the first NaN wins, then stays).
  struct M { bool b[N]; };
  static M take(R v, R acc) {
    M m;
    for (int i = 0; i < N; ++i) m.b[i] = acc.v[i] == acc.v[i] && !(v.v[i] <= acc.v[i]);
    return m;
  }
  static R blend(R a, R b, M m) { R r; for (int i = 0; i < N; ++i) r.v[i] = m.b[i] ? b.v[i] : a.v[i]; return r; }
  static M eq(R a, R b) { M m; for (int i = 0; i < N; ++i) m.b[i] = a.v[i] == b.v[i]; return m; }
  // Whether any of the first n lanes of m is set.
  static bool any_n(M m, int n) { bool r = false; for (int i = 0; i < n; ++i) r |= m.b[i]; return r; }
  // Lane i of the mask is bit i of `bits`; load_keep: p's lanes where m is
  // set, zeros elsewhere (p[0..N) must be readable: some ISAs load them all).
  static M lanes_mask(unsigned bits) { M m; for (int i = 0; i < N; ++i) m.b[i] = (bits >> i) & 1u; return m; }
  static R load_keep(const T* p, M m) { R r; for (int i = 0; i < N; ++i) r.v[i] = m.b[i] ? p[i] : T(0); return r; }
  // (a0 b0 a1 b1 ...) to p[0 .. 2N)
  static void store_interleaved(T* p, R a, R b) {
    for (int i = 0; i < N; ++i) { p[2 * i] = a.v[i]; p[2 * i + 1] = b.v[i]; }
  }
  static R relu(R a) { R r; for (int i = 0; i < N; ++i) r.v[i] = a.v[i] < T(0) ? T(0) : a.v[i]; return r; }
  static R relu6(R a) {
    R r;
    for (int i = 0; i < N; ++i) r.v[i] = a.v[i] < T(0) ? T(0) : (a.v[i] > T(6) ? T(6) : a.v[i]);
    return r;
  }
};
#endif

#if defined(PYCONV_ISA_avx2)
static inline __m256i avx2_mask32(int n) {
  alignas(32) static const int32_t tbl[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tbl + 8 - n));
}
static inline __m256i avx2_mask64(int n) {
  alignas(32) static const int64_t tbl[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tbl + 4 - n));
}

template <>
struct Vec<float> {
  static constexpr int N = 8;
  using R = __m256;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float a) { return _mm256_set1_ps(a); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static R load_n(const float* p, int n) { return _mm256_maskload_ps(p, avx2_mask32(n)); }
  static void store(float* p, R a) { _mm256_storeu_ps(p, a); }
  static void store_n(float* p, R a, int n) { _mm256_maskstore_ps(p, avx2_mask32(n), a); }
  static R swap(R a, int w) {
    return w == 4 ? _mm256_permute2f128_ps(a, a, 1) : w == 2 ? _mm256_permute_ps(a, 0x4E) : _mm256_permute_ps(a, 0xB1);
  }
  static float first(R a) { return _mm256_cvtss_f32(a); }
  static void store_u8(uint8_t* p, R a, int n) {
    const __m256i i = _mm256_cvttps_epi32(a);
    const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    const __m128i b = _mm_packus_epi16(w, w);
    if (n == 8) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(p), b);
    } else {
      alignas(16) uint8_t t[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(t), b);
      for (int k = 0; k < n; ++k) p[k] = t[k];
    }
  }
  static R load_u8(const uint8_t* p, int n) {
    alignas(16) uint8_t t[16] = {};
    if (n == 8) return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    for (int k = 0; k < n; ++k) t[k] = p[k];
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(t))));
  }
  static R load_fill(const float* p, int lo, int hi, float fill) {
    const __m256i m = _mm256_andnot_si256(avx2_mask32(lo), avx2_mask32(hi));
    return _mm256_blendv_ps(set1(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R div(R a, R b) { return _mm256_div_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R even(R a, R b) {
    const __m256 s = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static R load_even(const float* p) { return even(load(p), load(p + 8)); }
  static R max_step(R v, R acc) { return _mm256_max_ps(v, acc); }  // acc on ties and NaN
  using M = __m256;
  static M take(R v, R acc) {
    return _mm256_and_ps(_mm256_cmp_ps(v, acc, _CMP_NLE_UQ), _mm256_cmp_ps(acc, acc, _CMP_ORD_Q));
  }
  static R blend(R a, R b, M m) { return _mm256_blendv_ps(a, b, m); }
  static M eq(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static bool any_n(M m, int n) { return (_mm256_movemask_ps(m) & ((1 << n) - 1)) != 0; }
  static M lanes_mask(unsigned bits) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), bit), bit));
  }
  static R load_keep(const float* p, M m) { return _mm256_and_ps(load(p), m); }
  static void store_interleaved(float* p, R a, R b) {
    const __m256 lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);  // a0 b0 a1 b1 | a4 b4 a5 b5 ...
    store(p, _mm256_permute2f128_ps(lo, hi, 0x20));
    store(p + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  static R relu(R a) { return _mm256_max_ps(zero(), a); }
  static R relu6(R a) { return _mm256_min_ps(set1(6.0f), relu(a)); }
};

template <>
struct Vec<double> {
  static constexpr int N = 4;
  using R = __m256d;
  static R zero() { return _mm256_setzero_pd(); }
  static R set1(double a) { return _mm256_set1_pd(a); }
  static R load(const double* p) { return _mm256_loadu_pd(p); }
  static R load_n(const double* p, int n) { return _mm256_maskload_pd(p, avx2_mask64(n)); }
  static void store(double* p, R a) { _mm256_storeu_pd(p, a); }
  static void store_n(double* p, R a, int n) { _mm256_maskstore_pd(p, avx2_mask64(n), a); }
  static R swap(R a, int w) { return w == 2 ? _mm256_permute2f128_pd(a, a, 1) : _mm256_permute_pd(a, 0x5); }
  static double first(R a) { return _mm256_cvtsd_f64(a); }
  static void store_u8(uint8_t* p, R a, int n) {
    const __m128i i = _mm256_cvttpd_epi32(a);
    const __m128i w = _mm_packus_epi32(i, i);
    alignas(16) uint8_t t[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(t), _mm_packus_epi16(w, w));
    for (int k = 0; k < n; ++k) p[k] = t[k];
  }
  static R load_u8(const uint8_t* p, int n) {
    int32_t v = 0;
    for (int k = 0; k < n; ++k) v |= int32_t(p[k]) << (8 * k);
    return _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(v)));
  }
  static R load_fill(const double* p, int lo, int hi, double fill) {
    const __m256i m = _mm256_andnot_si256(avx2_mask64(lo), avx2_mask64(hi));
    return _mm256_blendv_pd(set1(fill), _mm256_maskload_pd(p, m), _mm256_castsi256_pd(m));
  }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static R div(R a, R b) { return _mm256_div_pd(a, b); }
  static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static R even(R a, R b) { return _mm256_permute4x64_pd(_mm256_unpacklo_pd(a, b), _MM_SHUFFLE(3, 1, 2, 0)); }
  static R load_even(const double* p) { return even(load(p), load(p + 4)); }
  static R max_step(R v, R acc) { return _mm256_max_pd(v, acc); }
  using M = __m256d;
  static M take(R v, R acc) {
    return _mm256_and_pd(_mm256_cmp_pd(v, acc, _CMP_NLE_UQ), _mm256_cmp_pd(acc, acc, _CMP_ORD_Q));
  }
  static R blend(R a, R b, M m) { return _mm256_blendv_pd(a, b, m); }
  static M eq(R a, R b) { return _mm256_cmp_pd(a, b, _CMP_EQ_OQ); }
  static bool any_n(M m, int n) { return (_mm256_movemask_pd(m) & ((1 << n) - 1)) != 0; }
  static M lanes_mask(unsigned bits) {
    const __m256i bit = _mm256_setr_epi64x(1, 2, 4, 8);
    return _mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(bits), bit), bit));
  }
  static R load_keep(const double* p, M m) { return _mm256_and_pd(load(p), m); }
  static void store_interleaved(double* p, R a, R b) {
    const __m256d lo = _mm256_unpacklo_pd(a, b), hi = _mm256_unpackhi_pd(a, b);  // a0 b0 | a2 b2, a1 b1 | a3 b3
    store(p, _mm256_permute2f128_pd(lo, hi, 0x20));
    store(p + 4, _mm256_permute2f128_pd(lo, hi, 0x31));
  }
  static R relu(R a) { return _mm256_max_pd(zero(), a); }
  static R relu6(R a) { return _mm256_min_pd(set1(6.0), relu(a)); }
};
#endif

#if defined(PYCONV_ISA_avx512)
template <>
struct Vec<float> {
  static constexpr int N = 16;
  using R = __m512;
  static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(float a) { return _mm512_set1_ps(a); }
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static R load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  // Lanes of bit mask m (zero elsewhere; nothing outside m is read).
  static R load_mask(const float* p, unsigned m) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p); }
  static void store(float* p, R a) { _mm512_storeu_ps(p, a); }
  static void store_n(float* p, R a, int n) { _mm512_mask_storeu_ps(p, mask(n), a); }
  static R swap(R a, int w) {
    return w == 8 ? _mm512_shuffle_f32x4(a, a, 0x4E)
           : w == 4 ? _mm512_shuffle_f32x4(a, a, 0xB1)
           : w == 2 ? _mm512_permute_ps(a, 0x4E) : _mm512_permute_ps(a, 0xB1);
  }
  static float first(R a) { return _mm512_cvtss_f32(a); }
  static void store_u8(uint8_t* p, R a, int n) { _mm512_mask_cvtepi32_storeu_epi8(p, mask(n), _mm512_cvttps_epi32(a)); }
  static R load_u8(const uint8_t* p, int n) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask(n), p)));
  }
  static R load_fill(const float* p, int lo, int hi, float fill) {
    return _mm512_mask_loadu_ps(set1(fill), static_cast<__mmask16>(mask(hi) & ~mask(lo)), p);
  }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R div(R a, R b) { return _mm512_div_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R even(R a, R b) {
    const __m512i idx = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    return _mm512_permutex2var_ps(a, idx, b);
  }
  static R load_even(const float* p) { return even(load(p), load(p + 16)); }
  // The odd lanes of a | b, zero outside m (as even for the even ones).
  static R odd(R a, R b, __mmask16 m = 0xFFFF) {
    const __m512i idx = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_maskz_permutex2var_ps(m, a, idx, b);
  }
  static R even_in(R a, R b, __mmask16 m) {  // even, zero outside m
    const __m512i idx = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    return _mm512_maskz_permutex2var_ps(m, a, idx, b);
  }
  static R max_step(R v, R acc) { return _mm512_max_ps(v, acc); }
  using M = __mmask16;
  static M take(R v, R acc) {
    return static_cast<M>(_mm512_cmp_ps_mask(v, acc, _CMP_NLE_UQ) & _mm512_cmp_ps_mask(acc, acc, _CMP_ORD_Q));
  }
  static R blend(R a, R b, M m) { return _mm512_mask_blend_ps(m, a, b); }
  static M eq(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static bool any_n(M m, int n) { return (static_cast<unsigned>(m) & ((1u << n) - 1)) != 0; }
  static M lanes_mask(unsigned bits) { return static_cast<M>(bits); }
  static R load_keep(const float* p, M m) { return _mm512_maskz_loadu_ps(m, p); }
  static R keep(M m, R a) { return _mm512_maskz_mov_ps(m, a); }  // a's lanes of m, zero elsewhere
  static void store_keep(float* p, R a, M m) { _mm512_mask_storeu_ps(p, m, a); }  // only the lanes of m
  // Lanes [O, O + N) of the concatenation lo | mid | hi, counted from mid's
  // first lane (-N <= O <= N): a shifted read of three consecutive vectors
  // in registers.  Masked: lanes outside m are zero.
  template <int O, bool Masked>
  static R window(M m, R lo, R mid, R hi) {
    static_assert(-N <= O && O <= N, "a window within lo | mid | hi");
    if constexpr (O == 0 || O == N || O == -N) {
      const R a = O == 0 ? mid : O == N ? hi : lo;
      if constexpr (Masked) return _mm512_maskz_mov_ps(m, a);
      else return a;
    } else {
      const __m512i a = _mm512_castps_si512(O > 0 ? hi : mid), b = _mm512_castps_si512(O > 0 ? mid : lo);
      constexpr int k = O > 0 ? O : N + O;
      if constexpr (Masked) return _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(m, a, b, k));
      else return _mm512_castsi512_ps(_mm512_alignr_epi32(a, b, k));
    }
  }
  static void stream(float* p, R a) { _mm512_stream_ps(p, a); }  // p 64-byte aligned
  static void store_interleaved(float* p, R a, R b) {
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    store(p, _mm512_permutex2var_ps(a, lo, b));
    store(p + 16, _mm512_permutex2var_ps(a, hi, b));
  }
  static R relu(R a) { return _mm512_max_ps(zero(), a); }
  static R relu6(R a) { return _mm512_min_ps(set1(6.0f), relu(a)); }
};

template <>
struct Vec<double> {
  static constexpr int N = 8;
  using R = __m512d;
  static __mmask8 mask(int n) { return static_cast<__mmask8>((1u << n) - 1u); }
  static R zero() { return _mm512_setzero_pd(); }
  static R set1(double a) { return _mm512_set1_pd(a); }
  static R load(const double* p) { return _mm512_loadu_pd(p); }
  static R load_n(const double* p, int n) { return _mm512_maskz_loadu_pd(mask(n), p); }
  static R load_mask(const double* p, unsigned m) { return _mm512_maskz_loadu_pd(static_cast<__mmask8>(m), p); }
  static void store(double* p, R a) { _mm512_storeu_pd(p, a); }
  static void store_n(double* p, R a, int n) { _mm512_mask_storeu_pd(p, mask(n), a); }
  static R swap(R a, int w) {
    return w == 4 ? _mm512_shuffle_f64x2(a, a, 0x4E) : w == 2 ? _mm512_shuffle_f64x2(a, a, 0xB1) : _mm512_permute_pd(a, 0x55);
  }
  static double first(R a) { return _mm512_cvtsd_f64(a); }
  static void store_u8(uint8_t* p, R a, int n) {
    _mm512_mask_cvtepi32_storeu_epi8(p, static_cast<__mmask16>(mask(n)), _mm512_castsi256_si512(_mm512_cvttpd_epi32(a)));
  }
  static R load_u8(const uint8_t* p, int n) {
    return _mm512_cvtepi32_pd(_mm256_cvtepu8_epi32(_mm_maskz_loadu_epi8(static_cast<__mmask16>(mask(n)), p)));
  }
  static R load_fill(const double* p, int lo, int hi, double fill) {
    return _mm512_mask_loadu_pd(set1(fill), static_cast<__mmask8>(mask(hi) & ~mask(lo)), p);
  }
  static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static R add(R a, R b) { return _mm512_add_pd(a, b); }
  static R div(R a, R b) { return _mm512_div_pd(a, b); }
  static R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static R even(R a, R b) {
    const __m512i idx = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
    return _mm512_permutex2var_pd(a, idx, b);
  }
  static R load_even(const double* p) { return even(load(p), load(p + 8)); }
  static R odd(R a, R b, __mmask8 m = 0xFF) {  // (see Vec<float>::odd)
    const __m512i idx = _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_maskz_permutex2var_pd(m, a, idx, b);
  }
  static R even_in(R a, R b, __mmask8 m) {
    const __m512i idx = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
    return _mm512_maskz_permutex2var_pd(m, a, idx, b);
  }
  static R max_step(R v, R acc) { return _mm512_max_pd(v, acc); }
  using M = __mmask8;
  static M take(R v, R acc) {
    return static_cast<M>(_mm512_cmp_pd_mask(v, acc, _CMP_NLE_UQ) & _mm512_cmp_pd_mask(acc, acc, _CMP_ORD_Q));
  }
  static R blend(R a, R b, M m) { return _mm512_mask_blend_pd(m, a, b); }
  static M eq(R a, R b) { return _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ); }
  static bool any_n(M m, int n) { return (static_cast<unsigned>(m) & ((1u << n) - 1)) != 0; }
  static M lanes_mask(unsigned bits) { return static_cast<M>(bits); }
  static R load_keep(const double* p, M m) { return _mm512_maskz_loadu_pd(m, p); }
  static R keep(M m, R a) { return _mm512_maskz_mov_pd(m, a); }
  static void store_keep(double* p, R a, M m) { _mm512_mask_storeu_pd(p, m, a); }
  template <int O, bool Masked>  // (see Vec<float>::window)
  static R window(M m, R lo, R mid, R hi) {
    static_assert(-N <= O && O <= N, "a window within lo | mid | hi");
    if constexpr (O == 0 || O == N || O == -N) {
      const R a = O == 0 ? mid : O == N ? hi : lo;
      if constexpr (Masked) return _mm512_maskz_mov_pd(m, a);
      else return a;
    } else {
      const __m512i a = _mm512_castpd_si512(O > 0 ? hi : mid), b = _mm512_castpd_si512(O > 0 ? mid : lo);
      constexpr int k = O > 0 ? O : N + O;
      if constexpr (Masked) return _mm512_castsi512_pd(_mm512_maskz_alignr_epi64(m, a, b, k));
      else return _mm512_castsi512_pd(_mm512_alignr_epi64(a, b, k));
    }
  }
  static void stream(double* p, R a) { _mm512_stream_pd(p, a); }  // p 64-byte aligned
  static void store_interleaved(double* p, R a, R b) {
    const __m512i lo = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
    const __m512i hi = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    store(p, _mm512_permutex2var_pd(a, lo, b));
    store(p + 8, _mm512_permutex2var_pd(a, hi, b));
  }
  static R relu(R a) { return _mm512_max_pd(zero(), a); }
  static R relu6(R a) { return _mm512_min_pd(set1(6.0), relu(a)); }
};
// 256-bit vectors under AVX-512VL masks: the subset of Vec the narrow-row
// depthwise kernels use (rows of at most 8 float32 / 4 float64 pixels,
// half a 512-bit vector; Zen 4 issues two 256-bit FMAs per cycle, the
// lanes of one 512-bit FMA).
template <class T>
struct Half;

template <>
struct Half<float> {
  static constexpr int N = 8;
  using R = __m256;
  using M = __mmask8;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float a) { return _mm256_set1_ps(a); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, R a) { _mm256_storeu_ps(p, a); }
  static R load_keep(const float* p, M m) { return _mm256_maskz_loadu_ps(m, p); }
  static R keep(M m, R a) { return _mm256_maskz_mov_ps(m, a); }
  static void store_keep(float* p, R a, M m) { _mm256_mask_storeu_ps(p, m, a); }
  static M lanes_mask(unsigned bits) { return static_cast<M>(bits); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R relu(R a) { return _mm256_max_ps(zero(), a); }
  static R relu6(R a) { return _mm256_min_ps(set1(6.0f), relu(a)); }
};

template <>
struct Half<double> {
  static constexpr int N = 4;
  using R = __m256d;
  using M = __mmask8;
  static R zero() { return _mm256_setzero_pd(); }
  static R set1(double a) { return _mm256_set1_pd(a); }
  static R load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, R a) { _mm256_storeu_pd(p, a); }
  static R load_keep(const double* p, M m) { return _mm256_maskz_loadu_pd(m, p); }
  static R keep(M m, R a) { return _mm256_maskz_mov_pd(m, a); }
  static void store_keep(double* p, R a, M m) { _mm256_mask_storeu_pd(p, m, a); }
  static M lanes_mask(unsigned bits) { return static_cast<M>(bits); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static R relu(R a) { return _mm256_max_pd(zero(), a); }
  static R relu6(R a) { return _mm256_min_pd(set1(6.0), relu(a)); }
};
#endif

}  // namespace PYCONV_ISA_NS
}  // namespace pyconv
