#pragma once
// Cauchy-Schwarz divergence between the teacher and student distributions, per row:
//   D_CS = -log( <p, q>^2 / (|p|^2 |q|^2) ) = log sum p^2 + log sum q^2 - 2 log sum p q  >= 0
// symmetric, 0 iff p = q, invariant to scaling either distribution. In logits, with the
// normalisers cancelling, it is three log-sum-exps (no log 0, no underflow of <p, q> when the
// supports barely overlap):
//   D_CS = LSE(2 t / T) + LSE(2 s / T) - 2 LSE((s + t) / T)
//   d/ds_j = (2 / T) (softmax(2 s / T)_j - softmax((s + t) / T)_j)    (sums to 0)
// With log-probability inputs the same expressions hold with T = 1 (the gradient is then the
// log-space one). Costs three exps per element, in one loop (PairRow::stats with Third::sum).

#include "losskit/core/pair_loss.hpp"

namespace losskit {
namespace detail {

struct CauchySchwarzDiv {
  static constexpr const char* name = "cauchy_schwarz_div";
  static constexpr bool spare_row = true;
  static void check(const char*, const DivergenceOptions&) {}

  template <class T>
  static double row(PairRow<T>& r, T* grad, double scale, const DivergenceOptions&) {
    auto& w = r.w;
    // One loop per chunk: softmax(2 s / T), softmax(2 t / T) (the loop's temperature is T / 2)
    // and softmax((s + t) / T) as the third. Log-probability inputs are softmaxed all the same.
    const T inv_t = r.inv_t;
    r.inv_t = T(2) * inv_t;
    r.template stats<0, true, Third::sum>([](auto, std::size_t, const auto&, const auto&, const auto&, const auto&) {
      return std::array<int, 0>{};
    });
    r.inv_t = inv_t;
    const double value = w.q.finish(false) + w.p.finish(false) - 2.0 * w.m.finish(false);
    if (grad) {
      const double a = 2.0 * scale * double(inv_t);
      w.defer_grad(
          grad, r.n, r.stream, w.ex, [&](std::size_t k) { return a * w.q.factor_d(k); },
          [&](std::size_t k) { return -a * w.m.factor_d(k); });
    }
    return value;
  }
};

}  // namespace detail

// losskit::cauchy_schwarz_div(student, teacher[, grad], options) -> LossResult
LOSSKIT_PAIR_LOSS(cauchy_schwarz_div, detail::CauchySchwarzDiv)

}  // namespace losskit
