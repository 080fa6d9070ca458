// soft_cross_entropy: PyTorch reference vectors (tests/reference/soft_cross_entropy_refs.txt,
// made by gen_soft_cross_entropy_refs.py), the formula in long double, central-difference
// gradients for every option combination, edge cases, views and errors.
#include "reference_vectors.hpp"
#include "test_support.hpp"

#include <cstdint>
#include <string>
#include <vector>

using lktest::ld;
using lktest::RowMatrix;
using losskit::Reduction;
using losskit::SoftCrossEntropyOptions;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {

// ---- inputs ------------------------------------------------------------------------------------

// Row r divided by its sum (double, left to right), rounded to float: as the generator script.
void normalise_rows(std::vector<float>& w, std::size_t rows, std::size_t cols) {
  for (std::size_t r = 0; r < rows; ++r) {
    double s = 0.0;
    for (std::size_t c = 0; c < cols; ++c) s += double(w[r * cols + c]);
    for (std::size_t c = 0; c < cols; ++c) w[r * cols + c] = float(double(w[r * cols + c]) / s);
  }
}

// float(u); kind sparse: 0 where u < 0.5.
std::vector<float> raw_targets(std::uint64_t seed, std::size_t rows, std::size_t cols, const std::string& kind) {
  std::vector<float> w(rows * cols);
  for (std::size_t i = 0; i < w.size(); ++i) {
    w[i] = float(losskit_test::uniform01(seed, i));
    if (kind == "sparse" && w[i] < 0.5f) w[i] = 0.0f;
  }
  return w;
}

// Targets as the generator script builds them (kind: "norm", "raw" or "sparse").
std::vector<float> reference_targets(std::uint64_t seed, std::size_t rows, std::size_t cols, const std::string& kind) {
  std::vector<float> w = raw_targets(seed, rows, cols, kind);
  if (kind != "raw") normalise_rows(w, rows, cols);
  return w;
}

std::vector<float> reference_class_weights(std::uint64_t seed, std::size_t cols) {
  std::vector<float> w(cols);
  for (std::size_t i = 0; i < cols; ++i) w[i] = float(0.5 + losskit_test::uniform01(seed, i));
  return w;
}

template <class T>
RowMatrix<T> to_matrix(const std::vector<float>& v, Eigen::Index rows, Eigen::Index cols) {
  RowMatrix<T> m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = T(v[std::size_t(i)]);
  return m;
}

// Random probability rows (kind norm), rows of non-negative numbers summing to about 1.5
// (raw: unnormalised), or probability rows with zeros, at least one non-zero per row (sparse).
template <class T>
RowMatrix<T> random_targets(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed, const std::string& kind) {
  const auto R = std::size_t(rows), C = std::size_t(cols);
  std::vector<float> w = raw_targets(seed, R, C, kind);
  if (kind == "raw") {
    for (float& x : w) x *= 3.0f / float(cols);
  } else {
    for (std::size_t r = 0; r < R; ++r) w[r * C + r % C] = std::max(w[r * C + r % C], 0.75f);
    normalise_rows(w, R, C);
  }
  return to_matrix<T>(w, rows, cols);
}

// ---- the formula in long double ----------------------------------------------------------------

struct Setup {
  double eps = 0.0;
  double temperature = 1.0;
  std::vector<double> class_weights;  // empty: none
  SoftCrossEntropyOptions options() const {
    SoftCrossEntropyOptions o;
    o.label_smoothing = eps;
    o.temperature = temperature;
    if (!class_weights.empty()) o.weight = class_weights;
    return o;
  }
};

template <class T>
ld reference_row(const RowMatrix<T>& z, const RowMatrix<T>& t, Eigen::Index r, const Setup& s) {
  const auto x = lktest::log_softmax(z.row(r), 1.0L / ld(s.temperature));
  const auto n = std::size_t(z.cols());
  ld loss = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const ld tp = (1 - ld(s.eps)) * ld(t(r, Eigen::Index(i))) + ld(s.eps) / ld(n);
    const ld u = s.class_weights.empty() ? tp : ld(s.class_weights[i]) * tp;
    if (u != 0) loss -= u * x[i];
  }
  return loss;
}

template <class T>
ld reference_mean(const RowMatrix<T>& z, const RowMatrix<T>& t, const Setup& s) {
  ld total = 0;
  for (Eigen::Index r = 0; r < z.rows(); ++r) total += reference_row(z, t, r, s);
  return total / ld(z.rows());
}

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

// ---- reference records -------------------------------------------------------------------------

struct Record : losskit_test::LossRecord {
  int id = 0;
  std::uint64_t seed_x = 0, seed_t = 0, seed_w = 0;
  double scale = 0, temperature = 1, eps = 0;
  std::string kind, reduction;
  std::vector<int> ignored;
  std::uint64_t hash_x = 0, hash_t = 0, hash_w = 0;
};

std::vector<Record> load_records() {
  using losskit_test::detail::TokenLine;
  auto on_case = [](TokenLine& tok) {
    Record r;
    r.id = tok.integer();
    r.rows = tok.integer();
    r.cols = tok.integer();
    r.seed_x = tok.u64();
    r.seed_t = tok.u64();
    r.seed_w = tok.u64();
    r.scale = tok.number();
    r.temperature = tok.number();
    r.eps = tok.number();
    r.kind = tok.word();
    r.reduction = tok.word();
    for (int k = tok.integer(); k > 0; --k) r.ignored.push_back(tok.integer());
    return r;
  };
  auto on_field = [](TokenLine& tok, const std::string& key, Record& r) {
    if (r.read_loss_field(tok, key)) return;
    if (key != "inputs") tok.fail("unknown key '" + key + "'");
    r.hash_x = tok.u64();
    r.hash_t = tok.u64();
    r.hash_w = tok.u64();
  };
  return losskit_test::read_records(losskit_test::test_data_path("reference/soft_cross_entropy_refs.txt"), on_case,
                                    on_field);
}

const std::vector<Record>& records() {
  static const std::vector<Record> r = load_records();
  return r;
}

Reduction reduction_of(const std::string& name) {
  return name == "sum" ? Reduction::sum : name == "none" ? Reduction::none : Reduction::mean;
}

}  // namespace

TEMPLATE_TEST_CASE("soft_cross_entropy: PyTorch F.cross_entropy with probability targets", "[soft_cross_entropy][reference]",
                   float, double) {
  using T = TestType;
  // The library's accuracy contract (reference_vectors.hpp).
  using Tol = losskit_test::ReferenceTolerance<T>;
  const double value_rel = Tol::value_rel, value_abs = Tol::value_abs, grad_abs = Tol::grad_abs;
  REQUIRE(records().size() == 37);
  for (const Record& rec : records()) {
    CAPTURE(rec.id, rec.rows, rec.cols, rec.kind, rec.temperature, rec.eps, rec.seed_w, rec.reduction);
    const auto xs = losskit_test::reference_logits(rec.seed_x, std::size_t(rec.rows), std::size_t(rec.cols), rec.scale);
    const auto ts = reference_targets(rec.seed_t, std::size_t(rec.rows), std::size_t(rec.cols), rec.kind);
    REQUIRE(losskit_test::float_bits_hash(xs) == rec.hash_x);
    REQUIRE(losskit_test::float_bits_hash(ts) == rec.hash_t);
    std::vector<float> cw;
    if (rec.seed_w) {
      cw = reference_class_weights(rec.seed_w, std::size_t(rec.cols));
      REQUIRE(losskit_test::float_bits_hash(cw) == rec.hash_w);
    }
    const auto x = to_matrix<T>(xs, rec.rows, rec.cols), t = to_matrix<T>(ts, rec.rows, rec.cols);
    std::vector<std::int64_t> labels(std::size_t(rec.rows), 0);
    for (int r : rec.ignored) labels[std::size_t(r)] = -100;
    SoftCrossEntropyOptions o;
    o.temperature = rec.temperature;
    o.label_smoothing = rec.eps;
    o.reduction = reduction_of(rec.reduction);
    if (!cw.empty()) o.weight = cw;
    if (!rec.ignored.empty()) o.labels = labels;
    RowMatrix<T> g(rec.rows, rec.cols);
    const auto res = losskit::soft_cross_entropy(x, t, g, o);
    CHECK_THAT(res.value, WithinRel(rec.value, value_rel) || WithinAbs(rec.value, value_abs));
    for (std::size_t r = 0; r < rec.per_row.size(); ++r)
      CHECK_THAT(res.per_row(Eigen::Index(r)), WithinRel(rec.per_row[r], value_rel) || WithinAbs(rec.per_row[r], value_abs));
    if (rec.full_grad) {
      double worst = 0;
      for (std::size_t i = 0; i < rec.grad.size(); ++i) worst = std::max(worst, std::fabs(double(g.data()[i]) - rec.grad[i]));
      CHECK(worst <= grad_abs);
    } else {
      const auto got = losskit_test::grad_sums(g.data(), std::size_t(rec.rows), std::size_t(rec.cols));
      // Entry errors are relative to the entries: the sums are held to grad_abs times sum |g| (which
      // is ~2 for probability targets, ~16000 for the raw 32000-column rows summing to ~16000).
      const double tol = grad_abs * std::max(1.0, rec.grad_abs_sum);
      CHECK_THAT(got.sum, WithinAbs(rec.grad_sum, tol));
      CHECK_THAT(got.abs_sum, WithinAbs(rec.grad_abs_sum, tol));
      CHECK_THAT(got.dot, WithinAbs(rec.grad_dot, tol));
      for (const auto& s : rec.samples) CHECK_THAT(double(g(s.row, s.col)), WithinAbs(s.value, grad_abs));
    }
  }
}

TEMPLATE_TEST_CASE("soft_cross_entropy: value against the formula, float gradient, invariances", "[soft_cross_entropy]",
                   float, double) {
  using T = TestType;
  const int cols = GENERATE(1, 3, 17, 1000, 32000);
  const double eps = GENERATE(0.0, 0.1);
  const double temp = GENERATE(1.0, 2.0);
  const bool weighted = GENERATE(false, true);
  const std::string kind = GENERATE(as<std::string>{}, "norm", "raw");
  const Eigen::Index rows = cols >= 32000 ? 2 : 3;
  CAPTURE(cols, eps, temp, weighted, kind);
  const auto z = lktest::random_logits<T>(rows, cols, 21u + std::uint32_t(cols));
  const auto t = random_targets<T>(rows, cols, 77u + std::uint64_t(cols), kind);
  Setup s;
  s.eps = eps;
  s.temperature = temp;
  if (weighted)
    for (int i = 0; i < cols; ++i) s.class_weights.push_back(0.25 + 0.5 * double(i % 7) / 7.0);
  const auto o = s.options();

  SECTION("value matches the formula in long double") {
    const ld want = reference_mean(z, t, s);
    const double got = losskit::soft_cross_entropy(z, t, o).value;
    CAPTURE(double(want), got);
    CHECK(std::fabs(got - double(want)) <= tolerance<T>() * std::max(1.0, std::fabs(double(want))));
  }
  SECTION("float gradient within 1e-6 of the double gradient") {
    const RowMatrix<float> zf = z.template cast<float>(), tf = t.template cast<float>();
    RowMatrix<float> gf(rows, cols);
    RowMatrix<double> gd(rows, cols);
    losskit::soft_cross_entropy(zf, tf, gf, o);
    losskit::soft_cross_entropy(RowMatrix<double>(zf.cast<double>()), RowMatrix<double>(tf.cast<double>()), gd, o);
    CHECK((gf.cast<double>() - gd).cwiseAbs().maxCoeff() <= 1e-6);
  }
  SECTION("invariant to adding a constant to a row of logits") {
    RowMatrix<T> z2 = z;
    z2.row(0).array() += T(4);
    RowMatrix<T> g1(rows, cols), g2(rows, cols);
    const double v1 = losskit::soft_cross_entropy(z, t, g1, o).value, v2 = losskit::soft_cross_entropy(z2, t, g2, o).value;
    CHECK(std::fabs(v1 - v2) <= 1e-5 * std::max(1.0, std::fabs(v1)));
    CHECK((g1 - g2).cwiseAbs().maxCoeff() <= T(1e-5));
  }
}

TEST_CASE("soft_cross_entropy: gradient matches central differences for every option combination", "[soft_cross_entropy][fd]") {
  const int cols = GENERATE(1, 3, 17, 300);
  const double eps = GENERATE(0.0, 0.1);
  const double temp = GENERATE(1.0, 2.5);
  const bool weighted = GENERATE(false, true);
  const std::string kind = GENERATE(as<std::string>{}, "norm", "raw", "sparse");
  const int mode = GENERATE(0, 1, 2, 3);  // mean, sum, none + ignored row, mean + row weights + normalizer
  CAPTURE(cols, eps, temp, weighted, kind, mode);
  const auto z = lktest::random_logits<double>(4, cols, 5u + std::uint32_t(cols));
  const auto t = random_targets<double>(4, cols, 9u + std::uint64_t(cols), kind);
  Setup s;
  s.eps = eps;
  s.temperature = temp;
  if (weighted)
    for (int i = 0; i < cols; ++i) s.class_weights.push_back(0.5 + double(i % 5) / 4.0);
  auto o = s.options();
  const std::vector<std::int64_t> labels{0, -100, 2, 1};
  const std::vector<double> row_weights{1.0, 0.5, 0.0, 2.0};
  if (mode == 1) o.reduction = Reduction::sum;
  if (mode == 2) {
    o.reduction = Reduction::none;
    o.labels = labels;
    o.grad_scale = -1.5;
  }
  if (mode == 3) {
    o.weights = row_weights;
    o.normalizer = 7.0;
  }
  lktest::check_gradient_fd(
      [&](const RowMatrix<double>& x, RowMatrix<double>* g) {
        const auto r = g ? losskit::soft_cross_entropy(x, t, *g, o) : losskit::soft_cross_entropy(x, t, o);
        return r.value * o.grad_scale;
      },
      z);
}

TEMPLATE_TEST_CASE("soft_cross_entropy: relations to kl_div and to hard-label cross entropy", "[soft_cross_entropy]", float,
                   double) {
  using T = TestType;
  const int cols = GENERATE(3, 1000, 32000);
  const double temp = GENERATE(1.0, 3.0);
  const Eigen::Index rows = 3;
  const auto s = lktest::random_logits<T>(rows, cols, 3u), a = lktest::random_logits<T>(rows, cols, 4u);
  SECTION("targets softmax(teacher / T): kl_div plus the teacher entropy, and kl_div's gradient") {
    RowMatrix<T> p(rows, cols);
    ld entropy = 0;
    for (Eigen::Index r = 0; r < rows; ++r) {
      const auto y = lktest::log_softmax(a.row(r), 1.0L / ld(temp));
      for (int c = 0; c < cols; ++c) {
        p(r, c) = T(std::exp(y[std::size_t(c)]));
        entropy -= std::exp(y[std::size_t(c)]) * y[std::size_t(c)];
      }
    }
    SoftCrossEntropyOptions o;
    o.temperature = temp;
    losskit::DivergenceOptions d;
    d.temperature = temp;
    RowMatrix<T> g1(rows, cols), g2(rows, cols);
    const double ce = losskit::soft_cross_entropy(s, p, g1, o).value;
    const double kl = losskit::kl_div(s, a, g2, d).value;
    CHECK_THAT(ce, WithinRel(kl + double(entropy / rows), std::is_same_v<T, float> ? 1e-5 : 1e-10));
    CHECK((g1 - g2).cwiseAbs().maxCoeff() <= T(std::is_same_v<T, float> ? 1e-6 : 1e-12));
  }
  SECTION("one-hot targets with smoothing: PyTorch's label-smoothed cross entropy") {
    const double eps = 0.1;
    RowMatrix<T> onehot = RowMatrix<T>::Zero(rows, cols);
    ld want = 0;
    for (Eigen::Index r = 0; r < rows; ++r) {
      const int y = int((r * 7919) % cols);
      onehot(r, y) = T(1);
      const auto x = lktest::log_softmax(s.row(r), 1.0L / ld(temp));
      ld smooth = 0;
      for (const ld v : x) smooth -= v;
      want += (1 - ld(eps)) * -x[std::size_t(y)] + ld(eps) / ld(cols) * smooth;
    }
    want /= rows;
    SoftCrossEntropyOptions o;
    o.temperature = temp;
    o.label_smoothing = eps;
    CHECK_THAT(losskit::soft_cross_entropy(s, onehot, o).value, WithinRel(double(want), tolerance<T>()));
  }
}

TEMPLATE_TEST_CASE("soft_cross_entropy: -inf logits, large logits, NaN, ignored rows", "[soft_cross_entropy][inf]", float,
                   double) {
  using T = TestType;
  const T ninf = -std::numeric_limits<T>::infinity();
  auto z = lktest::random_logits<T>(3, 40, 3);
  auto t = random_targets<T>(3, 40, 4, "sparse");
  SECTION("-inf where the target is 0: finite, those classes get a zero gradient") {
    int masked = 0;
    for (int c = 0; c < 40; ++c)
      if (t(1, c) == T(0) && masked < 6) {
        z(1, c) = ninf;
        ++masked;
      }
    REQUIRE(masked == 6);
    RowMatrix<T> g(3, 40);
    const auto r = losskit::soft_cross_entropy(z, t, g, {});
    CHECK(std::isfinite(r.value));
    CHECK(g.allFinite());
    for (int c = 0; c < 40; ++c)
      if (z(1, c) == ninf) CHECK(g(1, c) == T(0));
    CHECK(std::fabs(r.value - double(reference_mean(z, t, Setup{}))) <= tolerance<T>() * std::max(1.0, r.value));
    if constexpr (std::is_same_v<T, double>)
      lktest::check_gradient_fd(
          [&](const RowMatrix<double>& x, RowMatrix<double>* g2) {
            return (g2 ? losskit::soft_cross_entropy(x, t, *g2, {}) : losskit::soft_cross_entropy(x, t, {})).value;
          },
          z);
  }
  SECTION("-inf where the target has mass: that row is +inf, the others stay finite") {
    int c = 0;
    while (t(0, c) == T(0)) ++c;
    z(0, c) = ninf;
    SoftCrossEntropyOptions o;
    o.reduction = Reduction::none;
    RowMatrix<T> g(3, 40);
    const auto r = losskit::soft_cross_entropy(z, t, g, o);
    CHECK(std::isinf(r.per_row(0)));
    CHECK(r.per_row(0) > 0);
    CHECK(std::isfinite(r.per_row(1)));
    CHECK(std::isfinite(r.per_row(2)));
    CHECK(g.bottomRows(2).allFinite());
  }
  SECTION("smoothing puts mass on every class: a -inf logit makes the row +inf") {
    z(2, 5) = ninf;
    SoftCrossEntropyOptions o;
    o.label_smoothing = 0.1;
    o.reduction = Reduction::none;
    const auto r = losskit::soft_cross_entropy(z, t, o);
    CHECK(std::isinf(r.per_row(2)));
    CHECK(std::isfinite(r.per_row(0)));
  }
  SECTION("large logits (1000 + noise): no cancellation against lse") {
    RowMatrix<T> big = z.array() + T(1000);
    const ld want = reference_mean(big, t, Setup{});
    CHECK(std::fabs(losskit::soft_cross_entropy(big, t, {}).value - double(want)) <= tolerance<T>() * double(want));
  }
  SECTION("NaN propagates to the loss") {
    z(1, 2) = std::numeric_limits<T>::quiet_NaN();
    CHECK(std::isnan(losskit::soft_cross_entropy(z, t, {}).value));
  }
  SECTION("every row ignored: 0 and a zero gradient, the logits never read") {
    z.row(0).setConstant(std::numeric_limits<T>::quiet_NaN());
    const std::vector<std::int32_t> labels(3, -100);
    SoftCrossEntropyOptions o;
    o.labels = labels;
    RowMatrix<T> g = RowMatrix<T>::Constant(3, 40, T(7));
    const auto r = losskit::soft_cross_entropy(z, t, g, o);
    CHECK(r.value == 0.0);
    CHECK(r.count == 0);
    CHECK(g.cwiseAbs().maxCoeff() == T(0));
  }
}

TEMPLATE_TEST_CASE("soft_cross_entropy: threads, views, in-place gradients", "[soft_cross_entropy][views]", float, double) {
  using T = TestType;
  const auto z = lktest::random_logits<T>(64, 1031, 5);
  const auto t = random_targets<T>(64, 1031, 6, "norm");
  SoftCrossEntropyOptions o;
  o.label_smoothing = 0.05;
  RowMatrix<T> g(64, 1031);
  const double v = losskit::soft_cross_entropy(z, t, g, o).value;
  SECTION("same bits with 1 and 2 threads") {
    RowMatrix<T> g2(64, 1031);
    o.threads = 2;
    CHECK(losskit::soft_cross_entropy(z, t, g2, o).value == v);
    CHECK(g2 == g);
  }
  SECTION("gradient written over the logits, or over the targets") {
    RowMatrix<T> zz = z, tt = t;
    CHECK(losskit::soft_cross_entropy(zz, t, zz, o).value == v);
    CHECK(zz == g);
    CHECK(losskit::soft_cross_entropy(z, tt, tt, o).value == v);
    CHECK(tt == g);
  }
  SECTION("Map with an outer stride, and a rank-3 tensor") {
    std::vector<T> buf(std::size_t(64 * 1040), T(9));
    Eigen::Map<RowMatrix<T>, 0, Eigen::OuterStride<>> m(buf.data(), 64, 1031, Eigen::OuterStride<>(1040));
    m = z;
    RowMatrix<T> g2(64, 1031);
    CHECK(losskit::soft_cross_entropy(m, t, g2, o).value == v);
    CHECK(g2 == g);
    Eigen::TensorMap<Eigen::Tensor<const T, 3, Eigen::RowMajor>> tz(z.data(), 8, 8, 1031), tt(t.data(), 8, 8, 1031);
    CHECK(losskit::soft_cross_entropy(tz, tt, o).value == v);
  }
  SECTION("large outputs (streaming stores) equal the same rows in pieces") {
    const auto zl = lktest::random_logits<T>(300, 8192, 7);
    const auto tl = random_targets<T>(300, 8192, 8, "norm");
    RowMatrix<T> whole(300, 8192), parts(300, 8192);
    o.reduction = Reduction::sum;
    const double vw = losskit::soft_cross_entropy(zl, tl, whole, o).value;
    const double v1 = losskit::soft_cross_entropy(zl.topRows(10), tl.topRows(10), parts.topRows(10), o).value;
    const double v2 = losskit::soft_cross_entropy(zl.bottomRows(290), tl.bottomRows(290), parts.bottomRows(290), o).value;
    CHECK_THAT(vw, WithinRel(v1 + v2, 1e-12));
    CHECK(whole == parts);
  }
}

TEST_CASE("soft_cross_entropy: errors name the function, argument and values; outputs untouched", "[soft_cross_entropy][errors]") {
  const auto z = lktest::random_logits<float>(4, 10, 1);
  const auto t = random_targets<float>(4, 10, 2, "norm");
  RowMatrix<float> g = RowMatrix<float>::Constant(4, 10, 42.f);
  auto err = [&](const SoftCrossEntropyOptions& o) {
    return lktest::invalid_argument_of([&] { losskit::soft_cross_entropy(z, t, g, o); });
  };
  auto has = [](const std::string& s, const char* part) { return s.find(part) != std::string::npos; };
  const auto t9 = random_targets<float>(4, 9, 3, "norm");
  CHECK(has(lktest::invalid_argument_of([&] { losskit::soft_cross_entropy(z, t9, g, {}); }),
            "losskit::soft_cross_entropy: 'targets' has shape 4x9, expected 4x10 (the shape of 'logits')"));
  RowMatrix<float> g5(5, 10);
  CHECK(has(lktest::invalid_argument_of([&] { losskit::soft_cross_entropy(z, t, g5, {}); }), "'grad' has shape 5x10"));
  const RowMatrix<float> empty(4, 0);
  CHECK(has(lktest::invalid_argument_of([&] { losskit::soft_cross_entropy(empty, empty, {}); }), "'logits' has shape 4x0"));
  SoftCrossEntropyOptions o;
  o.temperature = 0;
  CHECK(has(err(o), "'temperature' must be positive and finite, got 0"));
  o = {};
  o.label_smoothing = 1.5;
  CHECK(has(err(o), "'label_smoothing' must be in [0, 1], got 1.5"));
  o = {};
  const std::vector<float> w3{1, 1, 1};
  o.weight = w3;
  CHECK(has(err(o), "'weight' has 3 entries, expected one per class (10)"));
  std::vector<float> wneg(10, 1.f);
  wneg[4] = -1.f;
  o.weight = wneg;
  CHECK(has(err(o), "'weight' must be finite and >= 0, got -1 at class 4"));
  o = {};
  o.weights = w3;
  CHECK(has(err(o), "'weights' has 3 entries, expected one per row (4)"));
  CHECK((g.array() == 42.f).all());
}

TEMPLATE_TEST_CASE("soft_cross_entropy: chunks against the running maximum (jumps, a leading run of -inf)",
                   "[soft_cross_entropy][inf]", float, double) {
  // Chunks are 8 KiB (2048 floats, 1024 doubles). Row 1 jumps by 200 in its tail (that chunk is
  // redone against its own maximum), row 2 starts with 2500 -inf logits (zero targets there) and
  // continues near -1000. Reversed columns put every row's maximum in the first chunk.
  using T = TestType;
  const Eigen::Index n = 5000;
  RowMatrix<T> z = lktest::random_logits<T>(3, n, 21u);
  const RowMatrix<T> t = random_targets<T>(3, n, 22u, "norm");
  RowMatrix<T> t2 = t;
  z.row(1).tail(900).array() += T(200);
  z.row(2).array() -= T(1000);
  z.row(2).head(2500).setConstant(-std::numeric_limits<T>::infinity());
  t2.row(2).head(2500).setZero();
  const RowMatrix<T> zr = z.rowwise().reverse(), tr = t2.rowwise().reverse();
  Setup s;
  SoftCrossEntropyOptions o = s.options();
  o.reduction = losskit::Reduction::sum;
  RowMatrix<T> g(3, n), gr(3, n);
  const double v = losskit::soft_cross_entropy(z, t2, g, o).value;
  const double vr = losskit::soft_cross_entropy(zr, tr, gr, o).value;
  CHECK_THAT(v, WithinRel(double(reference_mean(z, t2, s)) * 3, tolerance<T>()));
  CHECK_THAT(v, WithinRel(vr, tolerance<T>()));
  CHECK(g.allFinite());
  CHECK((g - RowMatrix<T>(gr.rowwise().reverse())).cwiseAbs().maxCoeff() <= T(std::is_same_v<T, float> ? 1e-6 : 1e-12));
}
