// losskit::sinkhorn and friends: POT reference vectors (tests/reference/sinkhorn_refs.txt, made by
// gen_sinkhorn_refs.py with POT 0.9.7), marginals, envelope gradients against central differences
// of the converged objective, the unrolled gradient against central differences of the unrolled
// function, options (cap, epsilon scaling, warm start, threads, batch) and errors.
#include <losskit/transport/sinkhorn.hpp>

#include <unsupported/Eigen/CXX11/Tensor>

#include <cmath>
#include <string>
#include <vector>

#include "reference_vectors.hpp"
#include "test_support.hpp"

using losskit::EntropicRegularizer;
using losskit::GroundCost;
using losskit::RowMatrix;
using losskit::RowMatrixXd;
using losskit::SinkhornOptions;
using Eigen::VectorXd;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// ---- the reference file -------------------------------------------------------------------------

struct SinkhornCase {
  int id = 0;
  std::string kind, reg;
  int n = 0, m = 0, max_iter = 0, iterations = 0;
  double eps = 0, scale = 0, offset = 0, tol = 0, reg_m_a = kInf, reg_m_b = kInf, err = 0;
  std::uint64_t seed_c = 0, seed_a = 0, seed_b = 0;
  bool zero_a = false;
  double cost = 0, objective = 0, objective_other = 0;
  bool has_other = false;
  std::vector<double> f, g, plan;
  double plan_sum = 0, plan_dot = 0;
  std::vector<losskit_test::GradSample> samples;
  bool has_plain = false;
  int plain_zeros = 0, plain_zero_rows = 0, plain_bad = 0;
  double plain_err = 0;
};

std::vector<SinkhornCase> load_cases() {
  using losskit_test::detail::TokenLine;
  auto on_case = [](TokenLine& tok) {
    SinkhornCase c;
    c.id = tok.integer();
    c.kind = tok.word();
    c.n = tok.integer();
    c.m = tok.integer();
    c.eps = tok.number();
    c.scale = tok.number();
    c.offset = tok.number();
    c.tol = tok.number();
    c.max_iter = tok.integer();
    c.seed_c = tok.u64();
    c.seed_a = tok.u64();
    c.seed_b = tok.u64();
    c.zero_a = tok.integer() != 0;
    c.reg = tok.word();
    c.reg_m_a = tok.number();
    c.reg_m_b = tok.number();
    return c;
  };
  auto on_field = [](TokenLine& tok, const std::string& key, SinkhornCase& c) {
    if (key == "iterations") {
      c.iterations = tok.integer();
      c.err = tok.number();
    } else if (key == "values") {
      c.cost = tok.number();
      c.objective = tok.number();
    } else if (key == "objective_other") {
      c.objective_other = tok.number();
      c.has_other = true;
    } else if (key == "f") {
      c.f = tok.numbers(std::size_t(c.n));
    } else if (key == "g") {
      c.g = tok.numbers(std::size_t(c.m));
    } else if (key == "plan") {
      c.plan = tok.numbers(std::size_t(c.n) * std::size_t(c.m));
    } else if (key == "plan_summary") {
      c.plan_sum = tok.number();
      c.plan_dot = tok.number();
      c.samples = tok.samples(c.n, c.m);
    } else if (key == "plain") {
      c.has_plain = true;
      c.plain_zeros = tok.integer();
      c.plain_zero_rows = tok.integer();
      c.plain_bad = tok.integer();
      c.plain_err = tok.number();
    } else {
      tok.fail("unknown key '" + key + "'");
    }
  };
  return losskit_test::read_records(losskit_test::test_data_path("reference/sinkhorn_refs.txt"), on_case, on_field);
}

const std::vector<SinkhornCase>& cases() {
  static const std::vector<SinkhornCase> c = load_cases();
  return c;
}

using losskit_test::uniform01;

template <class T>
RowMatrix<T> make_cost(const SinkhornCase& c) {
  RowMatrix<T> C(c.n, c.m);
  for (int i = 0; i < c.n; ++i)
    for (int j = 0; j < c.m; ++j) C(i, j) = T(c.offset + c.scale * uniform01(c.seed_c, std::uint64_t(i * c.m + j)));
  return C;
}
VectorXd make_weights(std::uint64_t seed, int n, bool zero_first) {
  VectorXd w(n);
  for (int i = 0; i < n; ++i) w[i] = 0.2 + uniform01(seed, std::uint64_t(i));
  if (zero_first) w[0] = 0;
  return w / w.sum();
}

SinkhornOptions case_options(const SinkhornCase& c) {
  SinkhornOptions o;
  o.epsilon = c.eps;
  o.tol = c.tol;
  o.max_iter = c.max_iter;
  o.regularizer = c.reg == "kl" ? EntropicRegularizer::kl : EntropicRegularizer::entropy;
  o.reg_m_a = c.reg_m_a;
  o.reg_m_b = c.reg_m_b;
  return o;
}

VectorXd centred(const VectorXd& x, const VectorXd& w) {
  double s = 0, k = 0;
  for (Eigen::Index i = 0; i < x.size(); ++i)
    if (w[i] > 0) {
      s += x[i];
      k += 1;
    }
  VectorXd out = x.array() - s / k;
  return out;
}

// max_i |x_i - ref_i| over entries with positive mass, relative to max(max |ref|, eps).
double potential_error(const VectorXd& x, const std::vector<double>& ref, const VectorXd& w, double eps) {
  double scale = eps, worst = 0;
  for (std::size_t i = 0; i < ref.size(); ++i)
    if (w[Eigen::Index(i)] > 0) {
      scale = std::max(scale, std::fabs(ref[i]));
      worst = std::max(worst, std::fabs(x[Eigen::Index(i)] - ref[i]));
    }
  return worst / scale;
}

double rel(double x, double ref) { return std::fabs(x - ref) / std::max(std::fabs(ref), 1e-300); }

}  // namespace

TEST_CASE("sinkhorn: POT reference vectors (double)", "[sinkhorn][reference]") {
  REQUIRE(cases().size() >= 30);
  const bool cache = GENERATE(true, false);  // the kernel cache must not change the iterates
  for (const SinkhornCase& c : cases()) {
    CAPTURE(cache, c.id, c.kind, c.n, c.m, c.eps, c.reg, c.reg_m_a, c.reg_m_b);
    const auto C = make_cost<double>(c);
    const VectorXd a = make_weights(c.seed_a, c.n, c.zero_a), b = make_weights(c.seed_b, c.m, false);
    SinkhornOptions o = case_options(c);
    o.kernel_cache = cache;
    o.return_plan = true;
    RowMatrixXd grad(c.n, c.m);
    const auto r = losskit::sinkhorn(a, b, C, grad, o);
    const bool balanced = c.kind == "balanced";
    if (balanced) {
      CHECK(r.converged);
      CHECK(r.marginal_error < c.tol);
      // Same iteration and stopping rule as POT: the same iteration count (a different rounding
      // could move a threshold crossing by one check).
      CHECK(std::abs(r.iterations - c.iterations) <= (c.tol >= 1e-9 ? 0 : 10));
      // Marginals of the returned plan within the tolerance.
      CHECK((r.plan.colwise().sum().transpose() - b).norm() < std::max(c.tol, 1e-15));
      CHECK((r.plan.rowwise().sum() - a).norm() < 1e-12);
    }
    CHECK(rel(r.cost, c.cost) <= 1e-6);
    CHECK(rel(r.objective, c.objective) <= 1e-6);
    CHECK(potential_error(centred(r.f, a), c.f, a, c.eps) <= 1e-6);
    CHECK(potential_error(centred(r.g, b), c.g, b, c.eps) <= 1e-6);
    CHECK(grad == r.plan);  // d objective / d C is the plan
    if (!c.plan.empty()) {
      double worst = 0;
      for (int i = 0; i < c.n; ++i)
        for (int j = 0; j < c.m; ++j) {
          const double want = c.plan[std::size_t(i * c.m + j)];
          worst = std::max(worst, std::fabs(r.plan(i, j) - want) / (std::fabs(want) + 1e-300));
        }
      CAPTURE(worst);
      CHECK(worst <= 1e-6);
    } else {
      double dot = 0;
      for (int i = 0; i < c.n; ++i)
        for (int j = 0; j < c.m; ++j) dot += r.plan(i, j) * uniform01(777, std::uint64_t(i * c.m + j));
      CHECK(rel(r.plan.sum(), c.plan_sum) <= 1e-6);
      CHECK(rel(dot, c.plan_dot) <= 1e-6);
      for (const auto& s : c.samples) CHECK(rel(r.plan(s.row, s.col), s.value) <= 1e-6);
    }
    if (c.has_other) {  // the other regularizer: same plan, its own objective
      SinkhornOptions o2 = case_options(c);
      o2.regularizer = c.reg == "kl" ? EntropicRegularizer::entropy : EntropicRegularizer::kl;
      CHECK(rel(losskit::sinkhorn(a, b, C, o2).objective, c.objective_other) <= 1e-6);
    }
    if (c.has_plain) {
      // The data shows the plain iteration breaking down on this problem (exp(-C/eps) underflows);
      // the log-domain result above matched POT's log-domain solver.
      CHECK(c.plain_zeros > 0);
      CHECK((c.plain_bad == 1 || !(c.plain_err < 1e-2)));
      CHECK(std::isfinite(r.cost));
    }
  }
}

TEST_CASE("sinkhorn: float inputs", "[sinkhorn][float]") {
  for (const SinkhornCase& c : cases()) {
    if (c.kind != "balanced" || c.eps < 0.1 || c.zero_a) continue;
    CAPTURE(c.id, c.n, c.m, c.eps);
    const auto C = make_cost<float>(c);
    const Eigen::VectorXf a = make_weights(c.seed_a, c.n, false).cast<float>();
    const Eigen::VectorXf b = make_weights(c.seed_b, c.m, false).cast<float>();
    SinkhornOptions o = case_options(c);
    o.tol = 1e-6;
    const auto r = losskit::sinkhorn(a, b, C, o);
    CHECK(r.converged);
    CHECK(rel(r.cost, c.cost) <= 1e-4);
    CHECK(rel(r.objective, c.objective) <= 1e-4);
  }
}

TEST_CASE("sinkhorn: zero masses, small epsilon stays finite", "[sinkhorn]") {
  const SinkhornCase* c = nullptr;
  for (const auto& x : cases())
    if (x.zero_a) c = &x;
  REQUIRE(c);
  const auto C = make_cost<double>(*c);
  const VectorXd a = make_weights(c->seed_a, c->n, true), b = make_weights(c->seed_b, c->m, false);
  SinkhornOptions o = case_options(*c);
  o.return_plan = true;
  const auto r = losskit::sinkhorn(a, b, C, o);
  CHECK(r.f[0] == -kInf);
  CHECK(r.plan.row(0).cwiseAbs().maxCoeff() == 0.0);
  CHECK(std::isfinite(r.objective));
  CHECK(r.grad_a[0] == -kInf);
  CHECK(r.grad_a.tail(c->n - 1).allFinite());
  o.regularizer = EntropicRegularizer::kl;
  CHECK(losskit::sinkhorn(a, b, C, o).grad_a.allFinite());  // -eps LSE: finite even at a zero mass
}

namespace {

RowMatrixXd random_matrix(int n, int m, std::uint64_t seed, double lo = 0.0, double hi = 1.0) {
  RowMatrixXd x(n, m);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j) x(i, j) = lo + (hi - lo) * uniform01(seed, std::uint64_t(i * m + j));
  return x;
}

SinkhornOptions tight(double eps) {
  SinkhornOptions o;
  o.epsilon = eps;
  o.tol = 1e-15;
  o.check_every = 1;
  o.max_iter = 100000;
  return o;
}

}  // namespace

TEST_CASE("sinkhorn: envelope gradients against central differences", "[sinkhorn][gradient]") {
  const int n = 6, m = 5;
  const RowMatrixXd C0 = random_matrix(n, m, 41);
  const VectorXd a0 = make_weights(42, n, false), b0 = make_weights(43, m, false);
  const auto reg = GENERATE(EntropicRegularizer::entropy, EntropicRegularizer::kl);
  struct Mode {
    double ra, rb;
  };
  const auto mode = GENERATE(Mode{kInf, kInf}, Mode{0.7, 1.5}, Mode{kInf, 0.8}, Mode{0.6, kInf});
  CAPTURE(int(reg), mode.ra, mode.rb);
  SinkhornOptions o = tight(0.2);
  o.regularizer = reg;
  o.reg_m_a = mode.ra;
  o.reg_m_b = mode.rb;
  const bool balanced = std::isinf(mode.ra) && std::isinf(mode.rb);
  RowMatrixXd G(n, m);
  const auto r = losskit::sinkhorn(a0, b0, C0, G, o);
  REQUIRE(r.converged);
  const double h = 1e-6;
  auto tol_of = [](double num) { return 1e-6 * std::max(1e-2, std::fabs(num)); };

  SECTION("d objective / d C = the plan") {
    RowMatrixXd C = C0;
    auto obj = [&](const RowMatrixXd& x) { return losskit::sinkhorn(a0, b0, x, o).objective; };
    for (Eigen::Index k = 0; k < C.size(); ++k) {
      const double num = lktest::central_difference(obj, C, k, h);
      CAPTURE(k, num, G.data()[k]);
      CHECK(std::fabs(G.data()[k] - num) <= tol_of(num));
    }
  }
  SECTION("d objective / d a, d b") {
    // Balanced: a and b must keep their common total, so test zero-sum directions e_i - e_k;
    // otherwise every coordinate (the hard side of a semi-relaxed problem included).
    VectorXd a = a0, b = b0;
    auto along = [&](VectorXd& w, const VectorXd& grad, bool is_a) {
      const bool hard_pair = balanced;
      for (Eigen::Index i = 0; i < w.size(); ++i) {
        const Eigen::Index k = (i + 1) % w.size();
        auto f = [&](double t) {
          VectorXd x = w;
          x[i] += t;
          if (hard_pair) x[k] -= t;
          return is_a ? losskit::sinkhorn(x, b, C0, o).objective : losskit::sinkhorn(a, x, C0, o).objective;
        };
        const double num = (f(h) - f(-h)) / (2 * h);
        const double ana = hard_pair ? grad[i] - grad[k] : grad[i];
        CAPTURE(is_a, i, num, ana);
        CHECK(std::fabs(ana - num) <= tol_of(num));
      }
    };
    along(a, r.grad_a, true);
    along(b, r.grad_b, false);
  }
}

TEST_CASE("sinkhorn_points: gradients w.r.t. the points", "[sinkhorn][points]") {
  const auto kind = GENERATE(GroundCost::sqeuclidean, GroundCost::euclidean, GroundCost::l1);
  const int n = 5, m = 4, d = 3;
  RowMatrixXd x = random_matrix(n, d, 51), y = random_matrix(m, d, 52);
  const VectorXd a = make_weights(53, n, false), b = make_weights(54, m, false);
  SinkhornOptions o = tight(0.3);
  o.ground_cost = kind;
  CAPTURE(int(kind));
  // The cost matrix the point overloads build.
  const RowMatrixXd C = losskit::pairwise_cost(x, y, kind);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j) {
      const Eigen::RowVectorXd diff = x.row(i) - y.row(j);
      const double want = kind == GroundCost::l1 ? diff.cwiseAbs().sum()
                          : kind == GroundCost::euclidean ? diff.norm() : diff.squaredNorm();
      CHECK_THAT(C(i, j), Catch::Matchers::WithinRel(want, 1e-14));
    }
  RowMatrixXd gx(n, d), gy(m, d);
  const auto r = losskit::sinkhorn_points(a, x, b, y, gx, gy, o);
  CHECK_THAT(r.objective, Catch::Matchers::WithinRel(losskit::sinkhorn(a, b, C, o).objective, 1e-12));
  auto fx = [&](const RowMatrixXd& p) { return losskit::sinkhorn_points(a, p, b, y, o).objective; };
  auto fy = [&](const RowMatrixXd& p) { return losskit::sinkhorn_points(a, x, b, p, o).objective; };
  for (Eigen::Index k = 0; k < x.size(); ++k) {
    const double num = lktest::central_difference(fx, x, k, 1e-6);
    CAPTURE(k, num, gx.data()[k]);
    CHECK(std::fabs(gx.data()[k] - num) <= 1e-6 * std::max(1e-2, std::fabs(num)));
  }
  for (Eigen::Index k = 0; k < y.size(); ++k) {
    const double num = lktest::central_difference(fy, y, k, 1e-6);
    CAPTURE(k, num, gy.data()[k]);
    CHECK(std::fabs(gy.data()[k] - num) <= 1e-6 * std::max(1e-2, std::fabs(num)));
  }
}

TEST_CASE("sinkhorn_unrolled: value and gradient through the iterations", "[sinkhorn][unrolled]") {
  const int n = GENERATE(1, 4, 7), m = GENERATE(1, 5);
  const int L = GENERATE(0, 1, 3, 20);
  CAPTURE(n, m, L);
  RowMatrixXd C = random_matrix(n, m, 61, 0.0, 2.0);
  VectorXd a = make_weights(62, n, false) * 3.0, b = make_weights(63, m, false) * 3.0;
  losskit::UnrolledSinkhornOptions o;
  o.iterations = L;
  o.epsilon = 0.3;
  RowMatrixXd G(n, m);
  const auto r = losskit::sinkhorn_unrolled(a, b, C, G, o);

  // Reference forward: SinKD's loop, literally (rows then columns, L times) in long double.
  using LM = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;
  LM P = (-C.cast<long double>() / (long double)o.epsilon).array().exp().matrix();
  for (int k = 0; k < L; ++k) {
    for (int i = 0; i < n; ++i) P.row(i) *= (long double)a[i] / P.row(i).sum();
    for (int j = 0; j < m; ++j) P.col(j) *= (long double)b[j] / P.col(j).sum();
  }
  const double want = double((P.array() * C.cast<long double>().array()).sum());
  CHECK_THAT(r.value, Catch::Matchers::WithinRel(want, 1e-12));
  CHECK(((r.plan.cast<long double>() - P).cwiseAbs().maxCoeff()) <= 1e-13L);

  auto fc = [&](const RowMatrixXd& x) { return losskit::sinkhorn_unrolled(a, b, x, o).value; };
  for (Eigen::Index k = 0; k < C.size(); ++k) {
    const double num = lktest::central_difference(fc, C, k, 1e-6);
    CAPTURE(k, num, G.data()[k]);
    CHECK(std::fabs(G.data()[k] - num) <= 1e-6 * std::max(1e-2, std::fabs(num)));
  }
  auto fa = [&](const VectorXd& x) { return losskit::sinkhorn_unrolled(x, b, C, o).value; };
  auto fb = [&](const VectorXd& x) { return losskit::sinkhorn_unrolled(a, x, C, o).value; };
  for (Eigen::Index k = 0; k < n; ++k) {
    const double num = lktest::central_difference(fa, a, k, 1e-6);
    CHECK(std::fabs(r.grad_a[k] - num) <= 1e-6 * std::max(1e-2, std::fabs(num)));
  }
  for (Eigen::Index k = 0; k < m; ++k) {
    const double num = lktest::central_difference(fb, b, k, 1e-6);
    CHECK(std::fabs(r.grad_b[k] - num) <= 1e-6 * std::max(1e-2, std::fabs(num)));
  }
}

TEST_CASE("sinkhorn: iteration cap, epsilon scaling, warm start", "[sinkhorn][options]") {
  const int n = 60, m = 50;
  const RowMatrixXd C = random_matrix(n, m, 71);
  const VectorXd a = make_weights(72, n, false), b = make_weights(73, m, false);
  SinkhornOptions o;
  o.epsilon = 0.005;
  o.tol = 1e-10;
  o.max_iter = 100000;
  o.return_plan = true;
  const auto ref = losskit::sinkhorn(a, b, C, o);
  REQUIRE(ref.converged);

  SECTION("a run that hits the cap says so") {
    SinkhornOptions oc = o;
    oc.max_iter = 25;
    const auto r = losskit::sinkhorn(a, b, C, oc);
    CHECK_FALSE(r.converged);
    CHECK(r.iterations == 25);
    CHECK(r.marginal_error > oc.tol);
    CHECK(std::isfinite(r.marginal_error));
    oc.max_iter = 0;  // no iteration: potentials as given, error of that state
    const auto z = losskit::sinkhorn(a, b, C, oc);
    CHECK(z.iterations == 0);
    CHECK_FALSE(z.converged);
  }
  SECTION("epsilon scaling reaches the same solution") {
    SinkhornOptions os = o;
    os.epsilon_scaling = true;
    const auto r = losskit::sinkhorn(a, b, C, os);
    CHECK(r.converged);
    CHECK(r.iterations > 8);  // the stages (one iteration each from the cost's range) count
    CHECK(rel(r.objective, ref.objective) <= 1e-6);
    CHECK((r.plan - ref.plan).cwiseAbs().maxCoeff() <= 1e-6 * ref.plan.maxCoeff());
  }
  SECTION("warm start from converged potentials stops at the first check") {
    SinkhornOptions ow = o;
    ow.init_f = ref.f;
    ow.init_g = ref.g;
    const auto r = losskit::sinkhorn(a, b, C, ow);
    CHECK(r.converged);
    CHECK(r.iterations == 1);
    CHECK(rel(r.objective, ref.objective) <= 1e-9);
  }
  SECTION("the kernel cache gives the log-domain iterates") {
    SinkhornOptions on = o, off = o;
    off.kernel_cache = false;
    on.check_every = off.check_every = 1;
    const auto r1 = losskit::sinkhorn(a, b, C, on), r2 = losskit::sinkhorn(a, b, C, off);
    CHECK(r1.iterations == r2.iterations);
    CHECK(rel(r1.objective, r2.objective) <= 1e-12);
    CHECK((r1.f - r2.f).cwiseAbs().maxCoeff() <= 1e-12);
  }
  SECTION("check_every = 1 stops at the first iteration below tol") {
    SinkhornOptions o1 = o;
    o1.check_every = 1;
    const auto r = losskit::sinkhorn(a, b, C, o1);
    CHECK(r.converged);
    CHECK(r.iterations <= ref.iterations);
    CHECK(r.iterations > ref.iterations - 10);
  }
}

TEMPLATE_TEST_CASE("sinkhorn: same bits with 1 and 2 threads; batch = one call per problem", "[sinkhorn][threads]",
                   float, double) {
  using T = TestType;
  const int n = 300, m = 280;
  const RowMatrix<T> C = random_matrix(n, m, 81).cast<T>();
  const Eigen::Matrix<T, -1, 1> a = make_weights(82, n, false).cast<T>(), b = make_weights(83, m, false).cast<T>();
  SinkhornOptions o;
  o.epsilon = 0.05;
  o.tol = std::is_same_v<T, float> ? 1e-6 : 1e-9;
  o.threads = 1;
  RowMatrix<T> g1(n, m), g2(n, m);
  const auto r1 = losskit::sinkhorn(a, b, C, g1, o);
  o.threads = 2;
  const auto r2 = losskit::sinkhorn(a, b, C, g2, o);
  CHECK(r1.objective == r2.objective);
  CHECK(r1.f == r2.f);
  CHECK(g1 == g2);

  // Batch of 3 small problems, as a [3 * n, m] matrix and as a rank-3 tensor.
  const int B = 3, bn = 7, bm = 9;
  RowMatrix<T> Cb = random_matrix(B * bn, bm, 84).cast<T>();
  RowMatrix<T> A(B, bn), Bw(B, bm);
  for (int k = 0; k < B; ++k) {
    A.row(k) = make_weights(85 + std::uint64_t(k), bn, false).cast<T>().transpose();
    Bw.row(k) = make_weights(95 + std::uint64_t(k), bm, false).cast<T>().transpose();
  }
  SinkhornOptions ob;
  ob.epsilon = 0.1;
  ob.threads = 2;
  RowMatrix<T> Gb(B * bn, bm);
  const auto rb = losskit::sinkhorn_batch(A, Bw, Cb, Gb, ob);
  Eigen::TensorMap<Eigen::Tensor<const T, 3, Eigen::RowMajor>> Ct(Cb.data(), B, bn, bm);
  const auto rt = losskit::sinkhorn_batch(A, Bw, Ct, ob);
  REQUIRE(rb.size() == 3);
  for (int k = 0; k < B; ++k) {
    const RowMatrix<T> Ck = Cb.middleRows(k * bn, bn);
    RowMatrix<T> Gk(bn, bm);
    const Eigen::Matrix<T, -1, 1> ak = A.row(k).transpose(), bk = Bw.row(k).transpose();
    const auto r = losskit::sinkhorn(ak, bk, Ck, Gk, ob);
    CHECK(r.objective == rb[std::size_t(k)].objective);
    CHECK(r.objective == rt[std::size_t(k)].objective);
    CHECK(r.iterations == rb[std::size_t(k)].iterations);
    CHECK(Gk == RowMatrix<T>(Gb.middleRows(k * bn, bn)));
  }
}

TEST_CASE("sinkhorn: bad input throws std::invalid_argument and writes nothing", "[sinkhorn][errors]") {
  const int n = 4, m = 3;
  const RowMatrixXd C = random_matrix(n, m, 91);
  const VectorXd a = VectorXd::Constant(n, 0.25), b = VectorXd::Constant(m, 1.0 / 3);
  RowMatrixXd G = RowMatrixXd::Constant(n, m, 7.0);
  const RowMatrixXd G0 = G;
  auto err = [&](const VectorXd& aa, const VectorXd& bb, const RowMatrixXd& CC, SinkhornOptions o) {
    return lktest::invalid_argument_of([&] { losskit::sinkhorn(aa, bb, CC, G, o); });
  };
  auto has = [](const std::string& s, const char* part) { return s.find(part) != std::string::npos; };
  SinkhornOptions o;
  VectorXd bad = a;
  bad[1] = -0.1;
  CHECK(has(err(bad, b, C, o), "losskit::sinkhorn: 'a' must be finite and >= 0, got -0.1"));
  bad[1] = std::nan("");
  CHECK(has(err(bad, b, C, o), "'a' must be finite"));
  VectorXd badb = b;
  badb[2] = kInf;
  CHECK(has(err(a, badb, C, o), "'b' must be finite"));
  CHECK(has(err(a * 2.0, b, C, o), "same total mass"));
  CHECK(has(err(VectorXd::Zero(n), b, C, o), "total mass 0"));
  CHECK(has(err(VectorXd::Constant(n + 1, 0.2), b, C, o), "'a' has 5 entries, expected 4"));
  CHECK(has(err(a, VectorXd::Constant(2, 0.5), C, o), "'b' has 2 entries, expected 3"));
  RowMatrixXd Cnan = C;
  Cnan(1, 2) = std::nan("");
  CHECK(has(err(a, b, Cnan, o), "'C' must be finite"));
  for (double e : {0.0, -1.0, kInf}) {
    SinkhornOptions oe;
    oe.epsilon = e;
    CHECK(has(err(a, b, C, oe), "'epsilon' must be positive"));
  }
  SinkhornOptions ob;
  ob.check_every = 0;
  CHECK(has(err(a, b, C, ob), "check_every"));
  ob = {};
  ob.reg_m_a = 0;
  CHECK(has(err(a, b, C, ob), "reg_m_a"));
  ob = {};
  ob.init_f = VectorXd::Zero(2);
  CHECK(has(err(a, b, C, ob), "init_f"));
  ob = {};
  ob.epsilon_scaling = true;
  ob.scaling = 1.0;
  CHECK(has(err(a, b, C, ob), "scaling"));
  RowMatrixXd Gbad(n, m + 1);
  CHECK(has(lktest::invalid_argument_of([&] { losskit::sinkhorn(a, b, C, Gbad, o); }), "'grad_C' has shape 4x4"));
  CHECK(G == G0);
  // Unbalanced mode accepts unequal totals.
  SinkhornOptions ou;
  ou.reg_m_a = ou.reg_m_b = 1.0;
  CHECK(std::isfinite(losskit::sinkhorn(VectorXd(a * 2.0), b, C, ou).objective));
  // Points and unrolled.
  const RowMatrixXd x = random_matrix(n, 2, 92), y3 = random_matrix(m, 3, 93);
  CHECK(has(lktest::invalid_argument_of([&] { losskit::sinkhorn_points(a, x, b, y3); }), "'y' has 3 dimensions, expected 2"));
  losskit::UnrolledSinkhornOptions uo;
  uo.epsilon = 0;
  CHECK(has(lktest::invalid_argument_of([&] { losskit::sinkhorn_unrolled(a, b, C, uo); }), "losskit::sinkhorn_unrolled: 'epsilon'"));
}
