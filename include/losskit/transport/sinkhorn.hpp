#pragma once
// Entropic optimal transport by Sinkhorn iterations in the log domain, with envelope-theorem
// gradients, costs built from points, a batched form, and the unrolled (plain) iteration with its
// hand-written reverse pass.
//
// Problem (balanced), histograms a (n) and b (m) with equal totals, cost C (n x m), epsilon > 0:
//   P* = argmin_{P >= 0, P 1 = a, P^T 1 = b}  <P, C> + eps R(P)
//   R(P) = sum P log P            (regularizer = entropy: POT's ot.sinkhorn / ot.solve(reg_type="entropy"))
//   R(P) = sum P log(P / (a b^T)) (regularizer = kl: ot.solve's default reg_type="KL"; GeomLoss)
// Both give the same plan in the balanced case; only the objective (and its gradient w.r.t. the
// marginals) differ. Dual potentials in POT's convention (f = reg * log_u, g = reg * log_v):
//   P_ij = exp((f_i + g_j - C_ij) / eps)
// Iteration (POT `sinkhorn_log`: g first, then f), LSE taken with the maximum subtracted:
//   g_j <- eps log b_j - eps LSE_i((f_i - C_ij) / eps)      (column LSEs, on a transposed copy of C)
//   f_i <- eps log a_i - eps LSE_j((g_j - C_ij) / eps)      (row LSEs)
// A transposed copy of C is made once per call for the column LSEs; each LSE is two vectorised
// passes over one row (maximum, then sum of exp through the core SIMD shim). threads > 1 splits
// the rows of each half-step (same bits for any thread count).
// Kernel cache (kernel_cache, on by default): once an iteration moves the potentials by less than
// eps / 2, K_ij = exp((F_i + G_j - C_ij) / eps) is stored at those potentials (F, G) with its
// transpose, and an LSE becomes log(sum_j K_ij exp((g_j - G_j) / eps)) - F_i / eps: a multiply-add
// per entry instead of an exp (4x faster at n = m = 1000). Still the log-domain iteration: the
// cache is dropped when the potentials drift by more than 30 eps (10 for float) from F, G, so the
// entries that underflowed when K was built stay below 1e-250 (1e-18) of every row sum, and a row
// whose sum is smaller than that is computed exactly. Same iterates up to rounding (tested: same
// iteration counts and POT's vectors with and without it).
// Stopping rule (POT): after iterations 1, 1 + k, 1 + 2k, ... (k = check_every, default 10) the
// marginal error ||P^T 1 - b||_2 is compared with tol (default 1e-9); max_iter (default 1000) caps
// the iterations. The check costs nothing here: the column sums of the current plan are
// b_j exp((g_j - g'_j) / eps) where g' is the next g update, which is computed anyway (and thrown
// away when the run stops, so f, g, the plan and the iteration count are POT's). A run that hits
// the cap reports converged = false with its final error.
//
// Unbalanced (reg_m_a, reg_m_b < inf; POT's reg_m, GeomLoss's reach^p), KL penalties on the marginals:
//   min <P, C> + eps KL~(P | c) + reg_m_a KL~(P 1 | a) + reg_m_b KL~(P^T 1 | b),
//   KL~(p | q) = sum p log(p / q) - p + q,  c = 1 (entropy) or a b^T (kl)
//   (for c = 1 the constant sum c = n m is dropped). With fi = reg_m / (reg_m + eps) the updates are
//   f_i <- alpha eps log a_i - fi eps LSE_j((g_j - C_ij) / eps),  alpha = fi (entropy) or 1 (kl)
//   (POT's sinkhorn_knopp_unbalanced written in the log domain). Stopping: max_j |g'_j - g_j| / eps
//   < tol (POT uses the relative change of the scalings, which is the same to first order).
//   POT's reported total_cost drops the mass terms of KL~; `objective` here keeps them (it is the
//   function the iteration minimises, so its envelope gradients are exact).
//
// Epsilon scaling: stages eps_0 = epsilon_start (default: the cost's range), eps_0 * scaling, ...
// with stage_iterations each, warm-starting the potentials, then the target epsilon until tol.
// With this plain alternating iteration it saves 0-20% of the iterations at small epsilon (the
// asymptotic rate is that of the target epsilon); the iterations of the stages are counted.
// Outputs: cost = <P, C>, objective = <P, C> + eps R(P) (+ the marginal penalties), f, g, the
// iterations run, the final marginal error, converged, and the plan on request.
// Envelope-theorem gradients of `objective` (no back-propagation through the iterations; exact at
// the fixed point, so as accurate as the convergence):
//   d/dC = P                                   (written into `grad_C`)
//   d/da = f - mean f (entropy)  or  -eps LSE_j((g_j - C_ij)/eps) - mean (kl)  [balanced: the
//          marginals live on {sum a = const}, so the gradient is centred, as POT's grad='envelope'.
//          POT returns reg * log_u for both regularizers, which is only right for entropy: for KL
//          the correct gradient is f - eps log a + const, formulas.md 3.2]. The mean runs over the
//          entries with positive mass; a zero mass has gradient -inf with the entropy regularizer.
//          Check it along directions that keep sum a (e.g. e_i - e_k).
//   d/da = reg_m_a (1 - r_i / a_i) [+ eps (sum b - r_i / a_i) for kl]   (reg_m_a < inf, r = P 1)
//   d/da = f (entropy) or f - eps log a + eps (sum b - 1) (kl), not centred, when a is a hard
//          constraint but b is penalised (semi-relaxed: sum a is then free). Same for b.
// Costs from points x (n x d), y (m x d): sqeuclidean ||x - y||^2 (POT ot.dist's default; GeomLoss
// p = 2 uses half of it), euclidean ||x - y||, l1 sum |x - y|:
//   d/dx_i = sum_j P_ij grad_x c(x_i, y_j); subgradient 0 where ||x - y|| = 0 or x_k = y_k.
//
// Unrolled plain iterations (SinKD, formulas.md 3.1): K = exp(-C / eps) (each row shifted by its
// minimum, which the first row normalisation cancels exactly), then L times { rows scaled to a,
// columns scaled to b }, i.e. Sinkhorn-Knopp u_k = a / (K v_{k-1}), v_k = b / (K^T u_k), v_0 = 1,
// P_L = diag(u_L) K diag(v_L). `sinkhorn_unrolled` returns <P_L, C> and its exact gradient w.r.t. C
// (and a, b) by reverse mode through the 2L normalisations: for u = a / z, z = K v:
//   a_bar += u_bar / z,  z_bar = -u_bar u / z,  v_bar += K^T z_bar,  K_bar += z_bar v^T
// (and the same for v); C_bar = P_L + K_bar (-K / eps). No plan per step is stored: only u_k, v_k.
// The plain iteration needs exp(-(C_ij - min_j C_ij) / eps) to stay representable (no underflow of
// whole columns); use `sinkhorn` otherwise.
//
// Inputs: a, b any Eigen vectors (copied, O(n + m)); C any dense row-major matrix of float or
// double (see core/views.hpp), not copied (one transposed copy is made for the column LSEs). Sums
// and potentials are accumulated in double where it matters; the LSEs run in the scalar type of C.
// Errors (std::invalid_argument, before anything is written): shapes, a negative or non-finite
// mass, a zero total, unequal totals in the balanced mode (|sum a - sum b| > 1e-6 max(sum a,
// sum b); losskit does not renormalise), non-finite costs, epsilon <= 0, bad option values.
// Zero masses are legal: their potentials are -inf and their rows/columns of the plan are 0.
// float: the potentials are kept in the input type, so the marginal error bottoms out near 1e-6
// (relative to the masses); use tol >= 1e-6 or double.
// Batched form: sinkhorn_batch(a [batch, n], b [batch, m], C [batch, n, m]) with C either a
// row-major matrix of batch * n rows or a row-major rank-3 Eigen::Tensor; one SinkhornResult per
// problem; problems run in parallel (threads), each one on one thread (same bits as sinkhorn()).

#include "losskit/core/config.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "losskit/core/checks.hpp"
#include "losskit/core/parallel.hpp"
#include "losskit/core/simd.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"

namespace losskit {

// The regularizer of the entropic objective (and of the reference measure when unbalanced).
enum class EntropicRegularizer {
  entropy,  // sum P log P (POT ot.sinkhorn / sinkhorn2 semantics, ot.solve reg_type="entropy")
  kl        // sum P log(P / (a b^T)) (ot.solve reg_type="KL", GeomLoss, the Sinkhorn divergence)
};

// Ground cost between points (point-cloud variants).
enum class GroundCost {
  sqeuclidean,  // ||x - y||^2 (POT ot.dist default)
  euclidean,    // ||x - y||
  l1            // sum_k |x_k - y_k| (torch.cdist p=1, POT 'cityblock')
};

struct SinkhornOptions {
  double epsilon = 0.1;      // entropic regularisation (POT `reg`, GeomLoss blur^p); > 0
  int max_iter = 1000;       // iteration cap (POT numItermax); an iteration updates g then f
  double tol = 1e-9;         // stop when ||P^T 1 - b||_2 < tol (POT stopThr); >= 0
  int check_every = 10;      // check the error after iterations 1, 1 + k, ... (POT: 10). The check
                             // is free here, so 1 stops as early as possible.
  EntropicRegularizer regularizer = EntropicRegularizer::entropy;
  double reg_m_a = std::numeric_limits<double>::infinity();  // unbalanced KL penalty on P 1 (inf: balanced)
  double reg_m_b = std::numeric_limits<double>::infinity();  // on P^T 1
  // Epsilon scaling (annealing): epsilon_start, epsilon_start * scaling, ... down to epsilon, with
  // `stage_iterations` iterations per intermediate stage, then iterations at epsilon until tol.
  bool epsilon_scaling = false;
  double epsilon_start = 0.0;   // 0: max C - min C (the cost's range; GeomLoss: diameter^p)
  double scaling = 0.5;         // GeomLoss's default factor; in (0, 1)
  int stage_iterations = 1;     // per intermediate stage (GeomLoss: 1)
  // Warm start from potentials in cost units (e.g. a previous result's f and g); empty: zeros.
  // As in POT, an iteration starts with the g update, so g only matters when max_iter == 0.
  Eigen::VectorXd init_f{}, init_g{};
  // Reuse exp((f_i + g_j - C_ij) / eps) between iterations once the potentials settle (a
  // multiply-add per entry instead of an exp; the same iterates up to rounding, exact LSE as the
  // fallback). Costs two n x m matrices of memory; false: every LSE is computed from C.
  bool kernel_cache = true;
  bool return_plan = false;     // fill SinkhornResult::plan
  int threads = 1;              // 0: all hardware threads; results do not depend on it
  GroundCost ground_cost = GroundCost::sqeuclidean;  // point-cloud overloads only
};

template <class T>
struct SinkhornResult {
  double cost = 0.0;            // <P, C>
  double objective = 0.0;       // <P, C> + eps R(P) (+ marginal penalties when unbalanced)
  Eigen::VectorXd f, g;         // dual potentials: P_ij = exp((f_i + g_j - C_ij) / eps)
  Eigen::VectorXd grad_a, grad_b;  // envelope gradients of `objective` w.r.t. a and b
  int iterations = 0;           // iterations run (all stages)
  double marginal_error = 0.0;  // balanced: ||P^T 1 - b||_2; unbalanced: max |delta g| / eps
  bool converged = false;       // marginal_error < tol
  double epsilon = 0.0;         // the epsilon of the result (the target)
  RowMatrix<T> plan;            // with return_plan
};

struct UnrolledSinkhornOptions {
  double epsilon = 0.1;  // SinKD: 0.1
  int iterations = 20;   // row + column normalisations (SinKD: 20)
};

struct UnrolledSinkhornResult {
  double value = 0.0;       // <P_L, C>
  Eigen::VectorXd grad_a, grad_b;  // d value / d a, d value / d b (through the iterations)
  RowMatrixXd plan;         // P_L
};

namespace detail {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

// LSE_j((y_j - c_j) * inv_eps) over one row, maximum subtracted; -inf when every term is -inf.
template <class T>
inline double lse_row(const T* c, const T* y, std::size_t m, T inv_eps) {
  const T mx = simd::max_lanes<T>(0, m, [&](auto tag, std::size_t j) {
    using V = typename decltype(tag)::type;
    return simd::load<V>(y + j) - simd::load<V>(c + j);
  });
  if (!(mx > -std::numeric_limits<T>::infinity())) return mx == mx ? -kInf : double(mx);
  const auto s = simd::sum_lanes<T, 1>(0, m, [&](auto tag, std::size_t j) {
    using V = typename decltype(tag)::type;
    return std::array<V, 1>{simd::exp((simd::load<V>(y + j) - simd::load<V>(c + j) - V(mx)) * V(inv_eps))};
  });
  return double(mx) * double(inv_eps) + std::log(s[0]);
}

// Marginal weights prepared once: log masses, totals, checks.
struct Marginal {
  std::vector<double> w, logw;
  double total = 0.0;
  double positive_count = 0.0;
};

template <class V>
inline Marginal read_marginal(const char* fn, const char* arg, const V& v, std::ptrdiff_t expected,
                              const char* what) {
  if (std::ptrdiff_t(v.size()) != expected)
    fail(fn, "'", arg, "' has ", v.size(), " entries, expected ", expected, " (", what, ")");
  Marginal m;
  m.w.resize(std::size_t(expected));
  m.logw.resize(std::size_t(expected));
  for (std::ptrdiff_t i = 0; i < expected; ++i) {
    const double x = double(v.derived().coeff(Eigen::Index(i)));
    if (!(x >= 0.0) || !std::isfinite(x)) fail(fn, "'", arg, "' must be finite and >= 0, got ", x, " at ", i);
    m.w[std::size_t(i)] = x;
    m.logw[std::size_t(i)] = std::log(x);
    m.total += x;
    m.positive_count += x > 0.0;
  }
  if (!(m.total > 0.0)) fail(fn, "'", arg, "' has total mass 0");
  return m;
}

inline void check_sinkhorn_options(const char* fn, const SinkhornOptions& o, std::ptrdiff_t n, std::ptrdiff_t m) {
  check_positive(fn, "epsilon", o.epsilon);
  if (o.max_iter < 0) fail(fn, "'max_iter' must be >= 0, got ", o.max_iter);
  if (!(o.tol >= 0.0)) fail(fn, "'tol' must be >= 0, got ", o.tol);
  if (o.check_every < 1) fail(fn, "'check_every' must be >= 1, got ", o.check_every);
  if (!(o.reg_m_a > 0.0)) fail(fn, "'reg_m_a' must be > 0 (inf: balanced), got ", o.reg_m_a);
  if (!(o.reg_m_b > 0.0)) fail(fn, "'reg_m_b' must be > 0 (inf: balanced), got ", o.reg_m_b);
  if (o.epsilon_scaling) {
    check_in(fn, "scaling", o.scaling, 0.0, 1.0, true, true);
    if (!(o.epsilon_start >= 0.0) || !std::isfinite(o.epsilon_start))
      fail(fn, "'epsilon_start' must be >= 0 and finite (0: the cost's range), got ", o.epsilon_start);
    if (o.stage_iterations < 1) fail(fn, "'stage_iterations' must be >= 1, got ", o.stage_iterations);
  }
  if (o.init_f.size() != 0 && o.init_f.size() != n)
    fail(fn, "'init_f' has ", o.init_f.size(), " entries, expected ", n, " (or none)");
  if (o.init_g.size() != 0 && o.init_g.size() != m)
    fail(fn, "'init_g' has ", o.init_g.size(), " entries, expected ", m, " (or none)");
  for (Eigen::Index i = 0; i < o.init_f.size(); ++i)
    if (std::isnan(o.init_f[i]) || o.init_f[i] == kInf) fail(fn, "'init_f' has ", o.init_f[i], " at ", i);
  for (Eigen::Index i = 0; i < o.init_g.size(); ++i)
    if (std::isnan(o.init_g[i]) || o.init_g[i] == kInf) fail(fn, "'init_g' has ", o.init_g[i], " at ", i);
  if (o.threads < 0) fail(fn, "'threads' must be >= 0 (0 means: all hardware threads), got ", o.threads);
}

inline void check_balance(const char* fn, const Marginal& a, const Marginal& b, const SinkhornOptions& o) {
  if (std::isinf(o.reg_m_a) && std::isinf(o.reg_m_b) &&
      std::fabs(a.total - b.total) > 1e-6 * std::max(a.total, b.total))
    fail(fn, "'a' and 'b' must have the same total mass in the balanced mode, got ", a.total, " and ", b.total,
         " (normalise them, or set reg_m_a / reg_m_b for unbalanced transport)");
}

template <class T>
inline void check_finite_cost(const char* fn, const char* arg, const RowsView<const T>& c) {
  for (std::ptrdiff_t i = 0; i < c.rows; ++i)
    for (std::ptrdiff_t j = 0; j < c.cols; ++j)
      if (!std::isfinite(c.row(i)[j])) fail(fn, "'", arg, "' must be finite, got ", c.row(i)[j], " at (", i, ", ", j, ")");
}

// One log-domain Sinkhorn problem. `C` is borrowed; everything else is owned.
template <class T>
class LogSinkhorn {
 public:
  LogSinkhorn(const RowsView<const T>& C, const Marginal& a, const Marginal& b, const SinkhornOptions& o, int threads)
      : C_(C), a_(a), b_(b), o_(o), n_(std::size_t(C.rows)), m_(std::size_t(C.cols)), threads_(threads) {
    Ct_.resize(C.cols, C.rows);
    for (std::ptrdiff_t i = 0; i < C.rows; ++i)
      for (std::ptrdiff_t j = 0; j < C.cols; ++j) Ct_(j, i) = C.row(i)[j];
    fi_a_ = std::isinf(o.reg_m_a) ? 1.0 : o.reg_m_a / (o.reg_m_a + o.epsilon);
    fi_b_ = std::isinf(o.reg_m_b) ? 1.0 : o.reg_m_b / (o.reg_m_b + o.epsilon);
    balanced_ = std::isinf(o.reg_m_a) && std::isinf(o.reg_m_b);
    const bool ent = o.regularizer == EntropicRegularizer::entropy;
    alpha_a_ = ent ? fi_a_ : 1.0;
    alpha_b_ = ent ? fi_b_ : 1.0;
    f_.assign(n_, T(0));
    g_.assign(m_, T(0));
    gnew_.assign(m_, T(0));
    lse_f_.assign(n_, 0.0);
    lse_g_.assign(m_, 0.0);
    lse_gnew_.assign(m_, 0.0);
    for (Eigen::Index i = 0; i < o.init_f.size(); ++i) f_[std::size_t(i)] = T(o.init_f[i]);
    for (Eigen::Index j = 0; j < o.init_g.size(); ++j) g_[std::size_t(j)] = T(o.init_g[j]);
  }

  // Runs the iterations; fills `res` except the plan-dependent quantities.
  void solve(SinkhornResult<T>& res) {
    int it = 0;
    if (o_.epsilon_scaling) {
      double e = o_.epsilon_start > 0.0 ? o_.epsilon_start : cost_range();
      for (; e > o_.epsilon && it < o_.max_iter; e *= o_.scaling) {
        set_epsilon(e);
        for (int k = 0; k < o_.stage_iterations && it < o_.max_iter; ++k, ++it) {
          g_step(gnew_.data(), lse_gnew_.data());
          std::swap(g_, gnew_);
          std::swap(lse_g_, lse_gnew_);
          f_step();
        }
      }
    }
    set_epsilon(o_.epsilon);
    bool check = o_.max_iter <= it;
    int stage_it = 0;
    double err = kInf;
    bool converged = false;
    for (;;) {
      g_step(gnew_.data(), lse_gnew_.data());
      if (check) {
        err = error();
        if (err < o_.tol) {
          converged = true;
          break;
        }
        if (it >= o_.max_iter) break;
      }
      std::swap(g_, gnew_);  // gnew_ now holds the previous g
      std::swap(lse_g_, lse_gnew_);
      const bool watch = o_.kernel_cache && !cached_;
      if (watch) f_prev_ = f_;
      f_step();
      if (watch && settled()) absorb();
      ++it;
      ++stage_it;
      check = (stage_it - 1) % o_.check_every == 0 || it >= o_.max_iter;
    }
    res.iterations = it;
    res.marginal_error = err;
    res.converged = converged;
    res.epsilon = o_.epsilon;
  }

  // The symmetric problem (b = a, C = C^T; the debiasing terms of the Sinkhorn divergence) with
  // GeomLoss's averaged update f <- (f + T(f)) / 2, T(f)_i = eps log a_i - eps LSE_j((f_j - C_ij)/eps):
  // the plain alternating iteration oscillates on it. f = g; error ||P 1 - a||_2, every iteration.
  void solve_symmetric(SinkhornResult<T>& res) {
    std::vector<T> t(n_);
    int it = 0;
    auto step = [&] {
      const auto& C = C_;
      half_step([&C](std::ptrdiff_t i) { return C.row(i); }, n_, n_, f_.data(), t.data(), lse_f_.data(), a_, 1.0, 1.0, a_);
    };
    auto average = [&] {
      for (std::size_t i = 0; i < n_; ++i) f_[i] = a_.w[i] > 0.0 ? T(0.5 * (double(f_[i]) + double(t[i]))) : t[i];
    };
    if (o_.epsilon_scaling) {
      double e = o_.epsilon_start > 0.0 ? o_.epsilon_start : cost_range();
      for (; e > o_.epsilon && it < o_.max_iter; e *= o_.scaling) {
        set_epsilon(e);
        for (int k = 0; k < o_.stage_iterations && it < o_.max_iter; ++k, ++it) {
          step();
          average();
        }
      }
    }
    set_epsilon(o_.epsilon);
    double err = kInf;
    bool converged = false;
    for (;;) {
      step();
      double acc = 0.0;
      for (std::size_t i = 0; i < n_; ++i) {
        const double r = a_.w[i] > 0.0 ? std::exp(double(f_[i]) / eps_ + lse_f_[i]) : 0.0;
        acc += (r - a_.w[i]) * (r - a_.w[i]);
      }
      err = std::sqrt(acc);
      if (err < o_.tol) {
        converged = true;
        break;
      }
      if (it >= o_.max_iter) break;
      average();
      ++it;
    }
    g_ = f_;
    lse_g_ = lse_f_;
    lse_gnew_ = lse_f_;
    res.iterations = it;
    res.marginal_error = err;
    res.converged = converged;
    res.epsilon = o_.epsilon;
  }

  // Final pass over the plan: cost, objective, potentials, marginal gradients; writes the plan
  // (P_ij) into `plan` when given (rows of length m, stride).
  void finish(SinkhornResult<T>& res, const RowsView<T>& plan) const {
    const double eps = o_.epsilon;
    const T inv_eps = T(1.0 / eps);
    std::vector<double> row_cost(n_), row_fg(n_), row_logb(n_), row_sum(n_);
    std::vector<T> logb(m_);
    for (std::size_t j = 0; j < m_; ++j) logb[j] = T(b_.logw[j]);
    const bool kl = o_.regularizer == EntropicRegularizer::kl;
    const int th = double(n_) * double(m_) < 65536.0 ? 1 : threads_;
    parallel_ranges(std::ptrdiff_t(n_), th, [&](int, std::ptrdiff_t rb, std::ptrdiff_t re) {
      for (std::ptrdiff_t i = rb; i < re; ++i) {
        const T* c = C_.row(i);
        const T* g = g_.data();
        const T* lb = logb.data();
        const T fi = f_[std::size_t(i)];
        T* out = plan.data ? plan.row(i) : nullptr;
        if (!(fi > -std::numeric_limits<T>::infinity())) {  // zero mass: an empty row
          if (out) std::fill(out, out + m_, T(0));
          continue;
        }
        const auto s = simd::sum_lanes<T, 4>(0, m_, [&](auto tag, std::size_t j) {
          using V = typename decltype(tag)::type;
          const V gj = simd::load<V>(g + j), cj = simd::load<V>(c + j);
          const V p = simd::exp((V(fi) + gj - cj) * V(inv_eps));
          if (out) simd::store(out + j, p);
          const auto pos = p > V(T(0));
          return std::array<V, 4>{p * cj, simd::where(pos, p * (V(fi) + gj)),
                                  kl ? simd::where(pos, p * simd::load<V>(lb + j)) : V(T(0)), p};
        });
        row_cost[std::size_t(i)] = s[0];
        row_fg[std::size_t(i)] = s[1];
        row_logb[std::size_t(i)] = s[2];
        row_sum[std::size_t(i)] = s[3];
      }
    });
    double cost = 0.0, fg = 0.0, slogb = 0.0, mass = 0.0, slog_a = 0.0, pen_a = 0.0, pen_b = 0.0;
    for (std::size_t i = 0; i < n_; ++i) {
      cost += row_cost[i];
      fg += row_fg[i];
      slogb += row_logb[i];
      mass += row_sum[i];
      if (row_sum[i] > 0.0) slog_a += row_sum[i] * a_.logw[i];
    }
    const double entropy = (fg - cost) / eps;  // sum P log P
    // Column sums of the final plan from the last column LSEs (computed with the final f).
    std::vector<double> col(m_);
    for (std::size_t j = 0; j < m_; ++j) col[j] = std::exp(double(g_[j]) / eps + lse_gnew_[j]);
    double obj = cost + eps * (kl ? entropy - slog_a - slogb : entropy);
    if (!balanced_) {
      obj -= eps * mass;
      if (kl) obj += eps * a_.total * b_.total;
      if (!std::isinf(o_.reg_m_a)) {
        for (std::size_t i = 0; i < n_; ++i) pen_a += kl_term(row_sum[i], a_.w[i], a_.logw[i]);
        obj += o_.reg_m_a * pen_a;
      }
      if (!std::isinf(o_.reg_m_b)) {
        for (std::size_t j = 0; j < m_; ++j) pen_b += kl_term(col[j], b_.w[j], b_.logw[j]);
        obj += o_.reg_m_b * pen_b;
      }
    }
    res.cost = cost;
    res.objective = obj;
    res.f.resize(Eigen::Index(n_));
    res.g.resize(Eigen::Index(m_));
    for (std::size_t i = 0; i < n_; ++i) res.f[Eigen::Index(i)] = double(f_[i]);
    for (std::size_t j = 0; j < m_; ++j) res.g[Eigen::Index(j)] = double(g_[j]);
    marginal_gradient(res.grad_a, res.f, lse_f_, a_, b_, o_.reg_m_a, fi_a_, alpha_a_, nullptr);
    marginal_gradient(res.grad_b, res.g, lse_g_, b_, a_, o_.reg_m_b, fi_b_, alpha_b_, &lse_gnew_);
  }

 private:
  double cost_range() const {
    double cmin = kInf, cmax = -kInf;
    for (std::size_t i = 0; i < n_; ++i)
      for (std::size_t j = 0; j < m_; ++j) {
        cmin = std::min(cmin, double(C_.row(std::ptrdiff_t(i))[j]));
        cmax = std::max(cmax, double(C_.row(std::ptrdiff_t(i))[j]));
      }
    return cmax - cmin;
  }

  static double kl_term(double r, double w, double logw) {
    return (r > 0.0 ? r * (std::log(r) - logw) : 0.0) - r + w;
  }

  // Envelope gradient of the objective w.r.t. one marginal. x: that side's potentials; lse: the
  // LSEs that produced them; `lse_now`: the LSEs of the current plan's sums when they differ from
  // `lse` (the b side: g was produced before the last f update).
  void marginal_gradient(Eigen::VectorXd& grad, const Eigen::VectorXd& x, const std::vector<double>& lse,
                         const Marginal& w, const Marginal& other, double reg_m, double fi, double alpha,
                         const std::vector<double>* lse_now) const {
    const double eps = o_.epsilon;
    const bool kl = o_.regularizer == EntropicRegularizer::kl;
    const auto k = Eigen::Index(w.w.size());
    grad.resize(k);
    if (std::isinf(reg_m)) {
      // Hard constraint: the Lagrange multiplier. Balanced: defined up to a constant (centred over
      // the positive masses). Semi-relaxed (the other side penalised): exact, f for entropy and
      // f - eps log a + eps (sum b - 1) for kl.
      const bool both = balanced_;
      double mean = 0.0;
      for (Eigen::Index i = 0; i < k; ++i) {
        grad[i] = kl ? -eps * lse[std::size_t(i)] + (both ? 0.0 : eps * (other.total - 1.0)) : x[i];
        if (w.w[std::size_t(i)] > 0.0) mean += grad[i];
      }
      if (both) grad.array() -= mean / w.positive_count;
      return;
    }
    for (Eigen::Index i = 0; i < k; ++i) {
      const std::size_t s = std::size_t(i);
      // log(r_i / w_i) = x_i/eps + lse_now_i - log w_i, with x_i/eps - log w_i = (alpha-1) log w_i - fi lse_i.
      const double base = (alpha == 1.0 ? 0.0 : (alpha - 1.0) * w.logw[s]) - fi * lse[s];
      const double ratio = std::exp(base + (lse_now ? (*lse_now)[s] : lse[s]));
      grad[i] = reg_m * (1.0 - ratio) + (kl ? eps * (other.total - ratio) : 0.0);
    }
  }

  void set_epsilon(double e) {
    eps_ = e;
    inv_eps_ = T(1.0 / e);
    cached_ = false;
  }

  // ---- the kernel cache --------------------------------------------------------------------
  // K_ij = exp((F_i + G_j - C_ij) / eps) at absorbed potentials F, G (and its transpose), so that
  //   LSE_j((g_j - C_ij) / eps) = log(sum_j K_ij exp((g_j - G_j) / eps)) - F_i / eps
  // costs a multiply-add per entry instead of an exp. Entries that underflowed when K was built
  // stay negligible while |g - G| <= tau eps (a row sum below `floor` falls back to the exact LSE),
  // so the iterates are the log-domain ones up to rounding. Absorbed when an iteration moves the
  // potentials by less than eps / 2 (they settle), dropped when they drift by more than tau eps.
  static constexpr double tau = std::is_same_v<T, float> ? 10.0 : 30.0;
  static constexpr double floor_sum = std::is_same_v<T, float> ? 1e-18 : 1e-250;

  bool settled() const {
    double d = 0.0;
    for (std::size_t i = 0; i < n_; ++i)
      if (a_.w[i] > 0.0) d = std::max(d, std::fabs(double(f_[i]) - double(f_prev_[i])));
    for (std::size_t j = 0; j < m_; ++j)
      if (b_.w[j] > 0.0) d = std::max(d, std::fabs(double(g_[j]) - double(gnew_[j])));
    return d < 0.5 * eps_;
  }

  void absorb() {
    F_ = f_;
    G_ = g_;
    Kr_.resize(std::ptrdiff_t(n_), std::ptrdiff_t(m_));
    Kc_.resize(std::ptrdiff_t(m_), std::ptrdiff_t(n_));
    auto fill = [&](RowMatrix<T>& K, auto&& row, const std::vector<T>& X, const std::vector<T>& Y, std::size_t count,
                    std::size_t len) {
      const T inv = inv_eps_;
      const T* y = Y.data();
      const int th = double(count) * double(len) < 65536.0 ? 1 : threads_;
      parallel_ranges(std::ptrdiff_t(count), th, [&](int, std::ptrdiff_t b, std::ptrdiff_t e) {
        for (std::ptrdiff_t i = b; i < e; ++i) {
          const T* c = row(i);
          T* k = K.row(i).data();
          const T x = X[std::size_t(i)];
          simd::for_lanes<T>(0, len, [&](auto tag, std::size_t j) {
            using V = typename decltype(tag)::type;
            simd::store(k + j, simd::exp((V(x) + simd::load<V>(y + j) - simd::load<V>(c + j)) * V(inv)));
          });
        }
      });
    };
    const auto& C = C_;
    const auto& Ct = Ct_;
    fill(Kr_, [&C](std::ptrdiff_t i) { return C.row(i); }, F_, G_, n_, m_);
    fill(Kc_, [&Ct](std::ptrdiff_t j) { return Ct.row(j).data(); }, G_, F_, m_, n_);
    cached_ = true;
  }

  // Balanced: ||P^T 1 - b||_2 with P^T 1 = exp(g / eps + lse'); unbalanced: max |g' - g| / eps.
  double error() const {
    double acc = 0.0;
    for (std::size_t j = 0; j < m_; ++j) {
      if (balanced_) {
        const double c = std::exp(double(g_[j]) / eps_ + lse_gnew_[j]);
        const double d = (b_.w[j] > 0.0 || c > 0.0) ? c - b_.w[j] : 0.0;
        acc += d * d;
      } else if (b_.w[j] > 0.0) {
        acc = std::max(acc, std::fabs(double(gnew_[j]) - double(g_[j])) / eps_);
      }
    }
    return balanced_ ? std::sqrt(acc) : acc;
  }

  // x_i <- alpha eps log w_i - fi eps LSE_k((y_k - rows_ik) / eps) for every row of `rows`. With
  // a cache (K: this side's kernel rows, X: this side's absorbed potentials, Y: the other side's),
  // the LSE comes from K unless the other side drifted by more than tau eps (then the cache is
  // dropped) or a row's sum is below floor_sum (that row is done exactly).
  template <class Rows>
  void half_step(const Rows& row, std::size_t count, std::size_t len, const T* y, T* x, double* lse,
                 const Marginal& w, double fi, double alpha, const Marginal& wy, const RowMatrix<T>* K = nullptr,
                 const std::vector<T>* X = nullptr, const std::vector<T>* Y = nullptr) {
    const T inv = inv_eps_;
    const double eps = eps_;
    if (K) {
      scal_.resize(len);
      double drift = 0.0;
      for (std::size_t k = 0; k < len; ++k) {
        if (!(wy.w[k] > 0.0)) {
          scal_[k] = T(0);
          continue;
        }
        const double d = (double(y[k]) - double((*Y)[k])) / eps;
        drift = std::max(drift, std::fabs(d));
        scal_[k] = T(std::exp(d));
      }
      if (!(drift <= tau)) {
        cached_ = false;
        K = nullptr;
      }
    }
    const T* sc = scal_.data();
    // Threads pay off on exp-bound steps; a cached step is a cheap matrix-vector product.
    const int th = double(count) * double(len) < (K ? 4194304.0 : 65536.0) ? 1 : threads_;
    parallel_ranges(std::ptrdiff_t(count), th, [&](int, std::ptrdiff_t b, std::ptrdiff_t e) {
      for (std::ptrdiff_t i = b; i < e; ++i) {
        const std::size_t s = std::size_t(i);
        double l;
        double sum = 0.0;
        if (K && w.w[s] > 0.0) {
          const T* k = K->row(i).data();
          sum = simd::sum_lanes<T, 1>(0, len, [&](auto tag, std::size_t j) {
            using V = typename decltype(tag)::type;
            return std::array<V, 1>{simd::load<V>(k + j) * simd::load<V>(sc + j)};
          })[0];
        }
        if (sum >= floor_sum && sum < kInf)
          l = std::log(sum) - double((*X)[s]) / eps;
        else
          l = lse_row<T>(row(i), y, len, inv);
        lse[s] = l;
        x[s] = w.w[s] > 0.0 ? T(alpha * eps * w.logw[s] - fi * eps * l) : -std::numeric_limits<T>::infinity();
      }
    });
  }

  void g_step(T* gout, double* lse) {
    const auto& Ct = Ct_;
    half_step([&Ct](std::ptrdiff_t j) { return Ct.row(j).data(); }, m_, n_, f_.data(), gout, lse, b_, fi_b_, alpha_b_,
              a_, cached_ ? &Kc_ : nullptr, &G_, &F_);
  }
  void f_step() {
    const auto& C = C_;
    half_step([&C](std::ptrdiff_t i) { return C.row(i); }, n_, m_, g_.data(), f_.data(), lse_f_.data(), a_, fi_a_,
              alpha_a_, b_, cached_ ? &Kr_ : nullptr, &F_, &G_);
  }

  RowsView<const T> C_;
  RowMatrix<T> Ct_;
  const Marginal& a_;
  const Marginal& b_;
  const SinkhornOptions& o_;
  std::size_t n_, m_;
  int threads_;
  double fi_a_ = 1.0, fi_b_ = 1.0, alpha_a_ = 1.0, alpha_b_ = 1.0;
  bool balanced_ = true;
  double eps_ = 1.0;
  T inv_eps_ = T(1);
  std::vector<T> f_, g_, gnew_;
  std::vector<double> lse_f_, lse_g_, lse_gnew_;
  // kernel cache
  bool cached_ = false;
  RowMatrix<T> Kr_, Kc_;
  std::vector<T> F_, G_, f_prev_, scal_;
};

// symmetric: b is a and C is symmetric (see LogSinkhorn::solve_symmetric).
template <class T>
inline SinkhornResult<T> solve_one(const RowsView<const T>& C, const Marginal& a, const Marginal& b,
                                   const SinkhornOptions& o, const RowsView<T>& grad, int threads,
                                   bool symmetric = false) {
  SinkhornResult<T> res;
  LogSinkhorn<T> solver(C, a, b, o, threads);
  if (symmetric)
    solver.solve_symmetric(res);
  else
    solver.solve(res);
  RowsView<T> plan = grad;
  if (o.return_plan) {
    res.plan.resize(C.rows, C.cols);
    plan = mutable_rows_view(res.plan);
  }
  solver.finish(res, plan);
  if (o.return_plan && grad.data)
    for (std::ptrdiff_t i = 0; i < C.rows; ++i) std::copy(plan.row(i), plan.row(i) + C.cols, grad.row(i));
  return res;
}

// A cost matrix argument's shape and layout: rows x cols when given (`what` explains the expected
// shape), at least one entry, contiguous rows. Its values are checked (check_finite_cost) after
// every argument's shape.
template <class CM>
inline RowsView<const scalar_of_t<CM>> cost_view(const char* fn, const char* arg, const CM& cost,
                                                 std::ptrdiff_t rows = -1, std::ptrdiff_t cols = -1,
                                                 const char* what = nullptr) {
  const auto C = rows_view(cost);
  if (rows >= 0 && (C.rows != rows || C.cols != cols))
    fail(fn, "'", arg, "' has shape ", C.rows, "x", C.cols, ", expected ", rows, "x", cols, what ? " (" : "",
         what ? what : "", what ? ")" : "");
  if (C.rows <= 0 || C.cols <= 0) fail(fn, "'", arg, "' has shape ", C.rows, "x", C.cols, ": it needs at least one entry");
  if (!has_unit_inner_stride(cost)) fail(fn, "'", arg, "' must have contiguous rows (inner stride 1)");
  return C;
}

// The arguments every cost-matrix entry point checks first: C (contiguous rows, finite), a, b.
template <class T>
struct CostInputs {
  RowsView<const T> C;
  Marginal a, b;
};

template <class A, class B, class CM>
inline CostInputs<scalar_of_t<CM>> read_cost_inputs(const char* fn, const A& a, const B& b, const CM& cost) {
  using T = scalar_of_t<CM>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "losskit: scalar type must be float or double");
  CostInputs<T> in;
  in.C = cost_view(fn, "C", cost);
  check_finite_cost(fn, "C", in.C);
  in.a = read_marginal(fn, "a", a, in.C.rows, "one per row of C");
  in.b = read_marginal(fn, "b", b, in.C.cols, "one per column of C");
  return in;
}

template <class A, class B, class CM, class G>
inline SinkhornResult<scalar_of_t<CM>> sinkhorn_impl(const A& a, const B& b, const CM& cost, G* grad,
                                                     const SinkhornOptions& o) {
  using T = scalar_of_t<CM>;
  const char* fn = "sinkhorn";
  const auto in = read_cost_inputs(fn, a, b, cost);
  check_sinkhorn_options(fn, o, in.C.rows, in.C.cols);
  check_balance(fn, in.a, in.b, o);
  const RowsView<T> gv = checked_grad_view<T>(fn, grad, "C", in.C, "grad_C");
  return solve_one<T>(in.C, in.a, in.b, o, gv, resolve_threads(o.threads, in.C.rows));
}

// ---- costs from points -------------------------------------------------------------------------

// C_ij = c(x_i, y_j), vectorised over j (Eigen array expressions) on a transposed copy of y.
template <class T>
inline RowMatrix<T> pairwise_cost_impl(const RowsView<const T>& x, const RowsView<const T>& y, GroundCost kind) {
  const std::ptrdiff_t n = x.rows, m = y.rows, d = x.cols;
  RowMatrix<T> yt(d, m), C(n, m);
  for (std::ptrdiff_t j = 0; j < m; ++j)
    for (std::ptrdiff_t k = 0; k < d; ++k) yt(k, j) = y.row(j)[k];
  for (std::ptrdiff_t i = 0; i < n; ++i) {
    auto c = C.row(i).array();
    c.setZero();
    for (std::ptrdiff_t k = 0; k < d; ++k) {
      const T xk = x.row(i)[k];
      if (kind == GroundCost::l1)
        c += (yt.row(k).array() - xk).abs();
      else
        c += (yt.row(k).array() - xk).square();
    }
    // Correctly rounded std::sqrt (Eigen's vectorised float sqrt may not be), so that C(x, x) is
    // exactly symmetric.
    if (kind == GroundCost::euclidean) c = c.unaryExpr([](T v) { return std::sqrt(v); });
  }
  return C;
}

// d/dx_i sum_ij P_ij c(x_i, y_j) into gx (n x d), and d/dy_j into gy (m x d); either may be empty.
template <class T>
inline void point_gradients(const RowsView<const T>& x, const RowsView<const T>& y, const RowMatrixXd& P,
                            GroundCost kind, double scale, const RowsView<T>& gx, const RowsView<T>& gy) {
  const std::ptrdiff_t n = x.rows, m = y.rows, d = x.cols;
  Eigen::MatrixXd X(n, d), Y(m, d);
  for (std::ptrdiff_t i = 0; i < n; ++i)
    for (std::ptrdiff_t k = 0; k < d; ++k) X(i, k) = double(x.row(i)[k]);
  for (std::ptrdiff_t j = 0; j < m; ++j)
    for (std::ptrdiff_t k = 0; k < d; ++k) Y(j, k) = double(y.row(j)[k]);
  Eigen::MatrixXd GX(n, d), GY(m, d);
  if (kind == GroundCost::l1) {
    GX.setZero();
    GY.setZero();
    for (std::ptrdiff_t i = 0; i < n; ++i)
      for (std::ptrdiff_t j = 0; j < m; ++j) {
        const double p = P(i, j);
        if (p == 0.0) continue;
        for (std::ptrdiff_t k = 0; k < d; ++k) {
          const double diff = X(i, k) - Y(j, k);
          const double s = diff > 0.0 ? p : diff < 0.0 ? -p : 0.0;
          GX(i, k) += s;
          GY(j, k) -= s;
        }
      }
  } else {
    RowMatrixXd Q = P;  // sqeuclidean: 2 P; euclidean: P / D (0 where D = 0)
    if (kind == GroundCost::sqeuclidean) {
      Q *= 2.0;
    } else {
      for (std::ptrdiff_t i = 0; i < n; ++i)
        for (std::ptrdiff_t j = 0; j < m; ++j) {
          const double dist = (X.row(i) - Y.row(j)).norm();
          Q(i, j) = dist > 0.0 ? Q(i, j) / dist : 0.0;
        }
    }
    const Eigen::VectorXd r = Q.rowwise().sum(), c = Q.colwise().sum().transpose();
    GX = r.asDiagonal() * X - Q * Y;
    GY = c.asDiagonal() * Y - Q.transpose() * X;
  }
  if (gx.data)
    for (std::ptrdiff_t i = 0; i < n; ++i)
      for (std::ptrdiff_t k = 0; k < d; ++k) gx.row(i)[k] = T(scale * GX(i, k));
  if (gy.data)
    for (std::ptrdiff_t j = 0; j < m; ++j)
      for (std::ptrdiff_t k = 0; k < d; ++k) gy.row(j)[k] = T(scale * GY(j, k));
}

template <class T, class X, class Y>
inline void check_points(const char* fn, const X& x, const Y& y, RowsView<const T>& xv, RowsView<const T>& yv) {
  static_assert(std::is_same_v<T, scalar_of_t<Y>>, "losskit: x and y must have the same scalar type");
  xv = rows_view(x);
  yv = rows_view(y);
  if (!has_unit_inner_stride(x) || !has_unit_inner_stride(y)) fail(fn, "points must have contiguous rows");
  if (xv.rows <= 0 || yv.rows <= 0 || xv.cols <= 0)
    fail(fn, "'x' (", xv.rows, "x", xv.cols, ") and 'y' (", yv.rows, "x", yv.cols, ") need at least one point and one dimension");
  if (xv.cols != yv.cols) fail(fn, "'y' has ", yv.cols, " dimensions, expected ", xv.cols, " (the dimensions of 'x')");
  check_finite_cost(fn, "x", xv);
  check_finite_cost(fn, "y", yv);
}

// The arguments every point-cloud entry point checks first: x, y (finite, same dimension), a, b,
// the options and the balance.
template <class T>
struct PointInputs {
  RowsView<const T> x, y;
  Marginal a, b;
  RowsView<T> gx, gy;  // the gradient outputs (empty when not given)
};

template <class A, class X, class B, class Y, class GX, class GY>
inline PointInputs<scalar_of_t<X>> read_point_inputs(const char* fn, const A& a, const X& x, const B& b, const Y& y,
                                                     GX* gx, GY* gy, const SinkhornOptions& o) {
  using T = scalar_of_t<X>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "losskit: scalar type must be float or double");
  PointInputs<T> in;
  check_points<T>(fn, x, y, in.x, in.y);
  in.a = read_marginal(fn, "a", a, in.x.rows, "one per point of x");
  in.b = read_marginal(fn, "b", b, in.y.rows, "one per point of y");
  check_sinkhorn_options(fn, o, in.x.rows, in.y.rows);
  check_balance(fn, in.a, in.b, o);
  in.gx = checked_grad_view<T>(fn, gx, "x", in.x, "grad_x");
  in.gy = checked_grad_view<T>(fn, gy, "y", in.y, "grad_y");
  return in;
}

template <class A, class X, class B, class Y, class GX, class GY>
inline SinkhornResult<scalar_of_t<X>> sinkhorn_points_impl(const A& a, const X& x, const B& b, const Y& y, GX* gx,
                                                           GY* gy, const SinkhornOptions& o) {
  using T = scalar_of_t<X>;
  const char* fn = "sinkhorn_points";
  const auto in = read_point_inputs(fn, a, x, b, y, gx, gy, o);
  const RowMatrix<T> C = pairwise_cost_impl<T>(in.x, in.y, o.ground_cost);
  SinkhornOptions oo = o;
  const bool grads = in.gx.data || in.gy.data;
  oo.return_plan = o.return_plan || grads;
  auto res = solve_one<T>(rows_view(C), in.a, in.b, oo, RowsView<T>{}, resolve_threads(o.threads, in.x.rows));
  if (grads) point_gradients<T>(in.x, in.y, res.plan.template cast<double>(), o.ground_cost, 1.0, in.gx, in.gy);
  if (!o.return_plan) res.plan.resize(0, 0);
  return res;
}

// ---- unrolled plain Sinkhorn-Knopp ---------------------------------------------------------------

// Forward and reverse pass of L plain iterations, in double. Small problems (SinKD: B x B).
class UnrolledSinkhorn {
 public:
  // K = exp(-(C_ij - min_j C_ij) / eps) for an n x m cost (any accessor c(i, j)); with L = 0 the
  // rows are not shifted (nothing normalises them).
  template <class CostAt>
  static RowMatrixXd kernel(std::ptrdiff_t n, std::ptrdiff_t m, CostAt&& c, double eps, int L) {
    RowMatrixXd K(n, m);
    for (std::ptrdiff_t i = 0; i < n; ++i) {
      double cmin = L > 0 ? kInf : 0.0;  // the shift cancels in the first row normalisation
      for (std::ptrdiff_t j = 0; j < m && L > 0; ++j) cmin = std::min(cmin, double(c(i, j)));
      for (std::ptrdiff_t j = 0; j < m; ++j) K(i, j) = std::exp(-(double(c(i, j)) - cmin) / eps);
    }
    return K;
  }

  // L iterations from v_0 = 1 on the cost c (a: n, b: m).
  template <class CostAt>
  void forward(std::ptrdiff_t n, std::ptrdiff_t m, CostAt&& c, const double* a, const double* b, double eps, int L) {
    own_ = kernel(n, m, c, eps, L);
    run(own_, a, b, eps, L);
  }

  // L iterations on a precomputed kernel (kept by reference: it must outlive this object's use).
  void run(const RowMatrixXd& K, const double* a, const double* b, double eps, int L) {
    K_ = &K;
    n_ = K.rows();
    m_ = K.cols();
    L_ = L;
    eps_ = eps;
    a_ = Eigen::Map<const Eigen::VectorXd>(a, n_);
    b_ = Eigen::Map<const Eigen::VectorXd>(b, m_);
    U_.resize(n_, L);
    V_.resize(m_, L + 1);
    Z_.resize(n_, L);
    W_.resize(m_, L);
    V_.col(0).setOnes();
    for (int k = 0; k < L; ++k) {
      Z_.col(k).noalias() = K * V_.col(k);
      U_.col(k) = a_.cwiseQuotient(Z_.col(k));
      W_.col(k).noalias() = K.transpose() * U_.col(k);
      V_.col(k + 1) = b_.cwiseQuotient(W_.col(k));
    }
  }

  // P_L = diag(u_L) K diag(v_L) (or K itself when L = 0).
  RowMatrixXd plan() const {
    if (L_ == 0) return *K_;
    return U_.col(L_ - 1).asDiagonal() * (*K_) * V_.col(L_).asDiagonal();
  }

  // Given G = dLoss/dP_L, returns dLoss/dC through K (without any explicit dependence of the loss
  // on C) and accumulates dLoss/da, dLoss/db. With want_c = false only the marginal gradients are
  // computed (and an empty matrix is returned).
  RowMatrixXd backward(const RowMatrixXd& G, Eigen::VectorXd& grad_a, Eigen::VectorXd& grad_b,
                       bool want_c = true) const {
    const RowMatrixXd& K = *K_;
    grad_a.setZero(n_);
    grad_b.setZero(m_);
    if (L_ == 0) return want_c ? RowMatrixXd(-(G.cwiseProduct(K)) / eps_) : RowMatrixXd();
    const Eigen::VectorXd& uL = U_.col(L_ - 1);
    const Eigen::VectorXd vL = V_.col(L_);
    // P = diag(u) K diag(v): K_bar = diag(u) G diag(v), u_bar = (G o K) v, v_bar = (G o K)^T u.
    const RowMatrixXd GK = G.cwiseProduct(K);
    Eigen::VectorXd ubar = GK * vL;
    Eigen::VectorXd vbar = GK.transpose() * uL;
    Eigen::MatrixXd Zbar(n_, L_), Wbar(m_, L_);  // outer-product factors of K_bar
    for (int k = L_ - 1; k >= 0; --k) {
      // v_{k+1} = b / w, w = K^T u_k
      const Eigen::VectorXd wbar = -vbar.cwiseProduct(V_.col(k + 1)).cwiseQuotient(W_.col(k));
      grad_b += vbar.cwiseQuotient(W_.col(k));
      ubar += K * wbar;
      Wbar.col(k) = wbar;
      // u_k = a / z, z = K v_k
      const Eigen::VectorXd zbar = -ubar.cwiseProduct(U_.col(k)).cwiseQuotient(Z_.col(k));
      grad_a += ubar.cwiseQuotient(Z_.col(k));
      vbar = K.transpose() * zbar;
      Zbar.col(k) = zbar;
      ubar.setZero();
    }
    if (!want_c) return RowMatrixXd();
    // K_bar = diag(u_L) G diag(v_L) + sum_k u_k wbar_k^T + zbar_k v_k^T
    RowMatrixXd Kbar = uL.asDiagonal() * G * vL.asDiagonal();
    Kbar.noalias() += U_ * Wbar.transpose();
    Kbar.noalias() += Zbar * V_.leftCols(L_).transpose();
    return -(Kbar.cwiseProduct(K)) / eps_;
  }

 private:
  std::ptrdiff_t n_ = 0, m_ = 0;
  int L_ = 0;
  double eps_ = 1.0;
  RowMatrixXd own_;
  const RowMatrixXd* K_ = nullptr;
  Eigen::VectorXd a_, b_;
  Eigen::MatrixXd U_, V_, Z_, W_;  // u_k, v_k (v_0 = 1), z_k = K v_{k-1}, w_k = K^T u_k as columns
};

template <class A, class B, class CM, class G>
inline UnrolledSinkhornResult sinkhorn_unrolled_impl(const A& a, const B& b, const CM& cost, G* grad,
                                                     const UnrolledSinkhornOptions& o) {
  using T = scalar_of_t<CM>;
  const char* fn = "sinkhorn_unrolled";
  const auto in = read_cost_inputs(fn, a, b, cost);
  const RowsView<const T>& C = in.C;
  const Marginal& ma = in.a;
  const Marginal& mb = in.b;
  check_positive(fn, "epsilon", o.epsilon);
  if (o.iterations < 0) fail(fn, "'iterations' must be >= 0, got ", o.iterations);
  const RowsView<T> gv = checked_grad_view<T>(fn, grad, "C", C, "grad_C");
  UnrolledSinkhorn us;
  auto at = [&C](std::ptrdiff_t i, std::ptrdiff_t j) { return C.row(i)[j]; };
  us.forward(C.rows, C.cols, at, ma.w.data(), mb.w.data(), o.epsilon, o.iterations);
  UnrolledSinkhornResult res;
  res.plan = us.plan();
  RowMatrixXd Cd(C.rows, C.cols);
  for (std::ptrdiff_t i = 0; i < C.rows; ++i)
    for (std::ptrdiff_t j = 0; j < C.cols; ++j) Cd(i, j) = double(C.row(i)[j]);
  res.value = res.plan.cwiseProduct(Cd).sum();
  const RowMatrixXd gC = us.backward(Cd, res.grad_a, res.grad_b) + res.plan;
  if (gv.data)
    for (std::ptrdiff_t i = 0; i < C.rows; ++i)
      for (std::ptrdiff_t j = 0; j < C.cols; ++j) gv.row(i)[j] = T(gC(i, j));
  return res;
}

// ---- batch ---------------------------------------------------------------------------------------

template <class AM, class BM, class CM, class G>
inline std::vector<SinkhornResult<scalar_of_t<CM>>> sinkhorn_batch_impl(const AM& A, const BM& B, const CM& cost,
                                                                        G* grad, const SinkhornOptions& o) {
  using T = scalar_of_t<CM>;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "losskit: scalar type must be float or double");
  const char* fn = "sinkhorn_batch";
  const auto av = rows_view(A);
  const auto bv = rows_view(B);
  const std::ptrdiff_t batch = av.rows, n = av.cols, m = bv.cols;
  if (batch <= 0 || n <= 0 || m <= 0) fail(fn, "'a' (", av.rows, "x", av.cols, ") and 'b' (", bv.rows, "x", bv.cols, ") must be non-empty");
  if (bv.rows != batch) fail(fn, "'b' has ", bv.rows, " rows, expected ", batch, " (one per problem, like 'a')");
  const auto C = cost_view(fn, "C", cost, batch * n, m, "[batch, n, m] as batch * n rows");
  check_finite_cost(fn, "C", C);
  check_sinkhorn_options(fn, o, n, m);
  if (o.init_f.size() || o.init_g.size()) fail(fn, "warm starts are per problem: call sinkhorn for each");
  std::vector<Marginal> ma(static_cast<std::size_t>(batch)), mb(static_cast<std::size_t>(batch));
  for (std::ptrdiff_t k = 0; k < batch; ++k) {
    const auto arow = Eigen::Map<const Eigen::Matrix<scalar_of_t<AM>, Eigen::Dynamic, 1>>(av.row(k), n);
    const auto brow = Eigen::Map<const Eigen::Matrix<scalar_of_t<BM>, Eigen::Dynamic, 1>>(bv.row(k), m);
    ma[std::size_t(k)] = read_marginal(fn, "a", arow, n, "one per row of each problem");
    mb[std::size_t(k)] = read_marginal(fn, "b", brow, m, "one per column of each problem");
    check_balance(fn, ma[std::size_t(k)], mb[std::size_t(k)], o);
  }
  const RowsView<T> gv = checked_grad_view<T>(fn, grad, "C", C, "grad_C");
  std::vector<SinkhornResult<T>> out(static_cast<std::size_t>(batch));
  parallel_ranges(batch, resolve_threads(o.threads, batch), [&](int, std::ptrdiff_t b, std::ptrdiff_t e) {
    for (std::ptrdiff_t k = b; k < e; ++k) {
      const RowsView<const T> Ck{C.row(k * n), n, m, C.stride};
      const RowsView<T> Gk = gv.data ? RowsView<T>{gv.row(k * n), n, m, gv.stride} : RowsView<T>{};
      out[std::size_t(k)] = solve_one<T>(Ck, ma[std::size_t(k)], mb[std::size_t(k)], o, Gk, 1);
    }
  });
  return out;
}

}  // namespace detail

// ---- public API ------------------------------------------------------------------------------------

// losskit::sinkhorn(a, b, C[, grad_C], options) -> SinkhornResult<T>
// grad_C (n x m, the scalar type of C) receives d objective / d C = the plan.
template <class A, class B, class CM, class G, std::enable_if_t<is_rows_v<G>, int> = 0>
inline SinkhornResult<scalar_of_t<CM>> sinkhorn(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b,
                                                const CM& C, G&& grad_C, const SinkhornOptions& options = {}) {
  return detail::sinkhorn_impl(a, b, C, &grad_C, options);
}
template <class A, class B, class CM>
inline SinkhornResult<scalar_of_t<CM>> sinkhorn(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b,
                                                const CM& C, const SinkhornOptions& options = {}) {
  return detail::sinkhorn_impl(a, b, C, static_cast<RowMatrix<scalar_of_t<CM>>*>(nullptr), options);
}

// Many independent problems of one shape: a [batch, n], b [batch, m] (row-major matrices), C as
// [batch, n, m]: a row-major matrix of batch * n rows (problem k uses rows k n .. k n + n - 1) or
// a row-major Eigen::Tensor of rank 3. Problems run in parallel (options.threads), each on one
// thread; grad_C (same shape as C) receives every plan.
template <class AM, class BM, class CM, class G, std::enable_if_t<is_rows_v<G>, int> = 0>
inline std::vector<SinkhornResult<scalar_of_t<CM>>> sinkhorn_batch(const AM& a, const BM& b, const CM& C, G&& grad_C,
                                                                   const SinkhornOptions& options = {}) {
  return detail::sinkhorn_batch_impl(a, b, C, &grad_C, options);
}
template <class AM, class BM, class CM>
inline std::vector<SinkhornResult<scalar_of_t<CM>>> sinkhorn_batch(const AM& a, const BM& b, const CM& C,
                                                                   const SinkhornOptions& options = {}) {
  return detail::sinkhorn_batch_impl(a, b, C, static_cast<RowMatrix<scalar_of_t<CM>>*>(nullptr), options);
}

// C_ij = c(x_i, y_j) for points x (n x d) and y (m x d).
template <class X, class Y>
inline RowMatrix<scalar_of_t<X>> pairwise_cost(const X& x, const Y& y, GroundCost kind = GroundCost::sqeuclidean) {
  using T = scalar_of_t<X>;
  RowsView<const T> xv, yv;
  detail::check_points<T>("pairwise_cost", x, y, xv, yv);
  return detail::pairwise_cost_impl<T>(xv, yv, kind);
}

// Sinkhorn between weighted point clouds (a on x, b on y) with C = pairwise_cost(x, y,
// options.ground_cost); grad_x, grad_y receive d objective / d points (envelope theorem).
template <class A, class X, class B, class Y, class GX, class GY,
          std::enable_if_t<is_rows_v<GX> && is_rows_v<GY>, int> = 0>
inline SinkhornResult<scalar_of_t<X>> sinkhorn_points(const Eigen::MatrixBase<A>& a, const X& x,
                                                      const Eigen::MatrixBase<B>& b, const Y& y, GX&& grad_x,
                                                      GY&& grad_y, const SinkhornOptions& options = {}) {
  return detail::sinkhorn_points_impl(a, x, b, y, &grad_x, &grad_y, options);
}
template <class A, class X, class B, class Y>
inline SinkhornResult<scalar_of_t<X>> sinkhorn_points(const Eigen::MatrixBase<A>& a, const X& x,
                                                      const Eigen::MatrixBase<B>& b, const Y& y,
                                                      const SinkhornOptions& options = {}) {
  using M = RowMatrix<scalar_of_t<X>>;
  return detail::sinkhorn_points_impl(a, x, b, y, static_cast<M*>(nullptr), static_cast<M*>(nullptr), options);
}

// <P_L, C> after L plain row/column normalisations (SinKD's inner loop), with its gradient w.r.t.
// C through the iterations written into grad_C; grad_a / grad_b in the result.
template <class A, class B, class CM, class G, std::enable_if_t<is_rows_v<G>, int> = 0>
inline UnrolledSinkhornResult sinkhorn_unrolled(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b,
                                                const CM& C, G&& grad_C, const UnrolledSinkhornOptions& options = {}) {
  return detail::sinkhorn_unrolled_impl(a, b, C, &grad_C, options);
}
template <class A, class B, class CM>
inline UnrolledSinkhornResult sinkhorn_unrolled(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b,
                                                const CM& C, const UnrolledSinkhornOptions& options = {}) {
  return detail::sinkhorn_unrolled_impl(a, b, C, static_cast<RowMatrix<scalar_of_t<CM>>*>(nullptr), options);
}

}  // namespace losskit
