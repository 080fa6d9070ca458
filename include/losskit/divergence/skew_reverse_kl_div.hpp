#pragma once
// Skew reverse KL divergence (DistiLLM), skew lambda = options.skew_alpha in (0, 1), per row,
// with m = (1 - lambda) p + lambda q (live student q):
//   SRKL = KL(q || m) = sum_i q_i log(q_i / m_i)
//   d/dx_j = q_j (log(q_j / m_j) + 1 - lambda q_j / m_j)                        (log-space)
//   d/ds_j = (1/T) (g_j - q_j sum_i g_i)                                        (logits)
// Formed from v = m / q = (1 - lambda) p / q + lambda: SRKL = -sum_i q_i log v_i and
// g_j = q_j (1 - log v_j - lambda / v_j), with log v = log lambda + softplus(z),
// z = log((1 - lambda) / lambda) + log(p / q) (log(p / q) = y - x from the logits) and
// 1 - lambda / v = sigmoid(z). Default lambda 0.1 as in DistiLLM.

#include "losskit/core/checks.hpp"
#include "losskit/core/pair_loss.hpp"
#include "losskit/core/softplus.hpp"

namespace losskit {
namespace detail {

struct SkewReverseKlDiv {
  static constexpr const char* name = "skew_reverse_kl_div";
  static constexpr bool spare_row = false;
  static void check(const char* fn, const DivergenceOptions& o) {
    check_in(fn, "skew_alpha", o.skew_alpha, 0.0, 1.0, true, true);
  }

  template <class T>
  static double row(PairRow<T>& r, T* grad, double scale, const DivergenceOptions& o) {
    r.stats();
    const T log_lam = T(std::log(o.skew_alpha)), z0 = T(std::log1p(-o.skew_alpha) - std::log(o.skew_alpha));
    const auto sums = r.element_pass(grad, scale, [=](auto, const auto& q, const auto&, const auto& x_y) {
      using V = std::decay_t<decltype(q)>;
      const auto q_live = q > V(T(0));
      V sig;
      const V lv = V(log_lam) + softplus_sigmoid(V(z0) - x_y, sig);
      const V term = simd::where(q_live, -q * lv);
      const V gi = simd::where(q_live, q * (sig - lv));
      return std::array<V, 2>{term, gi};
    });
    return sums[0];
  }
};

}  // namespace detail

// losskit::skew_reverse_kl_div(student, teacher[, grad], options) -> LossResult
LOSSKIT_PAIR_LOSS(skew_reverse_kl_div, detail::SkewReverseKlDiv)

}  // namespace losskit
