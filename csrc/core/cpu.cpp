// CPU feature detection.  GCC/Clang's __builtin_cpu_supports also checks that
// the OS saves the YMM/ZMM state (XGETBV), so a "yes" here is safe to run.
#include "core/dispatch.hpp"

namespace pyconv {

bool cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::Generic:
      return true;
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    case Isa::Avx2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("fma");
#endif
    default:
      return false;
  }
}

}  // namespace pyconv
