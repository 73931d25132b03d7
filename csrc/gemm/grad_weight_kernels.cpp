// Weight gradient of a convolution on the packed GEMM, compiled once per ISA.
//
//   dW[g] = sum over images n and output pixels p of  dY[n, g, p] x col[n, g, p]
//
// where col is im2col(x).  The reduction runs over the pixels of all images
// taken together (index r = n * OH*OW + p), so a batch of small images is one
// long reduction rather than many short GEMMs.
//   NCHW: dW[g] (OCg x Kg, the OIHW weight's rows) = dY (OCg x r) * col^T (r x Kg)
//   NHWC: dW[g] (Kg x OCg, the HWIO weight's rows) = col^T^T (Kg x r) * dY (r x OCg)
// with K ordered like the weight's memory (NCHW: ic,kh,kw; NHWC: kh,kw,ic).
// Both operands are packed straight from x and dY, KC pixels at a time
// (implicit im2col: no lowered matrix is ever written), by "segments": runs
// of pixels on one output row of one image, inside which x and dY advance
// with constant strides.  The extra memory is the per-thread packing
// buffers, whatever the batch.
//
// Stride-1 layers with at most 16 output channels take the pixel-lane
// ("frame") kernel below instead: no im2col, pixels in the lanes.
//
// Determinism: threads split dW's rows and columns; each dW element
// accumulates the KC blocks of r in order on one thread, and KC does not
// depend on the thread count.  A small dW (LeNet's 6x25 and 16x150, under
// kSplitMaxDw elements) has too few tiles to share, so its reduction is
// also cut into `parts`:
// KC-aligned ranges of r whose partial sums go to separate buffers and are
// then added in part order.  The number of parts depends on the shape only,
// never on the thread count, so results stay bitwise identical for any
// thread count.
#include <cstdint>
#include <utility>

#include "core/dispatch.hpp"
#include "core/problem.hpp"
#include "gemm/micro_kernel.hpp"
#include "simd/kernel_util.hpp"

namespace pyconv {
namespace PYCONV_ISA_NS {
namespace {

struct GwPlan {
  bool nchw;
  int64_t P, R;          // pixels per image, pixels in all images (the reduction)
  int64_t Kg, OCg;       // reduction per group (icg*kh*kw), outputs per group
  int64_t M, N;          // the per-group GEMM: NCHW M = OCg, N = Kg; NHWC M = Kg, N = OCg
  int64_t mb, nb;        // thread tile
  int64_t units, tiles;
  int64_t parts, part_len;  // reduction split (see above)
  int64_t dw_elems;         // all groups' dW
  int64_t apack_elems, bpack_elems, seg_bytes;
  int64_t pack_stride, total;
};

// A dW with fewer tiles than this (at full block sizes) also splits its
// reduction, into at most kMaxParts parts of at least kMinPartBlocks KC
// blocks each.
constexpr int64_t kSplitBelowTiles = 4;
constexpr int64_t kMaxParts = 8;
constexpr int64_t kMinPartBlocks = 4;
// ... and only a dW of fewer elements than this: a larger one has the
// columns (NR panels) to give each thread tiles of its own, and splitting
// its reduction as well made units of unequal cost (13 KC blocks in parts
// of 5, 5 and 3: one thread idle a quarter of the time).  Measured on 2
// threads: resnet50_res4_1x1 6.0-6.4 -> 4.9-5.3 ms, mbv1_pw_14 5.7-6.0 ->
// 4.5-5.2, vgg16_c1_2 23.7 -> 21.2; LeNet's 16x150 dW keeps its parts
// (0.32 vs 0.43 ms).
constexpr int64_t kSplitMaxDw = 16384;

// Row blocks of dW are up to twice the forward GEMM's MC: every row block
// packs the whole im2col operand again (B panels), and the A block (dY,
// kc pixels x 768 rows at most: 384 KiB of float32) still sits in L2.  512
// rows in one block instead of two: vgg16_c5_1 39.4 -> 36.7 ms,
// resnet50_res5_3x3 10.6 -> 9.6 ms, mbv1_pw_14 4.38 -> 4.24 ms (2 threads).
constexpr int64_t kGwRowsPerBlock = 2;

// A run of pixels r0 + off .. r0 + off + len - 1 on one output row.
struct Segment {
  int64_t off, len, n, oh, ow;
};

template <class T>
GwPlan make_plan(const ConvShape& s, int nt) {
  using Bk = Blocking<T>;
  const int64_t e = sizeof(T);
  GwPlan g{};
  g.nchw = s.layout == Layout::NCHW;
  g.P = s.oh * s.ow;
  g.R = s.n * g.P;
  g.Kg = icg(s) * s.kh * s.kw;
  g.OCg = ocg(s);
  g.M = g.nchw ? g.OCg : g.Kg;
  g.N = g.nchw ? g.Kg : g.OCg;
  // Row blocks of equal size (256 rows: two of 128, not 192 + 64), so that
  // the units the threads share are alike.
  // The threads share out the longer side: each thread packs the whole of
  // the other operand (for every block of the reduction), so that should
  // be the smaller one.  dW rows outnumber columns in 1x1 layers that widen
  // the channels (NCHW) or narrow them (NHWC): resnet50_res2_1x1 (64 ->
  // 256 on 56x56) 0.78 -> 0.71 ms on 2 threads.
  const bool split_rows = g.M > g.N;
  g.mb = balanced_block(g.M, kGwRowsPerBlock * Bk::MC, Bk::MR, split_rows ? s.groups : 1, split_rows ? nt : 1);
  const int64_t row_blocks = ceil_div(g.M, g.mb);
  g.nb = balanced_block(g.N, Bk::NC, Bk::NR, s.groups * row_blocks, nt);
  g.tiles = s.groups * row_blocks * ceil_div(g.N, g.nb);
  const int64_t full_tiles = s.groups * ceil_div(g.M, Bk::MC) * ceil_div(g.N, Bk::NC);  // thread-count free
  const int64_t blocks = ceil_div(g.R, Bk::KC);
  const bool split = full_tiles < kSplitBelowTiles && g.M * g.N < kSplitMaxDw;
  g.parts = split ? max64(1, min64(kMaxParts, blocks / kMinPartBlocks)) : 1;
  g.part_len = ceil_div(blocks, g.parts) * Bk::KC;
  g.parts = ceil_div(g.R, g.part_len);
  g.units = g.parts * g.tiles;
  g.dw_elems = s.oc * icg(s) * s.kh * s.kw;
  g.apack_elems = g.mb * Bk::KC;
  g.bpack_elems = Bk::KC * Bk::NR;
  g.seg_bytes = round_up(Bk::KC * static_cast<int64_t>(sizeof(Segment)), kAlign);
  g.pack_stride = round_up((g.apack_elems + g.bpack_elems) * e, kAlign) + g.seg_bytes;
  g.total = round_up((g.parts - 1) * g.dw_elems * e, kAlign) + nt * g.pack_stride;
  return g;
}

// The segments of pixels r0 .. r0 + kc - 1; returns their number.
inline int64_t make_segments(const ConvShape& s, const GwPlan& g, int64_t r0, int64_t kc, Segment* seg) {
  int64_t count = 0;
  for (int64_t j = 0; j < kc;) {
    const int64_t r = r0 + j, n = r / g.P, p = r % g.P, oh = p / s.ow, ow = p % s.ow;
    const int64_t len = min64(kc - j, s.ow - ow);
    seg[count++] = Segment{j, len, n, oh, ow};
    j += len;
  }
  return count;
}

// `len` values of input row ih of `plane` at columns iw0, iw0 + sw, ...
// (zeros outside the image), written `step` apart.
template <class T>
inline void gather_run(const ConvShape& s, const T* plane, int64_t ih, int64_t iw0, int64_t len, T* dst,
                       int64_t step) {
  if (ih < 0 || ih >= s.h) {
    for (int64_t q = 0; q < len; ++q) dst[q * step] = T(0);
    return;
  }
  const T* row = plane + ih * s.w;
  if (s.sw == 1) {  // the common case, without divisions
    const int64_t lo = min64(len, max64(0, -iw0)), hi = max64(lo, min64(len, s.w - iw0));
    for (int64_t q = 0; q < lo; ++q) dst[q * step] = T(0);
    for (int64_t q = lo; q < hi; ++q) dst[q * step] = row[iw0 + q];
    for (int64_t q = hi; q < len; ++q) dst[q * step] = T(0);
    return;
  }
  // Columns q with 0 <= iw0 + q*sw < W form one range [lo, hi).
  const int64_t lo = min64(len, iw0 >= 0 ? 0 : ceil_div(-iw0, s.sw));
  const int64_t hi = iw0 >= s.w ? lo : max64(lo, min64(len, ceil_div(s.w - iw0, s.sw)));
  for (int64_t q = 0; q < lo; ++q) dst[q * step] = T(0);
  for (int64_t q = lo; q < hi; ++q) dst[q * step] = row[iw0 + q * s.sw];
  for (int64_t q = hi; q < len; ++q) dst[q * step] = T(0);
}

// ---- NCHW packing ---------------------------------------------------------------

// A = dY rows o0 .. o0 + mc (output channels of the group) over the block's
// pixels, as MR-row micro-panels [k][MR].
template <class T>
void pack_a_nchw(const ConvShape& s, const GwPlan& g, const T* dy, int64_t o0, int64_t mc, const Segment* seg,
                 int64_t nseg, int64_t kc, T* dst) {
  constexpr int MR = Blocking<T>::MR;
  for (int64_t ip = 0; ip < mc; ip += MR) {
    T* panel = dst + ip * kc;
    const int64_t rows = min64(MR, mc - ip);
    // Each segment is a rows x len block of dY (channels g.P apart, pixels
    // contiguous), transposed into the panel in registers.
    for (int64_t q = 0; q < nseg; ++q) {
      const Segment& sg = seg[q];
      const T* src = dy + (sg.n * s.oc + o0 + ip) * g.P + sg.oh * s.ow + sg.ow;
      transpose_copy(src, g.P, panel + sg.off * MR, MR, rows, sg.len);
    }
    for (int64_t i = rows; i < MR; ++i)
      for (int64_t k = 0; k < kc; ++k) panel[k * MR + i] = T(0);
  }
}

// One B micro-panel: columns k0 .. k0 + nr of im2col (k = ic, kh, kw within
// the group) over the block's pixels, as [pixel][NR].
template <class T>
void pack_b_nchw(const ConvShape& s, const T* xg, int64_t k0, int64_t nr, const Segment* seg, int64_t nseg,
                 int64_t kc, T* dst) {
  constexpr int NR = Blocking<T>::NR;
  constexpr int64_t KC = Blocking<T>::KC;
  if (s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && !(s.pt || s.pb || s.pl || s.pr)) {
    // 1x1, stride 1, no padding: column k is input channel k's plane itself,
    // so each run of pixels of one image goes straight from the planes into
    // the panel, transposed in registers (no gathered copy): 2 threads,
    // resnet50_res4_1x1 4.7 -> 4.4 ms, mbv1_pw_14 4.4 -> 4.2 ms.
    for (int64_t q = 0; q < nseg;) {
      const Segment& first = seg[q];
      int64_t len = first.len;
      for (++q; q < nseg && seg[q].n == first.n; ++q) len += seg[q].len;  // (an image's pixels are contiguous)
      const T* src = xg + (first.n * s.c + k0) * s.h * s.w + first.oh * s.ow + first.ow;
      transpose_copy(src, s.h * s.w, dst + first.off * NR, NR, nr, len);
    }
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t j = nr; j < NR; ++j) dst[k * NR + j] = T(0);
    return;
  }
  const int64_t taps = s.kh * s.kw;
  int64_t ic = k0 / taps, kh = (k0 % taps) / s.kw, kw = k0 % s.kw;
  // Column j is gathered contiguously into row j of `rows`, then the nr x kc
  // block is transposed into the panel in registers (with the A panels
  // transposed the same way: the weight gradient of lenet_c2 1.35x, of
  // vgg16_c3_1 1.1x faster than gathering straight into the panels).
  alignas(64) T rows[KC * NR];
  for (int64_t j = 0; j < nr; ++j) {
    for (int64_t q = 0; q < nseg; ++q) {
      const Segment& sg = seg[q];
      const T* plane = xg + (sg.n * s.c + ic) * s.h * s.w;
      gather_run(s, plane, sg.oh * s.sh - s.pt + kh * s.dh, sg.ow * s.sw - s.pl + kw * s.dw, sg.len,
                 rows + j * kc + sg.off, 1);
    }
    if (++kw == s.kw) {
      kw = 0;
      if (++kh == s.kh) {
        kh = 0;
        ++ic;
      }
    }
  }
  transpose_copy(rows, kc, dst, NR, nr, kc);
  for (int64_t k = 0; k < kc; ++k)
    for (int64_t j = nr; j < NR; ++j) dst[k * NR + j] = T(0);
}

// ---- NHWC packing ---------------------------------------------------------------

// A = im2col^T rows k0 .. k0 + mc (k = kh, kw, ic within the group) over the
// block's pixels, as MR-row micro-panels [pixel][MR].
template <class T>
void pack_a_nhwc(const ConvShape& s, const T* xg, int64_t k0, int64_t mc, const Segment* seg, int64_t nseg,
                 int64_t kc, T* dst) {
  constexpr int MR = Blocking<T>::MR;
  const int64_t IG = icg(s);
  for (int64_t ip = 0; ip < mc; ip += MR) {
    T* panel = dst + ip * kc;
    const int64_t rows = min64(MR, mc - ip);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t k = k0 + ip + i, tap = k / IG, ic = k % IG, kh = tap / s.kw, kw = tap % s.kw;
      for (int64_t q = 0; q < nseg; ++q) {
        const Segment& sg = seg[q];
        const int64_t ih = sg.oh * s.sh - s.pt + kh * s.dh;
        T* out = panel + sg.off * MR + i;
        if (ih < 0 || ih >= s.h) {
          for (int64_t t = 0; t < sg.len; ++t) out[t * MR] = T(0);
          continue;
        }
        const T* row = xg + (sg.n * s.h + ih) * s.w * s.c + ic;
        const int64_t iw0 = sg.ow * s.sw - s.pl + kw * s.dw;
        for (int64_t t = 0; t < sg.len; ++t) {
          const int64_t iw = iw0 + t * s.sw;
          out[t * MR] = (iw >= 0 && iw < s.w) ? row[iw * s.c] : T(0);
        }
      }
    }
    for (int64_t i = rows; i < MR; ++i)
      for (int64_t k = 0; k < kc; ++k) panel[k * MR + i] = T(0);
  }
}

// One B micro-panel: dY columns j0 .. j0 + nr (the group's output channels)
// of pixels r0 .. r0 + kc, as [pixel][NR] (NHWC dY rows are pixels of all
// images in order, C_out apart).
template <class T>
void pack_b_nhwc(const ConvShape& s, const T* dyg, int64_t r0, int64_t nr, int64_t kc, T* dst) {
  constexpr int NR = Blocking<T>::NR;
  for (int64_t k = 0; k < kc; ++k) {
    const T* src = dyg + (r0 + k) * s.oc;
    for (int64_t j = 0; j < nr; ++j) dst[k * NR + j] = src[j];
    for (int64_t j = nr; j < NR; ++j) dst[k * NR + j] = T(0);
  }
}

// ---- pixel lanes over padded planes ("frame"), stride 1 -----------------------
//
// A layer with few output channels (LeNet's 6 and 16) gives the GEMM a dW of
// 6 or 16 rows, and its B panels are an im2col of every pixel of every
// image: packing cost as much as the products.  With stride 1 nothing needs
// packing but a zero margin: x goes to planes of hp x wp (padded), dY to
// frames of the same row length wp (zeros at ow >= OW; NHWC operands are
// transposed on the way, in register blocks), and then for tap
// (kh, kw) of input channel ic, frame position q of dY meets plane position
// q + ic * plane + kh * dh * wp + kw * dw of x: every dW element is a dot
// product of two runs with constant offsets.  A tile is OCB output channels
// x KB (ic, kh, kw) columns of dW in registers, pixels in lanes: per vector
// of positions OCB dY loads and KB x loads feed OCB * KB FMAs, and the lanes
// are summed once at the end.  x lanes at positions outside the output
// (ow >= OW, the end of the frame) are masked to zero, so an inf or NaN
// there never meets a zero of dY.  Each dW element is summed by one thread,
// images and positions in order: bitwise identical for any thread count.
// dW is written in the layout's order (OIHW or HWIO).
#if defined(PYCONV_ISA_avx512)
constexpr int kFrameOCB = 4, kFrameKB = 6;  // 24 accumulators + 4 dY + 1 x of 32 zmm
#elif defined(PYCONV_ISA_avx2)
constexpr int kFrameOCB = 2, kFrameKB = 6;  // 12 + 2 + 1 of 16 ymm
#else
constexpr int kFrameOCB = 2, kFrameKB = 4;
#endif

struct FramePlan {
  int64_t hp, wp, plane;       // padded x planes
  int64_t vecs, frame;         // vectors of positions per dY frame, its elements (vecs * lanes)
  int64_t slack;               // zeros after the last x plane (the last vector's reach)
  int64_t off_g, off_m, total;  // byte offsets in the workspace (x planes at 0)
};

template <class T>
FramePlan make_frame_plan(const ConvShape& s) {
  constexpr int64_t L = Vec<T>::N;
  const int64_t e = sizeof(T);
  FramePlan f{};
  f.hp = s.h + s.pt + s.pb;
  f.wp = s.w + s.pl + s.pr;
  f.plane = f.hp * f.wp;
  f.vecs = ceil_div(s.oh * f.wp, L);
  f.frame = f.vecs * L;
  f.slack = L + (s.kw - 1) * s.dw;
  f.off_g = round_up((s.n * s.c * f.plane + f.slack) * e, kAlign);
  f.off_m = f.off_g + round_up(s.n * s.oc * f.frame * e, kAlign);
  f.total = f.off_m + round_up(f.vecs * static_cast<int64_t>(sizeof(typename Vec<T>::M)), kAlign);
  return f;
}

template <class T, int OCB, int KB>
void frame_tile(const ConvShape& s, const FramePlan& f, const T* xp, const T* gf, const typename Vec<T>::M* keep,
                int64_t oc0, int64_t k0, T* dw) {
  using V = Vec<T>;
  constexpr int64_t L = V::N;
  const int64_t taps = s.kh * s.kw, Kg = s.c * taps;
  const bool nchw = s.layout == Layout::NCHW;
  int64_t off[KB], out[KB];  // column j: its x offset, its dW element (oc0)
  for (int j = 0; j < KB; ++j) {
    const int64_t k = k0 + j, ic = k / taps, t = k % taps;
    off[j] = ic * f.plane + (t / s.kw) * s.dh * f.wp + (t % s.kw) * s.dw;
    out[j] = nchw ? oc0 * Kg + k : (t * s.c + ic) * s.oc + oc0;  // OIHW or HWIO
  }
  const int64_t orow = nchw ? Kg : 1;  // next output channel
  typename V::R acc[OCB][KB];
#pragma GCC unroll 8
  for (int i = 0; i < OCB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < KB; ++j) acc[i][j] = V::zero();
  for (int64_t n = 0; n < s.n; ++n) {
    const T* xn = xp + n * s.c * f.plane;
    const T* gn = gf + (n * s.oc + oc0) * f.frame;
    for (int64_t v = 0; v < f.vecs; ++v) {
      typename V::R gv[OCB];
#pragma GCC unroll 8
      for (int i = 0; i < OCB; ++i) gv[i] = V::load(gn + i * f.frame + v * L);
      const typename V::M m = keep[v];
#pragma GCC unroll 8
      for (int j = 0; j < KB; ++j) {
        const typename V::R xv = V::load_keep(xn + off[j] + v * L, m);
#pragma GCC unroll 8
        for (int i = 0; i < OCB; ++i) acc[i][j] = V::fma(gv[i], xv, acc[i][j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < OCB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < KB; ++j) dw[out[j] + i * orow] = sum_lanes<T>(acc[i][j]);
}

template <class T>
using FrameTile = void (*)(const ConvShape&, const FramePlan&, const T*, const T*, const typename Vec<T>::M*,
                           int64_t, int64_t, T*);
template <class T>
struct FrameRow { FrameTile<T> fn[kFrameKB + 1]; };
template <class T, int OCB, int... K>
constexpr FrameRow<T> frame_row(std::integer_sequence<int, K...>) {
  return FrameRow<T>{{nullptr, &frame_tile<T, OCB, K + 1>...}};
}
template <class T, int... O>
constexpr auto frame_tiles(std::integer_sequence<int, O...>) {
  struct Table { FrameRow<T> row[sizeof...(O) + 1]; };
  return Table{{FrameRow<T>{}, frame_row<T, O + 1>(std::make_integer_sequence<int, kFrameKB>{})...}};
}

template <class T>
void grad_weight_frame(const ConvShape& s, const T* x, const T* dy, T* dw, void* workspace, int nt) {
  using V = Vec<T>;
  constexpr int64_t L = V::N;
  static constexpr auto tiles = frame_tiles<T>(std::make_integer_sequence<int, kFrameOCB>{});
  const FramePlan f = make_frame_plan<T>(s);
  char* ws = static_cast<char*>(workspace);
  T* xp = reinterpret_cast<T*>(ws);
  T* gf = reinterpret_cast<T*>(ws + f.off_g);
  typename V::M* keep = reinterpret_cast<typename V::M*>(ws + f.off_m);
  const bool nchw = s.layout == Layout::NCHW;
  if (nchw)
    pad_planes(x, s.n * s.c, s.h, s.w, f.hp, f.wp, s.pt, s.pl, f.slack, xp, nt);
  else
    pad_planes_nhwc(x, s.n, s.h, s.w, s.c, f.hp, f.wp, s.pt, s.pl, f.slack, xp, nt);
  // dY frames: rows of wp with zeros past OW, zeros after the last row
  // (NHWC: each dY row transposed into its oc frames).
  const int64_t OHW = s.oh * s.ow;
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < s.n * s.oc; ++i) {
      const T* src = dy + i * OHW;
      T* d = gf + i * f.frame;
      for (int64_t oh = 0; oh < s.oh; ++oh) {
        if (nchw)
          for (int64_t ow = 0; ow < s.ow; ++ow) d[oh * f.wp + ow] = src[oh * s.ow + ow];
        for (int64_t ow = s.ow; ow < f.wp; ++ow) d[oh * f.wp + ow] = T(0);
      }
      for (int64_t q = s.oh * f.wp; q < f.frame; ++q) d[q] = T(0);
    }
    if (!nchw) {
#pragma omp for schedule(static)
      for (int64_t r = 0; r < s.n * s.oh; ++r) {
        const int64_t n = r / s.oh, oh = r % s.oh;
        transpose_copy(dy + r * s.ow * s.oc, s.oc, gf + n * s.oc * f.frame + oh * f.wp, f.frame, s.ow, s.oc);
      }
    }
  }
  for (int64_t v = 0; v < f.vecs; ++v) {
    unsigned bits = 0;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t q = v * L + l;
      if (q < s.oh * f.wp && q % f.wp < s.ow) bits |= 1u << l;
    }
    keep[v] = V::lanes_mask(bits);
  }
  // Tiles of balanced sizes: OC rows in ob blocks, Kg columns in kb blocks.
  const int64_t Kg = s.c * s.kh * s.kw;
  const int64_t ob = ceil_div(s.oc, kFrameOCB), kb = ceil_div(Kg, kFrameKB);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t u = 0; u < ob * kb; ++u) {
    const int64_t i = u / kb, j = u % kb;
    const int64_t rows = s.oc / ob + (i < s.oc % ob ? 1 : 0), oc0 = i * (s.oc / ob) + min64(i, s.oc % ob);
    const int64_t cols = Kg / kb + (j < Kg % kb ? 1 : 0), k0 = j * (Kg / kb) + min64(j, Kg % kb);
    tiles.row[rows].fn[cols](s, f, xp, gf, keep, oc0, k0, dw);
  }
}

// ---- the driver ----------------------------------------------------------------

// 1x1, stride 1, unpadded NCHW layers with at most kThinInputs input
// channels (an RGB image's first 1x1 layer): dW is OC x C dot products of
// whole planes, and the GEMM would spend a 16- or 32-wide tile on 3
// columns.  Here pixels are the vector lanes: kThinRows output channels x
// C accumulators, each x vector loaded once per row block and each dY
// vector once, lanes summed once at the end.  Row blocks are the work
// items, each summed over images and pixels in one fixed order.
constexpr int64_t kThinInputs = 4;
constexpr int kThinRows = 8;

inline bool thin_pointwise(const ConvShape& s) {
  return s.layout == Layout::NCHW && s.groups == 1 && s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 &&
         s.pt == 0 && s.pb == 0 && s.pl == 0 && s.pr == 0 && s.c >= 1 && s.c <= kThinInputs;
}

template <class T, int C>
void thin_rows(const ConvShape& s, const T* x, const T* dy, T* dw, int64_t oc0, int rows) {
  using V = Vec<T>;
  constexpr int N = V::N;
  const int64_t P = s.h * s.w, full = P / N * N;
  typename V::R acc[kThinRows][C];
#pragma GCC unroll 8
  for (int r = 0; r < kThinRows; ++r)
#pragma GCC unroll 4
    for (int k = 0; k < C; ++k) acc[r][k] = V::zero();
  for (int64_t n = 0; n < s.n; ++n) {
    const T* xn = x + n * C * P;
    const T* dn = dy + (n * s.oc + oc0) * P;
    auto step = [&](int64_t p, int lanes) {
      typename V::R xv[C];
#pragma GCC unroll 4
      for (int k = 0; k < C; ++k) xv[k] = lanes == N ? V::load(xn + k * P + p) : V::load_n(xn + k * P + p, lanes);
#pragma GCC unroll 8
      for (int r = 0; r < kThinRows; ++r) {
        if (r >= rows) break;
        const typename V::R d = lanes == N ? V::load(dn + r * P + p) : V::load_n(dn + r * P + p, lanes);
#pragma GCC unroll 4
        for (int k = 0; k < C; ++k) acc[r][k] = V::fma(d, xv[k], acc[r][k]);
      }
    };
    for (int64_t p = 0; p < full; p += N) step(p, N);
    if (full < P) step(full, static_cast<int>(P - full));
  }
  for (int r = 0; r < rows; ++r)
    for (int k = 0; k < C; ++k) dw[(oc0 + r) * C + k] = sum_lanes<T>(acc[r][k]);
}

template <class T>
void grad_weight_thin(const ConvShape& s, const T* x, const T* dy, T* dw, int nt) {
  const int64_t blocks = ceil_div(s.oc, kThinRows);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t oc0 = b * kThinRows;
    const int rows = static_cast<int>(min64(kThinRows, s.oc - oc0));
    switch (s.c) {
      case 1: thin_rows<T, 1>(s, x, dy, dw, oc0, rows); break;
      case 2: thin_rows<T, 2>(s, x, dy, dw, oc0, rows); break;
      case 3: thin_rows<T, 3>(s, x, dy, dw, oc0, rows); break;
      default: thin_rows<T, 4>(s, x, dy, dw, oc0, rows); break;
    }
  }
}

template <class T>
void grad_weight(const ConvShape& s, const T* x, const T* dy, T* dw, void* workspace, int nt) {
  if (thin_pointwise(s)) {
    grad_weight_thin(s, x, dy, dw, nt);
    return;
  }
  if (pixel_lane_grad_weight(s)) {
    grad_weight_frame(s, x, dy, dw, workspace, nt);
    return;
  }
  using Bk = Blocking<T>;
  const GwPlan g = make_plan<T>(s, nt);
  char* ws = static_cast<char*>(workspace);
  const int64_t row_blocks = ceil_div(g.M, g.mb), col_blocks = ceil_div(g.N, g.nb);
  const Epilogue<T> none{nullptr, false, Activation::None};
  const int64_t ldc = g.nchw ? g.Kg : s.oc;
  T* partial = reinterpret_cast<T*>(ws);  // parts 1.. (part 0 is dw itself)
  char* packs = ws + round_up((g.parts - 1) * g.dw_elems * static_cast<int64_t>(sizeof(T)), kAlign);
#pragma omp parallel num_threads(nt)
  {
    char* mine = packs + thread_index() * g.pack_stride;
    Segment* seg = reinterpret_cast<Segment*>(mine);
    T* apack = reinterpret_cast<T*>(mine + g.seg_bytes);
    T* bpack = apack + g.apack_elems;
#pragma omp for schedule(static)
    for (int64_t u = 0; u < g.units; ++u) {
      const int64_t t = u % g.tiles, part = u / g.tiles;
      const int64_t jb = t % col_blocks, ib = (t / col_blocks) % row_blocks, grp = t / (col_blocks * row_blocks);
      const int64_t i0 = ib * g.mb, j0 = jb * g.nb;
      const int64_t mc = min64(g.mb, g.M - i0), nc = min64(g.nb, g.N - j0);
      T* base = part == 0 ? dw : partial + (part - 1) * g.dw_elems;
      T* c = g.nchw ? base + (grp * g.OCg + i0) * ldc + j0 : base + i0 * ldc + grp * g.OCg + j0;
      const int64_t r_begin = part * g.part_len, r_end = min64(g.R, r_begin + g.part_len);
      for (int64_t r0 = r_begin; r0 < r_end; r0 += Bk::KC) {
        const int64_t kc = min64(Bk::KC, r_end - r0);
        const int64_t nseg = make_segments(s, g, r0, kc, seg);
        if (g.nchw)
          pack_a_nchw(s, g, dy, grp * g.OCg + i0, mc, seg, nseg, kc, apack);
        else
          pack_a_nhwc(s, x + grp * icg(s), i0, mc, seg, nseg, kc, apack);
        for (int64_t jr = 0; jr < nc; jr += Bk::NR) {
          const int nr = static_cast<int>(min64(Bk::NR, nc - jr));
          if (g.nchw)
            pack_b_nchw(s, x + grp * icg(s) * s.h * s.w, j0 + jr, nr, seg, nseg, kc, bpack);
          else
            pack_b_nhwc(s, dy + grp * g.OCg + j0 + jr, r0, nr, kc, bpack);
          for (int64_t ir = 0; ir < mc; ir += Bk::MR)
            micro_kernel<T>(kc, apack + ir * kc, bpack, c + ir * ldc + jr, ldc,
                            static_cast<int>(min64(Bk::MR, mc - ir)), nr, r0 > r_begin, false, none, 0, 0);
        }
      }
    }
    if (g.parts > 1) {
      // (the implicit barrier of the loop above: every part is complete)
#pragma omp for schedule(static)
      for (int64_t i = 0; i < g.dw_elems; ++i) {
        T sum = dw[i];
        for (int64_t p = 1; p < g.parts; ++p) sum += partial[(p - 1) * g.dw_elems + i];
        dw[i] = sum;
      }
    }
  }
}

int64_t grad_weight_workspace(const ConvShape& s, int elem_bytes, int nt) {
  if (thin_pointwise(s)) return 0;
  if (pixel_lane_grad_weight(s)) return elem_bytes == 4 ? make_frame_plan<float>(s).total : make_frame_plan<double>(s).total;
  return elem_bytes == 4 ? make_plan<float>(s, nt).total : make_plan<double>(s, nt).total;
}

}  // namespace

const GradWeightKernels kGradWeight = {&grad_weight_workspace, &grad_weight<float>, &grad_weight<double>};

// ---- the transposed problem's weight (input gradient) -----------------------
//
// A NumPy copy of the strided, group-transposed view ran at 1-2 GB/s (its
// inner loop is one kernel row of 3 values): 3.9 ms for a 512x512x3x3
// weight in NCHW, 6 ms in NHWC, on every input-gradient call.  NHWC: per
// tap and group, one (cg x og) -> (og x cg) matrix transpose in registers.
// NCHW: per output row (g, i), the og kernels of that input channel
// gathered in order; consecutive rows read the same cache lines, which are
// still in L1/L2 (og lines apart).

template <class T>
void transpose_taps(const TapsTranspose& t, const T* w, T* out, int nt) {
  const int64_t taps = t.nr * t.nc, oc = t.groups * t.og, c = t.groups * t.cg;
  if (t.layout == Layout::NHWC) {
    const int64_t pairs = t.nr * t.nc * t.groups;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t q = 0; q < pairs; ++q) {
      const int64_t a = q / (t.nc * t.groups), b = q / t.groups % t.nc, g = q % t.groups;
      const T* src = w + (t.rows[a] * t.kw + t.cols[b]) * t.cg * oc + g * t.og;  // (cg x og), row stride oc
      T* dst = out + (a * t.nc + b) * t.og * c + g * t.cg;                       // (og x cg), row stride c
      transpose_copy(src, oc, dst, c, t.cg, t.og);
    }
    return;
  }
  const int64_t ktaps = t.kh * t.kw;
  if (ktaps == 1) {
    // 1x1 kernels: per group one matrix transpose, (og x cg) -> (cg x og),
    // in register blocks, the threads splitting the input channels.  The
    // gather below would read one value per kernel 4 KiB apart (a 256x1024
    // weight: every load in the same L1 set): 0.53 -> 0.063 ms on 2 threads
    // (ResNet res4 1x1 input gradient 5.5-6.1 -> 5.1-5.4 ms).
    constexpr int64_t kBlock = 64;
    const int64_t blocks = ceil_div(t.cg, kBlock), units = t.groups * blocks;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t g = u / blocks, i0 = (u % blocks) * kBlock, n = min64(kBlock, t.cg - i0);
      transpose_copy(w + g * t.og * t.cg + i0, t.cg, out + (g * t.cg + i0) * t.og, t.og, t.og, n);
    }
    return;
  }
#if defined(PYCONV_ISA_avx512)
  if (sizeof(T) == 4 && ktaps <= 16 && taps <= 16) {
    // A kernel's taps are one masked load; one permute puts the wanted taps
    // in order; the store may run past them into the row's next kernels
    // (their own stores come later and overwrite it), never past the row:
    // the last vector of a row is masked.
    alignas(64) int32_t order[16] = {};
    for (int64_t a = 0; a < t.nr; ++a)
      for (int64_t b = 0; b < t.nc; ++b) order[a * t.nc + b] = static_cast<int32_t>(t.rows[a] * t.kw + t.cols[b]);
    const __m512i idx = _mm512_load_si512(order);
    const __mmask16 in = static_cast<__mmask16>((1u << ktaps) - 1u), keep = static_cast<__mmask16>((1u << taps) - 1u);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < c; ++r) {
      const int64_t g = r / t.cg, i = r % t.cg;
      float* dst = reinterpret_cast<float*>(out) + r * t.og * taps;
      const float* src = reinterpret_cast<const float*>(w) + (g * t.og * t.cg + i) * ktaps;
      for (int64_t o = 0; o < t.og; ++o) {
        const __m512 v = _mm512_permutexvar_ps(idx, _mm512_maskz_loadu_ps(in, src + o * t.cg * ktaps));
        if ((t.og - o) * taps >= 16)  // the whole vector lies inside this row
          _mm512_storeu_ps(dst + o * taps, v);
        else
          _mm512_mask_storeu_ps(dst + o * taps, keep, v);
      }
    }
    return;
  }
#endif
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < c; ++r) {
    const int64_t g = r / t.cg, i = r % t.cg;
    T* dst = out + r * t.og * taps;
    const T* src = w + (g * t.og * t.cg + i) * ktaps;
    for (int64_t o = 0; o < t.og; ++o) {
      const T* blk = src + o * t.cg * ktaps;
      for (int64_t a = 0; a < t.nr; ++a)
        for (int64_t b = 0; b < t.nc; ++b) dst[a * t.nc + b] = blk[t.rows[a] * t.kw + t.cols[b]];
      dst += taps;
    }
  }
}

const WeightKernels kWeights = {&transpose_taps<float>, &transpose_taps<double>};

}  // namespace PYCONV_ISA_NS
}  // namespace pyconv
