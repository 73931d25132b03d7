// Weight gradient of a convolution on the packed GEMM, compiled once per ISA.
//
//   dW[g] = sum over images n and output pixels p of  dY[n, g, p] x col[n, g, p]
//
// where col is im2col(x): for NCHW, dW[g] (OCg x Kg, the weight's own rows)
// = dY (OCg x pixels) * col^T (pixels x Kg); for NHWC, dW[g] (Kg x OCg,
// the HWIO weight's rows) = col^T^T (Kg x pixels) * dY (pixels x OCg).  The
// reduction runs over every pixel of every image, so pixels of all images
// are taken together, a chunk at a time: the threads first build the
// chunk's im2col (and, for NCHW, a copy of its dY columns, whose image
// boundaries break a constant stride) cooperatively, then split dW into
// tiles and run the micro-kernel over the chunk.  The extra memory is one
// chunk (~kChunkBytes) plus per-thread packing buffers, whatever the batch.
//
// Determinism: each dW element accumulates the chunks in order, and within a
// chunk the KC blocks in order, on one thread; chunk and KC sizes do not
// depend on the thread count, so results are bitwise identical for any
// thread count (threads split dW's rows and columns only).
#include <cstdint>

#include "core/dispatch.hpp"
#include "core/problem.hpp"
#include "gemm/micro_kernel.hpp"
#include "simd/kernel_util.hpp"

namespace pyconv {
namespace PYCONV_ISA_NS {
namespace {

// The im2col chunk: big enough that the C tile's load/store per KC block is
// amortised over many pixels, small enough to stay in L2/L3 while it is used.
constexpr int64_t kChunkBytes = int64_t(4) << 20;

struct GwPlan {
  bool nchw;
  int64_t P, R;          // pixels per image, pixels in all images (the reduction)
  int64_t Kg, OCg, Ktot; // reduction per group (icg*kh*kw), outputs per group, all groups' Kg
  int64_t chunk;         // pixels per chunk
  int64_t M, N;          // the per-group GEMM: NCHW M = OCg, N = Kg; NHWC M = Kg, N = OCg
  int64_t mb, nb;        // thread tile
  int64_t units;
  int64_t col_elems, dy_elems, apack_elems, bpack_elems;
  int64_t off_dy, off_pack, pack_stride, total;
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
  g.Ktot = s.groups * g.Kg;
  const int64_t per_pixel = (g.Ktot + (g.nchw ? s.oc : 0)) * e;
  g.chunk = min64(g.R, max64(Bk::KC, kChunkBytes / per_pixel / Bk::KC * Bk::KC));
  g.M = g.nchw ? g.OCg : g.Kg;
  g.N = g.nchw ? g.Kg : g.OCg;
  g.mb = min64(round_up(g.M, Bk::MR), Bk::MC);
  const int64_t row_blocks = ceil_div(g.M, g.mb);
  g.nb = balanced_block(g.N, Bk::NC, Bk::NR, s.groups * row_blocks, nt);
  g.units = s.groups * row_blocks * ceil_div(g.N, g.nb);
  g.col_elems = g.Ktot * g.chunk;
  g.dy_elems = g.nchw ? s.oc * g.chunk : 0;
  g.apack_elems = g.mb * Bk::KC;
  g.bpack_elems = Bk::KC * Bk::NR;
  g.off_dy = round_up(g.col_elems * e, kAlign);
  g.off_pack = g.off_dy + round_up(g.dy_elems * e, kAlign);
  g.pack_stride = round_up((g.apack_elems + g.bpack_elems) * e, kAlign);
  g.total = g.off_pack + nt * g.pack_stride;
  return g;
}

// ---- the chunk's operands ------------------------------------------------------

// One output-row run of NCHW im2col row k = (ic, kh, kw): `len` pixels from
// output (oh, ow0) of image plane `plane`, into dst.
template <class T>
inline void im2col_run(const ConvShape& s, const T* plane, int64_t kh, int64_t kw, int64_t oh, int64_t ow0,
                       int64_t len, T* dst) {
  const int64_t ih = oh * s.sh - s.pt + kh * s.dh;
  if (ih < 0 || ih >= s.h) {
    for (int64_t q = 0; q < len; ++q) dst[q] = T(0);
    return;
  }
  const T* row = plane + ih * s.w;
  const int64_t iw0 = ow0 * s.sw - s.pl + kw * s.dw;
  if (s.sw == 1) {
    const int64_t lo = min64(len, max64(0, -iw0)), hi = max64(lo, min64(len, s.w - iw0));
    for (int64_t q = 0; q < lo; ++q) dst[q] = T(0);
    for (int64_t q = lo; q < hi; ++q) dst[q] = row[iw0 + q];
    for (int64_t q = hi; q < len; ++q) dst[q] = T(0);
    return;
  }
  for (int64_t q = 0; q < len; ++q) {
    const int64_t iw = iw0 + q * s.sw;
    dst[q] = (iw >= 0 && iw < s.w) ? row[iw] : T(0);
  }
}

// NCHW: col row k (all groups' rows, k = c*kh*kw + ...) over pixels r0..r0+rc.
template <class T>
void build_col_row_nchw(const ConvShape& s, const GwPlan& g, const T* x, int64_t k, int64_t r0, int64_t rc,
                        T* dst) {
  const int64_t taps = s.kh * s.kw;
  const int64_t c = k / taps, kh = (k % taps) / s.kw, kw = k % s.kw;
  for (int64_t j = 0; j < rc;) {
    const int64_t r = r0 + j, n = r / g.P, p = r % g.P, oh = p / s.ow, ow = p % s.ow;
    const int64_t len = min64(rc - j, s.ow - ow);
    im2col_run(s, x + (n * s.c + c) * s.h * s.w, kh, kw, oh, ow, len, dst + j);
    j += len;
  }
}

// NCHW: dY row (output channel) o over pixels r0..r0+rc, runs per image.
template <class T>
void copy_dy_row_nchw(const ConvShape& s, const GwPlan& g, const T* dy, int64_t o, int64_t r0, int64_t rc, T* dst) {
  for (int64_t j = 0; j < rc;) {
    const int64_t r = r0 + j, n = r / g.P, p = r % g.P;
    const int64_t len = min64(rc - j, g.P - p);
    const T* src = dy + (n * s.oc + o) * g.P + p;
    for (int64_t q = 0; q < len; ++q) dst[j + q] = src[q];
    j += len;
  }
}

// NHWC: pixel r's im2col row for every group, group grp's Kg values (kh, kw,
// ic) at col + grp * chunk * Kg + j * Kg.
template <class T>
void build_col_pixel_nhwc(const ConvShape& s, const GwPlan& g, const T* x, int64_t r, int64_t j, T* col) {
  const int64_t n = r / g.P, p = r % g.P, IG = icg(s);
  const int64_t ihb = (p / s.ow) * s.sh - s.pt, iwb = (p % s.ow) * s.sw - s.pl;
  for (int64_t grp = 0; grp < s.groups; ++grp) {
    T* dst = col + (grp * g.chunk + j) * g.Kg;
    for (int64_t kh = 0; kh < s.kh; ++kh)
      for (int64_t kw = 0; kw < s.kw; ++kw, dst += IG) {
        const int64_t ih = ihb + kh * s.dh, iw = iwb + kw * s.dw;
        if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) {
          for (int64_t q = 0; q < IG; ++q) dst[q] = T(0);
          continue;
        }
        const T* src = x + ((n * s.h + ih) * s.w + iw) * s.c + grp * IG;
        for (int64_t q = 0; q < IG; ++q) dst[q] = src[q];
      }
  }
}

// ---- strided packing -----------------------------------------------------------

// A (mc x kc), A(i, k) = a[i*rs + k*cs], into MR-row micro-panels [k][MR]
// (zero rows past mc).  One of the strides is 1; the loops follow it.
template <class T>
void pack_a(int64_t mc, int64_t kc, const T* a, int64_t rs, int64_t cs, T* dst) {
  constexpr int MR = Blocking<T>::MR;
  for (int64_t ip = 0; ip < mc; ip += MR) {
    T* panel = dst + ip * kc;
    const int64_t rows = min64(MR, mc - ip);
    if (cs == 1) {
      for (int64_t i = 0; i < rows; ++i) {
        const T* src = a + (ip + i) * rs;
        for (int64_t k = 0; k < kc; ++k) panel[k * MR + i] = src[k];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t i = 0; i < rows; ++i) panel[k * MR + i] = a[(ip + i) * rs + k * cs];
    }
    for (int64_t i = rows; i < MR; ++i)
      for (int64_t k = 0; k < kc; ++k) panel[k * MR + i] = T(0);
  }
}

// One NR-column micro-panel of B (kc x nr), B(k, j) = b[k*rs + j*cs], as [k][NR].
template <class T>
void pack_b_panel(int64_t kc, int64_t nr, const T* b, int64_t rs, int64_t cs, T* dst) {
  constexpr int NR = Blocking<T>::NR;
  if (cs == 1) {
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = b + k * rs;
      for (int64_t j = 0; j < nr; ++j) dst[k * NR + j] = src[j];
      for (int64_t j = nr; j < NR; ++j) dst[k * NR + j] = T(0);
    }
    return;
  }
  for (int64_t j = 0; j < nr; ++j) {
    const T* src = b + j * cs;
    for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = src[k * rs];
  }
  for (int64_t k = 0; k < kc; ++k)
    for (int64_t j = nr; j < NR; ++j) dst[k * NR + j] = T(0);
}

// C (mc x nc, ldc) (+)= A * B over kc pixels, with A and B given by strides.
template <class T>
void gemm_tile(int64_t mc, int64_t nc, int64_t kc, const T* a, int64_t ars, int64_t acs, const T* b, int64_t brs,
               int64_t bcs, T* c, int64_t ldc, bool accumulate, T* apack, T* bpack) {
  using Bk = Blocking<T>;
  const Epilogue<T> none{nullptr, false, Activation::None};
  pack_a(mc, kc, a, ars, acs, apack);
  for (int64_t jr = 0; jr < nc; jr += Bk::NR) {
    const int nr = static_cast<int>(min64(Bk::NR, nc - jr));
    pack_b_panel(kc, nr, b + jr * bcs, brs, bcs, bpack);
    for (int64_t ir = 0; ir < mc; ir += Bk::MR)
      micro_kernel<T>(kc, apack + ir * kc, bpack, c + ir * ldc + jr, ldc, static_cast<int>(min64(Bk::MR, mc - ir)),
                      nr, accumulate, false, none, 0, 0);
  }
}

// ---- the driver ----------------------------------------------------------------

template <class T>
void grad_weight(const ConvShape& s, const T* x, const T* dy, T* dw, void* workspace, int nt) {
  using Bk = Blocking<T>;
  const GwPlan g = make_plan<T>(s, nt);
  char* ws = static_cast<char*>(workspace);
  T* col = reinterpret_cast<T*>(ws);
  T* dyc = reinterpret_cast<T*>(ws + g.off_dy);
  const int64_t row_blocks = ceil_div(g.M, g.mb), col_blocks = ceil_div(g.N, g.nb);
#pragma omp parallel num_threads(nt)
  {
    T* apack = reinterpret_cast<T*>(ws + g.off_pack + thread_index() * g.pack_stride);
    T* bpack = apack + g.apack_elems;
    for (int64_t r0 = 0; r0 < g.R; r0 += g.chunk) {
      const int64_t rc = min64(g.chunk, g.R - r0);
      if (g.nchw) {
#pragma omp for schedule(static)
        for (int64_t it = 0; it < g.Ktot + s.oc; ++it) {
          if (it < g.Ktot)
            build_col_row_nchw(s, g, x, it, r0, rc, col + it * rc);
          else
            copy_dy_row_nchw(s, g, dy, it - g.Ktot, r0, rc, dyc + (it - g.Ktot) * rc);
        }
      } else {
#pragma omp for schedule(static)
        for (int64_t j = 0; j < rc; ++j) build_col_pixel_nhwc(s, g, x, r0 + j, j, col);
      }
      // (the implicit barrier: the chunk is complete before anyone reads it)
#pragma omp for schedule(static)
      for (int64_t u = 0; u < g.units; ++u) {
        const int64_t jb = u % col_blocks, ib = (u / col_blocks) % row_blocks, grp = u / (col_blocks * row_blocks);
        const int64_t i0 = ib * g.mb, j0 = jb * g.nb;
        const int64_t mc = min64(g.mb, g.M - i0), nc = min64(g.nb, g.N - j0);
        for (int64_t k0 = 0; k0 < rc; k0 += Bk::KC) {
          const int64_t kc = min64(Bk::KC, rc - k0);
          const bool accumulate = r0 + k0 > 0;
          if (g.nchw) {
            // A = dY rows (output channels), B(k, j) = col[(grp*Kg + j) * rc + k].
            const T* a = dyc + (grp * g.OCg + i0) * rc + k0;
            const T* b = col + (grp * g.Kg + j0) * rc + k0;
            T* c = dw + (grp * g.OCg + i0) * g.Kg + j0;
            gemm_tile(mc, nc, kc, a, rc, int64_t(1), b, int64_t(1), rc, c, g.Kg, accumulate, apack, bpack);
          } else {
            // A(i, k) = col_g[k * Kg + i], B = dY rows (pixels), group's columns.
            const T* a = col + (grp * g.chunk + k0) * g.Kg + i0;
            const T* b = dy + (r0 + k0) * s.oc + grp * g.OCg + j0;
            T* c = dw + i0 * s.oc + grp * g.OCg + j0;
            gemm_tile(mc, nc, kc, a, int64_t(1), g.Kg, b, s.oc, int64_t(1), c, s.oc, accumulate, apack, bpack);
          }
        }
      }
    }
  }
}

int64_t grad_weight_workspace(const ConvShape& s, int elem_bytes, int nt) {
  return elem_bytes == 4 ? make_plan<float>(s, nt).total : make_plan<double>(s, nt).total;
}

}  // namespace

const GradWeightKernels kGradWeight = {&grad_weight_workspace, &grad_weight<float>, &grad_weight<double>};

}  // namespace PYCONV_ISA_NS
}  // namespace pyconv
