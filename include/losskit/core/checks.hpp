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

}  // namespace losskit::detail
