#pragma once
// Shared test helpers: seeded inputs, plain long-double reference formulas, and a central
// finite-difference gradient check in double. Nothing here depends on losskit internals.

#include <losskit/losskit.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "catch_compat.hpp"

namespace lktest {

using losskit::RowMatrix;
using ld = long double;
using Vec = std::vector<ld>;

template <class T>
RowMatrix<T> random_logits(Eigen::Index rows, Eigen::Index cols, std::uint32_t seed, double scale = 3.0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-scale, scale);
  RowMatrix<T> m(rows, cols);
  for (Eigen::Index r = 0; r < rows; ++r)
    for (Eigen::Index c = 0; c < cols; ++c) m(r, c) = T(u(rng));
  return m;
}

// log_softmax(v * a) in long double; with log_probs the row is returned as is.
template <class Row>
Vec log_softmax(const Row& v, ld a, bool log_probs = false) {
  const auto n = std::size_t(v.size());
  Vec x(n);
  if (log_probs) {
    for (std::size_t i = 0; i < n; ++i) x[i] = ld(v[Eigen::Index(i)]);
    return x;
  }
  ld m = -std::numeric_limits<ld>::infinity();
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, ld(v[Eigen::Index(i)]) * a);
  ld s = 0;
  for (std::size_t i = 0; i < n; ++i) s += std::exp(ld(v[Eigen::Index(i)]) * a - m);
  for (std::size_t i = 0; i < n; ++i) x[i] = ld(v[Eigen::Index(i)]) * a - m - std::log(s);
  return x;
}

inline ld xlogy_ratio(ld a, ld b) { return a > 0 ? a * std::log(a / b) : 0; }  // a log(a / b), 0 log 0 = 0

// Per-row reference of a divergence given log q (x) and log p (y).
using RowRef = std::function<ld(const Vec& x, const Vec& y)>;

inline ld ref_kl(const Vec& x, const Vec& y) {  // KL(p || q)
  ld s = 0;
  for (std::size_t i = 0; i < x.size(); ++i) s += xlogy_ratio(std::exp(y[i]), std::exp(x[i]));
  return s;
}
inline ld ref_rkl(const Vec& x, const Vec& y) { return ref_kl(y, x); }

inline RowRef ref_jsd(ld beta) {
  return [beta](const Vec& x, const Vec& y) {
    if (beta == 0) return ref_kl(x, y);
    if (beta == 1) return ref_rkl(x, y);
    ld s = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const ld q = std::exp(x[i]), p = std::exp(y[i]), m = beta * p + (1 - beta) * q;
      s += beta * xlogy_ratio(p, m) + (1 - beta) * xlogy_ratio(q, m);
    }
    return s;
  };
}
inline RowRef ref_skew_kl(ld a) {
  return [a](const Vec& x, const Vec& y) {
    ld s = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const ld q = std::exp(x[i]), p = std::exp(y[i]);
      s += xlogy_ratio(p, a * p + (1 - a) * q);
    }
    return s;
  };
}
inline RowRef ref_skew_rkl(ld a) {
  return [a](const Vec& x, const Vec& y) {
    ld s = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const ld q = std::exp(x[i]), p = std::exp(y[i]);
      s += xlogy_ratio(q, (1 - a) * p + a * q);
    }
    return s;
  };
}
inline ld ref_tvd(const Vec& x, const Vec& y) {
  ld s = 0;
  for (std::size_t i = 0; i < x.size(); ++i) s += std::fabs(std::exp(x[i]) - std::exp(y[i]));
  return s / 2;
}
inline ld ref_cs(const Vec& x, const Vec& y) {
  ld pq = 0, pp = 0, qq = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const ld q = std::exp(x[i]), p = std::exp(y[i]);
    pq += p * q;
    pp += p * p;
    qq += q * q;
  }
  return std::log(pp) + std::log(qq) - 2 * std::log(pq);
}

// Mean over rows of ref(log_softmax(s/T), log_softmax(t/T)).
template <class T>
ld reference_mean(const RowMatrix<T>& s, const RowMatrix<T>& t, const losskit::DivergenceOptions& o,
                  const RowRef& ref) {
  const ld a = 1.0L / ld(o.temperature);
  ld total = 0;
  for (Eigen::Index r = 0; r < s.rows(); ++r)
    total += ref(log_softmax(s.row(r), a, o.student_input == losskit::Input::log_probs),
                 log_softmax(t.row(r), a, o.teacher_input == losskit::Input::log_probs));
  const ld t2 = o.scale_by_t_squared ? ld(o.temperature) * ld(o.temperature) : 1;
  return t2 * total / ld(s.rows());
}

// A divergence as a callable: (student, teacher, grad*, options) -> LossResult.
template <class T>
using DivFn = std::function<losskit::LossResult(const RowMatrix<T>&, const RowMatrix<T>&, RowMatrix<T>*,
                                                const losskit::DivergenceOptions&)>;

// Central differences in double of a divergence w.r.t. the student (the generic MatrixFn form
// below does the work).
inline void check_gradient_fd(const DivFn<double>& fn, const RowMatrix<double>& s, const RowMatrix<double>& t,
                              const losskit::DivergenceOptions& o);

template <class T>
T tol_value() {
  return std::is_same_v<T, float> ? T(1e-5) : T(1e-12);
}

// Value against the long-double reference, float and double.
template <class T>
void check_value(const DivFn<T>& fn, const RowMatrix<T>& s, const RowMatrix<T>& t, const losskit::DivergenceOptions& o,
                 const RowRef& ref) {
  const ld want = reference_mean(s, t, o, ref);
  const double got = fn(s, t, nullptr, o).value;
  CAPTURE(s.rows(), s.cols(), o.temperature, double(want), got);
  CHECK(std::fabs(got - double(want)) <= double(tol_value<T>()) * std::max(1.0, std::fabs(double(want))));
}

// Float gradient against the double gradient of the same inputs: <= 1e-6 absolute (design
// contract for float32 inputs).
inline void check_float_gradient(const DivFn<float>& ff, const DivFn<double>& fd, const RowMatrix<float>& s,
                                 const RowMatrix<float>& t, const losskit::DivergenceOptions& o) {
  RowMatrix<float> gf(s.rows(), s.cols());
  RowMatrix<double> gd(s.rows(), s.cols());
  ff(s, t, &gf, o);
  fd(s.template cast<double>(), t.template cast<double>(), &gd, o);
  const double err = (gf.template cast<double>() - gd).cwiseAbs().maxCoeff();
  CAPTURE(s.rows(), s.cols(), err);
  CHECK(err <= 1e-6);
}

// Wraps a public losskit divergence into a DivFn.
#define LKTEST_DIV(fn, T)                                                                             \
  ::lktest::DivFn<T>([](const ::losskit::RowMatrix<T>& s_, const ::losskit::RowMatrix<T>& t_,        \
                        ::losskit::RowMatrix<T>* g_, const ::losskit::DivergenceOptions& o_) {        \
    return g_ ? ::losskit::fn(s_, t_, *g_, o_) : ::losskit::fn(s_, t_, o_);                           \
  })

// The checks every divergence shares: value vs reference (float, double; odd widths), FD
// gradient in double, float gradient accuracy, zero at identical inputs, invariance to a
// constant added to a row, thread-count independence, all rows ignored.
template <class T>
void divergence_common(const DivFn<T>& fn, const DivFn<double>& fnd, const DivFn<float>& fnf, const RowRef& ref,
                       losskit::DivergenceOptions o) {
  const int cols = GENERATE(1, 3, 17, 1000, 32000);
  const double temp = GENERATE(1.0, 2.0);
  o.temperature = temp;
  const Eigen::Index rows = cols >= 32000 ? 2 : 3;
  CAPTURE(cols, temp);
  const auto s = random_logits<T>(rows, cols, 11u + std::uint32_t(cols));
  const auto t = random_logits<T>(rows, cols, 97u + std::uint32_t(cols));

  SECTION("value matches the reference") { check_value<T>(fn, s, t, o, ref); }
  SECTION("gradient matches central differences (double)") {
    if (cols <= 1000) check_gradient_fd(fnd, s.template cast<double>(), t.template cast<double>(), o);
  }
  SECTION("float gradient within 1e-6 of the double gradient") {
    check_float_gradient(fnf, fnd, s.template cast<float>(), t.template cast<float>(), o);
  }
  SECTION("zero for identical inputs") {
    RowMatrix<T> g(rows, cols);
    const auto r = fn(s, s, &g, o);
    CHECK(std::fabs(r.value) <= 1e-6);
    CHECK(g.cwiseAbs().maxCoeff() <= T(1e-6));
  }
  SECTION("invariant to adding a constant to a row of logits") {
    RowMatrix<T> s2 = s, t2 = t;
    s2.row(0).array() += T(5);
    t2.row(rows - 1).array() -= T(3);
    RowMatrix<T> g1(rows, cols), g2(rows, cols);
    const double v1 = fn(s, t, &g1, o).value, v2 = fn(s2, t2, &g2, o).value;
    CHECK(std::fabs(v1 - v2) <= 1e-5 * std::max(1.0, std::fabs(v1)));
    CHECK((g1 - g2).cwiseAbs().maxCoeff() <= T(1e-5));
  }
  SECTION("same bits with 1 and 2 threads") {
    const auto big_s = random_logits<T>(64, 1031, 5u), big_t = random_logits<T>(64, 1031, 6u);
    RowMatrix<T> g1(64, 1031), g2(64, 1031);
    losskit::DivergenceOptions o1 = o, o2 = o;
    o1.threads = 1;
    o2.threads = 2;
    const double v1 = fn(big_s, big_t, &g1, o1).value, v2 = fn(big_s, big_t, &g2, o2).value;
    CHECK(v1 == v2);
    CHECK(g1 == g2);
  }
  SECTION("every row ignored gives 0 and a zero gradient") {
    std::vector<std::int64_t> labels(std::size_t(rows), -100);
    losskit::DivergenceOptions oi = o;
    oi.labels = labels;
    RowMatrix<T> g = RowMatrix<T>::Constant(rows, cols, T(7));
    const auto r = fn(s, t, &g, oi);
    CHECK(r.value == 0.0);
    CHECK(r.count == 0);
    CHECK(g.cwiseAbs().maxCoeff() == T(0));
  }
}

// Central differences in double of any scalar loss of one matrix: fn(x, grad_or_null) returns
// the value and, given a gradient output, writes its analytic gradient there. Step
// h = step * max(1, |x|) (default 1e-6); requires |analytic - numeric| <= tol max(1e-2, |numeric|)
// at every entry. Rounding leaves about 1e-16 |value| / h in each difference: a loss with large
// values needs a larger step rather than a looser tolerance. Entries of x that are not finite are
// skipped.
using MatrixFn = std::function<double(const RowMatrix<double>&, RowMatrix<double>*)>;
inline void check_gradient_fd(const MatrixFn& fn, const RowMatrix<double>& x, double tol = 1e-6, double step = 1e-6) {
  RowMatrix<double> g(x.rows(), x.cols());
  fn(x, &g);
  RowMatrix<double> w = x;
  double worst = 0;
  Eigen::Index wr = 0, wc = 0;
  for (Eigen::Index r = 0; r < x.rows(); ++r)
    for (Eigen::Index c = 0; c < x.cols(); ++c) {
      if (!std::isfinite(x(r, c))) continue;
      const double h = step * std::max(1.0, std::fabs(x(r, c)));
      w(r, c) = x(r, c) + h;
      const double fp = fn(w, nullptr);
      w(r, c) = x(r, c) - h;
      const double fm = fn(w, nullptr);
      w(r, c) = x(r, c);
      const double num = (fp - fm) / (2 * h);
      const double err = std::fabs(g(r, c) - num) / std::max(1e-2, std::fabs(num));
      if (!(err <= worst)) {
        worst = err;
        wr = r;
        wc = c;
      }
    }
  CAPTURE(x.rows(), x.cols(), step, wr, wc, g(wr, wc), worst);
  CHECK(worst <= tol);
}

inline void check_gradient_fd(const DivFn<double>& fn, const RowMatrix<double>& s, const RowMatrix<double>& t,
                              const losskit::DivergenceOptions& o) {
  CAPTURE(o.temperature);
  check_gradient_fd([&](const RowMatrix<double>& x, RowMatrix<double>* g) { return fn(x, t, g, o).value; }, s);
}

// The message of the std::invalid_argument that fn() throws, or "no exception" (Catch2 v2/v3
// spell their exception matchers differently).
template <class Fn>
std::string invalid_argument_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no exception";
}

// The message of the std::out_of_range that fn() throws (labels, indices), or "no exception".
template <class Fn>
std::string out_of_range_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::out_of_range& e) {
    return e.what();
  }
  return "no exception";
}

// Central difference (f(x + h e_k) - f(x - h e_k)) / 2h of a scalar function of a double vector or
// matrix `x` along coordinate k (linear index), with x restored afterwards.
template <class F, class M>
double central_difference(F&& f, M& x, Eigen::Index k, double h) {
  const double x0 = x.data()[k];
  x.data()[k] = x0 + h;
  const double fp = f(x);
  x.data()[k] = x0 - h;
  const double fm = f(x);
  x.data()[k] = x0;
  return (fp - fm) / (2 * h);
}

}  // namespace lktest
