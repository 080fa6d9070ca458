#pragma once
// Total variation distance, per row:
//   TVD = 1/2 sum_i |p_i - q_i|  in [0, 1]
//   d/dq_j = 1/2 sign(q_j - p_j), with ties taking -1/2 as Liger-Kernel's LigerTVDLoss does
//   d/dx_j = q_j d/dq_j (log-space);  d/ds_j = (1/T)(g_j - q_j sum_i g_i) (logits)
// Liger-Kernel takes probabilities; losskit takes logits (or log-probabilities) like the other
// divergences. DistiLLM's tv_distance is the same value.

#include "losskit/core/pair_loss.hpp"

namespace losskit {
namespace detail {

struct Tvd {
  static constexpr const char* name = "tvd";
  static constexpr bool spare_row = false;
  static void check(const char*, const DivergenceOptions&) {}

  template <class T>
  static double row(PairRow<T>& r, T* grad, double scale, const DivergenceOptions&) {
    r.stats();
    // With D = sum over the classes where q > p of (q - p):
    //   1/2 sum |p - q| = D + (sum p - sum q) / 2   (= D for logits: the two halves are equal)
    const auto sums = r.element_pass(grad, scale, [](auto, const auto& q, const auto& p, const auto&) {
      using V = std::decay_t<decltype(q)>;
      const auto up = q > p;
      const V half(T(0.5));
      return std::array<V, 2>{simd::where(up, q - p), q * simd::select(up, half, -half)};
    });
    return sums[0] + 0.5 * (r.w.p.total() - r.w.q.total());
  }
};

}  // namespace detail

// losskit::tvd(student, teacher[, grad], options) -> LossResult
LOSSKIT_PAIR_LOSS(tvd, detail::Tvd)

}  // namespace losskit
