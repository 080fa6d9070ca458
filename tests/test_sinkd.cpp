// losskit::sinkd_loss (batch-wise SinKD) and sinkd_per_sample_loss: PyTorch autograd through
// SinKD's own loop (tests/reference/sinkd_refs.txt, gen_sinkd_refs.py), central differences in
// double (ties included), float accuracy, threads, errors.
#include <losskit/transport/sinkd.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "reference_vectors.hpp"
#include "test_support.hpp"

using losskit::RowMatrix;
using losskit::RowMatrixXd;
using losskit::SinkdOptions;

namespace {

struct SinkdCase {
  int id = 0, rows = 0, cols = 0, iters = 0;
  std::string form;
  double T = 2, eps = 0.1, weight = 1, scale = 4, value = 0;
  std::uint64_t seed_s = 0, seed_t = 0;
  std::vector<double> grad;
};

const std::vector<SinkdCase>& cases() {
  using losskit_test::detail::TokenLine;
  static const std::vector<SinkdCase> all = losskit_test::read_records(
      losskit_test::test_data_path("reference/sinkd_refs.txt"),
      [](TokenLine& tok) {
        SinkdCase c;
        c.id = tok.integer();
        c.form = tok.word();
        c.rows = tok.integer();
        c.cols = tok.integer();
        c.T = tok.number();
        c.eps = tok.number();
        c.iters = tok.integer();
        c.weight = tok.number();
        c.scale = tok.number();
        c.seed_s = tok.u64();
        c.seed_t = tok.u64();
        return c;
      },
      [](TokenLine& tok, const std::string& key, SinkdCase& c) {
        if (key == "value")
          c.value = tok.number();
        else if (key == "grad")
          c.grad = tok.numbers(std::size_t(c.rows) * std::size_t(c.cols));
        else
          tok.fail("unknown key '" + key + "'");
      });
  return all;
}

template <class T>
RowMatrix<T> logits(std::uint64_t seed, int rows, int cols, double scale) {
  const auto v = losskit_test::reference_logits(seed, std::size_t(rows), std::size_t(cols), scale);
  RowMatrix<T> m(rows, cols);
  for (int i = 0; i < rows * cols; ++i) m.data()[i] = T(v[std::size_t(i)]);
  return m;
}

RowMatrixXd class_cost(int n) {  // |i - j| / (n - 1), as in gen_sinkd_refs.py
  RowMatrixXd M(n, n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) M(i, j) = std::abs(i - j) / double(std::max(n - 1, 1));
  return M;
}

SinkdOptions case_options(const SinkdCase& c) {
  SinkdOptions o;
  o.temperature = c.T;
  o.epsilon = c.eps;
  o.iterations = c.iters;
  o.weight = c.weight;
  return o;
}

template <class T, class G>
losskit::LossResult run_case(const SinkdCase& c, const RowMatrix<T>& s, const RowMatrix<T>& t, G* g) {
  const SinkdOptions o = case_options(c);
  if (c.form == "batch") return g ? losskit::sinkd_loss(s, t, *g, o) : losskit::sinkd_loss(s, t, o);
  const RowMatrix<T> M = class_cost(c.cols).cast<T>();
  return g ? losskit::sinkd_per_sample_loss(s, t, M, *g, o) : losskit::sinkd_per_sample_loss(s, t, M, o);
}

}  // namespace

TEMPLATE_TEST_CASE("sinkd: PyTorch autograd through the reference loop", "[sinkd][reference]", float, double) {
  using T = TestType;
  REQUIRE(cases().size() >= 10);
  for (const SinkdCase& c : cases()) {
    CAPTURE(c.id, c.form, c.rows, c.cols, c.T, c.eps, c.iters, c.weight);
    const auto s = logits<T>(c.seed_s, c.rows, c.cols, c.scale), t = logits<T>(c.seed_t, c.rows, c.cols, c.scale);
    RowMatrix<T> g(c.rows, c.cols);
    const auto r = run_case<T>(c, s, t, &g);
    const bool dbl = std::is_same_v<T, double>;
    CHECK(std::fabs(r.value - c.value) <= (dbl ? 1e-11 : 1e-5) * std::max(1e-3, std::fabs(c.value)));
    double gmax = 0, worst = 0;
    for (double x : c.grad) gmax = std::max(gmax, std::fabs(x));
    for (int k = 0; k < c.rows * c.cols; ++k) worst = std::max(worst, std::fabs(double(g.data()[k]) - c.grad[std::size_t(k)]));
    CAPTURE(gmax, worst);
    // double: 1e-9 of the largest entry; float: 1e-6 absolute on these O(1e-2) gradients and 1e-4 relative
    CHECK(worst <= (dbl ? 1e-9 * std::max(gmax, 1e-12) : std::max(1e-6, 1e-4 * gmax)));
    CHECK(run_case<T, RowMatrix<T>>(c, s, t, nullptr).value == r.value);  // forward-only overload: same value
  }
}

TEST_CASE("sinkd: gradient against central differences (double), ties included", "[sinkd][gradient]") {
  const int B = GENERATE(1, 2, 5, 9), C = GENERATE(1, 3, 40);
  const bool ties = GENERATE(false, true);
  CAPTURE(B, C, ties);
  RowMatrixXd s = lktest::random_logits<double>(B, C, 7u + std::uint32_t(B * 100 + C));
  const RowMatrixXd t = lktest::random_logits<double>(B, C, 8u + std::uint32_t(B * 100 + C));
  // q_1 = p_0 exactly: |q - p| has ties on that whole pair. The subgradient there is 0; a central
  // difference straddles the kink and is off by O(h) (second-order terms of q(s +- h)), hence 1e-5.
  if (ties && B >= 2) s.row(1) = t.row(0);
  const double tol = ties ? 1e-5 : 1e-6;
  SinkdOptions o;
  o.iterations = GENERATE(0, 3, 20);
  lktest::check_gradient_fd(
      [&](const RowMatrixXd& x, RowMatrixXd* g) { return g ? losskit::sinkd_loss(x, t, *g, o).value : losskit::sinkd_loss(x, t, o).value; },
      s, tol);
  SECTION("per-sample form") {
    const RowMatrixXd M = class_cost(C);
    lktest::check_gradient_fd(
        [&](const RowMatrixXd& x, RowMatrixXd* g) {
          return g ? losskit::sinkd_per_sample_loss(x, t, M, *g, o).value : losskit::sinkd_per_sample_loss(x, t, M, o).value;
        },
        s, tol);
  }
}

TEMPLATE_TEST_CASE("sinkd: outputs, threads, in-place gradient, options", "[sinkd]", float, double) {
  using T = TestType;
  const int B = 13, C = 3001;
  const auto s = lktest::random_logits<T>(B, C, 21), t = lktest::random_logits<T>(B, C, 22);
  SinkdOptions o;
  o.threads = 1;
  RowMatrix<T> g1(B, C), g2(B, C);
  const auto r1 = losskit::sinkd_loss(s, t, g1, o);
  o.threads = 2;
  const auto r2 = losskit::sinkd_loss(s, t, g2, o);
  CHECK(r1.value == r2.value);
  CHECK(g1 == g2);
  // Side outputs: W is the L1 cost between the softmaxed rows, P has unit column sums (last step).
  CHECK(r1.cost.rows() == B);
  CHECK((r1.plan.colwise().sum().array() - 1.0).abs().maxCoeff() <= 1e-12);
  CHECK_THAT(r1.value, Catch::Matchers::WithinRel(r1.plan.cwiseProduct(r1.cost).sum(), 1e-12));
  // weight and grad_scale multiply.
  SinkdOptions ow = o;
  ow.weight = 0.001;
  ow.grad_scale = 3.0;
  RowMatrix<T> gw(B, C);
  const auto rw = losskit::sinkd_loss(s, t, gw, ow);
  CHECK_THAT(rw.value, Catch::Matchers::WithinRel(0.001 * r1.value, 1e-12));
  CHECK((gw.template cast<double>() - 0.003 * g1.template cast<double>()).cwiseAbs().maxCoeff() <= 1e-9);
  // In place: grad may alias the student.
  RowMatrix<T> inplace = s;
  losskit::sinkd_loss(inplace, t, inplace, o);
  CHECK((inplace - g1).cwiseAbs().maxCoeff() <= T(1e-7));
}

TEST_CASE("sinkd_per_sample_loss: reduction and ignored rows", "[sinkd]") {
  const int R = 5, C = 8;
  const auto s = lktest::random_logits<double>(R, C, 31), t = lktest::random_logits<double>(R, C, 32);
  const RowMatrixXd M = class_cost(C);
  SinkdOptions o;
  o.reduction = losskit::Reduction::none;
  const auto none = losskit::sinkd_per_sample_loss(s, t, M, o);
  REQUIRE(none.per_row.size() == R);
  CHECK((none.per_row.array() > 0).all());
  o.reduction = losskit::Reduction::mean;
  const std::vector<std::int64_t> labels{0, -100, 1, 2, -100};
  o.labels = labels;
  RowMatrixXd g = RowMatrixXd::Constant(R, C, 5.0);
  const auto r = losskit::sinkd_per_sample_loss(s, t, M, g, o);
  CHECK(r.count == 3);
  CHECK_THAT(r.value, Catch::Matchers::WithinRel((none.per_row[0] + none.per_row[2] + none.per_row[3]) / 3, 1e-12));
  CHECK(g.row(1).cwiseAbs().maxCoeff() == 0.0);
  CHECK(g.row(4).cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("sinkd: bad input throws std::invalid_argument and writes nothing", "[sinkd][errors]") {
  const auto s = lktest::random_logits<double>(4, 6, 41), t = lktest::random_logits<double>(4, 6, 42);
  RowMatrixXd g = RowMatrixXd::Constant(4, 6, 9.0);
  const RowMatrixXd g0 = g;
  auto has = [](const std::string& e, const char* part) { return e.find(part) != std::string::npos; };
  auto err = [&](const RowMatrixXd& a, const RowMatrixXd& b, SinkdOptions o) {
    return lktest::invalid_argument_of([&] { losskit::sinkd_loss(a, b, g, o); });
  };
  SinkdOptions o;
  CHECK(has(err(s, RowMatrixXd(t.leftCols(5)), o), "losskit::sinkd_loss: 'teacher' has shape 4x5, expected 4x6"));
  o.temperature = 0;
  CHECK(has(err(s, t, o), "'temperature' must be positive"));
  o = {};
  o.epsilon = -1;
  CHECK(has(err(s, t, o), "'epsilon' must be positive"));
  o = {};
  o.iterations = -2;
  CHECK(has(err(s, t, o), "'iterations' must be >= 0"));
  RowMatrixXd gbad(4, 5);
  CHECK(has(lktest::invalid_argument_of([&] { losskit::sinkd_loss(s, t, gbad); }), "'grad' has shape 4x5"));
  CHECK(has(lktest::invalid_argument_of([&] { losskit::sinkd_per_sample_loss(s, t, class_cost(5), g); }),
            "'class_cost' has shape 5x5, expected 6x6"));
  CHECK(g == g0);
}

TEMPLATE_TEST_CASE("sinkd: L1 cost and its subgradient (0 at ties) on given distributions", "[sinkd][ties]", float, double) {
  // Exact ties q_ic == p_jc on some classes only cannot be produced through two softmaxes, so the
  // two B x B x C kernels are checked directly, with ties planted, against scalar loops.
  using T = TestType;
  const int B = GENERATE(1, 3, 6), C = GENERATE(1, 17, 70);
  CAPTURE(B, C);
  RowMatrix<T> q(B, C), p(B, C);
  for (int i = 0; i < B; ++i)
    for (int c = 0; c < C; ++c) {
      q(i, c) = T(losskit_test::uniform01(51, std::uint64_t(i * C + c)));
      p(i, c) = T(losskit_test::uniform01(52, std::uint64_t(i * C + c)));
    }
  for (int c = 0; c < C; c += 3) p((c / 3) % B, c) = q((c / 2) % B, c);  // ties
  RowMatrixXd W;
  losskit::detail::l1_cost<T>(q, p, W, 1);
  RowMatrix<T> wbar(B, B), h(B, C);
  for (int i = 0; i < B; ++i)
    for (int j = 0; j < B; ++j) wbar(i, j) = T(losskit_test::symmetric_uniform(53, std::uint64_t(i * B + j)));
  losskit::detail::l1_backward<T>(q, p, wbar, h, 1);
  for (int i = 0; i < B; ++i) {
    for (int j = 0; j < B; ++j) {
      double want = 0;
      for (int c = 0; c < C; ++c) want += std::fabs(double(q(i, c)) - double(p(j, c)));
      CHECK(std::fabs(W(i, j) - want) <= 1e-6 * std::max(1.0, want));
    }
    for (int c = 0; c < C; ++c) {
      double want = 0;
      for (int j = 0; j < B; ++j) {
        const double d = double(q(i, c)) - double(p(j, c));
        want += d > 0 ? double(wbar(i, j)) : d < 0 ? -double(wbar(i, j)) : 0.0;
      }
      CHECK(std::fabs(double(h(i, c)) - want) <= 1e-5);
    }
  }
}
