// Depthwise convolution (groups == C_in, any channel multiplier m, stride,
// dilation, padding), compiled once per ISA.  Output channel c*m + j reads
// input channel c.  Depthwise layers do ~2 FLOP per byte moved, so the goal
// is to touch the input and the output once each, from the layout they are
// in, with no layout conversion:
//
// NCHW picks one of these strategies per shape (make_geometry):
// - 3x3 at stride 1 with column padding 1 (AVX-512): rows narrower than a
//   vector one row per (256- or 512-bit) vector, the column taps masked
//   loads (Narrow3); wider rows in column strips streamed down the plane
//   whose column taps are valignd windows of whole plane vectors held in
//   registers, never a misaligned load (rows3_strip); at stride 2 with left
//   padding 0 or 1, the even and odd columns of two vectors by one permute
//   each (s2_strip);
// - flat (AVX-512, stride 1, output as wide as the input, rows <= 32): each
//   plane is read in place as one flat vector sequence; a tap is a shift of
//   it, and masked loads zero the lanes that fall in the padding;
// - channel-blocked NHWC tiles (rows <= 32 or column stride > 1, C >= one
//   vector): blocks of channels transposed into a zero-padded pixel-major
//   tile in L2, computed by the NHWC kernel with every pixel interior, and
//   transposed back;
// - plane-wise (wide stride-1 rows, few channels): the plane is copied,
//   zero-padded, into a per-thread scratch split into `sw` column phases
//   (phase f holds padded columns f, f + sw, ...), so that for any stride
//   and dilation an output row reads each kernel tap as one contiguous run:
//   padded column ow*sw + kw*dw is phase (kw*dw) % sw at ow + (kw*dw) / sw.
//   The kernel is vectorised along the output width (TV vectors of V pixels
//   per tile), with the tap weight broadcast; the m output planes of the
//   input plane reuse the scratch while it is hot in L1/L2.
// Padding never reaches an inner loop.
//
// NHWC: vectorised across channels (V consecutive input channels, plain
// vector loads of input and weight per tap).  Output rows are split into a
// border (pixels whose taps leave the image: one pixel at a time, taps
// clipped) and an interior (TW pixels per tile, no checks; 3-column kernels
// at stride 1-2 load each input vector once for all the taps that read it);
// the kernel rows a given output row can reach are clipped once per row.
//
// Determinism: every output element is computed by one thread in the fixed
// tap order (kh, kw).
#include <cstdint>
#include <type_traits>

#include "core/dispatch.hpp"
#include "core/problem.hpp"
#include "separable/bands.hpp"
#include "simd/kernel_util.hpp"
#include "simd/vec.hpp"

namespace pyconv {
namespace PYCONV_ISA_NS {
namespace {


constexpr int kTileVectors = 4;  // NCHW: 4 accumulators of V pixels per row tile
// NCHW layers go through channel-blocked NHWC tiles (depthwise_nchw_blocked)
// when output rows are at most this wide, or at any width for column
// strides > 1: short rows make the plane-wise kernel's vectors short and
// its per-plane costs dominate, and its phase copy is a strided gather,
// while vectors across channels are full whatever the plane.  Measured on
// AVX2 and AVX-512 (3x3, 7..56 wide): 1.3-4x faster there; on wide
// stride-1 planes (56, 112) the plane-wise kernel is as fast or faster.
constexpr int64_t kBlockedMaxRow = 32;
// Bytes of a blocked tile's scratch (the padded input band and its output
// band, channels innermost): a few of them fit in L2 next to the weights.
constexpr int64_t kBlockedScratchBytes = 160 * 1024;
// A thread's NCHW planes of an NHWC band (depthwise_nhwc_planes): L2.
constexpr int64_t kPlanesScratchBytes = 512 * 1024;
// gather_tile transposes whole rows (not runs of pixels with a destination
// each) from this width on.
constexpr int64_t kGatherRowsMinW = 16;
// Flat NCHW planes go kFlatChunk vectors at a time (two planes at a time
// when a plane is at most half that).
constexpr int kFlatChunk = 8;
// NHWC tiles: kTilePixels pixels x kChanVectors vectors of channels, so even
// a single border pixel has 4 independent FMA chains (a lone chain of 9
// dependent FMAs would wait on latency, not throughput).
constexpr int kChanVectors = 4;
#if defined(PYCONV_ISA_avx512)
constexpr int kTilePixels = 4;   // 4 x 4 zmm accumulators + 4 weight vectors
#else
constexpr int kTilePixels = 2;   // 2 x 4 ymm accumulators + 4 weight vectors
#endif
constexpr int kTailPixels = 4;   // channel tail: 4 pixels x 1 vector

struct Geometry {
  int64_t m;              // channel multiplier
  int64_t hp, wq;         // NCHW scratch: padded rows, columns per phase
  int64_t plane_elems;    // NCHW scratch elements per thread (all phases)
  int64_t cp;             // NHWC: channels rounded up to lanes
  int64_t w_elems;        // packed weight
  int64_t off_w, off_b, off_taps, off_scratch, total;
  // NCHW stride-1 planes as flat vectors (see depthwise_nchw_flat, AVX-512):
  // vectors per plane (a multiple of kFlatChunk) and the tap table.
  bool flat;
  int64_t f_vecs, off_foff, off_fmask;
  // NCHW 3x3 stride-1 planes, output as wide as the input, in place (see
  // wide3_tile): the forward where neither of the above serves.
  bool wide;
  // NCHW through NHWC tiles (see depthwise_nchw_blocked): blocks of t_cw
  // channels, bands of t_rows output rows read from a zero-padded scratch
  // of t_in_rows x t_wp pixels; the NHWC kernel's weight and bias (t_cp
  // channels, zero past C) and each thread's input and output tiles.
  bool via_nhwc;
  int64_t t_cw, t_rows, t_in_rows, t_wp, t_cp, t_w_elems, off_tw, off_tb, t_in_elems, t_tile_elems;
  // NHWC with few channels through NCHW planes (see depthwise_nhwc_planes):
  // bands of p_rows output rows (p_bands an image), each thread's planes of
  // p_elems (p_in_rows input rows, then the band's output), the weights as
  // OIHW at off_pw.
  bool via_planes;
  int64_t p_rows, p_bands, p_in_rows, p_elems, off_pw;
};

#if defined(PYCONV_ISA_avx512)
template <class T>
bool rows3_serves(const ConvShape& s);
template <class T>
bool rows3s2_serves(const ConvShape& s);
#endif

// NHWC layers with at most half a vector of channels (an RGB image's first
// depthwise layer) whose NCHW planes the register-window strips serve: the
// channel-vectorised NHWC kernel would fill c of a vector's lanes.  At
// stride 2 the transposes weigh more (4 input pixels per output pixel):
// 4x64x64 planes, 2 threads, against the NHWC kernel: stride 1 c = 3, 7,
// 8: 2.7x, 1.4x, 1.9x; stride 2 c = 4, 6, 7: 1.33x, 1.06x, 0.95x.
template <class T>
bool nhwc_via_planes(const ConvShape& s) {
#if defined(PYCONV_ISA_avx512)
  return s.layout == Layout::NHWC && 2 * s.c <= Vec<T>::N &&
         (rows3_serves<T>(s) || (s.c <= 4 && rows3s2_serves<T>(s)));
#else
  (void)s;
  return false;
#endif
}

template <class T>
Geometry make_geometry(const ConvShape& s, int nt, bool prepacked) {
  constexpr int V = Vec<T>::N;
  Geometry g{};
  g.m = s.oc / s.c;
  const int64_t e = sizeof(T);
  int64_t off = 0;
  if (s.layout == Layout::NCHW) {
    g.hp = s.h + s.pt + s.pb;
    const int64_t span = round_up(s.ow, V);  // columns a row's tiles read (full tiles, then single vectors)
    const int64_t reach = (s.kw - 1) * s.dw / s.sw;            // furthest phase offset of a tap
    g.wq = max64(ceil_div(s.w + s.pl + s.pr, s.sw), span + reach);
    g.plane_elems = s.sw * g.hp * g.wq;
    g.w_elems = s.oc * s.kh * s.kw;  // OIHW as is
    g.off_w = off;
    if (!prepacked) off += round_up(g.w_elems * e, kAlign);
    g.off_b = off;
    g.off_taps = off;
    off += round_up(s.kh * s.kw * 8, kAlign);
    g.off_scratch = off;
#if defined(PYCONV_ISA_avx512)
    g.flat = s.sh == 1 && s.sw == 1 && s.ow == s.w && s.ow <= kBlockedMaxRow;
#endif
    if (g.flat) {
      g.f_vecs = round_up(ceil_div(s.oh * s.ow, V), kFlatChunk);
      g.off_foff = off;
      off += round_up(s.kh * s.kw * 8, kAlign);
      g.off_fmask = off;
      off += round_up(s.kh * s.kw * g.f_vecs * 2, kAlign);
      g.off_scratch = off;
    }
    g.via_nhwc = !g.flat && s.c >= V && (s.ow <= kBlockedMaxRow || s.sw > 1);
#if !defined(PYCONV_ISA_generic)  // (generic: 1.4x slower than the phase copy's rows, its masked loads are lane loops)
    g.wide = !g.flat && !g.via_nhwc && s.kh == 3 && s.kw == 3 && s.dh == 1 && s.dw == 1 && s.sh == 1 &&
             s.sw == 1 && s.ow == s.w;
#endif
    if (g.via_nhwc) {
      // Two vectors of channels per block: the load-reusing tiles take two
      // at a time, and a 7x7 block's input and output tiles (16 KiB) stay
      // in L1; four vectors measured the same on 8x1024x7x7 (2 threads).
      g.t_cw = min64(V * 2, round_up(s.c, V));
      g.t_cp = round_up(s.c, g.t_cw);
      g.t_wp = s.w + s.pl + s.pr;
      // Output rows per band: the whole plane if the tiles fit the budget.
      const int64_t reach = (s.kh - 1) * s.dh + 1;
      const int64_t in_row = g.t_wp * g.t_cw * e, out_row = s.ow * g.t_cw * g.m * e;
      g.t_rows = s.oh;
      while (g.t_rows > 1 && ((g.t_rows - 1) * s.sh + reach) * in_row + g.t_rows * out_row > kBlockedScratchBytes)
        --g.t_rows;
      g.t_in_rows = (g.t_rows - 1) * s.sh + reach;
      g.t_in_elems = g.t_in_rows * g.t_wp * g.t_cw;
      g.t_tile_elems = g.t_in_elems + g.t_rows * s.ow * g.t_cw * g.m;
      g.t_w_elems = g.m * s.kh * s.kw * g.t_cp;
      g.off_tw = off;
      off += round_up(g.t_w_elems * e, kAlign);
      g.off_tb = off;
      off += round_up(g.m * g.t_cp * e, kAlign);
      g.off_scratch = off;
      off += nt * round_up(g.t_tile_elems * e, kAlign);
    } else {
      off += nt * round_up(g.plane_elems * e, kAlign);
    }
  } else {
    g.cp = round_up(s.c, V * kChanVectors);
    g.w_elems = g.m * s.kh * s.kw * g.cp;  // [j][kh][kw][c]
    g.off_w = off;
    if (!prepacked) off += round_up(g.w_elems * e, kAlign);
    g.off_b = off;
    off += round_up(g.m * g.cp * e, kAlign);  // bias [j][c]
    g.off_scratch = off;
    g.via_planes = nhwc_via_planes<T>(s);
    if (g.via_planes) {
      g.off_pw = off;
      off += round_up(s.oc * s.kh * s.kw * e, kAlign);
      // Bands: every thread busy (a batch smaller than the thread count is
      // split by rows), each band's planes within kPlanesScratchBytes.
      auto elems = [&](int64_t rows) { return s.c * ((rows - 1) * s.sh + s.kh) * s.w + s.oc * rows * s.ow; };
      int64_t fit = s.oh;
      while (fit > 1 && elems(fit) * e > kPlanesScratchBytes) fit = (fit + 1) / 2;
      g.p_bands = max64(ceil_div(nt, s.n), ceil_div(s.oh, fit));
      g.p_rows = ceil_div(s.oh, g.p_bands);
      g.p_bands = ceil_div(s.oh, g.p_rows);
      g.p_in_rows = (g.p_rows - 1) * s.sh + s.kh;
      g.p_elems = elems(g.p_rows);
      g.off_scratch = off;
      off += nt * round_up(g.p_elems * e, kAlign);
    }
  }
  g.total = off;
  return g;
}

// Bytes of the flat geometry's tables (flat_tables) at the start of the
// weight gradient's workspace.
int64_t flat_table_bytes(const ConvShape& s, const Geometry& g) {
  return round_up(s.kh * s.kw * 8, kAlign) + round_up(s.kh * s.kw * g.f_vecs * 2, kAlign);
}

template <class T>
void pack_weight(const ConvShape& s, const Geometry& g, const T* w, T* wp) {
  if (s.layout == Layout::NCHW) {
    for (int64_t i = 0; i < g.w_elems; ++i) wp[i] = w[i];
    return;
  }
  const int64_t taps = s.kh * s.kw;
  for (int64_t j = 0; j < g.m; ++j)
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t c = 0; c < g.cp; ++c)
        wp[(j * taps + t) * g.cp + c] = c < s.c ? w[t * s.oc + c * g.m + j] : T(0);
}

// ---- NCHW ------------------------------------------------------------------

// Zero-padded copy of one input plane, split into sw column phases.
template <class T>
void fill_phases(const ConvShape& s, const Geometry& g, const T* plane, T* scratch, int64_t r_lo = 0,
                 int64_t r_hi = -1) {
  const int64_t sw = s.sw;
  if (r_hi < 0) r_hi = g.hp;
  for (int64_t f = 0; f < sw; ++f) {
    // Columns q with input column q*sw + f - pl inside [0, W): a plain (for
    // sw == 1, contiguous) copy between two zero runs; the same for every row.
    const int64_t q_lo = min64(g.wq, max64(0, ceil_div(s.pl - f, sw)));
    const int64_t last = s.w - 1 + s.pl - f;  // q*sw <= last; may be negative (no column)
    const int64_t q_hi = last < 0 ? q_lo : max64(q_lo, min64(g.wq, last / sw + 1));
    for (int64_t r = r_lo; r < r_hi; ++r) {
      T* dst = scratch + (f * g.hp + r) * g.wq;
      const int64_t ih = r - s.pt;
      if (ih < 0 || ih >= s.h) {
        for (int64_t q = 0; q < g.wq; ++q) dst[q] = T(0);
        continue;
      }
      const T* src = plane + ih * s.w + f - s.pl;
      for (int64_t q = 0; q < q_lo; ++q) dst[q] = T(0);
      // Whole vectors, the row's last one masked (no read past the row):
      // the scalar copy this replaces was 55% of a 56x56 stride-2 layer.
      using V = Vec<T>;
      constexpr int N = V::N;
      int64_t q = q_lo;
      if (sw == 1) {
        for (; q < q_hi; q += N) {
          const int lanes = static_cast<int>(min64(N, q_hi - q));
          if (lanes == N)
            V::store(dst + q, V::load(src + q));
          else
            V::store_n(dst + q, V::load_n(src + q, lanes), lanes);
        }
      } else if (sw == 2) {  // the even lanes of 2N values
        for (; q < q_hi; q += N) {
          const int lanes = static_cast<int>(min64(N, q_hi - q));
          const int64_t avail = s.w - (2 * q + f - s.pl);  // row values from src + 2q on
          const typename V::R lo = avail >= N ? V::load(src + 2 * q) : V::load_n(src + 2 * q, static_cast<int>(avail));
          const int64_t rest = avail - N;
          const typename V::R hi = rest >= N  ? V::load(src + 2 * q + N)
                                   : rest > 0 ? V::load_n(src + 2 * q + N, static_cast<int>(rest))
                                              : V::zero();
          if (lanes == N)
            V::store(dst + q, V::even(lo, hi));
          else
            V::store_n(dst + q, V::even(lo, hi), lanes);
        }
      }
      for (; q < q_hi; ++q) dst[q] = src[q * sw];
      for (q = q_hi; q < g.wq; q += N) V::store_n(dst + q, V::zero(), static_cast<int>(min64(N, g.wq - q)));
    }
  }
}

// Offset in the phase scratch of each tap (kh, kw) relative to the first
// tap of output pixel (oh, ow) = (0, 0): padded column kw*dw lies in phase
// (kw*dw) % sw at column (kw*dw) / sw.  Computed once per call, so the
// tile loop has no division in it.
inline void tap_offsets(const ConvShape& s, const Geometry& g, int64_t* off) {
  for (int64_t kh = 0; kh < s.kh; ++kh)
    for (int64_t kw = 0; kw < s.kw; ++kw) {
      const int64_t col = kw * s.dw;
      off[kh * s.kw + kw] = ((col % s.sw) * g.hp + kh * s.dh) * g.wq + col / s.sw;
    }
}

// TV vectors of V pixels of one output row, starting at `src` (the phase
// scratch at the row's first tap and the tile's first pixel); the last
// vector keeps `last_lanes` lanes (the rest of the row).  The scratch is
// wide enough for whole vectors, so only the store is masked.
template <class T, int TV>
void row_tile_nchw(const T* src, const int64_t* off, int64_t taps, const T* wk, T bias, bool has_bias,
                   Activation act, int last_lanes, T* ydst) {
  using V = Vec<T>;
  typename V::R acc[TV];
#pragma GCC unroll 8
  for (int v = 0; v < TV; ++v) acc[v] = V::zero();
  for (int64_t t = 0; t < taps; ++t) {
    const T* p = src + off[t];
    const typename V::R wv = V::set1(wk[t]);
#pragma GCC unroll 8
    for (int v = 0; v < TV; ++v) acc[v] = V::fma(V::load(p + v * V::N), wv, acc[v]);
  }
  const typename V::R bv = V::set1(bias);
#pragma GCC unroll 8
  for (int v = 0; v < TV; ++v) {
    const typename V::R r = activate<T>(has_bias ? V::add(acc[v], bv) : acc[v], act);
    if (v + 1 < TV || last_lanes == V::N)
      V::store(ydst + v * V::N, r);
    else
      V::store_n(ydst + v * V::N, r, last_lanes);
  }
}

// Output rows [oh0, oh1) of one output plane from the plane's phase scratch.
// Whole tiles of kTileVectors vectors, then one tile of 1..kTileVectors
// vectors for the rest of the row (a 28-pixel row is one tile of 4, not 4
// single vectors whose lone FMA chains would wait on latency).
template <class T>
void plane_rows_nchw(const ConvShape& s, const Geometry& g, const T* scratch, const int64_t* off, const T* wk,
                     T bias, int64_t oh0, int64_t oh1, T* yplane, int64_t ldy) {
  constexpr int V = Vec<T>::N, TW = V * kTileVectors;
  const int64_t taps = s.kh * s.kw;
  const int64_t full_end = s.ow / TW * TW, rest = s.ow - full_end;
  const int rest_vectors = static_cast<int>(ceil_div(rest, V));
  const int last_lanes = static_cast<int>(rest - (rest_vectors - 1) * V);
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    const T* src = scratch + oh * s.sh * g.wq;
    T* yrow = yplane + (oh - oh0) * ldy;
    for (int64_t ow = 0; ow < full_end; ow += TW)
      row_tile_nchw<T, kTileVectors>(src + ow, off, taps, wk, bias, s.has_bias, s.act, V, yrow + ow);
    switch (rest_vectors) {
      case 1: row_tile_nchw<T, 1>(src + full_end, off, taps, wk, bias, s.has_bias, s.act, last_lanes, yrow + full_end); break;
      case 2: row_tile_nchw<T, 2>(src + full_end, off, taps, wk, bias, s.has_bias, s.act, last_lanes, yrow + full_end); break;
      case 3: row_tile_nchw<T, 3>(src + full_end, off, taps, wk, bias, s.has_bias, s.act, last_lanes, yrow + full_end); break;
      case 4: row_tile_nchw<T, 4>(src + full_end, off, taps, wk, bias, s.has_bias, s.act, last_lanes, yrow + full_end); break;
      default: break;
    }
  }
}

template <class T>
void depthwise_nchw(const ConvShape& s, const Geometry& g, const T* x, const T* wp, const T* bias, T* y,
                    const int64_t* off, char* scratch_base, int nt) {
  const int64_t planes = s.n * s.c;
  const int64_t stride = round_up(g.plane_elems * static_cast<int64_t>(sizeof(T)), kAlign);
  const int64_t taps = s.kh * s.kw, out_plane = s.oh * s.ow;
#pragma omp parallel num_threads(nt)
  {
    T* scratch = reinterpret_cast<T*>(scratch_base + thread_index() * stride);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
      const int64_t n = p / s.c, c = p % s.c;
      fill_phases(s, g, x + p * s.h * s.w, scratch);
      for (int64_t j = 0; j < g.m; ++j) {
        const int64_t oc = c * g.m + j;
        plane_rows_nchw(s, g, scratch, off, wp + oc * taps, bias ? bias[oc] : T(0), 0, s.oh,
                        y + (n * s.oc + oc) * out_plane, s.ow);
      }
    }
  }
}

// ---- NHWC ------------------------------------------------------------------

// Bias, activation and store of a tile's accumulators: pixel t, channel
// vector b (lanes channels of it unless Full) to ydst + t * C_out.
template <class T, int TW, int CB, bool Full>
__attribute__((always_inline)) inline void store_tile_nhwc(const ConvShape& s, const Geometry& g,
                                                           const typename Vec<T>::R (&acc)[TW][CB], const T* bj,
                                                           int64_t c, int lanes, T* ydst, int64_t j) {
  using V = Vec<T>;
#pragma GCC unroll 16
  for (int b = 0; b < CB; ++b) {
    const typename V::R bv = V::load(bj + c + b * V::N);
    const int64_t cb = c + b * V::N;
#pragma GCC unroll 16
    for (int t = 0; t < TW; ++t) {
      const typename V::R r = activate<T>(s.has_bias ? V::add(acc[t][b], bv) : acc[t][b], s.act);
      T* dst = ydst + t * s.oc;
      if (g.m == 1) {
        if (Full)
          V::store(dst + cb, r);
        else
          V::store_n(dst + cb, r, lanes);
      } else {  // channel cb + l of multiplier slot j goes to (cb + l) * m + j
        alignas(64) T buf[V::N];
        V::store(buf, r);
        for (int l = 0; l < lanes; ++l) dst[(cb + l) * g.m + j] = buf[l];
      }
    }
  }
}

// TW pixels x CB vectors of channels from c, taps kh in [kh0, kh1),
// kw in [kw0, kw1) (all TW pixels share the kw range: interior tiles use all
// of it).  Full: all CB*V channels exist; otherwise (CB == 1 only) the
// vector has s.c - c lanes: masked loads read nothing past the last channel,
// the packed weights and bias are zero-padded that far.  The accumulators
// must stay in registers: every loop inside the taps has constant bounds
// and no per-lane bookkeeping, so the compiler unrolls it completely.
template <class T, int TW, int CB, bool Full>
void tile_nhwc(const ConvShape& s, const Geometry& g, const T* xn, const T* wj, const T* bj, int64_t ih0,
               int64_t iw0, int64_t kh0, int64_t kh1, int64_t kw0, int64_t kw1, int64_t c, T* ydst, int64_t j) {
  using V = Vec<T>;
  static_assert(Full || CB == 1, "partial channel vectors come one at a time");
  const int lanes = Full ? V::N : static_cast<int>(min64(V::N, s.c - c));
  typename V::R acc[TW][CB];
#pragma GCC unroll 16
  for (int t = 0; t < TW; ++t)
#pragma GCC unroll 16
    for (int b = 0; b < CB; ++b) acc[t][b] = V::zero();
  const int64_t xstep = s.sw * s.c;
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    const T* xrow = xn + (ih0 + kh * s.dh) * s.w * s.c + c;
    const T* wrow = wj + kh * s.kw * g.cp + c;
    for (int64_t kw = kw0; kw < kw1; ++kw) {
      typename V::R wv[CB];
#pragma GCC unroll 16
      for (int b = 0; b < CB; ++b) wv[b] = V::load(wrow + kw * g.cp + b * V::N);
      const T* xk = xrow + (iw0 + kw * s.dw) * s.c;
#pragma GCC unroll 16
      for (int t = 0; t < TW; ++t) {
#pragma GCC unroll 16
        for (int b = 0; b < CB; ++b) {
          const T* src = xk + t * xstep + b * V::N;
          const typename V::R xv = Full ? V::load(src) : V::load_n(src, lanes);
          acc[t][b] = V::fma(xv, wv[b], acc[t][b]);
        }
      }
    }
  }
  store_tile_nhwc<T, TW, CB, Full>(s, g, acc, bj, c, lanes, ydst, j);
}

// Interior tile of TW pixels x CB full channel vectors for a kernel KW
// columns wide at column stride SW (dilation 1).  Each input vector of a
// kernel row is loaded once and feeds every (pixel, kw) pair that reads it:
// (TW - 1) * SW + KW loads per row and vector instead of TW * KW, so the
// FMAs, not the loads, set the pace.  Every output still sums its taps in
// (kh, kw) order: the same result as tile_nhwc.  PadL / PadR (stride 1):
// the first / last input column is the padding left / right of the row,
// its taps skipped, so a row's border pixels join the tiles.
template <class T, int TW, int CB, int KW, int SW, bool PadL = false, bool PadR = false>
void tile_nhwc_reuse(const ConvShape& s, const Geometry& g, const T* xn, const T* wj, const T* bj, int64_t ih0,
                     int64_t iw0, int64_t kh0, int64_t kh1, int64_t c, T* ydst, int64_t j) {
  using V = Vec<T>;
  static_assert(SW == 1 || !(PadL || PadR), "padding columns at stride 1");
  constexpr int IN = (TW - 1) * SW + KW;  // input columns a kernel row reads
  typename V::R acc[TW][CB];
#pragma GCC unroll 16
  for (int t = 0; t < TW; ++t)
#pragma GCC unroll 16
    for (int b = 0; b < CB; ++b) acc[t][b] = V::zero();
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    const T* xrow = xn + ((ih0 + kh * s.dh) * s.w + iw0) * s.c + c;
    const T* wrow = wj + kh * KW * g.cp + c;
    typename V::R wv[KW][CB];
#pragma GCC unroll 16
    for (int kw = 0; kw < KW; ++kw)
#pragma GCC unroll 16
      for (int b = 0; b < CB; ++b) wv[kw][b] = V::load(wrow + kw * g.cp + b * V::N);
#pragma GCC unroll 32
    for (int i = 0; i < IN; ++i)
#pragma GCC unroll 16
      for (int b = 0; b < CB; ++b) {
        if ((PadL && i == 0) || (PadR && i == IN - 1)) continue;
        typename V::R xv = V::load(xrow + i * s.c + b * V::N);
#if defined(PYCONV_ISA_avx2) || defined(PYCONV_ISA_avx512)
        // Keep xv in a register: GCC would otherwise fold the load into
        // each FMA that uses it, loading the vector up to KW times.
        asm("" : "+v"(xv));
#endif
#pragma GCC unroll 16
        for (int kw = 0; kw < KW; ++kw) {
          const int d = i - kw;  // pixel t = d / SW reads column i at tap kw
          if (d >= 0 && d % SW == 0 && d / SW < TW) acc[d / SW][b] = V::fma(xv, wv[kw][b], acc[d / SW][b]);
        }
      }
  }
  store_tile_nhwc<T, TW, CB, true>(s, g, acc, bj, c, V::N, ydst, j);
}

#if defined(PYCONV_ISA_avx512)
constexpr int kReusePixels = 8;  // 8 x 2 zmm accumulators + 6 weights
#else
constexpr int kReusePixels = 4;  // 4 x 2 ymm accumulators + 6 weights
#endif

// Output pixels [ow0, ow1) of a row, channels [c0, c1) (whole vectors), all
// taps inside the image (3 kernel columns, stride 1 or 2, dilation 1):
// tiles of kReusePixels, then one tile of the rest; two channel vectors
// per tile, a last odd one alone.
template <class T, int SW>
void interior_k3_nhwc(const ConvShape& s, const Geometry& g, const T* xn, const T* wj, const T* bj, int64_t ih0,
                      int64_t kh0, int64_t kh1, int64_t ow0, int64_t ow1, int64_t c0, int64_t c1, T* yrow,
                      int64_t j) {
  constexpr int64_t N = Vec<T>::N;
  auto tiles = [&](auto width, int64_t ow) {
    constexpr int W = decltype(width)::value;
    const int64_t iw0 = ow * SW - s.pl;
    T* y = yrow + ow * s.oc;
    int64_t c = c0;
    for (; c + 2 * N <= c1; c += 2 * N)
      tile_nhwc_reuse<T, W, 2, 3, SW>(s, g, xn, wj, bj, ih0, iw0, kh0, kh1, c, y, j);
    if (c < c1) tile_nhwc_reuse<T, W, 1, 3, SW>(s, g, xn, wj, bj, ih0, iw0, kh0, kh1, c, y, j);
  };
  int64_t ow = ow0;
  for (; ow + kReusePixels <= ow1; ow += kReusePixels) tiles(std::integral_constant<int, kReusePixels>{}, ow);
  switch (ow1 - ow) {
    case 1: tiles(std::integral_constant<int, 1>{}, ow); break;
    case 2: tiles(std::integral_constant<int, 2>{}, ow); break;
    case 3: tiles(std::integral_constant<int, 3>{}, ow); break;
#if defined(PYCONV_ISA_avx512)
    case 4: tiles(std::integral_constant<int, 4>{}, ow); break;
    case 5: tiles(std::integral_constant<int, 5>{}, ow); break;
    case 6: tiles(std::integral_constant<int, 6>{}, ow); break;
    case 7: tiles(std::integral_constant<int, 7>{}, ow); break;
#endif
    default: break;
  }
}

// A whole output row of a 3-column kernel at stride 1, dilation 1, whose
// only border pixels are its first (left padding 1) and last (a right
// padding column), channels [c0, c1) (whole vectors): interior_k3_nhwc's
// tiles from pixel 0 to the row's end, the first and last tiles reading the
// padding columns as skipped taps.  A 7-pixel row is one tile, not two
// single border pixels (each tap a weight and an input load) around a
// 5-pixel tile.
template <class T>
void padded_row_k3_nhwc(const ConvShape& s, const Geometry& g, const T* xn, const T* wj, const T* bj, int64_t ih0,
                        int64_t kh0, int64_t kh1, bool pad_l, bool pad_r, int64_t c0, int64_t c1, T* yrow,
                        int64_t j) {
  constexpr int64_t N = Vec<T>::N, P = kReusePixels;
  auto tiles = [&](auto width, auto left, auto right, int64_t ow) {
    constexpr int W = decltype(width)::value;
    constexpr bool L = decltype(left)::value, R = decltype(right)::value;
    const int64_t iw0 = ow - s.pl;
    T* y = yrow + ow * s.oc;
    int64_t c = c0;
    for (; c + 2 * N <= c1; c += 2 * N)
      tile_nhwc_reuse<T, W, 2, 3, 1, L, R>(s, g, xn, wj, bj, ih0, iw0, kh0, kh1, c, y, j);
    if (c < c1) tile_nhwc_reuse<T, W, 1, 3, 1, L, R>(s, g, xn, wj, bj, ih0, iw0, kh0, kh1, c, y, j);
  };
  using F = std::false_type;
  using Tr = std::true_type;
  // The last tile (1..P pixels from ow), its right column the padding or not.
  auto last = [&](int64_t ow, auto left) {
    auto go = [&](auto width) {
      if (pad_r)
        tiles(width, left, Tr{}, ow);
      else
        tiles(width, left, F{}, ow);
    };
    switch (s.ow - ow) {
      case 1: go(std::integral_constant<int, 1>{}); break;
      case 2: go(std::integral_constant<int, 2 <= P ? 2 : 1>{}); break;
      case 3: go(std::integral_constant<int, 3 <= P ? 3 : 1>{}); break;
      case 4: go(std::integral_constant<int, 4 <= P ? 4 : 1>{}); break;
#if defined(PYCONV_ISA_avx512)
      case 5: go(std::integral_constant<int, 5>{}); break;
      case 6: go(std::integral_constant<int, 6>{}); break;
      case 7: go(std::integral_constant<int, 7>{}); break;
      case 8: go(std::integral_constant<int, 8>{}); break;
#endif
      default: break;
    }
  };
  if (s.ow <= P) {  // one tile, both ends
    if (pad_l)
      last(0, Tr{});
    else
      last(0, F{});
    return;
  }
  if (pad_l)
    tiles(std::integral_constant<int, P>{}, Tr{}, F{}, 0);
  else
    tiles(std::integral_constant<int, P>{}, F{}, F{}, 0);
  int64_t ow = P;
  for (; ow + P < s.ow; ow += P) tiles(std::integral_constant<int, P>{}, F{}, F{}, ow);
  last(ow, F{});
}

// One output row, channels [c0, c1) in steps of CB vectors: border pixels
// with clipped taps, interior tiles of TW pixels, interior leftovers one
// pixel at a time.  The channel loop is inside the pixel loop: a tile's
// taps then read whole pixels (C contiguous values) while they are in L1.
// The other order (one channel block across the row) reads CB*V values
// every C*sizeof(T) bytes, and with a power-of-two C those few cache lines
// fall into a handful of L1 sets and evict each other.
template <class T, int TW, int CB, bool Full>
void row_nhwc(const ConvShape& s, const Geometry& g, const T* xn, const T* wj, const T* bj, int64_t ih0,
              int64_t kh0, int64_t kh1, int64_t ow_lo, int64_t ow_hi, int64_t c0, int64_t c1, T* yrow, int64_t j,
              bool interior_done = false) {
  constexpr int64_t step = CB * Vec<T>::N;
  auto single = [&](int64_t ow, bool clip) {
    const int64_t iw0 = ow * s.sw - s.pl;
    int64_t kw0 = 0, kw1 = s.kw;
    if (clip) {
      while (kw0 < kw1 && iw0 + kw0 * s.dw < 0) ++kw0;
      while (kw1 > kw0 && iw0 + (kw1 - 1) * s.dw >= s.w) --kw1;
    }
    for (int64_t c = c0; c < c1; c += step)
      tile_nhwc<T, 1, CB, Full>(s, g, xn, wj, bj, ih0, iw0, kh0, kh1, kw0, kw1, c, yrow + ow * s.oc, j);
  };
  auto interior = [&](auto width, int64_t ow) {
    constexpr int W = decltype(width)::value;
    for (int64_t c = c0; c < c1; c += step)
      tile_nhwc<T, W, CB, Full>(s, g, xn, wj, bj, ih0, ow * s.sw - s.pl, kh0, kh1, 0, s.kw, c, yrow + ow * s.oc, j);
  };
  for (int64_t ow = 0; ow < ow_lo; ++ow) single(ow, true);
  int64_t ow = interior_done ? ow_hi : ow_lo;
  for (; ow + TW <= ow_hi; ow += TW) interior(std::integral_constant<int, TW>{}, ow);
  // The interior's last 1..TW-1 pixels as one narrower tile: a 7-pixel
  // row is a tile of 4 and one of 3, not 4 + 1 + 1 + 1.
  static_assert(TW <= 4, "remainder tiles up to 3 pixels");
  switch (ow_hi - ow) {
    case 3: interior(std::integral_constant<int, 3 < TW ? 3 : 1>{}, ow); break;
    case 2: interior(std::integral_constant<int, 2 < TW ? 2 : 1>{}, ow); break;
    case 1: interior(std::integral_constant<int, 1>{}, ow); break;
    default: break;
  }
  for (int64_t o = ow_hi; o < s.ow; ++o) single(o, true);
}

// Output columns whose taps all land inside the image: [ow_lo, ow_hi).
inline void interior_columns(const ConvShape& s, int64_t& ow_lo, int64_t& ow_hi) {
  ow_lo = min64(s.ow, ceil_div(s.pl, s.sw));
  const int64_t last = s.w - 1 - (s.kw - 1) * s.dw + s.pl;  // largest ow*sw still inside
  ow_hi = last < 0 ? ow_lo : max64(ow_lo, min64(s.ow, last / s.sw + 1));
}

// Output row oh of image xn into yrow (OW pixels of C_out channels).
template <class T>
void row_all_channels_nhwc(const ConvShape& s, const Geometry& g, const T* xn, const T* wp, const T* bp,
                           int64_t ow_lo, int64_t ow_hi, int64_t oh, T* yrow) {
  constexpr int CW = Vec<T>::N * kChanVectors;  // channels per tile
  const int64_t taps = s.kh * s.kw;
  const int64_t ih0 = oh * s.sh - s.pt;
  // Kernel rows inside the image for this output row.
  int64_t kh0 = 0, kh1 = s.kh;
  while (kh0 < kh1 && ih0 + kh0 * s.dh < 0) ++kh0;
  while (kh1 > kh0 && ih0 + (kh1 - 1) * s.dh >= s.h) --kh1;
  for (int64_t j = 0; j < g.m; ++j) {
    const T* wj = wp + j * taps * g.cp;
    const T* bj = bp + j * g.cp;
    // Full blocks of CW channels: kChanVectors vectors per tile.  The last,
    // partial block goes one vector at a time (a layer with 3 channels must
    // not pay for 4 vectors), with more pixels per tile for independence.
    const int64_t c_blocks = s.c / CW * CW, c_vectors = s.c / Vec<T>::N * Vec<T>::N;
    // 3-column kernels at stride 1 or 2: the interior's whole channel
    // vectors through the load-reusing tiles, the borders as before.
    const bool reuse = s.kw == 3 && s.dw == 1 && (s.sw == 1 || s.sw == 2) && c_vectors > 0;
    // At stride 1 with at most one border pixel each side, the border
    // pixels join the tiles (their padding columns skipped taps).
    const bool padded = reuse && s.sw == 1 && ow_lo == s.pl && ow_lo <= 1 && s.ow - ow_hi <= 1 && ow_hi > ow_lo &&
                        (ow_lo == 1 || ow_hi < s.ow);
    int64_t lo = ow_lo, hi = ow_hi;  // what row_nhwc has left to do
    if (padded) {
      padded_row_k3_nhwc<T>(s, g, xn, wj, bj, ih0, kh0, kh1, ow_lo == 1, ow_hi < s.ow, 0, c_vectors, yrow, j);
      lo = 0;
      hi = s.ow;
    } else if (reuse && s.sw == 1) {
      interior_k3_nhwc<T, 1>(s, g, xn, wj, bj, ih0, kh0, kh1, ow_lo, ow_hi, 0, c_vectors, yrow, j);
    } else if (reuse) {
      interior_k3_nhwc<T, 2>(s, g, xn, wj, bj, ih0, kh0, kh1, ow_lo, ow_hi, 0, c_vectors, yrow, j);
    }
    if (c_blocks > 0)
      row_nhwc<T, kTilePixels, kChanVectors, true>(s, g, xn, wj, bj, ih0, kh0, kh1, lo, hi, 0, c_blocks, yrow, j,
                                                   reuse);
    if (c_vectors > c_blocks)
      row_nhwc<T, kTailPixels, 1, true>(s, g, xn, wj, bj, ih0, kh0, kh1, lo, hi, c_blocks, c_vectors, yrow, j,
                                        reuse);
    if (s.c > c_vectors)
      row_nhwc<T, kTailPixels, 1, false>(s, g, xn, wj, bj, ih0, kh0, kh1, ow_lo, ow_hi, c_vectors, s.c, yrow, j);
  }
}

template <class T>
void depthwise_nhwc(const ConvShape& s, const Geometry& g, const T* x, const T* wp, const T* bp, T* y, int nt) {
  int64_t ow_lo, ow_hi;
  interior_columns(s, ow_lo, ow_hi);
  const int64_t rows = s.n * s.oh;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = r / s.oh, oh = r % s.oh;
    row_all_channels_nhwc(s, g, x + n * s.h * s.w * s.c, wp, bp, ow_lo, ow_hi, oh, y + r * s.ow * s.oc);
  }
}

// Input pixels [p_lo, p_hi) (flattened ih * W + iw, contiguous in each
// plane) of `rem` channel planes from xc into the padded tile, whose row 0
// is input row ih_base: pixel (ih, iw) goes to tile pixel
// (ih - ih_base, iw + pl), channel k to lane k.  Whole planes are read
// along their length (a 7-column row would be a mostly masked load), and
// each block of pixels is transposed in registers into its tile pixels.
template <class T>
void gather_tile(const ConvShape& s, const Geometry& g, const T* xc, int64_t rem, int64_t p_lo, int64_t p_hi,
                 int64_t ih_base, T* xt) {
  const int64_t in_plane = s.h * s.w, cw = g.t_cw;
#if defined(PYCONV_ISA_avx2) || defined(PYCONV_ISA_avx512)
  if (s.w >= kGatherRowsMinW && p_lo % s.w == 0 && p_hi % s.w == 0) {
    // Rows at least this wide go one (channels x row) block at a time into
    // their tile row, whose pixels are cw apart: no per-pixel destinations
    // (1x128x56x56 stride 2: 0.067 -> 0.063 ms on 2 threads).
    for (int64_t ih = p_lo / s.w; ih < p_hi / s.w; ++ih)
      transpose_copy(xc + ih * s.w, in_plane, xt + ((ih - ih_base) * g.t_wp + s.pl) * cw, cw, rem, s.w);
    return;
  }
#endif
  // The tile pixel of input pixel p, walked with running (row, column)
  // counters: a division per pixel was a tenth of a stride-2 layer's time.
  int64_t row = p_lo / s.w, col = p_lo % s.w;
  auto next_pixel = [&]() {
    T* d = xt + ((row - ih_base) * g.t_wp + col + s.pl) * cw;
    if (++col == s.w) {
      col = 0;
      ++row;
    }
    return d;
  };
#if defined(PYCONV_ISA_avx2) || defined(PYCONV_ISA_avx512)
  constexpr int64_t B = 32 / sizeof(T);
  const int64_t full = rem / B * B;
  for (int64_t p = p_lo; p < p_hi; p += B) {
    const int64_t nc = min64(B, p_hi - p);
    T* d[B];
    for (int64_t j = 0; j < nc; ++j) d[j] = next_pixel();
    const T* src = xc + p;
    for (int64_t k = 0; k < full; k += B)
      transpose_block_with(src + k * in_plane, in_plane, nc,
                           [&](int j, auto v) { store_block_column(d[j] + k, v); });
    for (int64_t k = full; k < rem; ++k)
      for (int64_t j = 0; j < nc; ++j) d[j][k] = src[k * in_plane + j];
  }
#else
  for (int64_t p = p_lo; p < p_hi; ++p) {
    T* d = next_pixel();
    for (int64_t k = 0; k < rem; ++k) d[k] = xc[k * in_plane + p];
  }
#endif
}

#if defined(PYCONV_ISA_avx512)
// NCHW planes at stride 1 whose output is as wide as the input (the usual
// "same" 3x3 with padding 1): output pixel p = oh * W + ow reads tap
// (kh, kw) at input p + (kh * dh - pt) * W + kw * dw - pl, one shift of the
// flattened plane per tap.  Lanes whose tap falls in the padding (a row
// above or below, or a column that would wrap into the neighbouring row)
// are masked off the load, so the plane is read in place: no padded copy,
// no transposes, vectors as long as the plane allows (a 7x7 plane is 4
// vectors, not 7 rows of 7).  The masks depend only on the tap and the
// vector: one table per call.
template <class T, int VB, int P>
void flat_tile(const ConvShape& s, const Geometry& g, const T* const* xs, const T* const* wk, const T* bias,
               T* const* ys, int64_t v0, const int64_t* off, const uint16_t* masks) {
  using V = Vec<T>;
  constexpr int N = V::N;
  const int64_t taps = s.kh * s.kw, pixels = s.oh * s.ow;
  typename V::R acc[P][VB];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
    for (int v = 0; v < VB; ++v) acc[p][v] = V::zero();
  for (int64_t t = 0; t < taps; ++t) {
    const uint16_t* mt = masks + t * g.f_vecs + v0;
    typename V::R wv[P];
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) wv[p] = V::set1(wk[p][t]);
#pragma GCC unroll 16
    for (int v = 0; v < VB; ++v) {
      const unsigned m = mt[v];
      const int64_t at = (v0 + v) * N + off[t];  // may be negative: those lanes are masked
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) {
        // The address as an integer: before the plane's start it is no
        // pointer into the array (the lanes there are masked, never read).
        const T* src = reinterpret_cast<const T*>(reinterpret_cast<uintptr_t>(xs[p]) + at * int64_t(sizeof(T)));
        acc[p][v] = V::fma(V::load_mask(src, m), wv[p], acc[p][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) {
    const typename V::R bv = V::set1(bias[p]);
#pragma GCC unroll 16
    for (int v = 0; v < VB; ++v) {
      const int64_t lanes = pixels - (v0 + v) * N;
      if (lanes <= 0) break;
      const typename V::R r = activate<T>(s.has_bias ? V::add(acc[p][v], bv) : acc[p][v], s.act);
      if (lanes >= N)
        V::store(ys[p] + (v0 + v) * N, r);
      else
        V::store_n(ys[p] + (v0 + v) * N, r, static_cast<int>(lanes));
    }
  }
}

// The flat geometry's tables: each tap's shift of the flattened plane, and
// per tap and vector of output pixels the lanes whose tap lies inside the
// image.
template <class T>
void flat_tables(const ConvShape& s, const Geometry& g, int64_t* off, uint16_t* masks) {
  constexpr int N = Vec<T>::N;
  const int64_t pixels = s.oh * s.ow;
  for (int64_t kh = 0; kh < s.kh; ++kh)
    for (int64_t kw = 0; kw < s.kw; ++kw) {
      const int64_t t = kh * s.kw + kw, dr = kh * s.dh - s.pt, dc = kw * s.dw - s.pl;
      off[t] = dr * s.w + dc;
      for (int64_t v = 0; v < g.f_vecs; ++v) {
        unsigned m = 0;
        for (int l = 0; l < N; ++l) {
          const int64_t p = v * N + l, ih = p / s.ow + dr, iw = p % s.ow + dc;
          if (p < pixels && ih >= 0 && ih < s.h && iw >= 0 && iw < s.w) m |= 1u << l;
        }
        masks[t * g.f_vecs + v] = static_cast<uint16_t>(m);
      }
    }
}

template <class T>
void depthwise_nchw_flat(const ConvShape& s, const Geometry& g, const T* x, const T* w, const T* bias, T* y,
                         char* ws, int nt) {
  constexpr int N = Vec<T>::N;
  const int64_t taps = s.kh * s.kw, in_plane = s.h * s.w, pixels = s.oh * s.ow;
  int64_t* off = reinterpret_cast<int64_t*>(ws + g.off_foff);
  uint16_t* masks = reinterpret_cast<uint16_t*>(ws + g.off_fmask);
  flat_tables<T>(s, g, off, masks);
  // Work item: two output planes (n, oc) if a plane is at most half a
  // chunk (more independent FMA chains), else one plane in chunks.
  const int64_t out_planes = s.n * s.oc, m = s.oc / s.c;
  const bool pairs = g.f_vecs == kFlatChunk && ceil_div(pixels, N) <= kFlatChunk / 2;
  const int64_t items = pairs ? ceil_div(out_planes, 2) : out_planes;
#pragma omp parallel num_threads(nt)
  {
    // A contiguous share of the items per thread, walked with running
    // (image, channel) counters: no division per plane.
    const int64_t team = thread_count(), me = thread_index();
    const int64_t lo = items * me / team, hi = items * (me + 1) / team;
    int64_t q = pairs ? 2 * lo : lo, n = q / s.oc, oc = q % s.oc;
    for (int64_t item = lo; item < hi; ++item) {
    const int64_t count = min64(pairs ? 2 : 1, out_planes - q);
    const T* xs[2];
    const T* wk[2];
    T bs[2];
    T* ys[2];
    for (int64_t i = 0; i < count; ++i) {
      xs[i] = x + (n * s.c + (m == 1 ? oc : oc / m)) * in_plane;
      wk[i] = w + oc * taps;
      bs[i] = bias ? bias[oc] : T(0);
      ys[i] = y + q * pixels;
      ++q;
      if (++oc == s.oc) {
        oc = 0;
        ++n;
      }
    }
    if (pairs && count == 2) {
      flat_tile<T, kFlatChunk / 2, 2>(s, g, xs, wk, bs, ys, 0, off, masks);
    } else if (pairs) {
      flat_tile<T, kFlatChunk / 2, 1>(s, g, xs, wk, bs, ys, 0, off, masks);
    } else {
      for (int64_t v0 = 0; v0 < g.f_vecs; v0 += kFlatChunk)
        flat_tile<T, kFlatChunk, 1>(s, g, xs, wk, bs, ys, v0, off, masks);
    }
    }
  }
}

// NCHW 3x3 planes at stride 1 and dilation 1 whose rows are narrower than
// a 512-bit vector, with column padding 1 and the output as wide as the
// input (MobileNet's 7x7 and 14x14 layers; any row padding; AVX-512): one
// plane row per vector, 256-bit for rows of at most 8 float32 / 4 float64
// pixels (Zen 4 issues two 256-bit FMAs per cycle, the lanes of one
// 512-bit FMA).  An input row's three column taps are three masked loads
// of it, at columns -1, 0 and +1, the mask cutting the lanes outside the
// row (lane 0 of the -1 load and lane W - 1 of the +1 load are the
// padding): no permutes, where the flat vector sequence this replaces
// (Flat3) spent 4-8 valignd windows per output vector and read a plane's
// rows across vector boundaries.  Each input row is loaded once per plane.
// 8x1024x7x7 float32, 1 thread: forward 0.18 -> 0.13 ms, input gradient
// 0.19 -> 0.145 ms, weight gradient 0.195 -> 0.16 ms; 8x512x14x14:
// 0.36 -> 0.20, 0.36 -> 0.22, 0.28 -> 0.21 ms.
template <class T, class V>
struct Narrow3 {
  using Vt = V;
  using R = typename V::R;
  using M = typename V::M;
  static constexpr int N = V::N;
  int64_t w, h, pt;
  M ml, mc, mr;  // lanes [1, w), [0, w), [0, w - 1)

  explicit Narrow3(const ConvShape& s) : w(s.w), h(s.h), pt(s.pt) {
    const unsigned row = (1u << w) - 1u;
    ml = V::lanes_mask(row & ~1u);
    mc = V::lanes_mask(row);
    mr = V::lanes_mask(row >> 1);
  }

  // Input row ih of the plane xp as its three column taps, zero for a row
  // in the padding.  (Everything by value: an intrinsic's store may alias
  // anything, so members read through a pointer would be reloaded after
  // each store.)
  static void row(const T* xp, int64_t ih, int64_t w, int64_t h, M ml, M mc, M mr, R* t) {
    if (ih < 0 || ih >= h) {
      t[0] = t[1] = t[2] = V::zero();
      return;
    }
    const T* p = xp + ih * w;
    t[0] = V::load_keep(p - 1, ml);
    t[1] = V::load_keep(p, mc);
    t[2] = V::load_keep(p + 1, mr);
  }

  // Input row t's product with kernel row kh: (w0 x + w1 x) + w2 x.
  static R product(const R* t, const R* wv) { return V::fma(t[2], wv[2], V::fma(t[1], wv[1], V::mul(t[0], wv[0]))); }

  // Output rows [oh_lo, oh_hi) of the plane xp, row oh to yband + (oh -
  // band0) * w.  Input-row major: input row i, loaded once, is multiplied
  // by each kernel row kh (three short chains), the product kh going to
  // output row i + pt - kh; an output row is complete, (kh 0 + kh 1) +
  // kh 2, when its last input row has been read.  Rows in the padding add
  // nothing (its weights are finite) and the rows inside the plane go
  // through a loop without checks.  (A row loop that branched on the kind
  // of row, or computed masks per row, ran 2x slower; so did an output row
  // as one chain of nine dependent FMAs, waiting on latency.)
  __attribute__((always_inline)) void forward(const T* xp, const R* wp, R bv, bool has_bias, Activation act,
                                              T* yband, int64_t band0, int64_t oh_lo, int64_t oh_hi) const {
    const int64_t w = this->w, h = this->h, i0 = oh_lo - this->pt, i_end = oh_hi - this->pt + 2;
    const M ml = this->ml, mc = this->mc, mr = this->mr;
    R wv[9];  // (a local copy: read through wp, they would be reloaded after every store)
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) wv[t] = wp[t];
    R s1 = V::zero(), s2 = V::zero();  // kh 0 of output row i + pt - 1; kh 0 + kh 1 of row i + pt - 2
    R t[3];
    T* yrow = yband + (oh_lo - band0) * w;
    auto out = [&](R sum) {
      V::store_keep(yrow, activate_in<V>(has_bias ? V::add(sum, bv) : sum, act), mc);
      yrow += w;
    };
    auto roll = [&]() {  // input row t read
      s2 = V::add(s1, product(t, wv + 3));
      s1 = product(t, wv);
    };
    auto skip = [&]() {  // an input row in the padding
      s2 = s1;
      s1 = V::zero();
    };
    int64_t i = i0;
    for (; i < i0 + 2; ++i) {  // the first two rows complete no output row
      if (i < 0 || i >= h) {
        skip();
      } else {
        row(xp, i, w, h, ml, mc, mr, t);
        roll();
      }
    }
    for (; i < min64(0, i_end); ++i) {  // above the plane
      out(s2);
      skip();
    }
    for (const T* p = xp + i * w - 1; i < min64(h, i_end); ++i, p += w) {
      t[0] = V::load_keep(p, ml);
      t[1] = V::load_keep(p + 1, mc);
      t[2] = V::load_keep(p + 2, mr);
      out(V::add(s2, product(t, wv + 6)));
      roll();
    }
    for (; i < i_end; ++i) {  // below
      out(s2);
      skip();
    }
  }

  // acc[kh * 3 + kw] += the tap's input lanes times dY over the plane's
  // oh output rows.  Rows in the padding are zero vectors here (an
  // infinite dY there makes NaN, as the padding does); the rows inside the
  // plane go through a loop without checks, as in forward.
  __attribute__((always_inline)) void grad(const T* xp, const T* dyp, int64_t oh, R* sums) const {
    const int64_t w = this->w, h = this->h, i0 = -this->pt, i_end = oh - this->pt + 2;
    const M ml = this->ml, mc = this->mc, mr = this->mr;
    R acc[9];  // (local, as forward's weights)
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) acc[t] = sums[t];
    R t[3][3];
    row(xp, i0, w, h, ml, mc, mr, t[0]);
    row(xp, i0 + 1, w, h, ml, mc, mr, t[1]);
    const T* d = dyp;
    auto step = [&]() {  // output row d, its last input row in t[2]
      const R dv = V::load_keep(d, mc);
      d += w;
#pragma GCC unroll 3
      for (int kh = 0; kh < 3; ++kh)
#pragma GCC unroll 3
        for (int kw = 0; kw < 3; ++kw) acc[kh * 3 + kw] = V::fma(t[kh][kw], dv, acc[kh * 3 + kw]);
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw) {
        t[0][kw] = t[1][kw];
        t[1][kw] = t[2][kw];
      }
    };
    int64_t i = i0 + 2;
    for (; i < min64(0, i_end); ++i) {  // above the plane
      t[2][0] = t[2][1] = t[2][2] = V::zero();
      step();
    }
    for (const T* p = xp + i * w - 1; i < min64(h, i_end); ++i, p += w) {
      t[2][0] = V::load_keep(p, ml);
      t[2][1] = V::load_keep(p + 1, mc);
      t[2][2] = V::load_keep(p + 2, mr);
      step();
    }
    for (; i < i_end; ++i) {  // below
      t[2][0] = t[2][1] = t[2][2] = V::zero();
      step();
    }
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) sums[t] = acc[t];
  }
};

// Whether Narrow3 serves s (AVX-512).
template <class T>
bool narrow3_serves(const ConvShape& s) {
  return s.kh == 3 && s.kw == 3 && s.dh == 1 && s.dw == 1 && s.sh == 1 && s.sw == 1 && s.pl == 1 &&
         s.ow == s.w && s.w < Vec<T>::N;
}

// f(k) with k the Narrow3 of s: 256-bit rows when they fit.
template <class T, class F>
void with_narrow3(const ConvShape& s, F&& f) {
  if (s.w <= Half<T>::N)
    f(Narrow3<T, Half<T>>(s));
  else
    f(Narrow3<T, Vec<T>>(s));
}

template <class T>
void depthwise_nchw_narrow3(const ConvShape& s, const Geometry& g, const T* x, const T* w, const T* bias, T* y,
                            int nt) {
  with_narrow3<T>(s, [&](const auto& k) {
    using V = typename std::decay_t<decltype(k)>::Vt;
    using R = typename V::R;
    const int64_t in_plane = s.h * s.w, pixels = s.oh * s.ow, planes = s.n * s.oc, oc_n = s.oc, m = g.m;
    const int64_t oh = s.oh;
    const bool has_bias = s.has_bias;
    const Activation act = s.act;
#pragma omp parallel num_threads(nt)
    {
      // This thread's planes, walked with counters (no division per plane).
      const int64_t nth = thread_count(), tid = thread_index();
      const int64_t q0 = planes * tid / nth, q1 = planes * (tid + 1) / nth;
      int64_t oc = q0 % oc_n, n = q0 / oc_n;
      for (int64_t q = q0; q < q1; ++q) {
        R wv[9];
#pragma GCC unroll 9
        for (int t = 0; t < 9; ++t) wv[t] = V::set1(w[oc * 9 + t]);
        k.forward(x + (n * s.c + oc / m) * in_plane, wv, V::set1(bias ? bias[oc] : T(0)), has_bias, act,
                  y + q * pixels, 0, 0, oh);
        if (++oc == oc_n) {
          oc = 0;
          ++n;
        }
      }
    }
  });
}

template <class T>
void grad_weight_narrow3(const ConvShape& s, const Geometry& g, const T* x, const T* dy, T* dw, int nt) {
  with_narrow3<T>(s, [&](const auto& k) {
    using V = typename std::decay_t<decltype(k)>::Vt;
    const int64_t in_plane = s.h * s.w, pixels = s.oh * s.ow;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t oc = 0; oc < s.oc; ++oc) {
      typename V::R acc[9];
#pragma GCC unroll 9
      for (int t = 0; t < 9; ++t) acc[t] = V::zero();
      for (int64_t n = 0; n < s.n; ++n)
        k.grad(x + (n * s.c + oc / g.m) * in_plane, dy + (n * s.oc + oc) * pixels, s.oh, acc);
#pragma GCC unroll 9
      for (int t = 0; t < 9; ++t) dw[oc * 9 + t] = sum_lanes<T, V>(acc[t]);
    }
  });
}
#endif

// NCHW 3x3 layers at stride 1 and dilation 1 whose output is as wide as
// the input (MobileNet's "same" depthwise layers), where the flat planes
// above do not serve (rows over kBlockedMaxRow, or AVX2): read in place, no
// padded copy.  Tiles of kWideRows output rows x 2 vectors of columns; each
// input vector is loaded once and multiplied into every output row it
// reaches (up to 3): 36 loads per 72 FMAs, where the phase copy's row tiles
// (depthwise_nchw) load once per FMA and Zen 4 loads one 512-bit vector
// per cycle.  A row's last tile may overhang into the next row: those lanes
// are computed and not stored.  Taps reaching past a row's start or end
// are masked loads (lanes [lo, hi) of the row), rows outside the plane are
// skipped.  2 threads: 1x32x112x112 0.113 -> 0.090 ms, 8x32x112x112
// 1.12 -> 0.61 ms, 1x128x56x56 0.138 -> 0.110 ms; AVX2 1x32x112x112
// 0.129 -> 0.112 ms (generic keeps the copy: its masked loads are lane
// loops, 1.4x slower).
constexpr int kWideRows = 4;

template <class T, bool Edge>
inline void wide3_tile(const ConvShape& s, const T* xp, const typename Vec<T>::R* wv, typename Vec<T>::R bv,
                       T* yp, int64_t oh0, int64_t c0) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N, RR = kWideRows;
  const int64_t W = s.w;
  R acc[RR][2];
#pragma GCC unroll 4
  for (int r = 0; r < RR; ++r) acc[r][0] = acc[r][1] = V::zero();
  // Each (column tap, vector)'s lanes inside the row, [lo, hi): the same
  // for every input row.
  int lo[3][2], hi[3][2];
  if (Edge)
    for (int kw = 0; kw < 3; ++kw)
      for (int v = 0; v < 2; ++v) {
        const int64_t c = c0 + v * N + kw - s.pl;
        lo[kw][v] = static_cast<int>(min64(N, max64(0, -c)));
        hi[kw][v] = static_cast<int>(max64(0, min64(N, W - c)));
      }
#pragma GCC unroll 6
  for (int d = 0; d < RR + 2; ++d) {
    const int64_t ih = oh0 + d - s.pt;
    if (ih < 0 || ih >= s.h) continue;
    const T* row = xp + ih * W;
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
      const int64_t dc = kw - s.pl;
#pragma GCC unroll 2
      for (int v = 0; v < 2; ++v) {
        const int64_t c = c0 + v * N + dc;  // the row's columns [c, c + N), those in [0, W) read
        R x;
        if (Edge) {
          x = V::load_fill(row + c, lo[kw][v], hi[kw][v], T(0));
        } else {
          x = V::load(row + c);
        }
#pragma GCC unroll 3
        for (int kh = 0; kh < 3; ++kh) {
          const int r = d - kh;
          if (r >= 0 && r < RR) acc[r][v] = V::fma(x, wv[kh * 3 + kw], acc[r][v]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < RR; ++r) {
    if (oh0 + r >= s.oh) break;
    T* yr = yp + (oh0 + r) * s.ow;
#pragma GCC unroll 2
    for (int v = 0; v < 2; ++v) {
      const R out = activate<T>(s.has_bias ? V::add(acc[r][v], bv) : acc[r][v], s.act);
      const int64_t lanes = s.ow - (c0 + v * N);
      if (!Edge || lanes >= N)
        V::store(yr + c0 + v * N, out);
      else if (lanes > 0)
        V::store_n(yr + c0 + v * N, out, static_cast<int>(lanes));
    }
  }
}

template <class T>
void wide3_plane(const ConvShape& s, const T* xp, const T* wk, T bias, T* yp) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N;
  R wv[9];
  for (int t = 0; t < 9; ++t) wv[t] = V::set1(wk[t]);
  const R bv = V::set1(bias);
  const int64_t W = s.w;
  for (int64_t oh0 = 0; oh0 < s.oh; oh0 += kWideRows)
    for (int64_t c0 = 0; c0 < W; c0 += 2 * N) {
      // Plain loads and stores where every tap's two vectors lie in the row
      // and the tile's rows are all real.
      if (c0 - s.pl >= 0 && c0 + 2 * N + 2 - s.pl <= W && oh0 + kWideRows <= s.oh)
        wide3_tile<T, false>(s, xp, wv, bv, yp, oh0, c0);
      else
        wide3_tile<T, true>(s, xp, wv, bv, yp, oh0, c0);
    }
}

// Weight gradient of the wide 3x3 planes (see wide3_tile): the same tiles,
// dW[t] += dY(output row r) * x(input row r + kh) for every tap, each input
// vector loaded once for the (up to 3) output rows it meets, the output
// tile's dY vectors in registers, one accumulator per tap for all images
// (lanes summed once per output channel).  A tile's lanes past the row end
// are zero in both dY and x, rows outside the plane multiply zeros (as the
// padding does: an inf in dY still makes NaN there), output rows past the
// last are skipped.  Output channels are the work items, images in order:
// one summation order for any thread count.  2 threads, against the phase
// copy and tap_dots: 1x32x112x112 0.120 -> 0.085 ms, 1x128x56x56 0.18 ->
// 0.11 ms, 8x32x112x112 1.47 -> 0.74 ms (AVX2: 1.68 -> 0.91 ms).
#if defined(PYCONV_ISA_avx512)
constexpr int kWideGradRows = 4;  // 8 dY + 9 tap vectors in registers
#else
constexpr int kWideGradRows = 2;  // (16 ymm registers)
#endif

template <class T, bool Edge>
inline void wide3_grad_tile(const ConvShape& s, const T* xp, const T* dyp, typename Vec<T>::R (&acc)[9],
                            int64_t oh0, int64_t c0) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N, RR = kWideGradRows;
  const int64_t W = s.w, rows = min64(RR, s.oh - oh0);
  R dv[RR][2];
#pragma GCC unroll 4
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < 2; ++v) {
      const T* d = dyp + (oh0 + r) * s.ow + c0 + v * N;
      if (!Edge) {
        dv[r][v] = V::load(d);
      } else {
        const int64_t lanes = min64(N, s.ow - (c0 + v * N));
        dv[r][v] = r >= rows || lanes <= 0 ? V::zero() : lanes == N ? V::load(d) : V::load_n(d, static_cast<int>(lanes));
      }
    }
  int lo[3][2], hi[3][2];
  if (Edge)
    for (int kw = 0; kw < 3; ++kw)
      for (int v = 0; v < 2; ++v) {
        const int64_t cv = c0 + v * N, c = cv + kw - s.pl;
        lo[kw][v] = static_cast<int>(min64(N, max64(0, -c)));
        hi[kw][v] = static_cast<int>(max64(lo[kw][v], min64(N, min64(W - c, s.ow - cv))));
      }
#pragma GCC unroll 6
  for (int d = 0; d < RR + 2; ++d) {
    const int64_t ih = oh0 + d - s.pt;
    const bool real = ih >= 0 && ih < s.h;
    const T* row = xp + ih * W;
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
      const int64_t dc = kw - s.pl;
#pragma GCC unroll 2
      for (int v = 0; v < 2; ++v) {
        const T* p = row + c0 + v * N + dc;
        const R x = !Edge ? V::load(p) : real ? V::load_fill(p, lo[kw][v], hi[kw][v], T(0)) : V::zero();
#pragma GCC unroll 3
        for (int kh = 0; kh < 3; ++kh) {
          const int r = d - kh;
          if (r >= 0 && r < RR && (!Edge || r < rows)) acc[kh * 3 + kw] = V::fma(dv[r][v], x, acc[kh * 3 + kw]);
        }
      }
    }
  }
}

template <class T>
void grad_weight_wide3(const ConvShape& s, const Geometry& g, const T* x, const T* dy, T* dw, int nt) {
  using V = Vec<T>;
  constexpr int N = V::N, RR = kWideGradRows;
  const int64_t in_plane = s.h * s.w, pixels = s.oh * s.ow, W = s.w;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t oc = 0; oc < s.oc; ++oc) {
    typename V::R acc[9];
    for (int t = 0; t < 9; ++t) acc[t] = V::zero();
    for (int64_t n = 0; n < s.n; ++n) {
      const T* xp = x + (n * s.c + oc / g.m) * in_plane;
      const T* dyp = dy + (n * s.oc + oc) * pixels;
      for (int64_t oh0 = 0; oh0 < s.oh; oh0 += RR)
        for (int64_t c0 = 0; c0 < W; c0 += 2 * N) {
          // (No ih check here: a row outside the plane is an edge too.)
          if (c0 - s.pl >= 0 && c0 + 2 * N + 2 - s.pl <= W && oh0 + RR <= s.oh && oh0 - s.pt >= 0 &&
              oh0 + RR + 2 - s.pt <= s.h)
            wide3_grad_tile<T, false>(s, xp, dyp, acc, oh0, c0);
          else
            wide3_grad_tile<T, true>(s, xp, dyp, acc, oh0, c0);
        }
    }
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) dw[oc * 9 + t] = sum_lanes<T>(acc[t]);
  }
}

template <class T>
void depthwise_nchw_wide(const ConvShape& s, const Geometry& g, const T* x, const T* w, const T* bias, T* y,
                         int nt) {
  const int64_t in_plane = s.h * s.w, pixels = s.oh * s.ow, planes = s.n * s.oc;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t q = 0; q < planes; ++q) {
    const int64_t oc = q % s.oc;
    const T* xp = x + (q / s.oc * s.c + oc / g.m) * in_plane;
    wide3_plane<T>(s, xp, w + oc * 9, bias ? bias[oc] : T(0), y + q * pixels);
  }
}

// NCHW 3x3 planes at stride 1, dilation 1, left padding 1, the output as
// wide as rows of at least a vector (AVX-512): wide3_tile's products with
// the column shifts taken in registers.  Each input row is read as whole
// vectors (zero before the row, the last one masked to the row, zero after
// it), and the taps of columns -1 and +1 are valignd windows of
// neighbouring vectors: no line-splitting loads, no edge cases in the row
// (the zeros beyond the row are the padding).  The forward streams column
// strips down the plane (rows3_strip); the weight gradient works in tiles
// of kRows3Rows rows x kRows3Vectors vectors (rows3_grad_tile).  The FMA
// order is wide3_tile's, the results bitwise its.
#if defined(PYCONV_ISA_avx512)
constexpr int kRows3Rows = 6, kRows3Vectors = 2;

template <class T>
bool rows3_serves(const ConvShape& s) {
  return s.kh == 3 && s.kw == 3 && s.dh == 1 && s.dw == 1 && s.sh == 1 && s.sw == 1 && s.pl == 1 &&
         s.ow == s.w && s.w >= Vec<T>::N;
}

// One column strip of a rows3 plane, output rows [oh_lo, oh_hi) x vectors
// [v0, v0 + TV), written from yrow (output row oh_lo) on: the input rows
// stream down the strip once, each loaded as TV + 2 whole vectors (zero
// before and after the row, the row's last vector masked to the row) and
// windowed into its three column taps, which complete the output row two
// above (kh 2, then stored), add to the row above (kh 1) and start the
// row it lies on (kh 0): three accumulators per vector rotate down the
// strip.  Two windows per output vector, no tile restarts (a 6-row tile
// loaded and windowed 8 input rows for its 6 outputs, and the per-row
// checks and stores of a tile cost as much as its FMAs), one branch per
// row.  1 thread, planes in cache: 14-15 cycles per output vector in the
// 6 x 2 tiles, 10-11 here (9 are FMAs); 2 threads, against the tiles:
// 1x32x112x112 forward and input gradient 1.23x, 1x128x56x56 1.21x,
// 1x256x28x28 1.21x, float64 1x32x112x112 1.28x.  Strips of 3 vectors ran
// as fast as 2, of 4 1.15x slower (registers).
// Edge: a strip touching the row's first or last vector, whose loads go
// through masks computed once per strip (lanes outside the plane's row are
// zero, the masked-off addresses are not read).  Rows outside the plane are
// skipped (FMA order (kh, kw) from zero, as everywhere).
template <class T, int TV, bool Edge>
__attribute__((always_inline)) inline void rows3_taps(const T* row, const typename Vec<T>::M (&m)[TV + 2],
                                                      const int64_t (&at)[TV + 2], typename Vec<T>::R (&l)[TV],
                                                      typename Vec<T>::R (&c)[TV], typename Vec<T>::R (&r)[TV]) {
  using V = Vec<T>;
  using R = typename V::R;
  using M = typename V::M;
  constexpr int N = V::N;
  R src[TV + 2];
#pragma GCC unroll 16
  for (int i = 0; i < TV + 2; ++i) src[i] = Edge ? V::load_keep(row + at[i], m[i]) : V::load(row + i * N);
#pragma GCC unroll 16
  for (int v = 0; v < TV; ++v) {
    l[v] = V::template window<-1, false>(M(0), src[v], src[v + 1], src[v + 2]);
    c[v] = src[v + 1];
    r[v] = V::template window<1, false>(M(0), src[v], src[v + 1], src[v + 2]);
  }
}

// acc = fma(r, w[k + 2], fma(c, w[k + 1], fma(l, w[k], acc))) for each vector.
template <class T, int TV>
__attribute__((always_inline)) inline void rows3_row(typename Vec<T>::R (&acc)[TV], const typename Vec<T>::R (&l)[TV],
                                                     const typename Vec<T>::R (&c)[TV],
                                                     const typename Vec<T>::R (&r)[TV], typename Vec<T>::R w0,
                                                     typename Vec<T>::R w1, typename Vec<T>::R w2) {
  using V = Vec<T>;
#pragma GCC unroll 16
  for (int v = 0; v < TV; ++v) acc[v] = V::fma(r[v], w2, V::fma(c[v], w1, V::fma(l[v], w0, acc[v])));
}

template <class T, int TV, bool Edge>
__attribute__((always_inline)) inline void rows3_put(const typename Vec<T>::R (&a)[TV], typename Vec<T>::R bv,
                                                     bool has_bias, Activation act, T* yr, int64_t v0, int64_t nvr,
                                                     typename Vec<T>::M tail) {
  using V = Vec<T>;
  constexpr int N = V::N;
#pragma GCC unroll 16
  for (int v = 0; v < TV; ++v) {
    const typename V::R out = activate<T>(has_bias ? V::add(a[v], bv) : a[v], act);
    if (Edge && v0 + v + 1 == nvr)
      V::store_keep(yr + v * N, out, tail);
    else
      V::store(yr + v * N, out);
  }
}

template <class T, int TV, bool Edge>
void rows3_strip(const ConvShape& s, const T* xp, const typename Vec<T>::R (&wv)[9], typename Vec<T>::R bv,
                 int64_t nvr, typename Vec<T>::M tail, T* yrow, int64_t oh_lo, int64_t oh_hi, int64_t v0) {
  using V = Vec<T>;
  using R = typename V::R;
  using M = typename V::M;
  constexpr int N = V::N;
  const int64_t W = s.w, OW = s.ow, H = s.h, pt = s.pt;
  const bool has_bias = s.has_bias;
  const Activation act = s.act;
  M m[TV + 2];
  int64_t at[TV + 2];  // a masked-off vector's address is the strip's first (in the row)
#pragma GCC unroll 16
  for (int i = 0; i < TV + 2; ++i) {
    const int64_t u = v0 - 1 + i;
    const bool out = u < 0 || u >= nvr;
    m[i] = out ? M(0) : u + 1 == nvr ? tail : V::lanes_mask((1u << N) - 1u);
    at[i] = (out ? 1 : i) * N;
  }
  const R w0 = wv[0], w1 = wv[1], w2 = wv[2], w3 = wv[3], w4 = wv[4], w5 = wv[5], w6 = wv[6], w7 = wv[7],
          w8 = wv[8], z = V::zero();
  const T* base = xp + (v0 - 1) * N;  // vector v0 - 1 of input row 0
  T* ybase = yrow + v0 * N - oh_lo * OW;  // output row 0's vector v0
  // Before input row ih: A holds output row ih + pt - 2 (kh 0 and 1
  // summed), B row ih + pt - 1 (kh 0).
  R A[TV], B[TV], l[TV], c[TV], r[TV];
#pragma GCC unroll 16
  for (int v = 0; v < TV; ++v) A[v] = B[v] = z;
  const int64_t first = oh_lo - pt, end = oh_hi - pt + 2;  // the input rows [first, end) reach the strip
  const int64_t lo = min64(end, max64(first + 2, 0)), hi = max64(lo, min64(end - 2, H));
  // Rows whose outputs fall partly outside [oh_lo, oh_hi) or that lie
  // outside the plane: the general step.
  for (int64_t ih = first; ih < end; ++ih) {
    if (ih == lo) {
      // The steady rows: all three outputs in the strip, the row in the plane.
      for (; ih < hi; ++ih) {
        rows3_taps<T, TV, Edge>(base + ih * W, m, at, l, c, r);
        rows3_row<T, TV>(A, l, c, r, w6, w7, w8);
        rows3_put<T, TV, Edge>(A, bv, has_bias, act, ybase + (ih + pt - 2) * OW, v0, nvr, tail);
        rows3_row<T, TV>(B, l, c, r, w3, w4, w5);
#pragma GCC unroll 16
        for (int v = 0; v < TV; ++v) {
          A[v] = B[v];
          B[v] = z;
        }
        rows3_row<T, TV>(B, l, c, r, w0, w1, w2);
      }
      if (ih >= end) break;
    }
    const int64_t o = ih + pt;
    const bool real = ih >= 0 && ih < H, a = o - 2 >= oh_lo && o - 2 < oh_hi, b = o - 1 >= oh_lo && o - 1 < oh_hi,
               cc = o >= oh_lo && o < oh_hi;
    if (real) rows3_taps<T, TV, Edge>(base + ih * W, m, at, l, c, r);
    if (real && a) rows3_row<T, TV>(A, l, c, r, w6, w7, w8);
    if (a) rows3_put<T, TV, Edge>(A, bv, has_bias, act, ybase + (o - 2) * OW, v0, nvr, tail);
    if (real && b) rows3_row<T, TV>(B, l, c, r, w3, w4, w5);
#pragma GCC unroll 16
    for (int v = 0; v < TV; ++v) {
      A[v] = B[v];
      B[v] = z;
    }
    if (real && cc) rows3_row<T, TV>(B, l, c, r, w0, w1, w2);
  }
}

// The strips of rows [oh_lo, oh_hi) of one plane: TV vectors each, a last
// odd vector a strip of one; strips touching the row's ends through masks.
template <class T>
__attribute__((always_inline)) inline void rows3_plane(const ConvShape& s, const T* xp,
                                                       const typename Vec<T>::R (&wv)[9], typename Vec<T>::R bv,
                                                       int64_t nvr, typename Vec<T>::M tail, T* yrow, int64_t oh_lo,
                                                       int64_t oh_hi) {
  constexpr int TV = kRows3Vectors;
  int64_t v0 = 0;
  for (; v0 + TV <= nvr; v0 += TV) {
    if (v0 == 0 || v0 + TV + 1 >= nvr)
      rows3_strip<T, TV, true>(s, xp, wv, bv, nvr, tail, yrow, oh_lo, oh_hi, v0);
    else
      rows3_strip<T, TV, false>(s, xp, wv, bv, nvr, tail, yrow, oh_lo, oh_hi, v0);
  }
  for (; v0 < nvr; ++v0) rows3_strip<T, 1, true>(s, xp, wv, bv, nvr, tail, yrow, oh_lo, oh_hi, v0);
}

// Weight gradient of the rows3 planes: rows3_strip's input rows and column
// windows, times dY's rows in registers, one accumulator per tap for all
// images (as wide3_grad_tile).  Input rows outside the plane are zero
// vectors (an infinite dY there makes NaN, as the padding does in the
// reference); the left window of a row's last vector is cut to the row
// (lanes past it would read the row's last pixel, times a zero dY); tile
// rows past the output's last are skipped.  Row tiles and column tiles do
// not overlap here (each product is summed once): a row's odd last vector
// is a tile of its own.  2 threads, against wide3_grad_tile: 1x32x112x112
// 0.113 -> 0.062 ms, 1x128x56x56 0.106 -> 0.065 ms; against the flat
// planes' masked loads, 1x256x28x28 0.084 -> 0.038 ms.
template <class T, int TV, bool Full>
inline void rows3_grad_tile(const ConvShape& s, const T* xp, const T* dyp, int64_t nvr, typename Vec<T>::M tail,
                            int64_t oh0, int64_t v0, typename Vec<T>::R (&acc)[9]) {
  using V = Vec<T>;
  using R = typename V::R;
  using M = typename V::M;
  constexpr int N = V::N, RR = kRows3Rows;
  const int64_t W = s.w, rows = Full ? RR : min64(RR, s.oh - oh0);
  R dv[RR][TV];
#pragma GCC unroll 16
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < TV; ++v) {
      const T* d = dyp + (oh0 + r) * s.ow + (v0 + v) * N;
      dv[r][v] = !Full && r >= rows ? V::zero() : v0 + v + 1 == nvr ? V::load_keep(d, tail) : V::load(d);
    }
  M cut[TV];  // the left window's lanes: the row's
#pragma GCC unroll 16
  for (int v = 0; v < TV; ++v) cut[v] = v0 + v + 1 == nvr ? tail : M(-1);
#pragma GCC unroll 16
  for (int d = 0; d < RR + 2; ++d) {
    const int64_t ih = oh0 + d - s.pt;
    const bool real = ih >= 0 && ih < s.h;
    const T* row = xp + ih * W;
    R src[TV + 2];
#pragma GCC unroll 16
    for (int i = 0; i < TV + 2; ++i) {
      const int64_t u = v0 - 1 + i;
      src[i] = !real || u < 0 || u >= nvr ? V::zero()
               : u + 1 == nvr             ? V::load_keep(row + u * N, tail)
                                          : V::load(row + u * N);
    }
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
#pragma GCC unroll 16
      for (int v = 0; v < TV; ++v) {
        const R x = kw == 0   ? V::template window<-1, true>(cut[v], src[v], src[v + 1], src[v + 2])
                    : kw == 1 ? src[v + 1]
                              : V::template window<1, false>(M(0), src[v], src[v + 1], src[v + 2]);
#pragma GCC unroll 3
        for (int kh = 0; kh < 3; ++kh) {
          const int r = d - kh;
          if (r >= 0 && r < RR && (Full || r < rows)) acc[kh * 3 + kw] = V::fma(dv[r][v], x, acc[kh * 3 + kw]);
        }
      }
    }
  }
}

// The weight-gradient driver of the register-window tiles: output
// channels are the work items, one accumulator per tap for all images, the
// images, tiles of RR output rows and tiles of TV vectors (a row's odd last
// vectors tiles of one: products are summed once, tiles never overlap) in
// one fixed order.  tile(tv, full, xp, dyp, oh0, v0, acc) computes one
// tile, tv and full as std::integral_constant (full: all RR rows real).
template <class T, int RR, int TV, class Tile>
void grad_weight_tiles(const ConvShape& s, const Geometry& g, const T* x, const T* dy, T* dw, int64_t vectors,
                       int nt, Tile tile) {
  using V = Vec<T>;
  const int64_t in_plane = s.h * s.w, pixels = s.oh * s.ow, pairs_end = vectors / TV * TV;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t oc = 0; oc < s.oc; ++oc) {
    typename V::R acc[9];
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) acc[t] = V::zero();
    for (int64_t n = 0; n < s.n; ++n) {
      const T* xp = x + (n * s.c + oc / g.m) * in_plane;
      const T* dyp = dy + (n * s.oc + oc) * pixels;
      for (int64_t oh0 = 0; oh0 < s.oh; oh0 += RR) {
        const bool full = oh0 + RR <= s.oh;
        for (int64_t v0 = 0; v0 < pairs_end; v0 += TV) {
          if (full)
            tile(std::integral_constant<int, TV>{}, std::true_type{}, xp, dyp, oh0, v0, acc);
          else
            tile(std::integral_constant<int, TV>{}, std::false_type{}, xp, dyp, oh0, v0, acc);
        }
        for (int64_t v0 = pairs_end; v0 < vectors; ++v0)
          tile(std::integral_constant<int, 1>{}, std::false_type{}, xp, dyp, oh0, v0, acc);
      }
    }
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) dw[oc * 9 + t] = sum_lanes<T>(acc[t]);
  }
}

template <class T>
void grad_weight_rows3(const ConvShape& s, const Geometry& g, const T* x, const T* dy, T* dw, int nt) {
  using V = Vec<T>;
  const int64_t nvr = ceil_div(s.w, V::N);
  const typename V::M tail = V::lanes_mask((1u << (s.w - (nvr - 1) * V::N)) - 1u);
  grad_weight_tiles<T, kRows3Rows, kRows3Vectors>(
      s, g, x, dy, dw, nvr, nt,
      [&](auto tv, auto full, const T* xp, const T* dyp, int64_t oh0, int64_t v0, typename V::R(&acc)[9]) {
        rows3_grad_tile<T, decltype(tv)::value, decltype(full)::value>(s, xp, dyp, nvr, tail, oh0, v0, acc);
      });
}

// The forward driver of the register-window kernels: output planes are the
// work items (nine weight vectors and the bias held for the plane), each
// computed by plane(xp, wv, bv, yp).
template <class T, class Plane>
void forward_planes(const ConvShape& s, const Geometry& g, const T* x, const T* w, const T* bias, T* y, int nt,
                    Plane plane) {
  using V = Vec<T>;
  using R = typename V::R;
  const int64_t in_plane = s.h * s.w, pixels = s.oh * s.ow, planes = s.n * s.oc;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t q = 0; q < planes; ++q) {
    const int64_t oc = q % s.oc;
    R wv[9];
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) wv[t] = V::set1(w[oc * 9 + t]);
    plane(x + (q / s.oc * s.c + oc / g.m) * in_plane, wv, V::set1(bias ? bias[oc] : T(0)), y + q * pixels);
  }
}

template <class T>
void depthwise_nchw_rows3(const ConvShape& s, const Geometry& g, const T* x, const T* w, const T* bias, T* y,
                          int nt) {
  using V = Vec<T>;
  const int64_t nvr = ceil_div(s.w, V::N);
  const typename V::M tail = V::lanes_mask((1u << (s.w - (nvr - 1) * V::N)) - 1u);
  forward_planes(s, g, x, w, bias, y, nt,
                 [&](const T* xp, const typename V::R(&wv)[9], typename V::R bv, T* yp) {
                   rows3_plane<T>(s, xp, wv, bv, nvr, tail, yp, 0, s.oh);
                 });
}

// NCHW 3x3 planes at stride 2, dilation 1, left padding 0 or 1 (MobileNet's
// and the FCN encoders' downsampling depthwise layers; AVX-512).  An output
// vector of N pixels reads 2N input columns of each input row it meets: two
// whole vectors, split into their even and odd columns by one permute each
// (vpermt2ps), which are the three column taps: with left padding 1 the
// odd columns shifted right by one lane (valignd, the lane before coming
// from the previous vector), the even and the odd ones; with padding 0 the
// even, the odd and the even shifted left by one lane.  Each input row
// feeds the two output rows it lies under: the forward in column strips
// down the plane (s2_strip), the weight gradient in tiles of kS2Rows
// output rows x kS2Vectors vectors; no padded or NHWC-transposed copy of
// the plane (the channel-blocked tiles this replaces), no misaligned loads.  FMA order
// (kh, kw) as everywhere; input rows outside the plane are skipped by the
// forward (its weights are finite) and zero vectors for the weight
// gradient (an infinite dY there makes NaN, as the padding does).
// 1x128x56x56, 2 threads: forward 0.069 -> 0.042 ms, weight gradient
// 0.086 -> 0.036 ms (both through the channel-blocked tiles before).
constexpr int kS2Rows = 4, kS2Vectors = 2;

template <class T>
bool rows3s2_serves(const ConvShape& s) {
  return s.kh == 3 && s.kw == 3 && s.dh == 1 && s.dw == 1 && s.sh == 2 && s.sw == 2 && s.pl <= 1;
}

// Input columns [c, c + N) of a row of W, zero past it.
template <class T>
inline typename Vec<T>::R row_part(const T* row, int64_t c, int64_t W) {
  using V = Vec<T>;
  if (c >= W) return V::zero();
  return c + V::N <= W ? V::load(row + c) : V::load_n(row + c, static_cast<int>(W - c));
}

// The three column taps x[kw][v] of one input row for output vectors
// [v0, v0 + TV); Cut: lanes outside cut[v] zero (the weight gradient's
// lanes past the output row).
template <class T, int TV, bool Cut>
inline void s2_columns(const T* row, int64_t W, int64_t pl, int64_t v0, const typename Vec<T>::M* cut,
                       typename Vec<T>::R (&x)[3][TV], const typename Vec<T>::M* part = nullptr) {
  using V = Vec<T>;
  using R = typename V::R;
  using M = typename V::M;
  constexpr int N = V::N;
  R e[TV], o[TV];
#pragma GCC unroll 16
  for (int v = 0; v < TV; ++v) {
    const int64_t c = 2 * N * (v0 + v);
    // part: the lanes of the 2 TV vectors inside the row, worked out once
    // per tile (plain loads where the tile's columns are all inside).
    const R a = part ? V::load_keep(row + c, part[2 * v]) : row_part(row, c, W);
    const R b = part ? V::load_keep(row + c + N, part[2 * v + 1]) : row_part(row, c + N, W);
    if (Cut) {  // (padding 0: the even columns uncut, the right tap's window reads past the cut)
      e[v] = pl == 1 ? V::even_in(a, b, cut[v]) : V::even(a, b);
      o[v] = V::odd(a, b, cut[v]);
    } else {
      e[v] = V::even(a, b);
      o[v] = V::odd(a, b);
    }
  }
  if (pl == 1) {  // columns 2j - 1, 2j, 2j + 1
    const int64_t c = 2 * N * v0 - 1;
    const R before = c >= 0 && c < W ? V::set1(row[c]) : V::zero();
#pragma GCC unroll 16
    for (int v = 0; v < TV; ++v) {
      const R lo = v == 0 ? before : o[v - 1];
      x[0][v] = Cut ? V::template window<-1, true>(cut[v], lo, o[v], o[v]) : V::template window<-1, false>(M(0), lo, o[v], o[v]);
      x[1][v] = e[v];
      x[2][v] = o[v];
    }
  } else {  // columns 2j, 2j + 1, 2j + 2
    const int64_t c = 2 * N * (v0 + TV);
    const R after = c < W ? V::set1(row[c]) : V::zero();
#pragma GCC unroll 16
    for (int v = 0; v < TV; ++v) {
      const R hi = v + 1 < TV ? e[v + 1] : after;
      x[0][v] = Cut ? V::template window<0, true>(cut[v], e[v], e[v], e[v]) : e[v];
      x[1][v] = o[v];
      x[2][v] = Cut ? V::template window<1, true>(cut[v], e[v], e[v], hi) : V::template window<1, false>(M(0), e[v], e[v], hi);
    }
  }
}

// One column strip of a stride-2 plane, output rows [oh_lo, oh_hi) x
// vectors [v0, v0 + TV), written from yrow (output row oh_lo) on: output
// row r reads input rows 2r - pt + kh; the row under kh 2 is the next
// output row's kh 0, split and multiplied once for both, so the strip
// streams 2 input rows per output row down the plane (a tile of kS2Rows
// output rows read 2 kS2Rows + 1).  Rows outside the plane are skipped
// (FMA order (kh, kw) from zero).  Edge: the strip holds the output row's
// last vector (stored masked to the row) or reads past the input row's
// end (loads through part, masks of the row's lanes in each of its 2 TV
// input vectors, worked out once per strip).  The strip replaced tiles of
// kS2Rows x kS2Vectors whose per-row checks and stores cost as much as
// their FMAs: in-process A/B, 2 threads, 1x128x56x56 1.26x, 8x3x160x160
// ("same") 1.28x, 1x64x112x112 1.18x, float64 1x128x56x56 1.18x (1
// thread 1.19-1.33x).
template <class T, int TV, bool Edge>
void s2_strip(const ConvShape& s, const T* xp, const typename Vec<T>::R (&wv)[9], typename Vec<T>::R bv,
              T* yrow, int64_t oh_lo, int64_t oh_hi, int64_t v0) {
  using V = Vec<T>;
  using R = typename V::R;
  using M = typename V::M;
  constexpr int N = V::N;
  const int64_t W = s.w, H = s.h, OW = s.ow, pt = s.pt, pl = s.pl, nvo = ceil_div(s.ow, N);
  const bool has_bias = s.has_bias;
  const Activation act = s.act;
  const M tail = V::lanes_mask(static_cast<unsigned>((uint64_t(1) << (OW - (nvo - 1) * N)) - 1));
  M part[2 * TV];
  if (Edge)
#pragma GCC unroll 16
    for (int k = 0; k < 2 * TV; ++k) {
      const int64_t lanes = max64(0, min64(N, W - (2 * v0 + k) * N));
      part[k] = V::lanes_mask(static_cast<unsigned>((uint64_t(1) << lanes) - 1));
    }
  const R w0 = wv[0], w1 = wv[1], w2 = wv[2], w3 = wv[3], w4 = wv[4], w5 = wv[5], w6 = wv[6], w7 = wv[7],
          w8 = wv[8];
  T* ybase = yrow + v0 * N - oh_lo * OW;  // output row 0's vector v0
  R A[TV], B[TV], x[3][TV];
#pragma GCC unroll 16
  for (int v = 0; v < TV; ++v) A[v] = B[v] = V::zero();
  // Before output row r: B holds its kh 0 part (r > oh_lo).
  for (int64_t r = oh_lo; r < oh_hi; ++r) {
    const int64_t ih = 2 * r - pt;
    if (r == oh_lo) {
      if (ih >= 0 && ih < H) {
        s2_columns<T, TV, false>(xp + (ih) * W, W, pl, v0, nullptr, x, Edge ? part : nullptr);
        rows3_row<T, TV>(B, x[0], x[1], x[2], w0, w1, w2);
      }
    }
#pragma GCC unroll 16
    for (int v = 0; v < TV; ++v) A[v] = B[v];
    if (ih + 1 >= 0 && ih + 1 < H) {
      s2_columns<T, TV, false>(xp + (ih + 1) * W, W, pl, v0, nullptr, x, Edge ? part : nullptr);
      rows3_row<T, TV>(A, x[0], x[1], x[2], w3, w4, w5);
    }
#pragma GCC unroll 16
    for (int v = 0; v < TV; ++v) B[v] = V::zero();
    if (ih + 2 >= 0 && ih + 2 < H) {
      s2_columns<T, TV, false>(xp + (ih + 2) * W, W, pl, v0, nullptr, x, Edge ? part : nullptr);
      rows3_row<T, TV>(A, x[0], x[1], x[2], w6, w7, w8);
      rows3_row<T, TV>(B, x[0], x[1], x[2], w0, w1, w2);
    }
    rows3_put<T, TV, Edge>(A, bv, has_bias, act, ybase + r * OW, v0, nvo, tail);
  }
}

// The strips of rows [oh_lo, oh_hi) of one stride-2 plane (see rows3_plane).
template <class T>
__attribute__((always_inline)) inline void s2_plane(const ConvShape& s, const T* xp,
                                                    const typename Vec<T>::R (&wv)[9], typename Vec<T>::R bv,
                                                    T* yrow, int64_t oh_lo, int64_t oh_hi) {
  using V = Vec<T>;
  constexpr int TV = kS2Vectors, N = V::N;
  const int64_t nvo = ceil_div(s.ow, N);
  int64_t v0 = 0;
  for (; v0 + TV <= nvo; v0 += TV) {
    if (v0 + TV == nvo || 2 * N * (v0 + TV) > s.w)
      s2_strip<T, TV, true>(s, xp, wv, bv, yrow, oh_lo, oh_hi, v0);
    else
      s2_strip<T, TV, false>(s, xp, wv, bv, yrow, oh_lo, oh_hi, v0);
  }
  for (; v0 < nvo; ++v0) s2_strip<T, 1, true>(s, xp, wv, bv, yrow, oh_lo, oh_hi, v0);
}

template <class T>
void depthwise_nchw_s2(const ConvShape& s, const Geometry& g, const T* x, const T* w, const T* bias, T* y, int nt) {
  using V = Vec<T>;
  forward_planes(s, g, x, w, bias, y, nt,
                 [&](const T* xp, const typename V::R(&wv)[9], typename V::R bv, T* yp) {
                   s2_plane<T>(s, xp, wv, bv, yp, 0, s.oh);
                 });
}

template <class T, int TV, bool Full>
inline void s2_grad_tile(const ConvShape& s, const T* xp, const T* dyp, int64_t nvo, int64_t oh0, int64_t v0,
                         typename Vec<T>::R (&acc)[9]) {
  using V = Vec<T>;
  using R = typename V::R;
  using M = typename V::M;
  constexpr int N = V::N, RR = kS2Rows;
  const int64_t rows = Full ? RR : min64(RR, s.oh - oh0);
  R dv[RR][TV];
  M cut[TV];
#pragma GCC unroll 16
  for (int v = 0; v < TV; ++v) {
    const int64_t lanes = s.ow - (v0 + v) * N;
    cut[v] = V::lanes_mask(lanes >= N ? (1u << N) - 1u : (1u << lanes) - 1u);
  }
#pragma GCC unroll 16
  for (int r = 0; r < RR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < TV; ++v)
      dv[r][v] = !Full && r >= rows ? V::zero() : V::load_keep(dyp + (oh0 + r) * s.ow + (v0 + v) * N, cut[v]);
#pragma GCC unroll 16
  for (int d = 0; d < 2 * RR + 1; ++d) {
    const int64_t ih = 2 * oh0 - s.pt + d;
    R x[3][TV];
    if (ih >= 0 && ih < s.h) {
      s2_columns<T, TV, true>(xp + ih * s.w, s.w, s.pl, v0, cut, x);
    } else {
#pragma GCC unroll 3
      for (int kw = 0; kw < 3; ++kw)
#pragma GCC unroll 16
        for (int v = 0; v < TV; ++v) x[kw][v] = V::zero();
    }
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw)
#pragma GCC unroll 16
      for (int v = 0; v < TV; ++v)
#pragma GCC unroll 3
        for (int kh = 0; kh < 3; ++kh) {
          const int r2 = d - kh;
          if (r2 >= 0 && r2 % 2 == 0 && r2 / 2 < RR && (Full || r2 / 2 < rows))
            acc[kh * 3 + kw] = V::fma(dv[r2 / 2][v], x[kw][v], acc[kh * 3 + kw]);
        }
  }
}

// Weight gradient of the stride-2 planes: s2_strip's rows and column taps
// times dY in registers, one accumulator per tap for all images; tiles do
// not overlap (a row's odd last vector is a tile of its own).
template <class T>
void grad_weight_s2(const ConvShape& s, const Geometry& g, const T* x, const T* dy, T* dw, int nt) {
  using V = Vec<T>;
  const int64_t nvo = ceil_div(s.ow, V::N);
  grad_weight_tiles<T, kS2Rows, kS2Vectors>(
      s, g, x, dy, dw, nvo, nt,
      [&](auto tv, auto full, const T* xp, const T* dyp, int64_t oh0, int64_t v0, typename V::R(&acc)[9]) {
        s2_grad_tile<T, decltype(tv)::value, decltype(full)::value>(s, xp, dyp, nvo, oh0, v0, acc);
      });
}
#endif

// NCHW through NHWC tiles.  Work item: image n, a block of t_cw channels,
// a band of t_rows output rows.  The band's input rows are transposed into
// a zero-padded scratch (pixels of t_cw channels, pad columns never
// written, pad rows zeroed), every output pixel of it is then interior to
// the NHWC kernel (vectors across channels, no clipping), and the output
// tile is transposed back into the m planes of each channel.  A tile fits
// in L2, so the input and the output cross memory once each.  The NHWC
// weight and bias are made from the NCHW ones here (the prepacked NCHW
// format is the plain weight).
template <class T>
void depthwise_nchw_blocked(const ConvShape& s, const Geometry& g, const T* x, const T* w, const T* bias, T* y,
                            char* ws, int nt) {
  const int64_t taps = s.kh * s.kw, in_plane = s.h * s.w, out_plane = s.oh * s.ow, cw = g.t_cw;
  T* tw = reinterpret_cast<T*>(ws + g.off_tw);
  T* tb = reinterpret_cast<T*>(ws + g.off_tb);
  for (int64_t j = 0; j < g.m; ++j)
    for (int64_t k = 0; k < taps; ++k)
      for (int64_t c = 0; c < g.t_cp; ++c)
        tw[(j * taps + k) * g.t_cp + c] = c < s.c ? w[(c * g.m + j) * taps + k] : T(0);
  for (int64_t j = 0; j < g.m; ++j)
    for (int64_t c = 0; c < g.t_cp; ++c) tb[j * g.t_cp + c] = (bias && c < s.c) ? bias[c * g.m + j] : T(0);
  // The tile as an unpadded NHWC problem of cw channels.
  ConvShape t = s;
  t.layout = Layout::NHWC;
  t.n = 1;
  t.c = cw;
  t.oc = cw * g.m;
  t.w = g.t_wp;
  t.pt = t.pb = t.pl = t.pr = 0;
  Geometry gt{};
  gt.m = g.m;
  gt.cp = g.t_cp;
  const int64_t blocks = ceil_div(s.c, cw), bands = ceil_div(s.oh, g.t_rows);
  const int64_t items = s.n * blocks * bands, row_elems = g.t_wp * cw;
  const int64_t stride = round_up(g.t_tile_elems * int64_t(sizeof(T)), kAlign);
#pragma omp parallel num_threads(nt)
  {
    T* xt = reinterpret_cast<T*>(ws + g.off_scratch + thread_index() * stride);
    T* yt = xt + g.t_in_elems;
    ConvShape tile = t;  // its rows vary per band
    for (int64_t i = 0; i < g.t_in_elems; ++i) xt[i] = T(0);  // the pad columns stay zero
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t n = item / (blocks * bands), c0 = (item / bands) % blocks * cw, band = item % bands;
      const int64_t oh0 = band * g.t_rows, oh1 = min64(s.oh, oh0 + g.t_rows), rem = min64(cw, s.c - c0);
      const int64_t r0 = oh0 * s.sh, in_rows = (oh1 - 1 - oh0) * s.sh + (s.kh - 1) * s.dh + 1;
      const T* xc = x + (n * s.c + c0) * in_plane;
      // Pad rows zeroed, image rows transposed in; channels rem..cw of a
      // last, partial block keep stale lanes: their weights are zero and
      // their outputs are not written back.
      const int64_t ih_lo = max64(0, r0 - s.pt), ih_hi = min64(s.h, r0 - s.pt + in_rows);
      for (int64_t i = 0; i < in_rows; ++i) {
        const int64_t ih = r0 + i - s.pt;
        if (ih < ih_lo || ih >= ih_hi)
          for (int64_t k = 0; k < row_elems; ++k) xt[i * row_elems + k] = T(0);
      }
      if (ih_hi > ih_lo) gather_tile(s, g, xc, rem, ih_lo * s.w, ih_hi * s.w, r0 - s.pt, xt);
      tile.h = in_rows;
      tile.oh = oh1 - oh0;
      for (int64_t oh = 0; oh < oh1 - oh0; ++oh)
        row_all_channels_nhwc(tile, gt, xt, tw + c0, tb + c0, 0, s.ow, oh, yt + oh * s.ow * t.oc);
      transpose_copy(yt, t.oc, y + (n * s.oc + c0 * g.m) * out_plane + oh0 * s.ow, out_plane, (oh1 - oh0) * s.ow,
                     rem * g.m);
    }
  }
}

#if defined(PYCONV_ISA_avx512)
// NHWC with few channels (nhwc_via_planes): each band of an image's output
// rows is computed from NCHW planes in the thread's scratch, the input rows
// it reads transposed in (register block transposes), the register-window
// strips run on each plane (rows3_plane, s2_plane), the output planes
// transposed back into the NHWC rows.  8x160x160x3 at stride 2 ("same"), 2
// threads: 0.37 ms in the channel-vectorised kernel (3 of 16 lanes).
template <class T>
void depthwise_nhwc_planes(const ConvShape& s, const Geometry& g, const T* x, const T* wp, const T* bias, T* y,
                           char* ws, int nt) {
  using V = Vec<T>;
  using R = typename V::R;
  const int64_t taps = s.kh * s.kw;
  T* w9 = reinterpret_cast<T*>(ws + g.off_pw);  // OIHW, from the packed [j][tap][c]
  for (int64_t oc = 0; oc < s.oc; ++oc)
    for (int64_t t = 0; t < taps; ++t) w9[oc * taps + t] = wp[(oc % g.m * taps + t) * g.cp + oc / g.m];
  const int64_t stride = round_up(g.p_elems * static_cast<int64_t>(sizeof(T)), kAlign);
  const int64_t nvr = ceil_div(s.w, V::N);
  const typename V::M tail = V::lanes_mask((1u << (s.w - (nvr - 1) * V::N)) - 1u);
  const bool s1 = rows3_serves<T>(s);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t it = 0; it < s.n * g.p_bands; ++it) {
    T* xb = reinterpret_cast<T*>(ws + g.off_scratch + thread_index() * stride);
    const int64_t n = it / g.p_bands, oh_lo = it % g.p_bands * g.p_rows, oh_hi = min64(s.oh, oh_lo + g.p_rows);
    const int64_t ih_lo = max64(0, oh_lo * s.sh - s.pt), ih_hi = min64(s.h, (oh_hi - 1) * s.sh - s.pt + s.kh);
    const int64_t in_px = max64(0, ih_hi - ih_lo) * s.w, out_px = (oh_hi - oh_lo) * s.ow;
    T* yb = xb + s.c * g.p_in_rows * s.w;
    if (in_px > 0) transpose_copy(x + (n * s.h + ih_lo) * s.w * s.c, s.c, xb, in_px, in_px, s.c);
    for (int64_t oc = 0; oc < s.oc; ++oc) {
      R wv[9];
#pragma GCC unroll 9
      for (int t = 0; t < 9; ++t) wv[t] = V::set1(w9[oc * 9 + t]);
      const R bv = V::set1(bias ? bias[oc] : T(0));
      // Plane row ih at xp + ih * W: the band's first input row is ih_lo.
      const T* xp = xb + oc / g.m * in_px - ih_lo * s.w;
      if (s1)
        rows3_plane<T>(s, xp, wv, bv, nvr, tail, yb + oc * out_px, oh_lo, oh_hi);
      else
        s2_plane<T>(s, xp, wv, bv, yb + oc * out_px, oh_lo, oh_hi);
    }
    transpose_copy(yb, out_px, y + (n * s.oh + oh_lo) * s.ow * s.oc, s.oc, s.oc, out_px);
  }
}
#endif

// ---- entry points ----------------------------------------------------------

template <class T>
void conv_depthwise(const ConvShape& s, const T* x, const T* w, const T* prepacked, const T* bias, T* y,
                    void* workspace, int nt) {
  const Geometry g = make_geometry<T>(s, nt, prepacked != nullptr);
  char* ws = static_cast<char*>(workspace);
  const T* wp = prepacked;
  if (!wp) {
    T* own = reinterpret_cast<T*>(ws + g.off_w);
    pack_weight(s, g, w, own);
    wp = own;
  }
#if defined(PYCONV_ISA_avx512)
  if (s.layout == Layout::NCHW && narrow3_serves<T>(s)) {
    depthwise_nchw_narrow3(s, g, x, wp, bias, y, nt);
    return;
  }
  if (s.layout == Layout::NCHW && rows3_serves<T>(s)) {
    depthwise_nchw_rows3(s, g, x, wp, bias, y, nt);
    return;
  }
  if (s.layout == Layout::NCHW && rows3s2_serves<T>(s)) {
    depthwise_nchw_s2(s, g, x, wp, bias, y, nt);
    return;
  }
  if (s.layout == Layout::NCHW && g.flat) {
    depthwise_nchw_flat(s, g, x, wp, bias, y, ws, nt);
    return;
  }
#endif
  if (s.layout == Layout::NCHW && g.via_nhwc) {
    depthwise_nchw_blocked(s, g, x, wp, bias, y, ws, nt);
    return;
  }
  if (s.layout == Layout::NCHW && g.wide) {
    depthwise_nchw_wide(s, g, x, wp, bias, y, nt);
    return;
  }
  if (s.layout == Layout::NCHW) {
    int64_t* off = reinterpret_cast<int64_t*>(ws + g.off_taps);
    tap_offsets(s, g, off);
    depthwise_nchw(s, g, x, wp, bias, y, off, ws + g.off_scratch, nt);
    return;
  }
#if defined(PYCONV_ISA_avx512)
  if (g.via_planes) {
    depthwise_nhwc_planes(s, g, x, wp, bias, y, ws, nt);
    return;
  }
#endif
  T* bp = reinterpret_cast<T*>(ws + g.off_b);
  for (int64_t j = 0; j < g.m; ++j)
    for (int64_t c = 0; c < g.cp; ++c) bp[j * g.cp + c] = (bias && c < s.c) ? bias[c * g.m + j] : T(0);
  depthwise_nhwc(s, g, x, wp, bp, y, nt);
}

template <class T>
void pack_depthwise(const ConvShape& s, const T* w, T* packed, int) {
  pack_weight(s, make_geometry<T>(s, 1, true), w, packed);
}

int64_t depthwise_workspace_bytes(const ConvShape& s, int elem_bytes, int nt, bool prepacked) {
  return elem_bytes == 4 ? make_geometry<float>(s, nt, prepacked).total
                         : make_geometry<double>(s, nt, prepacked).total;
}

int64_t depthwise_packed_bytes(const ConvShape& s, int elem_bytes) {
  return elem_bytes == 4 ? make_geometry<float>(s, 1, true).w_elems * 4
                         : make_geometry<double>(s, 1, true).w_elems * 8;
}

// ---- weight gradient (NCHW) ------------------------------------------------
//
// dW[oc, tap] = sum over images and output pixels of dY[n, oc, p] times the
// padded input under that tap.  One input channel (its m filters) per work
// item, images in order: every sum has one order whatever the thread count.
// The plane goes through the forward's phase scratch, where each tap of an
// output row is one contiguous run; taps are taken kTapGroup at a time so a
// dY vector is loaded once for several FMAs.

constexpr int kTapGroup = 4;

// Dot products of one dY plane with TG taps' runs of the phase scratch.
template <class T, int TG>
void tap_dots(const ConvShape& s, const Geometry& g, const T* scratch, const int64_t* off, const T* dy, T* out) {
  using V = Vec<T>;
  constexpr int N = V::N;
  typename V::R acc[TG];
  for (int i = 0; i < TG; ++i) acc[i] = V::zero();
  const int64_t full = s.ow / N * N;
  const int rest = static_cast<int>(s.ow - full);
  for (int64_t oh = 0; oh < s.oh; ++oh) {
    const T* row = scratch + oh * s.sh * g.wq;
    const T* d = dy + oh * s.ow;
    for (int64_t ow = 0; ow < full; ow += N) {
      const typename V::R dv = V::load(d + ow);
      for (int i = 0; i < TG; ++i) acc[i] = V::fma(dv, V::load(row + off[i] + ow), acc[i]);
    }
    if (rest) {  // masked loads of both: input columns past the row may hold inf
      const typename V::R dv = V::load_n(d + full, rest);
      for (int i = 0; i < TG; ++i) acc[i] = V::fma(dv, V::load_n(row + off[i] + full, rest), acc[i]);
    }
  }
  for (int i = 0; i < TG; ++i) out[i] = sum_lanes<T>(acc[i]);
}

template <class T>
void tap_dots_any(int tg, const ConvShape& s, const Geometry& g, const T* scratch, const int64_t* off, const T* dy,
                  T* out) {
  switch (tg) {
    case 1: tap_dots<T, 1>(s, g, scratch, off, dy, out); break;
    case 2: tap_dots<T, 2>(s, g, scratch, off, dy, out); break;
    case 3: tap_dots<T, 3>(s, g, scratch, off, dy, out); break;
    default: tap_dots<T, kTapGroup>(s, g, scratch, off, dy, out); break;
  }
}

int64_t dw_grad_scratch_offset(const ConvShape& s) { return round_up(s.kh * s.kw * 8, kAlign); }

template <class T>
int64_t dw_grad_plane_stride(const Geometry& g) {
  return round_up(g.plane_elems * static_cast<int64_t>(sizeof(T)), kAlign);
}

#if defined(PYCONV_ISA_avx512)
// Weight gradient on flat planes (the forward's flat geometry):
// dW[oc, t] = sum over images and output vectors of dY[n, oc] times input
// plane c = oc / m shifted by tap t, with the forward's lane masks (taps in
// the padding add nothing).  One vector accumulator per tap for all the
// images, summed across lanes once per output channel: no padded copy of
// each plane and no lane sums per plane.  Output channels are the work
// items, each summed in one fixed order.
template <class T>
void grad_weight_flat(const ConvShape& s, const Geometry& g, const T* x, const T* dy, T* dw, char* ws, int nt) {
  using V = Vec<T>;
  constexpr int N = V::N, TG = 12;  // taps per pass: a 3x3 kernel in one pass over dY
  const int64_t taps = s.kh * s.kw, in_plane = s.h * s.w, pixels = s.oh * s.ow, m = s.oc / s.c;
  const int64_t vecs = ceil_div(pixels, N);
  int64_t* off = reinterpret_cast<int64_t*>(ws);
  uint16_t* masks = reinterpret_cast<uint16_t*>(ws + round_up(taps * 8, kAlign));
  flat_tables<T>(s, g, off, masks);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t oc = 0; oc < s.oc; ++oc) {
    const int64_t c = oc / m;
    for (int64_t t0 = 0; t0 < taps; t0 += TG) {
      const int tg = static_cast<int>(min64(TG, taps - t0));
      typename V::R acc[TG];
#pragma GCC unroll 16
      for (int i = 0; i < TG; ++i) acc[i] = V::zero();
      for (int64_t n = 0; n < s.n; ++n) {
        const uintptr_t xp = reinterpret_cast<uintptr_t>(x + (n * s.c + c) * in_plane);
        const T* dp = dy + (n * s.oc + oc) * pixels;
        for (int64_t v = 0; v < vecs; ++v) {
          const int64_t lanes = pixels - v * N;
          const typename V::R dv = lanes >= N ? V::load(dp + v * N) : V::load_n(dp + v * N, int(lanes));
#pragma GCC unroll 16
          for (int i = 0; i < TG; ++i) {
            if (i >= tg) break;
            const int64_t t = t0 + i;
            // As an integer: before the plane's start it is no pointer
            // into the array (those lanes are masked, never read).
            const T* src = reinterpret_cast<const T*>(xp + (v * N + off[t]) * int64_t(sizeof(T)));
            acc[i] = V::fma(V::load_mask(src, masks[t * g.f_vecs + v]), dv, acc[i]);
          }
        }
      }
      // (constant bounds here too: a loop to tg made the compiler keep acc
      // in memory, a load and a store around every FMA above: 0.22 ms for
      // 8x1024x7x7, 0.18 ms without)
#pragma GCC unroll 16
      for (int i = 0; i < TG; ++i) {
        if (i >= tg) break;
        dw[oc * taps + t0 + i] = sum_lanes<T>(acc[i]);
      }
    }
  }
}
#endif

// Weight gradient through channel-blocked NHWC tiles, for the shapes the
// forward sends there (Geometry::via_nhwc): one vector of channels per
// block.  For each image and band of output rows, the padded input band is
// gathered into a pixel-major tile (gather_tile) and the band of each
// multiplier slot's dY transposed beside it; every output pixel then adds
// dY * x under each tap into one vector per tap, channels in the lanes, so
// no lane sums at all (the plane-wise path sums lanes per plane and tap).
// Blocks are the work items, summing images and bands in one fixed order.
struct GwTile {
  int64_t rows, in_rows, in_elems, dy_elems, stride_bytes;
};

template <class T>
GwTile gw_tile(const ConvShape& s, const Geometry& g) {
  constexpr int64_t V = Vec<T>::N, e = sizeof(T);
  GwTile t{};
  const int64_t reach = (s.kh - 1) * s.dh + 1, in_row = g.t_wp * V * e, out_row = s.ow * V * e;
  t.rows = s.oh;
  while (t.rows > 1 && ((t.rows - 1) * s.sh + reach) * in_row + t.rows * out_row > kBlockedScratchBytes / 2) --t.rows;
  t.in_rows = (t.rows - 1) * s.sh + reach;
  t.in_elems = t.in_rows * g.t_wp * V;
  t.dy_elems = t.rows * s.ow * V;
  t.stride_bytes = round_up((t.in_elems + t.dy_elems) * e, kAlign);
  return t;
}

template <class T>
void grad_weight_blocked(const ConvShape& s, const Geometry& g0, const T* x, const T* dy, T* dw, char* ws, int nt) {
  using V = Vec<T>;
  constexpr int N = V::N, TG = 12;
  Geometry g = g0;
  g.t_cw = N;  // gather_tile's block width
  const GwTile t = gw_tile<T>(s, g);
  const int64_t taps = s.kh * s.kw, in_plane = s.h * s.w, out_plane = s.oh * s.ow, m = s.oc / s.c;
  const int64_t blocks = ceil_div(s.c, N), bands = ceil_div(s.oh, t.rows), row_elems = g.t_wp * N;
#pragma omp parallel num_threads(nt)
  {
    T* xt = reinterpret_cast<T*>(ws + thread_index() * t.stride_bytes);
    T* dt = xt + t.in_elems;
    for (int64_t i = 0; i < t.in_elems; ++i) xt[i] = T(0);  // pad columns stay zero
    alignas(64) T acc_mem[TG * N];
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * N, rem = min64(N, s.c - c0);
      for (int64_t j = 0; j < m; ++j)
        for (int64_t t0 = 0; t0 < taps; t0 += TG) {
          const int tg = static_cast<int>(min64(TG, taps - t0));
          typename V::R acc[TG];
#pragma GCC unroll 16
          for (int i = 0; i < TG; ++i) acc[i] = V::zero();
          for (int64_t n = 0; n < s.n; ++n)
            for (int64_t band = 0; band < bands; ++band) {
              const int64_t oh0 = band * t.rows, oh1 = min64(s.oh, oh0 + t.rows);
              const int64_t r0 = oh0 * s.sh, in_rows = (oh1 - 1 - oh0) * s.sh + (s.kh - 1) * s.dh + 1;
              const int64_t ih_lo = max64(0, r0 - s.pt), ih_hi = min64(s.h, r0 - s.pt + in_rows);
              for (int64_t i = 0; i < in_rows; ++i) {
                const int64_t ih = r0 + i - s.pt;
                if (ih < ih_lo || ih >= ih_hi)
                  for (int64_t k = 0; k < row_elems; ++k) xt[i * row_elems + k] = T(0);
              }
              // Lanes rem..N of a last, partial block: zero dY, so they add nothing.
              if (rem < N)
                for (int64_t k = 0; k < t.dy_elems; ++k) dt[k] = T(0);
              const T* xc = x + (n * s.c + c0) * in_plane;
              if (ih_hi > ih_lo) gather_tile(s, g, xc, rem, ih_lo * s.w, ih_hi * s.w, r0 - s.pt, xt);
              const int64_t pixels = (oh1 - oh0) * s.ow;
              transpose_copy(dy + (n * s.oc + c0 * m + j) * out_plane + oh0 * s.ow, m * out_plane, dt, N, rem, pixels);
              for (int64_t oh = 0; oh < oh1 - oh0; ++oh)
                for (int64_t ow = 0; ow < s.ow; ++ow) {
                  const typename V::R d = V::load(dt + (oh * s.ow + ow) * N);
                  const T* base = xt + ((oh * s.sh) * g.t_wp + ow * s.sw) * N;
#pragma GCC unroll 16
                  for (int i = 0; i < TG; ++i) {
                    if (i >= tg) break;
                    const int64_t tap = t0 + i, kh = tap / s.kw, kw = tap % s.kw;
                    acc[i] = V::fma(d, V::load(base + (kh * s.dh * g.t_wp + kw * s.dw) * N), acc[i]);
                  }
                }
            }
          for (int i = 0; i < tg; ++i) V::store(acc_mem + i * N, acc[i]);
          for (int64_t l = 0; l < rem; ++l)
            for (int i = 0; i < tg; ++i) dw[((c0 + l) * m + j) * taps + t0 + i] = acc_mem[i * N + l];
        }
    }
  }
}

template <class T>
void grad_weight_depthwise(const ConvShape& s, const T* x, const T* dy, T* dw, void* workspace, int nt) {
  const Geometry g = make_geometry<T>(s, 1, true);
#if defined(PYCONV_ISA_avx512)
  if (narrow3_serves<T>(s)) {
    grad_weight_narrow3(s, g, x, dy, dw, nt);
    return;
  }
  if (rows3_serves<T>(s)) {
    grad_weight_rows3(s, g, x, dy, dw, nt);
    return;
  }
  if (rows3s2_serves<T>(s)) {
    grad_weight_s2(s, g, x, dy, dw, nt);
    return;
  }
  if (g.flat) {
    grad_weight_flat(s, g, x, dy, dw, static_cast<char*>(workspace), nt);
    return;
  }
#endif
  if (g.via_nhwc) {
    grad_weight_blocked(s, g, x, dy, dw, static_cast<char*>(workspace), nt);
    return;
  }
  if (g.wide) {
    grad_weight_wide3(s, g, x, dy, dw, nt);
    return;
  }
  char* ws = static_cast<char*>(workspace);
  int64_t* off = reinterpret_cast<int64_t*>(ws);
  tap_offsets(s, g, off);
  const int64_t taps = s.kh * s.kw, pixels = s.oh * s.ow, stride = dw_grad_plane_stride<T>(g);
#pragma omp parallel num_threads(nt)
  {
    T* scratch = reinterpret_cast<T*>(ws + dw_grad_scratch_offset(s) + thread_index() * stride);
    T part[kTapGroup];
#pragma omp for schedule(static)
    for (int64_t c = 0; c < s.c; ++c)
      for (int64_t n = 0; n < s.n; ++n) {
        fill_phases(s, g, x + (n * s.c + c) * s.h * s.w, scratch);
        for (int64_t j = 0; j < g.m; ++j) {
          const int64_t oc = c * g.m + j;
          T* out = dw + oc * taps;
          for (int64_t t0 = 0; t0 < taps; t0 += kTapGroup) {
            const int tg = static_cast<int>(min64(kTapGroup, taps - t0));
            tap_dots_any(tg, s, g, scratch, off + t0, dy + (n * s.oc + oc) * pixels, part);
            for (int i = 0; i < tg; ++i) out[t0 + i] = n == 0 ? part[i] : out[t0 + i] + part[i];
          }
        }
      }
  }
}

// NHWC: x and grad_y transposed to NCHW planes in the workspace (register
// block transposes, blocks of pixel rows shared by the threads), the NCHW
// kernel above run on them, its OIHW result written HWIO.  NumPy's copies of
// the transposed views took 1.8 ms each for 8x7x7x1024 (the kernel: 0.23).
constexpr int64_t kTransposeRows = 64;  // pixels per transpose work item

struct NhwcGw {
  ConvShape nchw;
  int64_t off_x, off_dy, off_w, off_inner, total;
};

NhwcGw nhwc_gw_plan(const ConvShape& s, int elem_bytes, int64_t inner_bytes) {
  NhwcGw p{};
  p.nchw = s;
  p.nchw.layout = Layout::NCHW;
  int64_t off = 0;
  p.off_x = off;
  off += round_up(s.n * s.c * s.h * s.w * elem_bytes, kAlign);
  p.off_dy = off;
  off += round_up(s.n * s.oc * s.oh * s.ow * elem_bytes, kAlign);
  p.off_w = off;
  off += round_up(s.oc * s.kh * s.kw * elem_bytes, kAlign);
  p.off_inner = off;
  p.total = off + inner_bytes;
  return p;
}

// a (n, pixels, ch) -> b (n, ch, pixels)
template <class T>
void images_to_planes(const T* a, T* b, int64_t n, int64_t pixels, int64_t ch, int nt) {
  const int64_t blocks = ceil_div(pixels, kTransposeRows);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t it = 0; it < n * blocks; ++it) {
    const int64_t i = it / blocks, p0 = (it % blocks) * kTransposeRows;
    transpose_copy(a + (i * pixels + p0) * ch, ch, b + i * ch * pixels + p0, pixels,
                   min64(kTransposeRows, pixels - p0), ch);
  }
}

int64_t grad_weight_depthwise_workspace(const ConvShape& s, int elem_bytes, int nt) {
  if (s.layout == Layout::NHWC) {
    ConvShape c = s;
    c.layout = Layout::NCHW;
    return nhwc_gw_plan(s, elem_bytes, grad_weight_depthwise_workspace(c, elem_bytes, nt)).total;
  }
  if (s.layout == Layout::NCHW) {
    const Geometry g = elem_bytes == 4 ? make_geometry<float>(s, 1, true) : make_geometry<double>(s, 1, true);
    if (g.flat) return flat_table_bytes(s, g);
    if (g.via_nhwc) return nt * (elem_bytes == 4 ? gw_tile<float>(s, g).stride_bytes : gw_tile<double>(s, g).stride_bytes);
  }
  const int64_t plane = elem_bytes == 4 ? dw_grad_plane_stride<float>(make_geometry<float>(s, 1, true))
                                        : dw_grad_plane_stride<double>(make_geometry<double>(s, 1, true));
  return dw_grad_scratch_offset(s) + nt * plane;
}

// ---- input gradient (NCHW) -------------------------------------------------
//
// dX[c] = sum over the plane's m filters, output pixels and taps of
// dY[n, c*m + j, oh, ow] * w[tap], added at padded (oh*sh + kh*dh,
// ow*sw + kw*dw).  Accumulated in a zero-padded per-thread plane split into
// sw column phases (the forward's layout, where every tap of an output row
// lands on one contiguous run), one vector read-modify-write per tap and
// vector of output pixels, in a fixed order; then the phases are written
// out interleaved and cropped to the input.  Serves any stride (the stride-1
// case is also a forward depthwise convolution with the flipped kernel, but
// this avoids the flip and handles multipliers > 1, where that convolution
// would not be depthwise).

// One filter's taps into the scratch.  The tap loop is outside the row loop:
// taps kw and kw + sw land on the same phase one column apart, and
// read-modify-writes of overlapping, misaligned vectors back to back would
// stall on store forwarding; a whole pass over the rows lies between them.
template <class T>
void add_filter(const ConvShape& s, const Geometry& g, const T* wk, const T* dy, T* scratch) {
  using V = Vec<T>;
  constexpr int N = V::N;
  const int64_t full = s.ow / N * N;
  const int rest = static_cast<int>(s.ow - full);
  for (int64_t kh = 0; kh < s.kh; ++kh)
    for (int64_t kw = 0; kw < s.kw; ++kw) {
      const int64_t col = kw * s.dw;
      T* dst0 = scratch + ((col % s.sw) * g.hp + kh * s.dh) * g.wq + col / s.sw;
      const typename V::R wv = V::set1(wk[kh * s.kw + kw]);
      for (int64_t oh = 0; oh < s.oh; ++oh) {
        T* dst = dst0 + oh * s.sh * g.wq;
        const T* src = dy + oh * s.ow;
        for (int64_t ow = 0; ow < full; ow += N)
          V::store(dst + ow, V::fma(V::load(src + ow), wv, V::load(dst + ow)));
        if (rest)  // masked: lanes past the row must not add 0 * w (NaN for an infinite w)
          V::store_n(dst + full, V::fma(V::load_n(src + full, rest), wv, V::load_n(dst + full, rest)), rest);
      }
    }
}

// Input row ih of the plane from the phase scratch.
template <class T>
void write_row(const ConvShape& s, const Geometry& g, const T* scratch, int64_t ih, T* dst) {
  const int64_t r = ih + s.pt;
  if (s.sw == 1) {
    const T* src = scratch + r * g.wq + s.pl;
    for (int64_t iw = 0; iw < s.w; ++iw) dst[iw] = src[iw];
    return;
  }
  if (s.sw == 2) {  // column iw = 2v + b is phase (b + pl) % 2 at v + (b + pl) / 2
    using V = Vec<T>;
    const T* a = scratch + ((s.pl % 2) * g.hp + r) * g.wq + s.pl / 2;
    const T* b = scratch + (((s.pl + 1) % 2) * g.hp + r) * g.wq + (s.pl + 1) / 2;
    int64_t v = 0;
    for (; 2 * (v + V::N) <= s.w; v += V::N) V::store_interleaved(dst + 2 * v, V::load(a + v), V::load(b + v));
    if (2 * v < s.w) {  // the rest: masked loads and stores
      const int rest = static_cast<int>(s.w - 2 * v);
      store_interleaved_n<T>(dst + 2 * v, V::load_n(a + v, (rest + 1) / 2), V::load_n(b + v, rest / 2), rest);
    }
    return;
  }
  int64_t f = s.pl % s.sw, q = s.pl / s.sw;  // phase and column of input column 0, then stepped
  for (int64_t iw = 0; iw < s.w; ++iw) {
    dst[iw] = scratch[(f * g.hp + r) * g.wq + q];
    if (++f == s.sw) {
      f = 0;
      ++q;
    }
  }
}

#if defined(PYCONV_ISA_avx512)
// Input gradient of the stride-2 planes (rows3s2_serves) as a gather, not
// add_filter's scatter into a phase scratch: input row ih takes the dY rows
// r = (ih + pt - kh) / 2 of the kernel rows kh of its parity (kh 0 and 2
// for an even ih + pt, kh 1 for an odd one), and a vector pair of input
// columns [2Nu, 2Nu + 2N) is the interleave of its even and odd columns,
// each a sum over one dY vector (columns [Nu, Nu + N), zero past the
// output row) and its one-lane shift: left padding 1 takes even columns
// from tap 1 and odd ones from taps 0 (the next dY column) and 2; padding
// 0 even columns from taps 0 and 2 (the previous dY column), odd ones from
// tap 1.  The m filters of a multiplied channel add into the same
// registers.  Every input pixel is written once, in a fixed order
// (filter, kernel row, column tap).  1x128x56x56, 2 threads: 0.105 ->
// 0.063 ms per conv2d_grad_input call.
template <class T>
void grad_input_s2(const ConvShape& s, const T* w, const T* dy, T* dx, int nt) {
  using V = Vec<T>;
  using R = typename V::R;
  using M = typename V::M;
  constexpr int N = V::N;
  const int64_t m = s.oc / s.c, out_plane = s.oh * s.ow, in_plane = s.h * s.w;
  const int64_t pairs = ceil_div(s.w, 2 * N);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t p = 0; p < s.n * s.c; ++p) {
    const int64_t n = p / s.c, c = p % s.c;
    T* plane = dx + p * in_plane;
    for (int64_t ih = 0; ih < s.h; ++ih) {
      // (dY row, kernel row) pairs of this input row: one or two.
      int64_t rows[2], khs[2], count = 0;
      for (int64_t kh = (ih + s.pt) % 2; kh < 3; kh += 2) {
        const int64_t r = (ih + s.pt - kh) / 2;
        if (r >= 0 && r < s.oh) {
          rows[count] = r;
          khs[count++] = kh;
        }
      }
      T* dst = plane + ih * s.w;
      for (int64_t u = 0; u < pairs; ++u) {
        R e = V::zero(), o = V::zero();
        const int64_t j0 = u * N;
        const int64_t lanes = s.ow - j0;
        const M cut = V::lanes_mask(lanes >= N ? (1u << N) - 1u : lanes > 0 ? (1u << lanes) - 1u : 0u);
        for (int64_t j = 0; j < m; ++j) {
          const int64_t oc = c * m + j;
          const T* wk = w + oc * 9;
          for (int64_t i = 0; i < count; ++i) {
            const T* drow = dy + (n * s.oc + oc) * out_plane + rows[i] * s.ow;
            const T* wr = wk + khs[i] * 3;
            const R d = V::load_keep(drow + j0, cut);
            if (s.pl == 1) {
              const R next = j0 + N < s.ow ? V::set1(drow[j0 + N]) : V::zero();
              e = V::fma(d, V::set1(wr[1]), e);
              o = V::fma(V::template window<1, false>(M(0), d, d, next), V::set1(wr[0]), o);
              o = V::fma(d, V::set1(wr[2]), o);
            } else {
              const R prev = j0 > 0 && j0 - 1 < s.ow ? V::set1(drow[j0 - 1]) : V::zero();
              e = V::fma(d, V::set1(wr[0]), e);
              e = V::fma(V::template window<-1, false>(M(0), prev, d, d), V::set1(wr[2]), e);
              o = V::fma(d, V::set1(wr[1]), o);
            }
          }
        }
        const int64_t cols = min64(2 * N, s.w - 2 * N * u);
        if (cols == 2 * N)
          V::store_interleaved(dst + 2 * N * u, e, o);
        else
          store_interleaved_n<T>(dst + 2 * N * u, e, o, static_cast<int>(cols));
      }
    }
  }
}
#endif

template <class T>
void grad_input_depthwise(const ConvShape& s, const T* w, const T* dy, T* dx, void* workspace, int nt) {
  const Geometry g = make_geometry<T>(s, 1, true);
#if defined(PYCONV_ISA_avx512)
  if (rows3s2_serves<T>(s)) {
    grad_input_s2(s, w, dy, dx, nt);
    return;
  }
#endif
  const int64_t plane = s.sw * g.hp * g.wq, taps = s.kh * s.kw, out_plane = s.oh * s.ow;
  const int64_t stride = round_up(plane * static_cast<int64_t>(sizeof(T)), kAlign);
  char* ws = static_cast<char*>(workspace);
#pragma omp parallel num_threads(nt)
  {
    T* scratch = reinterpret_cast<T*>(ws + thread_index() * stride);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < s.n * s.c; ++p) {
      const int64_t n = p / s.c, c = p % s.c;
      for (int64_t i = 0; i < plane; ++i) scratch[i] = T(0);
      for (int64_t j = 0; j < g.m; ++j) {
        const int64_t oc = c * g.m + j;
        add_filter(s, g, w + oc * taps, dy + (n * s.oc + oc) * out_plane, scratch);
      }
      T* out = dx + p * s.h * s.w;
      for (int64_t ih = 0; ih < s.h; ++ih) write_row(s, g, scratch, ih, out + ih * s.w);
    }
  }
}

int64_t grad_input_depthwise_workspace(const ConvShape& s, int elem_bytes, int nt) {
  const int64_t plane = elem_bytes == 4 ? make_geometry<float>(s, 1, true).plane_elems
                                        : make_geometry<double>(s, 1, true).plane_elems;
  return nt * round_up(plane * elem_bytes, kAlign);
}

}  // namespace

// ---- bands (fused separable convolution) -----------------------------------

// Scratch: the tap offsets, then NCHW's phase scratch of one plane or
// NHWC's zero bias.
int64_t depthwise_band_scratch_bytes(const ConvShape& s, int elem_bytes) {
  const Geometry g = elem_bytes == 4 ? make_geometry<float>(s, 1, true) : make_geometry<double>(s, 1, true);
  const int64_t taps = round_up(s.kh * s.kw * 8, kAlign);
  return taps + (s.layout == Layout::NCHW ? round_up(g.plane_elems * elem_bytes, kAlign)
                                          : round_up(g.m * g.cp * elem_bytes, kAlign));
}

template <class T>
void depthwise_band(const ConvShape& s, const T* x, const T* packed, int64_t n, int64_t oh0, int64_t oh1, T* mid,
                    void* scratch) {
  const Geometry g = make_geometry<T>(s, 1, true);
  char* base = static_cast<char*>(scratch);
  int64_t* off = reinterpret_cast<int64_t*>(base);
  T* rest = reinterpret_cast<T*>(base + round_up(s.kh * s.kw * 8, kAlign));
  const int64_t rows = oh1 - oh0;
#if defined(PYCONV_ISA_avx512)
  // The forward's register-window strips, rows [oh0, oh1) of every plane.
  if (s.layout == Layout::NCHW && (rows3_serves<T>(s) || rows3s2_serves<T>(s))) {
    using V = Vec<T>;
    const int64_t nvr = ceil_div(s.w, V::N);
    const typename V::M tail = V::lanes_mask((1u << (s.w - (nvr - 1) * V::N)) - 1u);
    const typename V::R bv = V::zero();  // (the separable step's depthwise part has no bias)
    for (int64_t oc = 0; oc < s.oc; ++oc) {
      const T* xp = x + (n * s.c + oc / g.m) * s.h * s.w;
      typename V::R wv[9];
      for (int t = 0; t < 9; ++t) wv[t] = V::set1(packed[oc * 9 + t]);
      T* yband = mid + oc * rows * s.ow;
      if (rows3_serves<T>(s))
        rows3_plane<T>(s, xp, wv, bv, nvr, tail, yband, oh0, oh1);
      else
        s2_plane<T>(s, xp, wv, bv, yband, oh0, oh1);
    }
    return;
  }
  // Rows narrower than a vector: Narrow3, any band.
  if (s.layout == Layout::NCHW && narrow3_serves<T>(s)) {
    with_narrow3<T>(s, [&](const auto& k) {
      using V = typename std::decay_t<decltype(k)>::Vt;
      for (int64_t oc = 0; oc < s.oc; ++oc) {
        typename V::R wv[9];
        for (int t = 0; t < 9; ++t) wv[t] = V::set1(packed[oc * 9 + t]);
        k.forward(x + (n * s.c + oc / g.m) * s.h * s.w, wv, V::zero(), false, Activation::None,
                  mid + oc * rows * s.ow, oh0, oh0, oh1);
      }
    });
    return;
  }
#endif
  if (s.layout == Layout::NCHW) {
    tap_offsets(s, g, off);
    const int64_t taps = s.kh * s.kw;
    // Padded input rows the band reads.
    const int64_t r_lo = oh0 * s.sh, r_hi = (oh1 - 1) * s.sh + (s.kh - 1) * s.dh + 1;
    for (int64_t c = 0; c < s.c; ++c) {
      fill_phases(s, g, x + (n * s.c + c) * s.h * s.w, rest, r_lo, r_hi);
      for (int64_t j = 0; j < g.m; ++j) {
        const int64_t oc = c * g.m + j;
        plane_rows_nchw(s, g, rest, off, packed + oc * taps, T(0), oh0, oh1, mid + oc * rows * s.ow, s.ow);
      }
    }
    return;
  }
  for (int64_t i = 0; i < g.m * g.cp; ++i) rest[i] = T(0);
  int64_t ow_lo, ow_hi;
  interior_columns(s, ow_lo, ow_hi);
  const T* xn = x + n * s.h * s.w * s.c;
  for (int64_t oh = oh0; oh < oh1; ++oh)
    row_all_channels_nhwc(s, g, xn, packed, rest, ow_lo, ow_hi, oh, mid + (oh - oh0) * s.ow * s.oc);
}

template void depthwise_band<float>(const ConvShape&, const float*, const float*, int64_t, int64_t, int64_t,
                                    float*, void*);
template void depthwise_band<double>(const ConvShape&, const double*, const double*, int64_t, int64_t, int64_t,
                                     double*, void*);

const GradInputKernels kDepthwiseGradInput = {&grad_input_depthwise_workspace, &grad_input_depthwise<float>,
                                              &grad_input_depthwise<double>};

// NHWC weight gradient of 3x3 layers (multiplier 1, dilation 1, stride 1
// or 2, at least a vector of channels) in place, vectorised across
// channels: each channel vector's nine tap sums in registers along a row,
// kept in dw between rows (images, rows, pixels in order: one order for
// any thread count), the three input rows under an output row sliding
// through a 3x3 window of registers (SW new columns per pixel), columns
// and rows outside the image zero vectors (an infinite dY there makes NaN,
// as the padding does in the reference).  No transposes of x and dY to
// NCHW planes first (two passes over both; the NHWC gradient took 2x the
// NCHW one): in-process A/B, 2 threads, 8x7x7x1024 1.2-1.7x, 8x14x14x512
// 1.7-2.9x, 1x112x112x32 2.3-5x, 1x56x56x128 stride 2 3-4.9x, float64
// 8x14x14x512 1.9x.
// (float64 rows narrower than a vector stay with the transposes: the NCHW
// narrow-row kernel then fills a 256-bit vector per row, 8x7x7x1024 0.8x.)
template <class T>
bool nhwc_gw_direct_serves(const ConvShape& s) {
  return s.layout == Layout::NHWC && s.oc == s.c && s.kh == 3 && s.kw == 3 && s.dh == 1 && s.dw == 1 &&
         (s.sw == 1 || s.sw == 2) && s.c >= Vec<T>::N && !(sizeof(T) == 8 && s.w < Vec<T>::N);
}

// Input column iw of a row (nullptr: outside the image), lanes channels.
template <class T, bool Full>
__attribute__((always_inline)) inline typename Vec<T>::R gw_column(const T* row, int64_t iw, int64_t W, int64_t C,
                                                                   int lanes) {
  using V = Vec<T>;
  if (row == nullptr || iw < 0 || iw >= W) return V::zero();
  return Full ? V::load(row + iw * C) : V::load_n(row + iw * C, lanes);
}

template <class T, int SW, bool Full>
void gw_nhwc_row(const ConvShape& s, const T* xn, const T* dyrow, int64_t oh, int64_t c, int lanes,
                 typename Vec<T>::R (&acc)[9]) {
  using V = Vec<T>;
  using R = typename V::R;
  const int64_t C = s.c, W = s.w, OW = s.ow;
  const T* rows[3];
  for (int kh = 0; kh < 3; ++kh) {
    const int64_t ih = oh * s.sh - s.pt + kh;
    rows[kh] = ih >= 0 && ih < s.h ? xn + ih * W * C + c : nullptr;
  }
  const T *r0 = rows[0], *r1 = rows[1], *r2 = rows[2];
  int64_t iw = -s.pl;  // the window's first column
  R a0 = gw_column<T, Full>(r0, iw, W, C, lanes), a1 = gw_column<T, Full>(r0, iw + 1, W, C, lanes),
    a2 = gw_column<T, Full>(r0, iw + 2, W, C, lanes);
  R b0 = gw_column<T, Full>(r1, iw, W, C, lanes), b1 = gw_column<T, Full>(r1, iw + 1, W, C, lanes),
    b2 = gw_column<T, Full>(r1, iw + 2, W, C, lanes);
  R c0 = gw_column<T, Full>(r2, iw, W, C, lanes), c1 = gw_column<T, Full>(r2, iw + 1, W, C, lanes),
    c2 = gw_column<T, Full>(r2, iw + 2, W, C, lanes);
  for (int64_t ow = 0; ow < OW; ++ow) {
    const T* d = dyrow + ow * C + c;
    const R g = Full ? V::load(d) : V::load_n(d, lanes);
    acc[0] = V::fma(g, a0, acc[0]);
    acc[1] = V::fma(g, a1, acc[1]);
    acc[2] = V::fma(g, a2, acc[2]);
    acc[3] = V::fma(g, b0, acc[3]);
    acc[4] = V::fma(g, b1, acc[4]);
    acc[5] = V::fma(g, b2, acc[5]);
    acc[6] = V::fma(g, c0, acc[6]);
    acc[7] = V::fma(g, c1, acc[7]);
    acc[8] = V::fma(g, c2, acc[8]);
    iw += SW;
    if (SW == 1) {
      a0 = a1, a1 = a2, a2 = gw_column<T, Full>(r0, iw + 2, W, C, lanes);
      b0 = b1, b1 = b2, b2 = gw_column<T, Full>(r1, iw + 2, W, C, lanes);
      c0 = c1, c1 = c2, c2 = gw_column<T, Full>(r2, iw + 2, W, C, lanes);
    } else {
      a0 = a2, a1 = gw_column<T, Full>(r0, iw + 1, W, C, lanes), a2 = gw_column<T, Full>(r0, iw + 2, W, C, lanes);
      b0 = b2, b1 = gw_column<T, Full>(r1, iw + 1, W, C, lanes), b2 = gw_column<T, Full>(r1, iw + 2, W, C, lanes);
      c0 = c2, c1 = gw_column<T, Full>(r2, iw + 1, W, C, lanes), c2 = gw_column<T, Full>(r2, iw + 2, W, C, lanes);
    }
  }
}

template <class T>
void grad_weight_nhwc_direct(const ConvShape& s, const T* x, const T* dy, T* dw, int nt) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N;
  const int64_t vectors = ceil_div(s.c, N), C = s.c;
#pragma omp parallel num_threads(nt)
  {
    // Each thread's channel vectors, their tap sums in dw (L1) between
    // rows: row by row, each vector's three input rows and dY row are read
    // along their channels (the other order, one channel vector down the
    // whole batch, strides by C values: with a power-of-two C every load
    // falls in one L1 set; float64 8x7x7x1024 0.81x the transposes).
    const int64_t team = thread_count(), me = thread_index();
    const int64_t v_lo = vectors * me / team, v_hi = vectors * (me + 1) / team;
    for (int64_t t = 0; t < 9; ++t)
      for (int64_t c = v_lo * N; c < min64(C, v_hi * N); ++c) dw[t * C + c] = T(0);
    for (int64_t n = 0; n < s.n; ++n) {
      const T* xn = x + n * s.h * s.w * C;
      for (int64_t oh = 0; oh < s.oh; ++oh) {
        const T* dyrow = dy + (n * s.oh + oh) * s.ow * C;
        for (int64_t v = v_lo; v < v_hi; ++v) {
          const int64_t c = v * N;
          const int lanes = static_cast<int>(min64(N, C - c));
          R acc[9];
          if (lanes == N) {
#pragma GCC unroll 9
            for (int t = 0; t < 9; ++t) acc[t] = V::load(dw + t * C + c);
            s.sw == 1 ? gw_nhwc_row<T, 1, true>(s, xn, dyrow, oh, c, lanes, acc)
                      : gw_nhwc_row<T, 2, true>(s, xn, dyrow, oh, c, lanes, acc);
#pragma GCC unroll 9
            for (int t = 0; t < 9; ++t) V::store(dw + t * C + c, acc[t]);
          } else {
            for (int t = 0; t < 9; ++t) acc[t] = V::load_n(dw + t * C + c, lanes);
            s.sw == 1 ? gw_nhwc_row<T, 1, false>(s, xn, dyrow, oh, c, lanes, acc)
                      : gw_nhwc_row<T, 2, false>(s, xn, dyrow, oh, c, lanes, acc);
            for (int t = 0; t < 9; ++t) V::store_n(dw + t * C + c, acc[t], lanes);
          }
        }
      }
    }
  }
}

template <class T>
void grad_weight_depthwise_any(const ConvShape& s, const T* x, const T* dy, T* dw, void* workspace, int nt) {
  if (s.layout == Layout::NCHW) {
    grad_weight_depthwise(s, x, dy, dw, workspace, nt);
    return;
  }
  if (nhwc_gw_direct_serves<T>(s)) {
    grad_weight_nhwc_direct(s, x, dy, dw, nt);
    return;
  }
  ConvShape c = s;
  c.layout = Layout::NCHW;
  const NhwcGw p = nhwc_gw_plan(s, sizeof(T), grad_weight_depthwise_workspace(c, sizeof(T), nt));
  char* ws = static_cast<char*>(workspace);
  T* xc = reinterpret_cast<T*>(ws + p.off_x);
  T* dyc = reinterpret_cast<T*>(ws + p.off_dy);
  T* oihw = reinterpret_cast<T*>(ws + p.off_w);
  images_to_planes(x, xc, s.n, s.h * s.w, s.c, nt);
  images_to_planes(dy, dyc, s.n, s.oh * s.ow, s.oc, nt);
  grad_weight_depthwise(p.nchw, xc, dyc, oihw, ws + p.off_inner, nt);
  // OIHW (oc, 1, kh, kw) -> HWIO (kh, kw, 1, oc)
  transpose_copy(oihw, s.kh * s.kw, dw, s.oc, s.oc, s.kh * s.kw);
}

const GradWeightKernels kDepthwiseGradWeight = {&grad_weight_depthwise_workspace, &grad_weight_depthwise_any<float>,
                                                &grad_weight_depthwise_any<double>};

const AlgoKernels kDepthwise = {
    &depthwise_workspace_bytes, &depthwise_packed_bytes, &pack_depthwise<float>, &pack_depthwise<double>,
    &conv_depthwise<float>,     &conv_depthwise<double>,
};

}  // namespace PYCONV_ISA_NS
}  // namespace pyconv
