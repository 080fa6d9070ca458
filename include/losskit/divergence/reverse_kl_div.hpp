#pragma once
// Reverse KL divergence, the student's mode-seeking direction, per row:
//   KL(q || p) = sum_i q_i (x_i - y_i),   q = softmax(s / T), p = softmax(t / T)
//   d/dx_j     = q_j (x_j - y_j) + q_j                      (log-space)
//   d/ds_j     = q_j (x_j - y_j - KL(q || p)) / T           (logits)
// x_i - y_i is formed as (s_i - t_i) / T - (lse_q - lse_p). One pass over memory: the sum
// of q_i (s_i - t_i) rides along with the softmax statistics, which keep its terms
// h_i = q_i (s_i - t_i) in place of the teacher's exps; the gradient
// (q_j (1 - (lse_q - lse_p) - KL) + h_j / T) / T then needs only q and h. Conventions: q_i = 0 contributes
// nothing; q_i > 0 where p_i = 0 gives +inf. Reference: Liger-Kernel LigerJSD and TRL
// generalized_jsd_loss with beta = 1 (which switch to this divergence).

#include "losskit/core/pair_loss.hpp"

namespace losskit {
namespace detail {

struct ReverseKlDiv {
  static constexpr const char* name = "reverse_kl_div";
  static constexpr bool spare_row = false;
  static void check(const char*, const DivergenceOptions&) {}

  template <class T>
  static double row(PairRow<T>& r, T* grad, double scale, const DivergenceOptions&) {
    T* h = r.w.et;  // q (s - t) (q relative to the chunk's shift), in place of the teacher's exps
    r.template stats<1, false>([h](auto, std::size_t i, const auto& s, const auto& t, const auto& q, const auto&) {
      using V = std::decay_t<decltype(s)>;
      const V hv = q * simd::where(q > V(T(0)), s - t);  // q_i = 0 (s_i = -inf): no term, no gradient
      simd::store(h + i, hv);
      return std::array<V, 1>{hv};
    });
    auto& w = r.w;
    const double gap = w.q.lse() - w.p.lse(), it = double(r.inv_t);
    const double kl = w.q.merge(w.chunk, it, -gap);
    if (grad) {
      // log-space g_j = q_j (x_j - y_j + 1), sum_g = KL + sum q; grad = a (g_j - [logits] q_j sum_g)
      const bool logits = !r.student_log_probs;
      const double a = logits ? scale * it : scale, c = 1.0 - gap - (logits ? kl + w.q.total() : 0.0);
      w.defer_grad(
          grad, r.n, r.stream, w.es, h, [&](std::size_t k) { return a * w.q.factor_d(k) * c; },
          [&](std::size_t k) { return a * w.q.factor_d(k) * it; });
    }
    return kl;
  }
};

}  // namespace detail

// losskit::reverse_kl_div(student, teacher[, grad], options) -> LossResult
LOSSKIT_PAIR_LOSS(reverse_kl_div, detail::ReverseKlDiv)

}  // namespace losskit
