#pragma once
#include <cstdint>

#include "core/dispatch.hpp"
#include "core/problem.hpp"

namespace pyconv {

// Validates the shape in checked 64-bit arithmetic (std::invalid_argument on
// inconsistency or overflow) and returns the workspace the direct kernel of
// `k` needs for it.
int64_t direct_workspace_bytes(const IsaKernels& k, const ConvShape& s, int elem_bytes);

// Runs the direct kernel of `k`; allocates its workspace (std::bad_alloc on
// failure, before anything is written to y).
template <class T>
void conv2d_direct(const IsaKernels& k, const ConvShape& s, const T* x, const T* w, const T* bias, T* y,
                   int nthreads);

}  // namespace pyconv
