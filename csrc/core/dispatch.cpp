#include "core/dispatch.hpp"

#include <atomic>

namespace pyconv {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Generic: return "generic";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "unknown";
}

const IsaKernels* compiled_kernels(Isa isa) {
  switch (isa) {
    case Isa::Generic: return &generic::kKernels;
#ifdef PYCONV_HAVE_AVX2
    case Isa::Avx2: return &avx2::kKernels;
#endif
#ifdef PYCONV_HAVE_AVX512
    case Isa::Avx512: return &avx512::kKernels;
#endif
    default: return nullptr;
  }
}

namespace {

// Highest usable ISA at or below `cap`; generic always qualifies.
Isa select(Isa cap) {
  for (int i = static_cast<int>(cap); i > 0; --i) {
    Isa isa = static_cast<Isa>(i);
    if (compiled_kernels(isa) && cpu_supports(isa)) return isa;
  }
  return Isa::Generic;
}

std::atomic<int>& active_slot() {
  static std::atomic<int> slot{static_cast<int>(select(Isa::Avx512))};
  return slot;
}

}  // namespace

Isa best_isa() { return select(Isa::Avx512); }
Isa active_isa() { return static_cast<Isa>(active_slot().load(std::memory_order_acquire)); }
const IsaKernels& active_kernels() { return *compiled_kernels(active_isa()); }

Isa set_active_isa(Isa cap) {
  Isa chosen = select(cap);
  active_slot().store(static_cast<int>(chosen), std::memory_order_release);
  return chosen;
}

}  // namespace pyconv
