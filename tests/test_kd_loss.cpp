// kd_loss: equals alpha * CE + (1 - alpha) * T^2 * kl_div computed separately (losskit::kl_div
// and a plain long-double cross entropy), central-difference gradients, labels, edge cases, errors.
#include "test_support.hpp"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

using lktest::ld;
using lktest::RowMatrix;
using losskit::KdLossOptions;
using losskit::Reduction;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {

std::vector<std::int64_t> some_labels(Eigen::Index rows, Eigen::Index cols) {
  std::vector<std::int64_t> y(static_cast<std::size_t>(rows));
  for (Eigen::Index r = 0; r < rows; ++r) y[std::size_t(r)] = (r * 7919 + 3) % cols;
  return y;
}

// Plain cross entropy of one row (T = 1), long double: lse - z_y, and its gradient softmax - e_y.
template <class T>
ld reference_ce(const RowMatrix<T>& z, Eigen::Index r, std::int64_t y, std::vector<ld>* grad = nullptr) {
  const auto x = lktest::log_softmax(z.row(r), 1);
  if (grad) {
    grad->resize(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) (*grad)[i] = std::exp(x[i]) - (std::int64_t(i) == y ? 1 : 0);
  }
  return -x[std::size_t(y)];
}

template <class T>
double tol() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-11;
}
template <class T>
double abs_tol() {  // near 0 (e.g. one class: both terms vanish up to rounding)
  return std::is_same_v<T, float> ? 1e-6 : 1e-12;
}

}  // namespace

TEMPLATE_TEST_CASE("kd_loss: alpha CE + (1 - alpha) T^2 kl_div, value, parts and gradient", "[kd_loss]", float, double) {
  using T = TestType;
  const int cols = GENERATE(1, 3, 17, 1000, 32000);
  const double temp = GENERATE(1.0, 2.0, 4.0);
  const double alpha = GENERATE(0.0, 0.3, 1.0);
  const Eigen::Index rows = cols >= 32000 ? 2 : 3;
  CAPTURE(cols, temp, alpha);
  const auto s = lktest::random_logits<T>(rows, cols, 31u + std::uint32_t(cols));
  const auto t = lktest::random_logits<T>(rows, cols, 57u + std::uint32_t(cols));
  const auto labels = some_labels(rows, cols);
  KdLossOptions o;
  o.alpha = alpha;
  o.temperature = temp;
  RowMatrix<T> g(rows, cols);
  const auto res = losskit::kd_loss(s, t, labels, g, o);

  // The KL part through losskit::kl_div (with Hinton's T^2), the CE part in long double.
  losskit::DivergenceOptions d;
  d.temperature = temp;
  d.scale_by_t_squared = true;
  RowMatrix<T> gkl(rows, cols);
  const double kl_t2 = losskit::kl_div(s, t, gkl, d).value;
  ld ce = 0;
  RowMatrix<double> gce(rows, cols);
  for (Eigen::Index r = 0; r < rows; ++r) {
    std::vector<ld> gr;
    ce += reference_ce(s, r, labels[std::size_t(r)], &gr);
    for (int c = 0; c < cols; ++c) gce(r, c) = double(gr[std::size_t(c)]) / double(rows);
  }
  ce /= rows;
  const double want = alpha * double(ce) + (1 - alpha) * kl_t2;
  CHECK_THAT(res.value, WithinRel(want, tol<T>()) || WithinAbs(want, abs_tol<T>()));
  CHECK_THAT(res.ce, WithinRel(double(ce), tol<T>()) || WithinAbs(double(ce), abs_tol<T>()));
  CHECK_THAT(res.kl * temp * temp, WithinRel(kl_t2, tol<T>()) || WithinAbs(kl_t2, abs_tol<T>()));
  const double parts = alpha * res.ce + (1 - alpha) * temp * temp * res.kl;
  CHECK_THAT(res.value, WithinRel(parts, 1e-12) || WithinAbs(parts, 1e-15));
  const RowMatrix<double> want_g = alpha * gce + (1 - alpha) * gkl.template cast<double>();
  CHECK((g.template cast<double>() - want_g).cwiseAbs().maxCoeff() <= (std::is_same_v<T, float> ? 1e-6 : 1e-12));
  CHECK(res.count == rows);

  SECTION("float gradient within 1e-6 of the double gradient") {
    RowMatrix<float> gf(rows, cols);
    RowMatrix<double> gd(rows, cols);
    const RowMatrix<float> sf = s.template cast<float>(), tf = t.template cast<float>();
    losskit::kd_loss(sf, tf, labels, gf, o);
    losskit::kd_loss(RowMatrix<double>(sf.cast<double>()), RowMatrix<double>(tf.cast<double>()), labels, gd, o);
    CHECK((gf.cast<double>() - gd).cwiseAbs().maxCoeff() <= 1e-6);
  }
  SECTION("without T^2 the KL term is (1 - alpha) kl_div") {
    o.scale_by_t_squared = false;
    d.scale_by_t_squared = false;
    const double kl = losskit::kl_div(s, t, d).value;
    const double want2 = alpha * double(ce) + (1 - alpha) * kl;
    CHECK_THAT(losskit::kd_loss(s, t, labels, o).value, WithinRel(want2, tol<T>()) || WithinAbs(want2, abs_tol<T>()));
  }
}

TEST_CASE("kd_loss: gradient matches central differences for every option combination", "[kd_loss][fd]") {
  const int cols = GENERATE(1, 3, 17, 300);
  const double temp = GENERATE(1.0, 2.5);
  const double alpha = GENERATE(0.0, 0.3, 1.0);
  const bool t2 = GENERATE(true, false);
  const int mode = GENERATE(0, 1, 2, 3);  // mean; sum; none + ignored row + grad_scale; row weights + normalizer
  CAPTURE(cols, temp, alpha, t2, mode);
  const auto s = lktest::random_logits<double>(4, cols, 3u + std::uint32_t(cols));
  const auto t = lktest::random_logits<double>(4, cols, 8u + std::uint32_t(cols));
  auto labels = some_labels(4, cols);
  const std::vector<double> w{1.0, 0.5, 0.0, 2.0};
  KdLossOptions o;
  o.alpha = alpha;
  o.temperature = temp;
  o.scale_by_t_squared = t2;
  if (mode == 1) o.reduction = Reduction::sum;
  if (mode == 2) {
    o.reduction = Reduction::none;
    labels[1] = -100;
    o.grad_scale = 0.7;
  }
  if (mode == 3) {
    o.weights = w;
    o.normalizer = 5.0;
  }
  lktest::check_gradient_fd(
      [&](const RowMatrix<double>& x, RowMatrix<double>* g) {
        return (g ? losskit::kd_loss(x, t, labels, *g, o) : losskit::kd_loss(x, t, labels, o)).value * o.grad_scale;
      },
      s);
}

TEMPLATE_TEST_CASE("kd_loss: ignored rows, -inf logits, threads, in place", "[kd_loss][inf]", float, double) {
  using T = TestType;
  const T ninf = -std::numeric_limits<T>::infinity();
  auto s = lktest::random_logits<T>(4, 50, 1), t = lktest::random_logits<T>(4, 50, 2);
  std::vector<std::int64_t> labels{3, 7, 11, 49};
  KdLossOptions o;
  o.temperature = 2.0;
  o.alpha = 0.4;
  SECTION("ignore_index rows are skipped by both terms (never read)") {
    KdLossOptions on = o;
    on.reduction = Reduction::none;
    const auto all = losskit::kd_loss(s, t, labels, on);
    labels[1] = -100;
    s.row(1).setConstant(std::numeric_limits<T>::quiet_NaN());
    RowMatrix<T> g = RowMatrix<T>::Constant(4, 50, T(5));
    const auto r = losskit::kd_loss(s, t, labels, g, o);
    CHECK(r.count == 3);
    CHECK_THAT(r.value, WithinRel((all.per_row(0) + all.per_row(2) + all.per_row(3)) / 3, 1e-6));
    CHECK(g.row(1).cwiseAbs().maxCoeff() == T(0));
    CHECK(g.allFinite());
    labels.assign(4, -100);
    const auto none = losskit::kd_loss(s, t, labels, g, o);
    CHECK(none.value == 0.0);
    CHECK(none.ce == 0.0);
    CHECK(none.kl == 0.0);
    CHECK(g.cwiseAbs().maxCoeff() == T(0));
  }
  SECTION("-inf student logits where the teacher has no mass: finite") {
    for (int c : {0, 20, 33}) s(2, c) = t(2, c) = ninf;
    RowMatrix<T> g(4, 50);
    const auto r = losskit::kd_loss(s, t, labels, g, o);
    CHECK(std::isfinite(r.value));
    CHECK(g.allFinite());
    CHECK(g(2, 20) == T(0));
    if constexpr (std::is_same_v<T, double>)
      lktest::check_gradient_fd(
          [&](const RowMatrix<double>& x, RowMatrix<double>* gg) {
            return (gg ? losskit::kd_loss(x, t, labels, *gg, o) : losskit::kd_loss(x, t, labels, o)).value;
          },
          s);
  }
  SECTION("a -inf target logit: that row's loss is +inf, the other rows and the gradient stay finite") {
    t(1, 7) = ninf;  // no teacher mass there: only CE sees it
    s(1, 7) = ninf;
    o.reduction = Reduction::none;
    RowMatrix<T> g(4, 50);
    const auto r = losskit::kd_loss(s, t, labels, g, o);
    CHECK(std::isinf(r.per_row(1)));
    CHECK(std::isfinite(r.per_row(0)));
    CHECK(std::isfinite(r.per_row(3)));
    CHECK(g.allFinite());
    o.alpha = 0.0;  // a term with weight 0 contributes exactly 0, even when infinite
    CHECK(std::isfinite(losskit::kd_loss(s, t, labels, o).per_row(1)));
  }
  SECTION("same bits with 1 and 2 threads; gradient over the student logits") {
    const auto bs = lktest::random_logits<T>(64, 1031, 5), bt = lktest::random_logits<T>(64, 1031, 6);
    const auto bl = some_labels(64, 1031);
    RowMatrix<T> g1(64, 1031), g2(64, 1031);
    const auto r1 = losskit::kd_loss(bs, bt, bl, g1, o);
    o.threads = 2;
    const auto r2 = losskit::kd_loss(bs, bt, bl, g2, o);
    CHECK(r1.value == r2.value);
    CHECK(r1.ce == r2.ce);
    CHECK(r1.kl == r2.kl);
    CHECK(g1 == g2);
    RowMatrix<T> inplace = bs;
    CHECK(losskit::kd_loss(inplace, bt, bl, inplace, o).value == r1.value);
    CHECK(inplace == g1);
  }
}

// 300 x 8192 floats is 9.8 MB: written with streaming stores; each half stays below 8 MB. Rows
// are pipelined (a row's gradient goes out during the next row's pass, its target entry after
// the row), so this checks the hand-over, the last row of each thread and both kinds of stores.
TEST_CASE("kd_loss: large gradients (non-temporal stores) equal the same rows computed in small pieces", "[kd_loss][large]") {
  const auto s = lktest::random_logits<float>(300, 8192, 1), t = lktest::random_logits<float>(300, 8192, 2);
  auto y = some_labels(300, 8192);
  y[149] = y[150] = y[299] = -100;  // ignored rows at the pieces' and the threads' edges
  const std::vector<std::int64_t> y1(y.begin(), y.begin() + 150), y2(y.begin() + 150, y.end());
  for (const double temp : {1.0, 2.0}) {
    CAPTURE(temp);
    KdLossOptions o;
    o.reduction = Reduction::sum;
    o.temperature = temp;
    o.alpha = 0.3;
    RowMatrix<float> whole(300, 8192), parts = RowMatrix<float>::Zero(300, 8192);
    const double v = losskit::kd_loss(s, t, y, whole, o).value;
    const double v1 = losskit::kd_loss(s.topRows(150), t.topRows(150), y1, parts.topRows(150), o).value;
    const double v2 = losskit::kd_loss(s.bottomRows(150), t.bottomRows(150), y2, parts.bottomRows(150), o).value;
    CHECK_THAT(v, WithinRel(v1 + v2, 1e-12));
    CHECK(whole == parts);
    // the target entries: softmax_y - 1 terms, negative where the others are mostly positive
    for (Eigen::Index r = 0; r < 300; r += 37) CHECK(whole(r, y[std::size_t(r)]) < 0.0f);
    CHECK(whole.row(149).cwiseAbs().maxCoeff() == 0.0f);
    RowMatrix<float> g3(300, 8192);
    o.threads = 3;  // rows 0-99, 100-199, 200-299: other hand-overs than the pieces'
    CHECK(losskit::kd_loss(s, t, y, g3, o).value == v);
    CHECK(g3 == whole);
    RowMatrix<float> inplace = s;  // the gradient over the student logits
    CHECK(losskit::kd_loss(inplace, t, y, inplace, o).value == v);
    CHECK(inplace == whole);
  }
}

TEST_CASE("kd_loss: errors; labels out of range are std::out_of_range naming row and value", "[kd_loss][errors]") {
  const auto s = lktest::random_logits<float>(4, 10, 1), t = lktest::random_logits<float>(4, 10, 2);
  RowMatrix<float> g = RowMatrix<float>::Constant(4, 10, 42.f);
  std::vector<std::int32_t> labels{0, 1, 2, 3};
  auto has = [](const std::string& s_, const char* part) { return s_.find(part) != std::string::npos; };
  KdLossOptions o;
  o.alpha = 1.5;
  CHECK(has(lktest::invalid_argument_of([&] { losskit::kd_loss(s, t, labels, g, o); }),
            "losskit::kd_loss: 'alpha' must be in [0, 1], got 1.5"));
  o = {};
  o.temperature = -2;
  CHECK(has(lktest::invalid_argument_of([&] { losskit::kd_loss(s, t, labels, g, o); }), "'temperature' must be positive"));
  const std::vector<std::int32_t> three{0, 1, 2};
  CHECK(has(lktest::invalid_argument_of([&] { losskit::kd_loss(s, t, three, g, {}); }),
            "'labels' has 3 entries, expected one per row (4)"));
  const auto t9 = lktest::random_logits<float>(4, 9, 3);
  CHECK(has(lktest::invalid_argument_of([&] { losskit::kd_loss(s, t9, labels, g, {}); }),
            "'teacher' has shape 4x9, expected 4x10"));
  for (std::int32_t bad : {10, -1, -99}) {
    labels[2] = bad;
    const std::string what = lktest::out_of_range_of([&] { losskit::kd_loss(s, t, labels, g, {}); });
    CAPTURE(what);
    CHECK(has(what, ("losskit::kd_loss: 'labels' has " + std::to_string(bad) +
                     " at row 2, expected a class in [0, 10) or ignore_index (-100)").c_str()));
  }
  CHECK((g.array() == 42.f).all());
}
