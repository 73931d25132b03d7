// Driver of the pooling kernels: checks the problem, owns the workspace,
// and calls the active ISA's kernel.  Compiled for the baseline target.
#include "pool/pool.hpp"

#include <stdexcept>
#include <string>

#include "core/checked.hpp"
#include "core/workspace.hpp"

namespace pyconv {

namespace {

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("pool: " + msg);
}

// True if every window of one axis has a tap inside [0, n).
bool windows_hit(int64_t n, int64_t out, int64_t k, int64_t s, int64_t d, int64_t p) {
  for (int64_t o = 0; o < out; ++o) {
    const int64_t a = o * s - p;
    bool hit = false;
    for (int64_t i = 0; i < k && !hit; ++i) hit = a + i * d >= 0 && a + i * d < n;
    if (!hit) return false;
  }
  return true;
}

// Pooling is memory-bound: a thread is worth waking for ~64K elements.
int useful_threads(const PoolShape& s, int nthreads) {
  const int64_t elems = s.n * s.c * (s.h * s.w + s.oh * s.ow);
  const int64_t useful = elems >> 16;
  return static_cast<int>(useful < 1 ? 1 : (useful < nthreads ? useful : nthreads));
}

}  // namespace

void validate_pool(const PoolShape& s) {
  require(s.n >= 1 && s.c >= 1 && s.h >= 1 && s.w >= 1, "input dimensions must be >= 1");
  require(s.kh >= 1 && s.kw >= 1 && s.sh >= 1 && s.sw >= 1 && s.dh >= 1 && s.dw >= 1,
          "kernel, stride and dilation must be >= 1");
  require(s.pt >= 0 && s.pb >= 0 && s.pl >= 0 && s.pr >= 0, "padding must be >= 0");
  require(s.oh >= 1 && s.ow >= 1, "output must not be empty");
  require(s.op != PoolOp::Avg || (s.dh == 1 && s.dw == 1), "average pooling has no dilation");
  checked_product("pool", s.n, s.c, checked_add(s.h, checked_add(s.pt, s.pb, "pool"), "pool"),
                  checked_add(s.w, checked_add(s.pl, s.pr, "pool"), "pool"), 8);
  checked_product("pool", s.n, s.c, s.oh, s.ow, 8);
  checked_product("pool", s.kh, s.kw, 8);
  checked_product("pool", checked_add(s.oh, s.kh, "pool"), checked_add(s.sh, s.dh, "pool"));
  checked_product("pool", checked_add(s.ow, s.kw, "pool"), checked_add(s.sw, s.dw, "pool"));
  // The last window starts inside the input or the leading padding.
  require((s.oh - 1) * s.sh < s.h + s.pt && (s.ow - 1) * s.sw < s.w + s.pl,
          "output size does not fit the input, window, stride and padding");
  require(windows_hit(s.h, s.oh, s.kh, s.sh, s.dh, s.pt) && windows_hit(s.w, s.ow, s.kw, s.sw, s.dw, s.pl),
          "a pooling window covers padding only");
}

static void require_keys(const PoolShape& s) {
  require(s.op == PoolOp::Max, "winner keys are for max pooling only");
  require(s.kh <= kMaxKeyWindow && s.kw <= kMaxKeyWindow, "winner keys need a window of at most 16x16");
}

template <class T>
void pool_forward(const IsaKernels& k, const PoolShape& s, const T* x, T* y, int64_t* indices, uint8_t* keys,
                  int nthreads) {
  validate_pool(s);
  if (keys) require_keys(s);
  require(!(keys && indices), "indices and keys are exclusive");
  const int nt = useful_threads(s, nthreads);
  thread_local Workspace cache;
  std::unique_ptr<void, FreeDeleter> oneoff;
  void* ws = acquire_workspace(cache, oneoff, k.pool->workspace_bytes(s, sizeof(T), nt, false));
  if constexpr (sizeof(T) == 4)
    k.pool->forward_f32(s, x, y, indices, keys, ws, nt);
  else
    k.pool->forward_f64(s, x, y, indices, keys, ws, nt);
}

template <class T>
void pool_backward(const IsaKernels& k, const PoolShape& s, const T* x, const uint8_t* keys, const T* grad_y,
                   T* grad_x, int nthreads) {
  validate_pool(s);
  if (keys) require_keys(s);
  const int nt = useful_threads(s, nthreads);
  thread_local Workspace cache;
  std::unique_ptr<void, FreeDeleter> oneoff;
  void* ws = acquire_workspace(cache, oneoff, k.pool->workspace_bytes(s, sizeof(T), nt, true));
  if constexpr (sizeof(T) == 4)
    k.pool->backward_f32(s, x, keys, grad_y, grad_x, ws, nt);
  else
    k.pool->backward_f64(s, x, keys, grad_y, grad_x, ws, nt);
}

template void pool_forward<float>(const IsaKernels&, const PoolShape&, const float*, float*, int64_t*, uint8_t*,
                                  int);
template void pool_forward<double>(const IsaKernels&, const PoolShape&, const double*, double*, int64_t*, uint8_t*,
                                   int);
template void pool_backward<float>(const IsaKernels&, const PoolShape&, const float*, const uint8_t*, const float*,
                                   float*, int);
template void pool_backward<double>(const IsaKernels&, const PoolShape&, const double*, const uint8_t*,
                                    const double*, double*, int);

}  // namespace pyconv
