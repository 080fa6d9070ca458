#pragma once
// Reverse KL divergence, the student's mode-seeking direction, per row:
//   KL(q || p) = sum_i q_i (x_i - y_i),   q = softmax(s / T), p = softmax(t / T)
//   d/dx_j     = q_j (x_j - y_j) + q_j                      (log-space)
//   d/ds_j     = q_j (x_j - y_j - KL(q || p)) / T           (logits)
// x_i - y_i is formed as (s_i - t_i) / T - (lse_q - lse_p). Conventions: q_i = 0 contributes
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
    r.stats();
    const T gap = r.lse_gap();
    T* g = r.w.et;  // p is not needed past the log-ratio: reuse its row for the gradient
    const auto sums = r.template sum_elements<2>([&](auto tag, std::size_t k, std::size_t i) {
      using V = typename decltype(tag)::type;
      const V q = r.template q<V>(k, i);
      const auto live = q > V(T(0));
      const V term = simd::where(live, q * r.template log_ratio<V>(i, gap));
      simd::store(g + i, term + q);
      return std::array<V, 2>{term, term + q};
    });
    if (grad) r.write_grad(grad, scale, g, [](std::size_t) { return 1.0; }, sums[1]);
    return sums[0];
  }
};

}  // namespace detail

// losskit::reverse_kl_div(student, teacher[, grad], options) -> LossResult
LOSSKIT_PAIR_LOSS(reverse_kl_div, detail::ReverseKlDiv)

}  // namespace losskit
