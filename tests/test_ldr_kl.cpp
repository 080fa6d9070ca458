#include "labeled_support.hpp"

#include <limits>
#include <sstream>

using lktest::Labels64;
using lktest::ld;
using lktest::RowMatrix;
using lktest::Vec;
using losskit::AdaptiveLDR;
using losskit::AdaptiveLdrOptions;
using losskit::LdrKlOptions;

namespace {

enum class Norm { none, softplus_mean, l1, softplus_l1 };

ld softplus_ld(ld u) { return u > 0 ? u + std::log1p(std::exp(-u)) : std::log1p(std::exp(u)); }

// Scores yh of one row in long double.
template <class Row>
Vec scores(const Row& z, Norm norm) {
  const std::size_t n = std::size_t(z.size());
  Vec x(n);
  for (std::size_t i = 0; i < n; ++i) {
    const ld v = ld(z[Eigen::Index(i)]);
    x[i] = norm == Norm::softplus_mean || norm == Norm::softplus_l1 ? softplus_ld(v) : v;
  }
  if (norm == Norm::none) return x;
  ld l1 = 0;
  for (ld v : x) l1 += std::fabs(v);
  for (ld& v : x) v = l1 == 0 ? 0 : v * ld(n) / l1;  // softplus / mean == K softplus / ||softplus||_1
  return x;
}

// lambda log((1/K) sum_k exp(v_k / lambda)), v_k = c (1 - [k = y]) + yh_k - yh_y.
ld ldr_row(const Vec& yh, std::size_t y, ld c, ld lambda) {
  ld m = -std::numeric_limits<ld>::infinity();
  Vec v(yh.size());
  for (std::size_t k = 0; k < yh.size(); ++k) {
    v[k] = (k == y ? 0 : c) + yh[k] - yh[y];
    m = std::max(m, v[k] / lambda);
  }
  ld s = 0;
  for (ld vk : v) s += std::exp(vk / lambda - m);
  return lambda * (m + std::log(s / ld(yh.size())));
}

template <class T>
ld ldr_mean(const RowMatrix<T>& x, const Labels64& y, const LdrKlOptions& o) {
  ld t = 0;
  for (Eigen::Index r = 0; r < x.rows(); ++r)
    t += ldr_row(scores(x.row(r), o.normalize ? Norm::softplus_mean : Norm::none), std::size_t(y[std::size_t(r)]),
                 ld(o.margin), ld(o.lambda));
  return t / ld(x.rows());
}

// The ALDR closed-form step: lambda0 - lambda0 KL(pi' || uniform) / (alpha log K).
ld aldr_lambda(const Vec& yh, ld lambda_old, ld lambda0, ld alpha) {
  const std::size_t n = yh.size();
  ld m = -std::numeric_limits<ld>::infinity(), s = 0;
  for (ld v : yh) m = std::max(m, v / lambda_old);
  for (ld v : yh) s += std::exp(v / lambda_old - m);
  Vec p(n);
  ld z = 0;
  for (std::size_t k = 0; k < n; ++k) z += (p[k] = std::exp(yh[k] / lambda_old - m) / s + ld(1e-5));
  ld kl = 0;
  for (ld pk : p) kl += (pk / z) * std::log(ld(n) * pk / z);
  return lambda0 - lambda0 * kl / (alpha * std::log(ld(n)));
}

Norm aldr_norm(const AdaptiveLdrOptions& o) {
  return !o.normalize ? Norm::none : o.softplus ? Norm::softplus_l1 : Norm::l1;
}

ld aldr_loss(const Vec& yh, std::size_t y, ld lambda, ld lambda0, const AdaptiveLdrOptions& o) {
  const ld pull = ld(o.alpha) * std::log(ld(yh.size())) / (2 * lambda0);
  return ldr_row(yh, y, ld(o.margin), lambda) - pull * (lambda - lambda0) * (lambda - lambda0);
}

template <class T>
lktest::LabeledFn<T, LdrKlOptions> ldr_fn() {
  return [](const RowMatrix<T>& x, const Labels64& y, RowMatrix<T>* g, const LdrKlOptions& o) {
    return g ? losskit::ldr_kl(x, y, *g, o) : losskit::ldr_kl(x, y, o);
  };
}

// AdaptiveLDR as a pure function: a fresh copy of `proto` per call, sample ids 0..rows-1.
template <class T>
lktest::LabeledFn<T, AdaptiveLdrOptions> aldr_fn(const AdaptiveLDR& proto) {
  return [proto](const RowMatrix<T>& x, const Labels64& y, RowMatrix<T>* g, const AdaptiveLdrOptions& o) {
    AdaptiveLDR a = proto;
    Labels64 ids(std::size_t(x.rows()));
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = std::int64_t(i);
    return g ? a.loss(x, y, ids, *g, o) : a.loss(x, y, ids, o);
  };
}

// An AdaptiveLDR over `n` samples whose lambdas are spread around lambda0.
AdaptiveLDR spread_state(std::size_t n, double lambda0) {
  AdaptiveLDR a(n, lambda0);
  std::vector<double> l(n);
  for (std::size_t i = 0; i < n; ++i) l[i] = lambda0 * (0.3 + 0.9 * double(i % 7) / 6.0);
  a.load(l);
  return a;
}

template <class T>
double tol() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-11;
}

}  // namespace

// ---- ldr_kl ------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("ldr_kl: value, gradient, float accuracy", "[ldr_kl]", float, double) {
  const int cols = GENERATE(1, 3, 17, 1000, 32000);
  const bool normalize = GENERATE(true, false);
  const auto cl = GENERATE(std::pair<double, double>{2.0, 1.0}, std::pair<double, double>{0.1, 10.0},
                           std::pair<double, double>{1.0, 0.05});
  LdrKlOptions o;
  o.normalize = normalize;
  o.margin = cl.first;
  o.lambda = cl.second;
  const Eigen::Index rows = cols >= 32000 ? 2 : 3;
  CAPTURE(cols, normalize, o.margin, o.lambda);
  const auto x = lktest::random_logits<TestType>(rows, cols, 41u + std::uint32_t(cols));
  const auto y = lktest::random_labels(rows, cols, 8u);

  SECTION("value matches the long-double formula") {
    const double want = double(ldr_mean(x, y, o));
    CHECK_THAT(losskit::ldr_kl(x, y, o).value,
               Catch::Matchers::WithinRel(want, tol<TestType>()) || Catch::Matchers::WithinAbs(want, 1e-6));
  }
  SECTION("gradient matches central differences (double)") {
    if (cols <= 1000) lktest::check_labeled_fd(ldr_fn<double>(), x.template cast<double>(), y, o);
  }
  SECTION("float gradient within 1e-6 of the double gradient") {
    const RowMatrix<float> xf = x.template cast<float>();
    const RowMatrix<double> xd = x.template cast<double>();
    RowMatrix<float> gf(rows, cols);
    RowMatrix<double> gd(rows, cols);
    losskit::ldr_kl(xf, y, gf, o);
    losskit::ldr_kl(xd, y, gd, o);
    CHECK((gf.cast<double>() - gd).cwiseAbs().maxCoeff() <= 1e-6);
  }
}

TEMPLATE_TEST_CASE("ldr_kl: lambda -> 0 tends to the Crammer-Singer hinge max_k v_k", "[ldr_kl]", float, double) {
  const bool normalize = GENERATE(true, false);
  const auto x = lktest::random_logits<TestType>(4, 50, 12);
  const auto y = lktest::random_labels(4, 50, 13);
  LdrKlOptions o;
  o.normalize = normalize;
  o.margin = 0.5;
  o.reduction = losskit::Reduction::none;
  ld hinge[4];
  for (Eigen::Index r = 0; r < 4; ++r) {
    const Vec yh = scores(x.row(r), normalize ? Norm::softplus_mean : Norm::none);
    const std::size_t t = std::size_t(y[std::size_t(r)]);
    hinge[r] = 0;  // v_y = 0
    for (std::size_t k = 0; k < yh.size(); ++k)
      if (k != t) hinge[r] = std::max(hinge[r], ld(o.margin) + yh[k] - yh[t]);
  }
  double previous = std::numeric_limits<double>::infinity();
  for (double lambda : {1e-1, 1e-2, 1e-3, 1e-4}) {
    o.lambda = lambda;
    const auto res = losskit::ldr_kl(x, y, o);
    double err = 0;
    for (Eigen::Index r = 0; r < 4; ++r) {
      // max v - lambda log K <= L <= max v
      CAPTURE(lambda, r);
      CHECK(res.per_row(r) <= double(hinge[r]) + 1e-5);
      CHECK(res.per_row(r) >= double(hinge[r]) - lambda * std::log(50.0) - 1e-5);
      err = std::max(err, std::fabs(res.per_row(r) - double(hinge[r])));
    }
    CHECK(err < previous);
    previous = err;
  }
  CHECK(previous <= 1e-4 * std::log(50.0) + 1e-5);
}

TEMPLATE_TEST_CASE("ldr_kl: cross entropy = LDR-KL(c = 0, lambda = 1, raw logits) + log K", "[ldr_kl]", float, double) {
  const int cols = GENERATE(3, 100, 32000);
  const auto x = lktest::random_logits<TestType>(3, cols, 14);
  const auto y = lktest::random_labels(3, cols, 15);
  LdrKlOptions o;
  o.margin = 0.0;
  o.lambda = 1.0;
  o.normalize = false;
  RowMatrix<TestType> g(3, cols);
  const double v = losskit::ldr_kl(x, y, g, o).value;
  ld ce = 0;
  RowMatrix<double> want(3, cols);
  for (Eigen::Index r = 0; r < 3; ++r) {
    const Vec lp = lktest::log_softmax(x.row(r), 1);
    ce -= lp[std::size_t(y[std::size_t(r)])];
    for (Eigen::Index c = 0; c < cols; ++c)
      want(r, c) = double((std::exp(lp[std::size_t(c)]) - (c == y[std::size_t(r)] ? 1 : 0)) / 3);
  }
  CHECK_THAT(v + std::log(double(cols)), Catch::Matchers::WithinRel(double(ce / 3), tol<TestType>()));
  CHECK((g.template cast<double>() - want).cwiseAbs().maxCoeff() <= 1e-6);
}

TEMPLATE_TEST_CASE("ldr_kl: raw form is shift-invariant; normalised form is scale-invariant for positive rows",
                   "[ldr_kl]", float, double) {
  const auto x = lktest::random_logits<TestType>(3, 64, 16);
  const auto y = lktest::random_labels(3, 64, 17);
  LdrKlOptions o;
  o.normalize = false;
  RowMatrix<TestType> xs = x;
  xs.row(1).array() += TestType(7);
  const double t = std::is_same_v<TestType, float> ? 1e-5 : 1e-12;
  CHECK_THAT(losskit::ldr_kl(xs, y, o).value, Catch::Matchers::WithinRel(losskit::ldr_kl(x, y, o).value, t));
}

TEMPLATE_TEST_CASE("ldr_kl: a margin much larger than lambda neither overflows nor loses the target", "[ldr_kl]", float,
                   double) {
  // c / lambda = 200: exp(c / lambda) overflows float; the target's term must not take the margin.
  RowMatrix<TestType> x = lktest::random_logits<TestType>(3, 300, 18);
  const Labels64 y{0, 150, 299};
  x(0, 0) = TestType(9);  // a confident target
  LdrKlOptions o;
  o.margin = 2.0;
  o.lambda = 0.01;
  const bool normalize = GENERATE(true, false);
  o.normalize = normalize;
  RowMatrix<TestType> g(3, 300);
  const double v = losskit::ldr_kl(x, y, g, o).value;
  CHECK(g.allFinite());
  CHECK_THAT(v, Catch::Matchers::WithinRel(double(ldr_mean(x, y, o)), tol<TestType>()));
  if constexpr (std::is_same_v<TestType, double>) lktest::check_labeled_fd(ldr_fn<double>(), x, y, o);
}

TEMPLATE_TEST_CASE("ldr_kl: -inf logits", "[ldr_kl][inf]", float, double) {
  const TestType ninf = -std::numeric_limits<TestType>::infinity();
  RowMatrix<TestType> x = lktest::random_logits<TestType>(3, 40, 19);
  const Labels64 y{1, 2, 3};
  const bool normalize = GENERATE(true, false);
  LdrKlOptions o;
  o.normalize = normalize;
  o.reduction = losskit::Reduction::sum;
  SECTION("at other classes: finite, zero gradient there, counted in the K of the mean") {
    for (int c : {0, 17, 39}) x(1, c) = ninf;
    RowMatrix<TestType> g(3, 40);
    const double v = losskit::ldr_kl(x, y, g, o).value;
    CHECK(std::isfinite(v));
    CHECK(g.allFinite());
    CHECK(g(1, 17) == TestType(0));
    CHECK_THAT(v, Catch::Matchers::WithinRel(double(ldr_mean(x, y, o) * 3), tol<TestType>()));
    if constexpr (std::is_same_v<TestType, double>) lktest::check_labeled_fd(ldr_fn<double>(), x, y, o);
  }
  SECTION("at the target: +inf in the raw form (finite when normalised), finite gradient") {
    x(2, 3) = ninf;
    RowMatrix<TestType> g(3, 40);
    const double v = losskit::ldr_kl(x, y, g, o).value;
    CHECK(g.allFinite());
    if (normalize)
      CHECK(std::isfinite(v));
    else
      CHECK(v == std::numeric_limits<double>::infinity());
  }
  SECTION("NaN propagates") {
    x(0, 5) = std::numeric_limits<TestType>::quiet_NaN();
    CHECK(std::isnan(losskit::ldr_kl(x, y, o).value));
  }
}

TEST_CASE("ldr_kl: defaults are LDRLoss_V1's (threshold 2, Lambda 1, softplus/mean normalisation)", "[ldr_kl]") {
  const LdrKlOptions d;
  CHECK(d.margin == 2.0);
  CHECK(d.lambda == 1.0);
  CHECK(d.normalize);
  CHECK(d.reduction == losskit::Reduction::mean);
}

TEMPLATE_TEST_CASE("ldr_kl: reductions, ignore_index, weights, threads", "[ldr_kl][options]", float, double) {
  LdrKlOptions o;
  o.normalize = GENERATE(true, false);
  lktest::labeled_row_options<TestType>(ldr_fn<TestType>(), o);
}

TEST_CASE("ldr_kl: errors name the function, the argument and the value", "[ldr_kl][errors]") {
  lktest::labeled_errors<LdrKlOptions>(ldr_fn<float>(), "ldr_kl", {});
  const auto x = lktest::random_logits<float>(2, 5, 1);
  const Labels64 y{0, 1};
  RowMatrix<float> g = RowMatrix<float>::Constant(2, 5, 7.f);
  LdrKlOptions o;
  o.lambda = 0.0;
  CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { losskit::ldr_kl(x, y, g, o); }),
                    "losskit::ldr_kl: 'lambda' must be positive and finite, got 0"));
  o = {};
  o.margin = std::numeric_limits<double>::infinity();
  CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { losskit::ldr_kl(x, y, g, o); }),
                    "losskit::ldr_kl: 'margin' must be finite, got inf"));
  CHECK(g.cwiseAbs().minCoeff() == 7.f);
  CHECK(g.cwiseAbs().maxCoeff() == 7.f);
}

// ---- AdaptiveLDR -------------------------------------------------------------------------------

TEST_CASE("AdaptiveLDR: the lambda step and the loss on a hand-computed case", "[aldr]") {
  // One row, K = 3, z = (1, 2, 0.5), label 0; lambda0 = 1, alpha = 2, margin 0.5, L1 normalisation:
  //   ||z||_1 = 3.5, yh = 3 z / 3.5 = (0.857142857142857, 1.714285714285714, 0.428571428571429)
  //   pi = softmax(yh / 1) = (0.24950987, 0.58794966, 0.16254047)
  //   pi' = (pi + 1e-5) / (1 + 3e-5);  KL(pi' || uniform) = sum pi' log(3 pi') = 0.144643...
  //   lambda = 1 - KL / (2 log 3) = 0.934170...
  // Numbers from this Python (float64) snippet:
  //   import numpy as np; z = np.array([1., 2., .5]); yh = 3 * z / np.abs(z).sum()
  //   p = np.exp(yh - yh.max()); p /= p.sum(); p = (p + 1e-5) / (p + 1e-5).sum()
  //   kl = (p * np.log(3 * p)).sum(); lam = 1 - kl / (2 * np.log(3))
  //   v = 0.5 * np.array([0, 1, 1]) + yh - yh[0]
  //   loss = lam * np.log(np.exp(v / lam).mean()) - 2 * np.log(3) / 2 * (lam - 1) ** 2
  //   print(repr(kl), repr(lam), repr(loss))
  // -> 0.14464338239100735 0.9341699597378598 0.6963725333715547
  const double kl = 0.14464338239100735, lam = 0.9341699597378598, loss = 0.6963725333715547;
  RowMatrix<double> x(1, 3);
  x << 1.0, 2.0, 0.5;
  AdaptiveLDR a(4, 1.0);
  AdaptiveLdrOptions o;
  o.alpha = 2.0;
  o.margin = 0.5;
  RowMatrix<double> g(1, 3);
  const auto r = a.loss(x, Labels64{0}, Labels64{2}, g, o);
  CHECK_THAT(a.state()[2], Catch::Matchers::WithinRel(lam, 1e-13));
  CHECK_THAT(a.state()[2], Catch::Matchers::WithinRel(1.0 - kl / (2.0 * std::log(3.0)), 1e-13));
  CHECK(a.state()[0] == 1.0);
  CHECK(a.state()[1] == 1.0);
  CHECK(a.state()[3] == 1.0);
  CHECK_THAT(r.value, Catch::Matchers::WithinRel(loss, 1e-13));
  // the same with plain long-double loops
  const Vec yh = scores(x.row(0), Norm::l1);
  const ld l1 = aldr_lambda(yh, 1, 1, 2);
  CHECK_THAT(double(l1), Catch::Matchers::WithinRel(lam, 1e-13));
  CHECK_THAT(double(aldr_loss(yh, 0, l1, 1, o)), Catch::Matchers::WithinRel(loss, 1e-13));

  SECTION("the next visit starts from the stored lambda") {
    RowMatrix<double> x2(1, 3);
    x2 << -0.5, 0.25, 3.0;
    const auto r2 = a.loss(x2, Labels64{1}, Labels64{2}, g, o);
    const Vec yh2 = scores(x2.row(0), Norm::l1);
    const ld l2 = aldr_lambda(yh2, ld(lam), 1, 2);
    CHECK_THAT(a.state()[2], Catch::Matchers::WithinRel(double(l2), 1e-13));
    CHECK_THAT(r2.value, Catch::Matchers::WithinRel(double(aldr_loss(yh2, 1, l2, 1, o)), 1e-13));
  }
  SECTION("update = false evaluates with the stored lambda and leaves it") {
    o.update = false;
    const std::vector<double> stored = a.state();
    RowMatrix<double> g2(1, 3);
    const auto r2 = a.loss(x, Labels64{0}, Labels64{2}, g2, o);
    CHECK(a.state() == stored);
    CHECK(r2.value == r.value);  // same lambda, same logits
    CHECK(g2 == g);
  }
}

TEMPLATE_TEST_CASE("AdaptiveLDR: values and state against the long-double formulas", "[aldr]", float, double) {
  const int cols = GENERATE(2, 17, 1000, 32000);
  const auto mode = GENERATE(0, 1, 2);  // raw, L1, softplus + L1
  AdaptiveLdrOptions o;
  o.normalize = mode != 0;
  o.softplus = mode == 2;
  o.alpha = 2.0;
  o.margin = 0.1;
  const double lambda0 = 3.0;
  const Eigen::Index rows = cols >= 32000 ? 2 : 3;
  CAPTURE(cols, mode);
  AdaptiveLDR a = spread_state(5, lambda0);
  const Labels64 ids{4, 0, 2};
  const Labels64 idr(ids.begin(), ids.begin() + rows);
  const auto x = lktest::random_logits<TestType>(rows, cols, 51u + std::uint32_t(cols));
  const auto y = lktest::random_labels(rows, cols, 9u);
  ld want = 0;
  std::vector<double> want_state = a.state();
  for (Eigen::Index r = 0; r < rows; ++r) {
    const Vec yh = scores(x.row(r), aldr_norm(o));
    const std::size_t id = std::size_t(idr[std::size_t(r)]);
    const ld l = aldr_lambda(yh, ld(a.state()[id]), lambda0, ld(o.alpha));
    want_state[id] = double(l);
    want += aldr_loss(yh, std::size_t(y[std::size_t(r)]), l, lambda0, o);
  }
  const double got = a.loss(x, y, idr, o).value;
  CHECK_THAT(got, Catch::Matchers::WithinRel(double(want / ld(rows)), tol<TestType>()));
  for (std::size_t i = 0; i < 5; ++i) {
    CAPTURE(i);
    CHECK_THAT(a.state()[i], Catch::Matchers::WithinAbs(want_state[i], std::is_same_v<TestType, float> ? 1e-6 * lambda0 : 1e-12));
  }
}

TEST_CASE("AdaptiveLDR: gradient matches central differences at fixed lambdas (update = false)", "[aldr]") {
  const int cols = GENERATE(2, 3, 17, 1000);
  const auto mode = GENERATE(0, 1, 2);
  AdaptiveLdrOptions o;
  o.normalize = mode != 0;
  o.softplus = mode == 2;
  o.margin = GENERATE(0.1, 1.0);
  o.update = false;
  CAPTURE(cols, mode, o.margin);
  const auto x = lktest::random_logits<double>(3, cols, 61u + std::uint32_t(cols));
  const auto y = lktest::random_labels(3, cols, 10u);
  lktest::check_labeled_fd(aldr_fn<double>(spread_state(3, 2.0)), x, y, o);
}

TEMPLATE_TEST_CASE("AdaptiveLDR: at lambda_i = lambda0 without a step it is ldr_kl", "[aldr]", float, double) {
  const auto x = lktest::random_logits<TestType>(4, 33, 20);
  const auto y = lktest::random_labels(4, 33, 21);
  const bool normalize = GENERATE(true, false);
  AdaptiveLdrOptions ao;
  ao.update = false;
  ao.normalize = normalize;
  ao.softplus = true;  // softplus + L1 = ldr_kl's softplus / mean
  ao.margin = 0.7;
  LdrKlOptions lo;
  lo.normalize = normalize;
  lo.margin = 0.7;
  lo.lambda = 2.5;
  RowMatrix<TestType> ga(4, 33), gl(4, 33);
  const double va = aldr_fn<TestType>(AdaptiveLDR(4, 2.5))(x, y, &ga, ao).value;
  const double vl = losskit::ldr_kl(x, y, gl, lo).value;
  CHECK_THAT(va, Catch::Matchers::WithinRel(vl, 1e-12));
  CHECK(ga == gl);
}

TEST_CASE("AdaptiveLDR: only counted rows update; repeated ids are visited in row order", "[aldr]") {
  const auto x = lktest::random_logits<double>(4, 20, 22);
  const Labels64 y{3, -100, 5, 7};
  AdaptiveLdrOptions o;
  o.alpha = 1.5;
  SECTION("ignored rows and rows of weight 0 leave their sample alone (their ids are not even checked)") {
    AdaptiveLDR a(6, 1.0);
    const std::vector<double> w{1.0, 1.0, 0.0, 1.0};
    o.weights = w;
    a.loss(x, y, Labels64{0, 99, 2, 3}, o);
    CHECK(a.state()[0] != 1.0);
    CHECK(a.state()[2] == 1.0);
    CHECK(a.state()[3] != 1.0);
    CHECK(a.state()[1] == 1.0);
  }
  SECTION("a repeated id: each visit sees the previous one's lambda, on any thread count") {
    lktest::check_repeated_ids([](Eigen::Index) { return AdaptiveLDR(3, 1.0); }, o);
  }
}

TEMPLATE_TEST_CASE("AdaptiveLDR: reductions, ignore_index, weights, threads", "[aldr][options]", float, double) {
  AdaptiveLdrOptions o;
  o.softplus = GENERATE(false, true);
  lktest::labeled_row_options<TestType>(aldr_fn<TestType>(spread_state(64, 1.5)), o);
}

TEST_CASE("AdaptiveLDR: a row with ||z||_1 = 0 has a finite loss and a zero gradient", "[aldr]") {
  RowMatrix<double> x = lktest::random_logits<double>(2, 10, 25);
  x.row(1).setZero();
  AdaptiveLDR a(2, 1.0);
  RowMatrix<double> g(2, 10);
  AdaptiveLdrOptions o;
  o.reduction = losskit::Reduction::none;
  const auto r = a.loss(x, Labels64{1, 2}, Labels64{0, 1}, g, o);
  CHECK(std::isfinite(r.value));
  CHECK(g.row(1).cwiseAbs().maxCoeff() == 0.0);
  CHECK(a.state()[1] == 1.0);  // uniform scores: KL = 0, lambda = lambda0
  // yh = 0: v = margin on the other classes
  CHECK_THAT(r.per_row(1), Catch::Matchers::WithinRel(std::log((9 * std::exp(1.0) + 1) / 10), 1e-12));
}

TEST_CASE("AdaptiveLDR: state save and restore round-trip exactly", "[aldr][state]") {
  AdaptiveLDR a(7, 2.0);
  const auto x = lktest::random_logits<float>(5, 30, 26);
  const auto y = lktest::random_labels(5, 30, 27);
  const Labels64 ids{6, 1, 3, 0, 5};
  a.loss(x, y, ids);
  const RowMatrix<float> x2 = x * 2.f;
  a.loss(x2, y, Labels64{1, 2, 3, 4, 5});
  const std::vector<double> saved = a.state();

  SECTION("state() and load(vector)") {
    AdaptiveLDR b(7, 2.0);
    b.load(a.state());
    CHECK(b.state() == saved);
    RowMatrix<float> g1(5, 30), g2(5, 30);
    const double v1 = a.loss(x, y, ids, g1).value, v2 = b.loss(x, y, ids, g2).value;
    CHECK(v1 == v2);
    CHECK(g1 == g2);
    CHECK(a.state() == b.state());
  }
  SECTION("save(ostream) and load(istream), lambda0 included") {
    std::stringstream ss;
    a.save(ss);
    AdaptiveLDR b(7, 5.0);
    b.load(ss);
    CHECK(b.state() == saved);
    CHECK(b.lambda0() == 2.0);
    CHECK(a.loss(x, y, ids).value == b.loss(x, y, ids).value);
  }
  SECTION("bad streams and vectors are rejected and leave the state alone") {
    AdaptiveLDR b(7, 1.0);
    const std::vector<double> before = b.state();
    std::stringstream wrong_size;
    AdaptiveLDR(6, 1.0).save(wrong_size);
    CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { b.load(wrong_size); }),
                      "losskit::AdaptiveLDR::load: the stream holds 6 samples, this object 7"));
    std::stringstream junk("definitely not a state");
    CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { b.load(junk); }),
                      "losskit::AdaptiveLDR::load: not an AdaptiveLDR state stream"));
    std::stringstream full;
    a.save(full);
    std::stringstream cut(full.str().substr(0, full.str().size() - 3));
    CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { b.load(cut); }),
                      "losskit::AdaptiveLDR::load: truncated stream"));
    CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { b.load(std::vector<double>(3, 1.0)); }),
                      "'lambdas' has 3 entries, expected one per sample (7)"));
    std::vector<double> neg(7, 1.0);
    neg[4] = -1.0;
    CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { b.load(neg); }),
                      "'lambdas' must be positive and finite, got -1 at sample 4"));
    CHECK(b.state() == before);
    CHECK(b.lambda0() == 1.0);
  }
}

TEST_CASE("AdaptiveLDR: defaults are ALDRLoss_V1's (threshold 1, Lambda 1, alpha 1, no softplus)", "[aldr]") {
  const AdaptiveLdrOptions d;
  CHECK(d.margin == 1.0);
  CHECK(d.alpha == 1.0);
  CHECK(d.normalize);
  CHECK(!d.softplus);
  CHECK(d.update);
  const AdaptiveLDR a(3);
  CHECK(a.lambda0() == 1.0);
  CHECK(a.state() == std::vector<double>(3, 1.0));
  CHECK(a.num_samples() == 3);
}

TEST_CASE("AdaptiveLDR: errors name the function, the argument and the value", "[aldr][errors]") {
  lktest::labeled_errors<AdaptiveLdrOptions>(aldr_fn<float>(AdaptiveLDR(4)), "AdaptiveLDR::loss", {});
  AdaptiveLDR a(3, 1.0);
  const auto x = lktest::random_logits<float>(2, 5, 1);
  const Labels64 y{0, 1};
  RowMatrix<float> g = RowMatrix<float>::Constant(2, 5, 7.f);
  AdaptiveLdrOptions o;
  auto err = [&](const Labels64& ids, const AdaptiveLdrOptions& oo) {
    return lktest::error_of<std::invalid_argument>([&] { a.loss(x, y, ids, g, oo); });
  };
  CHECK(lktest::has(lktest::error_of<std::out_of_range>([&] { a.loss(x, y, Labels64{0, 3}, g, o); }),
                    "losskit::AdaptiveLDR::loss: 'ids' has 3 at row 1, expected a sample id in [0, 3)"));
  CHECK(lktest::has(lktest::error_of<std::out_of_range>([&] { a.loss(x, y, Labels64{-1, 0}, g, o); }),
                    "'ids' has -1 at row 0"));
  CHECK(lktest::has(err(Labels64{0}, o), "losskit::AdaptiveLDR::loss: 'ids' has 1 entries, expected one per row (2)"));
  o.alpha = 0.5;
  CHECK(lktest::has(err(Labels64{0, 1}, o), "losskit::AdaptiveLDR::loss: 'alpha' must be finite and >= 1"));
  CHECK(lktest::has(err(Labels64{0, 1}, o), "got 0.5"));
  o = {};
  o.margin = std::numeric_limits<double>::quiet_NaN();
  CHECK(lktest::has(err(Labels64{0, 1}, o), "'margin' must be finite, got nan"));
  const RowMatrix<float> x1 = lktest::random_logits<float>(2, 1, 2);
  RowMatrix<float> g1(2, 1);
  CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { a.loss(x1, Labels64{0, 0}, Labels64{0, 1}, g1); }),
                    "'logits' has 1 column, ALDR-KL needs at least 2 classes"));
  CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { AdaptiveLDR(3, 0.0); }),
                    "losskit::AdaptiveLDR: 'lambda0' must be positive and finite, got 0"));
  CHECK(g.cwiseAbs().minCoeff() == 7.f);
  CHECK(g.cwiseAbs().maxCoeff() == 7.f);
  CHECK(a.state() == std::vector<double>(3, 1.0));
}

// Every form writes a row's gradient during the next row's first loop over the logits (the raw
// form's streaming pass, the normalised forms' score pass).
TEST_CASE("ldr_kl and AdaptiveLDR: pipelined rows equal rows alone", "[ldr_kl][aldr][large]") {
  LdrKlOptions o;
  o.margin = 0.5;
  o.lambda = 2.0;
  for (const bool normalize : {false, true}) {
    CAPTURE(normalize);
    o.normalize = normalize;
    lktest::check_rows_alone<LdrKlOptions>(ldr_fn<float>(), o);
  }
  AdaptiveLdrOptions ao;
  for (const int form : {0, 1, 2}) {  // raw; L1; softplus + L1
    ao.normalize = form > 0;
    ao.softplus = form == 2;
    for (const bool update : {false, true}) {
      CAPTURE(form, update);
      ao.update = update;
      // (the L1 form without softplus needs finite logits)
      lktest::check_rows_alone<AdaptiveLdrOptions>(
          aldr_fn<float>(AdaptiveLDR(72, 2.0)), ao, [](RowMatrix<float>&, Labels64&) {}, form != 1);
    }
  }
}

// The raw form joins the target's term in double at the scale of the exp loop: a dominant target
// with a small lambda (the loss is a near-cancellation of lambda lse and z_y, the target's
// gradient entry pi_y - 1 nearly 0) and margins much larger than the logits stay at float
// accuracy. (A review found pi_y computed at the exact 1 / lambda against an lse at 1 / lambda
// rounded to float: a target entry of +2.5e-5 for z = (20, 0, 0), lambda = 0.03, where it is ~0.)
TEST_CASE("ldr_kl raw form: dominant target, small lambda, large margin", "[ldr_kl]") {
  struct Case { std::vector<float> z; double lambda, margin; };
  const std::vector<Case> cases{{{20, 0, 0}, 0.03, 1.0},   {{200, 0, 0}, 0.03, 1.0}, {{30, 0}, 1.8e-4, 1.0},
                                {{3, 1, -2}, 0.5, 1000.0}, {{0.5f, 0.25f, 2}, 0.1, 10.0}};
  for (const auto& c : cases) {
    CAPTURE(c.z, c.lambda, c.margin);
    const auto cols = Eigen::Index(c.z.size());
    RowMatrix<float> x(1, cols);
    for (Eigen::Index j = 0; j < cols; ++j) x(0, j) = c.z[std::size_t(j)];
    const Labels64 y{0};
    LdrKlOptions o;
    o.normalize = false;
    o.lambda = c.lambda;
    o.margin = c.margin;
    RowMatrix<float> g(1, cols);
    const double v = losskit::ldr_kl(x, y, g, o).value;
    // long double: L = lambda log(mean exp(v / lambda)), grad = softmax(v / lambda) - e_y
    std::vector<ld> vk(static_cast<std::size_t>(cols));
    ld m = -std::numeric_limits<ld>::infinity();
    for (Eigen::Index j = 0; j < cols; ++j) {
      vk[std::size_t(j)] = (j == 0 ? 0.0L : ld(c.margin)) + ld(x(0, j)) - ld(x(0, 0));
      m = std::max(m, vk[std::size_t(j)] / ld(c.lambda));
    }
    ld sum = 0;
    for (const ld t : vk) sum += std::exp(t / ld(c.lambda) - m);
    const ld want = ld(c.lambda) * (m + std::log(sum) - std::log(ld(cols)));
    CHECK_THAT(v, Catch::Matchers::WithinAbs(double(want), 1e-6 * std::max(1.0, std::fabs(double(want)))));
    for (Eigen::Index j = 0; j < cols; ++j) {
      const ld p = std::exp(vk[std::size_t(j)] / ld(c.lambda) - m) / sum - (j == 0 ? 1.0L : 0.0L);
      CHECK_THAT(double(g(0, j)), Catch::Matchers::WithinAbs(double(p), 1e-6));
    }
    CHECK(g(0, 0) <= 0.0f);  // pi_y - 1 is never positive
  }
}
