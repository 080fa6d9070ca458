#pragma once
// Temperature knowledge distillation (Hinton, Vinyals, Dean 2015) in one call, per row with
// student logits z, teacher logits a, hard label y, temperature T, weight alpha:
//   CE   = lse(z) - z_y                                   (T = 1)
//   KL   = KL(p || q),  p = softmax(a / T), q = softmax(z / T)
//   L    = alpha CE + (1 - alpha) T^2 KL                  (T^2 only with scale_by_t_squared, on by default)
//   dL/dz_j = alpha (softmax(z)_j - [j = y]) + (1 - alpha) T^2 (q_j - p_j) / T
// alpha weights the hard-label term (conventions differ between code bases: some weight the
// soft term by alpha; here it is the hard one, as in the formula above). KdResult reports the
// two parts reduced like the total (`ce`, `kl`, without alpha and T^2), so
// value = alpha ce + (1 - alpha) T^2 kl.
//
// Rows whose label is ignore_index are skipped by both terms (loss 0, gradient exactly 0, logits
// never read); every other label must be a class in [0, V) (std::out_of_range otherwise).
// Reductions, weights, normalizer, grad_scale, threads: as the divergences (core/rows.hpp).
// The KL part is computed as losskit::kl_div computes it (teacher-weighted logit differences,
// no large logs cancel), with its conventions: 0 log 0 = 0; teacher mass where the student is
// -inf gives +inf. A -inf target logit gives CE = +inf for that row. A term whose weight is 0
// (alpha = 0 or alpha = 1) contributes exactly 0, even when it is infinite.
//
// Numerics: one streaming pass over both rows in chunks of 8 KiB (core/pair.hpp's
// PairRow::stats) takes three softmaxes per chunk (student at 1, student at 1/T, teacher at
// 1/T; two when T = 1) into scratch rows, with the KL sum riding along; the row's gradient (a
// combination of two scratch rows, three when T != 1) is written during the next row's pass
// (pipelined rows). The target-class entry is computed in double
// (softmax_y - 1 cancels as softmax_y -> 1) and set after the row. `grad` may be the student
// (or the teacher) logits.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "losskit/core/checks.hpp"
#include "losskit/core/fast_exp2.hpp"
#include "losskit/core/labels.hpp"
#include "losskit/core/pair.hpp"
#include "losskit/core/rows.hpp"
#include "losskit/core/simd.hpp"
#include "losskit/core/softmax.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"
#include "losskit/divergence/kl_div.hpp"

namespace losskit {

// Options of kd_loss. C++20: {.alpha = 0.1, .temperature = 4.0}.
struct KdLossOptions {
  double alpha = 0.5;               // weight of the hard-label cross entropy; 1 - alpha weights the KL term
  double temperature = 1.0;         // T of the KL term (the cross entropy uses T = 1)
  bool scale_by_t_squared = true;   // Hinton: the KL term times T^2 (keeps its gradient's scale)
  Reduction reduction = Reduction::mean;
  std::int64_t ignore_index = -100;
  Weights weights{};                // optional per-row weights or 0/1 mask
  double grad_scale = 1.0;          // upstream gradient of the reduced loss
  double normalizer = 0.0;          // > 0: divide by this instead (e.g. a global token count)
  int threads = 1;                  // 0: all hardware threads; results never depend on it
};

struct KdResult : LossResult {
  // value = alpha * ce + (1 - alpha) * T^2 * kl (T^2 with scale_by_t_squared), each part reduced
  // like value (same row weights and denominator).
  double ce = 0.0;  // the hard-label cross entropy (T = 1), without alpha
  double kl = 0.0;  // KL(softmax(teacher / T) || softmax(student / T)), without (1 - alpha) T^2
};

namespace detail {

// Same: T == 1, so the student's softmax at T is the one at 1 (two softmaxes, not three).
template <class T, bool Same>
struct KdRow {
  RowsView<const T> s, t;
  Labels labels;
  std::size_t n;
  T inv_t;
  double alpha;  // weight of CE
  double soft;   // (1 - alpha) T^2 (or (1 - alpha)): weight of KL in the loss
  double g_soft; // soft / T: weight of (q - p) in the gradient
  bool stream;
  double* ce_out;
  double* kl_out;

  double operator()(PairScratch<T>& w, std::ptrdiff_t r, T* grad, double scale) const {
    PairRow<T> row{s.row(r), t.row(r), n, inv_t, false, false, w, stream};
    // Softmaxes at 1/T of both rows (es, et), of the student at 1 (ex, w.m; the same as es when
    // T = 1), and the KL sum, in one pass; the previous row's gradient goes out meanwhile.
    row.template stats<1, true, Same ? Third::none : Third::student_at_one>(KlTerm{});
    const ChunkedSoftmax<T>& one = Same ? w.q : w.m;
    const T* e1 = Same ? w.es : w.ex;
    const double lse1 = one.lse(), gap = w.p.lse() - w.q.lse();
    const double kl = w.p.merge(w.chunk, double(inv_t), -gap);
    const std::size_t y = std::size_t(labels[std::size_t(r)]);
    const double ce = lse1 - double(row.s[y]);
    ce_out[r] = ce;
    kl_out[r] = kl;

    if (grad) {
      // g = a1 (softmax(z) - e_y) + a2 (q - p); the target entry in double (softmax_y - 1
      // cancels as softmax_y -> 1), set after the row.
      const double a1 = scale * alpha, a2 = scale * g_soft;
      const std::size_t ky = y / chunk_elems<T>;
      const double qy = double(w.es[y]) * w.q.factor_d(ky), py = double(w.et[y]) * w.p.factor_d(ky);
      const T gy = T(a1 * (double(e1[y]) * one.factor_d(ky) - 1.0) + a2 * (qy - py));
      if constexpr (Same) {  // g = (a1 + a2) q - a2 p
        w.defer_grad(
            grad, n, stream, w.es, w.et, [&](std::size_t k) { return (a1 + a2) * w.q.factor_d(k); },
            [&](std::size_t k) { return -a2 * w.p.factor_d(k); }, y, gy);
      } else {  // g = a2 q - a2 p + a1 softmax(z): three rows
        w.defer_grad(
            grad, n, stream, w.es, w.et, w.ex, [&](std::size_t k) { return a2 * w.q.factor_d(k); },
            [&](std::size_t k) { return -a2 * w.p.factor_d(k); }, [&](std::size_t k) { return a1 * one.factor_d(k); },
            y, gy);
      }
    }
    return (alpha != 0.0 ? alpha * ce : 0.0) + (soft != 0.0 ? soft * kl : 0.0);
  }
};

template <class T>
inline KdResult run_kd_loss(const RowsView<const T>& s, const RowsView<const T>& t, const Labels& labels,
                            const RowsView<T>& g, const KdLossOptions& o) {
  const RowPlan plan = plan_rows(labeled_rows(o, labels), s.rows, s.cols);
  const std::size_t rows = std::size_t(s.rows), n = std::size_t(s.cols);
  const double temp = o.temperature, t2 = o.scale_by_t_squared ? temp * temp : 1.0;
  const double soft = (1.0 - o.alpha) * t2;
  std::vector<double> ce(rows, 0.0), kl(rows, 0.0);
  const bool stream = streaming_output<T>(s.rows, s.cols);
  auto go = [&](auto same) {
    constexpr bool Same = decltype(same)::value;
    const KdRow<T, Same> row{s, t, labels, n, T(1.0 / temp), o.alpha, soft, soft / temp, stream, ce.data(), kl.data()};
    // Rows pipelined as in the divergences (core/pair.hpp): a row's gradient is written during
    // the next row's pass; the last row's by the finish hook.
    const bool pipelined = g.data != nullptr && s.rows > 1;
    return run_rows<T>(
        plan, s.rows, g, [n, pipelined] { return PairScratch<T>(std::ptrdiff_t(n), !Same, pipelined); },
        [&row](PairScratch<T>& w, std::ptrdiff_t r, T* grad, double scale) { return row(w, r, grad, scale); },
        [](PairScratch<T>& w) { w.flush(); });
  };
  KdResult out;
  static_cast<LossResult&>(out) = temp == 1.0 ? go(std::true_type{}) : go(std::false_type{});
  // The parts, reduced like the total: in row order, independent of the thread count.
  const double inv = plan.denominator > 0.0 ? 1.0 / plan.denominator : 0.0;
  for (std::size_t r = 0; r < rows; ++r) {
    const double w = plan.weight[r];
    if (w == 0.0) continue;
    out.ce += w * ce[r] * inv;
    out.kl += w * kl[r] * inv;
  }
  return out;
}

template <class S, class Tt, class G>
inline KdResult kd_loss_impl(const S& student, const Tt& teacher, const Labels& labels, G* grad,
                             const KdLossOptions& o) {
  const char* fn = "kd_loss";
  const auto v = checked_pair_views(fn, "student", student, "teacher", teacher, grad);
  check_in(fn, "alpha", o.alpha, 0.0, 1.0, false, false);
  check_positive(fn, "temperature", o.temperature);
  check_row_options(fn, labeled_rows(o, labels), v.a.rows);
  check_index_range(fn, "labels", labels, v.a.rows, v.a.cols, "a class", &o.ignore_index);
  return run_kd_loss(v.a, v.b, labels, v.g, o);
}

}  // namespace detail

// losskit::kd_loss(student, teacher, labels, grad, options) -> KdResult: the reduced loss (see
// the top of this header), its two parts, and the gradient w.r.t. the student logits written
// into `grad` (any writable row-major matrix of the student's shape). Labels: one int32 or
// int64 per row (a std::vector, an Eigen vector or a losskit::Labels view).
template <class S, class Tt, class G, std::enable_if_t<is_rows_v<G>, int> = 0>
inline KdResult kd_loss(const S& student, const Tt& teacher, const Labels& labels, G&& grad,
                        const KdLossOptions& options = {}) {
  return detail::kd_loss_impl(student, teacher, labels, &grad, options);
}

// Forward only.
template <class S, class Tt>
inline KdResult kd_loss(const S& student, const Tt& teacher, const Labels& labels, const KdLossOptions& options = {}) {
  return detail::kd_loss_impl(student, teacher, labels, static_cast<RowMatrix<scalar_of_t<S>>*>(nullptr), options);
}

}  // namespace losskit
