#pragma once
// Cross entropy over hard labels, with PyTorch's and Liger-Kernel's options, per row r with
// label y (rows whose label is ignore_index are skipped: loss 0, gradient exactly 0, logits
// never read). Notation: z the row's logits, V classes, eps = label_smoothing, c = z_loss,
// w the class weights (`weight`, all 1 when absent), W = sum_i w_i.
//
//   s_i   = cap tanh(z_i / cap)                    (softcap > 0; else s_i = z_i)
//   lse   = log sum_i exp(s_i),   p_i = exp(s_i - lse)
//   CE    = (1 - eps) w_y (lse - s_y) + (eps / V) sum_i w_i (lse - s_i)
//         = (1 - eps) w_y (lse - s_y) + (eps / V) (W lse - sum_i w_i s_i)
//   Z     = c lse^2                                (PaLM / ST-MoE auxiliary z-loss)
//   dCE/ds_j = p_j ((1 - eps) w_y + eps W / V) - (eps / V) w_j - (1 - eps) w_y [j = y]
//   dZ/ds_j  = 2 c lse p_j
//   dz_j     = ds_j (1 - (s_j / cap)^2)           (softcap chain rule; else dz_j = ds_j)
//
// Reductions (w_r = per-row `weights`, 1 when absent, 0 for ignored rows; D = `normalizer`
// when > 0, else as below):
//   mean: value = sum_r w_r CE_r / D_ce + sum_r w_r Z_r / D_z,  D_ce = sum_r w_r w_{y_r},
//         D_z = sum_r w_r   (PyTorch divides the class-weighted loss by the sum of the target
//         classes' weights; the z-loss is not class-weighted and is divided by the counted rows,
//         as in Liger-Kernel's lse_square_scale)
//   sum:  value = sum_r w_r (CE_r + Z_r);   none: per_row_r = w_r (CE_r + Z_r), value their sum.
// The gradient is that of `value`, times grad_scale. A mean over a zero weight sum is 0 with a
// zero gradient (per term: D_ce = 0 drops the cross-entropy term, D_z = 0 drops everything),
// never NaN (PyTorch gives NaN).
//
// Side outputs from the same pass: the z-loss part of `value` (CrossEntropyResult::z_loss, already
// included in `value`, as Liger's return_z_loss), token accuracy (argmax of s, first index on
// ties as torch.argmax, equal to the label, over the counted rows, unweighted), and per-row
// lse of s (return_lse).
//
// References: torch.nn.functional.cross_entropy(weight, ignore_index, reduction,
// label_smoothing) is matched exactly, for `mean` over [rows, V] inputs too; the z-loss and
// softcap follow Liger-Kernel's ops/cross_entropy.py (lse_square_scale, softcap: the accuracy's
// argmax is taken over the capped logits, as there).
// Conventions: -inf logits are legal. A -inf target logit gives loss +inf for that row (finite
// gradient; other rows unaffected). With label_smoothing > 0 a -inf logit anywhere in a row
// makes its loss +inf, as in PyTorch (the smoothed target puts mass on every class), unless that
// class's weight is 0: a term whose coefficient is 0 contributes 0, even with a -inf logit
// (PyTorch gives NaN there). A row of only -inf logits, NaN or +inf give NaN.
//
// Numerics and speed: one streaming pass over each row in chunks of 8 KiB. Per chunk, one loop
// takes exp(s_i - m_k) relative to the chunk's max m_k (stored in a scratch row; one exp per
// element, plus one tanh with softcap), sums it and the smoothing sums, and already loads the
// next chunk for its max, so memory traffic overlaps the arithmetic; the argmax is searched for
// once per row, in the first chunk holding the row's max. lse and the per-chunk factors come from
// ChunkedSoftmax (core/softmax.hpp). The gradient g_j = ex_j alpha_k - C w_j of a row is written
// while the next row is read (rows are pipelined: at each index the previous row's exp is read
// before the next row's replaces it, so one scratch row serves both; with softcap the capped
// logits need two, as the next chunk's are computed ahead; the last row of a thread is written
// by run_rows' finish hook), with non-temporal stores for outputs of 8 MB and
// more. `grad` may be the logits themselves: a row's gradient is written only after that row has
// been read. The target entry is computed in double and rounded once (p_y - 1 cancels as
// p_y -> 1); sums are kept in T lanes within a chunk and in double across chunks.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "losskit/core/checks.hpp"
#include "losskit/core/fast_exp2.hpp"
#include "losskit/core/labeled.hpp"
#include "losskit/core/labels.hpp"
#include "losskit/core/pending.hpp"
#include "losskit/core/rows.hpp"
#include "losskit/core/scratch.hpp"
#include "losskit/core/simd.hpp"
#include "losskit/core/softmax.hpp"
#include "losskit/core/types.hpp"
#include "losskit/core/views.hpp"

namespace losskit {

// Options of cross_entropy. Names and defaults follow torch.nn.functional.cross_entropy and
// Liger-Kernel's LigerCrossEntropyLoss. C++20: {.ignore_index = -100, .label_smoothing = 0.1,
// .z_loss = 1e-4}.
struct CrossEntropyOptions {
  Reduction reduction = Reduction::mean;
  std::int64_t ignore_index = -100;  // rows with this label: loss 0, gradient 0, not counted
  Weights weight{};                  // optional class weights, one per class (PyTorch `weight`)
  double label_smoothing = 0.0;      // in [0, 1]: eps / V on every class, target included
  double z_loss = 0.0;               // coefficient c of c * lse^2 (Liger lse_square_scale; PaLM 1e-4)
  double softcap = 0.0;              // > 0: logits become softcap * tanh(z / softcap) (Gemma 2)
  Weights weights{};                 // optional per-row weights or 0/1 mask
  double grad_scale = 1.0;           // upstream gradient of the reduced loss
  double normalizer = 0.0;           // > 0: divide by this instead (e.g. a global token count)
  int threads = 1;                   // 0: all hardware threads; results never depend on it
  bool return_lse = false;           // fill CrossEntropyResult::lse
};

struct CrossEntropyResult : LossResult {
  // value: cross entropy plus z-loss, reduced. denominator: D_ce (see the top of this header).
  double z_loss = 0.0;         // the z-loss part of value (already included in it)
  double accuracy = 0.0;       // correct / count (0 when no row counts)
  std::int64_t correct = 0;    // counted rows whose argmax equals the label
  Eigen::VectorXd lse;         // return_lse: per-row log-sum-exp of the (capped) logits; 0 for
                               // rows that do not count
};

namespace detail {

// First index in [b, e) where v equals m (m must occur there).
template <class T>
inline std::size_t first_index_of(const T* v, std::size_t b, std::size_t e, T m) {
  alignas(64) static const std::array<T, 64> iota = [] {
    std::array<T, 64> a{};
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = T(i);
    return a;
  }();
  static_assert(simd::width<T> <= 64, "losskit: wider SIMD than expected");
  const T none = -std::numeric_limits<T>::infinity();
  // max of -(i - b) over the matches = -(first match - b); offsets < 8192 are exact in T.
  const T neg = simd::max_lanes<T>(b, e, [&](auto tag, std::size_t i) {
    using V = typename decltype(tag)::type;
    const V at = V(T(i - b)) + simd::load<V>(iota.data());
    return simd::select(simd::load<V>(v + i) == V(m), -at, V(none));
  });
  return neg == none ? b : b + std::size_t(-neg);  // (no match only with NaN in the chunk)
}

// Sums K quantities body(lanes<V>, i) -> std::array<V, K> over [b, e) (at most one 8 KiB chunk:
// T lanes, then double), and in the same loop the maximum of next(lanes<V>, j) over the next
// chunk [nb, ne) (ne - nb <= e - b; -inf if empty): its loads are in flight while this chunk's
// arithmetic runs, instead of stalling a separate pass. next() is called once per j.
template <class T, std::size_t K, class Body, class Next>
inline std::array<double, K> sum_and_next_max(std::size_t b, std::size_t e, std::size_t nb, std::size_t ne, Body&& body,
                                              Next&& next, T& next_max) {
  using B = simd::batch<T>;
  constexpr std::size_t W = simd::width<T>;
  const T ninf = -std::numeric_limits<T>::infinity();
  std::array<B, K> a0, a1;
  a0.fill(B(T(0)));
  a1.fill(B(T(0)));
  B m0(ninf), m1(ninf);
  const std::size_t len = e - b, nlen = ne - nb;
  std::size_t o = 0, done = 0;  // [nb, nb + done) of the next chunk is in m0, m1
  for (; o + 2 * W <= len; o += 2 * W) {
    const auto v0 = body(simd::lanes<B>{}, b + o);
    const auto v1 = body(simd::lanes<B>{}, b + o + W);
    for (std::size_t k = 0; k < K; ++k) {
      a0[k] += v0[k];
      a1[k] += v1[k];
    }
    if (o + 2 * W <= nlen) {
      m0 = simd::vmax(next(simd::lanes<B>{}, nb + o), m0);
      m1 = simd::vmax(next(simd::lanes<B>{}, nb + o + W), m1);
      done = o + 2 * W;
    }
  }
  if (o + W <= len) {
    const auto v0 = body(simd::lanes<B>{}, b + o);
    for (std::size_t k = 0; k < K; ++k) a0[k] += v0[k];
    o += W;
  }
  std::array<double, K> total{};
  for (std::size_t k = 0; k < K; ++k) total[k] = double(simd::hsum(a0[k] + a1[k]));
  for (; o < len; ++o) {
    const auto v = body(simd::lanes<T>{}, b + o);
    for (std::size_t k = 0; k < K; ++k) total[k] += double(v[k]);
  }
  next_max = simd::vmax(simd::max_lanes<T>(nb + done, ne, next), simd::hmax(simd::vmax(m0, m1)));
  return total;
}

// Per-thread state. Rows are pipelined: the gradient of a row is written chunk by chunk while
// the next row's logits are read (the two memory streams overlap, as in a plain streaming
// loop). A row's exps stay in `ex` until the next row's loop has read them, index by index,
// just before it stores its own there (one row of scratch: at 128k classes two would not fit
// in L2 beside the streams). The capped logits of the next chunk are computed while the
// current one runs, ahead of the pending reads, so they alternate between two rows.
template <class T>
struct CrossEntropyScratch {
  T* ex;         // exps of a row, relative to each chunk's max
  T* capped[2];  // softcap: the capped logits s (ping-pong)
  int cur = 0;   // the half of `capped` the current row uses
  ChunkedSoftmax<T> sm;
  // The gradient still to be written (core/pending.hpp): g_j = ex_j alpha_k - C w_j (times the
  // softcap factor), then g[y] (computed in double) as the row's fixed entry.
  PendingRow<T> pending;
  std::vector<T> alpha;
  T C = T(0);
  CrossEntropyScratch(std::size_t n, bool cap) {
    T* base = scratch<T>((cap ? 3 : 1) * n);
    ex = base;
    capped[0] = cap ? base + n : nullptr;
    capped[1] = cap ? base + 2 * n : nullptr;
    alpha.resize(chunk_count(n, chunk_elems<T>));
  }
};

// Per-call constants and the per-row work. Cap: softcap on. Smooth: 0 no label smoothing,
// 1 smoothing without class weights, 2 smoothing with class weights.
template <class T, bool Cap, int Smooth>
struct CrossEntropyRow {
  RowsView<const T> x;
  Labels labels;
  std::size_t n;
  T cap, inv_cap;
  double eps, zc;
  const T* cw;   // class weights as T, or nullptr
  double W;      // sum of the class weights (n without)
  double ratio;  // D_z / D_ce (0 when D_ce = 0): turns the row plan's 1/D_z into 1/D_ce
  bool stream;   // gradient written with non-temporal stores (large outputs)
  double* zrow;
  unsigned char* hit;
  double* lse_out;

  // Chunk k of the pending gradient (the previous row's), from the scratch (capped: the other half):
  // g_j = ex_j alpha_k - C w_j, times (1 - (s_j / cap)^2) with softcap.
  struct PendingChunk {
    PendingRow<T> row;  // a local copy: the float stores of the loop cannot change it
    const T* ex;
    const T* capped;
    T alpha, C;
  };
  PendingChunk pending_chunk(const CrossEntropyScratch<T>& w, std::size_t k) const {
    return {w.pending, w.ex, w.capped[w.cur ^ 1], w.alpha[k], w.C};
  }
  template <class V>
  V pending_value(const PendingChunk& p, std::size_t i) const {
    V g;
    if constexpr (Smooth == 2) {
      g = simd::load<V>(p.ex + i) * V(p.alpha) - V(p.C) * simd::load<V>(cw + i);
    } else {
      g = simd::load<V>(p.ex + i) * V(p.alpha) - V(p.C);
    }
    if constexpr (Cap) {
      const V t = simd::load<V>(p.capped + i) * V(inv_cap);
      g = g * (V(T(1)) - t * t);
    }
    return g;
  }
  template <class V>
  void put_pending(const PendingChunk& p, std::size_t i) const {
    p.row.put(i, pending_value<V>(p, i));
  }

  // After a thread's last row: the whole pending gradient, then its target entry.
  void finish(CrossEntropyScratch<T>& w) const {
    if (!w.pending) return;
    for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) {
      const PendingChunk p = pending_chunk(w, k);
      simd::for_lanes<T>(b, e, [&](auto tag, std::size_t i) { put_pending<typename decltype(tag)::type>(p, i); });
    });
    w.pending.end();
  }

  double operator()(CrossEntropyScratch<T>& w, std::ptrdiff_t r, T* grad, double scale) const {
    const T* z = x.row(r);
    const std::size_t y = std::size_t(labels[std::size_t(r)]);
    ChunkedSoftmax<T>& sm = w.sm;
    T* ex = w.ex;
    T* capped = w.capped[w.cur];
    const T* src = Cap ? capped : z;  // what the softmax sees (s)
    sm.reset(n);
    T best = -std::numeric_limits<T>::infinity();
    std::size_t best_chunk = 0;
    double sum_s = 0.0;  // sum_i w_i s_i (smoothing)
    // s_j for the chunk's max: a load, or (softcap) cap tanh(z_j / cap) stored in `capped`.
    const T c = cap, ic = inv_cap;
    auto value = [&](auto tag, std::size_t j) {
      using V = typename decltype(tag)::type;
      if constexpr (Cap) {
        const V v = V(c) * simd::tanh(simd::load<V>(z + j) * V(ic));
        simd::store(capped + j, v);
        return v;
      } else {
        return simd::load<V>(z + j);
      }
    };
    constexpr std::size_t C = chunk_elems<T>;
    T m = simd::max_lanes<T>(0, std::min(C, n), value);  // chunk 0; the others come with the previous chunk
    for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) {
      const T shift = ChunkedSoftmax<T>::shift_for(m);
      const T log2e = simd::log2e<T>;
      constexpr std::size_t K = Smooth ? 2 : 1;
      T next_m;
      const bool pend = bool(w.pending);
      const PendingChunk p = pend ? pending_chunk(w, k) : PendingChunk{};
      const auto sums = sum_and_next_max<T, K>(
          b, e, e, std::min(e + C, n),
          [&](auto tag, std::size_t i) {
            using V = typename decltype(tag)::type;
            if constexpr (simd::is_batch<V>) simd::prefetch(z + i + 2 * C);  // the chunk after next streams in
            const V s = simd::load<V>(src + i);
            if (pend) put_pending<V>(p, i);  // the previous row's gradient goes out meanwhile (reads ex[i] first)
            const V e_i = simd::exp2_ftz((s - V(shift)) * V(log2e));  // exp(s - shift); 0 at -inf
            simd::store(ex + i, e_i);
            if constexpr (Smooth == 0) {
              return std::array<V, 1>{e_i};
            } else if constexpr (Smooth == 1) {
              return std::array<V, 2>{e_i, s};
            } else {
              const V wi = simd::load<V>(cw + i);
              return std::array<V, 2>{e_i, simd::where(wi > V(T(0)), wi * s)};  // weight 0: no term, even at -inf
            }
          },
          value, next_m);
      sm.record(k, shift, T(1), sums[0]);
      if constexpr (Smooth != 0) sum_s += sums[1];
      if (m > best) {  // argmax: the first chunk holding the row's max is searched after the row
        best = m;
        best_chunk = k;
      }
      m = next_m;
    });
    if (w.pending) w.pending.end();  // the target entry after the fence
    const std::size_t cb = best_chunk * C;
    const std::size_t arg = best == -std::numeric_limits<T>::infinity() ? 0 : first_index_of(src, cb, std::min(cb + C, n), best);
    const double lse = sm.finish(false);
    const double s_y = double(src[y]);
    const double w_y = cw ? double(cw[y]) : 1.0;
    const double keep = (1.0 - eps) * w_y;  // coefficient of the target term
    double ce = 0.0;
    if (keep != 0.0) ce += keep * (lse - s_y);
    if (Smooth != 0) ce += eps / double(n) * (W * lse - sum_s);
    const double zl = zc * lse * lse;
    zrow[r] = zl;
    hit[r] = arg == y;
    if (lse_out) lse_out[r] = lse;

    if (grad) {  // written during the next row (or by finish())
      const double a_ce = scale * ratio, a_z = scale;
      // g_j = p_j B - C w_j - [j = y] a_ce (1 - eps) w_y,  p_j = ex_j factor_k
      const double B = a_ce * (keep + eps * W / double(n)) + 2.0 * zc * lse * a_z;
      const double C = a_ce * eps / double(n);
      for (std::size_t k = 0; k < w.alpha.size(); ++k) w.alpha[k] = T(B * sm.factor_d(k));
      w.C = T(C);
      // The target entry in double, rounded once (p_y - 1 cancels as p_y -> 1).
      const double p_y = double(ex[y]) * sm.factor_d(y / chunk_elems<T>);
      double g_y = p_y * B - C * w_y - a_ce * keep;
      if constexpr (Cap) {
        const double t = s_y / double(cap);
        g_y *= 1.0 - t * t;
      }
      w.pending.start(grad, n, stream, y, T(g_y));
      w.cur ^= 1;
    }
    if (ratio == 0.0) return zl;  // the cross-entropy term divides by a zero weight sum: dropped
    return ce * ratio + zl;
  }
};

template <class T, bool Cap, int Smooth>
inline LossResult run_cross_entropy_rows(const RowPlan& plan, const CrossEntropyRow<T, Cap, Smooth>& row,
                                         const RowsView<T>& g) {
  const std::size_t n = row.n;
  return run_rows<T>(
      plan, row.x.rows, g, [n] { return CrossEntropyScratch<T>(n, Cap); },
      [&row](CrossEntropyScratch<T>& w, std::ptrdiff_t r, T* grad, double scale) { return row(w, r, grad, scale); },
      [&row](CrossEntropyScratch<T>& w) { row.finish(w); });
}

template <class T>
inline CrossEntropyResult run_cross_entropy(const RowsView<const T>& x, const Labels& labels, const RowsView<T>& g,
                                            const CrossEntropyOptions& o) {
  const RowPlan plan = plan_rows(labeled_rows(o, labels), x.rows, x.cols);
  const std::size_t n = std::size_t(x.cols), rows = std::size_t(x.rows);

  std::vector<T> cw;
  double W = double(n);
  if (!o.weight.empty()) {
    cw.resize(n);
    W = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      cw[i] = T(o.weight[i]);
      W += o.weight[i];
    }
  }
  // D_ce: with class weights, a mean divides by the weight of the counted rows' targets.
  double d_ce = plan.denominator;
  if (!cw.empty() && o.reduction == Reduction::mean && !(o.normalizer > 0.0)) {
    d_ce = 0.0;
    for (std::size_t r = 0; r < rows; ++r)
      if (plan.weight[r] != 0.0) d_ce += plan.weight[r] * o.weight[std::size_t(labels[r])];
  }
  const double ratio = d_ce > 0.0 ? plan.denominator / d_ce : 0.0;

  std::vector<double> zrow(rows, 0.0);
  std::vector<unsigned char> hit(rows, 0);
  CrossEntropyResult out;
  if (o.return_lse) out.lse = Eigen::VectorXd::Zero(x.rows);

  const bool cap = o.softcap > 0.0;
  const bool smooth = o.label_smoothing > 0.0;
  const int mode = (cap ? 3 : 0) + (smooth ? (cw.empty() ? 1 : 2) : 0);
  auto go = [&](auto cap_tag, auto smooth_tag) {
    constexpr bool Cap = decltype(cap_tag)::value;
    constexpr int Smooth = decltype(smooth_tag)::value;
    const CrossEntropyRow<T, Cap, Smooth> row{x,
                                              labels,
                                              n,
                                              T(cap ? o.softcap : 1.0),
                                              T(cap ? 1.0 / o.softcap : 1.0),
                                              o.label_smoothing,
                                              o.z_loss,
                                              cw.empty() ? nullptr : cw.data(),
                                              W,
                                              ratio,
                                              streaming_output<T>(x.rows, x.cols),
                                              zrow.data(),
                                              hit.data(),
                                              o.return_lse ? out.lse.data() : nullptr};
    return run_cross_entropy_rows<T, Cap, Smooth>(plan, row, g);
  };
  using no = std::false_type;
  using yes = std::true_type;
  LossResult base;
  switch (mode) {
    case 0: base = go(no{}, std::integral_constant<int, 0>{}); break;
    case 1: base = go(no{}, std::integral_constant<int, 1>{}); break;
    case 2: base = go(no{}, std::integral_constant<int, 2>{}); break;
    case 3: base = go(yes{}, std::integral_constant<int, 0>{}); break;
    case 4: base = go(yes{}, std::integral_constant<int, 1>{}); break;
    default: base = go(yes{}, std::integral_constant<int, 2>{}); break;
  }
  static_cast<LossResult&>(out) = std::move(base);
  out.denominator = d_ce;

  // Side outputs, reduced in row order (independent of the thread count).
  const double inv_z = plan.denominator > 0.0 ? 1.0 / plan.denominator : 0.0;
  double zsum = 0.0;
  for (std::size_t r = 0; r < rows; ++r) {
    if (plan.weight[r] == 0.0) continue;
    zsum += plan.weight[r] * plan.factor * zrow[r] * inv_z;
    out.correct += hit[r];
  }
  out.z_loss = zsum;
  out.accuracy = out.count > 0 ? double(out.correct) / double(out.count) : 0.0;
  return out;
}

template <class X, class G>
inline CrossEntropyResult cross_entropy_impl(const X& logits, const Labels& labels, G* grad,
                                             const CrossEntropyOptions& o) {
  using T = scalar_of_t<X>;
  const char* fn = "cross_entropy";
  const LabeledViews<T> v = check_labeled(fn, logits, labels, grad, o);
  if (!o.weight.empty()) {
    if (std::ptrdiff_t(o.weight.size()) != v.x.cols)
      fail(fn, "'weight' has ", o.weight.size(), " entries, expected one per class (", v.x.cols, ")");
    for (std::size_t i = 0; i < o.weight.size(); ++i)
      if (!(o.weight[i] >= 0.0) || !std::isfinite(o.weight[i]))
        fail(fn, "'weight' must be finite and >= 0, got ", o.weight[i], " at class ", i);
  }
  check_in(fn, "label_smoothing", o.label_smoothing, 0.0, 1.0, false, false);
  if (!(o.z_loss >= 0.0) || !std::isfinite(o.z_loss)) fail(fn, "'z_loss' must be finite and >= 0, got ", o.z_loss);
  if (!(o.softcap >= 0.0) || !std::isfinite(o.softcap))
    fail(fn, "'softcap' must be finite and >= 0 (0: off), got ", o.softcap);
  return run_cross_entropy<T>(v.x, labels, v.g, o);
}

}  // namespace detail

// losskit::cross_entropy(logits, labels, grad, options): the reduced loss (see the top of this
// header) and its gradient w.r.t. the logits written into `grad` (any writable row-major matrix
// of the logits' shape; it may be the logits themselves). Labels: one int32 or int64 per row.
template <class X, class G, std::enable_if_t<is_rows_v<G>, int> = 0>
inline CrossEntropyResult cross_entropy(const X& logits, const Labels& labels, G&& grad,
                                        const CrossEntropyOptions& options = {}) {
  return detail::cross_entropy_impl(logits, labels, &grad, options);
}

// Forward only.
template <class X>
inline CrossEntropyResult cross_entropy(const X& logits, const Labels& labels, const CrossEntropyOptions& options = {}) {
  return detail::cross_entropy_impl(logits, labels, static_cast<RowMatrix<scalar_of_t<X>>*>(nullptr), options);
}

}  // namespace losskit
