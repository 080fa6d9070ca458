#include "labeled_support.hpp"

#include <limits>

using lktest::Labels64;
using lktest::ld;
using lktest::RowMatrix;
using losskit::SphericalZLossOptions;

namespace {

ld softplus_ld(ld u) { return u > 0 ? u + std::log1p(std::exp(-u)) : std::log1p(std::exp(u)); }

// One row in long double, -inf entries left out (masked classes).
template <class Row>
ld ref_row(const Row& o, std::int64_t c, const SphericalZLossOptions& opt) {
  const ld ninf = -std::numeric_limits<ld>::infinity();
  ld n = 0, s = 0;
  for (Eigen::Index k = 0; k < o.size(); ++k)
    if (ld(o[k]) != ninf) {
      n += 1;
      s += ld(o[k]);
    }
  const ld mu = s / n;
  ld m2 = 0;
  for (Eigen::Index k = 0; k < o.size(); ++k)
    if (ld(o[k]) != ninf) m2 += (ld(o[k]) - mu) * (ld(o[k]) - mu);
  if (ld(o[Eigen::Index(c)]) == ninf) return std::numeric_limits<ld>::infinity();
  const ld z = (ld(o[Eigen::Index(c)]) - mu) / (std::sqrt(m2 / n) + ld(opt.epsilon));
  return softplus_ld(ld(opt.a) * (ld(opt.b) - z)) / ld(opt.a);
}

template <class T>
ld ref_mean(const RowMatrix<T>& x, const Labels64& y, const SphericalZLossOptions& o) {
  ld t = 0;
  for (Eigen::Index r = 0; r < x.rows(); ++r) t += ref_row(x.row(r), y[std::size_t(r)], o);
  return t / ld(x.rows());
}

template <class T>
lktest::LabeledFn<T, SphericalZLossOptions> fn() {
  return [](const RowMatrix<T>& x, const Labels64& y, RowMatrix<T>* g, const SphericalZLossOptions& o) {
    return g ? losskit::spherical_z_loss(x, y, *g, o) : losskit::spherical_z_loss(x, y, o);
  };
}

template <class T>
double tol() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

}  // namespace

TEMPLATE_TEST_CASE("spherical_z_loss: value, gradient, float accuracy", "[spherical_z_loss]", float, double) {
  const int cols = GENERATE(1, 3, 17, 1000, 32000);
  const auto ab = GENERATE(std::pair<double, double>{1.0, 0.0}, std::pair<double, double>{2.5, 0.7},
                           std::pair<double, double>{0.5, -1.0});
  SphericalZLossOptions o;
  o.a = ab.first;
  o.b = ab.second;
  const Eigen::Index rows = cols >= 32000 ? 2 : 3;
  CAPTURE(cols, o.a, o.b);
  const auto x = lktest::random_logits<TestType>(rows, cols, 31u + std::uint32_t(cols));
  const auto y = lktest::random_labels(rows, cols, 7u);

  SECTION("value matches the long-double formula") {
    const double want = double(ref_mean(x, y, o));
    const double got = losskit::spherical_z_loss(x, y, o).value;
    CHECK_THAT(got, Catch::Matchers::WithinRel(want, tol<TestType>()));
  }
  SECTION("gradient matches central differences (double)") {
    if (cols <= 1000 && cols > 1) lktest::check_labeled_fd(fn<double>(), x.template cast<double>(), y, o);
  }
  SECTION("float gradient within 1e-6 of the double gradient") {
    RowMatrix<float> gf(rows, cols);
    RowMatrix<double> gd(rows, cols);
    const RowMatrix<float> xf = x.template cast<float>();
    const RowMatrix<double> xd = x.template cast<double>();
    losskit::spherical_z_loss(xf, y, gf, o);
    losskit::spherical_z_loss(xd, y, gd, o);
    CHECK((gf.cast<double>() - gd).cwiseAbs().maxCoeff() <= 1e-6);
  }
}

TEMPLATE_TEST_CASE("spherical_z_loss: shift and scale invariance", "[spherical_z_loss]", float, double) {
  const auto x = lktest::random_logits<TestType>(4, 257, 3);
  const auto y = lktest::random_labels(4, 257, 4);
  SphericalZLossOptions o;
  o.a = 2.0;
  o.b = 0.5;
  RowMatrix<TestType> g(4, 257), g2(4, 257);
  const double v = losskit::spherical_z_loss(x, y, g, o).value;
  const double t = std::is_same_v<TestType, float> ? 2e-5 : 1e-12;
  SECTION("adding a constant to a row changes nothing") {
    RowMatrix<TestType> xs = x;
    xs.row(0).array() += TestType(5);
    xs.row(3).array() -= TestType(11);
    CHECK_THAT(losskit::spherical_z_loss(xs, y, g2, o).value, Catch::Matchers::WithinRel(v, t));
    CHECK((g2 - g).cwiseAbs().maxCoeff() <= TestType(t) * g.cwiseAbs().maxCoeff() * TestType(10));
  }
  SECTION("scaling a row by k > 0 keeps the value and divides its gradient by k") {
    RowMatrix<TestType> xs = x;
    xs.row(1) *= TestType(4);
    xs.row(2) *= TestType(0.25);
    CHECK_THAT(losskit::spherical_z_loss(xs, y, g2, o).value, Catch::Matchers::WithinRel(v, t));
    CHECK((g2.row(1) * TestType(4) - g.row(1)).cwiseAbs().maxCoeff() <= TestType(t) * g.cwiseAbs().maxCoeff() * 10);
    CHECK((g2.row(2) * TestType(0.25) - g.row(2)).cwiseAbs().maxCoeff() <= TestType(t) * g.cwiseAbs().maxCoeff() * 10);
    CHECK((g2.row(0) - g.row(0)).cwiseAbs().maxCoeff() == TestType(0));
  }
  SECTION("the gradient of each row sums to 0 and is orthogonal to the row") {
    for (Eigen::Index r = 0; r < 4; ++r) {
      CAPTURE(r);
      ld sum = 0, dot = 0, mag = 0, dmag = 0;
      for (Eigen::Index c = 0; c < 257; ++c) {
        sum += ld(g(r, c));
        mag += std::fabs(ld(g(r, c)));
        dot += ld(g(r, c)) * ld(x(r, c));
        dmag += std::fabs(ld(g(r, c)) * ld(x(r, c)));
      }
      CHECK(double(std::fabs(sum)) <= t * double(mag));
      CHECK(double(std::fabs(dot)) <= t * double(dmag));
    }
  }
}

TEMPLATE_TEST_CASE("spherical_z_loss: stable variance under a large common offset", "[spherical_z_loss]", float,
                   double) {
  // mean 1e3 (float) / 1e6 (double), spread ~1: E[o^2] - mu^2 would lose every digit in float and
  // about 4 of them in double (relative error ~3e-4 here). The mean itself is only known to
  // ulp(offset) in double (1e-10 at 1e6), hence the looser double tolerance.
  const bool is_float = std::is_same_v<TestType, float>;
  const TestType offset = is_float ? TestType(1e3) : TestType(1e6);
  const double t = is_float ? 1e-5 : 1e-8;
  const int cols = GENERATE(17, 1000, 32000);
  RowMatrix<TestType> x = lktest::random_logits<TestType>(2, cols, 9, 1.0);
  x.array() += offset;
  const auto y = lktest::random_labels(2, cols, 10);
  const SphericalZLossOptions o;
  CAPTURE(cols);
  CHECK_THAT(losskit::spherical_z_loss(x, y, o).value, Catch::Matchers::WithinRel(double(ref_mean(x, y, o)), t));
}

TEMPLATE_TEST_CASE("spherical_z_loss: rows whose logits are all equal", "[spherical_z_loss]", float, double) {
  RowMatrix<TestType> x = lktest::random_logits<TestType>(3, 50, 1);
  x.row(0).setConstant(TestType(3.7));
  x.row(2).setZero();
  const Labels64 y{4, 0, 49};
  SphericalZLossOptions o;
  o.a = 2.0;
  o.b = 0.3;
  o.reduction = losskit::Reduction::none;
  RowMatrix<TestType> g(3, 50);
  const auto r = losskit::spherical_z_loss(x, y, g, o);
  const double at_zero = std::log1p(std::exp(0.6)) / 2.0;  // z = 0: softplus(a b) / a
  CHECK_THAT(r.per_row(0), Catch::Matchers::WithinRel(at_zero, 1e-12));
  CHECK_THAT(r.per_row(2), Catch::Matchers::WithinRel(at_zero, 1e-12));
  CHECK(std::isfinite(r.value));
  CHECK(g.allFinite());
  // the exact gradient of the guarded loss: -(s / eps) (delta_kc - 1/D)
  const double s = 1.0 / (1.0 + std::exp(-0.6)), big = s / o.epsilon;
  CHECK_THAT(double(g(0, 4)), Catch::Matchers::WithinRel(-big * (1.0 - 1.0 / 50), 1e-6));
  CHECK_THAT(double(g(0, 7)), Catch::Matchers::WithinRel(big / 50, 1e-6));
  SECTION("with a large epsilon the guarded loss is smooth there: central differences agree") {
    o.epsilon = 10.0;
    o.reduction = losskit::Reduction::mean;
    lktest::check_labeled_fd(fn<double>(), x.template cast<double>(), y, o);
  }
}

TEMPLATE_TEST_CASE("spherical_z_loss: -inf logits are masked classes", "[spherical_z_loss][inf]", float, double) {
  const TestType ninf = -std::numeric_limits<TestType>::infinity();
  RowMatrix<TestType> x = lktest::random_logits<TestType>(3, 40, 5);
  const Labels64 y{2, 9, 20};
  SphericalZLossOptions o;
  o.reduction = losskit::Reduction::sum;
  RowMatrix<TestType> g0(3, 40);
  losskit::spherical_z_loss(x, y, g0, o);
  SECTION("left out of the statistics; zero gradient there") {
    for (int c : {0, 7, 39}) x(1, c) = ninf;
    RowMatrix<TestType> g(3, 40);
    const double v = losskit::spherical_z_loss(x, y, g, o).value;
    CHECK_THAT(v, Catch::Matchers::WithinRel(double(ref_mean(x, y, o) * 3), tol<TestType>()));
    CHECK(g(1, 7) == TestType(0));
    CHECK(g.allFinite());
    // the masked row equals the row without those columns
    RowMatrix<TestType> sub(1, 37);
    Eigen::Index j = 0;
    for (Eigen::Index c = 0; c < 40; ++c)
      if (c != 0 && c != 7 && c != 39) sub(0, j++) = x(1, c);
    RowMatrix<TestType> gs(1, 37);
    o.reduction = losskit::Reduction::none;
    const auto rs = losskit::spherical_z_loss(sub, Labels64{7}, gs, o);  // label 9 minus 2 removed columns
    const auto rx = losskit::spherical_z_loss(x, y, o);
    CHECK_THAT(rx.per_row(1), Catch::Matchers::WithinRel(rs.per_row(0), 1e-6));
    CHECK_THAT(double(g(1, 9)), Catch::Matchers::WithinAbs(double(gs(0, 7)), 1e-6));
    if constexpr (std::is_same_v<TestType, double>) {
      o.reduction = losskit::Reduction::mean;
      lktest::check_labeled_fd(fn<double>(), x, y, o);
    }
  }
  SECTION("a -inf target: loss +inf, zero gradient row, other rows untouched") {
    x(2, 20) = ninf;
    RowMatrix<TestType> g(3, 40);
    const double v = losskit::spherical_z_loss(x, y, g, o).value;
    CHECK(v == std::numeric_limits<double>::infinity());
    CHECK(g.row(2).cwiseAbs().maxCoeff() == TestType(0));
    CHECK(g.topRows(2) == g0.topRows(2));
  }
  SECTION("NaN propagates to the loss") {
    x(0, 3) = std::numeric_limits<TestType>::quiet_NaN();
    CHECK(std::isnan(losskit::spherical_z_loss(x, y, o).value));
  }
}

TEST_CASE("spherical_z_loss: defaults are the authors' example (a = 1, b = 0, eps = 1e-12, summed)", "[spherical_z_loss]") {
  const SphericalZLossOptions d;
  CHECK(d.a == 1.0);
  CHECK(d.b == 0.0);
  CHECK(d.epsilon == 1e-12);
  const auto x = lktest::random_logits<double>(3, 20, 8);
  const Labels64 y{1, 5, 19};
  SphericalZLossOptions o;
  o.reduction = losskit::Reduction::sum;
  ld want = 0;
  for (Eigen::Index r = 0; r < 3; ++r) {  // softplus((mu - o_c) / (sigma + 1e-12)), summed
    const ld mu = ld(x.row(r).mean());
    const ld sigma = std::sqrt(ld((x.row(r).array() - double(mu)).square().mean()));
    want += softplus_ld((mu - ld(x(r, Eigen::Index(y[std::size_t(r)])))) / (sigma + ld(1e-12)));
  }
  CHECK_THAT(losskit::spherical_z_loss(x, y, o).value, Catch::Matchers::WithinRel(double(want), 1e-12));
}

TEMPLATE_TEST_CASE("spherical_z_loss: reductions, ignore_index, weights, threads", "[spherical_z_loss][options]", float,
                   double) {
  SphericalZLossOptions o;
  o.a = 1.5;
  lktest::labeled_row_options<TestType>(fn<TestType>(), o);
}

TEST_CASE("spherical_z_loss: errors name the function, the argument and the value", "[spherical_z_loss][errors]") {
  lktest::labeled_errors<SphericalZLossOptions>(fn<float>(), "spherical_z_loss", {});
  const auto x = lktest::random_logits<float>(2, 5, 1);
  const Labels64 y{0, 1};
  RowMatrix<float> g = RowMatrix<float>::Constant(2, 5, 7.f);
  auto err = [&](SphericalZLossOptions o) {
    return lktest::error_of<std::invalid_argument>([&] { losskit::spherical_z_loss(x, y, g, o); });
  };
  SphericalZLossOptions o;
  o.a = 0.0;
  CHECK(lktest::has(err(o), "losskit::spherical_z_loss: 'a' must be positive and finite, got 0"));
  o.a = std::numeric_limits<double>::infinity();
  CHECK(lktest::has(err(o), "'a' must be positive and finite, got inf"));
  o = {};
  o.b = std::numeric_limits<double>::quiet_NaN();
  CHECK(lktest::has(err(o), "losskit::spherical_z_loss: 'b' must be finite, got nan"));
  o = {};
  o.epsilon = 0.0;
  CHECK(lktest::has(err(o), "losskit::spherical_z_loss: 'epsilon' must be positive and finite, got 0"));
  CHECK(g.cwiseAbs().minCoeff() == 7.f);
  CHECK(g.cwiseAbs().maxCoeff() == 7.f);
}

// Each row's gradient is written during the next row's first loop (the last one's after it).
TEST_CASE("spherical_z_loss: pipelined rows equal rows alone", "[spherical_z_loss][large]") {
  lktest::check_rows_alone<SphericalZLossOptions>(
      [](const RowMatrix<float>& x, const Labels64& y, RowMatrix<float>* g, const SphericalZLossOptions& o) {
        return g ? losskit::spherical_z_loss(x, y, *g, o) : losskit::spherical_z_loss(x, y, o);
      },
      {}, [](RowMatrix<float>& x, Labels64& y) { x(5, y[5]) = -std::numeric_limits<float>::infinity(); });  // loss +inf, zero row
}
