#pragma once
// KL-Top (OSTQuant): the KL divergence restricted to the teacher's top-k classes of each row.
// Per row, with q = softmax(s / T), p = softmax(t / T) over the full vocabulary, x = log q,
// y = log p, and S = the k classes with the largest teacher logits:
//   full form (renormalize = false; OSTQuant's `kl_top` with post_attn = True):
//     L = sum_{i in S} p_i (y_i - x_i)                 (not a divergence: sum_S p_i < 1)
//     dL/ds_j = (P_S q_j - p_j [j in S]) / T,  P_S = sum_{i in S} p_i
//   renormalised form (renormalize = true; post_attn = False):
//     L = KL(p^S || q^S),  p^S = p_S / P_S, q^S = q_S / Q_S  (= KL(softmax(t_S/T) || softmax(s_S/T)))
//     dL/ds_j = (q^S_j - p^S_j) [j in S] / T           (zero outside S)
// computed as  L_full = sum_S p_i (t_i - s_i) / T - P_S (lse_p - lse_q)  and
// L_renorm = L_full / P_S + log(Q_S / P_S). With k >= V, S is every class and both forms equal
// kl_div. With log-probability inputs (T = 1) x and y are the given rows, the gradient is w.r.t.
// them: -p_j [j in S] (full) and (q_j / Q_S - p_j / P_S) [j in S] (renormalised).
//
// S: the first k classes in the order (teacher logit descending, index ascending), so ties at
// the threshold go to the lower class index, deterministically (torch.topk, which the reference
// uses, leaves the choice among ties unspecified). k larger than V is clamped to
// V (every class; vocabularies differ between models and the default k = 1000 must work on a
// small one); k < 1 is an error. Selection is exact and O(V) per row, not a sort
// (core/select.hpp): a bracket for the k-th largest teacher logit from a ~512-entry sample,
// the entries in the bracket copied out during the streaming statistics pass, bisection over
// them. NaN teacher logits are never selected (the row's loss is NaN anyway).
// Passes per row: the streaming pass over both rows (softmax statistics, bracket copy; the
// previous row's gradient goes out in it); the sums over S come from the band when it holds all
// of S, else from a pass over the row (scratch rows and logits, in L2) that also zeroes the exps
// outside S when there is a gradient (with the band's sums, a pass in L2 of its own does); the
// gradient, alpha_k q + beta_k p of those rows, is written during the next row's streaming pass
// (core/pair.hpp).
//
// Reference: OSTQuant's trainer (`--loss_type=kl_top`, k = 1000; `kl_top_K` for other k; read
// from public copies of its code, see shared/reference/formulas.md section 9), whose
// reduction is F.kl_div(..., 'batchmean') over the flattened rows = our Reduction::mean; it has
// no temperature (T = 1 here by default). Conventions as kl_div: 0 log 0 = 0, teacher mass in S
// where the student is -inf gives +inf; ignored rows, weights, reductions, threads, T^2 as the
// divergences (DivergenceOptions' fields, plus k and renormalize).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "losskit/core/checks.hpp"
#include "losskit/core/pair_loss.hpp"
#include "losskit/core/select.hpp"

namespace losskit {

// Options of topk_kl_div: DivergenceOptions' fields (without beta / skew_alpha) plus k and
// renormalize. C++20: {.k = 100, .renormalize = true}.
struct TopkKlOptions {
  std::int64_t k = 1000;            // teacher top-k per row; clamped to the number of classes
  bool renormalize = false;         // false: full-vocabulary probabilities restricted to S;
                                    // true: KL between the softmaxes over S only
  double temperature = 1.0;         // both inputs are divided by T before the softmax
  bool scale_by_t_squared = false;  // multiply loss and gradient by T^2
  Reduction reduction = Reduction::mean;
  Labels labels{};                  // optional, one per row; rows equal to ignore_index are skipped
  std::int64_t ignore_index = -100;
  Weights weights{};                // optional per-row weights or 0/1 mask
  double grad_scale = 1.0;          // upstream gradient of the reduced loss
  double normalizer = 0.0;          // > 0: divide by this instead (e.g. a global token count)
  int threads = 1;                  // 0: all hardware threads; results never depend on it
  Input student_input = Input::logits;
  Input teacher_input = Input::logits;
};

namespace detail {

struct TopkKlDiv {
  static constexpr const char* name = "topk_kl_div";
  static constexpr bool spare_row = true;  // the selection's work buffer
  static void check(const char* fn, const TopkKlOptions& o) {
    if (o.k < 1) fail(fn, "'k' must be >= 1, got ", o.k);
  }

  template <class T>
  static double row(PairRow<T>& r, T* grad, double scale, const TopkKlOptions& o) {
    return o.renormalize ? row_as<true>(r, grad, scale, o) : row_as<false>(r, grad, scale, o);
  }

  template <bool Renorm, class T>
  static double row_as(PairRow<T>& r, T* grad, double scale, const TopkKlOptions& o) {
    const std::size_t n = r.n, k = std::size_t(std::min<std::int64_t>(o.k, std::int64_t(n)));
    T* work = r.w.ex;
    TopkCut<T> cut;
    double P = 0.0, W = 0.0, Q = 0.0;  // over S: sum p, sum p (t - s), sum q
    bool summed = false;               // P, W, Q known without a pass over the row
    thread_local std::vector<T> s_band;
    if (topk_sampled<T>(n, k)) {
      // A bracket for the k-th largest teacher logit from a sample; then, riding in the
      // streaming statistics pass while the rows come in from memory, the entries in the
      // bracket are copied (teacher and student logits) and those above it counted; then the
      // selection. When the band holds all of S (nothing above it), the sums over S come from
      // the band; otherwise a pass over the row computes them.
      if (s_band.size() < n) s_band.resize(n);
      T* sb = s_band.data();
      TopkBand<T> band;
      band.bracket = sample_bracket(r.t, n, k, work);
      const TopkBracket<T> b = band.bracket;
      std::size_t m = 0, m_at = 0;
      r.template stats<1>(
          [&](auto, std::size_t, const auto& sv, const auto& tv, const auto&, const auto&) {
            using V = std::decay_t<decltype(tv)>;
            m += simd::append_in_range(work + m, tv, b.lo, b.hi, sb + m, &sv);
            return std::array<V, 1>{simd::where(tv >= V(b.hi), V(T(1)))};
          },
          [&](bool first) {  // a redone chunk appends its entries again: drop the first try's
            if (first)
              m_at = m;
            else
              m = m_at;
          });
      double above = 0.0;
      for (const double c : r.w.chunk) above += c;
      band.above = std::size_t(above);
      band.m = m;
      cut = finish_cut(r.t, n, k, band, work);
      // finish_cut widens the bracket (and copies the teacher logits again) when it missed
      if (band.above == 0 && band.m == m && band.bracket.lo == b.lo && band.bracket.hi == b.hi) {
        // The members in the band: p = exp((t - tmax) / T) exp(tmax / T - lse_p), q likewise.
        auto band_max = [](const T* v, std::size_t len) {
          return simd::max_lanes<T>(0, len, [v](auto tag, std::size_t i) { return simd::load<typename decltype(tag)::type>(v + i); });
        };
        const T tmax = band_max(work, m), smax = band_max(sb, m), c = r.inv_t * simd::log2e<T>;
        const auto x = band_member_sums<T, Renorm ? 3 : 2>(work, m, k, cut, [&](auto tag, std::size_t j, const auto& tv) {
          using V = typename decltype(tag)::type;
          const V sv = simd::load<V>(sb + j), p = simd::exp2((tv - V(tmax)) * V(c));
          const V pw = simd::where(p > V(T(0)), p * (tv - sv));
          if constexpr (Renorm) {
            return std::array<V, 3>{p, pw, simd::exp2((sv - V(smax)) * V(c))};
          } else {
            return std::array<V, 2>{p, pw};
          }
        });
        const double fp = std::exp(double(tmax) * double(r.inv_t) - r.w.p.lse());
        P = fp * x[0];
        W = fp * x[1];
        if constexpr (Renorm) Q = std::exp(double(smax) * double(r.inv_t) - r.w.q.lse()) * x[2];
        summed = true;
      }
    } else {
      r.stats();
      cut = topk_cut(r.t, n, k, work);
    }
    const T th = cut.threshold;
    const T* s = r.s;
    const T* t = r.t;
    T* const es = r.w.es;
    T* const et = r.w.et;
    const bool masked = grad != nullptr && !summed;  // the sums pass zeroes the exps outside S too
    if (!summed) {  // a pass over the row for the sums over S
      P = W = Q = 0.0;
      for_chunks<T>(n, [&](std::size_t kc, std::size_t b, std::size_t e) {
        std::array<double, 3> part{};
        for_member_ranges(cut, b, e, [&](std::size_t b2, std::size_t e2, bool incl) {
          constexpr std::size_t K = Renorm ? 3 : 2;
          const auto x = simd::sum_lanes<T, K>(b2, e2, [&](auto tag, std::size_t i) {
            using V = typename decltype(tag)::type;
            const V tv = simd::load<V>(t + i), p = simd::load<V>(et + i);
            const auto in = member_mask(tv, th, incl);
            const V ps = simd::where(in, p), pw = simd::where(ps > V(T(0)), p * (tv - simd::load<V>(s + i)));
            if (masked) simd::store(et + i, ps);
            if constexpr (Renorm) {
              const V qs = simd::where(in, simd::load<V>(es + i));
              if (masked) simd::store(es + i, qs);
              return std::array<V, 3>{ps, pw, qs};
            } else {
              return std::array<V, 2>{ps, pw};
            }
          });
          for (std::size_t j = 0; j < K; ++j) part[j] += x[j];
        });
        P += r.w.p.factor_d(kc) * part[0];
        W += r.w.p.factor_d(kc) * part[1];
        if constexpr (Renorm) Q += r.w.q.factor_d(kc) * part[2];
      });
    }
    const double full = double(r.inv_t) * W - P * (r.w.p.lse() - r.w.q.lse());
    const double value = Renorm ? full / P + std::log(Q / P) : full;

    if (grad) {
      // g = C q + [in S] (A q - B p): full: A = 0, B = a, C = a P_S (0 for log-prob students);
      // renormalised: A = a / Q_S, B = a / P_S, C = 0; a = scale / T, per chunk times its
      // factors. The exps outside S are zeroed where a member mask applies (p always, q when
      // renormalised): by the sums pass when there was one, else in a pass over the scratch
      // rows (L2); the gradient is then the rows' alpha_k q + beta_k p, written during the next
      // row's pass like every divergence's.
      if (!masked)
        for_chunks<T>(n, [&](std::size_t, std::size_t b, std::size_t e) {
          for_member_ranges(cut, b, e, [&](std::size_t b2, std::size_t e2, bool incl) {
            simd::for_lanes<T>(b2, e2, [&](auto tag, std::size_t i) {
              using V = typename decltype(tag)::type;
              const auto in = member_mask(simd::load<V>(t + i), th, incl);
              simd::store(et + i, simd::where(in, simd::load<V>(et + i)));
              if constexpr (Renorm) simd::store(es + i, simd::where(in, simd::load<V>(es + i)));
            });
          });
        });
      const double a = scale * double(r.inv_t);
      const bool logits = !r.student_log_probs;
      r.w.defer_grad(
          grad, n, r.stream, et,
          [&](std::size_t kc) {
            const double qf = r.w.q.factor_d(kc);
            return Renorm ? a * qf / Q : (logits ? a * P * qf : 0.0);
          },
          [&](std::size_t kc) { return -a * r.w.p.factor_d(kc) / (Renorm ? P : 1.0); });
    }
    return value;
  }
};

}  // namespace detail

// losskit::topk_kl_div(student, teacher[, grad], options) -> LossResult
//   (options.k, default 1000; options.renormalize, default false)
LOSSKIT_PAIR_LOSS_WITH_OPTIONS(topk_kl_div, detail::TopkKlDiv, ::losskit::TopkKlOptions)

}  // namespace losskit
