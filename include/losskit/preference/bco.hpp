#pragma once
// BCO, binary classifier optimisation (Jung et al. 2404.04656), over unpaired examples
// (huggingface/trl trl/experimental/bco/bco_trainer.py `bco_loss`, `RunningMoments`, `_get_udm_weight`;
// BCOConfig).
//
// Rewards r = beta (pi - rho) (summed completion log-probs). delta is the running mean of ALL rewards
// seen so far (chosen and rejected; a constant, no gradient), kept by BcoRunningMean. TRL updates
// it with the current batch's rewards BEFORE computing the loss (in training); so does the overload
// of losskit::bco that takes the state (unless update_running_mean is false, as in TRL evaluation).
//   chosen    L = -log s(r - delta)    = sp(-(r - delta)),    dL/dpi =  -beta s(-(r - delta))
//   rejected  L = -log s(-(r - delta)) = sp(r - delta),       dL/dpi = w beta s(r - delta)
// (s = sigmoid, sp = softplus). Value: the mean over all examples of [L_chosen, w L_rejected]
// (TRL `losses.nanmean()`).
// Underlying distribution matching (UDM): each rejected example gets the density-ratio weight
//   w = clamp(p / (1 - p + 1e-8), min_density_ratio, max_density_ratio)   (defaults 0.5 and 10),
// p = P(desirable | prompt) from a classifier over prompt embeddings; chosen examples get 1. Pass the
// probabilities in `rejected_desirable_prob` (TRL averages them across processes first), or fit the
// small classifier below (TRL: sklearn LogisticRegression(class_weight="balanced") on embeddings of
// prompt_sample_size = 1024 desirable (label 1) and 1024 undesirable (label 0) prompts).
//
// BcoRunningMean reproduces TRL's RunningMoments (count starts at 1e-24, mean 0, var 1, std 1):
//   for a batch x of n rewards with mean m and biased variance v:
//   d = m - mean; N = count + n; mean += d n / N;
//   var = (var count + d^2 count n / N + v n) / N;  std = sqrt(var N / (N - 1));  count = N.
// Computed in double (TRL rounds the batch mean and variance to float32). to_json() writes TRL's
// running.json layout (keys count, mean, std, var) with 17 significant digits and from_json() reads
// it back (also TRL's own files): the round trip is exact.
//
// LogisticRegression: binary logistic regression with an intercept, minimising (as sklearn's
// lbfgs / newton solvers do)
//   sum_i c_i [log(1 + e^(z_i)) - y_i z_i] + |w|^2 / (2 C),   z_i = x_i . w + b  (b not penalised),
// with balanced class weights c_i = n / (2 n_{y_i}) (sklearn class_weight="balanced") and C = 1
// (sklearn's default). Solved by Newton's method (IRLS) with a backtracking line search on the
// exact Hessian X^T diag(c p (1 - p)) X + I / C (Cholesky, LDLT fallback): each iteration costs
// O(n d^2 + d^3) for n samples of dimension d, and about 5 to 10 iterations reach machine precision
// (sklearn stops at its tolerance 1e-4, so its coefficients agree to about that).

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "losskit/core/scalar_math.hpp"
#include "losskit/preference/preference_common.hpp"

namespace losskit {

// TRL's RunningMoments: count-weighted running mean (and variance) of all rewards.
class BcoRunningMean {
 public:
  struct State {
    double mean = 0.0;
    double var = 1.0;
    double std = 1.0;
    double count = 1e-24;
  };

  BcoRunningMean() = default;
  explicit BcoRunningMean(const State& s) : s_(s) {}

  double mean() const noexcept { return s_.mean; }
  double var() const noexcept { return s_.var; }
  double std() const noexcept { return s_.std; }
  double count() const noexcept { return s_.count; }
  const State& state() const noexcept { return s_; }
  void restore(const State& s) noexcept { s_ = s; }

  // Adds a batch of rewards (any Eigen vector); an empty batch changes nothing.
  template <class Derived>
  void update(const Eigen::DenseBase<Derived>& rewards) {
    const Eigen::VectorXd x = detail::to_vector("BcoRunningMean::update", "rewards", rewards);
    const double n = double(x.size());
    if (n == 0) return;
    const double m = x.mean();
    const double v = (x.array() - m).square().sum() / n;
    const double delta = m - s_.mean;
    const double total = s_.count + n;
    const double old_sum = s_.var * s_.count + delta * delta * s_.count * n / total;
    s_.mean += delta * n / total;
    const double new_var = (old_sum + v * n) / total;
    s_.std = std::sqrt(new_var * total / (total - 1.0));
    s_.var = new_var;
    s_.count = total;
  }

  // TRL's running.json: {"count": ..., "mean": ..., "std": ..., "var": ...} (exact round trip).
  std::string to_json() const {
    std::ostringstream os;
    os << "{\n  \"count\": " << number(s_.count) << ",\n  \"mean\": " << number(s_.mean)
       << ",\n  \"std\": " << number(s_.std) << ",\n  \"var\": " << number(s_.var) << "\n}\n";
    return os.str();
  }
  static BcoRunningMean from_json(const std::string& text) {
    State s;
    s.count = field(text, "count");
    s.mean = field(text, "mean");
    s.std = field(text, "std");
    s.var = field(text, "var");
    return BcoRunningMean(s);
  }

 private:
  static std::string number(double x) {
    if (std::isnan(x)) return "NaN";  // Python's json spelling
    if (std::isinf(x)) return x > 0 ? "Infinity" : "-Infinity";
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", x);
    return buf;
  }
  static double field(const std::string& text, const char* key) {
    const std::string quoted = std::string("\"") + key + "\"";
    const auto k = text.find(quoted);
    if (k == std::string::npos) detail::fail("BcoRunningMean::from_json", "key '", key, "' is missing");
    auto p = text.find(':', k + quoted.size());
    if (p == std::string::npos) detail::fail("BcoRunningMean::from_json", "no value for '", key, "'");
    ++p;
    while (p < text.size() && std::isspace(static_cast<unsigned char>(text[p]))) ++p;
    const std::string rest = text.substr(p, 12);
    if (rest.rfind("NaN", 0) == 0) return std::nan("");
    if (rest.rfind("Infinity", 0) == 0) return HUGE_VAL;
    if (rest.rfind("-Infinity", 0) == 0) return -HUGE_VAL;
    const char* begin = text.c_str() + p;
    char* end = nullptr;
    const double v = std::strtod(begin, &end);
    if (end == begin) detail::fail("BcoRunningMean::from_json", "the value of '", key, "' is not a number");
    return v;
  }

  State s_{};
};

struct BcoOptions {
  double beta = 0.1;
  bool update_running_mean = true;   // TRL: true in training, false in evaluation
  Values rejected_desirable_prob{};  // UDM: P(desirable | prompt) per rejected example; empty: no UDM
  double min_density_ratio = 0.5;
  double max_density_ratio = 10.0;
  Reduction reduction = Reduction::mean;
  double normalizer = 0.0;
  double grad_scale = 1.0;
};

// The UDM density-ratio weights clamp(p / (1 - p + 1e-8), min_ratio, max_ratio) (TRL `_get_udm_weight`).
inline Eigen::VectorXd bco_udm_weights(const Values& prob_desirable, double min_ratio = 0.5, double max_ratio = 10.0) {
  const char* fn = "bco_udm_weights";
  if (!(min_ratio >= 0.0) || !(max_ratio >= min_ratio) || !std::isfinite(max_ratio))
    detail::fail(fn, "need 0 <= 'min_density_ratio' <= 'max_density_ratio' < inf, got ", min_ratio, " and ", max_ratio);
  const Eigen::Index n = Eigen::Index(prob_desirable.size());
  Eigen::VectorXd w(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    const double p = prob_desirable[std::size_t(i)];
    if (!(p >= 0.0 && p <= 1.0)) detail::fail(fn, "probabilities must be in [0, 1], got ", p, " at index ", i);
    w[i] = std::clamp(p / (1.0 - p + 1e-8), min_ratio, max_ratio);
  }
  return w;
}

// losskit::bco(policy_chosen, policy_rejected, ref_chosen, ref_rejected, delta, options)
// with a fixed reward shift delta (for example running.mean() after your own update).
template <class PC, class PR, class RC, class RR>
inline UnpairedPreferenceResult bco(const Eigen::DenseBase<PC>& policy_chosen, const Eigen::DenseBase<PR>& policy_rejected,
                                    const Eigen::DenseBase<RC>& ref_chosen, const Eigen::DenseBase<RR>& ref_rejected,
                                    double delta, const BcoOptions& o = {}) {
  const char* fn = "bco";
  Eigen::VectorXd dc, dr;
  detail::unpaired_inputs(fn, policy_chosen, policy_rejected, ref_chosen, ref_rejected, dc, dr);
  detail::check_positive(fn, "beta", o.beta);
  detail::check_finite(fn, "delta", delta);
  detail::check_reduction(fn, o);
  Eigen::VectorXd w = Eigen::VectorXd::Ones(dr.size());
  if (!o.rejected_desirable_prob.empty()) {
    detail::check_size(fn, "rejected_desirable_prob", Eigen::Index(o.rejected_desirable_prob.size()), "policy_rejected",
                       dr.size());
    w = bco_udm_weights(o.rejected_desirable_prob, o.min_density_ratio, o.max_density_ratio);
  }
  const double beta = o.beta;
  Eigen::VectorXd lc(dc.size()), gc(dc.size()), lr(dr.size()), gr(dr.size());
  for (Eigen::Index i = 0; i < dc.size(); ++i) {
    const double u = beta * dc[i] - delta;
    lc[i] = detail::softplus(-u);
    gc[i] = -beta * detail::sigmoid(-u);
  }
  for (Eigen::Index i = 0; i < dr.size(); ++i) {
    const double u = beta * dr[i] - delta;
    lr[i] = w[i] * detail::softplus(u);
    gr[i] = w[i] * beta * detail::sigmoid(u);
  }
  return detail::finish_unpaired(o, beta, dc, dr, delta, lc, lr, std::move(gc), std::move(gr));
}

// losskit::bco(..., running, options): TRL's training step. Updates `running` with this batch's
// rewards first (if update_running_mean), then uses delta = running.mean(). Arguments are checked
// before the state changes.
template <class PC, class PR, class RC, class RR>
inline UnpairedPreferenceResult bco(const Eigen::DenseBase<PC>& policy_chosen, const Eigen::DenseBase<PR>& policy_rejected,
                                    const Eigen::DenseBase<RC>& ref_chosen, const Eigen::DenseBase<RR>& ref_rejected,
                                    BcoRunningMean& running, const BcoOptions& o = {}) {
  if (o.update_running_mean) {
    // Validate everything with the current delta first, so a throwing call leaves `running` as it was.
    const UnpairedPreferenceResult probe = bco(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                               std::isfinite(running.mean()) ? running.mean() : 0.0, o);
    Eigen::VectorXd rewards(probe.chosen_rewards.size() + probe.rejected_rewards.size());
    rewards << probe.chosen_rewards, probe.rejected_rewards;
    running.update(rewards);
  }
  return bco(policy_chosen, policy_rejected, ref_chosen, ref_rejected, running.mean(), o);
}

struct LogisticRegressionOptions {
  double C = 1.0;                     // inverse L2 strength (sklearn C)
  bool balanced_class_weight = true;  // sklearn class_weight="balanced"; false: every sample 1
  bool fit_intercept = true;
  int max_iter = 100;
  double tol = 1e-10;                 // stop when max |gradient| <= tol * max(1, max |initial gradient|)
};

// Binary logistic regression over feature rows (see the top of this file).
class LogisticRegression {
 public:
  // features: [samples, dims] (any dense Eigen matrix); labels: 1 = positive (desirable), 0 = negative.
  template <class X>
  LogisticRegression& fit(const Eigen::MatrixBase<X>& features, const Values& labels,
                          const LogisticRegressionOptions& o = {}) {
    const char* fn = "LogisticRegression::fit";
    const Eigen::MatrixXd x = features.derived().template cast<double>();
    const Eigen::Index n = x.rows(), d = x.cols();
    detail::check_size(fn, "labels", Eigen::Index(labels.size()), "features' rows", n);
    detail::check_positive(fn, "C", o.C);
    if (o.max_iter < 1) detail::fail(fn, "'max_iter' must be >= 1, got ", o.max_iter);
    if (!(o.tol >= 0.0)) detail::fail(fn, "'tol' must be >= 0, got ", o.tol);
    if (!x.allFinite()) detail::fail(fn, "'features' must be finite");
    Eigen::VectorXd y(n);
    double n_pos = 0.0;
    for (Eigen::Index i = 0; i < n; ++i) {
      y[i] = labels[std::size_t(i)];
      if (y[i] != 0.0 && y[i] != 1.0) detail::fail(fn, "'labels' must be 0 or 1, got ", y[i], " at index ", i);
      n_pos += y[i];
    }
    if (n_pos == 0.0 || n_pos == double(n))
      detail::fail(fn, "'labels' must contain both classes (got ", n_pos, " positive of ", n, ")");
    Eigen::VectorXd c(n);
    for (Eigen::Index i = 0; i < n; ++i)
      c[i] = o.balanced_class_weight ? double(n) / (2.0 * (y[i] == 1.0 ? n_pos : double(n) - n_pos)) : 1.0;

    const Eigen::Index k = d + (o.fit_intercept ? 1 : 0);  // parameters: w, then b
    Eigen::VectorXd theta = Eigen::VectorXd::Zero(k);
    const double inv_c = 1.0 / o.C;
    auto margins = [&](const Eigen::VectorXd& t) {
      Eigen::VectorXd z = x * t.head(d);
      if (o.fit_intercept) z.array() += t[d];
      return z;
    };
    auto objective = [&](const Eigen::VectorXd& t) {
      const Eigen::VectorXd z = margins(t);
      double f = 0.5 * inv_c * t.head(d).squaredNorm();
      for (Eigen::Index i = 0; i < n; ++i) f += c[i] * (detail::softplus(z[i]) - y[i] * z[i]);
      return f;
    };
    double f = objective(theta), g0 = -1.0;
    iterations_ = 0;
    converged_ = false;
    for (int it = 0; it < o.max_iter; ++it) {
      const Eigen::VectorXd z = margins(theta);
      Eigen::VectorXd r(n), h(n);  // c (p - y), c p (1 - p)
      for (Eigen::Index i = 0; i < n; ++i) {
        r[i] = c[i] * (detail::sigmoid(z[i]) - y[i]);
        h[i] = c[i] * detail::sigmoid_grad(z[i]);
      }
      Eigen::VectorXd grad(k);
      grad.head(d) = x.transpose() * r + inv_c * theta.head(d);
      if (o.fit_intercept) grad[d] = r.sum();
      const double gmax = grad.cwiseAbs().maxCoeff();
      if (g0 < 0.0) g0 = std::max(1.0, gmax);
      if (gmax <= o.tol * g0) {
        converged_ = true;
        break;
      }
      Eigen::MatrixXd hess = Eigen::MatrixXd::Zero(k, k);
      // Lower triangle only: LLT and LDLT read nothing else.
      const Eigen::MatrixXd xs = h.cwiseSqrt().asDiagonal() * x;
      hess.topLeftCorner(d, d).selfadjointView<Eigen::Lower>().rankUpdate(xs.transpose());
      hess.topLeftCorner(d, d).diagonal().array() += inv_c;
      if (o.fit_intercept) {
        hess.block(d, 0, 1, d) = (x.transpose() * h).transpose();
        hess(d, d) = h.sum();
      }
      Eigen::VectorXd step;
      Eigen::LLT<Eigen::MatrixXd> llt(hess);
      if (llt.info() == Eigen::Success) {
        step = llt.solve(-grad);
      } else {
        step = hess.ldlt().solve(-grad);
      }
      // Backtracking (Armijo) line search on the objective.
      const double slope = grad.dot(step);
      double t = 1.0, f_new = objective(theta + step);
      while (!(f_new <= f + 1e-4 * t * slope) && t > 1e-12) {
        t *= 0.5;
        f_new = objective(theta + t * step);
      }
      ++iterations_;
      if (!(f_new <= f)) {  // no decrease possible: at the optimum to rounding
        converged_ = true;
        break;
      }
      theta += t * step;
      f = f_new;
    }
    coef_ = theta.head(d);
    intercept_ = o.fit_intercept ? theta[d] : 0.0;
    objective_ = f;
    return *this;
  }

  // P(label = 1 | features) for each row.
  template <class X>
  Eigen::VectorXd predict_proba(const Eigen::MatrixBase<X>& features) const {
    const Eigen::MatrixXd x = features.derived().template cast<double>();
    if (x.cols() != coef_.size())
      detail::fail("LogisticRegression::predict_proba", "'features' has ", x.cols(), " columns, the model was fit on ",
                   coef_.size());
    Eigen::VectorXd p = x * coef_;
    for (Eigen::Index i = 0; i < p.size(); ++i) p[i] = detail::sigmoid(p[i] + intercept_);
    return p;
  }

  const Eigen::VectorXd& coef() const noexcept { return coef_; }
  double intercept() const noexcept { return intercept_; }
  double objective() const noexcept { return objective_; }  // the minimised objective
  int iterations() const noexcept { return iterations_; }
  bool converged() const noexcept { return converged_; }

 private:
  Eigen::VectorXd coef_{};
  double intercept_ = 0.0;
  double objective_ = 0.0;
  int iterations_ = 0;
  bool converged_ = false;
};

// TRL's UDM classifier: desirable prompt embeddings labelled 1, undesirable 0, balanced weights.
template <class XC, class XR>
inline LogisticRegression fit_udm_classifier(const Eigen::MatrixBase<XC>& desirable_embeddings,
                                             const Eigen::MatrixBase<XR>& undesirable_embeddings,
                                             const LogisticRegressionOptions& o = {}) {
  const Eigen::Index nc = desirable_embeddings.rows(), nr = undesirable_embeddings.rows();
  if (desirable_embeddings.cols() != undesirable_embeddings.cols())
    detail::fail("fit_udm_classifier", "'undesirable_embeddings' has ", undesirable_embeddings.cols(),
                 " columns, expected ", desirable_embeddings.cols(), " (as 'desirable_embeddings')");
  Eigen::MatrixXd x(nc + nr, desirable_embeddings.cols());
  x.topRows(nc) = desirable_embeddings.derived().template cast<double>();
  x.bottomRows(nr) = undesirable_embeddings.derived().template cast<double>();
  Eigen::VectorXd y(nc + nr);
  y << Eigen::VectorXd::Ones(nc), Eigen::VectorXd::Zero(nr);
  LogisticRegression clf;
  clf.fit(x, y, o);
  return clf;
}

}  // namespace losskit
