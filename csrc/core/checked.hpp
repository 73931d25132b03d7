// Checked 64-bit size arithmetic: every element count, byte count and offset
// that depends on caller-supplied sizes goes through these, so a shape that
// overflows raises instead of wrapping into a small allocation.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyconv {

static inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r))
    throw std::invalid_argument(std::string(what) + ": size overflows 64-bit arithmetic");
  return r;
}

static inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r))
    throw std::invalid_argument(std::string(what) + ": size overflows 64-bit arithmetic");
  return r;
}

template <class... Ts>
static inline int64_t checked_product(const char* what, int64_t first, Ts... rest) {
  int64_t r = first;
  ((r = checked_mul(r, static_cast<int64_t>(rest), what)), ...);
  return r;
}

}  // namespace pyconv
