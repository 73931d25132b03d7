#include "core/buffer_pool.hpp"

#include <cstdlib>
#include <new>

namespace pyconv {

namespace {

// Each block starts with a header of one cache line holding its size, so
// the data stays 64-byte aligned and release() needs only the pointer.
constexpr size_t kHeader = 64;

size_t block_size(size_t bytes) {
  return (bytes + BufferPool::kPage - 1) / BufferPool::kPage * BufferPool::kPage;
}

}  // namespace

BufferPool::~BufferPool() { trim(); }

void* BufferPool::acquire(size_t bytes) {
  const size_t size = bytes < kMinBytes ? (bytes + 63) / 64 * 64 : block_size(bytes);
  if (size >= kMinBytes) {
    auto it = free_.find(size);
    if (it != free_.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      kept_ -= size;
      ++hits_;
      return p;
    }
    ++misses_;
  }
  void* base = std::aligned_alloc(64, size + kHeader);
  if (!base) throw std::bad_alloc();
  *static_cast<size_t*>(base) = size;
  return static_cast<char*>(base) + kHeader;
}

void BufferPool::release(void* p) {
  if (!p) return;
  char* base = static_cast<char*>(p) - kHeader;
  const size_t size = *reinterpret_cast<size_t*>(base);
  if (size >= kMinBytes && kept_ + size <= limit_) {
    free_[size].push_back(p);
    kept_ += size;
    return;
  }
  std::free(base);
}

size_t BufferPool::trim() {
  const size_t freed = kept_;
  for (auto& entry : free_)
    for (void* p : entry.second) std::free(static_cast<char*>(p) - kHeader);
  free_.clear();
  kept_ = 0;
  return freed;
}

void BufferPool::set_limit(size_t bytes) {
  limit_ = bytes;
  if (kept_ > limit_) trim();
}

BufferPool& buffer_pool() {
  static BufferPool* pool = new BufferPool();  // never destroyed: arrays may outlive module teardown
  return *pool;
}

}  // namespace pyconv
