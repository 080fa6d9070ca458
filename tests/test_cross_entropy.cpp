// losskit::cross_entropy: PyTorch reference vectors (tests/reference/cross_entropy_refs.txt, made by
// tests/reference/gen_cross_entropy_refs.py), a long-double reference of the documented formula
// for the options torch lacks (per-row weights, normalizer, grad_scale), central differences for
// every option combination, invariances, -inf, ignored rows, zero weight sums, side outputs,
// threads and errors.
//
// Reference tolerances are the library's accuracy contract:
//   double: loss within 1e-10 relative (or 1e-12 absolute), gradient entries within 1e-10 absolute
//   float:  loss within 2e-5 relative (or 1e-6 absolute), gradient entries within 1e-6 absolute

#include "reference_vectors.hpp"
#include "test_support.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;
using losskit::CrossEntropyOptions;
using losskit::Reduction;
using lktest::ld;
using lktest::out_of_range_of;
using lktest::RowMatrix;

template <class T>
using Tol = losskit_test::ReferenceTolerance<T>;

template <class T>
void check_value(double got, double want) {
  CHECK_THAT(got, WithinRel(want, Tol<T>::value_rel) || WithinAbs(want, Tol<T>::value_abs));
}

// ---- long-double reference of the documented formula -----------------------------------------

struct Ref {
  ld value = 0, z_loss = 0, accuracy = 0;
  std::vector<ld> per_row, lse;
};

template <class T>
Ref reference(const RowMatrix<T>& x, const std::vector<std::int64_t>& y, const CrossEntropyOptions& o) {
  const Eigen::Index rows = x.rows(), V = x.cols();
  const ld eps = o.label_smoothing, c = o.z_loss, cap = o.softcap;
  std::vector<ld> ce(std::size_t(rows), 0), zl(std::size_t(rows), 0), wr(std::size_t(rows), 0);
  Ref out;
  out.lse.assign(std::size_t(rows), 0);
  ld d_ce = 0, d_z = 0, count = 0, correct = 0;
  for (Eigen::Index r = 0; r < rows; ++r) {
    const auto R = std::size_t(r);
    if (y[R] == o.ignore_index) continue;
    wr[R] = o.weights.empty() ? 1 : ld(o.weights[R]);
    if (wr[R] == 0) continue;
    std::vector<ld> s(static_cast<std::size_t>(V));
    ld m = -std::numeric_limits<ld>::infinity();
    Eigen::Index arg = 0;
    for (Eigen::Index i = 0; i < V; ++i) {
      s[std::size_t(i)] = cap > 0 ? cap * std::tanh(ld(x(r, i)) / cap) : ld(x(r, i));
      if (s[std::size_t(i)] > m) {
        m = s[std::size_t(i)];
        arg = i;
      }
    }
    ld S = 0;
    for (ld v : s) S += std::exp(v - m);
    const ld lse = m + std::log(S);
    const auto cls = [&](std::size_t i) { return o.weight.empty() ? ld(1) : ld(o.weight[i]); };
    const std::size_t t = std::size_t(y[R]);
    const ld keep = (1 - eps) * cls(t);
    if (keep != 0) ce[R] += keep * (lse - s[t]);
    if (eps > 0)
      for (std::size_t i = 0; i < s.size(); ++i)
        if (cls(i) != 0) ce[R] += eps / ld(V) * cls(i) * (lse - s[i]);
    zl[R] = c * lse * lse;
    out.lse[R] = lse;
    d_ce += wr[R] * cls(t);
    d_z += wr[R];
    count += 1;
    correct += arg == Eigen::Index(t);
  }
  if (o.normalizer > 0) {
    d_ce = d_z = o.normalizer;
  } else if (o.reduction != Reduction::mean) {
    d_ce = d_z = 1;
  }
  if (o.weight.empty() && !(o.normalizer > 0) && o.reduction == Reduction::mean) d_ce = d_z;
  out.per_row.assign(std::size_t(rows), 0);
  for (std::size_t r = 0; r < std::size_t(rows); ++r) {
    const ld a = d_ce > 0 ? wr[r] * ce[r] / d_ce : 0, b = d_z > 0 ? wr[r] * zl[r] / d_z : 0;
    out.per_row[r] = a + b;
    out.value += a + b;
    out.z_loss += b;
  }
  out.accuracy = count > 0 ? correct / count : 0;
  return out;
}

std::vector<std::int64_t> random_labels(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
  std::vector<std::int64_t> y(static_cast<std::size_t>(rows));
  for (std::size_t r = 0; r < y.size(); ++r)
    y[r] = std::int64_t(losskit_test::uniform01(seed, r) * double(cols));
  return y;
}

std::vector<double> class_weights(Eigen::Index cols, std::uint64_t seed) {
  std::vector<double> w(static_cast<std::size_t>(cols));
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = 0.25 + 1.75 * losskit_test::uniform01(seed, i);
  return w;
}

// ---- PyTorch reference vectors -----------------------------------------------------------------

struct CeRecord : losskit_test::LossRecord {
  int id = 0;
  std::uint64_t seed_x = 0, seed_y = 0, seed_w = 0, hash = 0;
  double scale = 0, eps = 0, z_loss = 0, softcap = 0;
  std::string reduction;
  std::vector<int> ignored;
  double z = 0, accuracy = 0;
  std::vector<double> lse;

  std::string describe() const {
    std::string s = "case " + std::to_string(id) + " " + std::to_string(rows) + "x" + std::to_string(cols) + " " +
                    reduction + " eps=" + std::to_string(eps) + " z=" + std::to_string(z_loss) +
                    " cap=" + std::to_string(softcap) + (seed_w ? " weighted" : "") + " ignored:";
    for (int r : ignored) s += " " + std::to_string(r);
    return s;
  }
};

std::vector<CeRecord> load_records() {
  using losskit_test::detail::TokenLine;
  auto on_case = [](TokenLine& tok) {
    CeRecord r;
    r.id = tok.integer();
    r.rows = tok.integer();
    r.cols = tok.integer();
    r.seed_x = tok.u64();
    r.seed_y = tok.u64();
    r.seed_w = tok.u64();
    r.scale = tok.number();
    r.reduction = tok.word();
    r.eps = tok.number();
    r.z_loss = tok.number();
    r.softcap = tok.number();
    for (int n = tok.integer(); n > 0; --n) r.ignored.push_back(tok.integer());
    return r;
  };
  auto on_field = [](TokenLine& tok, const std::string& key, CeRecord& r) {
    if (r.read_loss_field(tok, key)) return;
    if (key == "inputs")
      r.hash = tok.u64();
    else if (key == "z_loss")
      r.z = tok.number();
    else if (key == "accuracy")
      r.accuracy = tok.number();
    else if (key == "lse")
      r.lse = tok.numbers(std::size_t(r.rows));
    else
      tok.fail("unknown key '" + key + "'");
  };
  return losskit_test::read_records(losskit_test::test_data_path("reference/cross_entropy_refs.txt"), on_case,
                                    on_field);
}

const std::vector<CeRecord>& records() {
  static const std::vector<CeRecord> r = load_records();
  return r;
}

template <class T>
void check_record(const CeRecord& r) {
  Catch::StringMaker<double>::precision = 17;
  INFO(r.describe());
  const auto raw = losskit_test::reference_logits(r.seed_x, std::size_t(r.rows), std::size_t(r.cols), r.scale);
  REQUIRE(losskit_test::float_bits_hash(raw) == r.hash);
  RowMatrix<T> x(r.rows, r.cols);
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = T(raw[std::size_t(i)]);
  std::vector<std::int64_t> y = random_labels(r.rows, r.cols, r.seed_y);
  for (int row : r.ignored) y[std::size_t(row)] = -100;
  const std::vector<double> w = r.seed_w ? class_weights(r.cols, r.seed_w) : std::vector<double>{};

  CrossEntropyOptions o;
  o.reduction = r.reduction == "sum" ? Reduction::sum : r.reduction == "none" ? Reduction::none : Reduction::mean;
  o.label_smoothing = r.eps;
  o.z_loss = r.z_loss;
  o.softcap = r.softcap;
  o.weight = w;
  o.return_lse = true;
  RowMatrix<T> g = RowMatrix<T>::Constant(r.rows, r.cols, T(12345));
  const auto res = losskit::cross_entropy(x, y, g, o);
  {
    INFO("value");
    check_value<T>(res.value, r.value);
  }
  {
    INFO("z_loss");
    check_value<T>(res.z_loss, r.z);
  }
  CHECK(res.accuracy == r.accuracy);
  for (int i = 0; i < r.rows; ++i) {
    INFO("lse of row " << i);
    check_value<T>(res.lse(i), r.lse[std::size_t(i)]);
  }
  if (!r.per_row.empty()) {
    REQUIRE(res.per_row.size() == r.rows);
    for (int i = 0; i < r.rows; ++i) {
      INFO("per-row loss " << i);
      check_value<T>(res.per_row(i), r.per_row[std::size_t(i)]);
    }
  }
  const double tol = Tol<T>::grad_abs;
  if (r.full_grad) {
    double worst = 0;
    std::size_t at = 0;
    for (std::size_t i = 0; i < r.grad.size(); ++i) {
      const double d = std::fabs(double(g.data()[i]) - r.grad[i]);
      if (!(d <= worst)) {
        worst = d;
        at = i;
      }
    }
    INFO("worst gradient entry " << at);
    CHECK_THAT(double(g.data()[at]), WithinAbs(r.grad[at], tol));
  } else {
    const auto got = losskit_test::grad_sums(g.data(), std::size_t(r.rows), std::size_t(r.cols));
    CHECK_THAT(got.sum, WithinAbs(r.grad_sum, tol) || WithinRel(r.grad_sum, tol));
    CHECK_THAT(got.abs_sum, WithinAbs(r.grad_abs_sum, tol) || WithinRel(r.grad_abs_sum, tol));
    CHECK_THAT(got.dot, WithinAbs(r.grad_dot, tol) || WithinRel(r.grad_dot, tol));
    for (const auto& s : r.samples) {
      INFO("gradient entry (" << s.row << ", " << s.col << ")");
      CHECK_THAT(double(g(s.row, s.col)), WithinAbs(s.value, tol));
    }
  }
}

// The loss as a function of double logits, for central differences; the value is multiplied by
// grad_scale so that its derivative is what the kernel writes.
lktest::MatrixFn loss_fn(const std::vector<std::int64_t>& y, const CrossEntropyOptions& o) {
  return [&y, o](const RowMatrix<double>& x, RowMatrix<double>* g) {
    const auto r = g ? losskit::cross_entropy(x, y, *g, o) : losskit::cross_entropy(x, y, o);
    return r.value * o.grad_scale;
  };
}

}  // namespace

TEST_CASE("cross_entropy: PyTorch float64 reference vectors", "[cross_entropy][reference]") {
  REQUIRE(records().size() > 40);
  for (const auto& r : records()) {
    check_record<double>(r);
    check_record<float>(r);
  }
}

TEMPLATE_TEST_CASE("cross_entropy: value and side outputs against the formula", "[cross_entropy]", float, double) {
  using T = TestType;
  const int cols = GENERATE(1, 3, 17, 1000, 32000);
  const Eigen::Index rows = cols >= 32000 ? 3 : 6;
  const auto x = lktest::random_logits<T>(rows, cols, 21u + std::uint32_t(cols), 4.0);
  auto y = random_labels(rows, cols, 77);
  y[1] = -100;
  const auto w = class_weights(cols, 5);
  std::vector<double> rw(static_cast<std::size_t>(rows));
  for (std::size_t r = 0; r < rw.size(); ++r) rw[r] = 0.5 + 0.25 * double(r);
  CrossEntropyOptions o;
  o.return_lse = true;
  o.label_smoothing = GENERATE(0.0, 0.1);
  o.z_loss = GENERATE(0.0, 1e-3);
  o.softcap = GENERATE(0.0, 2.5);
  const bool weighted = GENERATE(false, true);
  if (weighted) {
    o.weight = w;
    o.weights = rw;
  }
  o.reduction = GENERATE(Reduction::mean, Reduction::sum, Reduction::none);
  CAPTURE(cols, o.label_smoothing, o.z_loss, o.softcap, weighted, int(o.reduction));
  const Ref want = reference(x, y, o);
  const auto got = losskit::cross_entropy(x, y, o);
  check_value<T>(got.value, double(want.value));
  check_value<T>(got.z_loss, double(want.z_loss));
  CHECK(got.accuracy == double(want.accuracy));
  CHECK(got.count == rows - 1);
  for (Eigen::Index r = 0; r < rows; ++r) {
    CAPTURE(r);
    check_value<T>(got.lse(r), double(want.lse[std::size_t(r)]));
    if (o.reduction == Reduction::none) check_value<T>(got.per_row(r), double(want.per_row[std::size_t(r)]));
  }
}

TEST_CASE("cross_entropy: gradient matches central differences for every option combination", "[cross_entropy][fd]") {
  const auto x = lktest::random_logits<double>(5, 17, 3, 3.0);
  auto y = random_labels(5, 17, 9);
  y[2] = -100;
  const auto w = class_weights(17, 4);
  const std::vector<double> rw{0.5, 1.0, 2.0, 0.0, 1.5};
  CrossEntropyOptions o;
  o.label_smoothing = GENERATE(0.0, 0.1, 1.0);
  o.z_loss = GENERATE(0.0, 1e-2);
  o.softcap = GENERATE(0.0, 2.0);
  const bool cls = GENERATE(false, true), rows_w = GENERATE(false, true);
  if (cls) o.weight = w;
  if (rows_w) o.weights = rw;
  o.reduction = GENERATE(Reduction::mean, Reduction::sum, Reduction::none);
  o.grad_scale = GENERATE(1.0, -0.75);
  o.normalizer = GENERATE(0.0, 7.0);
  CAPTURE(o.label_smoothing, o.z_loss, o.softcap, cls, rows_w, int(o.reduction), o.grad_scale, o.normalizer);
  lktest::check_gradient_fd(loss_fn(y, o), x);
}

TEST_CASE("cross_entropy: gradient over several chunks (double, 2 x 2100)", "[cross_entropy][fd]") {
  const auto x = lktest::random_logits<double>(2, 2100, 8, 5.0);  // 1024 doubles per chunk
  const auto y = random_labels(2, 2100, 10);
  const auto w = class_weights(2100, 11);
  CrossEntropyOptions o;
  o.label_smoothing = 0.1;
  o.z_loss = 1e-3;
  o.softcap = GENERATE(0.0, 4.0);
  o.weight = w;
  lktest::check_gradient_fd(loss_fn(y, o), x);
}

TEMPLATE_TEST_CASE("cross_entropy: float gradient within 1e-6 of double; in place equals out of place", "[cross_entropy]",
                   float, double) {
  const int cols = GENERATE(1, 3, 17, 1000, 32000);
  const Eigen::Index rows = 3;
  const auto xf = lktest::random_logits<float>(rows, cols, 40u + std::uint32_t(cols), 6.0);
  const auto y = random_labels(rows, cols, 41);
  const auto w = class_weights(cols, 42);
  CrossEntropyOptions o;
  o.label_smoothing = 0.1;
  o.z_loss = 1e-4;
  o.softcap = GENERATE(0.0, 5.0);
  o.weight = w;
  CAPTURE(cols, o.softcap);
  RowMatrix<float> gf(rows, cols);
  RowMatrix<double> gd(rows, cols);
  losskit::cross_entropy(xf, y, gf, o);
  losskit::cross_entropy(RowMatrix<double>(xf.cast<double>()), y, gd, o);
  CHECK((gf.cast<double>() - gd).cwiseAbs().maxCoeff() <= 1e-6);

  RowMatrix<TestType> x = xf.cast<TestType>(), g(rows, cols);
  const double v = losskit::cross_entropy(x, y, g, o).value;
  const double v_in_place = losskit::cross_entropy(x, y, x, o).value;  // x now holds the gradient
  CHECK(v == v_in_place);
  CHECK(x == g);
}

TEMPLATE_TEST_CASE("cross_entropy: invariant to a constant added to a row (no softcap, no z-loss)", "[cross_entropy]",
                   float, double) {
  using T = TestType;
  const int cols = GENERATE(3, 1000, 5000);
  const auto x = lktest::random_logits<T>(4, cols, 12, 3.0);
  const auto y = random_labels(4, cols, 13);
  const auto w = class_weights(cols, 14);
  CrossEntropyOptions o;
  o.label_smoothing = GENERATE(0.0, 0.2);
  o.weight = w;
  RowMatrix<T> x2 = x;
  x2.row(0).array() += T(7);
  x2.row(3).array() -= T(11);
  RowMatrix<T> g1(4, cols), g2(4, cols);
  const double v1 = losskit::cross_entropy(x, y, g1, o).value, v2 = losskit::cross_entropy(x2, y, g2, o).value;
  CHECK_THAT(v2, WithinRel(v1, 1e-5));
  CHECK((g1 - g2).cwiseAbs().maxCoeff() <= T(1e-6));
  // and the gradient of a row sums to 0 (the softmax is shift invariant)
  CHECK(std::fabs(double(g1.row(2).sum())) <= 1e-6);
}

TEMPLATE_TEST_CASE("cross_entropy: -inf logits", "[cross_entropy][inf]", float, double) {
  using T = TestType;
  const T ninf = -std::numeric_limits<T>::infinity();
  const int cols = GENERATE(17, 3000);
  auto x = lktest::random_logits<T>(3, cols, 30, 3.0);
  std::vector<std::int64_t> y{2, 5, 9};
  CrossEntropyOptions o;
  o.reduction = Reduction::none;
  SECTION("at non-target classes: legal, zero probability, zero gradient without smoothing") {
    for (int c : {0, 3, 16}) x(0, c) = ninf;
    x(1, cols - 1) = ninf;
    RowMatrix<T> g(3, cols);
    const auto r = losskit::cross_entropy(x, y, g, o);
    CHECK(std::isfinite(r.value));
    CHECK(g.allFinite());
    CHECK(g(0, 3) == T(0));
    CHECK(g(1, cols - 1) == T(0));
    const Ref want = reference(x, y, o);
    check_value<T>(r.value, double(want.value));
    if (cols < 100) lktest::check_gradient_fd(loss_fn(y, o), x.template cast<double>());
  }
  SECTION("at non-target classes with label smoothing: +inf loss (as PyTorch), finite gradient") {
    x(0, 3) = ninf;
    o.label_smoothing = 0.1;
    RowMatrix<T> g(3, cols);
    const auto r = losskit::cross_entropy(x, y, g, o);
    CHECK(std::isinf(r.per_row(0)));
    CHECK(std::isfinite(r.per_row(1)));
    CHECK(g.allFinite());
    CHECK_THAT(double(g(0, 3)), WithinAbs(-0.1 / cols, 1e-7));
  }
  SECTION("a class of weight 0 at -inf contributes nothing, even with smoothing or as the target") {
    std::vector<double> w(std::size_t(cols), 1.0);
    w[3] = w[5] = 0.0;
    x(0, 3) = ninf;
    x(1, 5) = ninf;  // row 1's target
    o.label_smoothing = 0.1;
    o.weight = w;
    RowMatrix<T> g(3, cols);
    const auto r = losskit::cross_entropy(x, y, g, o);
    CHECK(std::isfinite(r.value));
    CHECK(g.allFinite());
    check_value<T>(r.value, double(reference(x, y, o).value));
  }
  SECTION("at the target: that row's loss is +inf, other rows and the gradient stay finite") {
    x(1, 5) = ninf;
    o.z_loss = 1e-3;
    o.label_smoothing = GENERATE(0.0, 0.1);
    RowMatrix<T> g(3, cols);
    const auto r = losskit::cross_entropy(x, y, g, o);
    CHECK(r.per_row(1) == std::numeric_limits<double>::infinity());
    CHECK(std::isfinite(r.per_row(0)));
    CHECK(std::isfinite(r.per_row(2)));
    CHECK(r.value == std::numeric_limits<double>::infinity());
    CHECK(g.allFinite());
    CHECK_THAT(double(g(1, 5)), WithinAbs(-(1.0 - o.label_smoothing) - o.label_smoothing / cols, 1e-6));
    o.reduction = Reduction::mean;
    CHECK(losskit::cross_entropy(x, y, o).value == std::numeric_limits<double>::infinity());
  }
  SECTION("NaN propagates to the loss of its row") {
    x(2, 1) = std::numeric_limits<T>::quiet_NaN();
    const auto r = losskit::cross_entropy(x, y, o);
    CHECK(std::isnan(r.per_row(2)));
    CHECK(std::isfinite(r.per_row(0)));
  }
}

TEMPLATE_TEST_CASE("cross_entropy: ignored rows", "[cross_entropy]", float, double) {
  using T = TestType;
  const int cols = GENERATE(1, 17, 3000);
  auto x = lktest::random_logits<T>(4, cols, 50, 3.0);
  CrossEntropyOptions o;
  o.label_smoothing = 0.1;
  o.z_loss = 1e-2;
  o.return_lse = true;
  SECTION("every row ignored: 0, zero gradient, nothing counted, logits never read") {
    x.setConstant(std::numeric_limits<T>::quiet_NaN());
    const std::vector<std::int64_t> y(4, -100);
    RowMatrix<T> g = RowMatrix<T>::Constant(4, cols, T(7));
    o.reduction = GENERATE(Reduction::mean, Reduction::sum, Reduction::none);
    const auto r = losskit::cross_entropy(x, y, g, o);
    CHECK(r.value == 0.0);
    CHECK(r.z_loss == 0.0);
    CHECK(r.count == 0);
    CHECK(r.accuracy == 0.0);
    CHECK(g.cwiseAbs().maxCoeff() == T(0));
    CHECK(r.lse.cwiseAbs().maxCoeff() == 0.0);
  }
  SECTION("a custom ignore_index; ignored rows' logits may be anything") {
    o.ignore_index = 0;
    std::vector<std::int64_t> y{0, 0, 0, 0};
    y[2] = cols > 1 ? 1 : -5;
    if (cols == 1) {  // label 0 is ignored, -5 is out of range
      CHECK(out_of_range_of([&] { losskit::cross_entropy(x, y, o); }).find("row 2") != std::string::npos);
      return;
    }
    x.row(0).setConstant(std::numeric_limits<T>::infinity());
    RowMatrix<T> g(4, cols);
    const auto r = losskit::cross_entropy(x, y, g, o);
    CHECK(r.count == 1);
    CHECK(std::isfinite(r.value));
    CHECK(g.row(0).cwiseAbs().maxCoeff() == T(0));
    CHECK(g.row(2).cwiseAbs().maxCoeff() > T(0));
    check_value<T>(r.value, double(reference(x, y, o).value));
  }
}

TEMPLATE_TEST_CASE("cross_entropy: zero weight sums give 0 and a zero gradient", "[cross_entropy]", float, double) {
  using T = TestType;
  const auto x = lktest::random_logits<T>(3, 17, 60, 3.0);
  const std::vector<std::int64_t> y{2, 5, 2};
  CrossEntropyOptions o;
  o.label_smoothing = 0.1;
  SECTION("class weights of every target are 0 (PyTorch: NaN)") {
    std::vector<double> w(17, 1.0);
    w[2] = w[5] = 0.0;
    o.weight = w;
    RowMatrix<T> g = RowMatrix<T>::Constant(3, 17, T(7));
    auto r = losskit::cross_entropy(x, y, g, o);
    CHECK(r.value == 0.0);
    CHECK(r.denominator == 0.0);
    CHECK(r.count == 3);
    CHECK(g.cwiseAbs().maxCoeff() == T(0));
    // the z-loss keeps its own denominator (the counted rows)
    o.z_loss = 1e-2;
    r = losskit::cross_entropy(x, y, g, o);
    CHECK_THAT(r.value, WithinRel(r.z_loss, 1e-14));
    check_value<T>(r.value, double(reference(x, y, o).value));
    lktest::check_gradient_fd(loss_fn(y, o), x.template cast<double>());
  }
  SECTION("per-row weights all 0") {
    const std::vector<double> rw(3, 0.0);
    o.weights = rw;
    o.z_loss = 1e-2;
    RowMatrix<T> g = RowMatrix<T>::Constant(3, 17, T(7));
    const auto r = losskit::cross_entropy(x, y, g, o);
    CHECK(r.value == 0.0);
    CHECK(r.count == 0);
    CHECK(g.cwiseAbs().maxCoeff() == T(0));
  }
}

TEMPLATE_TEST_CASE("cross_entropy: logits far apart across chunks (no overflow, exact argmax)", "[cross_entropy]", float,
                   double) {
  using T = TestType;
  auto x = lktest::random_logits<T>(3, 9000, 77, 2.0);
  x(0, 8500) = T(400);   // the last chunk dwarfs the others
  x(1, 10) = T(-300);    // and far below
  x.row(2).segment(2048, 2048).array() += T(150);
  const std::vector<std::int64_t> y{8500, 10, 3000};
  CrossEntropyOptions o;
  o.reduction = Reduction::none;
  o.label_smoothing = GENERATE(0.0, 0.1);
  RowMatrix<T> g(3, 9000);
  const auto r = losskit::cross_entropy(x, y, g, o);
  CHECK(g.allFinite());
  const Ref want = reference(x, y, o);
  for (int i = 0; i < 3; ++i) check_value<T>(r.per_row(i), double(want.per_row[std::size_t(i)]));
  CHECK(r.accuracy == double(want.accuracy));
}

TEMPLATE_TEST_CASE("cross_entropy: accuracy takes the first maximum, as torch.argmax", "[cross_entropy]", float, double) {
  using T = TestType;
  const int cols = 5000;  // the ties straddle chunks
  RowMatrix<T> x = RowMatrix<T>::Zero(4, cols);
  x(0, 10) = 3;
  x(0, 4000) = 3;  // tie across chunks: 10 wins
  x(1, 2600) = 2;
  x(1, 2601) = 2;  // tie inside a chunk: 2600 wins
  x(2, 4999) = 1;
  // row 3: all equal: class 0
  const std::vector<std::int64_t> y{10, 2601, 4999, 0};
  const auto r = losskit::cross_entropy(x, y, {});
  CHECK(r.correct == 3);
  CHECK(r.accuracy == 0.75);
}

TEMPLATE_TEST_CASE("cross_entropy: bitwise identical for any thread count", "[cross_entropy][threads]", float, double) {
  using T = TestType;
  const auto x = lktest::random_logits<T>(64, 1031, 70, 4.0);
  auto y = random_labels(64, 1031, 71);
  y[5] = y[40] = -100;
  const auto w = class_weights(1031, 72);
  CrossEntropyOptions o;
  o.label_smoothing = 0.1;
  o.z_loss = 1e-4;
  o.softcap = GENERATE(0.0, 3.0);
  o.weight = w;
  o.return_lse = true;
  o.reduction = GENERATE(Reduction::mean, Reduction::none);
  RowMatrix<T> g1(64, 1031), g2(64, 1031), g3(64, 1031);
  o.threads = 1;
  const auto r1 = losskit::cross_entropy(x, y, g1, o);
  o.threads = 2;
  const auto r2 = losskit::cross_entropy(x, y, g2, o);
  o.threads = 3;
  const auto r3 = losskit::cross_entropy(x, y, g3, o);
  CHECK(r1.value == r2.value);
  CHECK(r1.value == r3.value);
  CHECK(r1.z_loss == r3.z_loss);
  CHECK(r1.lse == r3.lse);
  CHECK(r1.per_row == r3.per_row);
  CHECK(g1 == g2);
  CHECK(g1 == g3);
}

TEMPLATE_TEST_CASE("cross_entropy: in place, with threads and ignored rows, equals out of place", "[cross_entropy][threads]",
                   float, double) {
  using T = TestType;
  const auto x = lktest::random_logits<T>(40, 3000, 73, 4.0);
  auto y = random_labels(40, 3000, 74);
  y[0] = y[19] = y[20] = y[39] = -100;  // at the ends of both threads' ranges
  CrossEntropyOptions o;
  o.label_smoothing = 0.1;
  o.z_loss = 1e-4;
  o.softcap = GENERATE(0.0, 3.0);
  o.threads = GENERATE(1, 2);
  RowMatrix<T> g(40, 3000), in_place = x;
  const double v = losskit::cross_entropy(x, y, g, o).value;
  CHECK(losskit::cross_entropy(in_place, y, in_place, o).value == v);
  CHECK(in_place == g);
}

TEMPLATE_TEST_CASE("cross_entropy: large outputs (non-temporal stores) give the same bits as small ones", "[cross_entropy]",
                   float, double) {
  using T = TestType;
  const Eigen::Index rows = 72, cols = 32000;  // >= 8 MB of gradient: streamed
  const auto x = lktest::random_logits<T>(rows, cols, 75, 4.0);
  const auto y = random_labels(rows, cols, 76);
  CrossEntropyOptions o;
  o.label_smoothing = 0.1;
  o.reduction = Reduction::none;
  RowMatrix<T> g(rows, cols), g3(3, cols);
  const auto big = losskit::cross_entropy(x, y, g, o);
  const RowMatrix<T> x3 = x.topRows(3);
  const std::vector<std::int64_t> y3(y.begin(), y.begin() + 3);
  const auto small = losskit::cross_entropy(x3, y3, g3, o);
  CHECK(g.topRows(3) == g3);
  CHECK(big.per_row.head(3) == small.per_row);
  CHECK(g(1, y[1]) < T(0));  // the target entry was written after the streamed row
}

TEST_CASE("cross_entropy: labels out of range throw std::out_of_range naming the row and value", "[cross_entropy][errors]") {
  const auto x = lktest::random_logits<float>(4, 10, 80);
  RowMatrix<float> g = RowMatrix<float>::Constant(4, 10, 3.f);
  for (std::int64_t bad : {std::int64_t(10), std::int64_t(-1), std::int64_t(123456789012)}) {
    std::vector<std::int64_t> y{1, -100, bad, 3};
    CAPTURE(bad);
    try {
      losskit::cross_entropy(x, y, g, {});
      FAIL("no exception");
    } catch (const std::out_of_range& e) {
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK(msg.find("losskit::cross_entropy") != std::string::npos);
      CHECK(msg.find("row 2") != std::string::npos);
      CHECK(msg.find(std::to_string(bad)) != std::string::npos);
    }
    CHECK(g == RowMatrix<float>::Constant(4, 10, 3.f));
  }
  const std::vector<std::int32_t> y32{1, 2, 10, 3};
  CHECK(out_of_range_of([&] { losskit::cross_entropy(x, y32, {}); }) ==
        "losskit::cross_entropy: 'labels' has 10 at row 2, expected a class in [0, 10) or ignore_index (-100)");
}

TEST_CASE("cross_entropy: invalid arguments throw before anything is written", "[cross_entropy][errors]") {
  const auto x = lktest::random_logits<double>(3, 5, 90);
  const std::vector<std::int64_t> y{0, 1, 2};
  RowMatrix<double> g = RowMatrix<double>::Constant(3, 5, 9.0);
  const auto fails = [&](const CrossEntropyOptions& o, const std::string& words) {
    CAPTURE(words);
    try {
      losskit::cross_entropy(x, y, g, o);
      FAIL("no exception");
    } catch (const std::invalid_argument& e) {
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK(msg.find("losskit::cross_entropy") != std::string::npos);
      CHECK(msg.find(words) != std::string::npos);
    }
    CHECK(g == RowMatrix<double>::Constant(3, 5, 9.0));
  };
  CrossEntropyOptions o;
  const std::vector<double> w4(4, 1.0), wneg{1, 1, -1, 1, 1}, wnan{1, 1, std::nan(""), 1, 1}, rw2(2, 1.0);
  o.weight = w4;
  fails(o, "'weight' has 4 entries, expected one per class (5)");
  o.weight = wneg;
  fails(o, "'weight' must be finite and >= 0, got -1 at class 2");
  o.weight = wnan;
  fails(o, "'weight'");
  o = {};
  o.label_smoothing = 1.5;
  fails(o, "'label_smoothing' must be in [0, 1], got 1.5");
  o = {};
  o.label_smoothing = -0.1;
  fails(o, "'label_smoothing'");
  o = {};
  o.z_loss = -1e-4;
  fails(o, "'z_loss' must be finite and >= 0, got -0.0001");
  o = {};
  o.softcap = -30;
  fails(o, "'softcap' must be finite and >= 0 (0: off), got -30");
  o = {};
  o.softcap = std::numeric_limits<double>::infinity();
  fails(o, "'softcap'");
  o = {};
  o.weights = rw2;
  fails(o, "'weights' has 2 entries, expected one per row (3)");
  o = {};
  o.normalizer = -1;
  fails(o, "'normalizer'");
  o = {};
  o.threads = -2;
  fails(o, "'threads'");
  o = {};
  o.grad_scale = std::nan("");
  fails(o, "'grad_scale'");
  {
    const std::vector<std::int64_t> y2{0, 1};
    CHECK(lktest::invalid_argument_of([&] { losskit::cross_entropy(x, y2, g, {}); }) ==
          "losskit::cross_entropy: 'labels' has 2 entries, expected one per row (3)");
    RowMatrix<double> g_bad(3, 4);
    CHECK(lktest::invalid_argument_of([&] { losskit::cross_entropy(x, y, g_bad, {}); }) ==
          "losskit::cross_entropy: 'grad' has shape 3x4, expected 3x5 (the shape of 'logits')");
    const RowMatrix<double> empty(3, 0);
    CHECK(lktest::invalid_argument_of([&] { losskit::cross_entropy(empty, y, {}); }) ==
          "losskit::cross_entropy: 'logits' has shape 3x0: it needs at least one column");
  }
  CHECK(g == RowMatrix<double>::Constant(3, 5, 9.0));
}

TEST_CASE("cross_entropy: int32 labels, Eigen inputs, rank-3 tensors", "[cross_entropy]") {
  const auto x = lktest::random_logits<float>(6, 11, 95);
  const std::vector<std::int64_t> y64{1, 2, 3, -100, 10, 0};
  const std::vector<std::int32_t> y32(y64.begin(), y64.end());
  const Eigen::VectorXi yv = Eigen::Map<const Eigen::VectorXi>(y32.data(), 6);
  const double v = losskit::cross_entropy(x, y64, {}).value;
  CHECK(losskit::cross_entropy(x, y32, {}).value == v);
  CHECK(losskit::cross_entropy(x, yv, {}).value == v);
  Eigen::TensorMap<Eigen::Tensor<const float, 3, Eigen::RowMajor>> t(x.data(), 2, 3, 11);
  Eigen::Tensor<float, 3, Eigen::RowMajor> gt(2, 3, 11);
  RowMatrix<float> g(6, 11);
  losskit::cross_entropy(x, y64, g, {});
  CHECK(losskit::cross_entropy(t, y64, gt, {}).value == v);
  CHECK(Eigen::Map<const RowMatrix<float>>(gt.data(), 6, 11) == g);
}
