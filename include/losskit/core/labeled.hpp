#pragma once
// Losses over logits with one class label per row (spherical Z-loss, LDR, ELR), and the ones
// that keep per-sample state indexed by a sample id: the argument checks they share, on top of
// core/labels.hpp (row-driver fields, index range checks).
//
//   labels   one int32 / int64 per row; a row whose label is ignore_index is skipped (loss 0,
//            gradient 0, not counted); any other label must be a class in [0, classes)
//            (std::out_of_range naming the row and the value)
//   ids      one sample id per row, in [0, num_samples) for every row that counts (ignored rows
//            and rows of weight 0 are never looked up, so padding may carry any id)
// Rows that count update per-sample state; the others never do. A sample id that appears in
// several counted rows of one call is visited once per row, in row order (each visit sees the
// state the previous one left); such a call runs on one thread so that the order holds.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "losskit/core/checks.hpp"
#include "losskit/core/labels.hpp"
#include "losskit/core/pair.hpp"
#include "losskit/core/rows.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"

namespace losskit {

// One sample id per row (int32 or int64), for the losses with per-sample state.
using SampleIds = Labels;

namespace detail {

// Logits and optional gradient seen as rows.
template <class T>
struct LabeledViews {
  RowsView<const T> x;
  RowsView<T> g;
};

// The checks every labeled loss runs first: logits (non-empty, contiguous rows), gradient
// (shape, contiguous rows), labels (one per row, classes or ignore_index), row options.
template <class X, class G, class Options>
inline LabeledViews<scalar_of_t<X>> check_labeled(const char* fn, const X& logits, const Labels& labels, G* grad,
                                                  const Options& o) {
  using T = scalar_of_t<X>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "losskit: scalar type must be float or double");
  LabeledViews<T> v{rows_view(logits), {}};
  check_nonempty(fn, "logits", v.x);
  if (!has_unit_inner_stride(logits)) fail(fn, "'logits' must have contiguous rows (inner stride 1)");
  v.g = checked_grad_view<T>(fn, grad, "logits", v.x);
  check_index_range(fn, "labels", labels, v.x.rows, std::int64_t(v.x.cols), "a class", &o.ignore_index);
  check_row_options(fn, labeled_rows(o, labels), v.x.rows);
  return v;
}

// Sample ids: one per row; every counted row's id in [0, num_samples).
inline void check_sample_ids(const char* fn, const SampleIds& ids, const RowPlan& plan, std::size_t num_samples) {
  if (ids.size() != plan.weight.size())
    fail(fn, "'ids' has ", ids.size(), " entries, expected one per row (", plan.weight.size(), ")");
  for (std::size_t r = 0; r < ids.size(); ++r) {
    if (plan.weight[r] == 0.0) continue;
    const std::int64_t id = ids[r];
    if (id < 0 || std::uint64_t(id) >= num_samples)
      fail_range(fn, "'ids' has ", id, " at row ", r, ", expected a sample id in [0, ", num_samples, ")");
  }
}

// Whether a sample id occurs in more than one counted row.
inline bool repeated_ids(const SampleIds& ids, const RowPlan& plan) {
  std::vector<std::int64_t> seen;
  seen.reserve(ids.size());
  for (std::size_t r = 0; r < ids.size(); ++r)
    if (plan.weight[r] != 0.0) seen.push_back(ids[r]);
  std::sort(seen.begin(), seen.end());
  return std::adjacent_find(seen.begin(), seen.end()) != seen.end();
}

// Prefetching the next row's input during a row's compute passes (which run on cached data)
// keeps memory busy while the core computes, so a kernel with several passes per row still
// streams at close to one pass's speed. A body calls prefetch_at(tag, ahead, i) for its own
// offsets i: one hint per whole batch (64 bytes with AVX-512), nothing in the scalar tail.
template <class Tag, class T>
inline void prefetch_at(Tag, const T* ahead, std::size_t i) noexcept {
  if constexpr (simd::is_batch<typename Tag::type>) simd::prefetch(ahead + i);
}

// The gradient row: out[i] = value(lanes<V>, i) over [0, n), non-temporal with `stream` (as
// store_row), then the fence that orders it before any later store of the row.
template <class T, class Value>
inline void write_grad_row(T* out, std::size_t n, bool stream, Value&& value) {
  store_row<T>(out, 0, n, stream, value);
  if (stream) simd::stream_fence();
}

// The row after r (r itself for the last one): what the passes of row r prefetch.
template <class T>
inline const T* next_row(const RowsView<const T>& x, std::ptrdiff_t r) {
  return x.row(r + 1 < x.rows ? r + 1 : r);
}

}  // namespace detail
}  // namespace losskit
