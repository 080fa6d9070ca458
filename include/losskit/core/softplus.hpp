#pragma once
// Smooth elementwise math: softplus and its sigmoid, log1p on [0, 1], and a faster log for
// float batches. Used by the LDR losses, and by the mixture divergences (jsd, skew_kl_div,
// skew_reverse_kl_div), where log(a + b e^z) = log a + softplus(z + log(b / a)) replaces a
// division and a general log.
//
// softplus(x) = log(1 + e^x) and its derivative sigmoid(x), without overflow for any x:
//   t = e^{-|x|},  softplus = max(x, 0) + log1p(t),  sigmoid = 1 / (1 + t) (x >= 0), t / (1 + t) (x < 0)
// softplus(-inf) = 0, sigmoid(-inf) = 0; NaN gives NaN.
// float (batches and scalars alike): t from exp2_ftz, log1p(t) on [0, 1] as t q(t) with q a
// degree-8 polynomial (near-minimax fit of log1p on [0, 1]: 5e-9 in exact arithmetic, <= 1.1e-7
// absolute = about 1.5 ulp in float evaluation; exactly 0 at t = 0), one division for the
// sigmoid. double: exp and log(1 + t) (absolute error <= 1e-16). The double scalar helpers below
// use log1p.

#include <cmath>

#include "losskit/core/fast_exp2.hpp"
#include "losskit/core/simd.hpp"

namespace losskit::detail {

// log1p(t) for t in [0, 1].
template <class V>
inline V log1p_unit(const V& t) noexcept {
  using T = simd::scalar_t<V>;
  if constexpr (std::is_same_v<T, float>) {
    // q(t) = c0 + c1 t + ... + c8 t^8 by Estrin's scheme: a dependency chain of 5 operations
    // instead of Horner's 9, which is what limits the element passes that call this.
    const V t2 = t * t, t4 = t2 * t2;
    const V a01 = simd::fma(V(T(-0.4999709428178103)), t, V(T(0.9999993280623591)));
    const V a23 = simd::fma(V(T(-0.24672687346834138)), t, V(T(0.3328966802787535)));
    const V a45 = simd::fma(V(T(-0.1269088648763238)), t, V(T(0.18569817210298173)));
    const V a67 = simd::fma(V(T(-0.023855451521506393)), t, V(T(0.06808468124894665)));
    const V b0 = simd::fma(a23, t2, a01), b1 = simd::fma(a67, t2, a45);
    const V p = simd::fma(simd::fma(V(T(0.003930456467754792)), t4, b1), t4, b0);
    return p * t;
  } else {
    return simd::log(V(T(1)) + t);
  }
}

// e^{-|x|} in (0, 1] (batch or scalar): the argument of log1p in softplus and sigmoid.
template <class V>
inline V exp_neg_abs(const V& x) noexcept {
  using T = simd::scalar_t<V>;
  if constexpr (std::is_same_v<T, float>)
    return simd::exp2_ftz(simd::abs(x) * V(-simd::log2e<T>));
  else
    return simd::exp(-simd::abs(x));
}

// softplus of x (batch or scalar).
template <class V>
inline V softplus_lanes(const V& x) noexcept {
  using T = simd::scalar_t<V>;
  return simd::vmax(x, V(T(0))) + log1p_unit(exp_neg_abs(x));
}

// softplus of x (batch or scalar); its sigmoid in *sig.
template <class V>
inline V softplus_sigmoid(const V& x, V& sig) noexcept {
  using T = simd::scalar_t<V>;
  const V one(T(1));
  const V t = exp_neg_abs(x);
  const V inv = one / (one + t);
  sig = simd::select(x >= V(T(0)), inv, t * inv);
  return simd::vmax(x, V(T(0))) + log1p_unit(t);
}

// log(x) for float batches on AVX-512: x = m 2^e with m in [1, 2) (getmant / getexp, exact,
// denormals included), log x = e log 2 + log1p_unit(m - 1): error about 1.5e-7 absolute plus an
// ulp of the result (measured: 1e-6 near x = 1.5e-5, where log x = -11), about half the
// instructions of xsimd's log. log(0) = -inf, log(+inf) =
// +inf, NaN and negative x give NaN. Everything else is simd::log.
template <class V>
inline V log_fast(const V& x) noexcept {
#if defined(__AVX512F__)
  if constexpr (simd::is_batch<V> && sizeof(V) == 64 && std::is_same_v<simd::scalar_t<V>, float>) {
    const __m512 v = x;
    const V e(_mm512_getexp_ps(v));
    const V m(_mm512_getmant_ps(v, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_nan));
    return simd::fma(e, V(0.6931471805599453f), log1p_unit(m - V(1.0f)));
  } else {
    return simd::log(x);
  }
#else
  return simd::log(x);
#endif
}

inline double softplus(double x) noexcept {
  return x > 0.0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x));
}

inline double sigmoid(double x) noexcept {
  if (x >= 0.0) return 1.0 / (1.0 + std::exp(-x));
  const double t = std::exp(x);
  return t / (1.0 + t);
}

}  // namespace losskit::detail
