#pragma once
// Row softmax statistics in one streaming pass, with the online (max, sum) merge done per chunk.
//
// A row of n logits v is cut into chunks of `chunk_elems<T>` elements (8 KiB, so a chunk of
// every input of a kernel stays in L1). For chunk k, with a shift m_k:
//     e_i = exp((v_i - m_k) / T)        stored in a scratch row
//     s_k = sum_i e_i                    (T lanes within the chunk, double across chunks)
// and after the row, in double:
//     M = max_k m_k / T over chunks with s_k > 0,   S = sum_k s_k exp(m_k / T - M),
//     lse = M + log S,                   softmax_i = e_i * c_k  with  c_k = exp(m_k / T - lse)
// (c_k = 0 for a chunk with s_k = 0 in a row with mass: its exps are all 0, whatever its shift).
// So the logits are read once from memory, exp runs once per element, and later passes read
// only the scratch row (L2) and multiply by one factor per chunk.
//
// Every kernel (PairRow::stats, exp_chunk and exps_of_row below; cross_entropy's own loop takes
// the next chunk's maximum instead) takes as a chunk's shift the running maximum of the chunks
// before it, so a chunk is one loop (its own maximum taken in the same loop, for the next
// chunk), not a max pass and a loop:
//   - while there is no running maximum (the first chunk, or only -inf so far) a chunk takes
//     its own maximum first: a shift of 0 could flush a whole chunk of very negative logits;
//   - a chunk whose maximum m lies more than a factor 16 above the shift (fits() false:
//     (m - shift) / T > 4 log 2) is redone against m. Exps above their shift carry the rounding
//     of their argument (v - shift) log2(e) / T, which grows with it: the bound keeps the
//     largest terms within about 5e-7 relative, the exp's own 1.7e-7 included (a bound of
//     2^64 allowed several 1e-6), and redoes
//     0.9% of the chunks of N(0, 3) logits at T = 1 and none at T = 2 (1024 x 32000; a bound of
//     2 redid 6.2% and 0.9%, a bound of 1 13.4% and 6.2%);
//   - the largest term of a chunk whose maximum lies above the shift is exact: peak_fix()
//     replaces, in the chunk's sum, the exp the loop took for it by the exact one (a row with
//     one dominant logit would otherwise carry that exp's rounding, ~2e-7, in its lse, and
//     divergences of near-equal peaked rows come out of order -1e-7);
//   - elements far below the running maximum underflow to 0, as they would against the row
//     maximum.
//
// Conventions: -inf logits are legal and give exactly 0 (a leading run of -inf has shift 0);
// a row whose logits are all -inf has no distribution: lse = -inf and the factors are NaN.
// NaN or +inf in a row make that row's statistics NaN. With Input::log_probs the row is taken as already normalised:
// lse = 0 and softmax_i = exp(v_i) exactly as given.

#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "losskit/core/fast_exp2.hpp"
#include "losskit/core/simd.hpp"

namespace losskit::detail {

template <class T>
inline constexpr std::size_t chunk_elems = 8192 / sizeof(T);

inline std::size_t chunk_count(std::size_t n, std::size_t chunk) { return (n + chunk - 1) / chunk; }

// fn(k, begin, end) for each chunk of [0, n).
template <class T, class Fn>
LOSSKIT_ALWAYS_INLINE void for_chunks(std::size_t n, Fn&& fn) {
  constexpr std::size_t C = chunk_elems<T>;
  for (std::size_t k = 0, b = 0; b < n; ++k, b += C) fn(k, b, b + C < n ? b + C : n);
}

// Per-row chunked softmax statistics of one input. Reused across rows (no allocation after
// the first row of a given width).
template <class T>
class ChunkedSoftmax {
 public:
  void reset(std::size_t n) {
    const std::size_t k = chunk_count(n, chunk_elems<T>);
    shift_.assign(k, 0.0);
    sum_.assign(k, 0.0);
    factor_.assign(k, T(0));
  }

  // Records chunk k computed elsewhere: exps taken relative to `shift` (the value returned by
  // shift_for() of the chunk's or the running maximum), scaled by inv_t, summing to `sum`.
  void record(std::size_t k, T shift, T inv_t, double sum) {
    shift_[k] = double(shift) * double(inv_t);
    sum_[k] = sum;
  }

  // The shift used for a chunk whose running maximum is m: m itself, or 0 for only -inf.
  static T shift_for(T m) { return m == -std::numeric_limits<T>::infinity() ? T(0) : m; }
  // True while a row has no running maximum: the next chunk takes its own first.
  static bool needs_own_max(T running) { return running == -std::numeric_limits<T>::infinity(); }
  // False when a chunk of maximum m taken against `shift` at scale c (log2(e) / T) must be
  // redone against m (see the top of this file).
  static bool fits(T m, T shift, T c) { return !(m > shift) || (m - shift) * c <= T(4); }
  // exact - taken for the exp of a chunk's maximum m against `shift`: `taken` as the loop
  // computes it (float arithmetic, exp2_ftz on a batch), `exact` in double at the scale
  // c_exact = log2(e) / T. 0 when m is not above the shift (then it is the shift: exp 1 exactly)
  // or not finite. (A maximum that fell in the scalar tail of a row was taken by the scalar
  // exp2, an ulp from the batch one.)
  static double peak_fix(T m, T shift, T c, double c_exact) {
    if (!(m > shift) || !std::isfinite(m)) return 0.0;
    alignas(64) T lane[simd::width<T>];
    simd::exp2_ftz(simd::batch<T>((m - shift) * c)).store_aligned(lane);
    return std::exp2((double(m) - double(shift)) * c_exact) - double(lane[0]);
  }

  // Ends the row: computes lse and the per-chunk factors. Returns lse.
  double finish(bool log_probs) {
    double M = -std::numeric_limits<double>::infinity();
    for (std::size_t k = 0; k < sum_.size(); ++k)
      if (sum_[k] > 0.0 && shift_[k] > M) M = shift_[k];
    double S = 0.0;
    for (std::size_t k = 0; k < sum_.size(); ++k)
      if (sum_[k] > 0.0 || std::isnan(sum_[k])) S += sum_[k] * std::exp(shift_[k] - M);
    if (log_probs) {
      lse_ = 0.0;
      total_ = std::isfinite(M) ? S * std::exp(M) : S * 0.0;  // sum of exp(v), ~1 (NaN stays NaN)
    } else {
      // No mass at all (every logit -inf): lse = -inf; softmax is then undefined and every
      // kernel that needs it produces NaN through the factors below.
      lse_ = std::isfinite(M) ? M + std::log(S) : (std::isnan(S) ? S : -std::numeric_limits<double>::infinity());
      total_ = 1.0;
    }
    for (std::size_t k = 0; k < sum_.size(); ++k) factor_[k] = T(factor_d(k));
    return lse_;
  }

  double lse() const noexcept { return lse_; }
  // sum of the probabilities: 1 for logits; sum of exp(v) for log-probabilities.
  double total() const noexcept { return total_; }
  T factor(std::size_t k) const noexcept { return factor_[k]; }
  // 0 for a chunk without mass in a row with mass (a chunk of only -inf has shift 0, which can
  // lie far above lse: exp would overflow, and 0 * inf is NaN).
  double factor_d(std::size_t k) const noexcept {
    return sum_[k] == 0.0 && std::isfinite(lse_) ? 0.0 : std::exp(shift_[k] - lse_);
  }
  double chunk_sum(std::size_t k) const noexcept { return sum_[k]; }
  // sum_k factor_d(k) (a extra[k] + b chunk_sum(k)): merges per-chunk sums of a kernel's own
  // (taken relative to the chunk shifts, e.g. sum p (t - s)) into a row value.
  double merge(const std::vector<double>& extra, double a, double b) const {
    double v = 0.0;
    for (std::size_t k = 0; k < sum_.size(); ++k) v += factor_d(k) * (a * extra[k] + b * sum_[k]);
    return v;
  }
  // The same for sums of a kernel's own over differences with another input u taken relative to
  // both chunks' shifts, extra_k = sum_i e_i ((u_i - shift^u_k) - (v_i - shift_k)): adds back
  // (shift^u_k - shift_k) inv_t per unit of chunk mass, so
  //   sum_k factor_k (a extra_k + ((shift^u_k - shift_k) inv_t + b) sum_k)
  // (a = inv_t). Unlike merge over u_i - v_i, nothing large cancels when both rows peak at the
  // same place. `u` holds the other input's statistics (same chunks, same inv_t).
  double merge_relative(const std::vector<double>& extra, double a, double b, const ChunkedSoftmax& u) const {
    double v = 0.0;
    for (std::size_t k = 0; k < sum_.size(); ++k) v += factor_d(k) * (a * extra[k] + (u.shift_[k] - shift_[k] + b) * sum_[k]);
    return v;
  }

 private:
  std::vector<double> shift_, sum_;
  std::vector<T> factor_;
  double lse_ = 0.0, total_ = 1.0;
};

// {a, x[0], ..., x[K-1]} as one aggregate (keeps the accumulators in registers).
template <class V, class X, std::size_t... J>
inline std::array<V, sizeof...(J) + 1> prepend_one(const V& a, const X& x, std::index_sequence<J...>) {
  return {a, x[J]...};
}

// One input's shift through a row, by the rules at the top of this file: start() before a
// chunk, see() every value the chunk's loop reads, then fits(c): if true, fixed() gives the
// chunk's sum with its largest term exact and accept() folds its maximum into the row's; if
// false, retry() (the chunk is redone against the new maximum).
template <class T>
struct RunningShift {
  using CS = ChunkedSoftmax<T>;
  T running = -std::numeric_limits<T>::infinity();  // the row's maximum so far
  T shift = T(0);                                     // the current chunk's
  simd::batch<T> mb;
  T ms = T(0);

  template <class Value>
  void start(std::size_t b, std::size_t e, Value&& value) {
    if (CS::needs_own_max(running)) running = simd::max_lanes<T>(b, e, value);
    shift = CS::shift_for(running);
    clear();
  }
  void start(const T* v, std::size_t b, std::size_t e) { start(b, e, [v](auto tag, std::size_t i) { return simd::load<typename decltype(tag)::type>(v + i); }); }
  template <class V>
  void see(const V& v) {
    if constexpr (simd::is_batch<V>)
      mb = simd::vmax(v, mb);
    else
      ms = simd::vmax(v, ms);
  }
  T chunk_max() const { return simd::vmax(simd::hmax(mb), ms); }
  bool fits(T c) const { return CS::fits(chunk_max(), shift, c); }
  // The chunk's sum of exps at scale c = log2(e) inv_t, with its largest term exact.
  double fixed(double sum, T c, T inv_t) const {
    return sum + CS::peak_fix(chunk_max(), shift, c, double(inv_t) * simd::log2e<double>);
  }
  void accept() { running = simd::vmax(chunk_max(), running); }
  void retry() {
    shift = CS::shift_for(simd::vmax(chunk_max(), running));
    clear();
  }
  // Before a chunk is redone because another input's shift did not fit: this input's shift stays
  // if it fits (its exps and sum come out as before), else retry().
  void retry_if(T c) {
    if (fits(c))
      clear();
    else
      retry();
  }

 private:
  void clear() {
    mb = simd::batch<T>(-std::numeric_limits<T>::infinity());
    ms = -std::numeric_limits<T>::infinity();
  }
};

// Chunk k = [b, e) of a row v against the running maximum, in one loop over the chunk (for a
// kernel with one softmax; PairRow::stats does the same for two or three): e_i =
// 2^((v_i - shift) log2(e) / T) (stored in `out` if given), their sum and K sums of
// extra(lanes<V>, i, v_i, e_i, shift) -> std::array<V, K> (into `sums`). `rs` carries the row's
// running maximum between chunks (a default RunningShift before the first). The next chunk of v
// is prefetched. Records the chunk in `sm` and returns the shift used.
// `v` may also be a function value(lanes<V>, i) -> V of the row's values (which prefetches what
// it reads itself).
// `put(lanes<V>, i)` runs at every index before `out` is stored there, on the first try at the
// chunk only (a pipelined kernel writes the previous row's gradient from `out` there).
struct NoPut {
  template <class Tag>
  void operator()(Tag, std::size_t) const {}
};
template <class T, std::size_t K, class Row, class Extra, class Put = NoPut>
inline T exp_chunk(ChunkedSoftmax<T>& sm, std::size_t k, std::size_t b, std::size_t e, T inv_t, const Row& v, T* out,
                   RunningShift<T>& rs, Extra&& extra, std::array<double, K>& sums, Put&& put = {}) {
  const T c = inv_t * simd::log2e<T>;
  auto value = [&v](auto tag, std::size_t i) {
    using V = typename decltype(tag)::type;
    if constexpr (std::is_pointer_v<Row>) {
      if constexpr (simd::is_batch<V>) simd::prefetch(v + i + chunk_elems<T>);  // the next chunk streams in meanwhile
      return simd::load<V>(v + i);
    } else {
      return V(v(tag, i));
    }
  };
  rs.start(b, e, value);
  constexpr bool puts = !std::is_same_v<std::decay_t<Put>, NoPut>;
  bool first = true;
  for (;;) {
    const T sh = rs.shift;
    const auto s = simd::sum_lanes<T, K + 1>(b, e, [&](auto tag, std::size_t i) {
      using V = typename decltype(tag)::type;
      const V x = value(tag, i);
      rs.see(x);
      const V ex = simd::exp2_ftz((x - V(sh)) * V(c));
      if constexpr (puts) {
        if (first) put(tag, i);
      }
      if (out) simd::store(out + i, ex);
      return prepend_one(ex, extra(tag, i, x, ex, sh), std::make_index_sequence<K>{});
    });
    if (rs.fits(c)) {
      sm.record(k, sh, inv_t, rs.fixed(s[0], c, inv_t));
      rs.accept();
      for (std::size_t j = 0; j < K; ++j) sums[j] = s[j + 1];
      return sh;
    }
    first = false;
    rs.retry();
  }
}

// The whole row through exp_chunk with no sums of a kernel's own: ex_i = exp((z_i - m_k) / T)
// and the statistics in sm (reset here; finish() is the caller's). ex must not alias z (a
// redone chunk reads z again).
// put(lanes<V>, k, i): exp_chunk's hook, with the chunk's index.
template <class T, class Put = NoPut>
inline void exps_of_row(ChunkedSoftmax<T>& sm, const T* z, std::size_t n, T inv_t, T* ex, Put&& put = {}) {
  sm.reset(n);
  RunningShift<T> running;
  for_chunks<T>(n, [&](std::size_t k, std::size_t b, std::size_t e) LOSSKIT_LAMBDA_INLINE {
    std::array<double, 0> none;
    auto no_sums = [](auto tag, std::size_t, const auto&, const auto&, T) { return std::array<typename decltype(tag)::type, 0>{}; };
    if constexpr (std::is_same_v<std::decay_t<Put>, NoPut>)
      exp_chunk<T>(sm, k, b, e, inv_t, z, ex, running, no_sums, none);
    else
      exp_chunk<T>(sm, k, b, e, inv_t, z, ex, running, no_sums, none, [&put, k](auto tag, std::size_t i) { put(tag, k, i); });
  });
}

}  // namespace losskit::detail
