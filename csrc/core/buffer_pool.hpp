// Output buffers of pyconv's own results, recycled.
//
// A result array of a few MiB freshly taken from the system costs a page
// fault per 4 KiB page on first touch, more than the kernel that fills it
// on a memory-bound layer (a training step of an 8x1024x7x7 depthwise
// layer spent half its time in the kernel's page-fault handler).  Arrays
// pyconv allocates for its results (not those a caller passes as `out`)
// take their memory from here: a freed block is kept, by its size rounded
// up to whole pages, for the next result of that size, up to a byte limit
// on what is kept; past the limit blocks go back to the system.  A
// training or inference loop therefore reuses warm pages call after call.
//
// Not thread-safe by itself: every call holds the GIL (acquire from the
// Python layer, release from the array's deallocation).
#pragma once
#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace pyconv {

class BufferPool {
 public:
  // Blocks smaller than this come from the system allocator every time
  // (small allocations are cheap and recycled by malloc already).
  static constexpr size_t kMinBytes = 256 * 1024;
  static constexpr size_t kPage = 4096;

  ~BufferPool();

  // At least `bytes` bytes, 64-byte aligned.
  void* acquire(size_t bytes);
  // Give back a block from acquire.
  void release(void* p);
  // Free every kept block; returns the bytes freed.
  size_t trim();

  size_t limit() const { return limit_; }
  void set_limit(size_t bytes);
  size_t kept() const { return kept_; }
  size_t hits() const { return hits_; }
  size_t misses() const { return misses_; }

 private:
  std::unordered_map<size_t, std::vector<void*>> free_;  // by block size
  size_t limit_ = size_t(256) << 20;
  size_t kept_ = 0, hits_ = 0, misses_ = 0;
};

BufferPool& buffer_pool();

}  // namespace pyconv
