// Thin bindings: buffers arrive already validated, converted and contiguous
// from pyconv/_conv.py; this layer re-checks what memory safety depends on
// (dtype, contiguity, sizes), releases the GIL and calls the driver.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/buffer_pool.hpp"
#include "core/dispatch.hpp"
#include "core/threading.hpp"
#include "conv/conv.hpp"
#include "pool/pool.hpp"

namespace py = pybind11;
using namespace pyconv;

namespace {

constexpr size_t kShapeFields = 18;
using ShapeTuple = std::array<int64_t, kShapeFields>;

ConvShape make_shape(const ShapeTuple& t, int layout, int act, bool has_bias) {
  if (layout != 0 && layout != 1) throw std::invalid_argument("conv2d: bad layout code");
  if (act < 0 || act > 2) throw std::invalid_argument("conv2d: bad activation code");
  ConvShape s{};
  s.n = t[0]; s.c = t[1]; s.h = t[2]; s.w = t[3];
  s.oc = t[4]; s.oh = t[5]; s.ow = t[6];
  s.kh = t[7]; s.kw = t[8];
  s.sh = t[9]; s.sw = t[10];
  s.dh = t[11]; s.dw = t[12];
  s.pt = t[13]; s.pb = t[14]; s.pl = t[15]; s.pr = t[16];
  s.groups = t[17];
  s.layout = static_cast<Layout>(layout);
  s.act = static_cast<Activation>(act);
  s.has_bias = has_bias;
  return s;
}

// Equal dtypes, not only the identical descriptor object: an array that
// came through pickle (from a dask or multiprocessing worker) has a float32
// descriptor of its own.  (A byte-swapped dtype is not equivalent.)
bool same_dtype(const py::dtype& a, const py::dtype& b) {
  return a.is(b) || py::detail::npy_api::get().PyArray_EquivTypes_(a.ptr(), b.ptr());
}

void check_buffer(const py::array& a, const char* name, const py::dtype& dt, int64_t expected, bool writable) {
  if (!same_dtype(a.dtype(), dt)) throw py::type_error(std::string("conv2d: ") + name + " has the wrong dtype");
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string("conv2d: ") + name + " must be C-contiguous");
  if (a.size() != expected) throw std::invalid_argument(std::string("conv2d: ") + name + " has the wrong size");
  // Typed loads and stores of an unaligned buffer are undefined behaviour
  // (UBSan reports them); the Python layer copies unaligned views first.
  if (!(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_))
    throw std::invalid_argument(std::string("conv2d: ") + name + " is not aligned to its element size");
  if (writable && !a.writeable()) throw std::invalid_argument(std::string("conv2d: ") + name + " is read-only");
}

Algo parse_algo(const std::string& algo) {
  if (algo == "direct") return Algo::Direct;
  if (algo == "im2col") return Algo::Im2col;
  if (algo == "pointwise") return Algo::Pointwise;
  if (algo == "depthwise") return Algo::Depthwise;
  throw std::invalid_argument("conv2d: algo '" + algo + "' is not a kernel of this build");
}

template <class T>
void run_conv(const ConvShape& s, const py::array& x, const py::array& w, const py::object& bias,
              const py::object& packed, py::array& y, Algo algo) {
  const IsaKernels& k = active_kernels();
  const int nt = kernel_threads();
  workspace_bytes(k, s, sizeof(T), algo, nt);  // validates the shape before any size is trusted
  const py::dtype dt = py::dtype::of<T>();
  check_buffer(x, "x", dt, s.n * s.c * s.h * s.w, false);
  check_buffer(w, "weight", dt, s.oc * (s.c / s.groups) * s.kh * s.kw, false);
  check_buffer(y, "out", dt, s.n * s.oc * s.oh * s.ow, true);
  const T* bp = nullptr;
  if (!bias.is_none()) {
    py::array b = bias.cast<py::array>();
    check_buffer(b, "bias", dt, s.oc, false);
    bp = static_cast<const T*>(b.data());
  }
  const T* pp = nullptr;
  if (!packed.is_none()) {
    py::array pa = packed.cast<py::array>();
    check_buffer(pa, "packed weight", dt, packed_weight_bytes(k, s, sizeof(T), algo) / int64_t(sizeof(T)), false);
    pp = static_cast<const T*>(pa.data());
  }
  const T* xp = static_cast<const T*>(x.data());
  const T* wp = static_cast<const T*>(w.data());
  T* yp = static_cast<T*>(y.mutable_data());
  py::gil_scoped_release release;
  conv2d<T>(k, s, xp, wp, pp, bp, yp, algo, nt);
}

void conv2d_entry(py::array x, py::array w, py::object bias, py::array y, const ShapeTuple& shape, int layout,
                  int act, const std::string& algo, py::object packed) {
  const Algo a = parse_algo(algo);
  const ConvShape s = make_shape(shape, layout, act, !bias.is_none());
  if (same_dtype(x.dtype(), py::dtype::of<float>()))
    run_conv<float>(s, x, w, bias, packed, y, a);
  else if (same_dtype(x.dtype(), py::dtype::of<double>()))
    run_conv<double>(s, x, w, bias, packed, y, a);
  else
    throw py::type_error("conv2d: only float32 and float64 are computed natively");
}

int64_t workspace_entry(const ShapeTuple& shape, int layout, bool has_bias, const std::string& algo,
                        int elem_bytes) {
  if (elem_bytes != 4 && elem_bytes != 8) throw std::invalid_argument("conv2d: elem_bytes must be 4 or 8");
  return workspace_bytes(active_kernels(), make_shape(shape, layout, 0, has_bias), elem_bytes, parse_algo(algo),
                         kernel_threads());
}

// The weight-related part of a ConvShape (the rest is never read by packing).
ConvShape weight_shape(int64_t c, int64_t oc, int64_t kh, int64_t kw, int64_t groups, int layout) {
  ShapeTuple t{1, c, kh, kw, oc, 1, 1, kh, kw, 1, 1, 1, 1, 0, 0, 0, 0, groups};
  return make_shape(t, layout, 0, false);
}

template <class T>
py::array pack_typed(const py::array& w, const ConvShape& s, Algo algo) {
  const IsaKernels& k = active_kernels();
  const int64_t bytes = packed_weight_bytes(k, s, sizeof(T), algo);
  check_buffer(w, "weight", py::dtype::of<T>(), s.oc * (s.c / s.groups) * s.kh * s.kw, false);
  py::array_t<T> out(bytes / int64_t(sizeof(T)));
  const T* src = static_cast<const T*>(w.data());
  T* dst = out.mutable_data();
  const int nt = kernel_threads();
  {
    py::gil_scoped_release release;
    pack_weight<T>(k, s, src, dst, algo, nt);
  }
  return out;
}

py::array pack_weight_entry(py::array w, int64_t c, int64_t oc, int64_t kh, int64_t kw, int64_t groups,
                            int layout, const std::string& algo) {
  const ConvShape s = weight_shape(c, oc, kh, kw, groups, layout);
  const Algo a = parse_algo(algo);
  if (same_dtype(w.dtype(), py::dtype::of<float>())) return pack_typed<float>(w, s, a);
  if (same_dtype(w.dtype(), py::dtype::of<double>())) return pack_typed<double>(w, s, a);
  throw py::type_error("prepack: only float32 and float64 are packed natively");
}

// ---- separable ----------------------------------------------------------------

template <class T>
void run_separable(const ConvShape& dw, const ConvShape& pw, const py::array& x, const py::array& dww,
                   const py::array& pww, const py::object& bias, py::array& y) {
  validate_separable(dw, pw);  // before any size is trusted
  const py::dtype dt = py::dtype::of<T>();
  check_buffer(x, "x", dt, dw.n * dw.c * dw.h * dw.w, false);
  check_buffer(dww, "depthwise_weight", dt, dw.oc * dw.kh * dw.kw, false);
  check_buffer(pww, "pointwise_weight", dt, pw.oc * pw.c, false);
  check_buffer(y, "out", dt, pw.n * pw.oc * pw.oh * pw.ow, true);
  const T* bp = nullptr;
  if (!bias.is_none()) {
    py::array b = bias.cast<py::array>();
    check_buffer(b, "bias", dt, pw.oc, false);
    bp = static_cast<const T*>(b.data());
  }
  const T* xp = static_cast<const T*>(x.data());
  const T* dwp = static_cast<const T*>(dww.data());
  const T* pwp = static_cast<const T*>(pww.data());
  T* yp = static_cast<T*>(y.mutable_data());
  const IsaKernels& k = active_kernels();
  const int nt = kernel_threads();
  py::gil_scoped_release release;
  separable_conv2d<T>(k, dw, pw, xp, dwp, pwp, bp, yp, nt);
}

void separable_entry(py::array x, py::array dww, py::array pww, py::object bias, py::array y,
                     const ShapeTuple& dw_shape, const ShapeTuple& pw_shape, int layout, int act) {
  const ConvShape dw = make_shape(dw_shape, layout, 0, false);
  const ConvShape pw = make_shape(pw_shape, layout, act, !bias.is_none());
  if (same_dtype(x.dtype(), py::dtype::of<float>()))
    run_separable<float>(dw, pw, x, dww, pww, bias, y);
  else if (same_dtype(x.dtype(), py::dtype::of<double>()))
    run_separable<double>(dw, pw, x, dww, pww, bias, y);
  else
    throw py::type_error("separable_conv2d: only float32 and float64 are computed natively");
}

// ---- weight gradient ---------------------------------------------------------

template <class T>
void run_grad_weight(const ConvShape& s, const py::array& x, const py::array& gy, py::array& gw) {
  validate_conv(s);  // before any size is trusted
  const py::dtype dt = py::dtype::of<T>();
  check_buffer(x, "x", dt, s.n * s.c * s.h * s.w, false);
  check_buffer(gy, "grad_out", dt, s.n * s.oc * s.oh * s.ow, false);
  check_buffer(gw, "out", dt, s.oc * (s.c / s.groups) * s.kh * s.kw, true);
  const T* xp = static_cast<const T*>(x.data());
  const T* gyp = static_cast<const T*>(gy.data());
  T* gwp = static_cast<T*>(gw.mutable_data());
  const IsaKernels& k = active_kernels();
  const int nt = kernel_threads();
  py::gil_scoped_release release;
  conv2d_grad_weight<T>(k, s, xp, gyp, gwp, nt);
}

void grad_weight_entry(py::array x, py::array gy, py::array gw, const ShapeTuple& shape, int layout) {
  const ConvShape s = make_shape(shape, layout, 0, false);
  if (same_dtype(x.dtype(), py::dtype::of<float>()))
    run_grad_weight<float>(s, x, gy, gw);
  else if (same_dtype(x.dtype(), py::dtype::of<double>()))
    run_grad_weight<double>(s, x, gy, gw);
  else
    throw py::type_error("conv2d_grad_weight: only float32 and float64 are computed natively");
}

template <class T>
void run_grad_input(const ConvShape& s, const py::array& w, const py::array& gy, py::array& gx,
                    GradInputAlgo algo) {
  validate_conv(s);  // before any size is trusted
  const py::dtype dt = py::dtype::of<T>();
  check_buffer(w, "weight", dt, s.oc * (s.c / s.groups) * s.kh * s.kw, false);
  check_buffer(gy, "grad_out", dt, s.n * s.oc * s.oh * s.ow, false);
  check_buffer(gx, "out", dt, s.n * s.c * s.h * s.w, true);
  const T* wp = static_cast<const T*>(w.data());
  const T* gyp = static_cast<const T*>(gy.data());
  T* gxp = static_cast<T*>(gx.mutable_data());
  const IsaKernels& k = active_kernels();
  const int nt = kernel_threads();
  py::gil_scoped_release release;
  conv2d_grad_input<T>(k, s, wp, gyp, gxp, algo, nt);
}

void grad_input_entry(py::array w, py::array gy, py::array gx, const ShapeTuple& shape, int layout,
                      const std::string& algo) {
  const ConvShape s = make_shape(shape, layout, 0, false);
  GradInputAlgo a;
  if (algo == "depthwise")
    a = GradInputAlgo::Depthwise;
  else if (algo == "col2im")
    a = GradInputAlgo::Col2im;
  else
    throw py::value_error("conv2d_grad_input: algo must be 'depthwise' or 'col2im', got '" + algo + "'");
  if (same_dtype(w.dtype(), py::dtype::of<float>()))
    run_grad_input<float>(s, w, gy, gx, a);
  else if (same_dtype(w.dtype(), py::dtype::of<double>()))
    run_grad_input<double>(s, w, gy, gx, a);
  else
    throw py::type_error("conv2d_grad_input: only float32 and float64 are computed natively");
}

template <class T>
void run_transpose_taps(const TapsTranspose& t, const py::array& w, py::array& out) {
  const py::dtype dt = py::dtype::of<T>();
  check_buffer(w, "weight", dt, t.groups * t.og * t.cg * t.kh * t.kw, false);
  check_buffer(out, "out", dt, t.groups * t.og * t.cg * t.nr * t.nc, true);
  const T* wp = static_cast<const T*>(w.data());
  T* op = static_cast<T*>(out.mutable_data());
  const WeightKernels& k = *active_kernels().weights;
  const int nt = kernel_threads();
  py::gil_scoped_release release;
  (sizeof(T) == 4 ? reinterpret_cast<TransposeTapsFn<T>>(k.transpose_taps_f32)
                  : reinterpret_cast<TransposeTapsFn<T>>(k.transpose_taps_f64))(t, wp, op, nt);
}

// The transposed problem's weight (see TapsTranspose): w's shape gives the
// sizes, rows/cols the taps taken (each in range, checked here).
void transpose_taps_entry(py::array w, py::array out, int layout, int64_t groups, const std::vector<int64_t>& rows,
                          const std::vector<int64_t>& cols) {
  if (w.ndim() != 4) throw std::invalid_argument("transpose_taps: weight must be 4-D");
  if (layout != 0 && layout != 1) throw std::invalid_argument("transpose_taps: bad layout code");
  TapsTranspose t{};
  t.layout = layout == 0 ? Layout::NCHW : Layout::NHWC;
  const int64_t oc = layout == 0 ? w.shape(0) : w.shape(3);
  t.cg = layout == 0 ? w.shape(1) : w.shape(2);
  t.kh = layout == 0 ? w.shape(2) : w.shape(0);
  t.kw = layout == 0 ? w.shape(3) : w.shape(1);
  if (groups < 1 || oc % groups) throw std::invalid_argument("transpose_taps: bad groups");
  t.groups = groups;
  t.og = oc / groups;
  for (int64_t r : rows)
    if (r < 0 || r >= t.kh) throw std::invalid_argument("transpose_taps: row tap out of range");
  for (int64_t c : cols)
    if (c < 0 || c >= t.kw) throw std::invalid_argument("transpose_taps: column tap out of range");
  t.nr = static_cast<int64_t>(rows.size());
  t.nc = static_cast<int64_t>(cols.size());
  t.rows = rows.data();
  t.cols = cols.data();
  if (same_dtype(w.dtype(), py::dtype::of<float>()))
    run_transpose_taps<float>(t, w, out);
  else if (same_dtype(w.dtype(), py::dtype::of<double>()))
    run_transpose_taps<double>(t, w, out);
  else
    throw py::type_error("transpose_taps: only float32 and float64");
}

template <class T>
void run_interleave(const PhaseLayout& p, const py::list& phases, py::array& dx) {
  const py::dtype dt = py::dtype::of<T>();
  check_buffer(dx, "grad_x", dt, p.n * p.c * p.h * p.w, true);
  const int64_t ph = std::min(p.sh, p.h), pw = std::min(p.sw, p.w);
  if (static_cast<int64_t>(phases.size()) != ph * pw)
    throw std::invalid_argument("interleave_phases: wrong number of phases");
  std::vector<const T*> ptrs;
  std::vector<py::array> keep;  // the arrays stay referenced while the GIL is released
  for (int64_t a = 0; a < ph; ++a)
    for (int64_t b = 0; b < pw; ++b) {
      py::object item = phases[static_cast<size_t>(a * pw + b)];
      if (item.is_none()) {
        ptrs.push_back(nullptr);
        continue;
      }
      py::array arr = item.cast<py::array>();
      const int64_t ua = (p.h - a + p.sh - 1) / p.sh, vb = (p.w - b + p.sw - 1) / p.sw;
      check_buffer(arr, "phase", dt, p.n * p.c * ua * vb, false);
      ptrs.push_back(static_cast<const T*>(arr.data()));
      keep.push_back(arr);
    }
  T* out = static_cast<T*>(dx.mutable_data());
  const int nt = kernel_threads();
  py::gil_scoped_release release;
  interleave_phases<T>(p, ptrs.data(), out, nt);
}

void interleave_entry(py::array dx, py::list phases, int64_t n, int64_t c, int64_t h, int64_t w, int64_t sh,
                      int64_t sw, int layout) {
  if (n < 1 || c < 1 || h < 1 || w < 1 || sh < 1 || sw < 1 || (layout != 0 && layout != 1))
    throw std::invalid_argument("interleave_phases: bad geometry");
  const PhaseLayout p{n, c, h, w, sh, sw, static_cast<Layout>(layout)};
  if (same_dtype(dx.dtype(), py::dtype::of<float>()))
    run_interleave<float>(p, phases, dx);
  else if (same_dtype(dx.dtype(), py::dtype::of<double>()))
    run_interleave<double>(p, phases, dx);
  else
    throw py::type_error("interleave_phases: only float32 and float64");
}

// ---- pooling ----------------------------------------------------------------

constexpr size_t kPoolFields = 16;
using PoolTuple = std::array<int64_t, kPoolFields>;

PoolShape make_pool_shape(const PoolTuple& t, int layout, int op, bool count_include_pad) {
  if (layout != 0 && layout != 1) throw std::invalid_argument("pool: bad layout code");
  if (op != 0 && op != 1) throw std::invalid_argument("pool: bad op code");
  PoolShape s{};
  s.n = t[0]; s.c = t[1]; s.h = t[2]; s.w = t[3];
  s.oh = t[4]; s.ow = t[5];
  s.kh = t[6]; s.kw = t[7];
  s.sh = t[8]; s.sw = t[9];
  s.dh = t[10]; s.dw = t[11];
  s.pt = t[12]; s.pb = t[13]; s.pl = t[14]; s.pr = t[15];
  s.layout = static_cast<Layout>(layout);
  s.op = static_cast<PoolOp>(op);
  s.count_include_pad = count_include_pad;
  validate_pool(s);
  return s;
}

template <class T>
void run_pool_forward(const PoolShape& s, const py::array& x, py::array& y, const py::object& indices,
                      const py::object& keys) {
  const py::dtype dt = py::dtype::of<T>();
  check_buffer(x, "x", dt, s.n * s.c * s.h * s.w, false);
  check_buffer(y, "out", dt, s.n * s.c * s.oh * s.ow, true);
  int64_t* ip = nullptr;
  if (!indices.is_none()) {
    if (s.op != PoolOp::Max) throw std::invalid_argument("pool: indices are for max pooling only");
    py::array ia = indices.cast<py::array>();
    check_buffer(ia, "indices", py::dtype::of<int64_t>(), s.n * s.c * s.oh * s.ow, true);
    ip = static_cast<int64_t*>(ia.mutable_data());
  }
  uint8_t* kp = nullptr;
  if (!keys.is_none()) {
    py::array ka = keys.cast<py::array>();
    check_buffer(ka, "keys", py::dtype::of<uint8_t>(), s.n * s.c * s.oh * s.ow, true);
    kp = static_cast<uint8_t*>(ka.mutable_data());
  }
  const T* xp = static_cast<const T*>(x.data());
  T* yp = static_cast<T*>(y.mutable_data());
  const IsaKernels& k = active_kernels();
  const int nt = kernel_threads();
  py::gil_scoped_release release;
  pool_forward<T>(k, s, xp, yp, ip, kp, nt);
}

void pool_forward_entry(py::array x, py::array y, py::object indices, const PoolTuple& shape, int layout, int op,
                        bool count_include_pad, py::object keys) {
  const PoolShape s = make_pool_shape(shape, layout, op, count_include_pad);
  if (same_dtype(x.dtype(), py::dtype::of<float>()))
    run_pool_forward<float>(s, x, y, indices, keys);
  else if (same_dtype(x.dtype(), py::dtype::of<double>()))
    run_pool_forward<double>(s, x, y, indices, keys);
  else
    throw py::type_error("pool: only float32 and float64 are computed natively");
}

template <class T>
void run_pool_backward(const PoolShape& s, const py::object& x, const py::array& gy, py::array& gx,
                       const py::object& keys) {
  const py::dtype dt = py::dtype::of<T>();
  check_buffer(gy, "grad_out", dt, s.n * s.c * s.oh * s.ow, false);
  check_buffer(gx, "grad_x", dt, s.n * s.c * s.h * s.w, true);
  const T* xp = nullptr;
  const uint8_t* kp = nullptr;
  if (!keys.is_none()) {
    py::array ka = keys.cast<py::array>();
    check_buffer(ka, "keys", py::dtype::of<uint8_t>(), s.n * s.c * s.oh * s.ow, false);
    kp = static_cast<const uint8_t*>(ka.data());
  } else if (s.op == PoolOp::Max) {
    if (x.is_none()) throw std::invalid_argument("pool: max pooling's gradient needs x");
    py::array xa = x.cast<py::array>();
    check_buffer(xa, "x", dt, s.n * s.c * s.h * s.w, false);
    xp = static_cast<const T*>(xa.data());
  }
  const T* gyp = static_cast<const T*>(gy.data());
  T* gxp = static_cast<T*>(gx.mutable_data());
  const IsaKernels& k = active_kernels();
  const int nt = kernel_threads();
  py::gil_scoped_release release;
  pool_backward<T>(k, s, xp, kp, gyp, gxp, nt);
}

void pool_backward_entry(py::object x, py::array gy, py::array gx, const PoolTuple& shape, int layout, int op,
                         bool count_include_pad, py::object keys) {
  const PoolShape s = make_pool_shape(shape, layout, op, count_include_pad);
  if (same_dtype(gy.dtype(), py::dtype::of<float>()))
    run_pool_backward<float>(s, x, gy, gx, keys);
  else if (same_dtype(gy.dtype(), py::dtype::of<double>()))
    run_pool_backward<double>(s, x, gy, gx, keys);
  else
    throw py::type_error("pool: only float32 and float64 are computed natively");
}

// True if no element of the float array is NaN or infinite: x * 0 is 0
// for every finite x and NaN otherwise, summed chunk by chunk in four
// independent 16-byte vectors (GCC/Clang vector extensions: SSE2 on any
// x86-64).  No temporary array, unlike numpy.isfinite(a).all(): 1.4 ->
// 0.3 us on a 3x3 depthwise weight, 190 -> 139 us on a 512x512x3x3 one.
template <class T>
bool all_finite(const T* p, int64_t n) {
  typedef T V __attribute__((vector_size(16)));
  constexpr int L = 16 / sizeof(T);
  constexpr int64_t kChunk = 4096;
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t end = std::min(n, start + kChunk);
    const V zero = {};
    V acc[4] = {};
    int64_t i = start;
    for (; i + 4 * L <= end; i += 4 * L)
      for (int k = 0; k < 4; ++k) {
        V v;
        std::memcpy(&v, p + i + k * L, sizeof v);
        acc[k] += v * zero;
      }
    const V sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    T rest = T(0);
    for (int l = 0; l < L; ++l) rest += sum[l];
    for (; i < end; ++i) rest += p[i] * T(0);
    if (rest != rest) return false;
  }
  return true;
}

bool all_finite_entry(const py::array& a) {
  if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("all_finite: the array must be C-contiguous");
  const int64_t n = static_cast<int64_t>(a.size());
  if (same_dtype(a.dtype(), py::dtype::of<float>())) return all_finite<float>(static_cast<const float*>(a.data()), n);
  if (same_dtype(a.dtype(), py::dtype::of<double>()))
    return all_finite<double>(static_cast<const double*>(a.data()), n);
  throw py::type_error("all_finite: only float32 and float64 arrays");
}

Isa parse_isa(const std::string& name) {
  for (int i = 0; i < kNumIsas; ++i)
    if (name == isa_name(static_cast<Isa>(i))) return static_cast<Isa>(i);
  throw std::invalid_argument("unknown ISA '" + name + "' (expected generic, avx2 or avx512)");
}

std::vector<std::string> isa_list(bool need_cpu) {
  std::vector<std::string> out;
  for (int i = 0; i < kNumIsas; ++i) {
    Isa isa = static_cast<Isa>(i);
    if (compiled_kernels(isa) && (!need_cpu || cpu_supports(isa))) out.emplace_back(isa_name(isa));
  }
  return out;
}

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyconv compiled kernels (private: use the pyconv package)";
  m.def("conv2d", &conv2d_entry, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("out"),
        py::arg("shape"), py::arg("layout"), py::arg("activation"), py::arg("algo"),
        py::arg("packed") = py::none());
  m.def("separable_conv2d", &separable_entry, py::arg("x"), py::arg("depthwise_weight"),
        py::arg("pointwise_weight"), py::arg("bias"), py::arg("out"), py::arg("dw_shape"), py::arg("pw_shape"),
        py::arg("layout"), py::arg("activation"));
  m.def("conv2d_grad_weight", &grad_weight_entry, py::arg("x"), py::arg("grad_out"), py::arg("out"),
        py::arg("shape"), py::arg("layout"));
  m.def("conv2d_grad_input", &grad_input_entry, py::arg("weight"), py::arg("grad_out"), py::arg("out"),
        py::arg("shape"), py::arg("layout"), py::arg("algo"));
  m.def("transpose_taps", &transpose_taps_entry, py::arg("weight"), py::arg("out"), py::arg("layout"),
        py::arg("groups"), py::arg("rows"), py::arg("cols"));
  m.def("interleave_phases", &interleave_entry, py::arg("grad_x"), py::arg("phases"), py::arg("n"),
        py::arg("c"), py::arg("h"), py::arg("w"), py::arg("sh"), py::arg("sw"), py::arg("layout"));
  m.def("pool_forward", &pool_forward_entry, py::arg("x"), py::arg("out"), py::arg("indices"), py::arg("shape"),
        py::arg("layout"), py::arg("op"), py::arg("count_include_pad"), py::arg("keys") = py::none());
  m.def("pool_backward", &pool_backward_entry, py::arg("x"), py::arg("grad_out"), py::arg("grad_x"),
        py::arg("shape"), py::arg("layout"), py::arg("op"), py::arg("count_include_pad"),
        py::arg("keys") = py::none());
  m.def("pack_weight", &pack_weight_entry, py::arg("weight"), py::arg("c"), py::arg("oc"), py::arg("kh"),
        py::arg("kw"), py::arg("groups"), py::arg("layout"), py::arg("algo"));
  m.def("workspace_bytes", &workspace_entry, py::arg("shape"), py::arg("layout"), py::arg("has_bias"),
        py::arg("algo"), py::arg("elem_bytes"));
  m.def("set_isa", [](const std::string& cap) { return std::string(isa_name(set_active_isa(parse_isa(cap)))); },
        py::arg("cap"));
  m.def("get_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("best_isa", [] { return std::string(isa_name(best_isa())); });
  m.def("isa_compiled", [] { return isa_list(false); });
  m.def("isa_available", [] { return isa_list(true); });
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1");
    set_num_threads(n);
  }, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);
  m.def("copy_bandwidth", [](int64_t bytes, int repeats, int nthreads) {
    // Memory bandwidth probe: `nthreads` threads copy disjoint slices of a
    // `bytes` buffer; best of `repeats`, counting bytes read plus written.
    if (bytes < 4096 || bytes > (int64_t(1) << 34) || repeats < 1 || nthreads < 1)
      throw std::invalid_argument("copy_bandwidth: bytes in [4 KiB, 16 GiB], repeats and nthreads >= 1");
    std::vector<char> src(static_cast<size_t>(bytes), 1), dst(static_cast<size_t>(bytes), 0);
    double best = 0;
    py::gil_scoped_release release;
    for (int r = 0; r < repeats; ++r) {
      const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(nthreads)
      {
#ifdef _OPENMP
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int64_t t = 0, nt = 1;
#endif
        const int64_t lo = bytes * t / nt, hi = bytes * (t + 1) / nt;
        std::memcpy(dst.data() + lo, src.data() + lo, static_cast<size_t>(hi - lo));
      }
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (secs > 0) best = std::max(best, 2.0 * static_cast<double>(bytes) / secs);
    }
    return best;
  }, py::arg("bytes"), py::arg("repeats"), py::arg("nthreads"));
  m.def("peak_flops", [](int elem_bytes, int64_t iters, int nthreads) {
    if (elem_bytes != 4 && elem_bytes != 8) throw std::invalid_argument("peak_flops: elem_bytes must be 4 or 8");
    if (iters < 1 || nthreads < 1) throw std::invalid_argument("peak_flops: iters and nthreads must be >= 1");
    const IsaKernels& k = active_kernels();
    double total = 0;
    py::gil_scoped_release release;
    // Every thread runs the probe at once (the sum is the team's peak: with
    // SMT or shared FMA units it is less than nthreads x one thread).
#pragma omp parallel num_threads(nthreads) reduction(+ : total)
    total += k.peak_flops(elem_bytes, iters);
    return total;
  }, py::arg("elem_bytes"), py::arg("iters"), py::arg("nthreads"));
  m.def("default_num_threads", &default_num_threads);
  // Result arrays on recycled memory (core/buffer_pool.hpp): C-contiguous,
  // writeable, owned by a capsule that hands the block back when the array
  // (and every view of it) is gone.
  m.def("all_finite", &all_finite_entry, py::arg("a"));
  m.def("empty", [](const std::vector<py::ssize_t>& shape, const py::dtype& dt) {
    size_t count = 1;
    for (py::ssize_t d : shape) {
      if (d < 0) throw std::invalid_argument("empty: negative dimension");
      count *= static_cast<size_t>(d);
    }
    void* p = buffer_pool().acquire(std::max<size_t>(count * static_cast<size_t>(dt.itemsize()), 1));
    py::capsule owner(p, [](void* q) { buffer_pool().release(q); });
    return py::array(dt, shape, {}, p, owner);
  }, py::arg("shape"), py::arg("dtype"));
  m.def("pool_info", [] {
    py::dict d;
    d["kept_bytes"] = buffer_pool().kept();
    d["limit_bytes"] = buffer_pool().limit();
    d["hits"] = buffer_pool().hits();
    d["misses"] = buffer_pool().misses();
    return d;
  });
  m.def("pool_trim", [] { return buffer_pool().trim(); });
  m.def("pool_set_limit", [](int64_t bytes) {
    if (bytes < 0) throw std::invalid_argument("pool_set_limit: negative");
    buffer_pool().set_limit(static_cast<size_t>(bytes));
  }, py::arg("bytes"));
  m.def("build_info", [] {
    py::dict d;
    d["compiler"] = compiler();
    d["openmp"] = have_openmp();
    d["openmp_version"] = openmp_version();
    d["shape_fields"] = kShapeFields;
    return d;
  });
}
