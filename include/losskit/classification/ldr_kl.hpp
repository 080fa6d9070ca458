#pragma once
// Label-distributionally robust losses (Zhu, Ying and Yang, "Label Distributionally Robust
// Losses for Multi-class Classification", ICML 2023; reference code Optimization-AI/ICML2023_LDR,
// loss.py: LDRLoss_V1, ALDRLoss_V1). Per row with K classes, scores yh and label y:
//   v_k  = c (1 - [k = y]) + yh_k - yh_y                     (margin c on the other classes)
//   LDR-KL = max_{pi in simplex} sum_k pi_k v_k - lambda KL(pi || uniform)
//          = lambda log( (1/K) sum_k exp(v_k / lambda) )     (log-MEAN-exp)
//   dL/dyh = pi - e_y,   pi = softmax(v / lambda)
// lambda -> 0 gives the Crammer-Singer hinge max_k v_k; with c = 0, lambda = 1 and raw scores
// it is cross entropy minus log K.
//
// Scores (`normalize`):
// - ldr_kl, normalize = true (LDRLoss_V1, always on there): yh = softplus(z) / mean_k softplus(z);
//   normalize = false: yh = z (the raw-logit form of the paper).
// - AdaptiveLDR, normalize = true (ALDRLoss_V1, always on there): x = softplus(z) if `softplus`
//   (reference default: off) else z, and yh = x / (||x||_1 / K); normalize = false: yh = z.
//   Both normalisations are yh = K x / ||x||_1; with g = pi - e_y the chain rule gives
//     dL/dz_i = x'_i (K / ||x||_1) (g_i - sign(x_i) (1/K) sum_j g_j yh_j),   x' = sigmoid(z) or 1
//   (sign(0) = 0, as torch's L1-norm gradient). A row with ||x||_1 = 0 (all-zero logits without
//   softplus; softplus underflowing for logits below about -88 in float) has no normalisation:
//   losskit defines yh = 0 there and a zero gradient for that row (the reference gives NaN).
//
// AdaptiveLDR (ALDR-KL) keeps lambda_i per training sample (initialised to lambda0) and, on each
// visit of sample i, takes the reference's closed-form step before evaluating the loss:
//   pi' = (softmax(yh / lambda_i) + 1e-5) / sum(...)          (no margin, the old lambda_i)
//   lambda_i <- lambda0 - lambda0 KL(pi' || uniform) / (alpha log K)
//   L_i = lambda_i log((1/K) sum_k exp(v_k / lambda_i)) - (alpha log K / (2 lambda0)) (lambda_i - lambda0)^2
// with lambda_i detached (its dependence on z is not differentiated), as in the reference.
// With update = false the stored lambda_i is used as is and the state is left alone.
// alpha >= 1 keeps every lambda_i > 0 (the reference's comment asks for alpha > 1; KL < log K
// strictly because of the 1e-5 smoothing, so alpha = 1 is safe).
//
// Defaults are those of the reference classes: LDRLoss_V1(threshold = 2.0, Lambda = 1.0),
// ALDRLoss_V1(threshold = 1.0, Lambda = 1.0, alpha = 1.0, softplus = False). The paper's
// experiments use margin 0.1, lambda 10, alpha 2. The reference reduces by the batch mean, as
// Reduction::mean does here.
//
// Conventions: -inf logits are legal: with softplus they score 0 (zero gradient); in the raw form
// they are classes with exp(v_k / lambda) = 0, still counted in the K of the mean (zero
// gradient). The L1 normalisation without softplus needs finite logits (||z||_1 = inf gives NaN).
// A -inf target logit in the raw form gives loss +inf. NaN gives NaN.
//
// Numerics: raw scores (ldr_kl, and AdaptiveLDR without a lambda step) are one streaming pass
// per row: the softmax statistics of the other classes' logits (the margin, common to all of
// them, is not added in float) through the running-maximum loop of the other softmax kernels
// (core/softmax.hpp; exps into a scratch row), then the target's term (z_y - c) / lambda joined in
// double, with pi_y, 1 - pi_y (the target's gradient entry, without cancelling) and the loss all
// at the scale the loop used; the gradient is written during the next row's loop. The normalised forms need the row's normaliser before any exp:
// per row, one pass over the logits computes the scores' normaliser (softplus and its
// sigmoid stored for the normalised form, the L1 norm otherwise) and the maximum over the other
// classes, which fixes the log-sum-exp shift M = max_k u_k / lambda exactly; one exp pass stores
// e_k = exp(u_k / lambda - M) and sums e_k and e_k yh_k (the target's term, which takes no
// margin, is computed apart in double, so a margin much larger than lambda can neither overflow
// nor swamp it); one pass writes the gradient (non-temporal for large outputs). The lambda step of
// AdaptiveLDR adds an exp pass and a log pass (for raw scores, also the max pass that shifts
// them). The next row is prefetched during the first heavy
// pass, so memory reads overlap the computation. float: softplus and the KL's log use the fast
// forms of core/softplus.hpp (about 1e-7 absolute).

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <istream>
#include <limits>
#include <ostream>
#include <type_traits>
#include <vector>

#include "losskit/core/checks.hpp"
#include "losskit/core/labeled.hpp"
#include "losskit/core/pending.hpp"
#include "losskit/core/rows.hpp"
#include "losskit/core/scratch.hpp"
#include "losskit/core/simd.hpp"
#include "losskit/core/softmax.hpp"
#include "losskit/core/softplus.hpp"
#include "losskit/core/state_io.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"

namespace losskit {

// Options of ldr_kl. Defaults: LDRLoss_V1. C++20: {.margin = 0.1, .lambda = 10.0}.
struct LdrKlOptions {
  double margin = 2.0;               // c (reference: threshold), added to every non-target class
  double lambda = 1.0;               // > 0 (reference: Lambda); -> 0: Crammer-Singer hinge
  bool normalize = true;             // yh = softplus(z) / mean(softplus(z)); false: yh = z
  Reduction reduction = Reduction::mean;
  std::int64_t ignore_index = -100;  // rows with this label: loss 0, gradient 0, not counted
  Weights weights{};                 // optional per-row weights or 0/1 mask
  double grad_scale = 1.0;           // upstream gradient of the reduced loss
  double normalizer = 0.0;           // > 0: divide by this instead (e.g. a global token count)
  int threads = 1;                   // 0: all hardware threads; results never depend on it
};

// Options of AdaptiveLDR::loss (lambda0 belongs to the state). Defaults: ALDRLoss_V1.
struct AdaptiveLdrOptions {
  double margin = 1.0;               // c (reference: threshold)
  double alpha = 1.0;                // >= 1: strength of the pull of lambda_i towards lambda0
  bool normalize = true;             // yh = x / (||x||_1 / K); false: yh = z
  bool softplus = false;             // x = softplus(z) before the L1 normalisation
  bool update = true;                // take the closed-form lambda step (false: evaluate only)
  Reduction reduction = Reduction::mean;
  std::int64_t ignore_index = -100;  // rows with this label: loss 0, gradient 0, state untouched
  Weights weights{};                 // optional per-row weights or 0/1 mask (weight 0: untouched)
  double grad_scale = 1.0;           // upstream gradient of the reduced loss
  double normalizer = 0.0;           // > 0: divide by this instead (e.g. a global token count)
  int threads = 1;                   // 0: all hardware threads; results never depend on it
};

namespace detail {

enum class LdrNorm { none, l1, softplus_l1 };

// Running maximum of a generic loop body's values (batches and scalar tail). NaN lanes are
// skipped (the maximum is only a shift; NaN still reaches the sums).
template <class T>
struct RunningMax {
  simd::batch<T> b = simd::batch<T>(-std::numeric_limits<T>::infinity());
  T s = -std::numeric_limits<T>::infinity();
  template <class V>
  void add(const V& v) {
    if constexpr (simd::is_batch<V>)
      b = simd::vmax(v, b);
    else
      s = simd::vmax(v, s);
  }
  T get() const { return simd::vmax(simd::hmax(b), s); }
};

// Sums K quantities of body(lanes<V>, i) over [0, n) without i = y, in blocks that restart after
// y (the order depends on (n, y) only).
template <class T, std::size_t K, class Body>
inline std::array<double, K> sum_around(std::size_t n, std::size_t y, Body&& body) {
  auto a = simd::sum_lanes<T, K>(0, y, body);
  const auto b = simd::sum_lanes<T, K>(y + 1, n, body);
  for (std::size_t k = 0; k < K; ++k) a[k] += b[k];
  return a;
}

// The same where body returns K + 1 values: the K to sum and one whose maximum goes to *max_out.
template <class T, std::size_t K, class Body>
inline std::array<double, K> sum_max_around(std::size_t n, std::size_t y, T* max_out, Body&& body) {
  RunningMax<T> mx;
  const auto a = sum_around<T, K>(n, y, [&](auto tag, std::size_t i) {
    using V = typename decltype(tag)::type;
    const auto v = body(tag, i);
    mx.add(v[K]);
    std::array<V, K> out;
    for (std::size_t k = 0; k < K; ++k) out[k] = v[k];
    return out;
  });
  *max_out = mx.get();
  return a;
}

template <class T>
struct LdrScratch {
  T* e;  // exps
  T* x;  // softplus(z) (softplus_l1)
  T* d;  // sigmoid(z)  (softplus_l1)
  ChunkedSoftmax<T> sm;  // the raw form: the statistics of softmax(u / lambda)
  // The raw form's gradient, alpha_k e_i over chunk k (the target entry apart), recorded by a
  // row and written during the next row's loop (which reads e_i before it stores its own), or
  // by flush() (pipelined rows, as the divergences').
  PendingRow<T> pending;
  std::vector<T> alpha;
  LdrScratch(std::size_t n, LdrNorm norm) {
    const bool sp = norm == LdrNorm::softplus_l1;
    e = scratch<T>(sp ? 3 * n : n);
    x = sp ? e + n : nullptr;
    d = sp ? e + 2 * n : nullptr;
  }
  template <class V>
  void put(T a, std::size_t i) const {
    pending.put(i, V(a) * simd::load<V>(e + i));
  }
  void flush() {
    pending.flush([&](auto tag, std::size_t i) { put<typename decltype(tag)::type>(alpha[i / chunk_elems<T>], i); });
  }
};

// One row of an LDR loss: raw() for raw scores; otherwise scores (one pass over the logits), the
// log-mean-exp of v / lambda (one exp pass, with a single shift M from the first pass's
// maximum), the gradient (one pass).
template <class T>
struct LdrRow {
  const T* z;
  std::size_t n, y;
  LdrNorm norm;
  LdrScratch<T>& w;
  const T* ahead;          // the next row: prefetched by the first heavy pass (see prefetch_here)
  bool prefetched = false;
  const T* src = nullptr;  // x: the scores are kappa * src
  double kappa = 1.0;      // K / ||x||_1 (1 for raw scores, 0 when ||x||_1 = 0)
  double x_max = 0.0;      // max over k != y of src_k (-inf if there is none)
  double yh_y = 0.0;       // the target's score
  double sum_e = 0.0;      // sum_k e_k, e_k = exp(u_k / lambda - M), u_k = v_k + yh_y
  double lse = 0.0;        // M + log(sum_e) = log sum_k exp(u_k / lambda)
  double pi_y = 0.0;       // softmax(v / lambda) at the target
  double pi_yh = 0.0;      // sum_k pi_k yh_k (normalised forms)

  // Scores: reads the logits once (the raw form only takes their maximum).
  void scores() {
    src = z;
    T m = -std::numeric_limits<T>::infinity();
    const T* zp = z;
    if (norm == LdrNorm::softplus_l1) {
      T* x = w.x;
      T* d = w.d;
      const T* pf = prefetch_here() ? ahead : zp;
      auto body = [&](auto tag, std::size_t i) {
        using V = typename decltype(tag)::type;
        prefetch_at(tag, pf, i);
        V sig;
        const V s = softplus_sigmoid(simd::load<V>(zp + i), sig);
        simd::store(x + i, s);
        simd::store(d + i, sig);
        return std::array<V, 2>{s, s};
      };
      const double l1 = sum_max_around<T, 1>(n, y, &m, body)[0] + double(body(simd::lanes<T>{}, y)[0]);
      src = x;
      set_kappa(l1);
    } else if (norm == LdrNorm::l1) {
      const double l1 = sum_max_around<T, 1>(n, y, &m, [&](auto tag, std::size_t i) {
        using V = typename decltype(tag)::type;
        const V v = simd::load<V>(zp + i);
        return std::array<V, 2>{simd::abs(v), v};
      })[0];
      set_kappa(l1 + std::fabs(double(z[y])));
    } else {
      auto load = [zp](auto tag, std::size_t i) { return simd::load<typename decltype(tag)::type>(zp + i); };
      m = simd::vmax(simd::max_lanes<T>(0, y, load), simd::max_lanes<T>(y + 1, n, load));
    }
    x_max = double(m);
    yh_y = kappa * double(src[y]);
  }

  // The next row is prefetched once, by the first pass that computes enough to hide it: the
  // softplus pass, else the lambda step's exp pass, else the loss's exp pass.
  bool prefetch_here() {
    if (prefetched) return false;
    prefetched = true;
    return true;
  }

  void set_kappa(double l1) {
    kappa = l1 == 0.0 ? 0.0 : std::isfinite(l1) ? double(n) / l1 : std::numeric_limits<double>::quiet_NaN();
  }

  // KL(pi' || uniform) with pi = softmax(yh / lambda) (no margin), pi' = (pi + 1e-5) / sum.
  double kl_to_uniform(double lambda) {
    constexpr double smooth = 1e-5;
    const double m = kappa * std::max(x_max, double(src[y])) / lambda;  // kappa >= 0
    const T a = T(kappa / lambda * simd::log2e<double>), b = T(-m * simd::log2e<double>);
    const T* s = src;
    T* e_out = w.e;
    const T* pf = prefetch_here() ? ahead : s;
    const double sum = simd::sum_lanes<T, 1>(0, n, [&](auto tag, std::size_t i) {
      using V = typename decltype(tag)::type;
      prefetch_at(tag, pf, i);
      const V e = simd::exp2_ftz(simd::fma(simd::load<V>(s + i), V(a), V(b)));
      simd::store(e_out + i, e);
      return std::array<V, 1>{e};
    })[0];
    const double inv_z = 1.0 / (1.0 + double(n) * smooth);  // sum_k (pi_k + 1e-5)
    const T f = T(inv_z / sum), ts = T(smooth * inv_z), tk = T(double(n));
    return simd::sum_lanes<T, 1>(0, n, [&](auto tag, std::size_t i) {
      using V = typename decltype(tag)::type;
      const V p = simd::fma(simd::load<V>(e_out + i), V(f), V(ts));
      return std::array<V, 1>{p * log_fast(p * V(tk))};
    })[0];
  }

  // The normalised forms (raw scores: raw()). Fills the exps e (scratch) and returns the
  // per-row LDR-KL value.
  double value(double lambda, double margin) {
    // M = max_k u_k / lambda: the others' maximum plus the margin, or the target (kappa >= 0).
    const double others = x_max == -std::numeric_limits<double>::infinity() ? x_max : kappa * x_max + margin;
    const double M = std::max(others, yh_y) / lambda;
    const T a = T(kappa / lambda * simd::log2e<double>), b = T((margin / lambda - M) * simd::log2e<double>);
    const T* s = src;
    T* e_out = w.e;
    const T* pf = prefetch_here() ? ahead : s;
    const auto sums = sum_around<T, 2>(n, y, [&](auto tag, std::size_t i) {
      using V = typename decltype(tag)::type;
      prefetch_at(tag, pf, i);
      const V x = simd::load<V>(s + i);
      const V e = simd::exp2_ftz(simd::fma(x, V(a), V(b)));
      simd::store(e_out + i, e);
      return std::array<V, 2>{e, e * x};
    });
    // the target, without the margin, in double
    const double e_y = std::exp(yh_y / lambda - M);
    e_out[y] = T(e_y);
    sum_e = sums[0] + e_y;
    lse = M + std::log(sum_e);
    pi_y = e_y / sum_e;
    pi_yh = kappa * (sums[1] + e_y * double(s[y])) / sum_e;
    return lambda * (lse - std::log(double(n))) - yh_y;
  }

  // The raw form (scores = logits) in one streaming pass over the row (the other classes'
  // exps into the scratch row, the previous row's recorded gradient written in the same loop);
  // this row's gradient is recorded (LdrScratch::pending). Returns the row's loss.
  double raw(double lambda, double margin, T* grad, double scale, bool stream) {
    ChunkedSoftmax<T>& sm = w.sm;
    sm.reset(n);
    RunningShift<T> running;
    const T* zp = z;
    const T zy = z[y];
    const std::size_t ty = y;
    // softmax(u / lambda) = softmax(w / lambda) with w = z - c e_y (a constant c added to every
    // class changes nothing): the loop takes the other classes' logits as they are (no margin
    // rounded into them) and leaves the target out; its term joins in double below.
    auto others = [=](auto tag, std::size_t i) {
      using V = typename decltype(tag)::type;
      if constexpr (simd::is_batch<V>) simd::prefetch(zp + i + chunk_elems<T>);
      return simd::map_index(V(simd::load<V>(zp + i)), i, ty, [](T) { return -std::numeric_limits<T>::infinity(); });
    };
    const T inv_l = T(1.0 / lambda);
    const LdrScratch<T>& pw = w;
    const bool pout = bool(w.pending);
    for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) LOSSKIT_LAMBDA_INLINE {
      std::array<double, 0> none;
      const T pa = pout ? w.alpha[k] : T(0);
      exp_chunk<T>(
          sm, k, b, e, inv_l, others, w.e, running,
          [](auto tag, std::size_t, const auto&, const auto&, T) { return std::array<typename decltype(tag)::type, 0>{}; },
          none, [&](auto tag, std::size_t i) {
            if (pout) pw.template put<typename decltype(tag)::type>(pa, i);
          });
    });
    if (pout) w.pending.end();
    // Everything at the scale the loop used (1/lambda rounded to T), so the pieces agree:
    //   lse_o = log sum_{k != y} exp(z_k / lambda),  t_y = (z_y - c) / lambda,
    //   lse_w = log(exp(lse_o) + exp(t_y)),  pi_y = exp(t_y - lse_w),  1 - pi_y = exp(lse_o - lse_w)
    //   L = lambda (lse_w - log K) + c - z_y   (lse of u / lambda = lse_w + c / lambda)
    const double inv = double(inv_l), ninf = -std::numeric_limits<double>::infinity();
    const double lse_o = sm.finish(false), t_y = (double(zy) - margin) * inv;
    double lse_w;
    if (std::isnan(lse_o) || std::isnan(t_y))
      lse_w = lse_o + t_y;
    else if (lse_o == ninf || t_y == ninf)
      lse_w = std::max(lse_o, t_y);
    else
      lse_w = std::max(lse_o, t_y) + std::log1p(std::exp(-std::fabs(lse_o - t_y)));
    const double rest = lse_o == ninf ? 0.0 : std::exp(lse_o - lse_w);  // 1 - pi_y, without cancelling
    lse = lse_w + margin * inv;
    yh_y = double(zy);
    pi_y = std::exp(t_y - lse_w);
    if (grad) {  // recorded; the target entry in double, -(1 - pi_y), set last
      w.alpha.resize(chunk_count(n, chunk_elems<T>));
      for (std::size_t k = 0; k < w.alpha.size(); ++k) w.alpha[k] = rest == 0.0 ? T(0) : T(scale * sm.factor_d(k) * rest);
      w.pending.start(grad, n, stream, y, T(-scale * rest));
    }
    return (lse_w - std::log(double(n))) / inv + margin - yh_y;
  }

  // grad = scale * dL/dz (after value()).
  void gradient(T* grad, double scale, bool stream) const {
    const double G = (pi_yh - yh_y) / double(n);  // (1/K) sum_j g_j yh_j
    const double a = scale * kappa;
    const T alpha = T(a / sum_e), beta = T(a * G);
    const T* e_in = w.e;
    const T* d = w.d;
    const T* zp = z;
    switch (norm) {
      case LdrNorm::none:  // raw()
        break;
      case LdrNorm::softplus_l1:  // sigmoid(z) (pi - G)
        write_grad_row<T>(grad, n, stream, [&](auto tag, std::size_t i) {
          using V = typename decltype(tag)::type;
          return simd::load<V>(d + i) * (V(alpha) * simd::load<V>(e_in + i) - V(beta));
        });
        break;
      case LdrNorm::l1:  // pi - sign(z) G
        write_grad_row<T>(grad, n, stream, [&](auto tag, std::size_t i) {
          using V = typename decltype(tag)::type;
          const V x = simd::load<V>(zp + i);
          const V sgn = simd::select(x > V(T(0)), V(T(1)), simd::select(x < V(T(0)), V(T(-1)), V(T(0))));
          return V(alpha) * simd::load<V>(e_in + i) - V(beta) * sgn;
        });
        break;
    }
    // the target entry in double, rounded once (after the row's fence)
    double gy = pi_y - 1.0;
    if (norm == LdrNorm::softplus_l1) {
      gy = double(w.d[y]) * (gy - G);
    } else if (norm == LdrNorm::l1) {
      gy -= (yh_y > 0.0 ? 1.0 : yh_y < 0.0 ? -1.0 : 0.0) * G;
    }
    grad[y] = T(a * gy);
  }
};

template <class T>
struct LdrKlRow {
  RowsView<const T> x;
  Labels labels;
  LdrNorm norm;
  double margin, lambda;
  bool stream;  // gradient written with non-temporal stores (large outputs)

  double operator()(LdrScratch<T>& w, std::ptrdiff_t r, T* grad, double scale) const {
    LdrRow<T> row{x.row(r), std::size_t(x.cols), std::size_t(labels[std::size_t(r)]), norm, w, next_row(x, r)};
    if (norm == LdrNorm::none) return row.raw(lambda, margin, grad, scale, stream);
    row.scores();
    const double loss = row.value(lambda, margin);
    if (grad) row.gradient(grad, scale, stream);
    return loss;
  }
};

template <class X, class G>
inline LossResult ldr_kl_impl(const X& logits, const Labels& labels, G* grad, const LdrKlOptions& o) {
  using T = scalar_of_t<X>;
  const char* fn = "ldr_kl";
  const auto v = check_labeled(fn, logits, labels, grad, o);
  check_positive(fn, "lambda", o.lambda);
  if (!std::isfinite(o.margin)) fail(fn, "'margin' must be finite, got ", o.margin);
  const RowPlan plan = plan_rows(labeled_rows(o, labels), v.x.rows, v.x.cols);
  const LdrNorm norm = o.normalize ? LdrNorm::softplus_l1 : LdrNorm::none;
  const LdrKlRow<T> row{v.x, labels, norm, o.margin, o.lambda, streaming_output<T>(v.x.rows, v.x.cols)};
  const std::size_t n = std::size_t(v.x.cols);
  return run_rows<T>(
      plan, v.x.rows, v.g, [n, norm] { return LdrScratch<T>(n, norm); },
      [&row](LdrScratch<T>& w, std::ptrdiff_t r, T* g, double scale) { return row(w, r, g, scale); },
      [](LdrScratch<T>& w) { w.flush(); });
}

}  // namespace detail

// losskit::ldr_kl(logits, labels, grad, options): the reduced LDR-KL loss (see the top of this
// header) and its gradient w.r.t. the logits, written into `grad` (any writable row-major matrix
// of the logits' shape; it may be the logits themselves).
template <class X, class G, std::enable_if_t<is_rows_v<G>, int> = 0>
inline LossResult ldr_kl(const X& logits, const Labels& labels, G&& grad, const LdrKlOptions& options = {}) {
  return detail::ldr_kl_impl(logits, labels, &grad, options);
}

// Forward only.
template <class X>
inline LossResult ldr_kl(const X& logits, const Labels& labels, const LdrKlOptions& options = {}) {
  return detail::ldr_kl_impl(logits, labels, static_cast<RowMatrix<scalar_of_t<X>>*>(nullptr), options);
}

// ALDR-KL: LDR-KL with one adaptive lambda per training sample (see the top of this header).
//   losskit::AdaptiveLDR aldr(num_samples, /*lambda0=*/1.0);
//   auto r = aldr.loss(logits, labels, ids, grad, {.margin = 0.1, .alpha = 2.0});
// Each counted row visits sample ids[r]: its lambda is updated (update = true), then the loss
// is evaluated with it. Not safe for concurrent calls on one object.
class AdaptiveLDR {
 public:
  explicit AdaptiveLDR(std::size_t num_samples, double lambda0 = 1.0) : lambda0_(lambda0) {
    detail::check_positive("AdaptiveLDR", "lambda0", lambda0);
    lambda_.assign(num_samples, lambda0);
  }

  template <class X, class G, std::enable_if_t<is_rows_v<G>, int> = 0>
  LossResult loss(const X& logits, const Labels& labels, const SampleIds& ids, G&& grad,
                  const AdaptiveLdrOptions& options = {}) {
    return run(logits, labels, ids, &grad, options);
  }

  // Forward only (still updates the state when options.update is true).
  template <class X>
  LossResult loss(const X& logits, const Labels& labels, const SampleIds& ids, const AdaptiveLdrOptions& options = {}) {
    return run(logits, labels, ids, static_cast<RowMatrix<scalar_of_t<X>>*>(nullptr), options);
  }

  std::size_t num_samples() const noexcept { return lambda_.size(); }
  double lambda0() const noexcept { return lambda0_; }
  // lambda_i per sample.
  const std::vector<double>& state() const noexcept { return lambda_; }

  // Replaces the lambdas (one per sample, each positive and finite).
  void load(const std::vector<double>& lambdas) {
    const char* fn = "AdaptiveLDR::load";
    if (lambdas.size() != lambda_.size())
      detail::fail(fn, "'lambdas' has ", lambdas.size(), " entries, expected one per sample (", lambda_.size(), ")");
    for (std::size_t i = 0; i < lambdas.size(); ++i)
      if (!(lambdas[i] > 0.0) || !std::isfinite(lambdas[i]))
        detail::fail(fn, "'lambdas' must be positive and finite, got ", lambdas[i], " at sample ", i);
    lambda_ = lambdas;
  }

  // Binary round trip (exact; native byte order): tag, sample count, lambda0, the lambdas.
  void save(std::ostream& os) const {
    const std::uint64_t n = lambda_.size();
    detail::write_raw(os, kTag, 8);
    detail::write_raw(os, &n, sizeof n);
    detail::write_raw(os, &lambda0_, sizeof lambda0_);
    detail::write_raw(os, lambda_.data(), lambda_.size() * sizeof(double));
  }
  // Restores lambda0 and the lambdas saved by save(); the sample count must match. On any
  // error (std::invalid_argument) the state is unchanged.
  void load(std::istream& is) {
    const char* fn = "AdaptiveLDR::load";
    std::uint64_t n = 0;
    double l0 = 0.0;
    detail::read_tag(fn, is, kTag, "an AdaptiveLDR state stream");
    detail::read_raw(fn, is, &n, sizeof n);
    detail::read_raw(fn, is, &l0, sizeof l0);
    if (n != lambda_.size()) detail::fail(fn, "the stream holds ", n, " samples, this object ", lambda_.size());
    if (!(l0 > 0.0) || !std::isfinite(l0)) detail::fail(fn, "the stream's lambda0 must be positive and finite, got ", l0);
    std::vector<double> l(lambda_.size());
    detail::read_raw(fn, is, l.data(), l.size() * sizeof(double));
    load(l);
    lambda0_ = l0;
  }

 private:
  static constexpr char kTag[9] = "LKALDR01";

  template <class X, class G>
  LossResult run(const X& logits, const Labels& labels, const SampleIds& ids, G* grad, const AdaptiveLdrOptions& o) {
    using T = scalar_of_t<X>;
    const char* fn = "AdaptiveLDR::loss";
    const auto v = detail::check_labeled(fn, logits, labels, grad, o);
    if (v.x.cols < 2) detail::fail(fn, "'logits' has ", v.x.cols, " column, ALDR-KL needs at least 2 classes");
    if (!(o.alpha >= 1.0) || !std::isfinite(o.alpha))
      detail::fail(fn, "'alpha' must be finite and >= 1 (below 1, lambda_i can reach 0), got ", o.alpha);
    if (!std::isfinite(o.margin)) detail::fail(fn, "'margin' must be finite, got ", o.margin);
    detail::RowPlan plan = detail::plan_rows(detail::labeled_rows(o, labels), v.x.rows, v.x.cols);
    detail::check_sample_ids(fn, ids, plan, lambda_.size());
    if (o.update && detail::repeated_ids(ids, plan)) plan.threads = 1;  // visits in row order

    const detail::LdrNorm norm = !o.normalize ? detail::LdrNorm::none
                                 : o.softplus ? detail::LdrNorm::softplus_l1
                                              : detail::LdrNorm::l1;
    const std::size_t n = std::size_t(v.x.cols);
    const double log_k = std::log(double(n)), l0 = lambda0_;
    const double pull = o.alpha * log_k / (2.0 * l0);
    const bool stream = detail::streaming_output<T>(v.x.rows, v.x.cols);
    double* lam = lambda_.data();
    return detail::run_rows<T>(
        plan, v.x.rows, v.g, [n, norm] { return detail::LdrScratch<T>(n, norm); },
        [&](detail::LdrScratch<T>& w, std::ptrdiff_t r, T* g, double scale) {
          detail::LdrRow<T> row{v.x.row(r), n, std::size_t(labels[std::size_t(r)]), norm, w, detail::next_row(v.x, r)};
          double& state = lam[std::size_t(ids[std::size_t(r)])];
          double lambda = state;
          const bool raw = norm == detail::LdrNorm::none;
          if (o.update) w.flush();             // the step's passes overwrite the scratch row
          if (o.update || !raw) row.scores();  // raw scores without a step: one pass (raw())
          if (o.update) {
            lambda = l0 - l0 * row.kl_to_uniform(lambda) / (o.alpha * log_k);
            state = lambda;
          }
          const double penalty = pull * (lambda - l0) * (lambda - l0);
          if (raw) return row.raw(lambda, o.margin, g, scale, stream) - penalty;
          const double loss = row.value(lambda, o.margin) - penalty;
          if (g) row.gradient(g, scale, stream);
          return loss;
        },
        [](detail::LdrScratch<T>& w) { w.flush(); });
  }

  double lambda0_;
  std::vector<double> lambda_;
};

}  // namespace losskit
