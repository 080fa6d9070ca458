#include "labeled_support.hpp"

#include <limits>
#include <sstream>

using lktest::Labels64;
using lktest::ld;
using lktest::RowMatrix;
using lktest::Vec;
using losskit::ELR;
using losskit::ElrOptions;

namespace {

// One visit of a row in long double: updates t (if o.update) and returns the loss; grad, if
// given, receives dL/dz.
template <class Row>
ld elr_row(const Row& z, std::size_t y, Vec& t, const ElrOptions& o, Vec* grad = nullptr) {
  const std::size_t n = std::size_t(z.size());
  const Vec lq = lktest::log_softmax(z, 1);
  Vec q(n), p(n);
  ld sum_p = 0;
  for (std::size_t k = 0; k < n; ++k) {
    q[k] = std::exp(lq[k]);
    p[k] = std::min(std::max(q[k], ld(o.clamp)), 1 - ld(o.clamp));
    sum_p += p[k];
  }
  if (o.update)
    for (std::size_t k = 0; k < n; ++k) t[k] = ld(o.beta) * t[k] + (1 - ld(o.beta)) * p[k] / sum_p;
  ld s = 0, s_u = 0;
  for (std::size_t k = 0; k < n; ++k) {
    s += t[k] * p[k];
    if (q[k] >= ld(o.clamp) && q[k] <= 1 - ld(o.clamp)) s_u += t[k] * q[k];
  }
  if (grad) {
    grad->assign(n, 0);
    for (std::size_t k = 0; k < n; ++k) {
      const bool in_u = q[k] >= ld(o.clamp) && q[k] <= 1 - ld(o.clamp);
      (*grad)[k] = q[k] - (k == y ? 1 : 0) + ld(o.lambda) * q[k] * (s_u - (in_u ? t[k] : 0)) / (1 - s);
    }
  }
  return -lq[y] + ld(o.lambda) * std::log(1 - s);
}

template <class T>
std::vector<Vec> table_of(const ELR<T>& e) {
  std::vector<Vec> t(e.num_samples(), Vec(e.num_classes()));
  for (std::size_t i = 0; i < e.num_samples(); ++i)
    for (std::size_t k = 0; k < e.num_classes(); ++k) t[i][k] = ld(e.state()(Eigen::Index(i), Eigen::Index(k)));
  return t;
}

// ELR as a pure function: a fresh copy of `proto` per call, sample ids 0..rows-1.
template <class T>
lktest::LabeledFn<T, ElrOptions> elr_fn(const ELR<T>& proto) {
  return [proto](const RowMatrix<T>& x, const Labels64& y, RowMatrix<T>* g, const ElrOptions& o) {
    ELR<T> e = proto;
    Labels64 ids(std::size_t(x.rows()));
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = std::int64_t(i);
    return g ? e.loss(x, y, ids, *g, o) : e.loss(x, y, ids, o);
  };
}

// An ELR over `n` samples after two visits of every sample (a non-trivial table).
template <class T>
ELR<T> visited(std::size_t n, std::size_t classes, std::uint32_t seed) {
  ELR<T> e(n, classes);
  Labels64 ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = std::int64_t(i);
  for (std::uint32_t k = 0; k < 2; ++k)
    e.loss(lktest::random_logits<T>(Eigen::Index(n), Eigen::Index(classes), seed + k, 2.0),
           lktest::random_labels(Eigen::Index(n), Eigen::Index(classes), seed + 10 + k), ids);
  return e;
}

}  // namespace

TEMPLATE_TEST_CASE("ELR: the target update and the loss on a hand-computed case", "[elr]", float, double) {
  // C = 3, beta = 0.7, lambda = 3; sample 1 visited twice. Numbers from this Python (float64) snippet:
  //   import numpy as np
  //   def sm(z): e = np.exp(z - z.max()); return e / e.sum()
  //   t = np.zeros(3)
  //   for z, y in ((np.array([2., 0., -1.]), 0), (np.array([12., 0., -5.]), 2)):
  //       q = sm(z); p = np.clip(q, 1e-4, 1 - 1e-4); t = 0.7 * t + 0.3 * p / p.sum()
  //       print(t.tolist(), repr(-np.log(q[y]) + 3 * np.log(1 - (t * p).sum())))
  // -> [0.2531384203444019, 0.03425855981537835, 0.012603019840219819] -0.5680032321768588
  // -> [0.4771369002404815, 0.02401098887106481, 0.008852110888453843] 15.054954256883581
  // (the second row is clamped at both ends: q = (0.99999381, 6.1e-6, 4.1e-8))
  const double t1[3] = {0.2531384203444019, 0.03425855981537835, 0.012603019840219819};
  const double t2[3] = {0.4771369002404815, 0.02401098887106481, 0.008852110888453843};
  const double tol = std::is_same_v<TestType, float> ? 1e-6 : 1e-14;
  ELR<TestType> e(2, 3);
  RowMatrix<TestType> x(1, 3), g(1, 3);
  x << TestType(2), TestType(0), TestType(-1);
  const auto r1 = e.loss(x, Labels64{0}, Labels64{1}, g);
  CHECK_THAT(r1.value, Catch::Matchers::WithinAbs(-0.5680032321768588, tol * 10));
  for (int k = 0; k < 3; ++k) {
    CHECK_THAT(double(e.state()(1, k)), Catch::Matchers::WithinAbs(t1[k], tol));
    CHECK(e.state()(0, k) == TestType(0));
  }
  x << TestType(12), TestType(0), TestType(-5);
  const auto r2 = e.loss(x, Labels64{2}, Labels64{1}, g);
  CHECK_THAT(r2.value, Catch::Matchers::WithinRel(15.054954256883581, tol * 10));
  for (int k = 0; k < 3; ++k) CHECK_THAT(double(e.state()(1, k)), Catch::Matchers::WithinAbs(t2[k], tol));
  // the same with plain long-double loops, gradient included (clamped entries: no t_k term)
  Vec t(3, 0), want;
  const ElrOptions o;
  RowMatrix<double> xd(1, 3);
  xd << 2, 0, -1;
  elr_row(xd.row(0), 0, t, o);
  xd << 12, 0, -5;
  CHECK_THAT(double(elr_row(xd.row(0), 2, t, o, &want)), Catch::Matchers::WithinRel(15.054954256883581, 1e-14));
  for (int k = 0; k < 3; ++k) {
    CHECK_THAT(double(t[std::size_t(k)]), Catch::Matchers::WithinAbs(t2[k], 1e-15));
    CHECK_THAT(double(g(0, k)), Catch::Matchers::WithinAbs(double(want[std::size_t(k)]), std::is_same_v<TestType, float> ? 1e-6 : 1e-13));
  }
}

TEMPLATE_TEST_CASE("ELR: values, targets and gradient against the long-double formulas", "[elr]", float, double) {
  const int cols = GENERATE(1, 3, 17, 1000, 32000);
  const bool update = GENERATE(true, false);
  ElrOptions o;
  o.update = update;
  o.beta = 0.6;
  o.lambda = 2.0;
  const Eigen::Index rows = cols >= 32000 ? 2 : 3;
  CAPTURE(cols, update);
  ELR<TestType> e = visited<TestType>(4, std::size_t(cols), 70u + std::uint32_t(cols));
  auto t = table_of(e);
  const Labels64 ids{3, 0, 1};
  const Labels64 idr(ids.begin(), ids.begin() + rows);
  const auto x = lktest::random_logits<TestType>(rows, cols, 81u + std::uint32_t(cols), 2.0);
  const auto y = lktest::random_labels(rows, cols, 82u);
  ld want = 0;
  RowMatrix<double> want_g(rows, cols);
  for (Eigen::Index r = 0; r < rows; ++r) {
    Vec gr;
    want += elr_row(x.row(r), std::size_t(y[std::size_t(r)]), t[std::size_t(idr[std::size_t(r)])], o, &gr);
    for (Eigen::Index c = 0; c < cols; ++c) want_g(r, c) = double(gr[std::size_t(c)] / ld(rows));
  }
  RowMatrix<TestType> g(rows, cols);
  const double got = e.loss(x, y, idr, g, o).value;
  const bool is_float = std::is_same_v<TestType, float>;
  CHECK_THAT(got, Catch::Matchers::WithinRel(double(want / ld(rows)), is_float ? 2e-5 : 1e-12));
  CHECK((g.template cast<double>() - want_g).cwiseAbs().maxCoeff() <= (is_float ? 1e-6 : 1e-12));
  double worst = 0;
  for (std::size_t i = 0; i < 4; ++i)
    for (std::size_t k = 0; k < std::size_t(cols); ++k)
      worst = std::max(worst, std::fabs(double(e.state()(Eigen::Index(i), Eigen::Index(k))) - double(t[i][k])));
  CHECK(worst <= (is_float ? 1e-7 : 1e-15));
}

TEST_CASE("ELR: gradient matches central differences on a stored table (update = false)", "[elr]") {
  const int cols = GENERATE(3, 17, 1000);
  ElrOptions o;
  o.update = false;
  o.lambda = GENERATE(3.0, 7.0);
  CAPTURE(cols, o.lambda);
  // scale 2: no probability within a step of the clamp bounds
  const auto x = lktest::random_logits<double>(3, cols, 91u + std::uint32_t(cols), 2.0);
  const auto y = lktest::random_labels(3, cols, 92u);
  lktest::check_labeled_fd(elr_fn<double>(visited<double>(3, std::size_t(cols), 93u)), x, y, o);
}

TEMPLATE_TEST_CASE("ELR: update = true then update = false: same loss and gradient, table unchanged the second time",
                   "[elr]", float, double) {
  ELR<TestType> e = visited<TestType>(3, 50, 5);
  const auto x = lktest::random_logits<TestType>(3, 50, 6);
  const auto y = lktest::random_labels(3, 50, 7);
  const Labels64 ids{2, 0, 1};
  RowMatrix<TestType> g1(3, 50), g2(3, 50);
  ElrOptions o;
  const double v1 = e.loss(x, y, ids, g1, o).value;
  const RowMatrix<TestType> after = e.state();
  o.update = false;
  const double v2 = e.loss(x, y, ids, g2, o).value;
  CHECK(e.state() == after);
  CHECK(v1 == v2);
  CHECK(g1 == g2);
}

TEST_CASE("ELR: only counted rows update; repeated ids are visited in row order", "[elr]") {
  const auto x = lktest::random_logits<double>(4, 20, 8);
  SECTION("ignored rows and rows of weight 0 leave their sample alone (their ids are not even checked)") {
    ELR<double> e(5, 20);
    ElrOptions o;
    const std::vector<double> w{1.0, 1.0, 0.0, 1.0};
    o.weights = w;
    e.loss(x, Labels64{3, -100, 5, 7}, Labels64{0, 99, 2, 3}, o);
    CHECK(e.state().row(0).sum() > 0.0);
    CHECK(e.state().row(1).cwiseAbs().maxCoeff() == 0.0);
    CHECK(e.state().row(2).cwiseAbs().maxCoeff() == 0.0);
    CHECK(e.state().row(3).sum() > 0.0);
  }
  SECTION("a repeated id: each visit sees the previous one's target, on any thread count") {
    lktest::check_repeated_ids([](Eigen::Index cols) { return ELR<double>(3, std::size_t(cols)); }, ElrOptions{});
  }
}

TEMPLATE_TEST_CASE("ELR: reductions, ignore_index, weights, threads", "[elr][options]", float, double) {
  ElrOptions o;
  o.update = GENERATE(true, false);
  ELR<TestType> proto = visited<TestType>(64, 37, 11);
  const ELR<TestType> wide = visited<TestType>(64, 1031, 12);
  // labeled_row_options uses 37 classes, and 1031 for the thread test: one prototype per width.
  lktest::labeled_row_options<TestType, ElrOptions>(
      [proto, wide](const RowMatrix<TestType>& x, const Labels64& y, RowMatrix<TestType>* g, const ElrOptions& oo) {
        return elr_fn<TestType>(x.cols() == 37 ? proto : wide)(x, y, g, oo);
      },
      o);
}

// 300 x 8192 floats is 9.8 MB: written with streaming stores; each half stays below 8 MB (plain
// stores), so both kinds of stores, the fence before each row's target entry, ignored rows and
// the table updates are checked against the same rows in two calls, on 3 threads and in place.
TEST_CASE("ELR: large gradients (non-temporal stores) equal the same rows computed in small pieces", "[elr][large]") {
  const auto x = lktest::random_logits<float>(300, 8192, 3);
  Labels64 y(300), ids(300);
  for (std::int64_t r = 0; r < 300; ++r) {
    y[std::size_t(r)] = (r * 7919 + 5) % 8192;
    ids[std::size_t(r)] = (r * 17) % 300;  // a permutation: every row its own sample
  }
  y[149] = y[150] = y[299] = -100;  // ignored rows at the pieces' and the threads' edges
  const Labels64 y1(y.begin(), y.begin() + 150), y2(y.begin() + 150, y.end());
  const Labels64 i1(ids.begin(), ids.begin() + 150), i2(ids.begin() + 150, ids.end());
  ElrOptions o;
  o.reduction = losskit::Reduction::sum;
  for (const bool update : {true, false}) {
    CAPTURE(update);
    o.update = update;
    o.threads = 1;
    ELR<float> a(300, 8192), b(300, 8192), c(300, 8192), d(300, 8192);
    if (!update) {  // a table to evaluate against: one visit each first
      a.loss(x, y, ids, ElrOptions{});
      b.load(a.state());
      c.load(a.state());
      d.load(a.state());
    }
    RowMatrix<float> whole(300, 8192), parts = RowMatrix<float>::Zero(300, 8192), g3(300, 8192);
    const double v = a.loss(x, y, ids, whole, o).value;
    const double v1 = b.loss(x.topRows(150), y1, i1, parts.topRows(150), o).value;
    const double v2 = b.loss(x.bottomRows(150), y2, i2, parts.bottomRows(150), o).value;
    CHECK_THAT(v, Catch::Matchers::WithinRel(v1 + v2, 1e-12));
    CHECK(whole == parts);
    CHECK(a.state() == b.state());
    for (Eigen::Index r = 0; r < 300; r += 37) CHECK(whole(r, y[std::size_t(r)]) < 0.0f);  // the target entries
    CHECK(whole.row(150).cwiseAbs().maxCoeff() == 0.0f);
    o.threads = 3;  // rows 0-99, 100-199, 200-299
    CHECK(c.loss(x, y, ids, g3, o).value == v);
    CHECK(g3 == whole);
    CHECK(c.state() == a.state());
    RowMatrix<float> inplace = x;
    CHECK(d.loss(inplace, y, ids, inplace, o).value == v);
    CHECK(inplace == whole);
    CHECK(d.state() == a.state());
  }
}

TEMPLATE_TEST_CASE("ELR: -inf logits", "[elr][inf]", float, double) {
  const TestType ninf = -std::numeric_limits<TestType>::infinity();
  auto x = lktest::random_logits<TestType>(3, 30, 13);
  const Labels64 y{1, 2, 3};
  ELR<TestType> e = visited<TestType>(3, 30, 14);
  SECTION("at other classes: finite, zero gradient there, clamped like any small probability") {
    x(1, 7) = x(1, 20) = ninf;
    RowMatrix<TestType> g(3, 30);
    auto t = table_of(e);
    const double v = e.loss(x, y, Labels64{0, 1, 2}, g).value;
    CHECK(std::isfinite(v));
    CHECK(g.allFinite());
    CHECK(g(1, 7) == TestType(0));
    ld want = 0;
    for (Eigen::Index r = 0; r < 3; ++r) want += elr_row(x.row(r), std::size_t(y[std::size_t(r)]), t[std::size_t(r)], {});
    CHECK_THAT(v, Catch::Matchers::WithinRel(double(want / 3), std::is_same_v<TestType, float> ? 2e-5 : 1e-12));
    CHECK_THAT(double(e.state()(1, 7)), Catch::Matchers::WithinRel(double(t[1][7]), 1e-6));
  }
  SECTION("at the target: loss +inf, finite gradient") {
    x(2, 3) = ninf;
    RowMatrix<TestType> g(3, 30);
    CHECK(e.loss(x, y, Labels64{0, 1, 2}, g).value == std::numeric_limits<double>::infinity());
    CHECK(g.allFinite());
  }
  SECTION("NaN propagates") {
    x(0, 4) = std::numeric_limits<TestType>::quiet_NaN();
    CHECK(std::isnan(e.loss(x, y, Labels64{0, 1, 2}).value));
  }
}

TEMPLATE_TEST_CASE("ELR: state save and restore round-trip exactly", "[elr][state]", float, double) {
  ELR<TestType> e = visited<TestType>(6, 25, 15);
  const RowMatrix<TestType> saved = e.state();
  const auto x = lktest::random_logits<TestType>(3, 25, 16);
  const auto y = lktest::random_labels(3, 25, 17);
  const Labels64 ids{5, 2, 0};
  SECTION("state() and load(matrix)") {
    ELR<TestType> b(6, 25);
    b.load(e.state());
    CHECK(b.state() == saved);
    RowMatrix<TestType> g1(3, 25), g2(3, 25);
    CHECK(e.loss(x, y, ids, g1).value == b.loss(x, y, ids, g2).value);
    CHECK(g1 == g2);
    CHECK(e.state() == b.state());
  }
  SECTION("save(ostream) and load(istream)") {
    std::stringstream ss;
    e.save(ss);
    ELR<TestType> b(6, 25);
    b.load(ss);
    CHECK(b.state() == saved);
    CHECK(e.loss(x, y, ids).value == b.loss(x, y, ids).value);
  }
  SECTION("bad streams and tables are rejected and leave the state alone") {
    ELR<TestType> b(6, 25);
    std::stringstream other_shape, other_type, junk("not a state at all, really"), full;
    ELR<TestType>(6, 24).save(other_shape);
    ELR<std::conditional_t<std::is_same_v<TestType, float>, double, float>>(6, 25).save(other_type);
    e.save(full);
    std::stringstream cut(full.str().substr(0, full.str().size() - 1));
    const std::string fn = "losskit::ELR::load: ";
    CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { b.load(other_shape); }),
                      fn + "the stream holds a 6x24 table, this object 6x25"));
    CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { b.load(other_type); }), fn + "the stream holds "));
    CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { b.load(junk); }), fn + "not an ELR state stream"));
    CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { b.load(cut); }), fn + "truncated stream"));
    RowMatrix<TestType> bad = saved;
    bad(4, 3) = TestType(1.5);
    CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { b.load(bad); }),
                      fn + "'targets' must be in [0, 1], got 1.5 at (4, 3)"));
    CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { b.load(RowMatrix<TestType>::Zero(5, 25)); }),
                      fn + "'targets' has shape 5x25, expected 6x25"));
    CHECK(b.state().cwiseAbs().maxCoeff() == TestType(0));
  }
}

TEST_CASE("ELR: defaults are the reference's CIFAR-10 configuration", "[elr]") {
  const ElrOptions d;
  CHECK(d.beta == 0.7);
  CHECK(d.lambda == 3.0);
  CHECK(d.clamp == 1e-4);
  CHECK(d.update);
  const ELR<> e(4, 10);
  CHECK(e.num_samples() == 4);
  CHECK(e.num_classes() == 10);
  CHECK(e.state().cwiseAbs().maxCoeff() == 0.f);
}

TEST_CASE("ELR: errors name the function, the argument and the value", "[elr][errors]") {
  lktest::labeled_errors<ElrOptions>(
      [](const RowMatrix<float>& x, const Labels64& y, RowMatrix<float>* g, const ElrOptions& o) {
        return elr_fn<float>(ELR<float>(4, std::size_t(x.cols() > 0 ? x.cols() : 1)))(x, y, g, o);
      },
      "ELR::loss", {});
  ELR<float> e(3, 5);
  const auto x = lktest::random_logits<float>(2, 5, 1);
  const Labels64 y{0, 1};
  RowMatrix<float> g = RowMatrix<float>::Constant(2, 5, 7.f);
  auto err = [&](const ElrOptions& o) {
    return lktest::error_of<std::invalid_argument>([&] { e.loss(x, y, Labels64{0, 1}, g, o); });
  };
  ElrOptions o;
  o.beta = 1.5;
  CHECK(lktest::has(err(o), "losskit::ELR::loss: 'beta' must be in [0, 1], got 1.5"));
  o = {};
  o.lambda = -1.0;
  CHECK(lktest::has(err(o), "losskit::ELR::loss: 'lambda' must be finite and >= 0, got -1"));
  o = {};
  o.clamp = 0.0;
  CHECK(lktest::has(err(o), "losskit::ELR::loss: 'clamp' must be in (0, 0.5), got 0"));
  CHECK(lktest::has(lktest::error_of<std::out_of_range>([&] { e.loss(x, y, Labels64{0, 3}, g); }),
                    "losskit::ELR::loss: 'ids' has 3 at row 1, expected a sample id in [0, 3)"));
  const auto x6 = lktest::random_logits<float>(2, 6, 2);
  RowMatrix<float> g6(2, 6);
  CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { e.loss(x6, y, Labels64{0, 1}, g6); }),
                    "losskit::ELR::loss: 'logits' has 6 columns, expected num_classes (5)"));
  CHECK(lktest::has(lktest::error_of<std::invalid_argument>([&] { ELR<float>(3, 0); }),
                    "losskit::ELR: 'num_classes' must be at least 1, got 0"));
  CHECK(g.cwiseAbs().minCoeff() == 7.f);
  CHECK(g.cwiseAbs().maxCoeff() == 7.f);
  CHECK(e.state().cwiseAbs().maxCoeff() == 0.f);
}
