#pragma once
// Generalised Jensen-Shannon divergence with the teacher weight beta (Agarwal et al., GKD),
// per row, with M = beta p + (1 - beta) q:
//   JSD_beta = beta KL(p || M) + (1 - beta) KL(q || M)
//   d/dx_j   = (1 - beta) q_j (x_j - log M_j)                                  (log-space)
//   d/ds_j   = ((1 - beta) / T) q_j (x_j - log M_j - KL(q || M))                (logits)
// beta = 0 is the forward KL(p || q) and beta = 1 the reverse KL(q || p): these are special
// cases, as in Liger-Kernel's LigerJSD and TRL's generalized_jsd_loss, not limits (JSD_beta
// itself tends to 0 at both ends, about beta KL(p || q) near 0), so the loss changes scale by
// 1/beta between beta = 1e-3 and beta = 0. At beta = 0.5 it is the symmetric JSD <= log 2.
// Computed from ratios, so no large logs cancel: with r = p / q and u = M / q = beta r + 1 - beta,
//   q (x - log M) = -q log u,   p (y - log M) = p (log r - log u),  log r = y - x,
// log r from the logits and log u = log(1 - beta) + softplus(log r + log(beta / (1 - beta)))
// (no division, no general log).

#include "losskit/core/checks.hpp"
#include "losskit/core/pair_loss.hpp"
#include "losskit/core/softplus.hpp"
#include "losskit/divergence/kl_div.hpp"
#include "losskit/divergence/reverse_kl_div.hpp"

namespace losskit {
namespace detail {

struct Jsd {
  static constexpr const char* name = "jsd";
  static constexpr bool spare_row = false;
  static void check(const char* fn, const DivergenceOptions& o) { check_in(fn, "beta", o.beta, 0.0, 1.0, false, false); }

  template <class T>
  static double row(PairRow<T>& r, T* grad, double scale, const DivergenceOptions& o) {
    if (o.beta == 0.0) return KlDiv::row(r, grad, scale, o);
    if (o.beta == 1.0) return ReverseKlDiv::row(r, grad, scale, o);
    r.stats();
    const T beta = T(o.beta), keep = T(1.0 - o.beta), log_beta = T(std::log(o.beta));
    const T log_keep = T(std::log1p(-o.beta)), z0 = T(std::log(o.beta) - std::log1p(-o.beta));
    const auto sums = r.element_pass(grad, scale, [=](auto, const auto& q, const auto& p, const auto& x_y) {
      using V = std::decay_t<decltype(q)>;
      const auto q_live = q > V(T(0));
      const V log_r = -x_y;                                              // y - x
      const V lu = V(log_keep) + softplus_lanes(log_r + V(z0));          // log(M / q)
      const V qterm = simd::where(q_live, -q * lu);                      // q (x - log M)
      const V pterm = simd::where(p > V(T(0)), p * simd::select(q_live, log_r - lu, V(-log_beta)));
      return std::array<V, 2>{V(beta) * pterm + V(keep) * qterm, V(keep) * qterm};
    });
    return sums[0];
  }
};

}  // namespace detail

// losskit::jsd(student, teacher[, grad], options) -> LossResult   (options.beta, default 0.5)
LOSSKIT_PAIR_LOSS(jsd, detail::Jsd)

}  // namespace losskit
