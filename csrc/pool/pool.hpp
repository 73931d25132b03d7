#pragma once
#include <cstdint>

#include "core/dispatch.hpp"
#include "core/problem.hpp"

namespace pyconv {

// Validates the pooling in checked 64-bit arithmetic (std::invalid_argument
// on inconsistency, overflow, or a window with no input cell in it).
void validate_pool(const PoolShape& s);

// Forward: y (and, for max pooling, the flat H*W indices of the winners
// when `indices` is not null, or their one-byte keys when `keys` is not
// null: windows up to kMaxKeyWindow a side).  Backward: the whole grad_x
// (max pooling reads x, or the forward's keys instead when not null).  Both
// allocate their workspace (std::bad_alloc before anything is written).
constexpr int64_t kMaxKeyWindow = 16;
template <class T>
void pool_forward(const IsaKernels& k, const PoolShape& s, const T* x, T* y, int64_t* indices, uint8_t* keys,
                  int nthreads);
template <class T>
void pool_backward(const IsaKernels& k, const PoolShape& s, const T* x, const uint8_t* keys, const T* grad_y,
                   T* grad_x, int nthreads);

}  // namespace pyconv
