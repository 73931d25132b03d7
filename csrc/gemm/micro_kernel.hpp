// The packed GEMM's register-blocked micro-kernel and its blocking
// constants, shared by the forward convolutions (gemm_kernels.cpp) and the
// weight gradient (grad_weight_kernels.cpp).  Compiled into each ISA's
// namespace, like vec.hpp.
#pragma once
#include <cstdint>
#include <type_traits>

#include "core/problem.hpp"
#include "simd/kernel_util.hpp"
#include "simd/vec.hpp"

namespace pyconv {
namespace PYCONV_ISA_NS {

// Register blocking: MR x NB vectors of accumulators, leaving registers for
// NB B vectors and one A broadcast.
#if defined(PYCONV_ISA_avx512)
constexpr int kMR = 12;  // 12 x 2 zmm = 24 of 32 registers
#elif defined(PYCONV_ISA_avx2)
constexpr int kMR = 6;   // 6 x 2 ymm = 12 of 16 registers
#else
constexpr int kMR = 4;
#endif
constexpr int kNB = 2;

template <class T>
struct Blocking {
  static constexpr int MR = kMR;
  static constexpr int NR = kNB * Vec<T>::N;
  // A B micro-panel of KC x NR elements is 16 KiB: half of a 32 KiB L1.
  static constexpr int64_t KC = 16384 / (NR * static_cast<int64_t>(sizeof(T)));
  // An A block of MC x KC elements is ~192 KiB: well inside a 512 KiB L2.
  static constexpr int64_t MC = (196608 / (KC * static_cast<int64_t>(sizeof(T)))) / MR * MR;
  // A B block of KC x NC elements for NCHW: ~512 KiB (L2/L3).
  static constexpr int64_t NC = (524288 / (KC * static_cast<int64_t>(sizeof(T)))) / NR * NR;
};

// ---- micro-kernel ------------------------------------------------------------

template <class T>
struct Epilogue {
  const T* bias;     // null: no bias
  bool bias_per_row; // NCHW: bias indexed by C's row (output channel)
  Activation act;
};

// C[0:mr, 0:nr] (+)= A_panel * B_panel over kc with NB of the kNB vectors
// of B's columns (NB = 1: an edge panel of at most N columns, half the
// FMAs of a full tile) and the first MT of the panel's MR rows (mr <= MT:
// a short edge panel, or a GEMM of few rows, computes only those).
template <class T, int NB, int MT>
void micro_tile(int64_t kc, const T* __restrict a, const T* __restrict b, T* c, int64_t ldc, int mr, int nr,
                bool accumulate, bool last, const Epilogue<T>& e, int64_t row0, int64_t col0) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int MR = Blocking<T>::MR, NR = Blocking<T>::NR, N = V::N;
  static_assert(MT <= MR, "rows of one packed panel");
  // The C tile is read (accumulate) and written after the k loop; its rows
  // are ldc apart and usually out of cache, so ask for them now and let the
  // misses overlap with the FMAs instead of stalling the epilogue.
  #pragma GCC unroll 16
  for (int i = 0; i < MT; ++i) {
    __builtin_prefetch(c + i * ldc, 1);
    __builtin_prefetch(c + i * ldc + NR - 1, 1);
  }
  R acc[MT][NB];
  #pragma GCC unroll 16
  for (int i = 0; i < MT; ++i)
    #pragma GCC unroll 16
    for (int j = 0; j < NB; ++j) acc[i][j] = V::zero();
  for (int64_t k = 0; k < kc; ++k) {
    R bv[NB];
    #pragma GCC unroll 16
    for (int j = 0; j < NB; ++j) bv[j] = V::load(b + k * NR + j * N);
    #pragma GCC unroll 16
    for (int i = 0; i < MT; ++i) {
      const R av = V::set1(a[k * MR + i]);
      #pragma GCC unroll 16
      for (int j = 0; j < NB; ++j) acc[i][j] = V::fma(av, bv[j], acc[i][j]);
    }
  }
  // Tiles of whole columns: loops of constant bounds and branches that do
  // not vary along them, so the accumulators go from registers straight to C (the
  // general loop below keeps them in a stack array; with a short k loop,
  // as in a 1x1 convolution of 3 input channels, that store was half the
  // time).
  if (nr == NR) {
    if (!accumulate && (!last || (!e.bias && e.act == Activation::None))) {
      #pragma GCC unroll 16
      for (int i = 0; i < MT; ++i) {
        if (i >= mr) break;
        #pragma GCC unroll 16
        for (int j = 0; j < NB; ++j) V::store(c + i * ldc + j * N, acc[i][j]);
      }
      return;
    }
    #pragma GCC unroll 16
    for (int i = 0; i < MT; ++i) {
      if (i >= mr) break;
      const R row_bias = last && e.bias && e.bias_per_row ? V::set1(e.bias[row0 + i]) : V::zero();
      #pragma GCC unroll 16
      for (int j = 0; j < NB; ++j) {
        T* dst = c + i * ldc + j * N;
        R v = acc[i][j];
        if (accumulate) v = V::add(v, V::load(dst));
        if (last) {
          if (e.bias) v = V::add(v, e.bias_per_row ? row_bias : V::load(e.bias + col0 + j * N));
          v = activate<T>(v, e.act);
        }
        V::store(dst, v);
      }
    }
    return;
  }
  // Column-edge tiles (nr < NR) store only their rows and lanes, with
  // masked vectors: nothing outside the tile is read or written.
  const bool full = nr == NR;
  #pragma GCC unroll 16
  for (int i = 0; i < MT; ++i) {
    if (i >= mr) break;
    #pragma GCC unroll 16
    for (int j = 0; j < NB; ++j) {
      const int lanes = full ? N : nr - j * N;
      if (lanes <= 0) break;
      T* dst = c + i * ldc + j * N;
      const bool whole = lanes >= N;
      R v = acc[i][j];
      if (accumulate) v = V::add(v, whole ? V::load(dst) : V::load_n(dst, lanes));
      if (last) {
        if (e.bias)
          v = V::add(v, e.bias_per_row ? V::set1(e.bias[row0 + i])
                                       : (whole ? V::load(e.bias + col0 + j * N) : V::load_n(e.bias + col0 + j * N, lanes)));
        v = activate<T>(v, e.act);
      }
      if (whole)
        V::store(dst, v);
      else
        V::store_n(dst, v, lanes);
    }
  }
}

// C[0:mr, 0:nr] (+)= A_panel * B_panel over kc; `last` applies the epilogue.
// row0/col0 locate the tile in the whole C for the bias.
template <class T>
inline void micro_kernel(int64_t kc, const T* __restrict a, const T* __restrict b, T* c, int64_t ldc, int mr,
                         int nr, bool accumulate, bool last, const Epilogue<T>& e, int64_t row0, int64_t col0) {
  constexpr int MR = Blocking<T>::MR, Q = MR / 3;  // 12 rows: 4 and 8; 6: 2 and 4; 4: 1 and 2
  auto rows = [&](auto nb) {
    constexpr int NB = decltype(nb)::value;
    if (mr <= Q)
      micro_tile<T, NB, Q>(kc, a, b, c, ldc, mr, nr, accumulate, last, e, row0, col0);
    else if (mr <= 2 * Q)
      micro_tile<T, NB, 2 * Q>(kc, a, b, c, ldc, mr, nr, accumulate, last, e, row0, col0);
    else
      micro_tile<T, NB, MR>(kc, a, b, c, ldc, mr, nr, accumulate, last, e, row0, col0);
  };
  if (nr <= Vec<T>::N)
    rows(std::integral_constant<int, 1>{});
  else
    rows(std::integral_constant<int, kNB>{});
}

// Size of the blocks `extent` is cut into: at most `max_block`, a multiple
// of `align`, and balanced so that the `copies * blocks` work units split
// evenly over `nt` threads.  Blocking over M or N never changes a sum, so
// this may depend on the thread count without touching determinism.
inline int64_t balanced_block(int64_t extent, int64_t max_block, int64_t align, int64_t copies, int nt) {
  int64_t blocks = ceil_div(extent, max_block);
  const int64_t units = copies * blocks;
  if (units % nt) {
    const int64_t want = round_up(units, nt);  // units for an even split
    blocks = ceil_div(want, copies);
  }
  blocks = min64(blocks, ceil_div(extent, align));
  return round_up(ceil_div(extent, blocks), align);
}

}  // namespace PYCONV_ISA_NS
}  // namespace pyconv
