#pragma once
// Scalar (double) helpers that never overflow where the exact value is representable, for the
// per-sequence preference losses (O(batch) scalar work). softplus(x) and sigmoid(x) themselves
// come from core/softplus.hpp; this header adds what builds on them:
//
//   log_sigmoid(x)  = log s(x)        = -softplus(-x)                       (finite for finite x)
//   sigmoid_grad(x) = s(x) s(-x)      = e^-|x| / (1 + e^-|x|)^2             (0 only on underflow)
//   log1mexp(x)     = log(1 - e^x), x <= 0: x < -ln 2 -> log1p(-e^x), else log(-expm1(x))
//                     (Maechler 2012; TRL's `log1mexp`): full relative accuracy on both sides of
//                     -ln 2; -inf at x = 0, NaN for x > 0
//   logaddexp(a, b) = log(e^a + e^b)  = max + log1p(e^-|a - b|); -inf when both are -inf, +inf
//                     when either is +inf
// NaN in gives NaN out.

#include <cmath>

#include "losskit/core/softplus.hpp"

namespace losskit::detail {

inline double log_sigmoid(double x) noexcept { return -softplus(-x); }

inline double sigmoid_grad(double x) noexcept {
  const double e = std::exp(-std::fabs(x));
  return e / ((1.0 + e) * (1.0 + e));
}

inline double log1mexp(double x) noexcept {
  constexpr double minus_ln2 = -0.693147180559945309417232121458176568;
  return x < minus_ln2 ? std::log1p(-std::exp(x)) : std::log(-std::expm1(x));
}

inline double logaddexp(double a, double b) noexcept {
  constexpr double ln2 = 0.693147180559945309417232121458176568;
  if (a == b) return a + ln2;  // also two equal infinities
  const double m = a > b ? a : b;
  return m + std::log1p(std::exp(-std::fabs(a - b)));  // NaN anywhere gives NaN
}

}  // namespace losskit::detail
