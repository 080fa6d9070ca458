#pragma once
// Forward KL divergence of the student from the teacher, per row:
//   KL(p || q) = sum_i p_i (y_i - x_i),   p = softmax(t / T), q = softmax(s / T), y = log p, x = log q
//   d/ds_j     = (q_j - p_j) / T                        (student logits)
//   d/dx_j     = -p_j                                   (student given as log-probabilities)
// Computed as  sum_i p_i (t_i - s_i) / T - (lse_p - lse_q), in one pass over both rows (the
// per-chunk sums ride along with the softmax statistics), then one pass writing the gradient.
// Conventions: 0 log 0 = 0 (p_i = 0 contributes nothing, even where s_i = -inf); p_i > 0 where
// q_i = 0 gives +inf. References: torch.nn.functional.kl_div(log_softmax(s/T), softmax(t/T),
// reduction='batchmean') equals our Reduction::mean; Liger-Kernel LigerKLDIVLoss; Hinton's KD
// with scale_by_t_squared.

#include "losskit/core/pair_loss.hpp"

namespace losskit {
namespace detail {

// The per-chunk sum of p_i (t_i - s_i) riding in PairRow::stats (p = 0: no term, even at -inf);
// merged with the teacher's chunk factors it is KL(p || q) + (lse_q - lse_p) / T.
struct KlTerm {
  template <class Tag, class V>
  std::array<V, 1> operator()(Tag, std::size_t, const V& s, const V& t, const V&, const V& p) const {
    return {simd::where(p > V(simd::scalar_t<V>(0)), p * (t - s))};
  }
};

struct KlDiv {
  static constexpr const char* name = "kl_div";
  static constexpr bool spare_row = false;
  static void check(const char*, const DivergenceOptions&) {}

  template <class T>
  static double row(PairRow<T>& r, T* grad, double scale, const DivergenceOptions&) {
    r.template stats<1>(KlTerm{});
    const T* et = r.w.et;
    const double gap = r.w.p.lse() - r.w.q.lse();
    const double kl = r.w.p.merge(r.w.chunk, double(r.inv_t), -gap);
    if (grad) r.write_grad(grad, scale, et, [&](std::size_t k) { return -r.w.p.factor_d(k); }, -r.w.p.total());
    return kl;
  }
};

}  // namespace detail

// losskit::kl_div(student, teacher[, grad], options) -> LossResult
LOSSKIT_PAIR_LOSS(kl_div, detail::KlDiv)

}  // namespace losskit
