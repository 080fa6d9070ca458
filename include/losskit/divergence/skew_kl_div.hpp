#pragma once
// Skew KL divergence (DistiLLM, Ko et al. 2024), skew lambda = options.skew_alpha in (0, 1),
// per row, with the mixture m = lambda p + (1 - lambda) q built from the live student q:
//   SKL = KL(p || m) = sum_i p_i log(p_i / m_i)
//   d/dx_j = -(1 - lambda) q_j p_j / m_j                                        (log-space)
//   d/ds_j = (1/T) (g_j - q_j sum_i g_i)  with g the log-space gradient         (logits)
// Formed from w = m / p = lambda + (1 - lambda) q / p, so SKL = -sum_i p_i log w_i and
// g_j = -(1 - lambda) q_j / w_j = -p_j sigmoid(z_j), with log w = log lambda + softplus(z),
// z = log((1 - lambda) / lambda) - log(p / q) and log(p / q) = y - x from the logits.
// Finite whenever lambda > 0. DistiLLM's own code returns the
// cross-entropy form -sum p log m (same gradient, value larger by the entropy H(p)); losskit
// returns the divergence itself (0 for identical inputs). Default lambda 0.1 as in DistiLLM.

#include "losskit/core/checks.hpp"
#include "losskit/core/pair_loss.hpp"
#include "losskit/core/softplus.hpp"

namespace losskit {
namespace detail {

struct SkewKlDiv {
  static constexpr const char* name = "skew_kl_div";
  static constexpr bool spare_row = false;
  static void check(const char* fn, const DivergenceOptions& o) {
    check_in(fn, "skew_alpha", o.skew_alpha, 0.0, 1.0, true, true);
  }

  template <class T>
  static double row(PairRow<T>& r, T* grad, double scale, const DivergenceOptions& o) {
    r.stats();
    const T log_lam = T(std::log(o.skew_alpha)), z0 = T(std::log1p(-o.skew_alpha) - std::log(o.skew_alpha));
    const auto sums = r.element_pass(grad, scale, [=](auto, const auto&, const auto& p, const auto& x_y) {
      using V = std::decay_t<decltype(p)>;
      const auto p_live = p > V(T(0));
      V sig;
      const V log_w = V(log_lam) + softplus_sigmoid(V(z0) + x_y, sig);
      const V term = simd::where(p_live, -p * log_w);
      const V gi = simd::where(p_live, -p * sig);
      return std::array<V, 2>{term, gi};
    });
    return sums[0];
  }
};

}  // namespace detail

// losskit::skew_kl_div(student, teacher[, grad], options) -> LossResult  (options.skew_alpha)
LOSSKIT_PAIR_LOSS(skew_kl_div, detail::SkewKlDiv)

}  // namespace losskit
