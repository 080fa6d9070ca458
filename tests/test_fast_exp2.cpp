// core/fast_exp2.hpp: simd::exp2_ftz against std::exp2 in long double, batches and scalars,
// float and double, and its special values.

#include <losskit/core/fast_exp2.hpp>

#include "catch_compat.hpp"

#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>

namespace {

template <class T>
T batch_exp2(T x) {  // lane 0 of exp2_ftz on a batch filled with x
  alignas(64) std::array<T, losskit::simd::width<T>> out{};
  losskit::simd::exp2_ftz(losskit::simd::batch<T>(x)).store_aligned(out.data());
  return out[0];
}

}  // namespace

TEMPLATE_TEST_CASE("exp2_ftz: relative error over the normal range, batches and scalars", "[fast_exp2]", float,
                   double) {
  using T = TestType;
  // float: the AVX-512 polynomial measures 1.71e-7 (a dense sweep; about 2 ulp near 2^-1/2),
  // xsimd's exp2 elsewhere 1.5 ulp
  const double tol = std::is_same_v<T, float> ? 1.8e-7 : 4e-16;
  double worst_b = 0, worst_s = 0, at_b = 0;
  for (double x = -125.9; x < 126.0; x += 0.0137) {
    const T xt = T(x);
    const long double ref = std::exp2(static_cast<long double>(xt));
    const double eb = double(std::fabs(static_cast<long double>(batch_exp2(xt)) - ref) / ref);
    const double es = double(std::fabs(static_cast<long double>(losskit::simd::exp2_ftz(xt)) - ref) / ref);
    if (eb > worst_b) {
      worst_b = eb;
      at_b = x;
    }
    worst_s = std::max(worst_s, es);
  }
  CAPTURE(worst_b, at_b, worst_s);
  CHECK(worst_b <= tol);
  CHECK(worst_s <= tol);
  // Exact at integers (the polynomial has p(0) = 1).
  for (int k = -120; k <= 120; k += 7) CHECK(batch_exp2(T(k)) == std::ldexp(T(1), k));
}

TEMPLATE_TEST_CASE("exp2_ftz: special values", "[fast_exp2]", float, double) {
  using T = TestType;
  const T inf = std::numeric_limits<T>::infinity();
  CHECK(batch_exp2(-inf) == T(0));
  CHECK(std::isnan(batch_exp2(std::numeric_limits<T>::quiet_NaN())));
  CHECK(batch_exp2(inf) == inf);
  CHECK(batch_exp2(T(-2000)) == T(0));
  CHECK(batch_exp2(T(0)) == T(1));
  if constexpr (std::is_same_v<T, float>) {
    CHECK(batch_exp2(T(-1000)) == T(0));  // flushed, never subnormal garbage
    CHECK(batch_exp2(T(130)) == inf);
  }
}
