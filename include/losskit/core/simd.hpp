#pragma once
// The one place that talks to xsimd. Every difference between xsimd 8.1 (Debian 12) and the
// current releases (9..14) is hidden here, under names that cannot collide with xsimd's own
// through ADL (hsum, hmax). Kernels are written once as generic lambdas `body(lanes<V>, i)`
// that run on full batches (V = batch<T>) and then on the scalar tail (V = T), so the tail
// computes the same formula as the vector loop.
//
// The instruction set is chosen at compile time from the consumer's flags
// (xsimd::default_arch): -march=native or -march=x86-64-v3 give AVX-512 / AVX2 paths, plain
// builds get SSE2. Nothing here sets -m flags.

#include "losskit/core/config.hpp"

#include <xsimd/xsimd.hpp>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>

namespace losskit::simd {

template <class T>
using batch = xsimd::batch<T>;

template <class T>
inline constexpr std::size_t width = batch<T>::size;

// Tag handed to a generic loop body: V is batch<T> in the main loop, T in the tail.
template <class V>
struct lanes {
  using type = V;
};

template <class V>
struct scalar_of {
  using type = V;
};
template <class T, class A>
struct scalar_of<xsimd::batch<T, A>> {
  using type = T;
};
template <class V>
using scalar_t = typename scalar_of<V>::type;

template <class V>
inline constexpr bool is_batch = !std::is_same_v<V, scalar_t<V>>;

// ---- loads, stores, broadcasts -------------------------------------------------------------
template <class V>
inline V load(const scalar_t<V>* p) noexcept {
  if constexpr (is_batch<V>) {
    return V::load_unaligned(p);
  } else {
    return *p;
  }
}

template <class V>
inline void store(scalar_t<V>* p, const V& v) noexcept {
  if constexpr (is_batch<V>) {
    v.store_unaligned(p);
  } else {
    *p = v;
  }
}

// Non-temporal store of a whole batch to an address aligned to the batch size (x86: bypasses
// the caches and the read-for-ownership of the destination line). Falls back to a plain store
// elsewhere. Call stream_fence() before the data is handed to another thread.
template <class V>
inline void stream(scalar_t<V>* p, const V& v) noexcept {
#if defined(__AVX512F__)
  if constexpr (is_batch<V> && sizeof(V) == 64) {
    if constexpr (std::is_same_v<scalar_t<V>, float>) _mm512_stream_ps(p, v);
    else _mm512_stream_pd(p, v);
    return;
  }
#endif
#if defined(__AVX__)
  if constexpr (is_batch<V> && sizeof(V) == 32) {
    if constexpr (std::is_same_v<scalar_t<V>, float>) _mm256_stream_ps(p, v);
    else _mm256_stream_pd(p, v);
    return;
  }
#endif
#if defined(__SSE2__)
  if constexpr (is_batch<V> && sizeof(V) == 16) {
    if constexpr (std::is_same_v<scalar_t<V>, float>) _mm_stream_ps(p, v);
    else _mm_stream_pd(p, v);
    return;
  }
#endif
  store(p, v);
}

inline void stream_fence() noexcept {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Hint that `p` will be read soon (one cache line). Never faults.
template <class T>
inline void prefetch(const T* p) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(static_cast<const void*>(p), 0, 3);
#else
  (void)p;
#endif
}

// ---- horizontal reductions (xsimd 8: hadd, no reduce_max; 9+: reduce_add / reduce_max) ------
template <class T, class A>
inline T hsum(const xsimd::batch<T, A>& x) noexcept {
#if XSIMD_VERSION_MAJOR >= 9
  return xsimd::reduce_add(x);
#else
  return xsimd::hadd(x);
#endif
}
template <class T>
inline T hsum(T x) noexcept {
  return x;
}

template <class T, class A>
inline T hmax(const xsimd::batch<T, A>& x) noexcept {
  alignas(64) std::array<T, xsimd::batch<T, A>::size> lanes_{};
  x.store_aligned(lanes_.data());
  T m = lanes_[0];
  for (std::size_t i = 1; i < lanes_.size(); ++i) m = lanes_[i] > m ? lanes_[i] : m;
  return m;
}
template <class T>
inline T hmax(T x) noexcept {
  return x;
}

// ---- elementwise math, one spelling for batches and scalars ---------------------------------
// Batches use xsimd's polynomial exp/log (float exp: <= 1.5 ulp, flushes to 0 below -87.7);
// scalars use <cmath>. Both give exp(-inf) = 0 and log(0) = -inf.
// Double batches go through exp_guarded: without AVX-512, xsimd converts the argument to int64
// with a scalar cast before it selects 0 (or NaN) for arguments outside its range, and for -inf
// (a masked logit), +inf or NaN that cast is undefined behaviour (found by tests/fuzz with
// clang's UBSan; the value was discarded, so results do not change). The argument is clamped to
// [lowest, -lowest] (where the result is 0, resp. +inf, anyway) and NaN lanes are computed as 0
// and put back as NaN.
template <class T, class A, class F>
inline xsimd::batch<T, A> exp_guarded(const xsimd::batch<T, A>& x, T lowest, F&& f) noexcept;

template <class T, class A>
inline xsimd::batch<T, A> exp(const xsimd::batch<T, A>& x) noexcept {
  return exp_guarded(x, T(-1000), [](const auto& v) { return xsimd::exp(v); });
}
inline float exp(float x) noexcept { return std::exp(x); }
inline double exp(double x) noexcept { return std::exp(x); }

// 2^x: cheaper than exp (no Cody-Waite split); e^y = 2^(y log2 e) with the scale folded into
// the caller's fma.
template <class T, class A>
inline xsimd::batch<T, A> exp2(const xsimd::batch<T, A>& x) noexcept {
  return exp_guarded(x, T(-1100), [](const auto& v) { return xsimd::exp2(v); });
}
inline float exp2(float x) noexcept { return std::exp2(x); }
inline double exp2(double x) noexcept { return std::exp2(x); }

template <class T>
inline constexpr T log2e = T(1.442695040888963407359924681001892137);

template <class T, class A>
inline xsimd::batch<T, A> log(const xsimd::batch<T, A>& x) noexcept {
  return xsimd::log(x);
}
inline float log(float x) noexcept { return std::log(x); }
inline double log(double x) noexcept { return std::log(x); }

// a b + c rounded once. xsimd 8.1 has no AVX-512 fma: its generic a * b + c leaves GCC free
// to contract it (-ffp-contract=fast, the GNU default) into fma(a, b, c) in one place and,
// where c is itself a product, into fma(c's factors, a b) in another - different bits for the
// same formula written from two places (a pipelined row's gradient in the next row's loop and
// in flush()). Where the instruction set has an fma, the intrinsic is called here.
template <class T, class A>
inline xsimd::batch<T, A> fma(const xsimd::batch<T, A>& a, const xsimd::batch<T, A>& b,
                              const xsimd::batch<T, A>& c) noexcept {
  using B = xsimd::batch<T, A>;
#if defined(__AVX512F__)
  if constexpr (sizeof(B) == 64 && std::is_same_v<T, float>) return B(_mm512_fmadd_ps(a, b, c));
  if constexpr (sizeof(B) == 64 && std::is_same_v<T, double>) return B(_mm512_fmadd_pd(a, b, c));
#endif
#if defined(__FMA__)
  if constexpr (sizeof(B) == 32 && std::is_same_v<T, float>) return B(_mm256_fmadd_ps(a, b, c));
  if constexpr (sizeof(B) == 32 && std::is_same_v<T, double>) return B(_mm256_fmadd_pd(a, b, c));
  if constexpr (sizeof(B) == 16 && std::is_same_v<T, float>) return B(_mm_fmadd_ps(a, b, c));
  if constexpr (sizeof(B) == 16 && std::is_same_v<T, double>) return B(_mm_fmadd_pd(a, b, c));
#endif
  return B(xsimd::fma(a, b, c));
}
inline float fma(float a, float b, float c) noexcept { return std::fma(a, b, c); }
inline double fma(double a, double b, double c) noexcept { return std::fma(a, b, c); }

template <class T, class A>
inline xsimd::batch<T, A> abs(const xsimd::batch<T, A>& x) noexcept {
  return xsimd::abs(x);
}
inline float abs(float x) noexcept { return std::fabs(x); }
inline double abs(double x) noexcept { return std::fabs(x); }

template <class T, class A>
inline xsimd::batch<T, A> tanh(const xsimd::batch<T, A>& x) noexcept {
  return xsimd::tanh(x);
}
inline float tanh(float x) noexcept { return std::tanh(x); }
inline double tanh(double x) noexcept { return std::tanh(x); }

// select(c, a, b): a where c holds, b elsewhere. Both branches are evaluated.
template <class T, class A>
inline xsimd::batch<T, A> select(const xsimd::batch_bool<T, A>& c, const xsimd::batch<T, A>& a,
                                 const xsimd::batch<T, A>& b) noexcept {
  return xsimd::select(c, a, b);
}
template <class T, std::enable_if_t<std::is_floating_point_v<T>, int> = 0>
inline T select(bool c, T a, T b) noexcept {
  return c ? a : b;
}

// max with a spelled-out NaN policy (xsimd flipped its own in 14.0): returns b when a is NaN.
// On x86 with xsimd < 14, xsimd::max is the maxps instruction, which is exactly
// (a > b ? a : b) lane by lane (b when either is NaN, b on ties): one instruction instead of a
// compare and a blend, same bits.
template <class V>
inline V vmax(const V& a, const V& b) noexcept {
#if XSIMD_VERSION_MAJOR < 14 && (defined(__x86_64__) || defined(__i386__) || defined(_M_X64))
  if constexpr (is_batch<V>) {
    return xsimd::max(a, b);
  } else {
    return simd::select(a > b, a, b);
  }
#else
  return simd::select(a > b, a, b);
#endif
}

template <class T, class A, class F>
inline xsimd::batch<T, A> exp_guarded(const xsimd::batch<T, A>& x, T lowest, F&& f) noexcept {
  using B = xsimd::batch<T, A>;
  if constexpr (std::is_same_v<T, double>) {
    const auto nan = xsimd::isnan(x);
    const B inside = xsimd::min(xsimd::max(xsimd::select(nan, B(T(0)), x), B(lowest)), B(-lowest));
    return xsimd::select(nan, x, f(inside));
  } else {
    return f(x);
  }
}

// x where keep holds, 0 elsewhere: the `0 * log 0 = 0` guard used throughout.
template <class M, class V>
inline V where(const M& keep, const V& x) noexcept {
  return simd::select(keep, x, V(scalar_t<V>(0)));
}

// ---- stream compaction ------------------------------------------------------------------------
namespace detail {
inline std::size_t popcount(unsigned m) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  return std::size_t(__builtin_popcount(m));
#else
  std::size_t c = 0;
  for (; m; m &= m - 1) ++c;
  return c;
#endif
}
// For each 8-bit lane mask, the indices of its set lanes first (AVX2 permutations).
struct CompressLanes {
  alignas(32) int idx[256][8];
};
inline const CompressLanes& compress_lanes() noexcept {
  static const CompressLanes table = [] {
    CompressLanes t{};
    for (int m = 0; m < 256; ++m) {
      int k = 0;
      for (int j = 0; j < 8; ++j)
        if ((m >> j) & 1) t.idx[m][k++] = j;
    }
    return t;
  }();
  return table;
}
}  // namespace detail

// Appends the lanes of x that lie in [lo, hi) to out, in lane order, and returns how many; with
// a payload (py, pout), the same lanes of py go to pout. Whole batches are stored (lanes past
// the count hold garbage), so the outputs need room for a full batch. AVX-512: one compress
// per array; AVX2: a permutation from a table; elsewhere lane by lane (no branches in any).
template <class T, class A>
inline std::size_t append_in_range(T* out, const xsimd::batch<T, A>& x, T lo, T hi, T* pout = nullptr,
                                   const xsimd::batch<T, A>* py = nullptr) noexcept {
  using V = xsimd::batch<T, A>;
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64 && std::is_same_v<T, float>) {
    const __m512 v = x;
    const __mmask16 m = _mm512_cmp_ps_mask(v, _mm512_set1_ps(lo), _CMP_GE_OQ) & _mm512_cmp_ps_mask(v, _mm512_set1_ps(hi), _CMP_LT_OQ);
    _mm512_storeu_ps(out, _mm512_maskz_compress_ps(m, v));
    if (pout) _mm512_storeu_ps(pout, _mm512_maskz_compress_ps(m, __m512(*py)));
    return detail::popcount(m);
  }
  if constexpr (sizeof(V) == 64 && std::is_same_v<T, double>) {
    const __m512d v = x;
    const __mmask8 m = _mm512_cmp_pd_mask(v, _mm512_set1_pd(lo), _CMP_GE_OQ) & _mm512_cmp_pd_mask(v, _mm512_set1_pd(hi), _CMP_LT_OQ);
    _mm512_storeu_pd(out, _mm512_maskz_compress_pd(m, v));
    if (pout) _mm512_storeu_pd(pout, _mm512_maskz_compress_pd(m, __m512d(*py)));
    return detail::popcount(m);
  }
#endif
#if defined(__AVX2__)
  if constexpr (sizeof(V) == 32 && std::is_same_v<T, float>) {
    const __m256 v = x;
    const int m = _mm256_movemask_ps(
        _mm256_and_ps(_mm256_cmp_ps(v, _mm256_set1_ps(lo), _CMP_GE_OQ), _mm256_cmp_ps(v, _mm256_set1_ps(hi), _CMP_LT_OQ)));
    const __m256i p = _mm256_load_si256(reinterpret_cast<const __m256i*>(detail::compress_lanes().idx[m]));
    _mm256_storeu_ps(out, _mm256_permutevar8x32_ps(v, p));
    if (pout) _mm256_storeu_ps(pout, _mm256_permutevar8x32_ps(__m256(*py), p));
    return detail::popcount(unsigned(m));
  }
  if constexpr (sizeof(V) == 32 && std::is_same_v<T, double>) {  // a double lane is two float lanes
    const __m256d v = x;
    const int m = _mm256_movemask_pd(
        _mm256_and_pd(_mm256_cmp_pd(v, _mm256_set1_pd(lo), _CMP_GE_OQ), _mm256_cmp_pd(v, _mm256_set1_pd(hi), _CMP_LT_OQ)));
    int m8 = 0;
    for (int j = 0; j < 4; ++j)
      if ((m >> j) & 1) m8 |= 3 << (2 * j);
    const __m256i p = _mm256_load_si256(reinterpret_cast<const __m256i*>(detail::compress_lanes().idx[m8]));
    _mm256_storeu_pd(out, _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(v), p)));
    if (pout) _mm256_storeu_pd(pout, _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(__m256d(*py)), p)));
    return detail::popcount(unsigned(m));
  }
#endif
  alignas(64) T lanes_[V::size];
  alignas(64) T payload_[V::size];
  x.store_aligned(lanes_);
  if (pout) py->store_aligned(payload_);
  std::size_t c = 0;
  for (std::size_t j = 0; j < V::size; ++j) {
    out[c] = lanes_[j];
    if (pout) pout[c] = payload_[j];
    c += std::size_t(lanes_[j] >= lo && lanes_[j] < hi);
  }
  return c;
}
template <class T, std::enable_if_t<std::is_floating_point_v<T>, int> = 0>
inline std::size_t append_in_range(T* out, T x, T lo, T hi, T* pout = nullptr, const T* py = nullptr) noexcept {
  *out = x;
  if (pout) *pout = *py;
  return std::size_t(x >= lo && x < hi);
}

// The values v (a batch or a scalar) of indices [i, i + lanes) with the one at index j, if it is
// among them, replaced by f(its value): a kernel's special entry (a label's lane), through
// memory, which only the one batch that holds it pays.
template <class V, class F>
inline V map_index(const V& v, std::size_t i, std::size_t j, F&& f) {
  if constexpr (is_batch<V>) {
    using T = scalar_t<V>;
    if (j - i >= width<T>) return v;
    alignas(64) T lane[width<T>];
    v.store_aligned(lane);
    lane[j - i] = f(lane[j - i]);
    return V::load_aligned(lane);
  } else {
    return i == j ? V(f(v)) : v;
  }
}

// ---- loops ----------------------------------------------------------------------------------
// body(lanes<batch<T>>{}, i) for whole batches in [begin, end), then body(lanes<T>{}, i) for
// the remaining elements one at a time.
template <class T, class Body>
inline void for_lanes(std::size_t begin, std::size_t end, Body&& body) {
  constexpr std::size_t W = width<T>;
  std::size_t i = begin;
  for (; i + W <= end; i += W) body(lanes<batch<T>>{}, i);
  for (; i < end; ++i) body(lanes<T>{}, i);
}

// Sums K quantities over [begin, end). body(lanes<V>, i) returns std::array<V, K>. Partial sums
// are kept in T lanes for blocks of at most `block` elements and added into double between
// blocks, so float rows of any length keep about 1e-7 relative accuracy. The order of
// operations depends only on (begin, end), never on threads.
template <class T, std::size_t K, class Body>
inline std::array<double, K> sum_lanes(std::size_t begin, std::size_t end, Body&& body) {
  constexpr std::size_t W = width<T>;
  constexpr std::size_t block = 2048;
  std::array<double, K> total{};
  std::size_t i = begin;
  while (i + W <= end) {
    const std::size_t stop = std::min(end, i + block);
    // Two accumulators per quantity hide the latency of the adds.
    std::array<batch<T>, K> a0, a1;
    a0.fill(batch<T>(T(0)));
    a1.fill(batch<T>(T(0)));
    for (; i + 2 * W <= stop; i += 2 * W) {
      const auto v0 = body(lanes<batch<T>>{}, i);
      const auto v1 = body(lanes<batch<T>>{}, i + W);
      for (std::size_t k = 0; k < K; ++k) {
        a0[k] += v0[k];
        a1[k] += v1[k];
      }
    }
    if (i + W <= stop) {
      const auto v0 = body(lanes<batch<T>>{}, i);
      for (std::size_t k = 0; k < K; ++k) a0[k] += v0[k];
      i += W;
    }
    for (std::size_t k = 0; k < K; ++k) total[k] += static_cast<double>(hsum(a0[k] + a1[k]));
  }
  for (; i < end; ++i) {
    const auto v = body(lanes<T>{}, i);
    for (std::size_t k = 0; k < K; ++k) total[k] += static_cast<double>(v[k]);
  }
  return total;
}

// Maximum of body(lanes<V>, i) over [begin, end); -inf for an empty range. NaN inputs may be
// skipped here; they still reach the loss through exp/log and come out as NaN.
template <class T, class Body>
inline T max_lanes(std::size_t begin, std::size_t end, Body&& body) {
  constexpr std::size_t W = width<T>;
  const T ninf = -std::numeric_limits<T>::infinity();
  std::size_t i = begin;
  T m = ninf;
  if (i + W <= end) {
    // Four independent running maxima: a compare-and-blend chain is latency-bound otherwise.
    batch<T> a0(ninf), a1(ninf), a2(ninf), a3(ninf);
    for (; i + 4 * W <= end; i += 4 * W) {
      a0 = vmax(body(lanes<batch<T>>{}, i), a0);
      a1 = vmax(body(lanes<batch<T>>{}, i + W), a1);
      a2 = vmax(body(lanes<batch<T>>{}, i + 2 * W), a2);
      a3 = vmax(body(lanes<batch<T>>{}, i + 3 * W), a3);
    }
    for (; i + W <= end; i += W) a0 = vmax(body(lanes<batch<T>>{}, i), a0);
    m = hmax(vmax(vmax(a0, a1), vmax(a2, a3)));
  }
  for (; i < end; ++i) m = vmax(body(lanes<T>{}, i), m);
  return m;
}

}  // namespace losskit::simd
