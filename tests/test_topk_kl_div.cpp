// topk_kl_div (OSTQuant KL-Top): the top-k selection against a stable sort (ties, NaN, +-inf,
// adversarial orders, both the short-row and the sampled path), k = V equals kl_div in both
// forms, values against the formula in long double, small hand cases, central-difference
// gradients, -inf logits, errors.
#include "test_support.hpp"

#include <losskit/core/select.hpp>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

using lktest::ld;
using lktest::RowMatrix;
using losskit::Reduction;
using losskit::TopkKlOptions;
using Catch::Matchers::WithinAbs;
using Catch::Matchers::WithinRel;

namespace {

// The members by the definition: first k in (value descending, index ascending), NaN excluded.
template <class T>
std::vector<char> reference_members(const T* v, std::size_t n, std::size_t k) {
  std::vector<std::size_t> idx;
  for (std::size_t i = 0; i < n; ++i)
    if (!std::isnan(v[i])) idx.push_back(i);
  std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return v[a] > v[b]; });
  std::vector<char> in(n, 0);
  for (std::size_t j = 0; j < std::min(k, idx.size()); ++j) in[idx[j]] = 1;
  return in;
}

template <class T>
std::vector<char> cut_members(const T* v, std::size_t n, std::size_t k) {
  std::vector<T> work(n);
  const auto cut = losskit::detail::topk_cut(v, n, k, work.data());
  std::vector<char> in(n, 0);
  for (std::size_t i = 0; i < n; ++i) in[i] = v[i] > cut.threshold || (v[i] == cut.threshold && i < cut.tie_end);
  return in;
}

// Per-row value of both forms in long double from the definition.
template <class T>
ld reference_row(const RowMatrix<T>& s, const RowMatrix<T>& t, Eigen::Index r, std::size_t k, bool renorm, ld temp) {
  const auto x = lktest::log_softmax(s.row(r), 1 / temp), y = lktest::log_softmax(t.row(r), 1 / temp);
  const auto in = reference_members(t.row(r).data(), std::size_t(t.cols()), k);
  ld full = 0, P = 0, Q = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (!in[i]) continue;
    const ld p = std::exp(y[i]);
    P += p;
    Q += std::exp(x[i]);
    if (p > 0) full += p * (y[i] - x[i]);
  }
  return renorm ? full / P + std::log(Q / P) : full;
}

template <class T>
ld reference_mean(const RowMatrix<T>& s, const RowMatrix<T>& t, std::size_t k, bool renorm, double temp) {
  ld total = 0;
  for (Eigen::Index r = 0; r < s.rows(); ++r) total += reference_row(s, t, r, k, renorm, ld(temp));
  return total / ld(s.rows());
}

template <class T>
double tol() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-11;
}

}  // namespace

TEMPLATE_TEST_CASE("topk selection: exact, ties to the lower index, NaN and infinities", "[topk_kl_div][select]", float,
                   double) {
  using T = TestType;
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const std::size_t n = GENERATE(1u, 2u, 5u, 64u, 2048u, 2049u, 5000u, 32000u);
  const std::string shape =
      GENERATE(as<std::string>{}, "random", "ascending", "descending", "few values", "all equal", "masked", "nan", "inf");
  CAPTURE(n, shape);
  std::vector<T> v(n);
  const auto rnd = lktest::random_logits<T>(1, Eigen::Index(n), 17u + std::uint32_t(n), 8.0);
  for (std::size_t i = 0; i < n; ++i) {
    const T u = rnd(0, Eigen::Index(i));
    if (shape == "random") v[i] = u;
    if (shape == "ascending") v[i] = T(i);
    if (shape == "descending") v[i] = -T(i);
    if (shape == "few values") v[i] = std::floor(u / 3);  // 6 distinct values, heavy ties
    if (shape == "all equal") v[i] = T(1.5);
    if (shape == "masked") v[i] = i % 3 == 0 ? u : -inf;  // two thirds masked
    if (shape == "nan") v[i] = i % 7 == 3 ? nan : u;
    if (shape == "inf") v[i] = i % 11 == 5 ? inf : (i % 5 == 1 ? -inf : u);
  }
  for (std::size_t k : {std::size_t(1), std::size_t(2), n / 3 + 1, n / 2, n - 1, n, n + 5, std::size_t(1000)}) {
    if (k == 0) continue;
    CAPTURE(k);
    CHECK(cut_members(v.data(), n, k) == reference_members(v.data(), n, k));
  }
}

TEMPLATE_TEST_CASE("topk_kl_div: k >= V equals kl_div in both forms", "[topk_kl_div]", float, double) {
  using T = TestType;
  const int cols = GENERATE(1, 3, 17, 1000, 32000);
  const double temp = GENERATE(1.0, 2.0);
  const bool renorm = GENERATE(false, true);
  const bool log_probs = GENERATE(false, true);
  const Eigen::Index rows = cols >= 32000 ? 2 : 3;
  CAPTURE(cols, temp, renorm, log_probs);
  auto s = lktest::random_logits<T>(rows, cols, 11u + std::uint32_t(cols));
  auto t = lktest::random_logits<T>(rows, cols, 97u + std::uint32_t(cols));
  losskit::DivergenceOptions d;
  TopkKlOptions o;
  o.k = GENERATE(0, 1) == 0 ? cols : cols + 1000;  // k larger than V is clamped to V
  o.renormalize = renorm;
  if (log_probs) {
    if (temp != 1.0) return;
    for (Eigen::Index r = 0; r < rows; ++r) {
      const auto x = lktest::log_softmax(s.row(r), 1), y = lktest::log_softmax(t.row(r), 1);
      for (int c = 0; c < cols; ++c) {
        s(r, c) = T(x[std::size_t(c)]);
        t(r, c) = T(y[std::size_t(c)]);
      }
    }
    d.student_input = d.teacher_input = o.student_input = o.teacher_input = losskit::Input::log_probs;
  }
  d.temperature = o.temperature = temp;
  RowMatrix<T> g1(rows, cols), g2(rows, cols);
  const double v1 = losskit::topk_kl_div(s, t, g1, o).value, v2 = losskit::kl_div(s, t, g2, d).value;
  CHECK_THAT(v1, WithinRel(v2, tol<T>()) || WithinAbs(v2, std::is_same_v<T, float> ? 1e-6 : 1e-12));
  // Renormalised log-prob rows: the gradient is w.r.t. the given log-probabilities, q/Q - p/P,
  // which for normalised rows is kl_div's -p plus q (their softmax); compare through logits instead.
  if (!(renorm && log_probs))
    CHECK((g1 - g2).cwiseAbs().maxCoeff() <= T(std::is_same_v<T, float> ? 1e-6 : 1e-12));
}

TEMPLATE_TEST_CASE("topk_kl_div: value against the definition in long double", "[topk_kl_div]", float, double) {
  using T = TestType;
  const int cols = GENERATE(3, 17, 1000, 5000, 32000);
  const double temp = GENERATE(1.0, 2.0);
  const bool renorm = GENERATE(false, true);
  const Eigen::Index rows = cols >= 32000 ? 2 : 3;
  const auto s = lktest::random_logits<T>(rows, cols, 5u + std::uint32_t(cols));
  const auto t = lktest::random_logits<T>(rows, cols, 6u + std::uint32_t(cols));
  for (std::int64_t k : {std::int64_t(1), std::int64_t(2), std::int64_t(10), std::int64_t(1000), std::int64_t(cols - 1)}) {
    if (k < 1 || k > cols) continue;
    CAPTURE(cols, temp, renorm, k);
    TopkKlOptions o;
    o.k = k;
    o.renormalize = renorm;
    o.temperature = temp;
    const ld want = reference_mean(s, t, std::size_t(k), renorm, temp);
    const double got = losskit::topk_kl_div(s, t, o).value;
    CHECK_THAT(got, WithinRel(double(want), tol<T>()) || WithinAbs(double(want), std::is_same_v<T, float> ? 1e-6 : 1e-12));
  }
}

TEST_CASE("topk_kl_div: small hand cases", "[topk_kl_div]") {
  // V = 4, teacher (3, 1, 2, 3): top-2 by the lower index on the tie at 3 is {0, 3}; student uniform.
  RowMatrix<double> s = RowMatrix<double>::Zero(1, 4), t(1, 4);
  t << 3, 1, 2, 3;
  const double Z = 2 * std::exp(3.0) + std::exp(1.0) + std::exp(2.0);
  const double p3 = std::exp(3.0) / Z;
  TopkKlOptions o;
  o.k = 2;
  RowMatrix<double> g(1, 4);
  // full: sum over S of p (log p - log 1/4) = 2 p3 log(4 p3); gradient P_S q - p [S] = 2 p3 / 4 - p3 [S]
  CHECK_THAT(losskit::topk_kl_div(s, t, g, o).value, WithinRel(2 * p3 * std::log(4 * p3), 1e-14));
  CHECK_THAT(g(0, 0), WithinAbs(p3 / 2 - p3, 1e-15));
  CHECK_THAT(g(0, 1), WithinAbs(p3 / 2, 1e-15));
  CHECK_THAT(g(0, 2), WithinAbs(p3 / 2, 1e-15));
  CHECK_THAT(g(0, 3), WithinAbs(p3 / 2 - p3, 1e-15));
  // renormalised: p^S = q^S = (1/2, 1/2): zero loss, zero gradient
  o.renormalize = true;
  CHECK_THAT(losskit::topk_kl_div(s, t, g, o).value, WithinAbs(0.0, 1e-15));
  CHECK(g.cwiseAbs().maxCoeff() <= 1e-15);
  // k = 3 takes class 2 (logit 2) as well; student (0, 0, ln 2, 0): q^S = (1/4, 1/2, 1/4) over {0, 2, 3}
  o.k = 3;
  s(0, 2) = std::log(2.0);
  const double zs = 2 * std::exp(3.0) + std::exp(2.0);
  const double a = std::exp(3.0) / zs, b = std::exp(2.0) / zs;  // p^S over {0, 2, 3} = (a, b, a)
  const double want = 2 * a * std::log(a / 0.25) + b * std::log(b / 0.5);
  CHECK_THAT(losskit::topk_kl_div(s, t, g, o).value, WithinRel(want, 1e-14));
  CHECK_THAT(g(0, 0), WithinAbs(0.25 - a, 1e-15));
  CHECK(g(0, 1) == 0.0);
  CHECK_THAT(g(0, 2), WithinAbs(0.5 - b, 1e-15));
  CHECK_THAT(g(0, 3), WithinAbs(0.25 - a, 1e-15));
}

TEST_CASE("topk_kl_div: gradient matches central differences", "[topk_kl_div][fd]") {
  const int cols = GENERATE(1, 3, 17, 300, 3000);
  const bool renorm = GENERATE(false, true);
  const double temp = GENERATE(1.0, 2.5);
  const int mode = GENERATE(0, 1, 2, 3);  // mean; sum + T^2; none + ignored row; weights + normalizer
  CAPTURE(cols, renorm, temp, mode);
  // Wider rows take fewer combinations (the option handling is the same at every width):
  // 300 columns all modes but the last, 3000 columns (the sampled selection path) modes 0 and 1.
  if ((cols >= 3000 && mode >= 2) || (cols >= 300 && mode == 3)) return;
  const Eigen::Index rows = cols >= 3000 ? 1 : 4;
  const auto s = lktest::random_logits<double>(rows, cols, 3u + std::uint32_t(cols));
  auto t = lktest::random_logits<double>(rows, cols, 4u + std::uint32_t(cols));
  for (int c = 0; c < cols; c += 4) t(0, c) = std::round(t(0, c));  // ties in the teacher
  TopkKlOptions o;
  o.renormalize = renorm;
  o.temperature = temp;
  const std::vector<std::int64_t> labels{0, -100, 1, 2};
  const std::vector<double> w{1.0, 0.5, 0.0, 2.0};
  if (mode == 1) {
    o.reduction = Reduction::sum;
    o.scale_by_t_squared = true;
  }
  if (mode == 2 && rows == 4) {
    o.reduction = Reduction::none;
    o.labels = labels;
  }
  if (mode == 3 && rows == 4) {
    o.weights = w;
    o.normalizer = 3.0;
  }
  for (std::int64_t k : {1, 2, 10, cols - 1}) {
    if (k < 1 || (cols >= 300 && k < 10) || (cols >= 3000 && k != 10)) continue;
    CAPTURE(k);
    o.k = k;
    lktest::check_gradient_fd(
        [&](const RowMatrix<double>& x, RowMatrix<double>* g) {
          return (g ? losskit::topk_kl_div(x, t, *g, o) : losskit::topk_kl_div(x, t, o)).value;
        },
        s);
  }
}

TEMPLATE_TEST_CASE("topk_kl_div: -inf logits, float accuracy, threads, ignored rows", "[topk_kl_div][inf]", float, double) {
  using T = TestType;
  const T ninf = -std::numeric_limits<T>::infinity();
  auto s = lktest::random_logits<T>(3, 40, 3), t = lktest::random_logits<T>(3, 40, 4);
  TopkKlOptions o;
  o.k = 10;
  const bool renorm = GENERATE(false, true);
  o.renormalize = renorm;
  CAPTURE(renorm);
  SECTION("teacher masked beyond k: the selected -inf classes carry no mass") {
    for (int c = 5; c < 40; ++c) t(1, c) = ninf;  // 5 finite classes < k
    RowMatrix<T> g(3, 40);
    const auto r = losskit::topk_kl_div(s, t, g, o);
    CHECK(std::isfinite(r.value));
    CHECK(g.allFinite());
    CHECK_THAT(r.value, WithinRel(double(reference_mean(s, t, 10, renorm, 1.0)), tol<T>()));
  }
  SECTION("student -inf outside S: finite; inside S where the teacher has mass: +inf") {
    int lowest = 0;
    for (int c = 0; c < 40; ++c)
      if (t(0, c) < t(0, lowest)) lowest = c;
    s(0, lowest) = ninf;
    RowMatrix<T> g(3, 40);
    CHECK(std::isfinite(losskit::topk_kl_div(s, t, g, o).value));
    CHECK(g.allFinite());
    int highest = 0;
    for (int c = 0; c < 40; ++c)
      if (t(0, c) > t(0, highest)) highest = c;
    s(0, highest) = ninf;
    o.reduction = Reduction::none;
    const auto r = losskit::topk_kl_div(s, t, o);
    CHECK(std::isinf(r.per_row(0)));
    CHECK(std::isfinite(r.per_row(1)));
  }
  SECTION("float gradient within 1e-6 of the double gradient (k = 1000 of 32000)") {
    const auto sf = lktest::random_logits<float>(2, 32000, 8), tf = lktest::random_logits<float>(2, 32000, 9);
    o.k = 1000;
    RowMatrix<float> gf(2, 32000);
    RowMatrix<double> gd(2, 32000);
    losskit::topk_kl_div(sf, tf, gf, o);
    losskit::topk_kl_div(RowMatrix<double>(sf.cast<double>()), RowMatrix<double>(tf.cast<double>()), gd, o);
    CHECK((gf.cast<double>() - gd).cwiseAbs().maxCoeff() <= 1e-6);
    // rows in a matrix (row 0's gradient written during row 1's pass) = each row alone
    o.reduction = Reduction::sum;
    losskit::topk_kl_div(sf, tf, gf, o);
    for (Eigen::Index row = 0; row < 2; ++row) {
      RowMatrix<float> g1(1, 32000);
      losskit::topk_kl_div(RowMatrix<float>(sf.row(row)), RowMatrix<float>(tf.row(row)), g1, o);
      CHECK(g1.row(0) == gf.row(row));
    }
  }
  SECTION("same bits with 1 and 2 threads; every row ignored gives 0") {
    const auto bs = lktest::random_logits<T>(64, 5000, 5), bt = lktest::random_logits<T>(64, 5000, 6);
    o.k = 100;
    RowMatrix<T> g1(64, 5000), g2(64, 5000);
    const double v1 = losskit::topk_kl_div(bs, bt, g1, o).value;
    o.threads = 2;
    CHECK(losskit::topk_kl_div(bs, bt, g2, o).value == v1);
    CHECK(g1 == g2);
    const std::vector<std::int64_t> labels(64, -100);
    o.labels = labels;
    g2.setConstant(T(3));
    CHECK(losskit::topk_kl_div(bs, bt, g2, o).value == 0.0);
    CHECK(g2.cwiseAbs().maxCoeff() == T(0));
  }
}

TEST_CASE("topk_kl_div: errors", "[topk_kl_div][errors]") {
  const auto s = lktest::random_logits<float>(4, 10, 1), t = lktest::random_logits<float>(4, 10, 2);
  RowMatrix<float> g = RowMatrix<float>::Constant(4, 10, 42.f);
  auto has = [](const std::string& x, const char* part) { return x.find(part) != std::string::npos; };
  TopkKlOptions o;
  o.k = 0;
  CHECK(has(lktest::invalid_argument_of([&] { losskit::topk_kl_div(s, t, g, o); }), "losskit::topk_kl_div: 'k' must be >= 1, got 0"));
  o = {};
  o.temperature = 2;
  o.teacher_input = losskit::Input::log_probs;
  CHECK(has(lktest::invalid_argument_of([&] { losskit::topk_kl_div(s, t, g, o); }),
            "'temperature' must be 1 with log-probability inputs"));
  const auto t9 = lktest::random_logits<float>(4, 9, 3);
  CHECK(has(lktest::invalid_argument_of([&] { losskit::topk_kl_div(s, t9, g, {}); }), "'teacher' has shape 4x9"));
  CHECK((g.array() == 42.f).all());
}

TEMPLATE_TEST_CASE("topk_kl_div: a chunk redone by the statistics loop copies its band entries once",
                   "[topk_kl_div]", float, double) {
  // Rows wide enough for the sampled selection (k < V, V > 2048). Row 0's student and row 1's
  // teacher jump by 200 in a later chunk, which PairRow::stats redoes against its own maximum;
  // the bracketed teacher entries it copies must not be appended twice. Reversed columns put
  // the jumps in the first chunk (no redo).
  using T = TestType;
  const Eigen::Index n = 5000;
  RowMatrix<T> s = lktest::random_logits<T>(2, n, 31u), t = lktest::random_logits<T>(2, n, 32u);
  s.row(0).tail(n - 2048).array() += T(200);
  t.row(1).tail(n - 2500).array() += T(200);
  const RowMatrix<T> sr = s.rowwise().reverse(), tr = t.rowwise().reverse();
  for (bool renorm : {false, true}) {
    CAPTURE(renorm);
    TopkKlOptions o;
    o.k = 100;
    o.renormalize = renorm;
    o.reduction = Reduction::sum;
    RowMatrix<T> g(2, n), gr(2, n);
    const double v = losskit::topk_kl_div(s, t, g, o).value, vr = losskit::topk_kl_div(sr, tr, gr, o).value;
    const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-10;
    CHECK_THAT(v, WithinRel(double(reference_mean(s, t, 100, renorm, 1.0)) * 2, tol));
    CHECK_THAT(v, WithinRel(vr, tol));
    CHECK((g - RowMatrix<T>(gr.rowwise().reverse())).cwiseAbs().maxCoeff() <= T(std::is_same_v<T, float> ? 1e-6 : 1e-12));
  }
}
