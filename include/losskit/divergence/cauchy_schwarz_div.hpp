#pragma once
// Cauchy-Schwarz divergence between the teacher and student distributions, per row:
//   D_CS = -log( <p, q>^2 / (|p|^2 |q|^2) ) = log sum p^2 + log sum q^2 - 2 log sum p q  >= 0
// symmetric, 0 iff p = q, invariant to scaling either distribution. In logits, with the
// normalisers cancelling, it is three log-sum-exps (no log 0, no underflow of <p, q> when the
// supports barely overlap):
//   D_CS = LSE(2 t / T) + LSE(2 s / T) - 2 LSE((s + t) / T)
//   d/ds_j = (2 / T) (softmax(2 s / T)_j - softmax((s + t) / T)_j)    (sums to 0)
// With log-probability inputs the same expressions hold with T = 1 (the gradient is then the
// log-space one). Costs three exps per element.

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
    const T* s = r.s;
    const T* t = r.t;
    const T two = T(2) * r.inv_t;
    w.q.reset(r.n);
    w.p.reset(r.n);
    w.m.reset(r.n);
    auto sv = [s](auto tag, std::size_t i) { return simd::load<typename decltype(tag)::type>(s + i); };
    auto tv = [t](auto tag, std::size_t i) { return simd::load<typename decltype(tag)::type>(t + i); };
    auto stv = [s, t](auto tag, std::size_t i) {
      using V = typename decltype(tag)::type;
      return simd::load<V>(s + i) + simd::load<V>(t + i);
    };
    const bool pending = w.pending.row && w.pending.row.n == r.n;
    if (!pending) w.flush();
    for_chunks<T>(r.n, [&](std::size_t k, std::size_t b, std::size_t e) {
      if (pending) w.flush_chunk(k, b, e);  // the previous row's gradient, before its scratch is reused
      w.q.chunk(k, b, e, two, sv, w.es, s);
      w.p.chunk(k, b, e, two, tv, w.et, t);
      w.m.chunk(k, b, e, r.inv_t, stv, w.ex);
    });
    if (pending) w.end_pending();
    const double value = w.q.finish(false) + w.p.finish(false) - 2.0 * w.m.finish(false);
    if (grad) {
      const double a = 2.0 * scale * double(r.inv_t);
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
