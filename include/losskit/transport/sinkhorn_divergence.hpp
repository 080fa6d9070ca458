#pragma once
// Debiased Sinkhorn divergence (Feydy et al. 2019; GeomLoss SamplesLoss("sinkhorn", debias=True);
// POT ot.bregman.empirical_sinkhorn_divergence), balanced:
//   S_eps(a, b) = OT_eps(a, b) - (OT_eps(a, a) + OT_eps(b, b)) / 2  >= 0,   S_eps(a, a) = 0
//   OT_eps(a, b) = min_{P 1 = a, P^T 1 = b} <P, C> + eps KL(P | a b^T)
// (always the KL regularizer: with it OT_eps is the dual value <a, f~> + <b, g~> of GeomLoss,
// f~ = f - eps log a, and the debiased quantity is a positive definite divergence; options
// .regularizer is ignored). Each of the three problems is solved by losskit::sinkhorn with the
// given options (tolerance, cap, epsilon scaling, threads); identical inputs give the same three
// computations, so exactly 0.
// Gradients (envelope theorem on each problem, as GeomLoss's final extrapolation step):
//   d S / d a = dOT(a,b)/da - (dOT(a,a)/da_1 + dOT(a,a)/da_2) / 2      centred (the simplex)
//             = f~_ab - f~_aa + const (GeomLoss's formula for the symmetric a-a problem)
//   d S / d x_i = sum_j P^ab_ij d1c(x_i, y_j) - (sum_j P^aa_ij d1c(x_i, x_j) + sum_j P^aa_ji d2c(x_j, x_i)) / 2
//   d S / d C_ab = P^ab, d S / d C_aa = -P^aa / 2, d S / d C_bb = -P^bb / 2
// The debiasing problems (symmetric cost, same marginal twice) use GeomLoss's averaged update
// f <- (f + T(f)) / 2 (the alternating iteration oscillates on them and can take 100x longer);
// cost matrices that are not exactly symmetric fall back to the alternating iteration. When a = b
// and C_ab is symmetric (identical inputs), OT(a, b) is solved the same way, so S = 0 exactly.
// Errors as for sinkhorn (std::invalid_argument); unbalanced options are rejected (the
// unbalanced debiased divergence needs extra mass terms that are not implemented).

#include "losskit/core/config.hpp"

#include <cmath>
#include <type_traits>

#include "losskit/transport/sinkhorn.hpp"

namespace losskit {

struct SinkhornDivergenceResult {
  double value = 0.0;                    // S_eps
  double ot_ab = 0.0, ot_aa = 0.0, ot_bb = 0.0;  // the three KL-regularised objectives
  Eigen::VectorXd grad_a, grad_b;        // d S / d a, d S / d b (centred)
  int iterations = 0;                    // summed over the three problems
  bool converged = false;                // all three converged
};

namespace detail {

inline void check_divergence_options(const char* fn, const SinkhornOptions& o) {
  if (!std::isinf(o.reg_m_a) || !std::isinf(o.reg_m_b))
    fail(fn, "the debiased divergence is balanced only: reg_m_a and reg_m_b must be inf, got ", o.reg_m_a, " and ",
         o.reg_m_b);
}

template <class T>
inline bool is_symmetric(const RowsView<const T>& c) {
  for (std::ptrdiff_t i = 0; i < c.rows; ++i)
    for (std::ptrdiff_t j = 0; j < i; ++j)
      if (c.row(i)[j] != c.row(j)[i]) return false;
  return true;
}

// The three problems on the given cost views; plans kept when `plans`.
template <class T>
struct DivergenceParts {
  SinkhornResult<T> ab, aa, bb;
};

// Each problem's marginal gradients are already centred over the positive masses (balanced
// sinkhorn), so their combination is too.
template <class T>
inline SinkhornDivergenceResult combine(const DivergenceParts<T>& p) {
  SinkhornDivergenceResult r;
  r.ot_ab = p.ab.objective;
  r.ot_aa = p.aa.objective;
  r.ot_bb = p.bb.objective;
  r.value = r.ot_ab - 0.5 * (r.ot_aa + r.ot_bb);
  r.grad_a = p.ab.grad_a - 0.5 * (p.aa.grad_a + p.aa.grad_b);
  r.grad_b = p.ab.grad_b - 0.5 * (p.bb.grad_a + p.bb.grad_b);
  r.iterations = p.ab.iterations + p.aa.iterations + p.bb.iterations;
  r.converged = p.ab.converged && p.aa.converged && p.bb.converged;
  return r;
}

inline SinkhornOptions divergence_options(const SinkhornOptions& o, bool plans) {
  SinkhornOptions oo = o;
  oo.regularizer = EntropicRegularizer::kl;
  oo.return_plan = plans;
  oo.init_f = Eigen::VectorXd();
  oo.init_g = Eigen::VectorXd();
  return oo;
}

template <class A, class X, class B, class Y, class GX, class GY>
inline SinkhornDivergenceResult divergence_points_impl(const A& a, const X& x, const B& b, const Y& y, GX* gx, GY* gy,
                                                       const SinkhornOptions& o) {
  using T = scalar_of_t<X>;
  const char* fn = "sinkhorn_divergence";
  check_divergence_options(fn, o);
  const auto in = read_point_inputs(fn, a, x, b, y, gx, gy, o);
  const RowsView<const T>& xv = in.x;
  const RowsView<const T>& yv = in.y;
  const Marginal& ma = in.a;
  const Marginal& mb = in.b;
  const RowsView<T>& gxv = in.gx;
  const RowsView<T>& gyv = in.gy;
  const bool grads = gxv.data || gyv.data;
  const SinkhornOptions oo = divergence_options(o, grads);
  const RowMatrix<T> Cab = pairwise_cost_impl<T>(xv, yv, o.ground_cost);
  const RowMatrix<T> Caa = pairwise_cost_impl<T>(xv, xv, o.ground_cost);
  const RowMatrix<T> Cbb = pairwise_cost_impl<T>(yv, yv, o.ground_cost);
  DivergenceParts<T> p;
  // Identical inputs: the a-b problem is the a-a problem, solved the same way (S = 0 exactly).
  const bool same = ma.w == mb.w && xv.rows == yv.rows && is_symmetric(rows_view(Cab));
  p.ab = solve_one<T>(rows_view(Cab), ma, mb, oo, RowsView<T>{}, resolve_threads(o.threads, xv.rows), same);
  p.aa = solve_one<T>(rows_view(Caa), ma, ma, oo, RowsView<T>{}, resolve_threads(o.threads, xv.rows), true);
  p.bb = solve_one<T>(rows_view(Cbb), mb, mb, oo, RowsView<T>{}, resolve_threads(o.threads, yv.rows), true);
  SinkhornDivergenceResult r = combine(p);
  if (grads) {
    const std::ptrdiff_t d = xv.cols;
    RowMatrix<T> gx_ab(xv.rows, d), gy_ab(yv.rows, d), g1(xv.rows, d), g2(xv.rows, d), h1(yv.rows, d), h2(yv.rows, d);
    point_gradients<T>(xv, yv, p.ab.plan.template cast<double>(), o.ground_cost, 1.0, mutable_rows_view(gx_ab),
                       mutable_rows_view(gy_ab));
    point_gradients<T>(xv, xv, p.aa.plan.template cast<double>(), o.ground_cost, 1.0, mutable_rows_view(g1),
                       mutable_rows_view(g2));
    point_gradients<T>(yv, yv, p.bb.plan.template cast<double>(), o.ground_cost, 1.0, mutable_rows_view(h1),
                       mutable_rows_view(h2));
    if (gxv.data)
      for (std::ptrdiff_t i = 0; i < xv.rows; ++i)
        for (std::ptrdiff_t k = 0; k < d; ++k)
          gxv.row(i)[k] = T(double(gx_ab(i, k)) - 0.5 * (double(g1(i, k)) + double(g2(i, k))));
    if (gyv.data)
      for (std::ptrdiff_t j = 0; j < yv.rows; ++j)
        for (std::ptrdiff_t k = 0; k < d; ++k)
          gyv.row(j)[k] = T(double(gy_ab(j, k)) - 0.5 * (double(h1(j, k)) + double(h2(j, k))));
  }
  return r;
}

template <class A, class B, class C1, class C2, class C3, class G1, class G2, class G3>
inline SinkhornDivergenceResult divergence_costs_impl(const A& a, const B& b, const C1& cab, const C2& caa,
                                                      const C3& cbb, G1* g_ab, G2* g_aa, G3* g_bb,
                                                      const SinkhornOptions& o) {
  using T = scalar_of_t<C1>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "losskit: scalar type must be float or double");
  static_assert(std::is_same_v<T, scalar_of_t<C2>> && std::is_same_v<T, scalar_of_t<C3>>,
                "losskit: the three cost matrices must have the same scalar type");
  const char* fn = "sinkhorn_divergence_costs";
  const auto Cab = cost_view(fn, "C_ab", cab);
  const std::ptrdiff_t n = Cab.rows, m = Cab.cols;
  const auto Caa = cost_view(fn, "C_aa", caa, n, n);
  const auto Cbb = cost_view(fn, "C_bb", cbb, m, m);
  check_finite_cost(fn, "C_ab", Cab);
  check_finite_cost(fn, "C_aa", Caa);
  check_finite_cost(fn, "C_bb", Cbb);
  const Marginal ma = read_marginal(fn, "a", a, n, "one per row of C_ab");
  const Marginal mb = read_marginal(fn, "b", b, m, "one per column of C_ab");
  check_sinkhorn_options(fn, o, n, m);
  check_divergence_options(fn, o);
  check_balance(fn, ma, mb, o);
  const RowsView<T> gab = checked_grad_view<T>(fn, g_ab, "C_ab", Cab, "grad_C_ab");
  const RowsView<T> gaa = checked_grad_view<T>(fn, g_aa, "C_aa", Caa, "grad_C_aa");
  const RowsView<T> gbb = checked_grad_view<T>(fn, g_bb, "C_bb", Cbb, "grad_C_bb");
  const SinkhornOptions oo = divergence_options(o, false);
  DivergenceParts<T> p;
  const bool same = ma.w == mb.w && n == m && is_symmetric(Cab);
  p.ab = solve_one<T>(Cab, ma, mb, oo, gab, resolve_threads(o.threads, n), same);
  p.aa = solve_one<T>(Caa, ma, ma, oo, gaa, resolve_threads(o.threads, n), is_symmetric(Caa));
  p.bb = solve_one<T>(Cbb, mb, mb, oo, gbb, resolve_threads(o.threads, m), is_symmetric(Cbb));
  auto halve = [](const RowsView<T>& g) {
    for (std::ptrdiff_t i = 0; g.data && i < g.rows; ++i)
      for (std::ptrdiff_t j = 0; j < g.cols; ++j) g.row(i)[j] *= T(-0.5);
  };
  halve(gaa);
  halve(gbb);
  return combine(p);
}

}  // namespace detail

// Between weighted point clouds (a on x [n, d], b on y [m, d]) with the ground cost
// options.ground_cost; grad_x, grad_y receive d S / d points.
template <class A, class X, class B, class Y, class GX, class GY,
          std::enable_if_t<is_rows_v<GX> && is_rows_v<GY>, int> = 0>
inline SinkhornDivergenceResult sinkhorn_divergence(const Eigen::MatrixBase<A>& a, const X& x,
                                                    const Eigen::MatrixBase<B>& b, const Y& y, GX&& grad_x,
                                                    GY&& grad_y, const SinkhornOptions& options = {}) {
  return detail::divergence_points_impl(a, x, b, y, &grad_x, &grad_y, options);
}
template <class A, class X, class B, class Y>
inline SinkhornDivergenceResult sinkhorn_divergence(const Eigen::MatrixBase<A>& a, const X& x,
                                                    const Eigen::MatrixBase<B>& b, const Y& y,
                                                    const SinkhornOptions& options = {}) {
  using M = RowMatrix<scalar_of_t<X>>;
  return detail::divergence_points_impl(a, x, b, y, static_cast<M*>(nullptr), static_cast<M*>(nullptr), options);
}

// From given cost matrices C_ab (n x m), C_aa (n x n), C_bb (m x m); the grad_* outputs receive
// d S / d C (P_ab, -P_aa / 2, -P_bb / 2).
template <class A, class B, class C1, class C2, class C3, class G1, class G2, class G3,
          std::enable_if_t<is_rows_v<G1> && is_rows_v<G2> && is_rows_v<G3>, int> = 0>
inline SinkhornDivergenceResult sinkhorn_divergence_costs(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b,
                                                          const C1& C_ab, const C2& C_aa, const C3& C_bb,
                                                          G1&& grad_C_ab, G2&& grad_C_aa, G3&& grad_C_bb,
                                                          const SinkhornOptions& options = {}) {
  return detail::divergence_costs_impl(a, b, C_ab, C_aa, C_bb, &grad_C_ab, &grad_C_aa, &grad_C_bb, options);
}
template <class A, class B, class C1, class C2, class C3>
inline SinkhornDivergenceResult sinkhorn_divergence_costs(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b,
                                                          const C1& C_ab, const C2& C_aa, const C3& C_bb,
                                                          const SinkhornOptions& options = {}) {
  using M = RowMatrix<scalar_of_t<C1>>;
  return detail::divergence_costs_impl(a, b, C_ab, C_aa, C_bb, static_cast<M*>(nullptr), static_cast<M*>(nullptr),
                                       static_cast<M*>(nullptr), options);
}

}  // namespace losskit
