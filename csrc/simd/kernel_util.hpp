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

// The fused activation on a vector (NaN stays NaN: see vec.hpp).
template <class T>
inline typename Vec<T>::R activate(typename Vec<T>::R v, Activation act) {
  if (act == Activation::Relu) return Vec<T>::relu(v);
  if (act == Activation::Relu6) return Vec<T>::relu6(v);
  return v;
}

}  // namespace PYCONV_ISA_NS
}  // namespace pyconv
