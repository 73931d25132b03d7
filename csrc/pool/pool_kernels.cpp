// Max and average pooling, forward and backward, compiled once per ISA.
//
// Semantics (shared with pyconv.reference): padded cells never take part in
// a max and are counted by an average only with count_include_pad; the
// first maximum in row-major window order wins, a NaN beats any number and
// the first NaN stays (Vec::take); the max gradient goes to exactly the
// forward's winner.
//
// NCHW: one plane at a time, vectorised along the output row.  Column
// stride 1 or 2 (nearly every layer) is separable: rows reduced along the
// row, then kh of those rows per output row (plane_separable, and
// plane_separable_idx for max pooling with indices and the max gradient).
// Other strides, and max values of a plane holding a NaN, copy the plane
// into a per-thread scratch padded with the op's neutral value and split
// into stride column phases (plane_padded, plane_padded_idx), so every
// output row is whole vectors of plain loads.  2x2/stride 2 without padding
// has its own loops straight from the input (plane_2x2_fast, plane_2x2);
// the max gradient at stride 2 with windows up to 3x3 is written row by row
// from column-phase buffers (plane_max_grad_s2); the average gradient at
// stride 1 is a gather (avg_grad_plane).
// NHWC: vectorised across channels, one output pixel at a time, the window
// clipped to the image per pixel.
// Global pools (window = the whole plane) have their own reduction loops.
//
// Winner keys (max_pool2d_vjp): the forward can record each window's winner
// in one byte (kKeyRow), and the max gradient then reads those keys instead
// of recomputing the winners from x: for ResNet's 3x3/2 pooling of
// 8x64x112x112 the forward costs the same and the gradient 2.9 -> 1.0-1.4 ms.
//
// Determinism: each output (and each gradient element) is produced by one
// thread in a fixed order, so results do not depend on the thread count.
#include <cstdint>
#include <limits>
#include <type_traits>

#include "core/dispatch.hpp"
#include "core/problem.hpp"
#include "simd/kernel_util.hpp"
#include "simd/vec.hpp"

namespace pyconv {
namespace PYCONV_ISA_NS {
namespace {

constexpr int kTileVectors = 4;  // independent accumulators per output tile
// Rows read from the input plane are requested this many rows ahead: each
// row's first load would otherwise wait for memory (ResNet's 3x3/2 max
// pooling of 8x64x112x112 with winners: 1.9 -> 1.2-1.4 ms on 2 threads).
constexpr int64_t kRowsAhead = 4;

// Requests the `bytes` from p from memory (no fault: a hint only).
inline void prefetch_bytes(const void* p, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(p) + b);
}
// A gradient at least this large is written with non-temporal stores where
// its rows are whole cache lines: it would not stay cached for its reader
// anyway, and the stores skip the read for ownership.  Only well beyond a
// large L3: on the 32 MiB L3 of the Zen 4 measured, ResNet's 3x3/2 max
// gradient of 8x64x112x112 (25 MiB) takes 2.7 ms streamed and 1.35 ms
// stored plainly (from winner keys; 3.5 vs 2.9 ms from x), 16x64x112x112
// 5.1 vs 4.1 ms, and at 32x64x112x112 (103 MiB) the two are even.
constexpr int64_t kStreamBytes = int64_t(64) << 20;

struct Geometry {
  int64_t scratch_elems;               // NCHW: per-thread scratch (the larger use below)
  int64_t grad_elems;                  // NCHW max backward: per-thread winners of a plane
  int64_t pad_rows, pad_wq, pad_elems;  // NCHW forward without indices: the padded plane (see plane_padded)
  int64_t grad_rows, grad_wq;           // NCHW average gradient at stride 1 (see avg_grad_plane)
  int64_t sep_rows, sep_wq, sep_row;    // NCHW, sw <= 2: forward, and the max gradient (see plane_separable)
  bool separable, separable_idx;
  bool grad_s2;                        // NCHW max gradient at stride 2 (see plane_max_grad_s2)
  bool keys_s2;                        // its forward, with winner keys (see plane_max_keys_s2)
  bool grad_stream;                    // its rows stored around the caches (a gradient beyond kStreamBytes)
  int64_t grad_s2_row;                 // its phase-split row buffers: elements per phase
  bool avg_gather;
  bool flat;                           // NCHW forward, stride 1, rows as wide as the input (see plane_flat)
  int64_t flat_rows;                   // its rows of horizontal results, pad rows included
  int64_t off_taps, off_scratch, thread_stride, total;
  bool global;
};

// Taps [k0, k1) of one window axis that land inside [0, n), from start a.
inline void clip(int64_t a, int64_t n, int64_t k, int64_t d, int64_t& k0, int64_t& k1) {
  k0 = a < 0 ? min64(k, ceil_div(-a, d)) : 0;
  k1 = n - 1 - a < 0 ? 0 : min64(k, (n - 1 - a) / d + 1);
  if (k1 < k0) k1 = k0;
}

template <class T>
Geometry make_geometry(const PoolShape& s, int nt, bool backward) {
  Geometry g{};
  g.global = s.oh == 1 && s.ow == 1 && s.kh == s.h && s.kw == s.w && s.dh == 1 && s.dw == 1 &&
             !(s.pt || s.pb || s.pl || s.pr);
  const int64_t e = sizeof(T);
  int64_t off = 0;
  constexpr int64_t N = Vec<T>::N;
  g.pad_rows = (s.oh - 1) * s.sh + (s.kh - 1) * s.dh + 1;
  g.pad_wq = round_up(s.ow, N) + (s.kw - 1) * s.dw / s.sw + 1;
  g.pad_elems = s.sw * g.pad_rows * g.pad_wq;
  // Flat planes: only where the border columns (redone in scalar) are few.
  g.flat = s.layout == Layout::NCHW && !backward && !g.global && s.sh == 1 && s.sw == 1 && s.ow == s.w &&
           2 * (s.pl + s.pr) <= s.w;
  g.flat_rows = g.flat ? s.oh + (s.kh - 1) * s.dh : 0;
  g.off_taps = off;  // see Tables
  off += round_up((2 * s.ow + 3 * s.kh * s.kw + 2 * s.sw) * 8, kAlign);
  off += round_up((s.oh + 2 * round_up(s.ow, N) + (g.flat ? round_up(s.oh * s.ow, N) : 0)) * e, kAlign);
  g.off_scratch = off;
  // (Global windows use the plane loops too when indices or gradients are
  // wanted, so the scratch is sized for every NCHW problem.)
  if (s.layout == Layout::NCHW) {
    g.grad_elems = backward && s.op == PoolOp::Max ? s.oh * s.ow : 0;
    if (!backward || s.op == PoolOp::Max) g.scratch_elems = g.pad_elems;
    g.separable = s.sw <= 2 && (!backward || s.op == PoolOp::Max);
    if (g.separable) {
      g.sep_rows = min64(s.h, max64(0, (s.oh - 1) * s.sh - s.pt + (s.kh - 1) * s.dh + 1));
      g.sep_wq = round_up(s.ow, N);
      g.sep_row = round_up(max64(s.pl + s.w, s.sw * g.sep_wq + (s.kw - 1) * s.dw), N) + N;
      g.scratch_elems = max64(g.scratch_elems, g.sep_rows * (2 * g.sep_wq + g.sep_row));
      const int64_t max_off = (s.kh - 1) * s.dh * s.w + (s.kw - 1) * s.dw;
      g.separable_idx = max_off < (int64_t(1) << std::numeric_limits<T>::digits);
      // (Output rows as wide as the input needs, ceil(w / 2) <= ow + 1, as
      // the shape rule makes them: the phase rows written are [-1, ow].)
      const bool s2 = s.op == PoolOp::Max && s.sh == 2 && s.sw == 2 && s.dh == 1 && s.dw == 1 && s.kh <= 3 &&
                      s.kw <= 3 && s.pl <= 1 && ceil_div(s.w, 2) <= s.ow + 1;
      g.grad_s2 = backward && s2 && g.separable_idx;
      g.keys_s2 = !backward && s2;
      if (g.grad_s2) {
        g.grad_stream = s.n * s.c * s.h * s.w * e >= kStreamBytes;
        // Rows of positions [-N, L - N): staged ow read in [-2, ow + N],
        // phase positions in [-1, ow + N) and [0, ceil(W / 2)).
        g.grad_s2_row = round_up(max64(g.sep_wq + 2 * N, ceil_div(s.w, 2) + N) + N, N);
        g.scratch_elems = max64(g.scratch_elems, 2 * g.sep_rows * g.sep_wq + 8 * g.grad_s2_row + N);
      }
    }
    if (g.flat) g.scratch_elems = max64(g.scratch_elems, g.flat_rows * s.w + 2 * N);
    g.avg_gather = backward && s.op == PoolOp::Avg && s.sh == 1 && s.sw == 1;
    if (g.avg_gather) {
      g.grad_rows = s.h + s.pt + s.kh - 1;
      g.grad_wq = round_up(s.w, N) + s.pl + s.kw - 1;
      g.scratch_elems = max64(g.scratch_elems, g.grad_rows * g.grad_wq);
    }
    g.thread_stride = round_up(g.scratch_elems * e, kAlign) + round_up(g.grad_elems * (8 + e), kAlign);
    off += nt * g.thread_stride;
  }
  g.total = off;
  return g;
}

// Divisor of the average over window (oh, ow) whose real taps are
// [kh0, kh1) x [kw0, kw1).  Average pooling has no dilation.
template <class T>
inline T avg_divisor(const PoolShape& s, int64_t ih0, int64_t iw0, int64_t kh0, int64_t kh1, int64_t kw0,
                     int64_t kw1) {
  if (!s.count_include_pad) return T((kh1 - kh0) * (kw1 - kw0));
  const int64_t rows = min64(ih0 + s.kh, s.h + s.pb) - ih0;  // ih0 >= -pt always
  const int64_t cols = min64(iw0 + s.kw, s.w + s.pr) - iw0;
  return T(rows * cols);
}

// Flat (H*W) index of tap t of the window starting at (ih0, iw0).
inline int64_t tap_index(const PoolShape& s, int64_t t, int64_t ih0, int64_t iw0) {
  return (ih0 + (t / s.kw) * s.dh) * s.w + iw0 + (t % s.kw) * s.dw;
}

// Winner keys (max_pool2d_vjp's saved winners, one byte per output): the
// winning tap of the window as row tap * kKeyRow + column tap (windows up
// to 16x16).  The forward writes them; the gradient reads them instead of
// the input, 1 byte per output instead of the window's cells.
constexpr int64_t kKeyRow = 16;

// The key of flat (H*W) index `at` in the window starting at (ih0, iw0), and back.
inline uint8_t cell_key(const PoolShape& s, int64_t at, int64_t ih0, int64_t iw0) {
  const int64_t ih = at / s.w, iw = at - ih * s.w;
  return static_cast<uint8_t>((ih - ih0) / s.dh * kKeyRow + (iw - iw0) / s.dw);
}
inline int64_t key_cell(const PoolShape& s, int64_t key, int64_t ih0, int64_t iw0) {
  return (ih0 + (key / kKeyRow) * s.dh) * s.w + iw0 + (key % kKeyRow) * s.dw;
}

// ---- NCHW ------------------------------------------------------------------

// Per-call tables (in the workspace), so that no pixel divides.
template <class T>
struct Tables {
  int64_t* col_k0;   // [ow] first window column inside the image, per output column
  int64_t* col_k1;   // [ow] one past the last
  int64_t* tap_off;  // [kh*kw] flat offset of tap t from the window's first cell
  int64_t* pad_off;  // [kh*kw] offset of tap t in the padded plane's scratch (plane_padded)
  int64_t* grad_off; // [kh*kw] offset of tap t in the average gradient's scratch (avg_grad_plane)
  int64_t* q_lo;     // [sw] padded plane: first phase column holding an input column
  int64_t* q_hi;     // [sw] one past the last
  T* row_count;      // [oh] average pooling: window rows counted by the divisor
  T* col_count;      // [round_up(ow, N)] columns counted (1 past ow)
  T* inv_col;        // [round_up(ow, N)] 1 / col_count (plane_separable)
  T* inv_flat;       // [oh * ow] plane_flat: 1 / divisor per output (null unless g.flat)
};

template <class T>
inline Tables<T> make_tables(const PoolShape& s, const Geometry& g, char* base) {
  constexpr int64_t N = Vec<T>::N;
  Tables<T> t;
  t.col_k0 = reinterpret_cast<int64_t*>(base);
  t.col_k1 = t.col_k0 + s.ow;
  t.tap_off = t.col_k1 + s.ow;
  t.pad_off = t.tap_off + s.kh * s.kw;
  t.grad_off = t.pad_off + s.kh * s.kw;
  t.q_lo = t.grad_off + s.kh * s.kw;
  t.q_hi = t.q_lo + s.sw;
  t.row_count = reinterpret_cast<T*>(base + round_up((2 * s.ow + 3 * s.kh * s.kw + 2 * s.sw) * 8, kAlign));
  t.col_count = t.row_count + s.oh;
  t.inv_col = t.col_count + round_up(s.ow, N);
  for (int64_t ow = 0; ow < s.ow; ++ow) clip(ow * s.sw - s.pl, s.w, s.kw, s.dw, t.col_k0[ow], t.col_k1[ow]);
  const int64_t phase_stride = g.pad_rows * g.pad_wq;
  for (int64_t i = 0; i < s.kh; ++i)
    for (int64_t j = 0; j < s.kw; ++j) {
      t.tap_off[i * s.kw + j] = i * s.dh * s.w + j * s.dw;
      const int64_t col = j * s.dw;
      t.pad_off[i * s.kw + j] = (col % s.sw) * phase_stride + i * s.dh * g.pad_wq + col / s.sw;
      t.grad_off[i * s.kw + j] = i * g.grad_wq + j;
    }
  for (int64_t f = 0; f < s.sw; ++f) {  // padded column q*sw + f is input column q*sw + f - pl
    t.q_lo[f] = min64(g.pad_wq, max64(0, ceil_div(s.pl - f, s.sw)));
    t.q_hi[f] = s.w + s.pl - f <= 0 ? t.q_lo[f] : max64(t.q_lo[f], min64(g.pad_wq, ceil_div(s.w + s.pl - f, s.sw)));
  }
  // Average divisors: rows x columns counted (both factors are exact small
  // integers, so their product is the count itself).
  for (int64_t oh = 0; oh < s.oh; ++oh) {
    const int64_t ih0 = oh * s.sh - s.pt;
    int64_t k0, k1;
    clip(ih0, s.h, s.kh, s.dh, k0, k1);
    t.row_count[oh] = T(s.count_include_pad ? min64(ih0 + s.kh, s.h + s.pb) - ih0 : k1 - k0);
  }
  for (int64_t ow = 0; ow < round_up(s.ow, N); ++ow) {
    if (ow >= s.ow) {
      t.col_count[ow] = T(1);
      continue;
    }
    const int64_t iw0 = ow * s.sw - s.pl;
    t.col_count[ow] = T(s.count_include_pad ? min64(iw0 + s.kw, s.w + s.pr) - iw0 : t.col_k1[ow] - t.col_k0[ow]);
  }
  for (int64_t ow = 0; ow < round_up(s.ow, N); ++ow) {
    // (A count of 0 gives 0 * inf = NaN, as 0 / 0 does.)
    t.inv_col[ow] = T(1) / t.col_count[ow];
  }
  t.inv_flat = g.flat ? t.inv_col + round_up(s.ow, N) : nullptr;
  if (g.flat)
    for (int64_t oh = 0; oh < s.oh; ++oh)
      for (int64_t ow = 0; ow < s.ow; ++ow) t.inv_flat[oh * s.ow + ow] = T(1) / (t.row_count[oh] * t.col_count[ow]);
  return t;
}

// ---- NCHW, values only: the padded plane ---------------------------------------------
//
// Forward without indices (the inference path): the plane is copied once
// into a per-thread scratch, padded with the op's neutral value (-inf for
// max, 0 for average) as far as any window reaches (ceil_mode overhang
// included) and split into sw column phases.  Every output row is then
// whole vectors of plain loads, kTileVectors independent chains at a time,
// with no border pixels at all.  -inf padding is exact for values: a padded
// cell can only stay the maximum where every real cell of the window is
// -inf too (the same value), and it never beats a NaN.

template <class T>
void fill_padded(const PoolShape& s, const Geometry& g, const Tables<T>& tb, const T* plane, T pad, T* scratch) {
  using V = Vec<T>;
  const int64_t sw = s.sw, phase_stride = g.pad_rows * g.pad_wq;
  for (int64_t r = 0; r < g.pad_rows; ++r) {
    const int64_t ih = r - s.pt;
    const bool inside = ih >= 0 && ih < s.h;
    const T* src = plane + (inside ? ih : 0) * s.w;
    for (int64_t f = 0; f < sw; ++f) {
      T* dst = scratch + f * phase_stride + r * g.pad_wq;
      const int64_t lo = inside ? tb.q_lo[f] : g.pad_wq, hi = inside ? tb.q_hi[f] : g.pad_wq;
      for (int64_t q = 0; q < lo; ++q) dst[q] = pad;
      const T* in = src + f - s.pl;  // in[q * sw] is padded column q*sw + f
      int64_t q = lo;
      if (sw == 1) {
        for (; q + V::N <= hi; q += V::N) V::store(dst + q, V::load(in + q));
      } else if (sw == 2) {  // the even lanes of 2N values ending inside the row
        for (; q + V::N <= hi && 2 * (q + V::N) + f - s.pl <= s.w; q += V::N)
          V::store(dst + q, V::load_even(in + 2 * q));
      }
      for (; q < hi; ++q) dst[q] = in[q * sw];
      for (q = hi; q < g.pad_wq; ++q) dst[q] = pad;
    }
  }
}

// Whether the lanes of a running sum of values add up to a number: false
// when one of the values was NaN (or +inf and -inf both were).
template <class T>
inline bool sum_is_number(typename Vec<T>::R v) {
  alignas(64) T l[Vec<T>::N];
  Vec<T>::store(l, v);
  T sum = T(0);
  for (int k = 0; k < Vec<T>::N; ++k) sum += l[k];
  return sum == sum;
}

// Whether a plane holds no NaN (then a max is plain vector max
// instructions, Vec::max_step, with no NaN bookkeeping).  A sum of the
// values: NaN exactly where a value is NaN or +inf and -inf both occur (a
// false alarm only costs the exact path).
template <class T>
inline bool nan_free(const T* p, int64_t n) {
  using V = Vec<T>;
  typename V::R a0 = V::zero(), a1 = V::zero();
  int64_t i = 0;
  for (; i + 2 * V::N <= n; i += 2 * V::N) {
    a0 = V::add(a0, V::load(p + i));
    a1 = V::add(a1, V::load(p + i + V::N));
  }
  if (i < n) a0 = V::add(a0, V::load_n(p + i, static_cast<int>(min64(V::N, n - i))));
  if (i + V::N < n) a1 = V::add(a1, V::load_n(p + i + V::N, static_cast<int>(n - i - V::N)));
  return sum_is_number<T>(V::add(a0, a1));
}

// Kinds of window reduction of padded_tile: kTileMaxFast is kTileMax for a
// NaN-free plane.
enum TileOp { kTileMax, kTileMaxFast, kTileAvg, kTileSum };

template <class T, int Op, int TV>
inline void padded_tile(const T* base, const int64_t* off, int64_t taps, T rows, const T* cols, int last_lanes,
                        T* ydst) {
  using V = Vec<T>;
  typename V::R acc[TV];
#pragma GCC unroll 8
  for (int v = 0; v < TV; ++v) acc[v] = V::load(base + off[0] + v * V::N);
  for (int64_t t = 1; t < taps; ++t) {
    const T* p = base + off[t];
#pragma GCC unroll 8
    for (int v = 0; v < TV; ++v) {
      const typename V::R x = V::load(p + v * V::N);
      acc[v] = Op == kTileMax       ? V::blend(acc[v], x, V::take(x, acc[v]))
               : Op == kTileMaxFast ? V::max_step(x, acc[v])
                                    : V::add(acc[v], x);
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < TV; ++v) {
    typename V::R r = acc[v];
    if (Op == kTileAvg) r = V::div(r, V::mul(V::set1(rows), V::load(cols + v * V::N)));
    if (v + 1 < TV || last_lanes == V::N)
      V::store(ydst + v * V::N, r);
    else
      V::store_n(ydst + v * V::N, r, last_lanes);
  }
}

// One row of `width` outputs from `base` (tap offsets `off`), in tiles of
// kTileVectors vectors and one last tile of 1..kTileVectors vectors.
template <class T, int Op>
inline void padded_row(const T* base, const int64_t* off, int64_t taps, T rows, const T* cols, int64_t width,
                       T* yrow) {
  constexpr int N = Vec<T>::N, TW = N * kTileVectors;
  static_assert(kTileVectors == 4, "the switch below covers 1..4 vectors");
  const int64_t full_end = width / TW * TW, rest = width - full_end;
  for (int64_t o = 0; o < full_end; o += TW)
    padded_tile<T, Op, kTileVectors>(base + o, off, taps, rows, cols + o, N, yrow + o);
  const int rest_vectors = static_cast<int>(ceil_div(rest, N));
  const int last = static_cast<int>(rest - (rest_vectors - 1) * N);
  const T* b = base + full_end;
  const T* c = cols + full_end;
  T* y = yrow + full_end;
  switch (rest_vectors) {
    case 1: padded_tile<T, Op, 1>(b, off, taps, rows, c, last, y); break;
    case 2: padded_tile<T, Op, 2>(b, off, taps, rows, c, last, y); break;
    case 3: padded_tile<T, Op, 3>(b, off, taps, rows, c, last, y); break;
    case 4: padded_tile<T, Op, 4>(b, off, taps, rows, c, last, y); break;
    default: break;  // rest == 0
  }
}

template <class T, bool Max>
void plane_padded(const PoolShape& s, const Geometry& g, const Tables<T>& tb, const T* plane, T* yp, T* scratch) {
  fill_padded(s, g, tb, plane, Max ? -std::numeric_limits<T>::infinity() : T(0), scratch);
  const bool fast = Max && nan_free(plane, s.h * s.w);
  for (int64_t oh = 0; oh < s.oh; ++oh) {
    const T* base = scratch + oh * s.sh * g.pad_wq;
    if (!Max)
      padded_row<T, kTileAvg>(base, tb.pad_off, s.kh * s.kw, tb.row_count[oh], tb.col_count, s.ow, yp + oh * s.ow);
    else if (fast)
      padded_row<T, kTileMaxFast>(base, tb.pad_off, s.kh * s.kw, T(1), tb.col_count, s.ow, yp + oh * s.ow);
    else
      padded_row<T, kTileMax>(base, tb.pad_off, s.kh * s.kw, T(1), tb.col_count, s.ow, yp + oh * s.ow);
  }
}

// The average gradient at stride 1 as a gather: input cell (ih, iw) receives
// q = grad_out / divisor of every window holding it, which are the outputs
// (ih + pt - i, iw + pl - j).  With S the q plane shifted by (kh-1, kw-1)
// and zero around it, grad_x[ih][iw] = sum over (i, j) of
// S[ih + pt + i][iw + pl + j]: a plain sum pooling of S, whole vectors.
template <class T>
void avg_grad_plane(const PoolShape& s, const Geometry& g, const Tables<T>& tb, const T* gyp, T* gxp, T* scratch) {
  using V = Vec<T>;
  for (int64_t r = 0; r < g.grad_rows; ++r) {
    T* row = scratch + r * g.grad_wq;
    const int64_t oh = r - (s.kh - 1);
    if (oh < 0 || oh >= s.oh) {
      for (int64_t c = 0; c < g.grad_wq; ++c) row[c] = T(0);
      continue;
    }
    T* q = row + (s.kw - 1);  // q[ow] = S[r][ow + kw - 1]
    for (int64_t c = 0; c < s.kw - 1; ++c) row[c] = T(0);
    const typename V::R rows = V::set1(tb.row_count[oh]);
    const T* g_row = gyp + oh * s.ow;
    for (int64_t ow = 0; ow < s.ow; ow += V::N) {
      const int lanes = static_cast<int>(min64(V::N, s.ow - ow));
      const typename V::R v = lanes == V::N ? V::load(g_row + ow) : V::load_n(g_row + ow, lanes);
      V::store_n(q + ow, V::div(v, V::mul(rows, V::load(tb.col_count + ow))), lanes);
    }
    for (int64_t c = s.kw - 1 + s.ow; c < g.grad_wq; ++c) row[c] = T(0);
  }
  for (int64_t ih = 0; ih < s.h; ++ih)
    padded_row<T, kTileSum>(scratch + (ih + s.pt) * g.grad_wq + s.pl, tb.grad_off, s.kh * s.kw, T(1),
                            tb.col_count, s.w, gxp + ih * s.w);
}

// One border pixel of a plane: window rows [kh0, kh1) (clipped once per
// output row) and columns from the per-call table.
template <class T, bool Max, bool Idx>
inline void border_pixel(const PoolShape& s, const Tables<T>& tb, const T* plane, int64_t ih0, int64_t kh0,
                         int64_t kh1, int64_t ow, T* y, int64_t* idx) {
  const int64_t iw0 = ow * s.sw - s.pl, kw0 = tb.col_k0[ow], kw1 = tb.col_k1[ow];
  T acc = T(0);
  int64_t best = -1;
  for (int64_t i = kh0; i < kh1; ++i) {
    const int64_t row = (ih0 + i * s.dh) * s.w + iw0;
    for (int64_t j = kw0; j < kw1; ++j) {
      const int64_t at = row + j * s.dw;
      const T v = plane[at];
      if (Max) {
        if (best < 0 || (acc == acc && !(v <= acc))) {
          acc = v;
          best = at;
        }
      } else {
        acc += v;
      }
    }
  }
  if (!Max) acc /= avg_divisor<T>(s, ih0, iw0, kh0, kh1, kw0, kw1);
  *y = acc;
  if (Idx) *idx = best;
}

// Max pooling with the winners' flat indices, from the padded plane: each
// lane tracks its winning tap.  A padded cell can win only a window whose
// real cells are all -inf; those (rare) lanes are redone one at a time with
// the exact rule, so the index is always a real cell.
template <class T, int TV>
inline void winner_tile(const T* base, const int64_t* off, int64_t taps, T* value, T* tap) {
  using V = Vec<T>;
  typename V::R acc[TV], win[TV];
#pragma GCC unroll 8
  for (int v = 0; v < TV; ++v) {
    acc[v] = V::load(base + off[0] + v * V::N);
    win[v] = V::zero();
  }
  for (int64_t t = 1; t < taps; ++t) {
    const T* p = base + off[t];
    const typename V::R tv = V::set1(T(t));
#pragma GCC unroll 8
    for (int v = 0; v < TV; ++v) {
      const typename V::R x = V::load(p + v * V::N);
      const auto m = V::take(x, acc[v]);
      acc[v] = V::blend(acc[v], x, m);
      win[v] = V::blend(win[v], tv, m);
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < TV; ++v) {
    V::store(value + v * V::N, acc[v]);
    V::store(tap + v * V::N, win[v]);
  }
}

template <class T>
void plane_padded_idx(const PoolShape& s, const Geometry& g, const Tables<T>& tb, const T* plane, T* yp,
                      int64_t* ip, uint8_t* kp, T* scratch) {
  constexpr int N = Vec<T>::N, TW = N * kTileVectors;
  const T ninf = -std::numeric_limits<T>::infinity();
  fill_padded(s, g, tb, plane, ninf, scratch);
  const int64_t taps = s.kh * s.kw;
  alignas(64) T value[TW], tap[TW];
  for (int64_t oh = 0; oh < s.oh; ++oh) {
    const T* base = scratch + oh * s.sh * g.pad_wq;
    const int64_t ih0 = oh * s.sh - s.pt;
    int64_t kh0, kh1;
    clip(ih0, s.h, s.kh, s.dh, kh0, kh1);
    T* yrow = yp + oh * s.ow;
    int64_t* irow = ip ? ip + oh * s.ow : nullptr;
    uint8_t* krow = kp ? kp + oh * s.ow : nullptr;
    for (int64_t ow = 0; ow < s.ow; ow += TW) {
      const int64_t count = min64(TW, s.ow - ow);
      switch (ceil_div(count, N)) {
        case 1: winner_tile<T, 1>(base + ow, tb.pad_off, taps, value, tap); break;
        case 2: winner_tile<T, 2>(base + ow, tb.pad_off, taps, value, tap); break;
        case 3: winner_tile<T, 3>(base + ow, tb.pad_off, taps, value, tap); break;
        default: winner_tile<T, 4>(base + ow, tb.pad_off, taps, value, tap); break;
      }
      const int64_t first = ih0 * s.w + ow * s.sw - s.pl;
      for (int64_t l = 0; l < count; ++l) {
        if (value[l] == ninf) {
          int64_t at;
          border_pixel<T, true, true>(s, tb, plane, ih0, kh0, kh1, ow + l, yrow + ow + l, &at);
          if (krow)
            krow[ow + l] = cell_key(s, at, ih0, (ow + l) * s.sw - s.pl);
          else
            irow[ow + l] = at;
          continue;
        }
        yrow[ow + l] = value[l];
        const int64_t t = static_cast<int64_t>(tap[l]);
        if (krow)
          krow[ow + l] = static_cast<uint8_t>(t / s.kw * kKeyRow + t % s.kw);
        else
          irow[ow + l] = first + l * s.sw + tb.tap_off[t];
      }
    }
  }
}

// ---- NCHW, values only, column stride 1 or 2: separable ---------------------
//
// Each input row that a window reaches is copied into a row buffer padded
// with the op's neutral value (so every window column is whole vector
// loads, shifted by the tap), reduced along the row into a row of the
// plane's horizontal results (stride 2: the even lanes of two vectors),
// and each output row is then the reduction of kh of those rows, the taps
// outside the image skipped.  kw + kh steps per output instead of kw * kh,
// and one pass over the input.  Max: exact only without NaN (the
// reductions in row-then-column order keep the first of equal values, as
// the row-major exact rule does), so the sum of the copied values is
// watched and on a NaN the function returns false for plane_padded to
// redo the plane.  Average: the row and column sums of the real cells
// divided by the count, as plane_padded does.
// The input rows that windows reach, each copied into its own row of
// `rows` (sep_row apart) with `pad` around it: padded column u is input
// column u - pl.  All rows are copied before any is read back: a load right
// after the stores it spans would wait for them.  Returns the sum of the
// values copied (NaN when one was, see plane_separable).
template <class T>
typename Vec<T>::R copy_rows(const PoolShape& s, const Geometry& g, const T* plane, T pad, T* rows) {
  using V = Vec<T>;
  constexpr int N = V::N;
  // (Locals, not g's fields: the stores below may alias those for all the
  // compiler knows, and it would reload them every iteration.)
  const int64_t W = s.w, pl = s.pl, row = g.sep_row, n_rows = g.sep_rows;
  const typename V::R fill = V::set1(pad);
  typename V::R seen = V::zero();
  for (int64_t ih = 0; ih < n_rows; ++ih) {
    const T* src = plane + ih * W;
    T* rb = rows + ih * row;
    for (int64_t u = 0; u < pl; ++u) rb[u] = pad;
    for (int64_t u = pl + W; u < row; u += N) V::store_n(rb + u, fill, static_cast<int>(min64(N, row - u)));
    T* dst = rb + pl;
    int64_t i = 0;
    for (; i + N <= W; i += N) {
      const typename V::R v = V::load(src + i);
      seen = V::add(seen, v);
      V::store(dst + i, v);
    }
    if (i < W) {
      const typename V::R v = V::load_n(src + i, static_cast<int>(W - i));
      seen = V::add(seen, v);
      V::store_n(dst + i, v, static_cast<int>(W - i));
    }
  }
  return seen;
}

// One row of horizontal window results, h[0, wq): `cols(c)` gives input
// columns [c, c + N) of the row with the padding's value outside it.
template <class T, bool Max, class Cols>
inline void horizontal_row(const PoolShape& s, int64_t wq, Cols cols, T* h) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N;
  const int64_t pl = s.pl, kw = s.kw, dw = s.dw;
  auto step = [](R v, R acc) { return Max ? V::max_step(v, acc) : V::add(v, acc); };
  if (s.sw == 1) {
    for (int64_t j = 0; j < wq; j += N) {
      R acc = cols(j - pl);
      for (int64_t t = 1; t < kw; ++t) acc = step(cols(j - pl + t * dw), acc);
      V::store(h + j, acc);
    }
  } else {
    for (int64_t j = 0; j < wq; j += N) {
      const int64_t c = 2 * j - pl;
      R lo = cols(c), hi = cols(c + N);
      for (int64_t t = 1; t < kw; ++t) {
        lo = step(cols(c + t * dw), lo);
        hi = step(cols(c + t * dw + N), hi);
      }
      V::store(h + j, V::even(lo, hi));
    }
  }
}

// `next` (or null): the next plane this thread pools, requested from memory
// row by row while this one computes.
template <class T, bool Max>
bool plane_separable(const PoolShape& s, const Geometry& g, const Tables<T>& tb, const T* plane, T* yp,
                     T* scratch, const T* next) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N;
  const T pad = Max ? -std::numeric_limits<T>::infinity() : T(0);
  const int64_t wq = g.sep_wq, W = s.w, pl = s.pl;
  T* hrows = scratch;                   // [sep_rows][wq]
  T* rows = scratch + g.sep_rows * wq;  // [sep_rows][sep_row] (copy_rows)
  auto step = [](R v, R acc) { return Max ? V::max_step(v, acc) : V::add(v, acc); };
  // Wide rows are read in place, masked loads only at their ends (1.3x
  // faster on 112-wide planes at stride 2); narrow ones, where nearly every
  // vector would be masked, from padded copies (8% faster on 28-wide).
  const bool in_place = W >= 4 * N;
  if (in_place) {
    if (Max && !nan_free(plane, s.h * W)) return false;
    for (int64_t ih = 0; ih < g.sep_rows; ++ih) {
      const T* src = plane + ih * W;
      if (next) prefetch_bytes(next + ih * W, W * static_cast<int64_t>(sizeof(T)));
      horizontal_row<T, Max>(s, wq, [&](int64_t c) {
        if (c >= 0 && c + N <= W) return V::load(src + c);
        const int lo = static_cast<int>(min64(N, max64(0, -c))), hi = static_cast<int>(max64(0, min64(N, W - c)));
        return V::load_fill(src + c, lo, hi, pad);
      }, hrows + ih * wq);
    }
  } else {
    const R seen = copy_rows(s, g, plane, pad, rows);
    if (Max && !sum_is_number<T>(seen)) return false;
    for (int64_t ih = 0; ih < g.sep_rows; ++ih) {
      const T* rb = rows + ih * g.sep_row + pl;
      horizontal_row<T, Max>(s, wq, [&](int64_t c) { return V::load(rb + c); }, hrows + ih * wq);
    }
  }
  for (int64_t oh = 0; oh < s.oh; ++oh) {
    const int64_t ih0 = oh * s.sh - s.pt;
    int64_t k0, k1;
    clip(ih0, s.h, s.kh, s.dh, k0, k1);
    T* yr = yp + oh * s.ow;
    for (int64_t j = 0; j < s.ow; j += N) {
      R acc = V::set1(pad);
      if (k0 < k1) {
        acc = V::load(hrows + (ih0 + k0 * s.dh) * wq + j);
        for (int64_t i = k0 + 1; i < k1; ++i) acc = step(V::load(hrows + (ih0 + i * s.dh) * wq + j), acc);
      }
      // Two multiplications by reciprocals, not a division (a quarter of
      // the time on 3x3 windows): within 2 ulp of sum / count.
      if (!Max) acc = V::mul(V::mul(acc, V::set1(T(1) / tb.row_count[oh])), V::load(tb.inv_col + j));
      if (j + N <= s.ow)
        V::store(yr + j, acc);
      else
        V::store_n(yr + j, acc, static_cast<int>(s.ow - j));
    }
  }
  return true;
}

// Max pooling's winner step with its tap: where x beats acc (Vec::take),
// acc and tap take x and xtap.
template <class T>
inline void take_winner(typename Vec<T>::R& acc, typename Vec<T>::R& tap, typename Vec<T>::R x,
                        typename Vec<T>::R xtap) {
  const auto m = Vec<T>::take(x, acc);
  acc = Vec<T>::blend(acc, x, m);
  tap = Vec<T>::blend(tap, xtap, m);
}

// Max pooling with the winners' flat indices, separable like
// plane_separable: along each row the winning value and its column tap,
// then down the window's rows the winner of those and its row tap.  The
// take/blend rule (first maximum, first NaN) composes exactly that way, so
// this is exact with NaN too.  A padded column can win only a row whose real
// cells are all -inf; an output whose value is -inf is redone one pixel at a
// time with the exact rule, so the index is always a real cell.
template <class T>
void plane_separable_idx(const PoolShape& s, const Geometry& g, const Tables<T>& tb, const T* plane, T* yp,
                         int64_t* ip, uint8_t* kp, T* scratch) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t wq = g.sep_wq;
  T* hval = scratch;                                // [sep_rows][wq]
  T* htap = scratch + g.sep_rows * wq;              // [sep_rows][wq]: column tap of hval
  T* rows = scratch + 2 * g.sep_rows * wq;          // [sep_rows][sep_row]
  copy_rows(s, g, plane, ninf, rows);
  auto sel = take_winner<T>;
  for (int64_t ih = 0; ih < g.sep_rows; ++ih) {
    const T* rb = rows + ih * g.sep_row;
    for (int64_t j = 0; j < wq; j += N) {
      if (s.sw == 1) {
        R acc = V::load(rb + j), tap = V::zero();
        for (int64_t t = 1; t < s.kw; ++t) sel(acc, tap, V::load(rb + j + t * s.dw), V::set1(T(t)));
        V::store(hval + ih * wq + j, acc);
        V::store(htap + ih * wq + j, tap);
      } else {
        const T* b = rb + 2 * j;
        R lo = V::load(b), hi = V::load(b + N), lo_tap = V::zero(), hi_tap = V::zero();
        for (int64_t t = 1; t < s.kw; ++t) {
          const R tv = V::set1(T(t));
          sel(lo, lo_tap, V::load(b + t * s.dw), tv);
          sel(hi, hi_tap, V::load(b + t * s.dw + N), tv);
        }
        V::store(hval + ih * wq + j, V::even(lo, hi));
        V::store(htap + ih * wq + j, V::even(lo_tap, hi_tap));
      }
    }
  }
  // The winner's offset from its window's first cell, rt * dh * W + ct * dw,
  // is computed in T: exact while below 2^24 (float) / 2^53 (double), which
  // Geometry::separable_idx checks.
  const R row_step = V::set1(T(s.dh * s.w)), col_step = V::set1(T(s.dw));
  const int64_t W = s.w, sw = s.sw, pl = s.pl;
  alignas(64) T value[N], off[N];
  for (int64_t oh = 0; oh < s.oh; ++oh) {
    const int64_t ih0 = oh * s.sh - s.pt;
    int64_t k0, k1;
    clip(ih0, s.h, s.kh, s.dh, k0, k1);
    T* yrow = yp + oh * s.ow;
    int64_t* irow = ip ? ip + oh * s.ow : nullptr;
    uint8_t* krow = kp ? kp + oh * s.ow : nullptr;
    for (int64_t j = 0; j < s.ow; j += N) {
      const int64_t count = min64(N, s.ow - j);
      R acc = V::set1(ninf), ct = V::zero(), rt = V::zero();
      if (k0 < k1) {
        const int64_t r0 = (ih0 + k0 * s.dh) * wq + j;
        acc = V::load(hval + r0);
        ct = V::load(htap + r0);
        rt = V::set1(T(k0));
        for (int64_t i = k0 + 1; i < k1; ++i) {
          const int64_t r = (ih0 + i * s.dh) * wq + j;
          const auto m = V::take(V::load(hval + r), acc);
          acc = V::blend(acc, V::load(hval + r), m);
          ct = V::blend(ct, V::load(htap + r), m);
          rt = V::blend(rt, V::set1(T(i)), m);
        }
      }
      if (count == N)
        V::store(yrow + j, acc);
      else
        V::store_n(yrow + j, acc, static_cast<int>(count));
      if (krow) {
        V::store_u8(krow + j, V::fma(rt, V::set1(T(kKeyRow)), ct), static_cast<int>(count));
      } else {
        V::store(off, V::fma(rt, row_step, V::mul(ct, col_step)));
        const int64_t first = ih0 * W + j * sw - pl;
        for (int64_t l = 0; l < count; ++l) irow[j + l] = first + l * sw + static_cast<int64_t>(off[l]);
      }
      if (V::any_n(V::eq(acc, V::set1(ninf)), static_cast<int>(count))) {
        V::store(value, acc);
        for (int64_t l = 0; l < count; ++l) {
          if (value[l] != ninf) continue;
          int64_t at;
          border_pixel<T, true, true>(s, tb, plane, ih0, k0, k1, j + l, yrow + j + l, &at);
          if (krow)
            krow[j + l] = cell_key(s, at, ih0, (j + l) * sw - pl);
          else
            irow[j + l] = at;
        }
      }
    }
  }
}

// ---- NCHW, values only, stride 1, output rows as wide as input rows: flat ----
//
// With stride 1 and ow == w ("same" windows, the inception/ResNet-D
// average pools), output pixel (oh, j) sits at flat index oh * w + j, the
// same as the input pixel its window is centred on, so the plane is read
// as one run of h * w values with no row loop and no copy: the horizontal
// result of flat position i is the reduction of x[i - pl + t * dw] over
// the taps t, whole vectors across row ends.  That is right except in the
// border columns [0, pl) and [w - pr, w), whose outer taps read the
// neighbouring row: those few cells are redone in scalar, with the pad
// value for the taps outside the row, as the copied rows of
// plane_separable give.  The horizontal results sit between rows of the
// pad value (pt above, what the last windows reach below), so output
// position i is the reduction of hp[i + t * dh * w]: whole vectors again.
// The taps are reduced in plane_separable's order, so max pooling is exact
// on NaN-free planes (on others the function returns false, as
// plane_separable does); the average is multiplied by one reciprocal of
// the divisor per output (within 1.5 ulp of sum / count).  3x3 "same" on
// 2 threads, against plane_separable's copied rows: 8x256x28x28 average
// 0.54 -> 0.33 ms, max 0.51 -> 0.29 ms; 8x64x56x56 max 0.45 -> 0.25 ms;
// 32x512x7x7 average (plane_padded before) 0.77 -> 0.60 ms.
template <class T, bool Max>
bool plane_flat(const PoolShape& s, const Geometry& g, const Tables<T>& tb, const T* plane, T* yp, T* scratch) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N;
  const T pad = Max ? -std::numeric_limits<T>::infinity() : T(0);
  const int64_t W = s.w, HW = s.h * s.w, pl = s.pl, kw = s.kw, dw = s.dw;
  if (Max && !nan_free(plane, HW)) return false;
  auto step = [](R v, R acc) { return Max ? V::max_step(v, acc) : V::add(v, acc); };
  auto step1 = [](T v, T acc) { return Max ? (v > acc ? v : acc) : v + acc; };
  const R fill = V::set1(pad);
  // hp row r holds input row r - pt; rows [r0, r1) are real.
  const int64_t rows = g.flat_rows, r0 = min64(s.pt, rows), r1 = max64(r0, min64(rows, s.pt + s.h));
  T* const hp = scratch;
  T* const h = hp + r0 * W;
  const int64_t n = (r1 - r0) * W;
  for (int64_t i = 0; i < r0 * W; i += N) V::store_n(hp + i, fill, static_cast<int>(min64(N, r0 * W - i)));
  auto cols = [&](int64_t c) {
    if (c >= 0 && c + N <= HW) return V::load(plane + c);
    const int lo = static_cast<int>(min64(N, max64(0, -c))), hi = static_cast<int>(max64(0, min64(N, HW - c)));
    return V::load_fill(plane + c, lo, hi, pad);
  };
  // (3- and 5-tap windows, the common cases, with the tap loops unrolled.)
  auto horizontal = [&](auto taps) {
    const int64_t kt = decltype(taps)::value ? decltype(taps)::value : kw;
    auto one = [&](int64_t i, auto load) {
      R acc = load(i - pl);
      for (int64_t t = 1; t < kt; ++t) acc = step(load(i - pl + t * dw), acc);
      V::store(h + i, acc);  // (past n: into the pad rows, filled below, or the slack)
    };
    int64_t i = 0;
    for (; i < n && i < pl; i += N) one(i, cols);
    // Vectors whose taps all lie inside the plane: plain loads.
    for (; i < n && i <= HW - N + pl - (kt - 1) * dw; i += N) one(i, [&](int64_t c) { return V::load(plane + c); });
    for (; i < n; i += N) one(i, cols);
  };
  if (kw == 3)
    horizontal(std::integral_constant<int, 3>{});
  else if (kw == 5)
    horizontal(std::integral_constant<int, 5>{});
  else
    horizontal(std::integral_constant<int, 0>{});
  const int64_t right = max64(min64(pl, W), W - s.pr);
  for (int64_t r = 0; r < r1 - r0; ++r) {
    const T* xr = plane + r * W;
    auto redo = [&](int64_t j) {
      const int64_t c0 = j - pl;
      T acc = c0 >= 0 && c0 < W ? xr[c0] : pad;
      for (int64_t t = 1; t < kw; ++t) {
        const int64_t c = c0 + t * dw;
        acc = step1(c >= 0 && c < W ? xr[c] : pad, acc);
      }
      h[r * W + j] = acc;
    };
    for (int64_t j = 0; j < min64(pl, W); ++j) redo(j);
    for (int64_t j = right; j < W; ++j) redo(j);
  }
  for (int64_t i = r1 * W; i < rows * W; i += N) V::store_n(hp + i, fill, static_cast<int>(min64(N, rows * W - i)));
  const int64_t m = s.oh * W, tap_step = s.dh * W, kh = s.kh;
  auto vertical = [&](auto taps) {
    const int64_t kt = decltype(taps)::value ? decltype(taps)::value : kh;
    for (int64_t i = 0; i < m; i += N) {
      R acc = V::load(hp + i);
      for (int64_t t = 1; t < kt; ++t) acc = step(V::load(hp + i + t * tap_step), acc);
      if (!Max) acc = V::mul(acc, V::load(tb.inv_flat + i));
      if (i + N <= m)
        V::store(yp + i, acc);
      else
        V::store_n(yp + i, acc, static_cast<int>(m - i));
    }
  };
  if (kh == 3)
    vertical(std::integral_constant<int, 3>{});
  else if (kh == 5)
    vertical(std::integral_constant<int, 5>{});
  else
    vertical(std::integral_constant<int, 0>{});
  return true;
}

// ---- NCHW max gradient at stride 2 (windows up to 3x3) ----------------------
//
// ResNet's 3x3/2 pooling and its kin, written, not scattered.  The winners
// come from a separable pass over the plane read in place (s2_row_winners:
// column tap per input row; s2_window_winners: row tap per output), or
// from max_pool2d_vjp's keys.  Input row ih, as column
// phases (even columns, odd columns), collects the gradients whose winner
// lies on it: output column ow's winner at column tap c is input column
// 2*ow - pl + c, i.e. phase (c - pl) & 1 at position ow + floor((c - pl) / 2).
// Per output row, the grad_out row (zero where the gradient goes elsewhere,
// see below) and each output's winning tap pair are staged in two rows;
// then each (row tap, phase) adds, block by block of positions, the staged
// gradients whose key matches, read at the tap's shift: one aligned
// read-modify-write of the phase row per block (shifted stores would
// overlap and defeat store forwarding).  A row is complete once the next
// output row's windows start below it; it is then written interleaved
// (every cell, zeros included: no zeroing pass) and its buffers reused
// (three rows live).  Order: output rows ascending, and within one the
// column taps descending (a cell receives from a smaller ow at a larger
// tap): the order of the sequential scatter in output order, so the sums
// are bitwise the same.  An output whose winning value is -inf may have
// been won by a padded column; its gradient goes through the exact scalar
// rule instead.
// One block of N phase positions [p, p + N) of plane_max_grad_s2: for each
// row tap i (dst[i] null when the window's row i is outside the image) and
// phase, the block's sum in a register (a new row starts from zero), the
// column taps in descending order.  Column tap c adds the gradient staged
// at ow = p - shift to phase (c - PL) & 1, shift (c - PL) >> 1: with the
// taps and the pad known at compile time the six sums stay in registers.
template <class T, int PL>
inline void grad_s2_block(T* const (&dst)[3][2], const bool (&fresh)[3], int64_t kw, int64_t p, const T* gvb,
                          const T* keyb) {
  using V = Vec<T>;
  using R = typename V::R;
  R sum[3][2];
#pragma GCC unroll 3
  for (int i = 0; i < 3; ++i)
#pragma GCC unroll 2
    for (int ph = 0; ph < 2; ++ph) sum[i][ph] = dst[i][ph] && !fresh[i] ? V::load(dst[i][ph] + p) : V::zero();
  auto tap = [&](auto c_const) {
    constexpr int c = decltype(c_const)::value;
    constexpr int ph = (c - PL) & 1, shift = (c - PL) >> 1;
    if (c >= kw) return;
    const R gv = V::load(gvb + p - shift), key = V::load(keyb + p - shift);
#pragma GCC unroll 3
    for (int i = 0; i < 3; ++i) {
      if (!dst[i][0]) continue;
      const auto m = V::eq(key, V::set1(T(kKeyRow * i + c)));
      sum[i][ph] = V::blend(sum[i][ph], V::add(sum[i][ph], gv), m);
    }
  };
  tap(std::integral_constant<int, 2>{});
  tap(std::integral_constant<int, 1>{});
  tap(std::integral_constant<int, 0>{});
#pragma GCC unroll 3
  for (int i = 0; i < 3; ++i)
#pragma GCC unroll 2
    for (int ph = 0; ph < 2; ++ph)
      if (dst[i][ph]) V::store(dst[i][ph] + p, sum[i][ph]);
}

// The horizontal pass of stride-2 max pooling with winners, straight from
// the plane (no copied rows): for each input row a window reaches, the
// winner of each output column's kw taps and its column tap.  Each tap's
// columns of N outputs are the even lanes of two vectors, taken first, so
// the winner is chosen on N lanes, not 2N.
template <class T>
void s2_row_winners(const PoolShape& s, const Geometry& g, const T* plane, T* hval, T* htap) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t wq = g.sep_wq, W = s.w, pl = s.pl;
  auto sel = take_winner<T>;
  for (int64_t ih = 0; ih < g.sep_rows; ++ih) {
    const T* src = plane + ih * W;
    // Rows a few ahead requested now: each row's first load would otherwise
    // wait for memory (the winner steps leave too few loads in flight).
    if (ih + kRowsAhead < g.sep_rows) prefetch_bytes(src + kRowsAhead * W, W * static_cast<int64_t>(sizeof(T)));
    auto cols = [&](int64_t c) {
      if (c >= 0 && c + N <= W) return V::load(src + c);
      const int lo = static_cast<int>(min64(N, max64(0, -c))), hi = static_cast<int>(max64(0, min64(N, W - c)));
      return V::load_fill(src + c, lo, hi, ninf);
    };
    for (int64_t j = 0; j < wq; j += N) {
      const int64_t c = 2 * j - pl;
      R acc = V::even(cols(c), cols(c + N)), tap = V::zero();
      for (int64_t t = 1; t < s.kw; ++t) sel(acc, tap, V::even(cols(c + t), cols(c + t + N)), V::set1(T(t)));
      V::store(hval + ih * wq + j, acc);
      V::store(htap + ih * wq + j, tap);
    }
  }
}

// The vertical pass for outputs [j, j + N) of the row whose windows start
// at input row ih0, real rows [k0, k1): the winner and its key.
template <class T>
inline void s2_window_winners(const T* hval, const T* htap, int64_t wq, int64_t ih0, int64_t k0, int64_t k1,
                              int64_t j, typename Vec<T>::R& acc, typename Vec<T>::R& key) {
  using V = Vec<T>;
  using R = typename V::R;
  const int64_t r0 = (ih0 + k0) * wq + j;
  acc = V::load(hval + r0);
  R ct = V::load(htap + r0), rt = V::set1(T(k0));
  for (int64_t i = k0 + 1; i < k1; ++i) {
    const int64_t r = (ih0 + i) * wq + j;
    const auto m = V::take(V::load(hval + r), acc);
    acc = V::blend(acc, V::load(hval + r), m);
    ct = V::blend(ct, V::load(htap + r), m);
    rt = V::blend(rt, V::set1(T(i)), m);
  }
  key = V::fma(rt, V::set1(T(kKeyRow)), ct);
}

// Forward of the stride-2 windows plane_max_grad_s2 takes (values and
// winner keys, for max_pool2d_vjp): its two passes, stored.  Outputs whose
// value is -inf may have been won by a padded column: redone with the exact
// rule.  8x64x112x112 3x3/2 on 2 threads: 2.1 ms with plane_separable_idx's
// copied rows, 1.9 ms from the plane, 1.2-1.4 ms with s2_row_winners'
// prefetch (the values-only forward: 1.2-1.4 ms).
template <class T>
void plane_max_keys_s2(const PoolShape& s, const Geometry& g, const Tables<T>& tb, const T* plane, T* yp,
                       uint8_t* kp, T* scratch) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t wq = g.sep_wq, OW = s.ow;
  T* hval = scratch;
  T* htap = scratch + g.sep_rows * wq;
  s2_row_winners(s, g, plane, hval, htap);
  const R inf_v = V::set1(ninf);
  for (int64_t oh = 0; oh < s.oh; ++oh) {
    const int64_t ih0 = oh * 2 - s.pt;
    int64_t k0, k1;
    clip(ih0, s.h, s.kh, 1, k0, k1);
    T* yrow = yp + oh * OW;
    uint8_t* krow = kp + oh * OW;
    for (int64_t j = 0; j < OW; j += N) {
      const int count = static_cast<int>(min64(N, OW - j));
      R acc, key;
      s2_window_winners(hval, htap, wq, ih0, k0, k1, j, acc, key);
      if (count == N)
        V::store(yrow + j, acc);
      else
        V::store_n(yrow + j, acc, count);
      V::store_u8(krow + j, key, count);
      if (V::any_n(V::eq(acc, inf_v), count))
        for (int64_t ow = j; ow < j + count; ++ow) {
          if (yrow[ow] != ninf) continue;
          int64_t at;
          border_pixel<T, true, true>(s, tb, plane, ih0, k0, k1, ow, yrow + ow, &at);
          krow[ow] = cell_key(s, at, ih0, ow * 2 - s.pl);
        }
    }
  }
}

// With `keys` (the forward's winners of the plane), x is not read at all.
template <class T>
void plane_max_grad_s2(const PoolShape& s, const Geometry& g, const Tables<T>& tb, const T* plane, const T* gy,
                       T* gx, T* scratch, bool next, const uint8_t* keys) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t wq = g.sep_wq, W = s.w, pl = s.pl, L = g.grad_s2_row, OW = s.ow;
  T* hval = scratch;                           // [sep_rows][wq]
  T* htap = scratch + g.sep_rows * wq;         // [sep_rows][wq]
  T* ring = scratch + 2 * g.sep_rows * wq;     // [3 rows][2 phases][L], position p at [p + N]
  T* gvb = ring + 6 * L + N;                   // staged gradient of ow at [ow], zeros around
  T* keyb = gvb + L;                           // its winner's key (row tap * kKeyRow + column tap), -1 around
  if (!keys) s2_row_winners(s, g, plane, hval, htap);
  const R zero = V::zero(), none = V::set1(T(-1)), inf_v = V::set1(ninf);
  for (int64_t i = -N; i < L - N; i += N) {
    V::store(gvb + i, zero);
    V::store(keyb + i, none);
  }
  auto phase_row = [&](int64_t ih, int64_t phase) { return ring + ((ih % 3) * 2 + phase) * L + N; };
  // A row's buffers are written (not added to) by the first output row
  // that reaches it; rows no window reaches (kernel rows < stride) are
  // written as zeros.
  int64_t touched = -1;  // last input row any window has reached
  const bool stream = g.grad_stream && reinterpret_cast<uintptr_t>(gx) % 64 == 0 && (W * sizeof(T)) % 64 == 0;
  int64_t flushed = 0;   // rows [0, flushed) are written
  auto flush_until = [&](int64_t end) {
    for (; flushed < end; ++flushed) {
      T* row = gx + flushed * W;
      if (flushed > touched) {
        for (int64_t iw = 0; iw < W; ++iw) row[iw] = T(0);
        continue;
      }
      const T* e = phase_row(flushed, 0);
      const T* o = phase_row(flushed, 1);
      int64_t m = 0;
#if defined(PYCONV_ISA_avx512)
      // Whole cache lines: stored around the caches (the gradient is
      // written once and is larger than them; no read for ownership).
      if (stream) {
        alignas(64) T pair[2 * N];
        for (; 2 * (m + N) <= W; m += N) {
          V::store_interleaved(pair, V::load(e + m), V::load(o + m));
          V::stream(row + 2 * m, V::load(pair));
          V::stream(row + 2 * m + N, V::load(pair + N));
        }
      }
#endif
      for (; 2 * (m + N) <= W; m += N) V::store_interleaved(row + 2 * m, V::load(e + m), V::load(o + m));
      if (2 * m < W) store_interleaved_n<T>(row + 2 * m, V::load(e + m), V::load(o + m), static_cast<int>(W - 2 * m));
    }
  };
  const int64_t plane_bytes = s.h * W * static_cast<int64_t>(sizeof(T));
  const int64_t prefetch_step = round_up(ceil_div(plane_bytes, s.oh), 64);
  for (int64_t oh = 0; oh < s.oh; ++oh) {
    const int64_t ih0 = oh * 2 - s.pt;
    int64_t k0, k1;
    clip(ih0, s.h, s.kh, 1, k0, k1);
    if (k0 >= k1) continue;  // (never: every window has a real row, PyTorch's padding rule)
    const T* gyr = gy + oh * OW;
    bool border = false;
    for (int64_t j = 0; j < OW; j += N) {
      const int count = static_cast<int>(min64(N, OW - j));
      const R gv = count == N ? V::load(gyr + j) : V::load_n(gyr + j, count);
      if (keys) {  // exact winners: no border redo
        V::store(gvb + j, gv);
        V::store(keyb + j, V::load_u8(keys + oh * OW + j, count));
        continue;
      }
      R acc, key;
      s2_window_winners(hval, htap, wq, ih0, k0, k1, j, acc, key);
      const auto lost = V::eq(acc, inf_v);
      border |= V::any_n(lost, count);
      V::store(gvb + j, V::blend(gv, zero, lost));
      V::store(keyb + j, key);
    }
    // Positions p in [-1, OW + 1), a block of N at a time; every (row tap,
    // phase) sum of the block in registers, taps in descending order.
    T* dst[3][2];
    bool fresh[3];
    for (int64_t i = 0; i < 3; ++i) {
      const bool real = i >= k0 && i < k1;
      fresh[i] = ih0 + i > touched;
      dst[i][0] = real ? phase_row(ih0 + i, 0) : nullptr;
      dst[i][1] = real ? phase_row(ih0 + i, 1) : nullptr;
    }
    for (int64_t p = -1; p < OW + 1; p += N) {
      if (pl == 0)
        grad_s2_block<T, 0>(dst, fresh, s.kw, p, gvb, keyb);
      else
        grad_s2_block<T, 1>(dst, fresh, s.kw, p, gvb, keyb);
    }
    touched = ih0 + k1 - 1;
    if (border)
      for (int64_t ow = 0; ow < OW; ++ow) {
        T v;
        int64_t at;
        border_pixel<T, true, true>(s, tb, plane, ih0, k0, k1, ow, &v, &at);
        if (v != ninf) continue;
        phase_row(at / W, (at % W) & 1)[(at % W) >> 1] += gyr[ow];
      }
    flush_until(min64(s.h, (oh + 1) * 2 - s.pt));
    // The next plane's input and grad_out (`next`: the call has one), a
    // share per output row: read from memory while this plane computes
    // (the horizontal pass alone is too short to hide it).
    if (next) {
      const char* next_gy = reinterpret_cast<const char*>(gy + s.oh * OW);
      if (!keys) {
        const char* next_x = reinterpret_cast<const char*>(plane + s.h * W);
        for (int64_t b = oh * prefetch_step; b < (oh + 1) * prefetch_step && b < plane_bytes; b += 64)
          __builtin_prefetch(next_x + b);
      }
      for (int64_t b = oh * OW * int64_t(sizeof(T)); b < (oh + 1) * OW * int64_t(sizeof(T)); b += 64)
        __builtin_prefetch(next_gy + b);
    }
  }
  flush_until(s.h);
#if defined(PYCONV_ISA_avx512)
  if (stream) _mm_sfence();
#endif
}

// ---- NCHW 2x2 / stride 2 max pooling (no padding) -----------------------------
//
// The most common pooling gets its own loop: windows tile the plane, so
// each output reads two rows once, straight from the input (no scratch):
// the even and odd columns of each row (one shuffle each), the row's winner,
// then the two rows' winner, in row-major order so ties and NaNs resolve as
// everywhere else.  Its gradient is written, not scattered: each input cell
// belongs to one window and gets that window's gradient or zero, two
// interleaved vectors per row, with no zeroing pass first.

inline bool is_2x2_tiling(const PoolShape& s) {
  return s.kh == 2 && s.kw == 2 && s.sh == 2 && s.sw == 2 && s.dh == 1 && s.dw == 1 &&
         !(s.pt || s.pb || s.pl || s.pr) && 2 * s.oh <= s.h && 2 * s.ow <= s.w;
}

// kIndices: values and the winners' flat indices (ip) or keys (kp);
// kGradient: grad_x from x; kKeyGradient: grad_x from the forward's keys.
enum Mode2x2 { kValues, kIndices, kGradient, kKeyGradient };

// Values only, for planes at least one vector of outputs wide: each row's max
// with its right neighbour (a load one element on), the two rows' max, then
// the even lanes (the windows' left columns): plain max instructions and one
// shuffle per vector of outputs, the first value kept on ties as in the exact
// path.  That is exact only without NaN: the sum of the inputs read tells,
// and on a NaN the function returns false for the exact loop to redo the
// plane.  A row's last vector overlaps the one before, its shifted load
// masked to stay inside the row.
template <class T>
bool plane_2x2_fast(const PoolShape& s, const T* plane, T* yp) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N;
  const int64_t W = s.w;
  if (s.ow < N) return false;
  R seen = V::zero();
  auto pairs = [&](const T* a, const T* b, bool last) {  // 2N inputs of each row -> N outputs
    const R a0 = V::load(a), a1 = V::load(a + N), b0 = V::load(b), b1 = V::load(b + N);
    seen = V::add(seen, V::add(V::add(a0, a1), V::add(b0, b1)));
    const R a1s = last ? V::load_n(a + N + 1, N - 1) : V::load(a + N + 1);
    const R b1s = last ? V::load_n(b + N + 1, N - 1) : V::load(b + N + 1);
    const R lo = V::max_step(V::max_step(V::load(b + 1), b0), V::max_step(V::load(a + 1), a0));
    const R hi = V::max_step(V::max_step(b1s, b1), V::max_step(a1s, a1));
    return V::even(lo, hi);
  };
  for (int64_t oh = 0; oh < s.oh; ++oh) {
    const T* r0 = plane + 2 * oh * W;
    const T* r1 = r0 + W;
    T* yr = yp + oh * s.ow;
    int64_t ow = 0;
    for (; ow + N <= s.ow && 2 * (ow + N) + 1 <= W; ow += N) V::store(yr + ow, pairs(r0 + 2 * ow, r1 + 2 * ow, false));
    if (ow < s.ow) {
      ow = s.ow - N;
      V::store(yr + ow, pairs(r0 + 2 * ow, r1 + 2 * ow, true));
    }
  }
  return sum_is_number<T>(seen);
}

template <class T, int Mode>
void plane_2x2(const PoolShape& s, const T* plane, T* yp, int64_t* ip, uint8_t* kp, const T* gyp, T* gxp,
               const uint8_t* kg) {
  using V = Vec<T>;
  constexpr bool kGrad = Mode == kGradient || Mode == kKeyGradient;
  auto sel = [](typename V::R& acc, typename V::R& tap, typename V::R v, typename V::R vtap) {
    const auto m = V::take(v, acc);
    acc = V::blend(acc, v, m);
    if (Mode != kValues) tap = V::blend(tap, vtap, m);
  };
  // The taps as keys: row tap * kKeyRow + column tap.
  const typename V::R t0 = V::zero(), t1 = V::set1(T(1)), t2 = V::set1(T(kKeyRow)), t3 = V::set1(T(kKeyRow + 1));
  const int64_t W = s.w;
  constexpr int N = V::N;
  // Lanes l < m: p[2l] (reads p[0 .. 2m - 1) only).
  auto evens = [](const T* p, bool full, int m) {
    if (full) return V::load_even(p);
    return V::even(V::load_n(p, static_cast<int>(min64(N, 2 * m - 1))),
                   V::load_n(p + N, static_cast<int>(max64(0, 2 * m - 1 - N))));
  };
  for (int64_t oh = 0; oh < s.oh; ++oh) {
    const T* r0 = plane ? plane + 2 * oh * W : nullptr;
    const T* r1 = plane ? r0 + W : nullptr;
    // N windows at a time; plain loads where the odd columns' load (one
    // past the even one) stays in the row, masked ones at the row's end.
    for (int64_t ow = 0; ow < s.ow; ow += N) {
      const int m = static_cast<int>(min64(N, s.ow - ow));
      const bool full = m == N && 2 * (ow + N) + 1 <= W;
      const int64_t o = oh * s.ow + ow;
      typename V::R top_tap;
      if (Mode == kKeyGradient) {
        top_tap = V::load_u8(kg + o, m);
      } else {
        typename V::R top = evens(r0 + 2 * ow, full, m);
        top_tap = t0;
        sel(top, top_tap, evens(r0 + 2 * ow + 1, full, m), t1);
        typename V::R bottom = evens(r1 + 2 * ow, full, m), bottom_tap = t2;
        sel(bottom, bottom_tap, evens(r1 + 2 * ow + 1, full, m), t3);
        sel(top, top_tap, bottom, bottom_tap);
        if (!kGrad) {
          if (m == N)
            V::store(yp + o, top);
          else
            V::store_n(yp + o, top, m);
        }
      }
      if (Mode == kIndices && kp) V::store_u8(kp + o, top_tap, m);
      if (Mode == kIndices && !kp) {
        alignas(64) T taps[N];
        V::store(taps, top_tap);
        for (int l = 0; l < m; ++l) {
          const int64_t t = static_cast<int64_t>(taps[l]);
          ip[o + l] = (2 * oh + t / kKeyRow) * W + 2 * (ow + l) + t % kKeyRow;
        }
      }
      if (kGrad) {
        const typename V::R g = m == N ? V::load(gyp + o) : V::load_n(gyp + o, m), z = V::zero();
        T* g0 = gxp + 2 * oh * W + 2 * ow;
        const typename V::R a = V::blend(z, g, V::eq(top_tap, t0)), b = V::blend(z, g, V::eq(top_tap, t1));
        const typename V::R c = V::blend(z, g, V::eq(top_tap, t2)), d = V::blend(z, g, V::eq(top_tap, t3));
        if (m == N) {
          V::store_interleaved(g0, a, b);
          V::store_interleaved(g0 + W, c, d);
        } else {
          store_interleaved_n<T>(g0, a, b, 2 * m);
          store_interleaved_n<T>(g0 + W, c, d, 2 * m);
        }
      }
    }
    if (kGrad)  // a last odd column belongs to no window
      for (int64_t iw = 2 * s.ow; iw < W; ++iw) gxp[2 * oh * W + iw] = gxp[(2 * oh + 1) * W + iw] = T(0);
  }
  if (kGrad)  // nor does a last odd row
    for (int64_t i = 2 * s.oh * W; i < s.h * W; ++i) gxp[i] = T(0);
}

// Idx: the winners' flat indices (idx) or keys (keys), one of them not null.
template <class T, bool Max, bool Idx>
void forward_nchw(const PoolShape& s, const Geometry& g, const T* x, T* y, int64_t* idx, uint8_t* keys, char* ws,
                  int nt) {
  const Tables<T> tb = make_tables<T>(s, g, ws + g.off_taps);
  const bool tiling = is_2x2_tiling(s);
  const int64_t planes = s.n * s.c, in_plane = s.h * s.w, out_plane = s.oh * s.ow;
#pragma omp parallel num_threads(nt)
  {
    T* scratch = reinterpret_cast<T*>(ws + g.off_scratch + thread_index() * g.thread_stride);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      if (Max && tiling && !Idx && plane_2x2_fast(s, x + p * in_plane, y + p * out_plane))
        continue;
      int64_t* ip = Idx && idx ? idx + p * out_plane : nullptr;
      uint8_t* kp = Idx && keys ? keys + p * out_plane : nullptr;
      if (Max && tiling)
        plane_2x2<T, Idx ? kIndices : kValues>(s, x + p * in_plane, y + p * out_plane, ip, kp, nullptr, nullptr,
                                              nullptr);
      else if (Idx && kp && g.keys_s2)
        plane_max_keys_s2<T>(s, g, tb, x + p * in_plane, y + p * out_plane, kp, scratch);
      else if (Idx && (g.separable_idx || (kp && g.separable)))
        plane_separable_idx<T>(s, g, tb, x + p * in_plane, y + p * out_plane, ip, kp, scratch);
      else if (Idx)
        plane_padded_idx<T>(s, g, tb, x + p * in_plane, y + p * out_plane, ip, kp, scratch);
      else if (!(g.flat && plane_flat<T, Max>(s, g, tb, x + p * in_plane, y + p * out_plane, scratch)) &&
               !(g.separable && plane_separable<T, Max>(s, g, tb, x + p * in_plane, y + p * out_plane, scratch,
                                                        p + 1 < planes ? x + (p + 1) * in_plane : nullptr)))
        plane_padded<T, Max>(s, g, tb, x + p * in_plane, y + p * out_plane, scratch);
    }
  }
}

// ---- NHWC ------------------------------------------------------------------

constexpr int kChanBlock = 4;  // forward_nhwc: channel vectors per pixel step

// One output pixel, CV vectors of channels from c (CV == 1: `lanes` of
// them): taps clipped to the image, one accumulator per vector (independent
// chains).  Averages multiply by the reciprocal of the divisor (within 1.5
// ulp of sum / count; a vector division per output was a third of the
// time).  2 threads, against one vector and one division per step:
// 8x28x28x256 3x3 "same" average 0.57-0.78 -> 0.30 ms, 8x112x112x64 3x3/2
// max 0.93-1.1 -> 0.52-0.85 ms, 2x2 max 0.51-0.73 -> 0.29-0.53 ms.
template <class T, bool Max, bool Idx, int CV>
inline void pixel_nhwc(const PoolShape& s, const T* xn, int64_t ih0, int64_t iw0, int64_t kh0, int64_t kh1,
                       int64_t kw0, int64_t kw1, T inv, int64_t c, int lanes, T* ydst, int64_t* idst,
                       uint8_t* kdst) {
  using V = Vec<T>;
  using R = typename V::R;
  const bool full = CV > 1 || lanes == V::N;
  const int64_t row_taps = kdst ? kKeyRow : s.kw;  // tap numbering: keys, or row-major flat
  R acc[CV], tap[CV];
#pragma GCC unroll 4
  for (int v = 0; v < CV; ++v) acc[v] = tap[v] = V::zero();
  bool first = true;
  for (int64_t i = kh0; i < kh1; ++i)
    for (int64_t j = kw0; j < kw1; ++j) {
      const T* p = xn + ((ih0 + i * s.dh) * s.w + iw0 + j * s.dw) * s.c + c;
      const R t = V::set1(T(i * row_taps + j));
#pragma GCC unroll 4
      for (int v = 0; v < CV; ++v) {
        const R x = full ? V::load(p + v * V::N) : V::load_n(p, lanes);
        if (!Max) {
          acc[v] = V::add(acc[v], x);
        } else if (first) {
          acc[v] = x;
          if (Idx) tap[v] = t;
        } else {
          const auto m = V::take(x, acc[v]);
          acc[v] = V::blend(acc[v], x, m);
          if (Idx) tap[v] = V::blend(tap[v], t, m);
        }
      }
      first = false;
    }
#pragma GCC unroll 4
  for (int v = 0; v < CV; ++v) {
    const int64_t cv = c + v * V::N;
    const R out = Max ? acc[v] : V::mul(acc[v], V::set1(inv));
    if (full)
      V::store(ydst + cv, out);
    else
      V::store_n(ydst + cv, out, lanes);
    if (Idx && kdst) V::store_u8(kdst + cv, tap[v], full ? V::N : lanes);
    if (Idx && !kdst) {
      alignas(64) T taps[V::N];
      V::store(taps, tap[v]);
      for (int l = 0; l < (full ? V::N : lanes); ++l)
        idst[cv + l] = tap_index(s, static_cast<int64_t>(taps[l]), ih0, iw0);
    }
  }
}

template <class T, bool Max, bool Idx>
void forward_nhwc(const PoolShape& s, const T* x, T* y, int64_t* idx, uint8_t* keys, int nt) {
  constexpr int N = Vec<T>::N;
  constexpr int64_t CB = kChanBlock * N;
  const int64_t rows = s.n * s.oh;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = r / s.oh, oh = r % s.oh;
    const T* xn = x + n * s.h * s.w * s.c;
    const int64_t ih0 = oh * s.sh - s.pt;
    int64_t kh0, kh1;
    clip(ih0, s.h, s.kh, s.dh, kh0, kh1);
    for (int64_t ow = 0; ow < s.ow; ++ow) {
      const int64_t iw0 = ow * s.sw - s.pl;
      int64_t kw0, kw1;
      clip(iw0, s.w, s.kw, s.dw, kw0, kw1);
      const T inv = Max ? T(1) : T(1) / avg_divisor<T>(s, ih0, iw0, kh0, kh1, kw0, kw1);
      const int64_t o = (r * s.ow + ow) * s.c;
      int64_t* ip = Idx && idx ? idx + o : nullptr;
      uint8_t* kp = Idx && keys ? keys + o : nullptr;
      int64_t c = 0;
      for (; c + CB <= s.c; c += CB)
        pixel_nhwc<T, Max, Idx, kChanBlock>(s, xn, ih0, iw0, kh0, kh1, kw0, kw1, inv, c, N, y + o, ip, kp);
      for (; c < s.c; c += N)
        pixel_nhwc<T, Max, Idx, 1>(s, xn, ih0, iw0, kh0, kh1, kw0, kw1, inv, c, static_cast<int>(min64(N, s.c - c)),
                                   y + o, ip, kp);
    }
  }
}

// ---- global pools ----------------------------------------------------------

// Lanes of a vector combined pairwise in registers (a fixed tree:
// deterministic, no long chain of dependent operations, no trip through
// memory): lane i with lane i + N/2, then N/4, ... down to 1.
template <class T, bool Max>
inline T reduce_lanes(typename Vec<T>::R v) {
  using V = Vec<T>;
  for (int width = V::N / 2; width >= 1; width /= 2) {
    const typename V::R o = V::swap(v, width);
    v = Max ? V::blend(v, o, V::take(o, v)) : V::add(v, o);
  }
  return V::first(v);
}

// Tiny planes (4x4 and less: about one vector each), a block of planes at a
// time: the block (planes x len, contiguous) is transposed into a stack tile
// and reduced down its columns, one vector of planes per load, so no plane
// pays a horizontal reduction (1.3x faster on 32x1024x4x4).
constexpr int64_t kGlobalTile = 64 * 16;  // tile elements: 64 planes of <= 16

template <class T>
inline int64_t global_block_planes(int64_t len) {
  return len <= 16 ? 64 : 0;  // measured: per plane is faster from 5x5 planes up
}

template <class T, bool Max>
void global_nchw_blocks(const PoolShape& s, const T* x, T* y, int nt, int64_t bp) {
  using V = Vec<T>;
  const int64_t planes = s.n * s.c, len = s.h * s.w, blocks = ceil_div(planes, bp);
#pragma omp parallel num_threads(nt)
  {
    alignas(64) T tile[kGlobalTile];
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t p0 = b * bp, np = min64(bp, planes - p0);
      transpose_copy(x + p0 * len, len, tile, bp, np, len);  // tile[i * bp + p] = plane p0 + p, element i
      for (int64_t v = 0; v < np; v += V::N) {
        const int lanes = static_cast<int>(min64(V::N, np - v));
        const T* col = tile + v;  // lanes past np hold stale values: never stored
        typename V::R acc = V::load(col);
        for (int64_t i = 1; i < len; ++i) {
          const typename V::R e = V::load(col + i * bp);
          acc = Max ? V::blend(acc, e, V::take(e, acc)) : V::add(acc, e);
        }
        if (!Max) acc = V::div(acc, V::set1(T(len)));
        if (lanes == V::N)
          V::store(y + p0 + v, acc);
        else
          V::store_n(y + p0 + v, acc, lanes);
      }
    }
  }
}

template <class T, bool Max>
void global_nchw(const PoolShape& s, const T* x, T* y, int nt) {
  using V = Vec<T>;
  const int64_t planes = s.n * s.c, len = s.h * s.w;
  if (const int64_t bp = global_block_planes<T>(len)) return global_nchw_blocks<T, Max>(s, x, y, nt, bp);
  auto step = [](typename V::R acc, typename V::R v) {
    return Max ? V::blend(acc, v, V::take(v, acc)) : V::add(acc, v);
  };
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const T* src = x + p * len;
    // Max: element order only decides between equal values or between
    // NaNs, which give the same result; starting from the plane's first
    // value changes nothing.
    const typename V::R init = Max ? V::set1(src[0]) : V::zero();
    // Named accumulators, not an array indexed at run time: that would keep
    // them in memory (2x slower on 7x7 planes).
    typename V::R a0 = init, a1 = init, a2 = init, a3 = init;
    int64_t i = 0;
    for (; i + 4 * V::N <= len; i += 4 * V::N) {
      a0 = step(a0, V::load(src + i));
      a1 = step(a1, V::load(src + i + V::N));
      a2 = step(a2, V::load(src + i + 2 * V::N));
      a3 = step(a3, V::load(src + i + 3 * V::N));
    }
    for (; i + 2 * V::N <= len; i += 2 * V::N) {
      a0 = step(a0, V::load(src + i));
      a2 = step(a2, V::load(src + i + V::N));
    }
    if (i + V::N <= len) {
      a3 = step(a3, V::load(src + i));
      i += V::N;
    }
    if (i < len) {
      typename V::R v;
      if (!Max) {
        v = V::load_n(src + i, static_cast<int>(len - i));
      } else if (len >= V::N) {  // the plane's last N values: a repeat does not change a max
        v = V::load(src + len - V::N);
      } else {  // the missing lanes repeat the first value
        alignas(64) T tmp[V::N];
        for (int l = 0; l < V::N; ++l) tmp[l] = l < len ? src[l] : src[0];
        v = V::load(tmp);
      }
      a1 = step(a1, v);
    }
    const typename V::R r = step(step(a0, a1), step(a2, a3));
    y[p] = Max ? reduce_lanes<T, true>(r) : reduce_lanes<T, false>(r) / T(len);
  }
}

constexpr int kGlobalChanVectors = 8;  // global_nhwc: channel vectors per work unit

template <class T, bool Max>
void global_nhwc(const PoolShape& s, const T* x, T* y, int nt) {
  using V = Vec<T>;
  using R = typename V::R;
  // Work units of kGlobalChanVectors vectors of channels of one image: one
  // accumulator each (independent chains, not one chain of len dependent
  // steps), and each pixel's row of the unit is whole cache lines read in
  // sequence (one vector per unit before: 32x7x7x2048 0.59 -> 0.135 ms
  // on 2 threads).  The channels beyond the last whole unit go one vector
  // at a time.  Each channel is reduced over the pixels in order, whatever
  // the unit.
  constexpr int CV = kGlobalChanVectors;
  constexpr int64_t CH = CV * V::N;
  const int64_t full_units = s.c / CH, rest = s.c - full_units * CH, rest_vectors = ceil_div(rest, V::N);
  const int64_t per_image = full_units + rest_vectors, units = s.n * per_image, len = s.h * s.w;
  auto step = [](R acc, R v) { return Max ? V::blend(acc, v, V::take(v, acc)) : V::add(acc, v); };
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t n = u / per_image, k = u % per_image;
    if (k < full_units) {
      const T* src = x + n * len * s.c + k * CH;
      R acc[CV];
#pragma GCC unroll 8
      for (int v = 0; v < CV; ++v) acc[v] = V::load(src + v * V::N);
      for (int64_t i = 1; i < len; ++i) {
        const T* p = src + i * s.c;
#pragma GCC unroll 8
        for (int v = 0; v < CV; ++v) acc[v] = step(acc[v], V::load(p + v * V::N));
      }
      T* dst = y + n * s.c + k * CH;
#pragma GCC unroll 8
      for (int v = 0; v < CV; ++v) V::store(dst + v * V::N, Max ? acc[v] : V::div(acc[v], V::set1(T(len))));
      continue;
    }
    const int64_t c = full_units * CH + (k - full_units) * V::N;
    const int lanes = static_cast<int>(min64(V::N, s.c - c));
    const bool full = lanes == V::N;
    const T* src = x + n * len * s.c + c;
    R acc = full ? V::load(src) : V::load_n(src, lanes);
    for (int64_t i = 1; i < len; ++i) {
      const T* p = src + i * s.c;
      acc = step(acc, full ? V::load(p) : V::load_n(p, lanes));
    }
    if (!Max) acc = V::div(acc, V::set1(T(len)));
    if (full)
      V::store(y + n * s.c + c, acc);
    else
      V::store_n(y + n * s.c + c, acc, lanes);
  }
}

// ---- backward --------------------------------------------------------------

// NCHW: per plane; the max gradient reruns the plane's forward for its
// winners (or reads the forward's keys), then adds each output gradient to
// its winner in output order.
template <class T>
void backward_nchw(const PoolShape& s, const Geometry& g, const T* x, const uint8_t* keys, const T* gy, T* gx,
                   char* ws, int nt) {
  const Tables<T> tb = make_tables<T>(s, g, ws + g.off_taps);
  const bool tiling = is_2x2_tiling(s);
  const int64_t planes = s.n * s.c, in_plane = s.h * s.w, out_plane = s.oh * s.ow;
  const bool max = s.op == PoolOp::Max;
#pragma omp parallel num_threads(nt)
  {
    char* mine = ws + g.off_scratch + thread_index() * g.thread_stride;
    T* scratch = reinterpret_cast<T*>(mine);
    int64_t* winners = reinterpret_cast<int64_t*>(mine + round_up(g.scratch_elems * int64_t(sizeof(T)), kAlign));
    T* values = reinterpret_cast<T*>(winners + g.grad_elems);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      T* gxp = gx + p * in_plane;
      const T* gyp = gy + p * out_plane;
      if (g.avg_gather) {
        avg_grad_plane(s, g, tb, gyp, gxp, scratch);
        continue;
      }
      const uint8_t* kp = keys ? keys + p * out_plane : nullptr;
      if (max && tiling) {
        if (kp)
          plane_2x2<T, kKeyGradient>(s, nullptr, nullptr, nullptr, nullptr, gyp, gxp, kp);
        else
          plane_2x2<T, kGradient>(s, x + p * in_plane, nullptr, nullptr, nullptr, gyp, gxp, nullptr);
        continue;
      }
      if (max && g.grad_s2) {
        plane_max_grad_s2<T>(s, g, tb, kp ? nullptr : x + p * in_plane, gyp, gxp, scratch, p + 1 < planes, kp);
        continue;
      }
      for (int64_t i = 0; i < in_plane; ++i) gxp[i] = T(0);
      if (max && kp) {
        for (int64_t oh = 0, o = 0; oh < s.oh; ++oh)
          for (int64_t ow = 0; ow < s.ow; ++ow, ++o)
            gxp[key_cell(s, kp[o], oh * s.sh - s.pt, ow * s.sw - s.pl)] += gyp[o];
        continue;
      }
      if (max) {
        if (g.separable_idx)
          plane_separable_idx<T>(s, g, tb, x + p * in_plane, values, winners, nullptr, scratch);
        else
          plane_padded_idx<T>(s, g, tb, x + p * in_plane, values, winners, nullptr, scratch);
        for (int64_t o = 0; o < out_plane; ++o) gxp[winners[o]] += gyp[o];
        continue;
      }
      for (int64_t oh = 0; oh < s.oh; ++oh) {
        const int64_t ih0 = oh * s.sh - s.pt;
        int64_t kh0, kh1;
        clip(ih0, s.h, s.kh, s.dh, kh0, kh1);
        for (int64_t ow = 0; ow < s.ow; ++ow) {
          const int64_t iw0 = ow * s.sw - s.pl, kw0 = tb.col_k0[ow], kw1 = tb.col_k1[ow];
          const T v = gyp[oh * s.ow + ow] / avg_divisor<T>(s, ih0, iw0, kh0, kh1, kw0, kw1);
          for (int64_t i = kh0; i < kh1; ++i) {
            T* row = gxp + (ih0 + i * s.dh) * s.w + iw0;
            for (int64_t j = kw0; j < kw1; ++j) row[j * s.dw] += v;
          }
        }
      }
    }
  }
}

// NHWC max gradient of 2x2/2 windows that tile the image: each input cell
// belongs to one window, so it is written once (its window's gradient or
// zero) with no zeroing pass and no read-modify-write, two input rows per
// output row (threads split the output rows).  The winners come from the
// forward's keys or are recomputed from x in the forward's order.
// 8x112x112x64 on 2 threads: from x 2.2-3.7 -> 1.4-1.8 ms, from keys
// 1.4-1.6 -> 0.65-1.0 ms (backward_nhwc's zeroing pass and four
// read-modify-writes per window before).
template <class T>
void max_grad_nhwc_2x2(const PoolShape& s, const T* x, const uint8_t* keys, const T* gy, T* gx, int nt) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N;
  const int64_t C = s.c, W = s.w, rows = s.n * s.oh, row = W * C;
  const R z = V::zero(), t0 = V::zero(), t1 = V::set1(T(1)), t2 = V::set1(T(kKeyRow)), t3 = V::set1(T(kKeyRow + 1));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = r / s.oh, oh = r % s.oh, base = (n * s.h + 2 * oh) * row;
    T* g0 = gx + base;
    T* g1 = g0 + row;
    const T* x0 = x ? x + base : nullptr;
    const T* x1 = x ? x0 + row : nullptr;
    const T* gyr = gy + r * s.ow * C;
    const uint8_t* kr = keys ? keys + r * s.ow * C : nullptr;
    for (int64_t ow = 0; ow < s.ow; ++ow)
      for (int64_t c = 0; c < C; c += N) {
        const int lanes = static_cast<int>(min64(N, C - c));
        const bool full = lanes == N;
        const int64_t o = ow * C + c, a = 2 * ow * C + c, b = a + C;
        auto load = [&](const T* p) { return full ? V::load(p) : V::load_n(p, lanes); };
        R tap;
        if (kr) {
          tap = V::load_u8(kr + o, lanes);
        } else {
          R acc = load(x0 + a);
          tap = t0;
          auto step = [&](R v, R t) {
            const auto m = V::take(v, acc);
            acc = V::blend(acc, v, m);
            tap = V::blend(tap, t, m);
          };
          step(load(x0 + b), t1);
          step(load(x1 + a), t2);
          step(load(x1 + b), t3);
        }
        const R g = load(gyr + o);
        const R cells[4] = {V::blend(z, g, V::eq(tap, t0)), V::blend(z, g, V::eq(tap, t1)),
                            V::blend(z, g, V::eq(tap, t2)), V::blend(z, g, V::eq(tap, t3))};
        T* dst[4] = {g0 + a, g0 + b, g1 + a, g1 + b};
        for (int k = 0; k < 4; ++k) {
          if (full)
            V::store(dst[k], cells[k]);
          else
            V::store_n(dst[k], cells[k], lanes);
        }
      }
    for (int64_t i = 2 * s.ow * C; i < row; ++i) g0[i] = g1[i] = T(0);  // a last odd column: no window
    if (oh == s.oh - 1)  // nor a last odd row
      for (int64_t i = (n * s.h + 2 * s.oh) * row; i < (n + 1) * s.h * row; ++i) gx[i] = T(0);
  }
}

// NHWC: per (image, chunk of channels), output pixels in order, all the
// chunk's channel vectors per pixel (contiguous memory).  The max gradient
// is added with vector read-modify-writes, one per window tap, of the
// gradient masked to the lanes that tap won: no scalar scatter.
template <class T>
void backward_nhwc(const PoolShape& s, const T* x, const uint8_t* keys, const T* gy, T* gx, int nt) {
  using V = Vec<T>;
  constexpr int64_t CH = 8 * V::N;  // channels per work unit
  const int64_t chunks = ceil_div(s.c, CH), units = s.n * chunks, in_plane = s.h * s.w;
  const bool max = s.op == PoolOp::Max;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t n = u / chunks, c0 = (u % chunks) * CH, c1 = min64(s.c, c0 + CH);
    T* gxn = gx + n * in_plane * s.c;
    const T* xn = x ? x + n * in_plane * s.c : nullptr;
    for (int64_t i = 0; i < in_plane; ++i)
      for (int64_t c = c0; c < c1; ++c) gxn[i * s.c + c] = T(0);
    for (int64_t oh = 0; oh < s.oh; ++oh) {
      const int64_t ih0 = oh * s.sh - s.pt;
      int64_t kh0, kh1;
      clip(ih0, s.h, s.kh, s.dh, kh0, kh1);
      for (int64_t ow = 0; ow < s.ow; ++ow) {
        const int64_t iw0 = ow * s.sw - s.pl;
        int64_t kw0, kw1;
        clip(iw0, s.w, s.kw, s.dw, kw0, kw1);
        const T* gp = gy + ((n * s.oh + oh) * s.ow + ow) * s.c;
        // (the divisor's reciprocal, as the forward: 8x28x28x256 3x3 "same"
        // 1.11-1.26 -> 1.07-1.09 ms on 2 threads)
        const typename V::R inv = V::set1(max ? T(1) : T(1) / avg_divisor<T>(s, ih0, iw0, kh0, kh1, kw0, kw1));
        for (int64_t c = c0; c < c1; c += V::N) {
          const int lanes = static_cast<int>(min64(V::N, c1 - c));
          const bool full = lanes == V::N;
          const typename V::R g = full ? V::load(gp + c) : V::load_n(gp + c, lanes);
          typename V::R tap = V::zero();
          const int64_t row_taps = keys ? kKeyRow : s.kw;
          if (max && keys) {
            tap = V::load_u8(keys + ((n * s.oh + oh) * s.ow + ow) * s.c + c, lanes);
          } else if (max) {  // the winning tap of each lane, as in the forward
            typename V::R acc = V::zero();
            bool first = true;
            for (int64_t i = kh0; i < kh1; ++i)
              for (int64_t j = kw0; j < kw1; ++j) {
                const T* p = xn + ((ih0 + i * s.dh) * s.w + iw0 + j * s.dw) * s.c + c;
                const typename V::R v = full ? V::load(p) : V::load_n(p, lanes);
                const typename V::R t = V::set1(T(i * row_taps + j));
                if (first) {
                  acc = v;
                  tap = t;
                  first = false;
                  continue;
                }
                const auto m = V::take(v, acc);
                acc = V::blend(acc, v, m);
                tap = V::blend(tap, t, m);
              }
          }
          const typename V::R share = max ? g : V::mul(g, inv);
          for (int64_t i = kh0; i < kh1; ++i)
            for (int64_t j = kw0; j < kw1; ++j) {
              T* p = gxn + ((ih0 + i * s.dh) * s.w + iw0 + j * s.dw) * s.c + c;
              const typename V::R add =
                  max ? V::blend(V::zero(), share, V::eq(tap, V::set1(T(i * row_taps + j)))) : share;
              if (full)
                V::store(p, V::add(V::load(p), add));
              else
                V::store_n(p, V::add(V::load_n(p, lanes), add), lanes);
            }
        }
      }
    }
  }
}

// ---- entry points ----------------------------------------------------------

template <class T>
void pool_forward(const PoolShape& s, const T* x, T* y, int64_t* idx, uint8_t* keys, void* workspace, int nt) {
  const Geometry g = make_geometry<T>(s, nt, false);
  char* ws = static_cast<char*>(workspace);
  const bool max = s.op == PoolOp::Max;
  if (g.global && !idx && !keys) {
    if (s.layout == Layout::NCHW)
      max ? global_nchw<T, true>(s, x, y, nt) : global_nchw<T, false>(s, x, y, nt);
    else
      max ? global_nhwc<T, true>(s, x, y, nt) : global_nhwc<T, false>(s, x, y, nt);
    return;
  }
  if (s.layout == Layout::NCHW) {
    if (!max)
      forward_nchw<T, false, false>(s, g, x, y, nullptr, nullptr, ws, nt);
    else if (idx || keys)
      forward_nchw<T, true, true>(s, g, x, y, idx, keys, ws, nt);
    else
      forward_nchw<T, true, false>(s, g, x, y, nullptr, nullptr, ws, nt);
  } else {
    if (!max)
      forward_nhwc<T, false, false>(s, x, y, nullptr, nullptr, nt);
    else if (idx || keys)
      forward_nhwc<T, true, true>(s, x, y, idx, keys, nt);
    else
      forward_nhwc<T, true, false>(s, x, y, nullptr, nullptr, nt);
  }
}

template <class T>
void pool_backward(const PoolShape& s, const T* x, const uint8_t* keys, const T* gy, T* gx, void* workspace, int nt) {
  const Geometry g = make_geometry<T>(s, nt, true);
  if (s.layout == Layout::NCHW)
    backward_nchw(s, g, x, keys, gy, gx, static_cast<char*>(workspace), nt);
  else if (s.op == PoolOp::Max && is_2x2_tiling(s))
    max_grad_nhwc_2x2(s, x, keys, gy, gx, nt);
  else
    backward_nhwc(s, x, keys, gy, gx, nt);
}

int64_t pool_workspace_bytes(const PoolShape& s, int elem_bytes, int nt, bool backward) {
  return elem_bytes == 4 ? make_geometry<float>(s, nt, backward).total
                         : make_geometry<double>(s, nt, backward).total;
}

}  // namespace

const PoolKernels kPool = {
    &pool_workspace_bytes, &pool_forward<float>, &pool_forward<double>, &pool_backward<float>,
    &pool_backward<double>,
};

}  // namespace PYCONV_ISA_NS
}  // namespace pyconv
