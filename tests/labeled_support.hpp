#pragma once
// Test helpers for losses over logits with one label per row (spherical_z_loss, ldr_kl,
// AdaptiveLDR, ELR): seeded labels, a central finite-difference check, the row options every
// such loss shares (reductions, ignore_index, weights, normalizer, grad_scale, threads) and the
// argument errors they share.

#include "test_support.hpp"

#include <limits>
#include <cstdint>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace lktest {

using Labels64 = std::vector<std::int64_t>;

inline Labels64 random_labels(Eigen::Index rows, Eigen::Index cols, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int64_t> u(0, std::int64_t(cols) - 1);
  Labels64 y(std::size_t(rows), 0);
  for (auto& v : y) v = u(rng);
  return y;
}

// A labeled loss: (logits, labels, grad or nullptr, options) -> LossResult. It must be a pure
// function of its arguments (stateful losses: a fresh copy of the object per call).
template <class T, class O>
using LabeledFn = std::function<losskit::LossResult(const RowMatrix<T>&, const Labels64&, RowMatrix<T>*, const O&)>;

// Central differences in double of fn at fixed labels and options (check_gradient_fd).
template <class O>
void check_labeled_fd(const LabeledFn<double, O>& fn, const RowMatrix<double>& x, const Labels64& y, const O& o,
                      double tol = 1e-6) {
  check_gradient_fd([&](const RowMatrix<double>& w, RowMatrix<double>* g) { return fn(w, y, g, o).value; }, x, tol);
}

// Losses with per-sample state (make(cols) builds a fresh object over 3 samples): a sample id
// repeated within one call is visited once per row, in row order (the call equals one call per
// row), and 1 and 2 threads give the same bits, gradient and state.
template <class O, class Make>
void check_repeated_ids(Make&& make, O o) {
  o.reduction = losskit::Reduction::sum;
  const auto x = random_logits<double>(4, 20, 8);
  const Labels64 y{3, 4, 5, 7};
  auto a = make(20), b = make(20);
  const double va = a.loss(x, y, Labels64{1, 0, 1, 1}, o).value;
  double vb = 0;
  for (Eigen::Index r = 0; r < 4; ++r) {
    const RowMatrix<double> xr = x.row(r);
    vb += b.loss(xr, Labels64{y[std::size_t(r)]}, Labels64{r == 1 ? 0 : 1}, o).value;
  }
  CHECK_THAT(va, Catch::Matchers::WithinRel(vb, 1e-14));
  CHECK(a.state() == b.state());
  const auto big = random_logits<double>(64, 1031, 9);
  const auto by = random_labels(64, 1031, 10);
  Labels64 ids(64);
  for (std::size_t i = 0; i < 64; ++i) ids[i] = std::int64_t(i % 3);
  auto c = make(1031), d = make(1031);
  RowMatrix<double> g1(64, 1031), g2(64, 1031);
  o.threads = 1;
  const double v1 = c.loss(big, by, ids, g1, o).value;
  o.threads = 2;
  const double v2 = d.loss(big, by, ids, g2, o).value;
  CHECK(v1 == v2);
  CHECK(g1 == g2);
  CHECK(c.state() == d.state());
}

// Reductions, ignore_index, weights, normalizer, grad_scale, all rows ignored, thread-count
// independence: checked through the relations between calls of the same loss.
template <class T, class O>
void labeled_row_options(const LabeledFn<T, O>& fn, O o) {
  using losskit::Reduction;
  const Eigen::Index rows = 5, cols = 37;
  const auto x = random_logits<T>(rows, cols, 21);
  const auto y = random_labels(rows, cols, 22);
  const T tol = std::is_same_v<T, float> ? T(1e-6) : T(1e-12);
  RowMatrix<T> g_sum(rows, cols), g(rows, cols);
  o.reduction = Reduction::none;
  const auto none = fn(x, y, nullptr, o);
  REQUIRE(none.per_row.size() == rows);
  CHECK(none.count == rows);
  CHECK_THAT(none.value, Catch::Matchers::WithinRel(none.per_row.sum(), 1e-12));
  o.reduction = Reduction::sum;
  const auto sum = fn(x, y, &g_sum, o);
  CHECK_THAT(sum.value, Catch::Matchers::WithinRel(none.per_row.sum(), 1e-12));
  o.reduction = Reduction::mean;
  const auto mean = fn(x, y, &g, o);
  CHECK_THAT(mean.value, Catch::Matchers::WithinRel(sum.value / rows, 1e-12));
  CHECK(mean.denominator == double(rows));
  CHECK((g * T(rows) - g_sum).cwiseAbs().maxCoeff() <= tol * std::max(T(1), g_sum.cwiseAbs().maxCoeff()));

  SECTION("ignore_index rows: skipped, exact zero gradient, not counted") {
    Labels64 yi = y;
    yi[1] = yi[3] = o.ignore_index;
    RowMatrix<T> gi = RowMatrix<T>::Constant(rows, cols, T(9));
    const auto r = fn(x, yi, &gi, o);
    CHECK(r.count == 3);
    CHECK(r.denominator == 3.0);
    CHECK_THAT(r.value, Catch::Matchers::WithinRel((none.per_row(0) + none.per_row(2) + none.per_row(4)) / 3, 1e-6));
    CHECK(gi.row(1).cwiseAbs().maxCoeff() == T(0));
    CHECK(gi.row(3).cwiseAbs().maxCoeff() == T(0));
    CHECK((gi.row(2) * T(3) - g_sum.row(2)).cwiseAbs().maxCoeff() <= tol * std::max(T(1), g_sum.cwiseAbs().maxCoeff()));
  }
  SECTION("weights: weighted mean over the weight sum, gradient scaled by the weight") {
    const std::vector<double> w{1.0, 0.0, 2.0, 0.5, 1.0};
    O ow = o;
    ow.weights = w;
    RowMatrix<T> gw = RowMatrix<T>::Constant(rows, cols, T(9));
    const auto r = fn(x, y, &gw, ow);
    const double want = (none.per_row(0) + 2 * none.per_row(2) + 0.5 * none.per_row(3) + none.per_row(4)) / 4.5;
    CHECK_THAT(r.value, Catch::Matchers::WithinRel(want, 1e-6));
    CHECK(r.count == 4);
    CHECK(gw.row(1).cwiseAbs().maxCoeff() == T(0));
    CHECK((gw.row(2) * T(4.5) - T(2) * g_sum.row(2)).cwiseAbs().maxCoeff() <=
          T(10) * tol * std::max(T(1), g_sum.cwiseAbs().maxCoeff()));
  }
  SECTION("normalizer replaces the denominator") {
    O on = o;
    on.normalizer = 100.0;
    CHECK_THAT(fn(x, y, nullptr, on).value, Catch::Matchers::WithinRel(sum.value / 100, 1e-12));
  }
  SECTION("grad_scale multiplies the gradient only") {
    O os = o;
    os.grad_scale = -3.0;
    RowMatrix<T> gs(rows, cols);
    CHECK(fn(x, y, &gs, os).value == mean.value);
    CHECK((gs + T(3) * g).cwiseAbs().maxCoeff() <= tol * std::max(T(1), g.cwiseAbs().maxCoeff()));
  }
  SECTION("forward-only call gives the same value") { CHECK(fn(x, y, nullptr, o).value == mean.value); }
  SECTION("every row ignored: 0 and a zero gradient, never NaN") {
    const Labels64 all(std::size_t(rows), o.ignore_index);
    RowMatrix<T> gi = RowMatrix<T>::Constant(rows, cols, T(7));
    const auto r = fn(x, all, &gi, o);
    CHECK(r.value == 0.0);
    CHECK(r.count == 0);
    CHECK(gi.cwiseAbs().maxCoeff() == T(0));
  }
  SECTION("same bits with 1 and 2 threads") {
    const auto bx = random_logits<T>(64, 1031, 5);
    const auto by = random_labels(64, 1031, 6);
    RowMatrix<T> g1(64, 1031), g2(64, 1031);
    O o1 = o, o2 = o;
    o1.threads = 1;
    o2.threads = 2;
    const double v1 = fn(bx, by, &g1, o1).value, v2 = fn(bx, by, &g2, o2).value;
    CHECK(v1 == v2);
    CHECK(g1 == g2);
  }
  SECTION("gradient in place (grad aliases the logits)") {
    RowMatrix<T> xg = x;
    fn(xg, y, &xg, o);
    CHECK(xg == g);
  }
}

// Kernels that write a row's gradient during the next row's pass (pipelined rows): rows in a
// matrix give each row's gradient alone, bit for bit (sum reduction), with non-temporal stores
// (72 x 32000 floats), an ignored row and (unless the form rejects it) a -inf logit among them;
// in place on two threads too. `prepare(x, y)` may set up rows of the kernel's own (e.g. a -inf
// target). (Whole-matrix comparisons as one bool: a failure does not print 2.3M numbers.)
template <class O, class Prepare = void (*)(RowMatrix<float>&, Labels64&)>
void check_rows_alone(const LabeledFn<float, O>& fn, O o, Prepare prepare = [](RowMatrix<float>&, Labels64&) {},
                      bool neg_inf = true) {
  const int rows = 72, cols = 32000;
  auto x = random_logits<float>(rows, cols, 77);
  auto y = random_labels(rows, cols, 78);
  if (neg_inf) x(6, 17) = -std::numeric_limits<float>::infinity();
  y[9] = o.ignore_index;
  prepare(x, y);
  o.reduction = losskit::Reduction::sum;
  RowMatrix<float> g(rows, cols), alone(rows, cols);
  fn(x, y, &g, o);
  for (int r = 0; r < rows; ++r) {
    RowMatrix<float> one(1, cols);
    const Labels64 yr{y[std::size_t(r)]};
    fn(RowMatrix<float>(x.row(r)), yr, &one, o);
    alone.row(r) = one.row(0);
  }
  const bool same_as_alone = g == alone;
  CHECK(same_as_alone);
  CHECK(g.row(9).cwiseAbs().maxCoeff() == 0.0f);
  RowMatrix<float> xg = x;
  o.threads = 2;
  fn(xg, y, &xg, o);
  const bool same_in_place = xg == g;
  CHECK(same_in_place);
}

template <class Exception, class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Exception& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception type: ") + e.what();
  }
  return "no exception";
}

inline bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// The argument errors every labeled loss shares; `name` is the function named in the message
// ("losskit::<name>: ..."). Every failed call must leave the gradient untouched.
template <class O>
void labeled_errors(const LabeledFn<float, O>& fn, const std::string& name, const O& o) {
  const auto x = random_logits<float>(4, 9, 3);
  const auto y = random_labels(4, 9, 4);
  RowMatrix<float> g = RowMatrix<float>::Constant(4, 9, 7.f);
  const std::string prefix = "losskit::" + name + ": ";
  auto untouched = [&] { return g.cwiseAbs().minCoeff() == 7.f && g.cwiseAbs().maxCoeff() == 7.f; };

  Labels64 bad = y;
  bad[2] = 9;
  std::string e = error_of<std::out_of_range>([&] { fn(x, bad, &g, o); });
  CAPTURE(e);
  CHECK(has(e, prefix + "'labels' has 9 at row 2"));
  CHECK(has(e, "[0, 9)"));
  CHECK(untouched());
  bad[2] = -1;
  e = error_of<std::out_of_range>([&] { fn(x, bad, &g, o); });
  CHECK(has(e, prefix + "'labels' has -1 at row 2"));
  CHECK(untouched());

  e = error_of<std::invalid_argument>([&] { fn(x, Labels64{0, 1, 2}, &g, o); });
  CHECK(has(e, prefix + "'labels' has 3 entries, expected one per row (4)"));
  RowMatrix<float> g_bad = RowMatrix<float>::Constant(4, 8, 7.f);
  e = error_of<std::invalid_argument>([&] { fn(x, y, &g_bad, o); });
  CHECK(has(e, prefix + "'grad' has shape 4x8, expected 4x9"));
  CHECK(g_bad.cwiseAbs().minCoeff() == 7.f);

  O ow = o;
  const std::vector<double> w{1.0, 2.0};
  ow.weights = w;
  e = error_of<std::invalid_argument>([&] { fn(x, y, &g, ow); });
  CHECK(has(e, prefix + "'weights' has 2 entries"));
  const std::vector<double> wn{1.0, -2.0, 1.0, 1.0};
  ow.weights = wn;
  e = error_of<std::invalid_argument>([&] { fn(x, y, &g, ow); });
  CHECK(has(e, prefix + "'weights' must be finite and >= 0, got -2"));
  O ot = o;
  ot.threads = -1;
  e = error_of<std::invalid_argument>([&] { fn(x, y, &g, ot); });
  CHECK(has(e, prefix + "'threads' must be >= 0"));
  O on = o;
  on.normalizer = -1.0;
  e = error_of<std::invalid_argument>([&] { fn(x, y, &g, on); });
  CHECK(has(e, prefix + "'normalizer' must be >= 0"));
  const RowMatrix<float> empty(4, 0);
  RowMatrix<float> g_empty(4, 0);
  e = error_of<std::invalid_argument>([&] { fn(empty, y, &g_empty, o); });
  CHECK(has(e, prefix + "'logits' has shape 4x0"));
  CHECK(untouched());
}

}  // namespace lktest
