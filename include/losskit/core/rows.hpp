#pragma once
// The row driver shared by every row-wise kernel: which rows count, what the reduction divides
// by, the gradient scale each row gets, ignored rows (exact zero gradient, logits never read),
// per-thread scratch, and the fixed-order sum of the per-row losses.
//
//   row weight  w_r = 0 if labels[r] == ignore_index, else weights[r] (1 when no weights)
//   denominator D   = normalizer if > 0; else sum_r w_r for mean; else 1
//   per-row loss    = w_r * factor * L_r / D   (kept in LossResult::per_row for `none`)
//   value           = sum of the per-row losses, in row order
//   row grad scale  = grad_scale * factor * w_r / D
// A mean over zero counted rows is 0 with a zero gradient, never NaN.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "losskit/core/parallel.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"

namespace losskit::detail {

struct RowPlan {
  Reduction reduction = Reduction::mean;
  std::vector<double> weight;  // w_r (0: row skipped)
  double denominator = 1.0;   // D
  double grad_scale = 1.0;     // upstream scale times the loss factor, divided by D
  double factor = 1.0;         // multiplies every row loss (e.g. T^2 for Hinton KD)
  std::int64_t count = 0;
  int threads = 1;
};

// Gradients larger than this go out with non-temporal stores: they cannot stay in cache
// anyway, and skipping the read-for-ownership of every output line saves a quarter of the
// memory traffic of a two-input kernel. Smaller ones stay in cache for the caller.
template <class T>
inline bool streaming_output(std::ptrdiff_t rows, std::ptrdiff_t cols) {
  return double(rows) * double(cols) * double(sizeof(T)) >= 8.0 * 1024 * 1024;
}

// Reads the fields every row-wise options struct has: reduction, labels, ignore_index,
// weights, grad_scale, normalizer, threads.
template <class Options>
inline RowPlan plan_rows(const Options& o, std::ptrdiff_t rows, std::ptrdiff_t cols, double factor = 1.0) {
  RowPlan p;
  p.reduction = o.reduction;
  p.factor = factor;
  p.weight.assign(std::size_t(rows), 1.0);
  double wsum = 0.0;
  for (std::ptrdiff_t r = 0; r < rows; ++r) {
    double w = o.weights.empty() ? 1.0 : o.weights[std::size_t(r)];
    if (!o.labels.empty() && o.labels[std::size_t(r)] == o.ignore_index) w = 0.0;
    p.weight[std::size_t(r)] = w;
    wsum += w;
    p.count += w != 0.0;
  }
  if (o.normalizer > 0.0)
    p.denominator = o.normalizer;
  else if (o.reduction == Reduction::mean)
    p.denominator = wsum;  // may be 0: then every row has w_r = 0 and nothing divides by it
  p.grad_scale = p.denominator > 0.0 ? o.grad_scale * factor / p.denominator : 0.0;
  // Threads only pay off on enough work; the result is the same either way.
  const int wanted = double(rows) * double(cols) < 65536.0 ? 1 : o.threads;
  p.threads = resolve_threads(wanted, rows);
  return p;
}

// Runs `row(scratch, r, grad_row_or_null, row_grad_scale)` -> unweighted row loss (double) for
// every counted row, zeroes the gradient of the others, and reduces. `make_scratch()` builds
// one scratch object per thread; `finish(scratch)` runs after a thread's last row (a kernel
// that defers part of a row's gradient to the next row's call completes it there).
template <class T, class MakeScratch, class RowFn, class Finish>
inline LossResult run_rows(const RowPlan& p, std::ptrdiff_t rows, const RowsView<T>& grad,
                           MakeScratch&& make_scratch, RowFn&& row, Finish&& finish) {
  std::vector<double> loss(std::size_t(rows), 0.0);
  parallel_ranges(rows, p.threads, [&](int, std::ptrdiff_t b, std::ptrdiff_t e) {
    auto scratch = make_scratch();
    for (std::ptrdiff_t r = b; r < e; ++r) {
      const double w = p.weight[std::size_t(r)];
      T* g = grad.data ? grad.row(r) : nullptr;
      if (w == 0.0) {
        if (g)
          for (std::ptrdiff_t j = 0; j < grad.cols; ++j) g[j] = T(0);
        continue;
      }
      loss[std::size_t(r)] = w * p.factor * row(scratch, r, g, p.grad_scale * w);
    }
    finish(scratch);
  });
  LossResult out;
  out.count = p.count;
  out.denominator = p.denominator;
  const double inv = p.denominator > 0.0 ? 1.0 / p.denominator : 0.0;
  double total = 0.0;
  for (double& v : loss) total += (v *= inv);  // fixed row order: independent of the thread count
  out.value = total;
  if (p.reduction == Reduction::none) out.per_row = Eigen::Map<const Eigen::VectorXd>(loss.data(), rows);
  return out;
}

template <class T, class MakeScratch, class RowFn>
inline LossResult run_rows(const RowPlan& p, std::ptrdiff_t rows, const RowsView<T>& grad,
                           MakeScratch&& make_scratch, RowFn&& row) {
  return run_rows<T>(p, rows, grad, make_scratch, row, [](auto&) {});
}

}  // namespace losskit::detail
