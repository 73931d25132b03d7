// Packed GEMM engine and the convolutions lowered onto it (im2col, pointwise),
// compiled once per ISA (see CMakeLists.txt).
//
// BLIS/GotoBLAS structure.  C (M x N) = A (M x K) * B (K x N), row-major C
// with unit column stride.  A is packed in MR-row micro-panels ([k][MR]), B
// in NR-column micro-panels ([k][NR]), both zero-padded, so the micro-kernel
// streams two contiguous buffers: per k it loads NR/V vectors of B,
// broadcasts MR values of A and does MR x NR/V FMAs into registers.  K is cut
// into KC blocks so a B micro-panel (KC x NR) stays in L1 while it meets every
// A micro-panel of an MC x KC block held in L2.
//
// Convolution as GEMM, written straight into the caller's layout:
//   NCHW: C = y[n] as (C_out x OH*OW), A = weight (C_out x K), B = im2col(x[n])
//   NHWC: C = y as (N*OH*OW x C_out),  A = im2col(x),         B = weight (K x C_out)
// with K ordered like the weight's memory (NCHW: ic,kh,kw; NHWC: kh,kw,ic).
// The weight is packed once per call into panels covering all of K; the
// im2col operand is never materialised: each thread packs the block it is
// about to use straight from the input (implicit GEMM), so the extra memory
// is one KC x (MC or NC) buffer per thread whatever the image size.
//
// Determinism: K is split into KC blocks in a fixed order and never across
// threads; threads split M and N only.  Every output element therefore sees
// the same sequence of FMAs for any thread count.  Edge tiles go through a
// stack buffer with the same scalar epilogue operations as the vector path,
// so a tile's values do not depend on whether it is an edge tile.
#include <chrono>
#include <cstdint>

#include "core/dispatch.hpp"
#include "core/problem.hpp"
#include "gemm/micro_kernel.hpp"
#include "separable/bands.hpp"
#include "simd/kernel_util.hpp"
#include "simd/vec.hpp"

namespace pyconv {
namespace PYCONV_ISA_NS {
namespace {


// ---- the problem ---------------------------------------------------------------

// Everything derived from the shape: GEMM sizes per group and the workspace.
struct Geometry {
  bool nchw;
  int64_t M, N, K;          // per group (NCHW: per image too)
  int64_t icg, ocg, pixels; // input/output channels per group, OH*OW
  int64_t panels_w;         // weight micro-panels per group
  int64_t panel_w_len;      // elements per weight panel (K x MR or K x NR)
  int64_t block;            // pixels per work unit (NCHW: columns, NHWC: rows)
  int64_t units;            // work units for the thread team
  int64_t pack_elems;       // per-thread im2col buffer
  int64_t ldy;              // NCHW: output plane stride (pixels, or a whole image's plane for a band)
  // NCHW 1x1 "tails" (see conv_gemm_nchw): the last `tail` pixels of every
  // image, gathered into blocks of tail_block columns; 0 when unused.
  int64_t tail, tail_block, tail_units, tail_c_elems;
  int64_t off_w, off_pack, total;
};

// A 1x1 stride-1 unpadded NCHW layer: each input plane is a row of B.
inline bool pointwise_flat(const ConvShape& s) {
  return s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && !(s.pt || s.pb || s.pl || s.pr);
}

// `tails`: allow the tail blocks of conv_gemm_nchw (the standalone layer;
// the band entries below compute column ranges of their own).
template <class T>
Geometry make_geometry(const ConvShape& s, int nt, bool prepacked, bool tails = false) {
  using Bk = Blocking<T>;
  Geometry g{};
  g.nchw = s.layout == Layout::NCHW;
  g.icg = icg(s);
  g.ocg = ocg(s);
  g.pixels = s.oh * s.ow;
  g.ldy = g.pixels;
  g.K = g.icg * s.kh * s.kw;
  const int64_t kc = min64(Bk::KC, g.K);
  if (g.nchw) {
    g.M = g.ocg;
    g.N = g.pixels;
    g.panels_w = ceil_div(g.M, Bk::MR);
    g.panel_w_len = g.K * Bk::MR;
    g.block = balanced_block(g.N, Bk::NC, Bk::NR, s.n * s.groups, nt);
    g.units = s.n * s.groups * ceil_div(g.N, g.block);
    g.pack_elems = kc * round_up(g.block, Bk::NR);
    // Tails only where an image's edge panel wastes at least a fifth of
    // its lanes (7x7: 17 columns in 32 lanes, 31%; 10x10 and 14x14: 4
    // columns in a 16-lane tile, 12% and 6%, where the extra unit and copy
    // cost what they save).
    const int64_t rest = g.N % Bk::NR, paid = rest <= Vec<T>::N ? Vec<T>::N : Bk::NR;
    if (tails && pointwise_flat(s) && s.n > 1 && g.N > Bk::NR && rest && 5 * (paid - rest) >= g.N) {
      g.tail = g.N % Bk::NR;
      g.tail_block = min64(round_up(s.n * g.tail, Bk::NR), round_up(g.block, Bk::NR));
      g.tail_units = s.groups * ceil_div(s.n * g.tail, g.tail_block);
      g.tail_c_elems = g.M * g.tail_block;
    }
  } else {
    g.M = s.n * g.pixels;
    g.N = g.ocg;
    g.panels_w = ceil_div(g.N, Bk::NR);
    g.panel_w_len = g.K * Bk::NR;
    g.block = balanced_block(g.M, Bk::MC, Bk::MR, s.groups, nt);
    g.units = s.groups * ceil_div(g.M, g.block);
    g.pack_elems = kc * round_up(g.block, Bk::MR);
  }
  const int64_t e = sizeof(T);
  g.off_w = 0;
  g.off_pack = prepacked ? 0 : round_up(s.groups * g.panels_w * g.panel_w_len * e, kAlign);
  g.total = g.off_pack + nt * (round_up(g.pack_elems * e, kAlign) + round_up(g.tail_c_elems * e, kAlign));
  return g;
}

// ---- packing ---------------------------------------------------------------------

// Weight element (output channel oc of group grp, reduction index k).
template <class T>
inline T weight_at(const ConvShape& s, const Geometry& g, const T* w, int64_t grp, int64_t o, int64_t k) {
  const int64_t oc = grp * g.ocg + o;
  return g.nchw ? w[oc * g.K + k] : w[k * s.oc + oc];
}

// All weight panels: [group][panel][k][R] with R = MR (NCHW) or NR (NHWC).
template <class T>
void pack_weights(const ConvShape& s, const Geometry& g, const T* w, T* wp, int nt) {
  const int64_t R = g.nchw ? Blocking<T>::MR : Blocking<T>::NR;
  const int64_t items = s.groups * g.panels_w;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t grp = it / g.panels_w, p = it % g.panels_w;
    T* dst = wp + it * g.panel_w_len;
    if (g.nchw && (p + 1) * R <= g.ocg) {
      // A whole NCHW panel is the transpose of R weight rows: in register
      // blocks, not one scalar per (k, row).  pyconv.prepack of a 256x1024
      // 1x1 weight 0.25 -> 0.08 ms, of a 512x512x3x3 im2col one 1.98 ->
      // 0.36 ms; inside an unpacked ResNet res4 1x1 conv2d 0.12 -> 0.08 ms.
      transpose_copy(w + (grp * g.ocg + p * R) * g.K, g.K, dst, R, R, g.K);
      continue;
    }
    for (int64_t k = 0; k < g.K; ++k)
      for (int64_t r = 0; r < R; ++r) {
        const int64_t o = p * R + r;
        dst[k * R + r] = o < g.ocg ? weight_at(s, g, w, grp, o, k) : T(0);
      }
  }
}

// NCHW: B block = im2col(x[n], group grp) rows k0..k0+kc, columns (pixels)
// p0..p0+nc, as NR-column micro-panels [panel][k][NR].  Panels are filled
// one at a time, k after k, so the writes are sequential (filling k-major
// across panels would write kc*NR*sizeof(T) bytes apart: one L1 set).  A
// panel's pixels are cut into pieces that lie on one output row; for each k
// a piece reads one input row: zeros left of it, a run of the row (a plain
// copy at stride 1), zeros right of it.
template <class T>
void pack_im2col_nchw(const ConvShape& s, const Geometry& g, const T* x, int64_t n, int64_t grp,
                      int64_t k0, int64_t kc, int64_t p0, int64_t nc, T* dst) {
  constexpr int NR = Blocking<T>::NR;
  const int64_t H = s.h, W = s.w, OW = s.ow;
  const T* xg = x + (n * s.c + grp * g.icg) * H * W;
  if (pointwise_flat(s)) {
    // A 1x1 stride-1 layer: pixel p of the panel is element p of every input
    // plane, so each panel row is one contiguous run, copied in vectors (4x
    // faster than the general loop below on 14x14 planes).
    using V = Vec<T>;
    const int64_t plane = H * W;
    for (int64_t jp = 0; jp < nc; jp += NR) {
      T* panel = dst + jp * kc;
      const int cols = static_cast<int>(min64(NR, nc - jp));
      const T* src = xg + k0 * plane + p0 + jp;
      for (int64_t k = 0; k < kc; ++k, src += plane) {
        T* out = panel + k * NR;
        for (int v = 0; v < NR; v += V::N) {
          const int lanes = cols - v;
          V::store(out + v, lanes >= V::N ? V::load(src + v) : lanes > 0 ? V::load_n(src + v, lanes) : V::zero());
        }
      }
    }
    return;
  }
  struct Piece {
    int64_t j, len, ihb, iwb;  // first column in the panel, columns, input row/col at kh=kw=0
  };
  Piece pieces[NR];
  for (int64_t jp = 0; jp < nc; jp += NR) {
    T* panel = dst + jp * kc;
    const int64_t cols = min64(NR, nc - jp);
    int np = 0;
    for (int64_t j = 0; j < cols;) {
      const int64_t p = p0 + jp + j, oh = p / OW, ow = p % OW;
      const int64_t len = min64(cols - j, OW - ow);
      pieces[np++] = Piece{j, len, oh * s.sh - s.pt, ow * s.sw - s.pl};
      j += len;
    }
    int64_t ic = k0 / (s.kh * s.kw), kh = (k0 / s.kw) % s.kh, kw = k0 % s.kw;
    for (int64_t k = 0; k < kc; ++k) {
      const T* plane = xg + ic * H * W;
      T* out = panel + k * NR;
      for (int i = 0; i < np; ++i) {
        const Piece& pc = pieces[i];
        T* o = out + pc.j;
        const int64_t ih = pc.ihb + kh * s.dh, iw0 = pc.iwb + kw * s.dw;
        if (ih < 0 || ih >= H) {
          for (int64_t q = 0; q < pc.len; ++q) o[q] = T(0);
          continue;
        }
        const T* row = plane + ih * W;
        if (s.sw == 1) {
          const int64_t lo = min64(pc.len, max64(0, -iw0)), hi = max64(lo, min64(pc.len, W - iw0));
          for (int64_t q = 0; q < lo; ++q) o[q] = T(0);
          for (int64_t q = lo; q < hi; ++q) o[q] = row[iw0 + q];
          for (int64_t q = hi; q < pc.len; ++q) o[q] = T(0);
        } else {
          for (int64_t q = 0; q < pc.len; ++q) {
            const int64_t iw = iw0 + q * s.sw;
            o[q] = (iw >= 0 && iw < W) ? row[iw] : T(0);
          }
        }
      }
      for (int64_t q = cols; q < NR; ++q) out[q] = T(0);
      if (++kw == s.kw) {
        kw = 0;
        if (++kh == s.kh) {
          kh = 0;
          ++ic;
        }
      }
    }
  }
}

// NCHW 1x1 tails: B block of the tail matrix, whose column v is pixel
// pixels - tail + v % tail of image v / tail, columns v0..v0+nc, rows (input
// channels) k0..k0+kc, as NR-column micro-panels [panel][k][NR].
template <class T>
void pack_tails_nchw(const ConvShape& s, const Geometry& g, const T* x, int64_t grp, int64_t k0, int64_t kc,
                     int64_t v0, int64_t nc, T* dst) {
  constexpr int NR = Blocking<T>::NR;
  const int64_t P = g.pixels, first = P - g.tail;
  for (int64_t jp = 0; jp < nc; jp += NR) {
    T* panel = dst + jp * kc;
    const int64_t cols = min64(NR, nc - jp);
    for (int64_t j = 0; j < cols;) {  // runs of one image
      const int64_t v = v0 + jp + j, img = v / g.tail, q = v % g.tail, len = min64(cols - j, g.tail - q);
      const T* src = x + ((img * s.c + grp * g.icg + k0) * P) + first + q;
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t i = 0; i < len; ++i) panel[k * NR + j + i] = src[k * P + i];
      j += len;
    }
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t j = cols; j < NR; ++j) panel[k * NR + j] = T(0);
  }
}

// NHWC: A block = im2col(x, group grp) rows (pixels of all images) r0..r0+mc,
// columns k0..k0+kc, as MR-row micro-panels [panel][k][MR].
template <class T>
void pack_im2col_nhwc(const ConvShape& s, const Geometry& g, const T* x, int64_t grp, int64_t r0,
                      int64_t mc, int64_t k0, int64_t kc, T* dst) {
  constexpr int MR = Blocking<T>::MR;
  const int64_t H = s.h, W = s.w, C = s.c, IG = g.icg;
  for (int64_t ip = 0; ip < mc; ip += MR) {
    T* panel = dst + ip * kc;
    for (int i = 0; i < MR; ++i) {
      const int64_t row = r0 + ip + i;
      if (ip + i >= mc) {
        for (int64_t k = 0; k < kc; ++k) panel[k * MR + i] = T(0);
        continue;
      }
      const int64_t n = row / g.pixels, p = row % g.pixels;
      const int64_t ihb = (p / s.ow) * s.sh - s.pt, iwb = (p % s.ow) * s.sw - s.pl;
      const T* xn = x + n * H * W * C + grp * IG;
      // Walk k = (kh, kw, ic) incrementally: one bounds check per (kh, kw) run.
      int64_t tap = k0 / IG, ic = k0 % IG;
      int64_t k = 0;
      while (k < kc) {
        const int64_t kh = tap / s.kw, kw = tap % s.kw;
        const int64_t ih = ihb + kh * s.dh, iw = iwb + kw * s.dw;
        const int64_t run = min64(IG - ic, kc - k);
        if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
          const T* src = xn + (ih * W + iw) * C + ic;
          for (int64_t q = 0; q < run; ++q) panel[(k + q) * MR + i] = src[q];
        } else {
          for (int64_t q = 0; q < run; ++q) panel[(k + q) * MR + i] = T(0);
        }
        k += run;
        ic = 0;
        ++tap;
      }
    }
  }
}

// ---- macro loops -------------------------------------------------------------------

// Reductions at most this long make a micro-tile store-bound (see
// conv_gemm_nchw).
constexpr int64_t kShortK = 16;

// Columns [p0, p0 + nc) of image n, group grp of the NCHW GEMM (nc <= g.block),
// into c (row = output channel of the group, rows ldc apart), on the
// calling thread; bp is its packing buffer (g.pack_elems).
// tails: columns p0.. are those of the tail matrix (pack_tails_nchw; n unused).
template <class T>
void gemm_block_nchw(const ConvShape& s, const Geometry& g, const T* x, const T* wg, int64_t n, int64_t grp,
                     int64_t p0, int64_t nc, T* c, int64_t ldc, const Epilogue<T>& e, T* bp, bool tails = false) {
  using Bk = Blocking<T>;
  for (int64_t k0 = 0; k0 < g.K; k0 += Bk::KC) {
    const int64_t kc = min64(Bk::KC, g.K - k0);
    const bool first = k0 == 0, last = k0 + kc == g.K;
    if (tails)
      pack_tails_nchw(s, g, x, grp, k0, kc, p0, nc, bp);
    else
      pack_im2col_nchw(s, g, x, n, grp, k0, kc, p0, nc, bp);
    auto tile = [&](int64_t ir, int64_t jr) {
      const T* apanel = wg + (ir / Bk::MR) * g.panel_w_len + k0 * Bk::MR;
      micro_kernel<T>(kc, apanel, bp + jr * kc, c + ir * ldc + jr, ldc,
                      static_cast<int>(min64(Bk::MR, g.M - ir)), static_cast<int>(min64(Bk::NR, nc - jr)),
                      !first, last, e, ir, 0);
    };
    for (int64_t i0 = 0; i0 < g.M; i0 += Bk::MC) {
      const int64_t mc = min64(Bk::MC, g.M - i0);
      if (kc <= kShortK) {
        // A few FMAs per output: the tiles are stores, so each band of
        // MR output rows is written along its length (MR streams at a
        // time, not all M rows a panel at a time).
        for (int64_t ir = i0; ir < i0 + mc; ir += Bk::MR)
          for (int64_t jr = 0; jr < nc; jr += Bk::NR) tile(ir, jr);
      } else {
        for (int64_t jr = 0; jr < nc; jr += Bk::NR)
          for (int64_t ir = i0; ir < i0 + mc; ir += Bk::MR) tile(ir, jr);
      }
    }
  }
}

// With tails (1x1 layers on small images whose last NR-column panel is
// mostly empty, such as 7x7 = 32 + 17 of 64 lanes): each image's units stop
// at its last whole panel, and the remainders of all images are gathered
// into extra units of full panels (8 images x 17 pixels: 5 panels), computed
// into a per-thread buffer and copied to their images.  8x512x7x7 -> 2048:
// 5.0-5.3 -> 4.3-4.9 ms (2 threads).  Same terms in the same order either
// way.
template <class T>
void conv_gemm_nchw(const ConvShape& s, const Geometry& g, const T* x, const T* wp, const T* bias, T* y,
                    char* pack_base, int nt) {
  const int64_t col_blocks = ceil_div(g.N, g.block), whole = g.N - g.tail;
  const int64_t e_size = static_cast<int64_t>(sizeof(T));
  const int64_t pack_bytes = round_up(g.pack_elems * e_size, kAlign);
  const int64_t pack_stride = pack_bytes + round_up(g.tail_c_elems * e_size, kAlign);
#pragma omp parallel num_threads(nt)
  {
    const int tid = thread_index();
    T* bp = reinterpret_cast<T*>(pack_base + tid * pack_stride);
    T* tc = reinterpret_cast<T*>(pack_base + tid * pack_stride + pack_bytes);
    auto unit = [&](int64_t u) {
      if (u >= g.units) {
        const int64_t t = u - g.units, tb = ceil_div(s.n * g.tail, g.tail_block);
        const int64_t grp = t / tb, v0 = (t % tb) * g.tail_block, nc = min64(g.tail_block, s.n * g.tail - v0);
        const T* wg = wp + grp * g.panels_w * g.panel_w_len;
        const Epilogue<T> e{bias ? bias + grp * g.ocg : nullptr, true, s.act};
        gemm_block_nchw(s, g, x, wg, int64_t(0), grp, v0, nc, tc, g.tail_block, e, bp, true);
        for (int64_t o = 0; o < g.M; ++o)
          for (int64_t v = v0; v < v0 + nc; ++v)
            y[((v / g.tail) * s.oc + grp * g.ocg + o) * g.ldy + whole + v % g.tail] = tc[o * g.tail_block + v - v0];
        return;
      }
      const int64_t cb = u % col_blocks, grp = (u / col_blocks) % s.groups, n = u / (col_blocks * s.groups);
      const int64_t p0 = cb * g.block, nc = min64(g.block, whole - p0);
      if (nc <= 0) return;
      T* c = y + (n * s.oc + grp * g.ocg) * g.ldy + p0;  // row = output channel of the group
      const T* wg = wp + grp * g.panels_w * g.panel_w_len;
      const Epilogue<T> e{bias ? bias + grp * g.ocg : nullptr, true, s.act};
      gemm_block_nchw(s, g, x, wg, n, grp, p0, nc, c, g.ldy, e, bp);
    };
    if (g.tail_units) {
      // Units dealt round-robin: the image units were made even for the
      // team (balanced_block), and the small tail units come last, one
      // more per thread at most (in blocks of the default schedule, 8 image
      // units and a tail unit on 2 threads split 5 + 4: 12% slower).
#pragma omp for schedule(static, 1)
      for (int64_t u = 0; u < g.units + g.tail_units; ++u) unit(u);
    } else {
#pragma omp for schedule(static)
      for (int64_t u = 0; u < g.units; ++u) unit(u);
    }
  }
}

// Rows (output pixels) [r0, r0 + mc) of group grp of the NHWC GEMM (mc <=
// g.block), into c (column = output channel of the group, rows ldc apart),
// on the calling thread; ap is its packing buffer (g.pack_elems).
template <class T>
void gemm_block_nhwc(const ConvShape& s, const Geometry& g, const T* x, const T* wg, int64_t grp, int64_t r0,
                     int64_t mc, T* c, int64_t ldc, const Epilogue<T>& e, T* ap) {
  using Bk = Blocking<T>;
  for (int64_t k0 = 0; k0 < g.K; k0 += Bk::KC) {
    const int64_t kc = min64(Bk::KC, g.K - k0);
    const bool first = k0 == 0, last = k0 + kc == g.K;
    pack_im2col_nhwc(s, g, x, grp, r0, mc, k0, kc, ap);
    for (int64_t jr = 0; jr < g.N; jr += Bk::NR) {
      const T* bpanel = wg + (jr / Bk::NR) * g.panel_w_len + k0 * Bk::NR;
      for (int64_t ir = 0; ir < mc; ir += Bk::MR) {
        micro_kernel<T>(kc, ap + ir * kc, bpanel, c + ir * ldc + jr, ldc,
                        static_cast<int>(min64(Bk::MR, mc - ir)), static_cast<int>(min64(Bk::NR, g.N - jr)),
                        !first, last, e, 0, jr);
      }
    }
  }
}

template <class T>
void conv_gemm_nhwc(const ConvShape& s, const Geometry& g, const T* x, const T* wp, const T* bias, T* y,
                    char* pack_base, int nt) {
  const int64_t row_blocks = ceil_div(g.M, g.block);
  const int64_t pack_stride = round_up(g.pack_elems * static_cast<int64_t>(sizeof(T)), kAlign);
#pragma omp parallel num_threads(nt)
  {
    const int tid = thread_index();
    T* ap = reinterpret_cast<T*>(pack_base + tid * pack_stride);
#pragma omp for schedule(static)
    for (int64_t u = 0; u < g.units; ++u) {
      const int64_t rb = u % row_blocks, grp = u / row_blocks;
      const int64_t r0 = rb * g.block, mc = min64(g.block, g.M - r0);
      T* c = y + r0 * s.oc + grp * g.ocg;  // column = output channel of the group
      const T* wg = wp + grp * g.panels_w * g.panel_w_len;
      const Epilogue<T> e{bias ? bias + grp * g.ocg : nullptr, false, s.act};
      gemm_block_nhwc(s, g, x, wg, grp, r0, mc, c, s.oc, e, ap);
    }
  }
}

// NCHW 1x1 layers with at most kThinK input channels (an RGB image to a
// first feature map, the FCN encoders' 3 -> 32): the GEMM's K is so short
// that its tiles are all stores, and packing B copies the whole input once
// more.  Here pixels are in the lanes, read in place: a unit of kThinPix
// vectors of one image loads its K input vectors once, then each output
// channel is K broadcast weights times them, stored at once (the weight
// read as given, OIHW).  The same FMA chain from zero in k order, bias and
// activation as the GEMM's micro-tile, so the results are bitwise the
// GEMM's.  8x3x80x80 -> 32, 2 threads: 0.107 -> 0.069 ms (median of 3
// alternations; the GEMM's pack and store-bound tiles before).
constexpr int64_t kThinK = 4;
constexpr int kThinPix = 4;

inline bool pointwise_thin(const ConvShape& s) {
  return s.layout == Layout::NCHW && pointwise_flat(s) && s.groups == 1 && s.c <= kThinK;
}

template <class T, int K>
void pointwise_thin_nchw(const ConvShape& s, const T* x, const T* w, const T* bias, T* y, int nt) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int N = V::N, PB = kThinPix;
  const int64_t pixels = s.oh * s.ow, per_image = ceil_div(pixels, N * PB), units = s.n * per_image;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t n = u / per_image, p0 = (u % per_image) * N * PB;
    const T* xn = x + n * K * pixels + p0;
    T* yn = y + n * s.oc * pixels + p0;
    const int64_t lanes = pixels - p0;  // of this unit's PB vectors (the last may be short)
    R xv[K][PB];
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k)
#pragma GCC unroll 8
      for (int v = 0; v < PB; ++v) {
        const int64_t l = lanes - v * N;
        xv[k][v] = l >= N ? V::load(xn + k * pixels + v * N) : l > 0 ? V::load_n(xn + k * pixels + v * N, int(l)) : V::zero();
      }
    for (int64_t oc = 0; oc < s.oc; ++oc) {
      R acc[PB];
#pragma GCC unroll 8
      for (int v = 0; v < PB; ++v) acc[v] = V::zero();
#pragma GCC unroll 8
      for (int k = 0; k < K; ++k) {
        const R wv = V::set1(w[oc * K + k]);
#pragma GCC unroll 8
        for (int v = 0; v < PB; ++v) acc[v] = V::fma(wv, xv[k][v], acc[v]);
      }
      const R bv = bias ? V::set1(bias[oc]) : V::zero();
      T* yo = yn + oc * pixels;
#pragma GCC unroll 8
      for (int v = 0; v < PB; ++v) {
        const R out = activate<T>(bias ? V::add(acc[v], bv) : acc[v], s.act);
        const int64_t l = lanes - v * N;
        if (l >= N)
          V::store(yo + v * N, out);
        else if (l > 0)
          V::store_n(yo + v * N, out, static_cast<int>(l));
      }
    }
  }
}

template <class T>
void conv_gemm(const ConvShape& s, const T* x, const T* w, const T* prepacked, const T* bias, T* y,
               void* workspace, int nt) {
  if (pointwise_thin(s)) {
    switch (s.c) {
      case 1: return pointwise_thin_nchw<T, 1>(s, x, w, bias, y, nt);
      case 2: return pointwise_thin_nchw<T, 2>(s, x, w, bias, y, nt);
      case 3: return pointwise_thin_nchw<T, 3>(s, x, w, bias, y, nt);
      default: return pointwise_thin_nchw<T, 4>(s, x, w, bias, y, nt);
    }
  }
  const Geometry g = make_geometry<T>(s, nt, prepacked != nullptr, true);
  char* ws = static_cast<char*>(workspace);
  const T* wp = prepacked;
  if (!wp) {
    T* own = reinterpret_cast<T*>(ws + g.off_w);
    pack_weights(s, g, w, own, nt);
    wp = own;
  }
  if (g.nchw)
    conv_gemm_nchw(s, g, x, wp, bias, y, ws + g.off_pack, nt);
  else
    conv_gemm_nhwc(s, g, x, wp, bias, y, ws + g.off_pack, nt);
}

template <class T>
void pack_weight_only(const ConvShape& s, const T* w, T* packed, int nt) {
  pack_weights(s, make_geometry<T>(s, 1, true), w, packed, nt);
}

int64_t gemm_workspace_bytes(const ConvShape& s, int elem_bytes, int nt, bool prepacked) {
  return elem_bytes == 4 ? make_geometry<float>(s, nt, prepacked, true).total
                         : make_geometry<double>(s, nt, prepacked, true).total;
}

template <class T>
int64_t packed_bytes(const ConvShape& s) {
  const Geometry g = make_geometry<T>(s, 1, true);
  return s.groups * g.panels_w * g.panel_w_len * static_cast<int64_t>(sizeof(T));
}

int64_t packed_weight_bytes(const ConvShape& s, int elem_bytes) {
  return elem_bytes == 4 ? packed_bytes<float>(s) : packed_bytes<double>(s);
}

// FMA throughput probe: kPeakChains independent accumulator chains (enough
// to cover FMA latency x ports on current cores, and few enough to stay in
// registers with the two operands), `iters` rounds of one FMA per chain;
// returns FLOP per second on one thread.
#if defined(PYCONV_ISA_avx512)
constexpr int kPeakChains = 24;
#else
constexpr int kPeakChains = 12;
#endif

template <class T>
double fma_throughput(int64_t iters) {
  using V = Vec<T>;
  typename V::R acc[kPeakChains];
  for (int i = 0; i < kPeakChains; ++i) acc[i] = V::set1(T(i) * T(1e-3));
  const typename V::R a = V::set1(T(0.999999)), b = V::set1(T(1e-7));
  const auto start = std::chrono::steady_clock::now();
  // Fully unrolled, so the chains live in registers: a rolled inner loop
  // keeps acc[] in memory and measures store forwarding instead (seen on
  // Zen 4: 70 instead of 117 GFLOP/s per thread).
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < kPeakChains; ++i) acc[i] = V::fma(acc[i], a, b);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Keep the result alive so the loop is not optimised away.
  alignas(64) T sink[V::N];
  typename V::R total = acc[0];
  for (int i = 1; i < kPeakChains; ++i) total = V::add(total, acc[i]);
  V::store(sink, total);
  volatile T keep = sink[0];
  (void)keep;
  return 2.0 * V::N * kPeakChains * static_cast<double>(iters) / secs;
}

}  // namespace

// ---- bands (fused separable convolution) -----------------------------------

int64_t pointwise_band_scratch_bytes(const ConvShape& s, int elem_bytes) {
  return gemm_workspace_bytes(s, elem_bytes, 1, true);
}

template <class T>
void pointwise_band(const ConvShape& s, const T* mid, const T* packed, const T* bias, T* y, int64_t ldy,
                    void* scratch) {
  Geometry g = make_geometry<T>(s, 1, true);
  char* ws = static_cast<char*>(scratch);
  if (g.nchw) {
    g.ldy = ldy;
    conv_gemm_nchw(s, g, mid, packed, bias, y, ws + g.off_pack, 1);
  } else {
    conv_gemm_nhwc(s, g, mid, packed, bias, y, ws + g.off_pack, 1);
  }
}

int64_t gemm_pixels_scratch_bytes(const ConvShape& s, int elem_bytes) {
  return gemm_workspace_bytes(s, elem_bytes, 1, true);
}

template <class T>
void gemm_pixels(const ConvShape& s, const T* x, const T* packed, int64_t n, int64_t p0, int64_t np, T* c,
                 int64_t ldc, void* scratch) {
  const Geometry g = make_geometry<T>(s, 1, true);
  T* buf = reinterpret_cast<T*>(static_cast<char*>(scratch) + g.off_pack);
  const bool nchw = g.nchw;
  const Epilogue<T> e{nullptr, nchw, Activation::None};
  for (int64_t q = 0; q < np; q += g.block) {
    const int64_t m = min64(g.block, np - q);
    if (nchw)
      gemm_block_nchw(s, g, x, packed, n, int64_t(0), p0 + q, m, c + q, ldc, e, buf);
    else
      gemm_block_nhwc(s, g, x, packed, int64_t(0), n * g.pixels + p0 + q, m, c + q * ldc, ldc, e, buf);
  }
}

template void gemm_pixels<float>(const ConvShape&, const float*, const float*, int64_t, int64_t, int64_t, float*,
                                 int64_t, void*);
template void gemm_pixels<double>(const ConvShape&, const double*, const double*, int64_t, int64_t, int64_t,
                                  double*, int64_t, void*);

template void pointwise_band<float>(const ConvShape&, const float*, const float*, const float*, float*, int64_t,
                                    void*);
template void pointwise_band<double>(const ConvShape&, const double*, const double*, const double*, double*,
                                     int64_t, void*);

double peak_flops(int elem_bytes, int64_t iters) {
  return elem_bytes == 4 ? fma_throughput<float>(iters) : fma_throughput<double>(iters);
}

const AlgoKernels kGemm = {
    &gemm_workspace_bytes, &packed_weight_bytes, &pack_weight_only<float>, &pack_weight_only<double>,
    &conv_gemm<float>,     &conv_gemm<double>,
};

}  // namespace PYCONV_ISA_NS
}  // namespace pyconv
