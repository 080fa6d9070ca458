// PS-KD: the alpha_t schedule, one-hot rows before the first update, update / targets round
// trips on hand-computed cases, the whole step (targets, update, soft cross entropy) with
// central-difference gradients, save / restore, errors; and the ground-truth-guided
// self-distillation targets.
#include "test_support.hpp"

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using lktest::RowMatrix;
using losskit::ProgressiveTargets;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {

bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// Row-wise softmax in long double, as double.
RowMatrix<double> softmax_rows(const RowMatrix<double>& z, double temp = 1.0) {
  RowMatrix<double> p(z.rows(), z.cols());
  for (Eigen::Index r = 0; r < z.rows(); ++r) {
    const auto x = lktest::log_softmax(z.row(r), 1.0L / temp);
    for (Eigen::Index c = 0; c < z.cols(); ++c) p(r, c) = double(std::exp(x[std::size_t(c)]));
  }
  return p;
}

}  // namespace

TEST_CASE("ProgressiveTargets: alpha_t = alpha_T (epoch + 1) / E", "[ps_kd]") {
  ProgressiveTargets<> pt(10, 4);
  CHECK(pt.alpha_T() == 0.8);
  CHECK(pt.end_epoch() == 300);
  CHECK_THAT(pt.alpha(0), WithinRel(0.8 / 300, 1e-15));
  CHECK_THAT(pt.alpha(149), WithinRel(0.4, 1e-15));
  CHECK_THAT(pt.alpha(299), WithinRel(0.8, 1e-15));
  CHECK_THAT(pt.alpha(1000), WithinRel(0.8, 1e-15));  // stays at alpha_T after the last epoch
  ProgressiveTargets<double> other(3, 2, 0.5, 4);
  CHECK(other.alpha(0) == 0.125);
  CHECK(other.alpha(1) == 0.25);
  CHECK(other.alpha(3) == 0.5);
  CHECK(has(lktest::invalid_argument_of([&] { (void)pt.alpha(-1); }), "'epoch' must be >= 0, got -1"));
}

TEMPLATE_TEST_CASE("ProgressiveTargets: one-hot before the first update, then the mixture (hand-computed)", "[ps_kd]", float,
                   double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-7 : 1e-15;
  ProgressiveTargets<T> pt(3, 3, 0.8, 4);  // alpha_t = 0.2, 0.4, 0.6, 0.8
  const std::vector<std::int64_t> idx{2, 0};
  const std::vector<std::int32_t> y{1, 2};
  SECTION("first visit: one-hot of the label at any epoch") {
    for (std::int64_t epoch : {0, 1, 3}) {
      const RowMatrix<T> t = pt.targets(idx, y, epoch);
      RowMatrix<T> want(2, 3);
      want << 0, 1, 0, 0, 0, 1;
      CHECK(t == want);
    }
    CHECK_FALSE(pt.has_prediction(2));
  }
  SECTION("update stores softmax(logits); targets mix it with the label") {
    RowMatrix<T> z(2, 3);
    z << T(0), T(std::log(2.0)), T(std::log(3.0)),  // softmax (1/6, 2/6, 3/6)
        T(5), T(5), T(5);                           // softmax (1/3, 1/3, 1/3)
    pt.update(idx, z);
    CHECK(pt.has_prediction(2));
    CHECK(pt.has_prediction(0));
    CHECK_FALSE(pt.has_prediction(1));
    CHECK_THAT(double(pt.predictions()(2, 0)), WithinAbs(1.0 / 6, tol));
    CHECK_THAT(double(pt.predictions()(2, 1)), WithinAbs(2.0 / 6, tol));
    CHECK_THAT(double(pt.predictions()(2, 2)), WithinAbs(3.0 / 6, tol));
    CHECK(pt.predictions().row(1).isZero());
    // epoch 1: alpha_t = 0.4; sample 2 (label 1): 0.6 e_1 + 0.4 (1/6, 2/6, 3/6)
    const RowMatrix<T> t = pt.targets(idx, y, 1);
    CHECK_THAT(double(t(0, 0)), WithinAbs(0.4 / 6, tol));
    CHECK_THAT(double(t(0, 1)), WithinAbs(0.6 + 0.8 / 6, tol));
    CHECK_THAT(double(t(0, 2)), WithinAbs(0.2, tol));
    // sample 0 (label 2): 0.6 e_2 + 0.4 (1/3, 1/3, 1/3)
    CHECK_THAT(double(t(1, 0)), WithinAbs(0.4 / 3, tol));
    CHECK_THAT(double(t(1, 1)), WithinAbs(0.4 / 3, tol));
    CHECK_THAT(double(t(1, 2)), WithinAbs(0.6 + 0.4 / 3, tol));
    // a sample not in the update is still one-hot
    const std::vector<std::int64_t> one{1};
    const std::vector<std::int32_t> lab{0};
    CHECK(pt.targets(one, lab, 2)(0, 0) == T(1));
  }
  SECTION("a repeated index keeps its last row; targets into double output") {
    const std::vector<std::int64_t> twice{1, 1};
    RowMatrix<T> z(2, 3);
    z << T(1), T(2), T(3), T(0), T(0), T(std::log(2.0));  // the second: (1/4, 1/4, 1/2)
    pt.update(twice, z);
    CHECK_THAT(double(pt.predictions()(1, 2)), WithinAbs(0.5, tol));
    RowMatrix<double> out(1, 3);
    const std::vector<std::int64_t> one{1};
    const std::vector<std::int32_t> lab{0};
    pt.targets(one, lab, 3, out);  // alpha_t = 0.8: 0.2 e_0 + 0.8 (1/4, 1/4, 1/2)
    CHECK_THAT(out(0, 0), WithinAbs(0.4, tol));
    CHECK_THAT(out(0, 1), WithinAbs(0.2, tol));
    CHECK_THAT(out(0, 2), WithinAbs(0.4, tol));
  }
}

TEMPLATE_TEST_CASE("ProgressiveTargets::loss: targets, update and soft cross entropy in one step", "[ps_kd]", float, double) {
  using T = TestType;
  const int classes = GENERATE(1, 10, 1000);
  ProgressiveTargets<T> pt(50, classes);
  const std::vector<std::int64_t> idx{7, 3, 42, 0};
  const std::vector<std::int64_t> y{0, std::int64_t(classes - 1), std::int64_t(classes / 2), 0};
  const auto z0 = lktest::random_logits<T>(4, classes, 1), z1 = lktest::random_logits<T>(4, classes, 2);
  RowMatrix<T> g(4, classes);
  pt.loss(z0, idx, y, 0, g);  // epoch 0: one-hot targets, then P_prev = softmax(z0)
  const RowMatrix<T> targets = pt.targets(idx, y, 5);
  RowMatrix<T> want_g(4, classes), g1(4, classes);
  const double want = losskit::soft_cross_entropy(z1, targets, want_g).value;
  const auto r = pt.loss(z1, idx, y, 5, g1);
  CHECK(r.value == want);
  CHECK(g1 == want_g);
  // the gradient is (softmax(z) - target) / B, and the table now holds softmax(z1)
  const RowMatrix<double> p1 = softmax_rows(z1.template cast<double>());
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  CHECK(((g1.template cast<double>() - (p1 - targets.template cast<double>()) / 4.0).cwiseAbs().maxCoeff()) <= tol);
  for (int b = 0; b < 4; ++b)
    CHECK((pt.predictions().row(idx[std::size_t(b)]).template cast<double>() - p1.row(b)).cwiseAbs().maxCoeff() <= tol);
  SECTION("forward only: the same value, the same table update") {
    ProgressiveTargets<T> q(50, classes);
    q.loss(z0, idx, y, 0);
    CHECK(q.loss(z1, idx, y, 5).value == want);
    CHECK(q.predictions() == pt.predictions());
  }
  SECTION("the gradient may overwrite the logits: the table still gets softmax(logits)") {
    ProgressiveTargets<T> q(50, classes);
    q.loss(z0, idx, y, 0, g);
    RowMatrix<T> inplace = z1;
    CHECK(q.loss(inplace, idx, y, 5, inplace).value == want);
    CHECK(inplace == want_g);
    CHECK(q.predictions() == pt.predictions());
  }
}

TEST_CASE("ProgressiveTargets::loss: threads give the same bits; a repeated index stores its last row", "[ps_kd][threads]") {
  // 64 rows over 20 samples: most indices repeat, within and across the two threads' row ranges
  const int rows = 64, classes = 300;
  std::vector<std::int64_t> idx(rows), y(rows);
  for (int b = 0; b < rows; ++b) {
    idx[std::size_t(b)] = (b * 7) % 20;
    y[std::size_t(b)] = (b * 31) % classes;
  }
  const auto z0 = lktest::random_logits<float>(rows, classes, 3), z1 = lktest::random_logits<float>(rows, classes, 4);
  ProgressiveTargets<float> one(20, classes), two(20, classes);
  RowMatrix<float> g1(rows, classes), g2(rows, classes);
  losskit::SoftCrossEntropyOptions o;
  one.loss(z0, idx, y, 0, g1, o);
  const double v1 = one.loss(z1, idx, y, 3, g1, o).value;
  o.threads = 2;
  two.loss(z0, idx, y, 0, g2, o);
  const double v2 = two.loss(z1, idx, y, 3, g2, o).value;
  CHECK(v1 == v2);
  CHECK(g1 == g2);
  CHECK(one.predictions() == two.predictions());
  // each sample holds the softmax of its last row in z1
  const RowMatrix<double> p1 = softmax_rows(z1.cast<double>());
  for (int s = 0; s < 20; ++s) {
    int last = -1;
    for (int b = 0; b < rows; ++b)
      if (idx[std::size_t(b)] == s) last = b;
    CAPTURE(s, last);
    CHECK((two.predictions().row(s).cast<double>() - p1.row(last)).cwiseAbs().maxCoeff() <= 1e-6);
  }
}

// Distinct indices take the one-pass step (targets read from the table, predictions stored in
// the gradient pass); it must agree bit for bit with soft_cross_entropy over the built targets,
// store softmax(logits) for every row, ignored and zero-weight rows included (before their
// zero gradient overwrites logits in place), and give the same bits on two threads. 72 x 32000
// floats is past the non-temporal-store threshold for the gradient and the table rows.
TEST_CASE("ProgressiveTargets::loss, distinct indices: one pass, same bits as the built targets", "[ps_kd][threads]") {
  const int rows = 72, classes = 32000, samples = 100;
  std::vector<std::int64_t> idx(rows), y(rows), lab(rows, 1);
  for (int b = 0; b < rows; ++b) {
    idx[std::size_t(b)] = (b * 37 + 5) % samples;   // distinct
    y[std::size_t(b)] = (b * 7919 + b / 3) % classes;  // labels in every lane position
  }
  lab[3] = -100;                        // ignored through options.labels
  std::vector<double> weight(rows, 1.0);
  weight[10] = 0.0;                     // skipped through a zero weight
  weight[11] = 2.5;
  const auto z0 = lktest::random_logits<float>(rows, classes, 5), z1 = lktest::random_logits<float>(rows, classes, 6);
  losskit::SoftCrossEntropyOptions o;
  o.labels = lab;
  o.weights = weight;
  o.label_smoothing = 0.05;
  ProgressiveTargets<float> pt(samples, classes);
  std::vector<std::int64_t> first(idx.begin(), idx.begin() + rows / 2);  // half the samples seen before
  pt.update(first, RowMatrix<float>(z0.topRows(rows / 2)));
  const RowMatrix<float> targets = pt.targets(idx, y, 7);
  RowMatrix<float> want_g(rows, classes);
  const double want = losskit::soft_cross_entropy(z1, targets, want_g, o).value;
  const RowMatrix<double> p1 = softmax_rows(z1.cast<double>());
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    o.threads = threads;
    for (bool in_place : {false, true}) {
      CAPTURE(in_place);
      ProgressiveTargets<float> q = pt;
      RowMatrix<float> x = z1, g(rows, classes);
      const double v = in_place ? q.loss(x, idx, y, 7, x, o).value : q.loss(x, idx, y, 7, g, o).value;
      CHECK(v == want);
      CHECK((in_place ? x : g) == want_g);
      double worst = 0.0;
      for (int b = 0; b < rows; ++b) {
        CHECK(q.has_prediction(idx[std::size_t(b)]));
        worst = std::max(worst, (q.predictions().row(idx[std::size_t(b)]).cast<double>() - p1.row(b)).cwiseAbs().maxCoeff());
      }
      CHECK(worst <= 1e-6);
    }
  }
  // forward only: the same value and the same table as with a gradient
  ProgressiveTargets<float> a = pt, b = pt;
  RowMatrix<float> g(rows, classes);
  o.threads = 1;
  CHECK(a.loss(z1, idx, y, 7, o).value == want);
  b.loss(z1, idx, y, 7, g, o);
  CHECK(a.predictions() == b.predictions());
}

// The paths that keep the three passes with distinct indices: T != 1 (the prediction stays the
// softmax at T = 1) and logits of another type than the table's.
TEST_CASE("ProgressiveTargets::loss: T != 1 and mixed types keep the built-targets path", "[ps_kd]") {
  const int rows = 4, classes = 300;
  const std::vector<std::int64_t> idx{3, 1, 4, 0}, y{5, 299, 0, 150};
  const auto z0 = lktest::random_logits<float>(rows, classes, 11), z1 = lktest::random_logits<float>(rows, classes, 12);
  ProgressiveTargets<float> pt(5, classes);
  pt.update(idx, z0);
  const RowMatrix<double> p1 = softmax_rows(z1.cast<double>());
  SECTION("temperature 2") {
    losskit::SoftCrossEntropyOptions o;
    o.temperature = 2.0;
    const RowMatrix<float> targets = pt.targets(idx, y, 4);
    RowMatrix<float> want_g(rows, classes), g(rows, classes);
    const double want = losskit::soft_cross_entropy(z1, targets, want_g, o).value;
    CHECK(pt.loss(z1, idx, y, 4, g, o).value == want);
    CHECK(g == want_g);
    for (int b = 0; b < rows; ++b)
      CHECK((pt.predictions().row(idx[std::size_t(b)]).cast<double>() - p1.row(b)).cwiseAbs().maxCoeff() <= 1e-6);
  }
  SECTION("double logits, float table") {
    const RowMatrix<double> zd = z1.cast<double>();
    RowMatrix<double> targets(rows, classes);  // built in double from the float table
    pt.targets(idx, y, 4, targets);
    RowMatrix<double> want_g(rows, classes), g(rows, classes);
    const double want = losskit::soft_cross_entropy(zd, targets, want_g).value;
    CHECK(pt.loss(zd, idx, y, 4, g).value == want);
    CHECK(g == want_g);
    for (int b = 0; b < rows; ++b)
      CHECK((pt.predictions().row(idx[std::size_t(b)]).cast<double>() - p1.row(b)).cwiseAbs().maxCoeff() <= 1e-6);
  }
}

TEST_CASE("ProgressiveTargets::loss: gradient matches central differences", "[ps_kd][fd]") {
  const int classes = GENERATE(1, 3, 17, 200);
  const double eps = GENERATE(0.0, 0.1);
  ProgressiveTargets<double> pt(20, classes, 0.8, 10);
  const std::vector<std::int64_t> idx{4, 9, 0};
  const std::vector<std::int64_t> y{0, std::int64_t(classes - 1), std::int64_t(classes / 3)};
  pt.update(idx, lktest::random_logits<double>(3, classes, 3));
  const auto z = lktest::random_logits<double>(3, classes, 4);
  losskit::SoftCrossEntropyOptions o;
  o.label_smoothing = eps;
  const RowMatrix<double> targets = pt.targets(idx, y, 6);
  RowMatrix<double> g(3, classes);
  ProgressiveTargets<double> copy = pt;
  const double v = copy.loss(z, idx, y, 6, g, o).value;
  lktest::check_gradient_fd(
      [&](const RowMatrix<double>& x, RowMatrix<double>* gg) {
        return (gg ? losskit::soft_cross_entropy(x, targets, *gg, o) : losskit::soft_cross_entropy(x, targets, o)).value;
      },
      z);
  RowMatrix<double> g2(3, classes);
  CHECK(losskit::soft_cross_entropy(z, targets, g2, o).value == v);
  CHECK(g2 == g);
}

TEMPLATE_TEST_CASE("ProgressiveTargets: save / restore round-trips exactly", "[ps_kd][state]", float, double) {
  using T = TestType;
  ProgressiveTargets<T> pt(30, 17, 0.7, 120);
  const std::vector<std::int64_t> idx{3, 29, 11, 0, 5};
  pt.update(idx, lktest::random_logits<T>(5, 17, 9));
  std::stringstream state;
  pt.save(state);
  ProgressiveTargets<T> other(2, 5);
  other.restore(state);
  CHECK(other.num_samples() == 30);
  CHECK(other.num_classes() == 17);
  CHECK(other.alpha_T() == 0.7);
  CHECK(other.end_epoch() == 120);
  CHECK(other.predictions() == pt.predictions());
  for (std::int64_t i = 0; i < 30; ++i) CHECK(other.has_prediction(i) == pt.has_prediction(i));
  const std::vector<std::int64_t> batch{29, 1, 5};
  const std::vector<std::int32_t> labels{16, 0, 3};
  CHECK(other.targets(batch, labels, 17) == pt.targets(batch, labels, 17));

  SECTION("malformed, truncated or other-type states are rejected and change nothing") {
    std::stringstream junk("definitely not a state");
    CHECK(has(lktest::invalid_argument_of([&] { other.restore(junk); }), "not a saved ProgressiveTargets state"));
    std::string bytes = state.str();
    std::stringstream cut(bytes.substr(0, bytes.size() - 3));
    CHECK(has(lktest::invalid_argument_of([&] { other.restore(cut); }), "ProgressiveTargets::restore: truncated stream"));
    std::stringstream again(bytes);
    using Other = std::conditional_t<std::is_same_v<T, float>, double, float>;
    ProgressiveTargets<Other> wrong(1, 1);
    CHECK(has(lktest::invalid_argument_of([&] { wrong.restore(again); }), "-byte scalars"));
    CHECK(wrong.num_samples() == 1);
    CHECK(other.predictions() == pt.predictions());
  }
}

TEST_CASE("ProgressiveTargets: errors name the argument; a failed call changes nothing", "[ps_kd][errors]") {
  CHECK(has(lktest::invalid_argument_of([] { ProgressiveTargets<> bad(10, 0); }), "'num_classes' must be >= 1, got 0"));
  CHECK(has(lktest::invalid_argument_of([] { ProgressiveTargets<> bad(10, 3, 1.5); }), "'alpha_T' must be in [0, 1], got 1.5"));
  CHECK(has(lktest::invalid_argument_of([] { ProgressiveTargets<> bad(10, 3, 0.8, 0); }), "'end_epoch' must be >= 1, got 0"));
  ProgressiveTargets<> pt(10, 4);
  const auto z = lktest::random_logits<float>(2, 4, 1);
  std::vector<std::int64_t> idx{1, 2};
  std::vector<std::int64_t> y{0, 3};
  RowMatrix<float> g = RowMatrix<float>::Constant(2, 4, 42.f);
  idx[1] = 10;
  CHECK(has(lktest::out_of_range_of([&] { pt.loss(z, idx, y, 0, g); }),
            "losskit::ProgressiveTargets::loss: 'indices' has 10 at row 1, expected a sample index in [0, 10)"));
  CHECK(has(lktest::out_of_range_of([&] { pt.update(idx, z); }), "'indices' has 10 at row 1"));
  idx[1] = 2;
  y[0] = -100;
  CHECK(has(lktest::out_of_range_of([&] { (void)pt.targets(idx, y, 0); }), "'labels' has -100 at row 0, expected a class in [0, 4)"));
  y[0] = 0;
  const auto z5 = lktest::random_logits<float>(2, 5, 1);
  CHECK(has(lktest::invalid_argument_of([&] { pt.update(idx, z5); }), "'logits' has shape 2x5, expected 2x4"));
  CHECK(has(lktest::invalid_argument_of([&] { (void)pt.targets(idx, y, -2); }), "'epoch' must be >= 0, got -2"));
  RowMatrix<float> wrong(3, 4);
  CHECK(has(lktest::invalid_argument_of([&] { pt.targets(idx, y, 0, wrong); }), "'out' has shape 3x4, expected 2x4"));
  losskit::SoftCrossEntropyOptions o;
  o.label_smoothing = 2.0;
  CHECK(has(lktest::invalid_argument_of([&] { pt.loss(z, idx, y, 0, g, o); }), "'label_smoothing' must be in [0, 1]"));
  CHECK_FALSE(pt.has_prediction(1));  // nothing was stored by the failed calls
  CHECK(pt.predictions().isZero());
  CHECK((g.array() == 42.f).all());
}

TEMPLATE_TEST_CASE("self_distillation_targets: w_gt onehot + (1 - w_gt) softmax(teacher / T)", "[ps_kd][self_distillation]",
                   float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-7 : 1e-15;
  SECTION("hand case") {
    RowMatrix<T> t(1, 3);
    t << T(0), T(2 * std::log(2.0)), T(2 * std::log(3.0));  // at T = 2: softmax (1/6, 2/6, 3/6)
    const std::vector<std::int32_t> y{0};
    losskit::SelfDistillationTargetOptions o;
    o.gt_weight = 0.25;
    o.temperature = 2.0;
    RowMatrix<T> out(1, 3);
    losskit::self_distillation_targets(t, y, out, o);
    CHECK_THAT(double(out(0, 0)), WithinAbs(0.25 + 0.75 / 6, tol));
    CHECK_THAT(double(out(0, 1)), WithinAbs(0.75 * 2 / 6, tol));
    CHECK_THAT(double(out(0, 2)), WithinAbs(0.75 * 3 / 6, tol));
  }
  SECTION("rows sum to 1; w_gt = 1 is one-hot, w_gt = 0 is the teacher's softmax; in place") {
    const int cols = GENERATE(1, 17, 32000);
    const auto t = lktest::random_logits<T>(3, cols, 5);
    std::vector<std::int64_t> y{0, cols - 1, cols / 2};
    losskit::SelfDistillationTargetOptions o;
    o.temperature = 1.5;
    RowMatrix<T> out(3, cols);
    losskit::self_distillation_targets(t, y, out, o);
    for (int r = 0; r < 3; ++r) CHECK_THAT(double(out.row(r).template cast<double>().sum()), WithinAbs(1.0, 1e-6));
    RowMatrix<T> inplace = t;
    losskit::self_distillation_targets(inplace, y, inplace, o);
    CHECK(inplace == out);
    o.gt_weight = 0.0;
    losskit::self_distillation_targets(t, y, out, o);
    CHECK((out.template cast<double>() - softmax_rows(t.template cast<double>(), 1.5)).cwiseAbs().maxCoeff() <= 1e-7);
    o.gt_weight = 1.0;
    losskit::self_distillation_targets(t, y, out, o);
    for (int r = 0; r < 3; ++r) CHECK(out(r, y[std::size_t(r)]) == T(1));
    CHECK(out.sum() == T(3));
  }
  SECTION("errors") {
    const auto t = lktest::random_logits<T>(2, 4, 5);
    RowMatrix<T> out = RowMatrix<T>::Constant(2, 4, T(42));
    const std::vector<std::int64_t> bad{0, 4};
    CHECK(has(lktest::out_of_range_of([&] { losskit::self_distillation_targets(t, bad, out); }),
              "losskit::self_distillation_targets: 'labels' has 4 at row 1, expected a class in [0, 4)"));
    losskit::SelfDistillationTargetOptions o;
    o.gt_weight = -0.1;
    const std::vector<std::int64_t> y{0, 1};
    CHECK(has(lktest::invalid_argument_of([&] { losskit::self_distillation_targets(t, y, out, o); }), "'gt_weight' must be in [0, 1]"));
    CHECK((out.array() == T(42)).all());
  }
}
