// Per-calling-thread workspace cache of the drivers (conv2d, pooling).
// Compiled into baseline-target code only (never into a kernel object).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace pyconv {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// Workspace kept between calls, one per calling thread (so concurrent calls
// never share it).  A fresh multi-MiB allocation per call costs a page fault
// per 4 KiB on first touch, which on thin layers rivals the convolution
// itself.  Buffers above kWorkspaceCacheMax are freed after the call.
constexpr size_t kWorkspaceCacheMax = size_t(256) << 20;

struct Workspace {
  std::unique_ptr<void, FreeDeleter> ptr;
  size_t size = 0;
};

inline void* acquire_workspace(Workspace& cache, std::unique_ptr<void, FreeDeleter>& oneoff, int64_t bytes) {
  // 64-byte aligned; size rounded up as aligned_alloc requires.
  const size_t size = static_cast<size_t>(bytes < 64 ? 64 : (bytes + 63) / 64 * 64);
  if (size <= cache.size) return cache.ptr.get();
  void* p = std::aligned_alloc(64, size);
  if (!p) throw std::bad_alloc();
  if (size > kWorkspaceCacheMax) {
    oneoff.reset(p);
    return p;
  }
  cache.ptr.reset(p);
  cache.size = size;
  return p;
}

}  // namespace pyconv
