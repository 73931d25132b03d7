#include "core/threading.hpp"

#include <atomic>
#include <cfenv>
#include <cstdlib>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace pyconv {

int default_num_threads() {
#ifdef _OPENMP
  // OMP_NUM_THREADS may be a list ("4,2"); its first entry is the top level.
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end != env && v >= 1 && v <= 4096) return static_cast<int>(v);
  }
  return omp_get_num_procs();  // respects the process's CPU affinity mask
#else
  return 1;
#endif
}

namespace {
std::atomic<int>& threads_slot() {
  static std::atomic<int> slot{default_num_threads()};
  return slot;
}
}  // namespace

int get_num_threads() { return threads_slot().load(std::memory_order_relaxed); }
void set_num_threads(int n) { threads_slot().store(n < 1 ? 1 : n, std::memory_order_relaxed); }

namespace {
bool default_fp_environment() {
#if defined(__x86_64__) || defined(__i386__)
  // MXCSR rounding control (bits 13-14), FTZ (15), DAZ (6); the exception
  // masks and flags do not change results.
  if ((_mm_getcsr() & 0xE040u) != 0) return false;
#endif
  return std::fegetround() == FE_TONEAREST;
}
}  // namespace

int kernel_threads() {
  const int n = get_num_threads();
  return n > 1 && !default_fp_environment() ? 1 : n;
}

bool have_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

int openmp_version() {
#ifdef _OPENMP
  return _OPENMP;
#else
  return 0;
#endif
}

}  // namespace pyconv

// C entry points for threadpoolctl (pyconv/_threadpool.py finds this module
// by these symbols and controls the thread count through them, as it does
// for OpenBLAS or libgomp).  Exported despite the module's hidden default.
extern "C" __attribute__((visibility("default"))) int pyconv_get_num_threads() {
  return pyconv::get_num_threads();
}

extern "C" __attribute__((visibility("default"))) void pyconv_set_num_threads(int n) {
  constexpr int kMaxThreads = 4096;  // as pyconv.set_num_threads
  pyconv::set_num_threads(n < 1 ? 1 : (n > kMaxThreads ? kMaxThreads : n));
}
