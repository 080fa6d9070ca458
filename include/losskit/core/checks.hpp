#pragma once
// Argument checks. Every public kernel validates all of its arguments once, before it writes
// anything, so a call that throws leaves the caller's buffers untouched. Messages name the
// function, the argument and the offending value or shapes:
//   losskit::kl_div: 'teacher' has shape 4x9, expected 4x10 (the shape of 'student')

#include <cmath>
#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"

namespace losskit::detail {

template <class... Parts>
[[noreturn]] inline void fail(const char* fn, const Parts&... parts) {
  std::ostringstream os;
  os << "losskit::" << fn << ": ";
  (os << ... << parts);
  throw std::invalid_argument(os.str());
}

template <class... Parts>
[[noreturn]] inline void fail_range(const char* fn, const Parts&... parts) {
  std::ostringstream os;
  os << "losskit::" << fn << ": ";
  (os << ... << parts);
  throw std::out_of_range(os.str());
}

template <class T>
inline void check_nonempty(const char* fn, const char* arg, const RowsView<T>& v) {
  if (v.cols <= 0) fail(fn, "'", arg, "' has shape ", v.rows, "x", v.cols, ": it needs at least one column");
}

template <class A, class B>
inline void check_same_shape(const char* fn, const char* arg, const RowsView<A>& v, const char* like,
                             const RowsView<B>& ref) {
  if (v.rows != ref.rows || v.cols != ref.cols)
    fail(fn, "'", arg, "' has shape ", v.rows, "x", v.cols, ", expected ", ref.rows, "x", ref.cols,
         " (the shape of '", like, "')");
}

inline void check_length(const char* fn, const char* arg, std::size_t got, std::ptrdiff_t rows) {
  if (got != 0 && std::ptrdiff_t(got) != rows)
    fail(fn, "'", arg, "' has ", got, " entries, expected one per row (", rows, ")");
}

inline void check_positive(const char* fn, const char* arg, double x) {
  if (!(x > 0.0) || !std::isfinite(x)) fail(fn, "'", arg, "' must be positive and finite, got ", x);
}

inline void check_nonnegative(const char* fn, const char* arg, double x) {
  if (!(x >= 0.0) || !std::isfinite(x)) fail(fn, "'", arg, "' must be finite and >= 0, got ", x);
}

inline void check_in(const char* fn, const char* arg, double x, double lo, double hi, bool lo_open, bool hi_open) {
  const bool ok = (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
  if (!ok)
    fail(fn, "'", arg, "' must be in ", lo_open ? "(" : "[", lo, ", ", hi, hi_open ? ")" : "]", ", got ", x);
}

inline void check_weights(const char* fn, const Weights& w, std::ptrdiff_t rows) {
  check_length(fn, "weights", w.size(), rows);
  for (std::size_t i = 0; i < w.size(); ++i)
    if (!(w[i] >= 0.0) || !std::isfinite(w[i]))
      fail(fn, "'weights' must be finite and >= 0, got ", w[i], " at row ", i);
}

// Checks shared by every row-wise kernel's options: reduction fields, labels, weights, threads.
template <class Options>
inline void check_row_options(const char* fn, const Options& o, std::ptrdiff_t rows) {
  check_length(fn, "labels", o.labels.size(), rows);
  check_weights(fn, o.weights, rows);
  if (!std::isfinite(o.grad_scale)) fail(fn, "'grad_scale' must be finite, got ", o.grad_scale);
  if (!(o.normalizer >= 0.0) || !std::isfinite(o.normalizer))
    fail(fn, "'normalizer' must be >= 0 (0 means: use the reduction's own), got ", o.normalizer);
  if (o.threads < 0) fail(fn, "'threads' must be >= 0 (0 means: all hardware threads), got ", o.threads);
}

// Two inputs of one shape (student and teacher, logits and targets): the same scalar type
// (float or double), at least one column, contiguous rows.
template <class A, class B>
inline void check_row_pair(const char* fn, const char* a_name, const A& a, const char* b_name, const B& b) {
  using T = scalar_of_t<A>;
  static_assert(std::is_same_v<T, scalar_of_t<B>>, "losskit: both inputs must have the same scalar type");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "losskit: scalar type must be float or double");
  const auto av = rows_view(a);
  check_nonempty(fn, a_name, av);
  check_same_shape(fn, b_name, rows_view(b), a_name, av);
  if (!has_unit_inner_stride(a) || !has_unit_inner_stride(b)) fail(fn, "inputs must have contiguous rows (inner stride 1)");
}

// The gradient output of a kernel (null: forward only, an empty view): a writable row-major
// matrix of the shape of `like` (named `like_name` in the message), with contiguous rows.
// `grad_name`: the output's argument name in the messages (kernels with several gradient
// outputs, e.g. sinkhorn's grad_C, grad_x, grad_y).
template <class T, class G>
inline RowsView<T> checked_grad_view(const char* fn, G* grad, const char* like_name, const RowsView<const T>& like,
                                     const char* grad_name = "grad") {
  static_assert(!std::is_const_v<G>, "losskit: the gradient output must not be const");
  static_assert(std::is_same_v<T, scalar_of_t<G>>, "losskit: the gradient must have the inputs' scalar type");
  if (!grad) return {};
  const RowsView<T> gv = mutable_rows_view(*grad);
  check_same_shape(fn, grad_name, gv, like_name, like);
  if (!has_unit_inner_stride(*grad)) fail(fn, "'", grad_name, "' must have contiguous rows (inner stride 1)");
  return gv;
}

// The views of a kernel with two inputs of one shape and an optional gradient of that shape:
// check_row_pair, then checked_grad_view against the first input.
template <class T>
struct PairViews {
  RowsView<const T> a, b;
  RowsView<T> g;
};
template <class A, class B, class G>
inline PairViews<scalar_of_t<A>> checked_pair_views(const char* fn, const char* a_name, const A& a, const char* b_name,
                                                    const B& b, G* grad) {
  check_row_pair(fn, a_name, a, b_name, b);
  const auto av = rows_view(a);
  return {av, rows_view(b), checked_grad_view<scalar_of_t<A>>(fn, grad, a_name, av)};
}

}  // namespace losskit::detail
