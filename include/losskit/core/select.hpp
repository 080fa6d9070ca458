#pragma once
// Top-k of a row by value in O(n), exact, with ties broken by the lower index: the members are
// the first k entries in the order (value descending, index ascending). The result is a cut,
//   i is a member  <=>  v_i > threshold, or v_i == threshold and i < tie_end,
// so later passes test membership with one compare per element (for_member_ranges).
// NaN entries are never members (a row with a NaN has a NaN loss anyway); with fewer than k
// entries that are not NaN, all of them are members. k >= n: every entry is a member.
//
// How: counting passes (SIMD, `count_at_least`) replace comparisons-and-branches. The r-th
// largest value of a short array is found by bisection over the order-preserving integer keys
// of the floating-point values (<= 32 counting passes for float, 64 for double). For a long row:
//   1. sample_bracket: a sample of ~1024 entries (whole cache lines spread over the row) gives
//      two values lo <= hi that bracket the k-th largest with high probability (sample ranks
//      k ns / n -+ (3 sqrt + 2), found by bisection over values that stops early);
//   2. bracket_pass: one pass over the row counts the entries >= hi and copies those in
//      [lo, hi) to a work buffer, branch-free (simd::append_in_range: an AVX-512 compress, an
//      AVX2 permutation); a kernel may run it inside its own streaming pass instead;
//   3. finish_cut: if the bracket missed (count(>= hi) >= k, or count(>= lo) < k), that bound
//      is dropped (hi = +inf, lo = -inf) and the pass repeats -- at most twice; the k-th largest
//      is then the (k - count(>= hi))-th largest of the work buffer;
//   4. only when the threshold is tied and not every tied entry fits, one more scan finds the
//      index of the last tied member.
// The result never depends on the sample: it only decides how much work steps 2-3 leave.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "losskit/core/simd.hpp"

namespace losskit::detail {

template <class T>
struct TopkCut {
  T threshold;          // the k-th largest value
  std::size_t tie_end;  // entries equal to threshold are members iff their index is below this
};

template <class T>
using ordered_key_t = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

// Order-preserving map of non-NaN floating-point values to unsigned integers (-0 < +0).
template <class T>
inline ordered_key_t<T> ordered_key(T x) noexcept {
  using K = ordered_key_t<T>;
  constexpr K sign = K(1) << (8 * sizeof(K) - 1);
  K b;
  std::memcpy(&b, &x, sizeof b);
  return (b & sign) ? K(~b) : K(b | sign);
}

template <class T>
inline T from_ordered_key(ordered_key_t<T> k) noexcept {
  using K = ordered_key_t<T>;
  constexpr K sign = K(1) << (8 * sizeof(K) - 1);
  const K b = (k & sign) ? K(k & ~sign) : K(~k);
  T x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// Number of entries of v[b, e) for which pred(batch or scalar) holds.
template <class T, class Pred>
inline std::size_t count_lanes(const T* v, std::size_t b, std::size_t e, Pred&& pred) {
  return std::size_t(simd::sum_lanes<T, 1>(b, e, [&](auto tag, std::size_t i) {
    using V = typename decltype(tag)::type;
    return std::array<V, 1>{simd::where(pred(simd::load<V>(v + i)), V(T(1)))};
  })[0]);
}

template <class T>
inline std::size_t count_at_least(const T* v, std::size_t n, T x) {
  return count_lanes(v, 0, n, [x](const auto& a) { return a >= std::decay_t<decltype(a)>(x); });
}

// The r-th largest value of v[0, n) (r >= 1, repeats counted): the largest x with
// count_at_least(v, n, x) >= r; -inf when fewer than r entries are not NaN. Bisection over the
// ordered keys of [floor, ceil], which must contain the answer if there is one (the defaults
// always do): log2 of the key range counting passes, at most 32 (float) or 64 (double).
template <class T>
inline T rank_value(const T* v, std::size_t n, std::size_t r, T floor = -std::numeric_limits<T>::infinity(),
                    T ceil = std::numeric_limits<T>::infinity()) {
  using K = ordered_key_t<T>;
  if (count_at_least(v, n, floor) < r) return -std::numeric_limits<T>::infinity();
  K lo = ordered_key(floor), hi = ordered_key(ceil);  // no NaN key lies between -inf and +inf
  while (lo < hi) {
    const K mid = K(lo + (hi - lo) / 2 + 1);
    if (count_at_least(v, n, from_ordered_key<T>(mid)) >= r)
      lo = mid;
    else
      hi = K(mid - 1);
  }
  return from_ordered_key<T>(lo);
}

// A value x with r <= count_at_least(v, n, x) <= r + slack when the values allow it: bisection
// over values (not keys) between the minimum and the maximum, stopping as soon as the count is
// in range (a handful of passes on ordinary data), else after 40 halvings with the lowest
// count >= r found. -inf when fewer than r entries are not NaN. For bracket bounds, which are
// checked against the whole row afterwards.
template <class T>
inline T approx_rank_value(const T* v, std::size_t n, std::size_t r, std::size_t slack) {
  const T inf = std::numeric_limits<T>::infinity();
  T a = -simd::max_lanes<T>(0, n, [v](auto tag, std::size_t i) { return -simd::load<typename decltype(tag)::type>(v + i); });
  T b = simd::max_lanes<T>(0, n, [v](auto tag, std::size_t i) { return simd::load<typename decltype(tag)::type>(v + i); });
  if (!(a > -inf && b < inf)) return rank_value(v, n, r);  // infinities (or no finite entry): exact keys
  if (count_at_least(v, n, a) < r) return -inf;
  for (int it = 0; it < 40; ++it) {
    const T mid = a + (b - a) / 2;
    if (!(mid > a && mid < b)) break;
    const std::size_t c = count_at_least(v, n, mid);
    if (c < r) {
      b = mid;
    } else {
      a = mid;
      if (c <= r + slack) break;
    }
  }
  return a;
}

// One past the index of the need-th entry (need >= 1) of v[0, n) equal to x; n if fewer.
template <class T>
inline std::size_t after_nth_equal(const T* v, std::size_t n, T x, std::size_t need) {
  constexpr std::size_t block = 256;
  for (std::size_t b = 0; b < n; b += block) {
    const std::size_t e = std::min(n, b + block);
    const std::size_t c = count_lanes(v, b, e, [x](const auto& a) { return a == std::decay_t<decltype(a)>(x); });
    if (c < need) {
      need -= c;
      continue;
    }
    for (std::size_t i = b; i < e; ++i)
      if (v[i] == x && --need == 0) return i + 1;
  }
  return n;
}

// Step 2: count(v >= hi) and the entries in [lo, hi), copied to out (room for n, not v).
template <class T>
inline std::size_t bracket_pass(const T* v, std::size_t n, T lo, T hi, T* out, std::size_t& above) {
  std::size_t m = 0;  // <= i at batch i, so a whole-batch append stays inside out[0, n)
  above = std::size_t(simd::sum_lanes<T, 1>(0, n, [&](auto tag, std::size_t i) {
    using V = typename decltype(tag)::type;
    const V x = simd::load<V>(v + i);
    m += simd::append_in_range(out + m, x, lo, hi);
    return std::array<V, 1>{simd::where(x >= V(hi), V(T(1)))};
  })[0]);
  return m;
}

// Where the k-th largest of a long row is looked for: entries in [lo, hi) are copied out, the
// ones >= hi only counted. lo = -inf / hi = +inf: unbounded on that side.
template <class T>
struct TopkBracket {
  T lo = -std::numeric_limits<T>::infinity();
  T hi = std::numeric_limits<T>::infinity();
};

// Rows up to 2048 entries skip the sample: the bisection runs on the row itself.
template <class T>
inline bool topk_sampled(std::size_t n, std::size_t k) {
  return k < n && n > 2048;
}

// Step 1: a bracket for the k-th largest of v[0, n) from a sample of up to 1024 entries (a
// quarter of a short row) taken as whole cache lines spread evenly over the row, so it costs a
// few dozen memory accesses even before the row is in cache. work: scratch for the sample.
template <class T>
inline TopkBracket<T> sample_bracket(const T* v, std::size_t n, std::size_t k, T* work) {
  constexpr std::size_t line = 64 / sizeof(T);
  const std::size_t clusters = std::max<std::size_t>(1, std::min<std::size_t>(1024, n / 4) / line);
  const std::size_t gap = n / clusters, ns = clusters * line;
  for (std::size_t c = 0; c < clusters; ++c)
    for (std::size_t j = 0; j < line; ++j) work[c * line + j] = v[c * gap + j];
  // The k-th largest sits at about sample rank k ns / n; the bounds are 3 standard deviations
  // (+2) to either side. An upper bound is only set when it cuts the band in two: then the
  // entries above it are counted, not copied (a kernel needs their sums some other way).
  const double expect = double(k) * double(ns) / double(n), margin = 3.0 * std::sqrt(expect) + 2.0;
  const double r_hi = std::floor(expect - margin), r_lo = std::ceil(expect + margin);
  const auto slack = std::size_t(margin / 4);
  TopkBracket<T> b;
  if (r_hi >= 1.0 && r_hi >= expect / 2) b.hi = approx_rank_value(work, ns, std::size_t(r_hi), slack);
  if (r_lo <= double(ns)) b.lo = approx_rank_value(work, ns, std::size_t(r_lo), slack);
  return b;
}

// A bracket and the result of its pass: above = count(>= bracket.hi), the m entries in
// [bracket.lo, bracket.hi) copied, in index order, to the work buffer.
template <class T>
struct TopkBand {
  TopkBracket<T> bracket;
  std::size_t above = 0;
  std::size_t m = 0;
};

// Steps 3 and 4 for a band made by a bracket pass over v: widens the bracket and repeats the
// pass if it missed (`band` and work[0, band.m) then describe the last pass), then selects in
// the band. work: scratch for n values (not v).
template <class T>
inline TopkCut<T> finish_cut(const T* v, std::size_t n, std::size_t k, TopkBand<T>& band, T* work) {
  const T inf = std::numeric_limits<T>::infinity();
  TopkBracket<T>& b = band.bracket;
  for (;;) {
    if (band.above >= k) {  // hi is not above the k-th largest
      if (b.hi == inf) return {inf, after_nth_equal(v, n, inf, k)};  // k or more +inf entries
      b.hi = inf;
    } else if (band.above + band.m < k) {  // lo is above the k-th largest
      if (b.lo == -inf) return {-inf, n};  // fewer than k entries are not NaN
      b.lo = -inf;
    } else {
      break;
    }
    band.m = bracket_pass(v, n, b.lo, b.hi, work, band.above);
  }
  // The k-th largest is the (k - above)-th largest of the band, whose entries lie in
  // [lo, their maximum]: the bisection needs only the keys in between.
  const std::size_t m = band.m, need = k - band.above;
  const T top = simd::max_lanes<T>(0, m, [work](auto tag, std::size_t i) { return simd::load<typename decltype(tag)::type>(work + i); });
  const T theta = rank_value(work, m, need, b.lo, top);
  const std::size_t gt = band.above + count_lanes(work, 0, m, [theta](const auto& a) { return a > std::decay_t<decltype(a)>(theta); });
  const std::size_t eq = count_lanes(work, 0, m, [theta](const auto& a) { return a == std::decay_t<decltype(a)>(theta); });
  const std::size_t need_eq = k - gt;  // >= 1
  return {theta, need_eq >= eq ? n : after_nth_equal(v, n, theta, need_eq)};
}

// When the band holds every member (nothing counted above it, work[0, m) as finish_cut left
// it): sums over the members of f(lanes<V>, j, x) -> std::array<V, K>, x = work[j] (j also
// indexes arrays parallel to the band). Members are the entries above the threshold and the
// first tied ones in band order (= index order); only when some tied entries are left out do
// the tied members take a scalar scan.
template <class T, std::size_t K, class F>
inline std::array<double, K> band_member_sums(const T* work, std::size_t m, std::size_t k, const TopkCut<T>& cut,
                                              F&& f) {
  const T th = cut.threshold;
  const std::size_t gt = count_lanes(work, 0, m, [th](const auto& a) { return a > std::decay_t<decltype(a)>(th); });
  const std::size_t eq = count_lanes(work, 0, m, [th](const auto& a) { return a == std::decay_t<decltype(a)>(th); });
  const std::size_t need_eq = k > gt ? k - gt : 0;
  const bool all_ties = need_eq >= eq;
  std::array<double, K> total = simd::sum_lanes<T, K>(0, m, [&](auto tag, std::size_t j) {
    using V = typename decltype(tag)::type;
    const V x = simd::load<V>(work + j);
    const auto in = all_ties ? x >= V(th) : x > V(th);
    auto v = f(tag, j, x);
    for (auto& e : v) e = simd::where(in, e);
    return v;
  });
  for (std::size_t j = 0, left = all_ties ? 0 : need_eq; j < m && left > 0; ++j)
    if (work[j] == th) {
      const auto v = f(simd::lanes<T>{}, j, work[j]);
      for (std::size_t q = 0; q < K; ++q) total[q] += double(v[q]);
      --left;
    }
  return total;
}

// The top-k cut of v[0, n); work: scratch for n values (not v).
template <class T>
inline TopkCut<T> topk_cut(const T* v, std::size_t n, std::size_t k, T* work) {
  const T inf = std::numeric_limits<T>::infinity();
  if (k >= n) return {-inf, n};
  if (!topk_sampled<T>(n, k)) {  // short row: the bisection runs on the row itself
    const T theta = rank_value(v, n, k);
    if (count_at_least(v, n, -inf) < k) return {-inf, n};  // fewer than k entries are not NaN
    const std::size_t gt = count_lanes(v, 0, n, [theta](const auto& a) { return a > std::decay_t<decltype(a)>(theta); });
    const std::size_t eq = count_lanes(v, 0, n, [theta](const auto& a) { return a == std::decay_t<decltype(a)>(theta); });
    return {theta, k - gt >= eq ? n : after_nth_equal(v, n, theta, k - gt)};
  }
  TopkBand<T> band;
  band.bracket = sample_bracket(v, n, k, work);
  band.m = bracket_pass(v, n, band.bracket.lo, band.bracket.hi, work, band.above);
  return finish_cut(v, n, k, band, work);
}

// fn(b', e', inclusive) on the pieces of [b, e) before and from cut.tie_end: the members of a
// piece are the entries >= threshold (inclusive) or > threshold (not).
template <class T, class Fn>
inline void for_member_ranges(const TopkCut<T>& cut, std::size_t b, std::size_t e, Fn&& fn) {
  const std::size_t mid = std::clamp(cut.tie_end, b, e);
  if (b < mid) fn(b, mid, true);
  if (mid < e) fn(mid, e, false);
}

// Membership mask of values x (a batch or a scalar) in a piece of for_member_ranges.
template <class V, class T>
inline auto member_mask(const V& x, T threshold, bool inclusive) {
  return inclusive ? x >= V(threshold) : x > V(threshold);
}

}  // namespace losskit::detail
