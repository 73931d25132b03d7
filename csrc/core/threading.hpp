#pragma once

namespace pyconv {

// Process-wide thread count used by every kernel (OpenMP team size).
int get_num_threads();
void set_num_threads(int n);  // n >= 1, checked by the caller
int default_num_threads();    // OMP_NUM_THREADS, else all usable cores
// Threads for a kernel called now: get_num_threads(), or 1 when the calling
// thread's floating-point environment is not the default (rounding mode,
// flush-to-zero, denormals-are-zero): OpenMP workers keep their own, so
// only the caller's thread computes what the caller asked for.
int kernel_threads();
bool have_openmp();
int openmp_version();         // _OPENMP date macro, 0 without OpenMP

}  // namespace pyconv
