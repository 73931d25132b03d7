#pragma once

namespace pyconv {

// Process-wide thread count used by every kernel (OpenMP team size).
int get_num_threads();
void set_num_threads(int n);  // n >= 1, checked by the caller
int default_num_threads();    // OMP_NUM_THREADS, else all usable cores
bool have_openmp();
int openmp_version();         // _OPENMP date macro, 0 without OpenMP

}  // namespace pyconv
