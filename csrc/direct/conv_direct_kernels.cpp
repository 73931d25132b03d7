// Direct convolution kernels, compiled once per ISA (see CMakeLists.txt).
//
// Design.  Internally the kernel works in NHWC with the input zero-padded
// into a workspace copy, so the inner loops have no bounds checks.  It
// vectorises over output channels: for each output pixel the weights of
// BW = NB*V consecutive output channels of one group form NB SIMD vectors,
// packed as [group][oc block][kh][kw][ic][BW], and every input value is
// broadcast once and multiplied into all of them.  A register tile of TW
// output pixels x NB vectors reuses each weight load TW times and each
// broadcast NB times (AVX2: 6x2 = 12 of 16 ymm; AVX-512: 12x2 = 24 of 32 zmm,
// or 6x4 for groups of >= 64 output channels on wide rows).
// Vectorising over channels (rather than output width) serves every stride
// and dilation with contiguous loads and needs no gathers.
//
// NCHW output is written straight from the register tile: the tile is
// spilled to a small stack buffer and each channel's TW pixels are copied to
// their row, so no NHWC scratch and no second pass over the output exist.
//
// Stride-1 layers with fewer output channels than a vector has lanes
// (LeNet's 6, input gradients to a few channels) put pixels in the lanes
// instead, over zero-padded NCHW planes (compute_frame, "frame" tiles).
//
// Depthwise layers (one input and one output channel per group) would use
// one lane in V that way, so they get their own loop, vectorised across
// channels: out[c] += x[c] * w[c] with plain vector loads of both.
//
// Determinism: each output element is computed by one thread, always in the
// order kh, kw, ic, so results do not depend on the thread count.
#include <cstdint>
#include <utility>

#include "core/dispatch.hpp"
#include "core/problem.hpp"
#include "simd/kernel_util.hpp"
#include "simd/vec.hpp"

namespace pyconv {
namespace PYCONV_ISA_NS {
namespace {

#if defined(PYCONV_ISA_avx512)
constexpr int kTileW = 12;  // 12 px x 2 zmm accumulators = 24 of 32 registers
// Pairs of packed blocks (4 vectors: 6 px x 4 zmm = 24 registers) per tile
// when a group has that many output channels and the rows are wide: each
// broadcast input value then feeds 4 FMAs instead of 2, and a tile reads
// its input once for 64 channels instead of twice for 2 x 32.  Measured on
// 3x3 layers (2 threads): 64 -> 64 on 224x224 +12%, 128 -> 256 on 56x56
// +4%; rows of 28 or 14 pixels even, 7-pixel rows -15% (one tile of 7
// becomes 4 + 3), so only rows of at least kWideMinRow pixels, and not 1x1
// kernels (runs of pixels, mostly served by the GEMM).  The packed weight
// keeps its 2-vector blocks (a prepacked weight cannot know the rows it
// will meet): a pair tile reads two adjacent blocks.
constexpr int kWideNB = 4;
constexpr int kTileW4 = 6;
constexpr int64_t kWideMinRow = 32;
#elif defined(PYCONV_ISA_avx2)
constexpr int kTileW = 6;   // 6 px x 2 ymm accumulators = 12 of 16 registers
#else
constexpr int kTileW = 4;
#endif

// Pixel-lane ("frame") tiles for layers with few output channels: OCB
// channels x PV vectors of pixels, at most kFrameAcc accumulators.
#if defined(PYCONV_ISA_avx512)
constexpr int kFrameAcc = 24, kFrameMaxOCB = 8, kFrameMaxPV = 6;
#elif defined(PYCONV_ISA_avx2)
constexpr int kFrameAcc = 12, kFrameMaxOCB = 6, kFrameMaxPV = 4;
#else
constexpr int kFrameAcc = 8, kFrameMaxOCB = 4, kFrameMaxPV = 4;
#endif
constexpr int frame_pv(int ocb) { return kFrameAcc / ocb < kFrameMaxPV ? kFrameAcc / ocb : kFrameMaxPV; }


// Where everything lives in the workspace, derived from the shape alone so
// that workspace_bytes() and the kernel agree.
struct Plan {
  int64_t lanes, nb, bw, ob;  // SIMD lanes, vectors per block, block width, blocks per group
  int64_t hp, wp;             // padded input height, width
  bool depthwise;             // one input and one output channel per group
  bool frame;                 // pixel-lane tiles over zero-padded NCHW planes (see compute_frame)
  bool pad_input;             // the input is copied (layout change or padding)
  int64_t off_x, off_w, off_b, total;  // byte offsets into the workspace
  int64_t w_bytes;                      // the packed weight
};

// Elements past the last padded plane that a frame tile may read: its
// vectors run up to kFrameMaxPV * lanes - 1 past the last output pixel, and
// a tap reaches (kw - 1) * dw further (those lanes are never stored).
inline int64_t frame_slack(const ConvShape& s, const Plan& p) {
  return kFrameMaxPV * p.lanes + (s.kw - 1) * s.dw;
}

template <class T>
Plan make_plan(const ConvShape& s, bool prepacked) {
  Plan p{};
  p.lanes = Vec<T>::N;
  p.hp = s.h + s.pt + s.pb;
  p.wp = s.w + s.pl + s.pr;
  p.depthwise = icg(s) == 1 && ocg(s) == 1;
  const bool padded = s.pt || s.pb || s.pl || s.pr;
  p.pad_input = padded || s.layout == Layout::NCHW;
  int64_t w_elems, b_elems;
  if (p.depthwise) {
    p.nb = 1;
    p.bw = p.lanes;
    p.ob = 1;
    w_elems = s.kh * s.kw * round_up(s.c, p.lanes);
    b_elems = round_up(s.c, p.lanes);
  } else {
    p.nb = ocg(s) > p.lanes ? 2 : 1;
    p.bw = p.nb * p.lanes;
    p.ob = ceil_div(ocg(s), p.bw);
    w_elems = s.groups * p.ob * s.kh * s.kw * icg(s) * p.bw;
    b_elems = s.groups * p.ob * p.bw;
    // A group narrower than one vector fills ocg/lanes of each channel
    // vector; pixel lanes fill ow/wp (the padded row's width) of theirs, and
    // take them when that is at least 4/3 as much (they copy their output
    // through a stack row: 12 channels on 7x7 at 78% vs 75% lost 25%).
    // Stride 1 only (consecutive output pixels read consecutive inputs).
    // Measured (AVX-512, 2 threads): 64 -> 3 on 112x112 2.7x, 4 -> 4 5x5
    // on 32x32 3x, 16 -> 8 3x3 on 32x32 1.6x, LeNet's 16 -> 6 5x5 input
    // gradient 1.7x.  Not NHWC 1x1 layers: their channel tiles read the
    // input in place as one run of pixels, where planes would cost a
    // transpose of it (8x80x80x32 -> 3: no faster).
    p.frame = s.groups == 1 && s.sh == 1 && s.sw == 1 && s.oc < p.lanes &&
              4 * s.oc * p.wp < 3 * p.lanes * s.ow && (s.layout == Layout::NCHW || s.kh * s.kw > 1);
  }
  const int64_t e = sizeof(T);
  int64_t off = 0;
  p.off_x = off;
  if (p.frame)
    off += round_up((s.n * s.c * p.hp * p.wp + frame_slack(s, p)) * e, kAlign);
  else if (p.pad_input)
    off += round_up(s.n * p.hp * p.wp * s.c * e, kAlign);
  p.off_w = off;
  p.w_bytes = w_elems * e;
  if (!prepacked) off += round_up(w_elems * e, kAlign);
  p.off_b = off;
  off += round_up(b_elems * e, kAlign);
  p.total = off;
  return p;
}

// ---- layout conversion -----------------------------------------------------

// Copies the input into the zero-padded NHWC buffer xp (N, hp, wp, C).
template <class T>
void pack_input(const ConvShape& s, const Plan& p, const T* x, T* xp, int nt) {
  const int64_t C = s.c, W = s.w, H = s.h, row = p.wp * C;
  const int64_t rows = s.n * p.hp;
  const bool nchw = s.layout == Layout::NCHW;
  // Padding cells (and, for NHWC, the copy of each row).
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = r / p.hp, h = r % p.hp - s.pt;
    T* dst = xp + r * row;
    if (h < 0 || h >= H) {
      for (int64_t i = 0; i < row; ++i) dst[i] = T(0);
      continue;
    }
    for (int64_t i = 0; i < s.pl * C; ++i) dst[i] = T(0);
    for (int64_t i = (s.pl + W) * C; i < row; ++i) dst[i] = T(0);
    if (!nchw) {
      const T* src = x + (n * H + h) * W * C;
      T* d = dst + s.pl * C;
      for (int64_t i = 0; i < W * C; ++i) d[i] = src[i];
    }
  }
  if (!nchw) return;
  // NCHW: 16 channel planes at a time, row by row.  The reads are 16
  // sequential streams the prefetcher follows, and each pixel gets a whole
  // 64-byte line of channels.  (Row by row across all C planes instead, a
  // row of the output touched C planes at once: every load missed.)
  constexpr int64_t CB = 16;
  const int64_t blocks = ceil_div(C, CB);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t it = 0; it < s.n * blocks; ++it) {
    const int64_t n = it / blocks, c0 = (it % blocks) * CB;
    const T* src = x + (n * C + c0) * H * W;
    for (int64_t h = 0; h < H; ++h)
      transpose_copy(src + h * W, H * W, xp + ((n * p.hp + h + s.pt) * p.wp + s.pl) * C + c0, C,
                     min64(CB, C - c0), W);
  }
}

// Weight (OIHW or HWIO) -> [g][ob][kh][kw][ic][bw], zero-filled past ocg.
// OIHW: a few input channels at a time, the block's BW filters' runs of
// (ic, kh, kw) are transposed (register blocks) into a stack tile of
// rows of BW, then each row goes to its (kh, kw, ic) place (element by
// element, each tap row of the block re-read the block's filters from L2:
// 512x512x3x3 1.4 -> 0.5 ms).  HWIO rows already hold consecutive output
// channels.
template <class T>
void pack_weights(const ConvShape& s, const Plan& p, const T* w, T* wp, int nt) {
  const int64_t IG = icg(s), OG = ocg(s), KH = s.kh, KW = s.kw, BW = p.bw;
  const int64_t items = s.groups * p.ob;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t g = it / p.ob, ob = it % p.ob;
    T* blk = wp + it * KH * KW * IG * BW;
    if (s.layout == Layout::NCHW) {
      constexpr int64_t kTileCols = 256;  // (ic, tap) columns per stack tile
      const int64_t taps = KH * KW, valid = min64(BW, OG - ob * BW), fs = IG * taps;
      const T* filters = w + (g * OG + ob * BW) * fs;
      if (taps > kTileCols) {
        for (int64_t ic = 0; ic < IG; ++ic)
          for (int64_t t = 0; t < taps; ++t) {
            T* dst = blk + (t * IG + ic) * BW;
            for (int64_t j = 0; j < BW; ++j) dst[j] = j < valid ? filters[j * fs + ic * taps + t] : T(0);
          }
        continue;
      }
      alignas(64) T tile[kTileCols * 2 * 64 / sizeof(T)];  // kTileCols x BW (BW <= 2 vectors)
      const int64_t chunk = kTileCols / taps;
      for (int64_t ic0 = 0; ic0 < IG; ic0 += chunk) {
        const int64_t ics = min64(chunk, IG - ic0), cols = ics * taps;
        transpose_copy(filters + ic0 * taps, fs, tile, BW, valid, cols);
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t ic = ic0 + c / taps, t = c % taps;
          T* dst = blk + (t * IG + ic) * BW;
          for (int64_t j = 0; j < valid; ++j) dst[j] = tile[c * BW + j];
          for (int64_t j = valid; j < BW; ++j) dst[j] = T(0);
        }
      }
      continue;
    }
    for (int64_t kh = 0; kh < KH; ++kh)
      for (int64_t kw = 0; kw < KW; ++kw)
        for (int64_t ic = 0; ic < IG; ++ic) {
          T* dst = blk + ((kh * KW + kw) * IG + ic) * BW;
          for (int64_t j = 0; j < BW; ++j) {
            const int64_t o = ob * BW + j;
            T v = T(0);
            if (o < OG) v = w[((kh * KW + kw) * IG + ic) * s.oc + g * OG + o];
            dst[j] = v;
          }
        }
  }
}

// Bias -> [g][ob][bw], zero-filled (and all zeros without a bias).
template <class T>
void pack_bias(const ConvShape& s, const Plan& p, const T* bias, T* bp) {
  const int64_t OG = ocg(s), BW = p.bw;
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t j = 0; j < p.ob * BW; ++j) bp[g * p.ob * BW + j] = (bias && j < OG) ? bias[g * OG + j] : T(0);
}

// Depthwise weight -> [kh][kw][C rounded up to lanes].
template <class T>
void pack_weights_dw(const ConvShape& s, const Plan& p, const T* w, T* wp) {
  const int64_t C = s.c, CP = round_up(C, p.lanes), KH = s.kh, KW = s.kw;
  for (int64_t kh = 0; kh < KH; ++kh)
    for (int64_t kw = 0; kw < KW; ++kw)
      for (int64_t c = 0; c < CP; ++c) {
        T v = T(0);
        if (c < C)
          v = s.layout == Layout::NCHW ? w[(c * KH + kh) * KW + kw] : w[(kh * KW + kw) * C + c];
        wp[(kh * KW + kw) * CP + c] = v;
      }
}

// Depthwise bias -> [C rounded up to lanes].
template <class T>
void pack_bias_dw(const ConvShape& s, const Plan& p, const T* bias, T* bp) {
  const int64_t CP = round_up(s.c, p.lanes);
  for (int64_t c = 0; c < CP; ++c) bp[c] = (bias && c < s.c) ? bias[c] : T(0);
}

template <class T>
void pack_weight_any(const ConvShape& s, const Plan& p, const T* w, T* wp, int nt) {
  if (p.depthwise)
    pack_weights_dw(s, p, w, wp);
  else
    pack_weights(s, p, w, wp, nt);
}

// ---- micro-kernels ---------------------------------------------------------

// Strides of the padded input and of the output, in elements.
struct Steps {
  int64_t px;    // next output pixel along the row: sw * C
  int64_t kh;    // next kernel row: dh * wp * C
  int64_t kw;    // next kernel column: dw * C
  int64_t ypx;   // next output pixel: OC (NHWC) or 1 (NCHW)
  int64_t yc;    // next output channel: 1 (NHWC) or OH*OW (NCHW)
  int64_t ig;    // input channels per group (a division per tile cost ~25% of 1x1 layers)
  // Loop bounds of a tile's reduction.  With one group and no column
  // dilation a kernel row's taps (kw, ic) are one contiguous run in both the
  // padded input and the packed weight, so they are one loop of KW * C
  // (a 7x7 layer on 3 channels: 21 iterations instead of 7 loops of 3).
  // Same order of terms either way.
  int64_t kw_loop, ic_loop;
};

// Stores TW pixels x one vector of channels.  NHWC: one vector store per
// pixel.  NCHW: through a stack buffer, TW contiguous values per channel.
template <class T, int TW>
inline void store_tile(const Steps& st, T* y, typename Vec<T>::R (&r)[TW], int64_t lanes) {
  using V = Vec<T>;
  if (st.yc == 1) {
    for (int t = 0; t < TW; ++t) {
      if (lanes == V::N)
        V::store(y + t * st.ypx, r[t]);
      else
        V::store_n(y + t * st.ypx, r[t], static_cast<int>(lanes));
    }
    return;
  }
  alignas(64) T buf[TW][V::N];
  for (int t = 0; t < TW; ++t) V::store(buf[t], r[t]);
  for (int64_t l = 0; l < lanes; ++l)
    for (int t = 0; t < TW; ++t) y[l * st.yc + t] = buf[t][l];
}

// TW output pixels x (NB * V) output channels of one group.  Weights in
// packed blocks of PB = min(NB, 2) vectors; NB = 4 reads two adjacent
// blocks, `pair` elements apart.
template <class T, int TW, int NB>
void tile_general(const ConvShape& s, const Steps& st, const T* x, const T* w, const T* b, T* y,
                  int64_t valid, int64_t pair) {
  using V = Vec<T>;
  constexpr int PB = NB > 2 ? 2 : NB;
  constexpr int BW = PB * V::N;
  const int64_t IG = st.ig;
  typename V::R acc[TW][NB];
  for (int t = 0; t < TW; ++t)
    for (int j = 0; j < NB; ++j) acc[t][j] = V::zero();
  for (int64_t kh = 0; kh < s.kh; ++kh)
    for (int64_t kw = 0; kw < st.kw_loop; ++kw) {
      const T* xk = x + kh * st.kh + kw * st.kw;
      const T* wk = w + (kh * s.kw + kw) * IG * BW;
      for (int64_t ic = 0; ic < st.ic_loop; ++ic) {
        typename V::R wv[NB];
        for (int j = 0; j < NB; ++j) wv[j] = V::load(wk + (j / PB) * pair + ic * BW + (j % PB) * V::N);
        for (int t = 0; t < TW; ++t) {
          const typename V::R xv = V::set1(xk[t * st.px + ic]);
          for (int j = 0; j < NB; ++j) acc[t][j] = V::fma(xv, wv[j], acc[t][j]);
        }
      }
    }
  for (int j = 0; j < NB; ++j) {
    const int64_t lanes = min64(V::N, valid - j * V::N);
    if (lanes <= 0) break;
    const typename V::R bv = V::load(b + j * V::N);
    typename V::R r[TW];
    for (int t = 0; t < TW; ++t)
      r[t] = activate<T>(s.has_bias ? V::add(acc[t][j], bv) : acc[t][j], s.act);
    store_tile<T, TW>(st, y + j * V::N * st.yc, r, lanes);
  }
}

// TW output pixels x V channels of a depthwise layer (channel c reads c).
template <class T, int TW>
void tile_depthwise(const ConvShape& s, const Steps& st, int64_t cp, const T* x, const T* w,
                    const T* b, T* y, int lanes) {
  using V = Vec<T>;
  const bool full = lanes == V::N;
  typename V::R acc[TW];
  for (int t = 0; t < TW; ++t) acc[t] = V::zero();
  for (int64_t kh = 0; kh < s.kh; ++kh)
    for (int64_t kw = 0; kw < s.kw; ++kw) {
      const T* xk = x + kh * st.kh + kw * st.kw;
      const typename V::R wv = V::load(w + (kh * s.kw + kw) * cp);
      for (int t = 0; t < TW; ++t) {
        const typename V::R xv = full ? V::load(xk + t * st.px) : V::load_n(xk + t * st.px, lanes);
        acc[t] = V::fma(xv, wv, acc[t]);
      }
    }
  const typename V::R bv = V::load(b);
  for (int t = 0; t < TW; ++t) acc[t] = activate<T>(s.has_bias ? V::add(acc[t], bv) : acc[t], s.act);
  store_tile<T, TW>(st, y, acc, lanes);
}

inline Steps make_steps(const ConvShape& s, const Plan& p) {
  const bool nchw = s.layout == Layout::NCHW;
  const bool merge = s.groups == 1 && s.dw == 1;
  return Steps{s.sw * s.c, s.dh * p.wp * s.c, s.dw * s.c, nchw ? 1 : s.oc, nchw ? s.oh * s.ow : 1, icg(s),
               merge ? 1 : s.kw, merge ? s.kw * icg(s) : icg(s)};
}

// Offset of output pixel (n, oh, ow=0), channel oc, in the caller's layout.
inline int64_t out_offset(const ConvShape& s, int64_t n, int64_t oh, int64_t oc) {
  if (s.layout == Layout::NCHW) return ((n * s.oc + oc) * s.oh + oh) * s.ow;
  return (n * s.oh + oh) * s.ow * s.oc + oc;
}

template <class T>
using GeneralTile = void (*)(const ConvShape&, const Steps&, const T*, const T*, const T*, T*, int64_t, int64_t);
template <class T>
using DepthwiseTile = void (*)(const ConvShape&, const Steps&, int64_t, const T*, const T*, const T*, T*, int);

// Tables indexed by tile width 1..kTileW (1..kTileW4 for the pair tiles;
// index 0 unused), so a row of any
// width is covered by full tiles plus one narrower tile.
template <class T, int NB, int... W>
constexpr auto general_tiles(std::integer_sequence<int, W...>) {
  struct Table { GeneralTile<T> fn[sizeof...(W) + 1]; };
  return Table{{nullptr, &tile_general<T, W + 1, NB>...}};
}
template <class T, int... W>
constexpr auto depthwise_tiles(std::integer_sequence<int, W...>) {
  struct Table { DepthwiseTile<T> fn[sizeof...(W) + 1]; };
  return Table{{nullptr, &tile_depthwise<T, W + 1>...}};
}

template <class T>
void compute_general(const ConvShape& s, const Plan& p, const T* xp, const T* wp, const T* bp, T* y,
                     int nt) {
  static constexpr auto tiles1 = general_tiles<T, 1>(std::make_integer_sequence<int, kTileW>{});
  static constexpr auto tiles2 = general_tiles<T, 2>(std::make_integer_sequence<int, kTileW>{});
  const auto& tiles = p.nb == 2 ? tiles2.fn : tiles1.fn;
  const int64_t C = s.c, IG = icg(s), OG = ocg(s), OB = p.ob, BW = p.bw;
  const Steps st = make_steps(s, p);
  const int64_t wblock = s.kh * s.kw * IG * BW;
#if defined(PYCONV_ISA_avx512)
  static constexpr auto tiles4 = general_tiles<T, kWideNB>(std::make_integer_sequence<int, kTileW4>{});
  // Work blocks of two packed blocks (the last may be a single one).
  const bool pairs = p.nb == 2 && OB >= 2 && s.ow >= kWideMinRow && s.kh * s.kw > 1;
#else
  const bool pairs = false;
#endif
  const int64_t per = pairs ? 2 : 1, WB = ceil_div(OB, per);  // packed blocks per work block, work blocks
  // A 1x1 stride-1 layer without padding maps output pixel q to input pixel
  // q, so an image is one long row of pixels: it is cut into runs of whole
  // tiles (one partial tile per image instead of one per row: a 14-pixel
  // row would be 6 + 6 + 2).
  const bool flat = s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && p.hp == s.h && p.wp == s.w;
  const int64_t pixels = flat ? s.oh * s.ow : s.ow;  // per unit of work
  const int64_t run = flat ? min64(pixels, 8 * kTileW) : s.ow;
  const int64_t runs = flat ? ceil_div(pixels, run) : s.oh;
  // Output rows (runs) of one block of output channels are the unit of
  // work.  When a group's weight blocks fit in L2 together, the blocks vary
  // fastest: each input row is then fetched from L3 once for all of them,
  // and a thread streams only its share of the rows (vgg16_c1_2, a 13 MiB
  // input, on one thread: 89 -> 93 GFLOP/s).  Otherwise the rows vary fastest, so that consecutive
  // units share one weight block and overlapping input rows.
  const bool blocks_inner = OB * wblock * static_cast<int64_t>(sizeof(T)) <= (int64_t(256) << 10);
  const int64_t items = s.n * s.groups * WB * runs;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t r = blocks_inner ? (it / WB) % runs : it % runs;
    const int64_t ob = (blocks_inner ? it % WB : (it / runs) % WB) * per;
    const int64_t g = (it / (WB * runs)) % s.groups, n = it / (WB * runs * s.groups);
    const int64_t oh = flat ? 0 : r, q0 = flat ? r * run : 0, q1 = flat ? min64(q0 + run, pixels) : s.ow;
    const T* xrow = xp + ((n * p.hp + oh * s.sh) * p.wp) * C + g * IG;
    const T* wblk = wp + (g * OB + ob) * wblock;
    const T* bblk = bp + (g * OB + ob) * BW;
    T* yrow = y + out_offset(s, n, oh, g * OG + ob * BW);
    const bool pair = pairs && ob + 1 < OB;
    const int64_t valid = min64(pair ? 2 * BW : BW, OG - ob * BW);
#if defined(PYCONV_ISA_avx512)
    const GeneralTile<T>* fns = pair ? tiles4.fn : tiles;
    const int64_t tile_w = pair ? kTileW4 : kTileW;
#else
    const GeneralTile<T>* fns = tiles;
    const int64_t tile_w = kTileW;
#endif
    // The fewest tiles that cover the run, of balanced widths: a tile
    // narrower than 4 pixels has too few accumulator chains to hide the FMA
    // latency (a 7-pixel row as 6 + 1 spent a third of its time in the 1).
    const int64_t len = q1 - q0, ntiles = ceil_div(len, tile_w);
    const int64_t base = len / ntiles, wider = len % ntiles;
    for (int64_t i = 0, q = q0; i < ntiles; ++i) {
      const int64_t tw = base + (i < wider ? 1 : 0);
      fns[tw](s, st, xrow + q * st.px, wblk, bblk, yrow + q * st.ypx, valid, wblock);
      q += tw;
    }
  }
}

template <class T>
void compute_depthwise(const ConvShape& s, const Plan& p, const T* xp, const T* wp, const T* bp, T* y,
                       int nt) {
  static constexpr auto tiles = depthwise_tiles<T>(std::make_integer_sequence<int, kTileW>{});
  const int64_t C = s.c, L = p.lanes, CP = round_up(C, L);
  const Steps st = make_steps(s, p);
  const int64_t items = s.n * s.oh;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t n = it / s.oh, oh = it % s.oh;
    const T* xrow = xp + ((n * p.hp + oh * s.sh) * p.wp) * C;
    T* yrow = y + out_offset(s, n, oh, 0);
    // Channels innermost: the TW x taps input streams of a tile then advance
    // through consecutive cache lines (with channels outermost, a tile's
    // loads sit C*sizeof(T) bytes apart, which for C = 1024 floats all map
    // to one L1 set).
    for (int64_t ow = 0; ow < s.ow; ow += kTileW) {
      const int64_t tw = min64(kTileW, s.ow - ow);
      for (int64_t c = 0; c < C; c += L) {
        const int lanes = static_cast<int>(min64(L, C - c));
        tiles.fn[tw](s, st, CP, xrow + ow * st.px + c, wp + c, bp + c, yrow + ow * st.ypx + c * st.yc,
                     lanes);
      }
    }
  }
}

// ---- pixel-lane tiles (few output channels, stride 1) ----------------------
//
// A layer with fewer output channels than a vector has (LeNet's 6, the
// input gradient of a layer with few input channels) would fill a fraction
// of each channel vector.  Its input is zero-padded instead into NCHW planes
// of hp x wp (NHWC input transposed on the way, in register blocks), and
// output pixel (oh, ow) is "frame" position q = oh * wp + ow:
// tap (kh, kw) of position q reads plane position q + kh * dh * wp + kw * dw,
// so consecutive positions read consecutive inputs and a vector of positions
// is one unaligned load per tap.  Positions with ow >= OW (the frame's
// right margin) are computed and dropped.  A tile is OCB channels x PV
// vectors of positions: each tap loads PV vectors and broadcasts OCB weights.
// The weights are the channel-lane packed blocks (so prepacked weights serve
// both kinds of tile), and the terms are added in the same order (kh, kw,
// ic), so both give bitwise the same result.  Results go to NCHW or NHWC
// output from a stack row per channel.

// OCB channels x PV vectors of frame positions q0.. of one image.  x: the
// image's first plane at q0; w: packed weights at the tile's first channel;
// y: the image's output at the tile's first channel.
template <class T, int OCB, int PV>
void tile_frame(const ConvShape& s, const Plan& p, const T* x, const T* w, const T* b, T* y, int64_t q0) {
  using V = Vec<T>;
  constexpr int L = V::N;
  const int64_t IG = s.c, BW = p.bw, plane = p.hp * p.wp;
  typename V::R acc[OCB][PV];
#pragma GCC unroll 8
  for (int j = 0; j < OCB; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < PV; ++v) acc[j][v] = V::zero();
  for (int64_t kh = 0; kh < s.kh; ++kh)
    for (int64_t kw = 0; kw < s.kw; ++kw) {
      const T* xk = x + kh * s.dh * p.wp + kw * s.dw;
      const T* wk = w + (kh * s.kw + kw) * IG * BW;
      for (int64_t ic = 0; ic < IG; ++ic) {
        typename V::R xv[PV];
#pragma GCC unroll 8
        for (int v = 0; v < PV; ++v) xv[v] = V::load(xk + ic * plane + v * L);
#pragma GCC unroll 8
        for (int j = 0; j < OCB; ++j) {
          const typename V::R wv = V::set1(wk[ic * BW + j]);
#pragma GCC unroll 8
          for (int v = 0; v < PV; ++v) acc[j][v] = V::fma(xv[v], wv, acc[j][v]);
        }
      }
    }
  // Each channel's positions through a stack row, then its valid runs
  // (NCHW: a channel's run is contiguous; NHWC: pixels oc apart).
  const int64_t q1 = min64(q0 + PV * L, s.oh * p.wp), OHW = s.oh * s.ow;
  const bool nchw = s.layout == Layout::NCHW;
  const int64_t ypix = nchw ? 1 : s.oc, ych = nchw ? OHW : 1;
  alignas(64) T row[PV * L];
#pragma GCC unroll 8
  for (int j = 0; j < OCB; ++j) {
    const typename V::R bv = V::set1(b[j]);
#pragma GCC unroll 8
    for (int v = 0; v < PV; ++v)
      V::store(row + v * L, activate<T>(s.has_bias ? V::add(acc[j][v], bv) : acc[j][v], s.act));
    T* yc = y + j * ych;
    for (int64_t q = q0; q < q1;) {
      const int64_t oh = q / p.wp, ow = q - oh * p.wp, run = min64(q1 - q, p.wp - ow);
      T* dst = yc + (oh * s.ow + ow) * ypix;
      for (int64_t i = 0, e = min64(run, s.ow - ow); i < e; ++i) dst[i * ypix] = row[q - q0 + i];
      q += run;
    }
  }
}

template <class T>
using FrameTile = void (*)(const ConvShape&, const Plan&, const T*, const T*, const T*, T*, int64_t);

// Table [OCB][PV] (index 0 unused) of the tiles with PV <= frame_pv(OCB).
template <class T>
struct FrameRow { FrameTile<T> fn[kFrameMaxPV + 1]; };
template <class T, int OCB, int... P>
constexpr FrameRow<T> frame_row(std::integer_sequence<int, P...>) {
  return FrameRow<T>{{nullptr, (P + 1 <= frame_pv(OCB) ? &tile_frame<T, OCB, (P + 1 <= frame_pv(OCB) ? P + 1 : 1)>
                                                      : nullptr)...}};
}
template <class T, int... O>
constexpr auto frame_tiles(std::integer_sequence<int, O...>) {
  struct Table { FrameRow<T> row[sizeof...(O) + 1]; };
  return Table{{FrameRow<T>{}, frame_row<T, O + 1>(std::make_integer_sequence<int, kFrameMaxPV>{})...}};
}

template <class T>
void compute_frame(const ConvShape& s, const Plan& p, const T* xp, const T* wp, const T* bp, T* y, int nt) {
  static constexpr auto tiles = frame_tiles<T>(std::make_integer_sequence<int, kFrameMaxOCB>{});
  constexpr int64_t L = Vec<T>::N;
  const int64_t OC = s.oc, nblk = ceil_div(OC, kFrameMaxOCB);  // channel blocks, balanced sizes
  const int64_t vecs = ceil_div(s.oh * p.wp, L);                // vectors of frame positions per image
  const int64_t plane = p.hp * p.wp, OHW = s.oh * s.ow;
  // Tiles per image for each block (the fewest of at most frame_pv vectors,
  // of balanced widths); a unit of work is one tile of one block.
  int64_t ntiles[kFrameMaxOCB], first[kFrameMaxOCB + 1];
  first[0] = 0;
  for (int64_t k = 0; k < nblk; ++k) {
    const int64_t ocb = OC / nblk + (k < OC % nblk ? 1 : 0);
    ntiles[k] = ceil_div(vecs, frame_pv(static_cast<int>(ocb)));
    first[k + 1] = first[k] + ntiles[k];
  }
  const int64_t per_image = first[nblk];
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t it = 0; it < s.n * per_image; ++it) {
    const int64_t n = it / per_image, u = it % per_image;
    int64_t k = 0;
    while (u >= first[k + 1]) ++k;
    const int64_t ocb = OC / nblk + (k < OC % nblk ? 1 : 0);
    const int64_t oc0 = k * (OC / nblk) + min64(k, OC % nblk);
    const int64_t t = u - first[k], base = vecs / ntiles[k], wider = vecs % ntiles[k];
    const int64_t pv = base + (t < wider ? 1 : 0), v0 = t * base + min64(t, wider);
    tiles.row[ocb].fn[pv](s, p, xp + n * s.c * plane + v0 * L, wp + oc0, bp + oc0,
                          y + n * OC * OHW + oc0 * (s.layout == Layout::NCHW ? OHW : 1), v0 * L);
  }
}

template <class T>
void conv_direct(const ConvShape& s, const T* x, const T* w, const T* prepacked, const T* bias, T* y,
                 void* workspace, int nt) {
  const Plan p = make_plan<T>(s, prepacked != nullptr);
  char* ws = static_cast<char*>(workspace);
  T* xp = reinterpret_cast<T*>(ws + p.off_x);
  T* bp = reinterpret_cast<T*>(ws + p.off_b);
  const T* wp = prepacked;
  if (!wp) {
    T* own = reinterpret_cast<T*>(ws + p.off_w);
    pack_weight_any(s, p, w, own, nt);
    wp = own;
  }
  if (p.frame) {
    if (s.layout == Layout::NCHW)
      pad_planes(x, s.n * s.c, s.h, s.w, p.hp, p.wp, s.pt, s.pl, frame_slack(s, p), xp, nt);
    else
      pad_planes_nhwc(x, s.n, s.h, s.w, s.c, p.hp, p.wp, s.pt, s.pl, frame_slack(s, p), xp, nt);
    pack_bias(s, p, bias, bp);
    compute_frame(s, p, xp, wp, bp, y, nt);
    return;
  }
  if (p.pad_input)
    pack_input(s, p, x, xp, nt);
  else
    xp = const_cast<T*>(x);  // NHWC without padding: read the caller's array in place
  if (p.depthwise) {
    pack_bias_dw(s, p, bias, bp);
    compute_depthwise(s, p, xp, wp, bp, y, nt);
  } else {
    pack_bias(s, p, bias, bp);
    compute_general(s, p, xp, wp, bp, y, nt);
  }
}

template <class T>
void pack_direct(const ConvShape& s, const T* w, T* packed, int nt) {
  pack_weight_any(s, make_plan<T>(s, true), w, packed, nt);
}

int64_t direct_workspace_bytes(const ConvShape& s, int elem_bytes, int, bool prepacked) {
  return elem_bytes == 4 ? make_plan<float>(s, prepacked).total : make_plan<double>(s, prepacked).total;
}

int64_t direct_packed_bytes(const ConvShape& s, int elem_bytes) {
  return elem_bytes == 4 ? make_plan<float>(s, true).w_bytes : make_plan<double>(s, true).w_bytes;
}

}  // namespace

const AlgoKernels kDirect = {
    &direct_workspace_bytes, &direct_packed_bytes, &pack_direct<float>, &pack_direct<double>,
    &conv_direct<float>,     &conv_direct<double>,
};

const IsaKernels kKernels = {PYCONV_ISA_NAME,        &kDirect,    &kGemm,
                             &kDepthwise,            &kPool,      &kSeparable,
                             &kGradWeight,           &kDepthwiseGradWeight, &kDepthwiseGradInput, &kCol2imGradInput,
                             &kWeights,              &peak_flops};

}  // namespace PYCONV_ISA_NS
}  // namespace pyconv
