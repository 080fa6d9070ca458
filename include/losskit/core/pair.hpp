#pragma once
// A student row and a teacher row, softmaxed together: the shared machinery of every
// divergence (and of distillation losses). Notation, per row, temperature T:
//   q = softmax(s / T), x = log q   (student)      p = softmax(t / T), y = log p   (teacher)
// With Input::log_probs a side is used as given: x = s (resp. y = t), q = exp(x), T must be 1.
//
// A kernel runs three steps over a row:
//   1. stats():   one pass over memory; per chunk, exps of both rows into scratch (es, et)
//                 against the running maxima of the rows,
//                 and optional sums of the kernel's own riding in the same loop.
//   2. its own element pass, if any (element_pass(): the body gets q_i, p_i and x_i - y_i),
//      over scratch and the rows (L2), which overwrites et with its log-space gradient
//      g_i = dL/dx_i.
//   3. write_grad(): the student gradient from g (log-space chain rule):
//        logits:     dL/ds_j = (g_j - q_j * sum_i g_i) / T
//        log_probs:  dL/ds_j = g_j
//      with g_j = G_j * gfac_k read from a scratch row G and one factor per chunk.
//
// Pipelined rows (PairScratch built with `pipelined`, as run_pair does): write_grad() only
// records the row's per-chunk coefficients; the gradient goes out inside the next row's stats()
// loop, at the same index, so the stores overlap that row's exps instead of running as a pass
// of their own with the core waiting on memory. There is one set of scratch rows: at each index
// the loop reads the recorded row's scratch values before it stores the new row's (read before
// write, element by element), so the pipelining costs no scratch and the rows stay in L2 at wide
// vocabularies. flush() writes a recorded row that nothing picked up (the last row of a
// thread). After write_grad() / defer_grad() a kernel must not write the scratch rows.

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "losskit/core/simd.hpp"
#include "losskit/core/fast_exp2.hpp"
#include "losskit/core/pending.hpp"
#include "losskit/core/scratch.hpp"
#include "losskit/core/softmax.hpp"
#include "losskit/core/types.hpp"

namespace losskit::detail {

template <class T>
struct PairScratch {
  T* es;  // exps of the student row
  T* et;  // exps of the teacher row (or a kernel's log-space gradient)
  T* ex;  // one spare row, for kernels that ask for it
  ChunkedSoftmax<T> q, p, m;  // student, teacher, and one more for kernels that need it
  std::vector<double> chunk;  // one value per chunk for a kernel's `extra` hook

  // A gradient row recorded by a pipelined write_grad, not yet written (core/pending.hpp):
  //   out_i = alpha_k E_i + beta_k G_i (+ gamma_k H_i)   over chunk k
  // (E, G and optionally H scratch rows, E = es unless a kernel names another; H: a kernel with
  // a third softmax, Third::student_at_one), then optionally one entry out[fix] = fix_value
  // (computed apart, e.g. in double; set after the streamed row is fenced).
  static constexpr std::size_t no_fix = PendingRow<T>::no_fix;
  struct Pending {
    PendingRow<T> row;
    const T* es = nullptr;
    const T* G = nullptr;
    const T* H = nullptr;
    std::vector<T> alpha, beta, gamma;
    // out_i with chunk k's coefficients a = alpha_k, c = beta_k (one mul and one fma).
    template <class V>
    V value(T a, T c, std::size_t i) const {
      return simd::fma(simd::load<V>(es + i), V(a), V(c) * simd::load<V>(G + i));
    }
    // The same with the third row, g = gamma_k (two fmas and a mul).
    template <class V>
    V value(T a, T c, T g, std::size_t i) const {
      return simd::fma(simd::load<V>(es + i), V(a), simd::fma(simd::load<V>(G + i), V(c), V(g) * simd::load<V>(H + i)));
    }
  } pending;
  bool pipelined = false;

  explicit PairScratch(std::ptrdiff_t cols, bool spare = false, bool pipelined_rows = false)
      : pipelined(pipelined_rows) {
    const std::size_t n = std::size_t(cols), per = spare ? 3 : 2;
    T* base = scratch<T>(n * per);
    es = base;
    et = base + n;
    ex = spare ? base + 2 * n : nullptr;
  }
  // Records `out` as the pending gradient row (coefficients per chunk from alpha(k), beta(k);
  // the entry `fix` set to fix_value last). Call it after this row's stats(), which wrote
  // the previous pending row. Not pipelined: written
  // right away.
  template <class Alpha, class Beta>
  void defer_grad(T* out, std::size_t n, bool stream, const T* E, const T* G, Alpha&& alpha, Beta&& beta,
                  std::size_t fix = no_fix, T fix_value = T(0)) {
    defer_grad(out, n, stream, E, G, nullptr, alpha, beta, [](std::size_t) { return 0.0; }, fix, fix_value);
  }
  template <class Alpha, class Beta>
  void defer_grad(T* out, std::size_t n, bool stream, const T* G, Alpha&& alpha, Beta&& beta) {
    defer_grad(out, n, stream, es, G, alpha, beta);
  }
  // With a third row H (gamma(k) its coefficients; H = nullptr: none).
  template <class Alpha, class Beta, class Gamma>
  void defer_grad(T* out, std::size_t n, bool stream, const T* E, const T* G, const T* H, Alpha&& alpha, Beta&& beta,
                  Gamma&& gamma, std::size_t fix, T fix_value);
  void end_pending() { pending.row.end(); }
  // Writes the pending row, if any, as one pass of its own.
  void flush() {
    const Pending& d = pending;
    pending.row.flush([&d](auto tag, std::size_t i) {
      using V = typename decltype(tag)::type;
      const std::size_t k = i / chunk_elems<T>;
      d.row.put(i, d.H ? d.template value<V>(d.alpha[k], d.beta[k], d.gamma[k], i) : d.template value<V>(d.alpha[k], d.beta[k], i));
    });
  }
};

template <class T>
template <class Alpha, class Beta, class Gamma>
inline void PairScratch<T>::defer_grad(T* out, std::size_t n, bool stream, const T* E, const T* G, const T* H,
                                       Alpha&& alpha, Beta&& beta, Gamma&& gamma, std::size_t fix, T fix_value) {
  // The previous row's gradient must be out already (stats() or flush() wrote it while
  // this row's scratch replaced its own): flushing it here would read overwritten scratch.
  assert(!pending.row && "losskit: defer_grad() before the pending row was written");
  auto& d = pending;
  const std::size_t chunks = chunk_count(n, chunk_elems<T>);
  d.alpha.resize(chunks);
  d.beta.resize(chunks);
  d.gamma.resize(H ? chunks : 0);
  for (std::size_t k = 0; k < chunks; ++k) {
    d.alpha[k] = T(alpha(k));
    d.beta[k] = T(beta(k));
    if (H) d.gamma[k] = T(gamma(k));
  }
  d.row.start(out, n, stream, fix, fix_value);
  d.es = E;
  d.G = G;
  d.H = H;
  if (!pipelined) flush();
}

// {a, b, x[0], ..., x[K-1], tail...} as one aggregate (keeps the accumulators in registers).
template <class V, class X, std::size_t... J, class... Tail>
inline std::array<V, sizeof...(J) + 2 + sizeof...(Tail)> prepend(const V& a, const V& b, const X& x,
                                                                 std::index_sequence<J...>, const Tail&... tail) {
  return {a, b, x[J]..., tail...};
}

// A third softmax that PairRow::stats can take in the same loop (see there).
enum class Third { none, student_at_one, sum };

template <class T>
struct PairRow {
  const T* s;
  const T* t;
  std::size_t n;
  T inv_t;
  bool student_log_probs;
  bool teacher_log_probs;
  PairScratch<T>& w;
  bool stream = false;  // write the gradient with non-temporal stores (large outputs)

  // Step 1: one pass over memory. Per chunk, one loop taking both exps (stored in es, et)
  // against the rows' running maxima (core/softmax.hpp), their sums and maxima, plus K sums of a kernel's own,
  // extra(lanes<V>, i, s_i, t_i, es_i, et_i) -> std::array<V, K>, computed while everything is
  // in registers. Chunk k's extra sums land in w.chunk[k * K + j] (relative to the chunk's
  // shifts: multiply by the chunk factors to merge). extra is called once per index, and again
  // for every index of a chunk that is redone: an extra with side effects undoes them in
  // restart(first), which is called before each try at a chunk (first = false before a redo). With KeepTeacher = false the teacher's
  // exps are not stored: et is free for the kernel's extra to store a row of its own. A third
  // softmax (exps into ex, statistics into w.m) rides along with Third::student_at_one (the
  // student at temperature 1: temperature KD's hard term; same shifts as the student) or
  // Third::sum (softmax((s + t) / 2T), Cauchy-Schwarz: a running maximum of its own).
  template <std::size_t K, bool KeepTeacher = true, Third third = Third::none, class Extra,
            class Restart = void (*)(bool)>
  void stats(Extra&& extra, Restart&& restart = [](bool) {}) {
    constexpr bool three = third != Third::none;
    w.q.reset(n);
    w.p.reset(n);
    if constexpr (three) w.m.reset(n);
    w.chunk.assign(chunk_count(n, chunk_elems<T>) * K, 0.0);
    const T* sp = s;
    const T* tp = t;
    T* es = w.es;
    T* et = w.et;
    [[maybe_unused]] T* ex = w.ex;
    const T it = inv_t;
    // The previous row's gradient (pipelined), written at the indices this loop visits.
    auto& d = w.pending;
    if (d.row && d.row.n != n) w.flush();
    const PendingRow<T> pr = d.row;  // a local copy: the float stores below cannot change it
    const bool pout = bool(pr);
    // Running maxima of the rows over the chunks so far: each chunk's exps are taken against
    // them (core/softmax.hpp).
    RunningShift<T> S, U, M;  // student, teacher, the third (Third::sum)
    // exp((v - shift) / T) = 2^((v - shift) c), c = log2(e) / T. The difference is taken
    // first (exact near the maximum): folding -shift c into an fma would round it once per
    // chunk, an error of ~1e-6 for logits near 30 that no recorded shift accounts for.
    const T c = it * simd::log2e<T>;
    // The third softmax's scale, its inverse temperature, and the largest scale applied to
    // the student's shift.
    const T c3 = third == Third::sum ? c / T(2) : simd::log2e<T>, it3 = third == Third::sum ? it / T(2) : T(1);
    const T cs = third == Third::student_at_one ? simd::vmax(c, c3) : c;
    const auto sum_row = [sp, tp](auto tag, std::size_t i) {
      using V = typename decltype(tag)::type;
      return simd::load<V>(sp + i) + simd::load<V>(tp + i);
    };
    // A kernel with the student at T = 1 as its third softmax (kd_loss) records its rows with a
    // third row (H = ex); every other kernel with two.
    constexpr bool three_rows = third == Third::student_at_one;
    assert(!pout || bool(d.H) == three_rows);
    for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) LOSSKIT_LAMBDA_INLINE {
      const T pa = pout ? d.alpha[k] : T(0), pb = pout ? d.beta[k] : T(0);
      [[maybe_unused]] const T pg = three_rows && pout ? d.gamma[k] : T(0);
      S.start(sp, b, e);
      U.start(tp, b, e);
      if constexpr (third == Third::sum) M.start(b, e, sum_row);
      RunningShift<T>& R3 = third == Third::sum ? M : S;  // the third softmax's shift
      bool put = pout;
      restart(true);
      for (;;) {
        const T ss = S.shift, st = U.shift, sm = R3.shift;
        const auto sums = simd::sum_lanes<T, K + 2 + (three ? 1 : 0)>(b, e, [&](auto tag, std::size_t i) {
          using V = typename decltype(tag)::type;
          const V sv = simd::load<V>(sp + i), tv = simd::load<V>(tp + i);
          [[maybe_unused]] const V mv = third == Third::sum ? sv + tv : sv;
          if constexpr (simd::is_batch<V>) {  // the next chunk streams in while this one computes
            simd::prefetch(sp + i + chunk_elems<T>);
            simd::prefetch(tp + i + chunk_elems<T>);
          }
          S.see(sv);
          U.see(tv);
          if constexpr (third == Third::sum) M.see(mv);
          if (put) {  // read before this row's stores at i
            if constexpr (three_rows)
              pr.put(i, d.template value<V>(pa, pb, pg, i));
            else
              pr.put(i, d.template value<V>(pa, pb, i));
          }
          const V ev = simd::exp2_ftz((sv - V(ss)) * V(c)), fv = simd::exp2_ftz((tv - V(st)) * V(c));
          simd::store(es + i, ev);
          if constexpr (KeepTeacher) simd::store(et + i, fv);
          if constexpr (three) {
            const V e3 = simd::exp2_ftz((mv - V(sm)) * V(c3));
            simd::store(ex + i, e3);
            return prepend(ev, fv, extra(tag, i, sv, tv, ev, fv), std::make_index_sequence<K>{}, e3);
          } else {
            return prepend(ev, fv, extra(tag, i, sv, tv, ev, fv), std::make_index_sequence<K>{});
          }
        });
        if (S.fits(cs) && U.fits(c) && (third != Third::sum || M.fits(c3))) {
          w.q.record(k, ss, it, S.fixed(sums[0], c, it));  // (the largest terms exact)
          w.p.record(k, st, it, U.fixed(sums[1], c, it));
          for (std::size_t j = 0; j < K; ++j) w.chunk[k * K + j] = sums[j + 2];
          if constexpr (three) w.m.record(k, sm, it3, R3.fixed(sums[K + 2], c3, it3));
          S.accept();
          U.accept();
          if constexpr (third == Third::sum) M.accept();
          return;
        }
        // The chunk climbs more than a factor 16 above the rows so far: again against the new
        // maxima (the pending row's entries here are out already). An extra is called again
        // for every index of the chunk (see stats() above).
        put = false;
        restart(false);
        S.retry();
        U.retry();
        if constexpr (third == Third::sum) M.retry();
      }
    });
    if (pout) w.end_pending();
    w.q.finish(student_log_probs);
    w.p.finish(teacher_log_probs);
    if constexpr (three) w.m.finish(third == Third::student_at_one && student_log_probs);
  }
  void stats() {
    stats<0>([](auto, std::size_t, const auto&, const auto&, const auto&, const auto&) { return std::array<int, 0>{}; });
  }

  T lse_gap() const { return T(w.q.lse() - w.p.lse()); }  // lse_q - lse_p

  // Steps 2 and 3 for the common case: body(lanes<V>, q_i, p_i, x_i - y_i) -> {loss term, g_i}
  // over the row (g_i the log-space gradient, kept in the et row), then the gradient from g.
  // Returns the row sums of both. Everything the loop reads besides the rows is a local copy
  // (the body should capture by value too): the stores into the g row are float stores, which
  // the compiler must otherwise assume can change any float reached through a reference, and it
  // would reload every scale factor from memory for every vector.
  template <class Body>
  std::array<double, 2> element_pass(T* grad, double scale, Body&& body) const {
    T* const g = w.et;
    const T* const sp = s;
    const T* const tp = t;
    const T* const es = w.es;
    const T it = inv_t, gap = lse_gap();
    std::array<double, 2> total{};
    for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) {
      const T fq = w.q.factor(k), fp = w.p.factor(k);
      const auto part = simd::sum_lanes<T, 2>(b, e, [=](auto tag, std::size_t i) {
        using V = typename decltype(tag)::type;
        const V q = simd::load<V>(es + i) * V(fq), p = simd::load<V>(g + i) * V(fp);
        // x - y = (s - t) / T - (lse_q - lse_p): no large logs cancel (unused ones cost nothing)
        const V d = (simd::load<V>(sp + i) - simd::load<V>(tp + i)) * V(it) - V(gap);
        const auto v = body(tag, q, p, d);
        simd::store(g + i, v[1]);
        return v;
      });
      total[0] += part[0];
      total[1] += part[1];
    });
    if (grad) write_grad(grad, scale, g, [](std::size_t) { return 1.0; }, total[1]);
    return total;
  }

  // Step 3. grad_j = scale * (logits: (g_j - q_j * sum_g) / T; log_probs: g_j), g_j = G_j * gfac(k).
  // Pipelined: recorded here, written by the next stats() (or flush()).
  template <class GFactor>
  void write_grad(T* grad, double scale, const T* G, GFactor&& gfac, double sum_g) const {
    const bool logits = !student_log_probs;
    const double a = logits ? scale * double(inv_t) : scale;
    w.defer_grad(
        grad, n, stream, G, [&](std::size_t k) { return logits ? -a * sum_g * w.q.factor_d(k) : 0.0; },
        [&](std::size_t k) { return a * double(gfac(k)); });
  }
};

}  // namespace losskit::detail
