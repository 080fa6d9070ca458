#pragma once
// PS-KD: Progressive Self-Knowledge Distillation (Kim, Ji, Yoon, Hwang, ICCV 2021; reference code
// lgcnsai/PS-KD-Pytorch, main.py and loss/pskd_loss.py). The model distils from its own
// predictions of the previous epoch. State: one row per training sample (dataset index), C
// classes: P_prev[idx], the softmax (T = 1) of the last training forward pass on that sample.
//   alpha_t  = alpha_T (epoch + 1) / E     (epoch 0-based; defaults alpha_T = 0.8, E = 300)
//   target_b = (1 - alpha_t) onehot(y_b) + alpha_t P_prev[idx_b]
//   loss     = soft_cross_entropy(logits, targets): batch mean of -sum_c target_bc log softmax(z_b)_c
//   dL/dz_b  = (softmax(z_b) - target_b) / B
//   after the step: P_prev[idx_b] = softmax(z_b)   (detached; the reference's all_predictions)
// A sample's row counts as one-hot of its label until its first update: the reference writes
// one-hot rows at epoch 0 before building the targets, which is the same thing when every
// sample is first seen in epoch 0 (and also covers samples first seen later). After epoch
// E - 1, alpha_t stays at alpha_T (the reference never runs past E).
//
// ProgressiveTargets holds the table (N x C, scalar type T, float by default as in the
// reference) and builds the targets of a batch; `loss()` does a whole step: targets, table
// update, soft cross entropy and its gradient. With distinct sample indices, logits of the
// table's type and T = 1 (the common case) that is one pass: soft_cross_entropy reads the
// targets straight from the table (detail::ProgressiveSource) and stores each row's softmax
// back while it writes the gradient, bit for bit what the three-pass path gives. Otherwise the
// targets are built first (in the gradient buffer, which soft_cross_entropy then overwrites; in
// a workspace when the gradient is the logits or absent) and the table is updated before the
// loss.
// Labels must be classes in [0, C) (no ignore_index: every sample has a label), indices in
// [0, N) (std::out_of_range otherwise); a batch may repeat an index: its targets come from the
// table as it was before the call, and the last of its rows is stored. The table work (targets,
// then the update: only the last row of each index is stored, so rows never race) and
// soft_cross_entropy run on options.threads threads, with the same bits for any count.
// save() / restore() round-trip the state exactly.
//
// Self-distillation with ground-truth guidance (Borup & Andersen, "Even your Teacher Needs
// Guidance: Ground-Truth Targets Dampen Regularization Imposed by Self-Distillation", NeurIPS
// 2021): targets = w_gt onehot(y) + (1 - w_gt) softmax(teacher / T), built by
// self_distillation_targets(); the loss is again soft_cross_entropy over them.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <istream>
#include <ostream>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "losskit/classification/soft_cross_entropy.hpp"
#include "losskit/core/checks.hpp"
#include "losskit/core/labels.hpp"
#include "losskit/core/parallel.hpp"
#include "losskit/core/pending.hpp"
#include "losskit/core/rows.hpp"
#include "losskit/core/simd.hpp"
#include "losskit/core/row_softmax.hpp"
#include "losskit/core/scratch.hpp"
#include "losskit/core/softmax.hpp"
#include "losskit/core/state_io.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"

namespace losskit {
namespace detail {

template <class X>
inline auto checked_rows(const char* fn, const char* arg, const X& x, std::ptrdiff_t rows, std::ptrdiff_t cols) {
  const auto v = rows_view(x);
  if (v.rows != rows || v.cols != cols)
    fail(fn, "'", arg, "' has shape ", v.rows, "x", v.cols, ", expected ", rows, "x", cols);
  if (!has_unit_inner_stride(x)) fail(fn, "'", arg, "' must have contiguous rows (inner stride 1)");
  return v;
}

// PS-KD's targets as a soft_cross_entropy source (classification/soft_cross_entropy.hpp), read
// straight from the table: as ProgressiveTargets::targets() builds them,
// t_i = alpha_t prev_i, t_y += 1 - alpha_t (one-hot before the sample's first prediction), with
// the same roundings, so the loss is bit for bit soft_cross_entropy over the built targets. The
// gradient pass then stores the row's softmax over prev (read before, index by index): one pass
// over the logits and one over the table row, where building the targets, storing the
// predictions and the loss took three. Needs distinct indices (a row's table entry is read and
// written by that row only) and T = 1 (the prediction is the softmax at T = 1).
template <class T>
struct ProgressiveSource {
  static constexpr bool keeps_softmax = true;
  T* table;
  std::ptrdiff_t stride;
  Labels index, label;
  const std::uint8_t* seen;
  T mix, hot;  // alpha_t, 1 - alpha_t
  bool stream;
  struct Row {
    const T* prev;  // nullptr: no prediction yet (one-hot target)
    T* out;
    std::size_t y;
    T mix, hot;
    bool nt, stream;
    template <class V>
    V at(std::size_t i) const {
      const V t = prev ? V(mix) * simd::load<V>(prev + i) : V(T(0));
      const T h = hot;
      return simd::map_index(t, i, y, [h](T v) { return v + h; });  // the label's one-hot part
    }
    void prefetch(std::size_t i) const {
      if (prev) simd::prefetch(prev + i);
    }
    template <class V>
    void keep(std::size_t i, const V& softmax) const {
      put_lanes(out, i, softmax, nt);
    }
    bool streams() const { return stream; }
  };
  Row row(std::ptrdiff_t r) const {
    const std::int64_t idx = index[std::size_t(r)];
    T* o = table + idx * stride;
    const bool has = seen[idx] != 0;
    return {has ? o : nullptr, o, std::size_t(label[std::size_t(r)]), has ? mix : T(0), has ? hot : T(1),
            streamable(o, stream), stream};
  }
};

}  // namespace detail

// Options of self_distillation_targets. There is no canonical gt_weight (the paper studies the
// whole range); 0.5 weighs both equally.
struct SelfDistillationTargetOptions {
  double gt_weight = 0.5;    // w_gt in [0, 1]: weight of the one-hot ground truth
  double temperature = 1.0;  // the teacher logits are divided by T
};

// out = w_gt onehot(labels) + (1 - w_gt) softmax(teacher / T), row by row. `out`: any writable
// row-major matrix of the teacher's shape and scalar type (it may be the teacher itself). Every
// label must be a class in [0, C) (std::out_of_range otherwise).
template <class X, class O>
inline void self_distillation_targets(const X& teacher, const Labels& labels, O&& out,
                                      const SelfDistillationTargetOptions& o = {}) {
  using U = scalar_of_t<X>;
  static_assert(std::is_same_v<U, scalar_of_t<O>>, "losskit: 'out' must have the teacher's scalar type");
  const char* fn = "self_distillation_targets";
  const auto tv = rows_view(teacher);
  detail::check_nonempty(fn, "teacher", tv);
  if (!detail::has_unit_inner_stride(teacher)) detail::fail(fn, "'teacher' must have contiguous rows (inner stride 1)");
  const auto ov = mutable_rows_view(out);
  detail::check_same_shape(fn, "out", ov, "teacher", tv);
  if (!detail::has_unit_inner_stride(out)) detail::fail(fn, "'out' must have contiguous rows (inner stride 1)");
  detail::check_in(fn, "gt_weight", o.gt_weight, 0.0, 1.0, false, false);
  detail::check_positive(fn, "temperature", o.temperature);
  detail::check_index_range(fn, "labels", labels, tv.rows, tv.cols, "a class");
  detail::ChunkedSoftmax<U> sm;
  U* ex = detail::scratch<U>(std::size_t(tv.cols));  // a separate row: `out` may be the teacher
  for (std::ptrdiff_t r = 0; r < tv.rows; ++r) {
    U* dst = ov.row(r);
    detail::softmax_row(tv.row(r), std::size_t(tv.cols), U(1.0 / o.temperature), dst, ex, sm, 1.0 - o.gt_weight);
    dst[labels[std::size_t(r)]] += U(o.gt_weight);
  }
}

// The PS-KD state and targets. T: the table's scalar type (float, as the reference; or double).
template <class T = float>
class ProgressiveTargets {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "losskit: ProgressiveTargets<float or double>");

 public:
  // num_samples: the training set size N (dataset indices are in [0, N)); num_classes: C.
  ProgressiveTargets(std::int64_t num_samples, std::int64_t num_classes, double alpha_T = 0.8,
                     std::int64_t end_epoch = 300) {
    validate("ProgressiveTargets", num_samples, num_classes, alpha_T, end_epoch);
    n_ = num_samples;
    c_ = num_classes;
    alpha_T_ = alpha_T;
    end_epoch_ = end_epoch;
    table_ = RowMatrix<T>::Zero(n_, c_);
    seen_.assign(std::size_t(n_), 0);
  }

  std::int64_t num_samples() const noexcept { return n_; }
  std::int64_t num_classes() const noexcept { return c_; }
  double alpha_T() const noexcept { return alpha_T_; }
  std::int64_t end_epoch() const noexcept { return end_epoch_; }

  // alpha_t = alpha_T (epoch + 1) / E for epoch in [0, E); alpha_T from then on.
  double alpha(std::int64_t epoch) const {
    if (epoch < 0) detail::fail("ProgressiveTargets::alpha", "'epoch' must be >= 0, got ", epoch);
    return alpha_T_ * double(std::min(epoch + 1, end_epoch_)) / double(end_epoch_);
  }

  // Whether sample idx has a stored prediction (else its previous prediction is one-hot).
  bool has_prediction(std::int64_t idx) const {
    if (idx < 0 || idx >= n_)
      detail::fail_range("ProgressiveTargets::has_prediction", "'idx' is ", idx, ", expected a sample index in [0, ", n_, ")");
    return seen_[std::size_t(idx)] != 0;
  }
  // The stored predictions, N x C (rows of samples without one are 0).
  const RowMatrix<T>& predictions() const noexcept { return table_; }

  // out (B x C, float or double) = (1 - alpha_t) onehot(labels_b) + alpha_t P_prev[indices_b].
  template <class O>
  void targets(const Labels& indices, const Labels& labels, std::int64_t epoch, O&& out) const {
    const char* fn = "ProgressiveTargets::targets";
    const auto ov = checked_out(fn, out, std::ptrdiff_t(indices.size()));
    check_batch(fn, indices, labels, epoch);
    build(indices, labels, epoch, ov);
  }
  RowMatrix<T> targets(const Labels& indices, const Labels& labels, std::int64_t epoch) const {
    RowMatrix<T> out(std::ptrdiff_t(indices.size()), c_);
    targets(indices, labels, epoch, out);
    return out;
  }

  // Stores softmax(logits_b) (T = 1) as sample indices_b's prediction (B x C logits, float or
  // double). A repeated index keeps its last row.
  template <class X>
  void update(const Labels& indices, const X& logits) {
    const char* fn = "ProgressiveTargets::update";
    const auto xv = detail::checked_rows(fn, "logits", logits, std::ptrdiff_t(indices.size()), c_);
    detail::check_index_range(fn, "indices", indices, xv.rows, n_, "a sample index");
    store(indices, xv);
  }

  // One PS-KD step: targets from the stored predictions, then the table update from these
  // logits, then soft_cross_entropy(logits, targets, grad, options) (grad may be the logits).
  // Every argument is checked first: a call that throws changes nothing.
  template <class X, class G, std::enable_if_t<is_rows_v<G>, int> = 0>
  LossResult loss(const X& logits, const Labels& indices, const Labels& labels, std::int64_t epoch, G&& grad,
                  const SoftCrossEntropyOptions& options = {}) {
    return step(logits, indices, labels, epoch, &grad, options);
  }
  // The same without a gradient (the table is still updated).
  template <class X>
  LossResult loss(const X& logits, const Labels& indices, const Labels& labels, std::int64_t epoch,
                  const SoftCrossEntropyOptions& options = {}) {
    return step(logits, indices, labels, epoch, static_cast<RowMatrix<scalar_of_t<X>>*>(nullptr), options);
  }

  // Binary state (core/state_io.hpp; native byte order): the tag LKPSKD01, the scalar size,
  // N, C, alpha_T, E, the has-a-prediction flags, the table. restore() replaces this object's
  // whole state (sizes included) with a saved one, or throws std::invalid_argument and changes
  // nothing.
  void save(std::ostream& os) const {
    const std::uint32_t bytes = sizeof(T);
    detail::write_raw(os, kTag, 8);
    detail::write_raw(os, &bytes, sizeof bytes);
    detail::write_raw(os, &n_, sizeof n_);
    detail::write_raw(os, &c_, sizeof c_);
    detail::write_raw(os, &alpha_T_, sizeof alpha_T_);
    detail::write_raw(os, &end_epoch_, sizeof end_epoch_);
    detail::write_raw(os, seen_.data(), seen_.size());
    detail::write_raw(os, table_.data(), std::size_t(table_.size()) * sizeof(T));
    if (!os) throw std::runtime_error("losskit::ProgressiveTargets::save: the stream failed");
  }
  void restore(std::istream& is) {
    const char* fn = "ProgressiveTargets::restore";
    detail::read_tag(fn, is, kTag, "a saved ProgressiveTargets state");
    std::uint32_t bytes = 0;
    std::int64_t n = 0, c = 0, e = 0;
    double a = 0.0;
    detail::read_raw(fn, is, &bytes, sizeof bytes);
    detail::read_raw(fn, is, &n, sizeof n);
    detail::read_raw(fn, is, &c, sizeof c);
    detail::read_raw(fn, is, &a, sizeof a);
    detail::read_raw(fn, is, &e, sizeof e);
    if (bytes != sizeof(T))
      detail::fail(fn, "the state was saved with ", bytes, "-byte scalars, this object stores ", sizeof(T), "-byte ones");
    validate(fn, n, c, a, e);
    std::vector<std::uint8_t> seen(std::size_t(n), 0);
    RowMatrix<T> table(n, c);
    detail::read_raw(fn, is, seen.data(), seen.size());
    detail::read_raw(fn, is, table.data(), std::size_t(table.size()) * sizeof(T));
    n_ = n;
    c_ = c;
    alpha_T_ = a;
    end_epoch_ = e;
    seen_ = std::move(seen);
    table_ = std::move(table);
  }

 private:
  static constexpr char kTag[9] = "LKPSKD01";

  static void validate(const char* fn, std::int64_t n, std::int64_t c, double a, std::int64_t e) {
    if (n < 0) detail::fail(fn, "'num_samples' must be >= 0, got ", n);
    if (c < 1) detail::fail(fn, "'num_classes' must be >= 1, got ", c);
    detail::check_in(fn, "alpha_T", a, 0.0, 1.0, false, false);
    if (e < 1) detail::fail(fn, "'end_epoch' must be >= 1, got ", e);
  }
  template <class O>
  auto checked_out(const char* fn, O& out, std::ptrdiff_t rows) const {
    using U = scalar_of_t<O>;
    static_assert(std::is_same_v<U, float> || std::is_same_v<U, double>, "losskit: targets must be float or double");
    const auto ov = mutable_rows_view(out);
    if (ov.rows != rows || ov.cols != c_)
      detail::fail(fn, "'out' has shape ", ov.rows, "x", ov.cols, ", expected ", rows, "x", c_);
    if (!detail::has_unit_inner_stride(out)) detail::fail(fn, "'out' must have contiguous rows (inner stride 1)");
    return ov;
  }
  void check_batch(const char* fn, const Labels& indices, const Labels& labels, std::int64_t epoch) const {
    if (epoch < 0) detail::fail(fn, "'epoch' must be >= 0, got ", epoch);
    const auto rows = std::ptrdiff_t(indices.size());
    detail::check_index_range(fn, "indices", indices, rows, n_, "a sample index");
    detail::check_index_range(fn, "labels", labels, rows, c_, "a class");
  }

  template <class U>
  void build(const Labels& indices, const Labels& labels, std::int64_t epoch, const RowsView<U>& out,
             int threads = 1) const {
    detail::parallel_ranges(out.rows, detail::resolve_threads(threads, out.rows),
                            [&](int, std::ptrdiff_t rb, std::ptrdiff_t re) { build_rows(indices, labels, epoch, out, rb, re); });
  }
  template <class U>
  void build_rows(const Labels& indices, const Labels& labels, std::int64_t epoch, const RowsView<U>& out,
                  std::ptrdiff_t rb, std::ptrdiff_t re) const {
    const double a = alpha(epoch);
    const U keep = U(a);
    for (std::ptrdiff_t b = rb; b < re; ++b) {
      const auto idx = std::ptrdiff_t(indices[std::size_t(b)]);
      const auto y = std::size_t(labels[std::size_t(b)]);
      U* dst = out.row(b);
      const T* prev = table_.row(idx).data();
      if (seen_[std::size_t(idx)]) {
        for (std::ptrdiff_t c = 0; c < c_; ++c) dst[c] = keep * U(prev[c]);
        dst[y] += U(1.0 - a);
      } else {
        for (std::ptrdiff_t c = 0; c < c_; ++c) dst[c] = U(0);
        dst[y] = U(1);
      }
    }
  }

  // Stores the softmax of each index's last row among the rows with `only[b]` (all rows when
  // `only` is empty); the rows stored are distinct table rows, so threads never write the same one.
  template <class U>
  void store(const Labels& indices, const RowsView<const U>& x, int threads = 1,
             const std::vector<unsigned char>& only = {}) {
    std::vector<std::pair<std::int64_t, std::ptrdiff_t>> order;
    for (std::ptrdiff_t b = 0; b < x.rows; ++b)
      if (only.empty() || only[std::size_t(b)]) order.push_back({indices[std::size_t(b)], b});
    std::sort(order.begin(), order.end());
    std::vector<unsigned char> last(std::size_t(x.rows), 0);
    for (std::size_t k = 0; k < order.size(); ++k)
      if (k + 1 == order.size() || order[k + 1].first != order[k].first) last[std::size_t(order[k].second)] = 1;
    detail::parallel_ranges(x.rows, detail::resolve_threads(threads, x.rows), [&](int, std::ptrdiff_t rb, std::ptrdiff_t re) {
      detail::ChunkedSoftmax<U> sm;
      U* ex = detail::scratch<U>(std::size_t(c_));
      for (std::ptrdiff_t b = rb; b < re; ++b) {
        if (!last[std::size_t(b)]) continue;
        const auto idx = std::ptrdiff_t(indices[std::size_t(b)]);
        detail::softmax_row(x.row(b), std::size_t(c_), U(1), table_.row(idx).data(), ex, sm);
        seen_[std::size_t(idx)] = 1;
      }
    });
  }

  static bool distinct(const Labels& indices) {
    std::vector<std::int64_t> v(indices.size());
    for (std::size_t b = 0; b < v.size(); ++b) v[b] = indices[b];
    std::sort(v.begin(), v.end());
    return std::adjacent_find(v.begin(), v.end()) == v.end();
  }

  template <class X, class G>
  LossResult step(const X& logits, const Labels& indices, const Labels& labels, std::int64_t epoch, G* grad,
                  const SoftCrossEntropyOptions& o) {
    using U = scalar_of_t<X>;
    const char* fn = "ProgressiveTargets::loss";
    const auto xv = detail::checked_rows(fn, "logits", logits, std::ptrdiff_t(indices.size()), c_);
    check_batch(fn, indices, labels, epoch);
    detail::check_soft_cross_entropy_options(fn, o, xv.rows, xv.cols);
    if constexpr (std::is_same_v<U, T>) {
      if (o.temperature == 1.0 && distinct(indices)) return fused_step(xv, indices, labels, epoch, grad, o);
    }
    // The targets go into the gradient buffer (soft_cross_entropy may write its gradient over
    // its targets), or, without one or when it is the logits, into a workspace kept for the
    // next call.
    const RowsView<U> gv = detail::checked_grad_view<U>(fn, grad, "logits", xv);
    const bool in_grad = grad && gv.data != xv.data;
    RowMatrix<U>& ws = workspace<U>();
    if (!in_grad) ws.resize(xv.rows, c_);
    build(indices, labels, epoch, in_grad ? gv : mutable_rows_view(ws), o.threads);
    store(indices, xv, o.threads);  // before the loss: grad may overwrite the logits
    if (in_grad) return soft_cross_entropy(logits, *grad, *grad, o);
    return grad ? soft_cross_entropy(logits, ws, *grad, o) : soft_cross_entropy(logits, ws, o);
  }

  // The step in one pass over the logits and the table rows (detail::ProgressiveSource). Rows
  // the loss skips (ignore_index, weight 0) still store their prediction (softmax_row).
  template <class G>
  LossResult fused_step(const RowsView<const T>& xv, const Labels& indices, const Labels& labels, std::int64_t epoch,
                        G* grad, const SoftCrossEntropyOptions& o) {
    const RowsView<T> gv = detail::checked_grad_view<T>("ProgressiveTargets::loss", grad, "logits", xv);
    const double a = alpha(epoch);
    const detail::ProgressiveSource<T> src{table_.data(), std::ptrdiff_t(c_), indices, labels, seen_.data(),
                                           T(a), T(1.0 - a), detail::streaming_output<T>(xv.rows, xv.cols)};
    // Rows the loss skips first: their gradient (zero) may overwrite their logits.
    const detail::RowPlan plan = detail::plan_rows(o, xv.rows, xv.cols);
    std::vector<unsigned char> skipped(std::size_t(xv.rows), 0);
    bool any = false;
    for (std::size_t b = 0; b < skipped.size(); ++b) any = (skipped[b] = plan.weight[b] == 0.0) || any;
    if (any) store(indices, xv, o.threads, skipped);
    const LossResult res = detail::run_soft_cross_entropy(xv, src, gv, o);
    for (std::size_t b = 0; b < skipped.size(); ++b) seen_[std::size_t(indices[b])] = 1;
    return res;
  }

  template <class U>
  RowMatrix<U>& workspace() {
    if constexpr (std::is_same_v<U, float>) {
      return ws_float_;
    } else {
      return ws_double_;
    }
  }

  std::int64_t n_ = 0, c_ = 0;
  double alpha_T_ = 0.8;
  std::int64_t end_epoch_ = 300;
  RowMatrix<T> table_;
  std::vector<std::uint8_t> seen_;
  RowMatrix<float> ws_float_;  // targets of loss() without a separate gradient buffer
  RowMatrix<double> ws_double_;
};

}  // namespace losskit
