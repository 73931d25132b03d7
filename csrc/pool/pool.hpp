#pragma once
#include <cstdint>

#include "core/dispatch.hpp"
#include "core/problem.hpp"

namespace pyconv {

// Validates the pooling in checked 64-bit arithmetic (std::invalid_argument
// on inconsistency, overflow, or a window with no input cell in it).
void validate_pool(const PoolShape& s);

// Forward: y (and, for max pooling, the flat H*W indices of the winners
// when `indices` is not null).  Backward: the whole grad_x (x is read by
// max pooling only).  Both allocate their workspace (std::bad_alloc before
// anything is written).
template <class T>
void pool_forward(const IsaKernels& k, const PoolShape& s, const T* x, T* y, int64_t* indices, int nthreads);
template <class T>
void pool_backward(const IsaKernels& k, const PoolShape& s, const T* x, const T* grad_y, T* grad_x, int nthreads);

}  // namespace pyconv
