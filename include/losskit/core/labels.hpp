#pragma once
// Integer arguments indexed by row: hard labels (temperature KD, PS-KD targets) and dataset
// indices (PS-KD's prediction table). The range check every such argument gets, and the
// row-driver fields for kernels that take the labels as an argument rather than in their
// options (plan_rows / check_row_options then see them as the ignore mask).

#include <cstddef>
#include <cstdint>

#include "losskit/core/checks.hpp"
#include "losskit/core/types.hpp"

namespace losskit::detail {

// The fields plan_rows and check_row_options read, with `labels` given separately.
struct LabeledRows {
  Reduction reduction;
  Labels labels;
  std::int64_t ignore_index;
  Weights weights;
  double grad_scale;
  double normalizer;
  int threads;
};

template <class Options>
inline LabeledRows labeled_rows(const Options& o, const Labels& labels) {
  return {o.reduction, labels, o.ignore_index, o.weights, o.grad_scale, o.normalizer, o.threads};
}

// `values` must have one entry per row, each in [0, size) or, when `ignore` is given, equal to
// *ignore. Lengths: std::invalid_argument; values: std::out_of_range naming the row and value:
//   losskit::kd_loss: 'labels' has 12 at row 3, expected a class in [0, 10) or ignore_index (-100)
inline void check_index_range(const char* fn, const char* arg, const Labels& values, std::ptrdiff_t rows,
                              std::int64_t size, const char* what, const std::int64_t* ignore = nullptr) {
  if (std::ptrdiff_t(values.size()) != rows)
    fail(fn, "'", arg, "' has ", values.size(), " entries, expected one per row (", rows, ")");
  for (std::size_t r = 0; r < values.size(); ++r) {
    const std::int64_t v = values[r];
    if (ignore && v == *ignore) continue;
    if (v < 0 || v >= size) {
      if (ignore)
        fail_range(fn, "'", arg, "' has ", v, " at row ", r, ", expected ", what, " in [0, ", size,
                   ") or ignore_index (", *ignore, ")");
      fail_range(fn, "'", arg, "' has ", v, " at row ", r, ", expected ", what, " in [0, ", size, ")");
    }
  }
}

}  // namespace losskit::detail
